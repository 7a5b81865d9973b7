/**
 * A small compiler from an allow-list of system calls to a classic BPF
 * program for seccomp (Documentation/userspace-api/seccomp_filter.rst).
 *
 * The program, in order:
 *   1. `arch` must be AUDIT_ARCH_X86_64, else SECCOMP_RET_KILL_PROCESS (a
 *      32-bit or foreign-ABI call has other numbers: it must never be
 *      matched against the x86-64 table);
 *   2. `nr` must be below __X32_SYSCALL_BIT, else SECCOMP_RET_KILL_PROCESS
 *      (x32 calls share the arch value but not the numbers' meaning);
 *   3. one test per rule, in the list's order (the hot calls first), each
 *      followed by its own `ret ALLOW` (or `ret ERRNO`), or by a block that
 *      checks an argument's low 32 bits against a set of values or a mask;
 *   4. the default action: SECCOMP_RET_KILL_PROCESS, or SECCOMP_RET_LOG in
 *      audit mode (the call goes on and the kernel logs it).
 * Every jump is forward and short (each match returns at once), so no jump
 * offset can overflow BPF's 8-bit jt/jf.
 */
import {
  AUDIT_ARCH_X86_64, BPF_ABS, BPF_ALU, BPF_AND, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_MAXINSNS, BPF_RET, BPF_W,
  SECCOMP_RET_ALLOW, SECCOMP_RET_DATA, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_LOG, SYSCALLS_X86_64, __X32_SYSCALL_BIT, seccomp_data, sock_filter,
} from "../linux/abi.generated.js";

/** A system call's name in the x86-64 table (asm/unistd_64.h without __NR_). */
export type SyscallName = keyof typeof SYSCALLS_X86_64;

/**
 * Allow a call only when argument `arg` (0..5) has, in its low 32 bits, one
 * of `values` (an ioctl's request number), or every bit of `allBitsSet` (a
 * clone's CLONE_THREAD).
 */
export type ArgFilter = { arg: number; values: readonly number[] } | { arg: number; allBitsSet: number };

/**
 * One rule: a call allowed in every use, or only in those that pass its
 * argument filter, or answered with an errno without running (clone3, whose
 * flags sit behind a pointer BPF cannot follow: ENOSYS sends glibc back to
 * clone, whose flags the filter can check).
 */
export type AllowRule = SyscallName | { name: SyscallName; filter: ArgFilter } | { name: SyscallName; errno: number };

/** What happens to a call the list does not allow. */
export type DefaultAction = "kill" | "log";

/** A compiled program: `count` struct sock_filter in `bytes`, for the addon. */
export interface BpfProgram {
  bytes: Uint8Array;
  count: number;
}

/** One classic BPF instruction (struct sock_filter). */
export interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

/** A list that cannot become a filter (an unknown name, a bad filter, too long a program). */
export class SeccompCompileError extends Error {
  readonly code = "ESECCOMPLIST";
  constructor(message: string) {
    super(message);
    this.name = "SeccompCompileError";
  }
}

const stmt = (code: number, k: number): Insn => ({ code, jt: 0, jf: 0, k: k >>> 0 });
const jump = (code: number, k: number, jt: number, jf: number): Insn => ({ code, jt, jf, k: k >>> 0 });
const LD_ABS = BPF_LD | BPF_W | BPF_ABS;
const JEQ = BPF_JMP | BPF_JEQ | BPF_K;
const RET = BPF_RET | BPF_K;
/** Longest jt/jf (an unsigned byte). */
const MAX_JUMP = 255;

/** Byte offset of the low 32 bits of argument `i` in struct seccomp_data (x86-64 is little-endian). */
export function argLowOffset(i: number): number {
  return seccomp_data.args + 8 * i;
}

function ruleName(r: AllowRule): SyscallName {
  return typeof r === "string" ? r : r.name;
}

