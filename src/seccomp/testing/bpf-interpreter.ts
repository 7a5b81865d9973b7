/**
 * A tiny classic-BPF interpreter for the instructions flint's seccomp
 * compiler emits (ld abs word, and-k, jeq/jge/jset-k, ja, ret-k), run over a
 * struct seccomp_data, so tests can check what a filter answers without
 * installing it. Anything else throws: a compiler that starts emitting other
 * instructions must extend this first.
 */
import {
  AUDIT_ARCH_X86_64, BPF_ABS, BPF_ALU, BPF_AND, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W,
  seccomp_data,
} from "../../linux/abi.generated.js";
import type { Insn } from "../bpf.js";

/** A system call as the filter sees it. */
export interface SeccompCall {
  nr: number;
  arch?: number;
  /** Up to six arguments (64-bit). */
  args?: readonly bigint[];
}

/** struct seccomp_data for `call` (little-endian). */
export function seccompData(call: SeccompCall): DataView {
  const view = new DataView(new ArrayBuffer(seccomp_data.SIZE));
  view.setInt32(seccomp_data.nr, call.nr, true);
  view.setUint32(seccomp_data.arch, call.arch ?? AUDIT_ARCH_X86_64, true);
  (call.args ?? []).forEach((a, i) => view.setBigUint64(seccomp_data.args + 8 * i, BigInt.asUintN(64, a), true));
  return view;
}

/** Runs `program` over `call`; returns the 32-bit action it returns. */
export function runFilter(program: readonly Insn[], call: SeccompCall): number {
  const data = seccompData(call);
  let a = 0;
  for (let pc = 0; pc < program.length;) {
    const x = program[pc]!;
    switch (x.code) {
      case BPF_LD | BPF_W | BPF_ABS:
        if (x.k % 4 !== 0 || x.k + 4 > seccomp_data.SIZE) throw new Error(`pc ${pc}: load outside seccomp_data (${x.k})`);
        a = data.getUint32(x.k, true);
        pc++;
        break;
      case BPF_ALU | BPF_AND | BPF_K:
        a = (a & x.k) >>> 0;
        pc++;
        break;
      case BPF_JMP | BPF_JA:
        pc += 1 + x.k;
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
        pc += 1 + (a === x.k ? x.jt : x.jf);
        break;
      case BPF_JMP | BPF_JGE | BPF_K:
        pc += 1 + (a >= x.k ? x.jt : x.jf);
        break;
      case BPF_JMP | BPF_JSET | BPF_K:
        pc += 1 + ((a & x.k) !== 0 ? x.jt : x.jf);
        break;
      case BPF_RET | BPF_K:
        return x.k;
      default:
        throw new Error(`pc ${pc}: instruction 0x${x.code.toString(16)} not understood`);
    }
  }
  throw new Error("the program ran off its end");
}
