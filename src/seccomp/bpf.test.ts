/**
 * The seccomp compiler and flint's lists, checked by running the compiled
 * programs through a small BPF interpreter (testing/bpf-interpreter.ts): the
 * x86-64 ABI checks come first, each listed call is allowed (within its
 * argument filter), anything else gets the default action.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  AF_INET, AF_UNIX, AUDIT_ARCH_X86_64, BPF_JMP, BPF_MAXINSNS, CLONE_THREAD, CLONE_VM, ENOSYS, KVM_CREATE_VM, KVM_IRQ_LINE, KVM_RUN,
  KVM_SET_USER_MEMORY_REGION, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_LOG, SYSCALLS_X86_64,
  TUNSETIFF, TUNSETOFFLOAD, __X32_SYSCALL_BIT, sock_filter,
} from "../linux/abi.generated.js";
import { compile, compileInsns, SeccompCompileError, type AllowRule, type Insn, type SyscallName } from "./bpf.js";
import { ALLOW_LISTS, type ThreadKind } from "./lists.js";
import { runFilter } from "./testing/bpf-interpreter.js";

const nr = (name: SyscallName) => SYSCALLS_X86_64[name];
const KINDS = Object.keys(ALLOW_LISTS) as ThreadKind[];
/** A 32-bit ABI's arch value (linux/audit.h AUDIT_ARCH_I386): EM_386 with the little-endian bit. */
const AUDIT_ARCH_I386 = 0x40000003;

test("every listed call is allowed, within its argument filter", () => {
  for (const kind of KINDS) {
    const program = compileInsns(ALLOW_LISTS[kind], "kill");
    for (const rule of ALLOW_LISTS[kind]) {
      if (typeof rule === "string") {
        assert.equal(runFilter(program, { nr: nr(rule), args: [1n, 2n, 3n] }), SECCOMP_RET_ALLOW, `${kind}: ${rule}`);
      } else if ("errno" in rule) {
        assert.equal(runFilter(program, { nr: nr(rule.name) }), SECCOMP_RET_ERRNO | rule.errno, `${kind}: ${rule.name}`);
      } else {
        const values = "values" in rule.filter ? rule.filter.values : [rule.filter.allBitsSet];
        for (const v of values) {
          const args = [0n, 0n, 0n, 0n, 0n, 0n];
          args[rule.filter.arg] = BigInt(v);
          assert.equal(runFilter(program, { nr: nr(rule.name), args }), SECCOMP_RET_ALLOW, `${kind}: ${rule.name} ${v}`);
        }
      }
    }
  }
});

test("a call outside the list is killed, or only logged in audit mode; nothing lets a process start a program", () => {
  const forbidden: SyscallName[] = ["execve", "execveat", "fork", "vfork", "ptrace", "mount", "init_module", "bpf", "reboot", "kexec_load", "setns", "unshare"];
  for (const kind of KINDS) {
    const kill = compileInsns(ALLOW_LISTS[kind], "kill"), log = compileInsns(ALLOW_LISTS[kind], "log");
    for (const name of forbidden) {
      assert.equal(runFilter(kill, { nr: nr(name) }), SECCOMP_RET_KILL_PROCESS, `${kind}: ${name}`);
      assert.equal(runFilter(log, { nr: nr(name) }), SECCOMP_RET_LOG, `${kind} audit: ${name}`);
    }
  }
  // Narrower lists: vCPU and device threads make no directories and no sockets.
  assert.equal(runFilter(compileInsns(ALLOW_LISTS.vcpu, "kill"), { nr: nr("mkdir") }), SECCOMP_RET_KILL_PROCESS);
  assert.equal(runFilter(compileInsns(ALLOW_LISTS.vcpu, "kill"), { nr: nr("socket"), args: [1n] }), SECCOMP_RET_KILL_PROCESS);
  assert.equal(runFilter(compileInsns(ALLOW_LISTS.device, "kill"), { nr: nr("mkdir") }), SECCOMP_RET_KILL_PROCESS);
});

test("another ABI's calls and x32 numbers are killed, in audit mode too", () => {
  for (const kind of KINDS) {
    for (const action of ["kill", "log"] as const) {
      const p = compileInsns(ALLOW_LISTS[kind], action);
      assert.equal(runFilter(p, { nr: nr("read"), arch: AUDIT_ARCH_I386 }), SECCOMP_RET_KILL_PROCESS, `${kind} ${action}: i386`);
      assert.equal(runFilter(p, { nr: nr("read") | __X32_SYSCALL_BIT }), SECCOMP_RET_KILL_PROCESS, `${kind} ${action}: x32`);
      assert.equal(runFilter(p, { nr: nr("read"), arch: AUDIT_ARCH_X86_64 }), SECCOMP_RET_ALLOW);
    }
  }
});