/** The instructions for `rules` (the x86-64 ABI checks, one test per rule, the default action). */
export function compileInsns(rules: readonly AllowRule[], action: DefaultAction): Insn[] {
  const deny = action === "log" ? SECCOMP_RET_LOG : SECCOMP_RET_KILL_PROCESS;
  const seen = new Set<SyscallName>();
  const out: Insn[] = [
    stmt(LD_ABS, seccomp_data.arch),
    jump(JEQ, AUDIT_ARCH_X86_64, 1, 0),
    stmt(RET, SECCOMP_RET_KILL_PROCESS),
    stmt(LD_ABS, seccomp_data.nr),
    jump(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 1),
    stmt(RET, SECCOMP_RET_KILL_PROCESS),
  ];
  for (const rule of rules) {
    const name = ruleName(rule);
    if (!Object.hasOwn(SYSCALLS_X86_64, name)) throw new SeccompCompileError(`Cannot compile the seccomp list: no system call '${name}' on x86-64`);
    if (seen.has(name)) throw new SeccompCompileError(`Cannot compile the seccomp list: '${name}' is listed twice`);
    seen.add(name);
    const nr = SYSCALLS_X86_64[name];
    if (typeof rule === "string") {
      out.push(jump(JEQ, nr, 0, 1), stmt(RET, SECCOMP_RET_ALLOW));
      continue;
    }
    if ("errno" in rule) {
      if (!Number.isInteger(rule.errno) || rule.errno < 1 || rule.errno > SECCOMP_RET_DATA) throw new SeccompCompileError(`Cannot compile the seccomp list: '${name}' errno ${rule.errno}`);
      out.push(jump(JEQ, nr, 0, 1), stmt(RET, SECCOMP_RET_ERRNO | rule.errno));
      continue;
    }
    const { arg } = rule.filter;
    if (!Number.isInteger(arg) || arg < 0 || arg > 5) throw new SeccompCompileError(`Cannot compile the seccomp list: '${name}' filters argument ${arg} (0 to 5)`);
    const values = "values" in rule.filter ? rule.filter.values : [rule.filter.allBitsSet];
    if (values.length === 0) throw new SeccompCompileError(`Cannot compile the seccomp list: '${name}' allows no value of argument ${arg}`);
    for (const v of values) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new SeccompCompileError(`Cannot compile the seccomp list: '${name}' value ${v} is not a 32-bit number`);
    }
    // nr matches: load the argument (masked for allBitsSet), one test per value (a match jumps to
    // the block's `ret ALLOW`), then the default action. The accumulator held nr until here; a
    // block always returns.
    const block: Insn[] = [stmt(LD_ABS, argLowOffset(arg))];
    if ("allBitsSet" in rule.filter) block.push(stmt(BPF_ALU | BPF_AND | BPF_K, rule.filter.allBitsSet));
    values.forEach((v, i) => block.push(jump(JEQ, v, values.length - i, 0)));
    block.push(stmt(RET, deny), stmt(RET, SECCOMP_RET_ALLOW));
    if (block.length > MAX_JUMP) throw new SeccompCompileError(`Cannot compile the seccomp list: '${name}' has ${values.length} values (at most ${MAX_JUMP - 3})`);
    out.push(jump(JEQ, nr, 0, block.length), ...block);
  }
  out.push(stmt(RET, deny));
  if (out.length > BPF_MAXINSNS) throw new SeccompCompileError(`Cannot compile the seccomp list: ${out.length} instructions (at most ${BPF_MAXINSNS})`);
  return out;
}

/** Encodes instructions as struct sock_filter[] (layout from linux/filter.h, little-endian). */
export function encode(insns: readonly Insn[]): BpfProgram {
  const bytes = new Uint8Array(insns.length * sock_filter.SIZE);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  insns.forEach((x, i) => {
    const at = i * sock_filter.SIZE;
    view.setUint16(at + sock_filter.code, x.code, true);
    view.setUint8(at + sock_filter.jt, x.jt);
    view.setUint8(at + sock_filter.jf, x.jf);
    view.setUint32(at + sock_filter.k, x.k, true);
  });
  return { bytes, count: insns.length };
}

/** Compiles an allow-list into a program ready for the addon's installSeccompFilter. */
export function compile(rules: readonly AllowRule[], action: DefaultAction): BpfProgram {
  return encode(compileInsns(rules, action));
}