test("argument filters: a vCPU thread's ioctls, only pthreads from clone, clone3 sent back to clone, only Unix sockets", () => {
  // The vDSO's calls are in every list: where the clock is not readable from user space they are real calls.
  for (const kind of KINDS) for (const name of ["clock_gettime", "gettimeofday", "time", "getcpu"] as const) {
    assert.equal(runFilter(compileInsns(ALLOW_LISTS[kind], "kill"), { nr: nr(name) }), SECCOMP_RET_ALLOW, `${kind}: ${name}`);
  }
  const vcpu = compileInsns(ALLOW_LISTS.vcpu, "kill"), device = compileInsns(ALLOW_LISTS.device, "kill"), proc = compileInsns(ALLOW_LISTS.process, "kill");
  const ioctl = (p: Insn[], request: number | bigint) => runFilter(p, { nr: nr("ioctl"), args: [5n, BigInt(request)] });
  assert.equal(ioctl(vcpu, KVM_RUN), SECCOMP_RET_ALLOW);
  assert.equal(ioctl(vcpu, KVM_IRQ_LINE), SECCOMP_RET_ALLOW);
  // The kernel reads an ioctl's request as a 32-bit unsigned int: the filter looks at those bits only.
  assert.equal(ioctl(vcpu, (0xdeadn << 32n) | BigInt(KVM_RUN)), SECCOMP_RET_ALLOW);
  for (const r of [KVM_CREATE_VM, KVM_SET_USER_MEMORY_REGION, TUNSETIFF]) assert.equal(ioctl(vcpu, r), SECCOMP_RET_KILL_PROCESS, `vcpu ioctl 0x${r.toString(16)}`);
  assert.equal(ioctl(device, TUNSETOFFLOAD), SECCOMP_RET_ALLOW);
  assert.equal(ioctl(device, KVM_RUN), SECCOMP_RET_KILL_PROCESS);
  const clone = (p: Insn[], flags: number) => runFilter(p, { nr: nr("clone"), args: [BigInt(flags)] });
  assert.equal(clone(proc, CLONE_VM | CLONE_THREAD), SECCOMP_RET_ALLOW);
  assert.equal(clone(proc, CLONE_VM), SECCOMP_RET_KILL_PROCESS, "a new process");
  assert.equal(clone(proc, 17 /* SIGCHLD: fork(2) */), SECCOMP_RET_KILL_PROCESS);
  assert.equal(runFilter(proc, { nr: nr("clone3") }), SECCOMP_RET_ERRNO | ENOSYS);
  // vCPU and device threads start no threads at all.
  for (const p of [vcpu, device]) {
    assert.equal(clone(p, CLONE_VM | CLONE_THREAD), SECCOMP_RET_KILL_PROCESS);
    assert.equal(runFilter(p, { nr: nr("clone3") }), SECCOMP_RET_KILL_PROCESS);
  }
  for (const p of [proc, device]) {
    assert.equal(runFilter(p, { nr: nr("socket"), args: [BigInt(AF_UNIX)] }), SECCOMP_RET_ALLOW);
    assert.equal(runFilter(p, { nr: nr("socket"), args: [BigInt(AF_INET)] }), SECCOMP_RET_KILL_PROCESS);
  }
});

test("every jump lands inside the program, which fits the kernel's limit", () => {
  for (const kind of KINDS) {
    const p = compileInsns(ALLOW_LISTS[kind], "kill");
    assert.ok(p.length <= BPF_MAXINSNS);
    p.forEach((x, pc) => {
      if ((x.code & 0x07) !== BPF_JMP) return;
      assert.ok(pc + 1 + x.jt < p.length && pc + 1 + x.jf < p.length, `${kind} pc ${pc}`);
    });
    assert.equal(compile(ALLOW_LISTS[kind], "kill").count, p.length);
  }
});

test("the program is struct sock_filter[] in the kernel's layout", () => {
  const insns = compileInsns(["read"], "kill");
  const { bytes, count } = compile(["read"], "kill");
  assert.equal(count, insns.length);
  assert.equal(bytes.byteLength, count * sock_filter.SIZE);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  insns.forEach((x, i) => {
    const at = i * sock_filter.SIZE;
    assert.deepEqual(
      [view.getUint16(at + sock_filter.code, true), view.getUint8(at + sock_filter.jt), view.getUint8(at + sock_filter.jf), view.getUint32(at + sock_filter.k, true)],
      [x.code, x.jt, x.jf, x.k], `instruction ${i}`);
  });
});

test("a list that cannot be compiled is refused with one line", () => {
  const bad: AllowRule[][] = [
    ["read", "read"],
    ["no_such_call" as SyscallName],
    [{ name: "ioctl", filter: { arg: 6, values: [1] } }],
    [{ name: "ioctl", filter: { arg: 1, values: [] } }],
    [{ name: "ioctl", filter: { arg: 1, values: [2 ** 32] } }],
    [{ name: "ioctl", filter: { arg: 1, values: Array.from({ length: 300 }, (_, i) => i) } }],
    [{ name: "clone3", errno: 0 }],
  ];
  for (const rules of bad) {
    assert.throws(() => compileInsns(rules, "kill"), (e: unknown) => e instanceof SeccompCompileError && e.code === "ESECCOMPLIST" && !e.message.includes("\n"), JSON.stringify(rules).slice(0, 80));
  }
});
