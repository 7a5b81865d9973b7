/**
 * Saving and restoring vCPU and VM state on this host's /dev/kvm with ring-3
 * guests (ring 0 is emulated slowly here; see the shared notes). Each piece
 * of state reads back as it was set; a guest that keeps state in general
 * registers, SSE/AVX registers, MXCSR and memory, and reports a running
 * checksum by port I/O, goes on in a fresh VM exactly where it was saved —
 * the same values an uninterrupted run reports — and so do two clones of one
 * saved state; a truncated or foreign state throws a KvmError instead of
 * reaching KVM. No timing is asserted.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  EINTR, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, MSR_IA32_TSC, MSR_KVM_SYSTEM_TIME_NEW, X86_CR0_PE, X86_CR4_OSFXSR,
  X86_CR4_OSXMMEXCPT, X86_CR4_OSXSAVE, kvm_debugregs, kvm_run, kvm_vcpu_events, kvm_xcr, kvm_xcrs,
} from "../../linux/abi.generated.js";
import { KvmError } from "../../kvm/errors.js";
import { Kvm } from "../../kvm/kvm.js";
import { assemble } from "../../kvm/testing/assemble.js";
import { startRunWatchdog, type RunWatchdog } from "../../kvm/testing/run-watchdog.js";
import type { VcpuFd } from "../../kvm/vcpu.js";
import { dataView } from "../../memory/le.js";
import { vcpuCpuid } from "./cpuid.js";
import { configureLints } from "./lapic.js";
import { RING3_LAYOUT } from "./ring3.js";
import { createBareVm, startRing3Vcpu, type BareVm } from "./testing/bare-vm.js";
import { msrsToSave, restoreVcpuState, saveVcpuState, type VcpuState } from "./vcpu-state.js";
import { restoreVmState, saveVmState } from "./vm-state.js";

let kvm: Kvm;
before(() => {
  kvm = Kvm.open();
});
after(() => kvm.close());

/** The port the guest reports its checksum on (no in-kernel device claims it). */
const REPORT_PORT = 0x80;
/** The guest reports once every 4096 iterations of its loop. */
const REPORT_EVERY_MASK = 0xfff;
/** 256 quadwords of guest memory the loop adds into. */
const TABLE = RING3_LAYOUT.data;
/** MXCSR with every exception masked and rounding toward +infinity (RC = 10b; Intel SDM vol. 1 §10.2.3). */
const MXCSR_ROUND_UP = 0x5f80;
/** XCR0's index for XSETBV and in struct kvm_xcr (XCR_XFEATURE_ENABLED_MASK). */
const XCR0 = 0;
/** CPUID leaf 0xD sub-leaf 0: EDX:EAX are the XCR0 bits the processor supports (Intel SDM vol. 1 §13.2). */
const CPUID_LEAF_XSTATE = 0xd;
/** XCR0 bit 2: AVX state, the upper halves of YMM0-15 (Intel SDM vol. 1 §13.1). */
const XFEATURE_MASK_YMM = 1n << 2n;

/**
 * A linear congruential generator in RBX (Knuth's MMIX constants) drives
 * everything: an SSE lane shuffle in XMM0/XMM1, a round trip through a double
 * rounded by MXCSR into R15, an AVX accumulator whose upper half is swapped in
 * every round (YMM4), and adds into a table in memory. Every 4096 rounds it
 * folds all of that into EAX and writes it to REPORT_PORT. Dropping the
 * registers, the XSAVE area or the memory changes what follows; dropping XCR0
 * faults the first AVX instruction where the guest runs with its own XCR0
 * (this host's PVM let the guest run on without it; the state test catches it).
 */
const CHECKSUM_PROGRAM = `
  mov rbx, 0x0123456789abcdef
  movabs r13, 6364136223846793005
  movabs r14, 1442695040888963407
  xor r12, r12
  xor r15, r15
  push ${MXCSR_ROUND_UP}
  ldmxcsr [rsp]
  add rsp, 8
1:
  imul rbx, r13
  add rbx, r14
  movq xmm2, rbx
  paddq xmm0, xmm2
  pshufd xmm0, xmm0, 0x4e
  pxor xmm1, xmm0
  cvtsi2sd xmm3, rbx
  cvtsd2si rax, xmm3
  add r15, rax
  vinsertf128 ymm5, ymm5, xmm1, 1
  vxorps ymm4, ymm4, ymm5
  vperm2f128 ymm4, ymm4, ymm4, 1
  mov rax, rbx
  shr rax, 56
  add qword ptr [${TABLE} + rax * 8], rbx
  inc r12
  test r12, ${REPORT_EVERY_MASK}
  jnz 1b
  mov rax, rbx
  xor rax, r15
  movq rcx, xmm0
  xor rax, rcx
  movdqa xmm7, xmm1
  psrldq xmm7, 8
  movq rcx, xmm7
  xor rax, rcx
  vextractf128 xmm6, ymm4, 1
  movq rcx, xmm6
  xor rax, rcx
  mov rcx, r12
  shr rcx, 12
  and rcx, 0xff
  xor rax, qword ptr [${TABLE} + rcx * 8]
  mov rcx, rax
  shr rcx, 32
  xor eax, ecx
  mov dx, ${REPORT_PORT}
  out dx, eax
  jmp 1b
`;

const checksumCode = assemble(CHECKSUM_PROGRAM, RING3_LAYOUT.code);

/** struct kvm_xcrs holding XCR0 = `xcr0`. */
function xcrsWithXcr0(xcr0: bigint): Uint8Array {
  const b = new Uint8Array(kvm_xcrs.SIZE);
  const v = dataView(b);
  v.setUint32(kvm_xcrs.nr_xcrs, 1, true);
  v.setUint32(kvm_xcrs.xcrs + kvm_xcr.xcr, XCR0, true);
  v.setBigUint64(kvm_xcrs.xcrs + kvm_xcr.value, xcr0, true);
  return b;
}

/** XCR0 as an OS enables it: every XSAVE feature the vCPU's CPUID offers. */
function supportedXcr0(vcpu: VcpuFd): bigint {
  const leaf = vcpu.getCpuid2().find((e) => e.function === CPUID_LEAF_XSTATE && e.index === 0);
  assert.ok(leaf, "the vCPU has CPUID leaf 0xD");
  return (BigInt(leaf.edx) << 32n) | BigInt(leaf.eax);
}

/**
 * A VM whose vCPUs are set up to run CHECKSUM_PROGRAM in ring 3 with SSE and
 * AVX enabled, as an OS would; only vCPU 0 (the BSP) is runnable, the others
 * wait for a start-up IPI as APs do.
 */
function checksumVm(cpus = 1): BareVm {
  const g = createBareVm(kvm, cpus);
  try {
    g.mem.write(RING3_LAYOUT.code, checksumCode);
    for (const vcpu of g.vcpus) {
      startRing3Vcpu(kvm, vcpu, g.mem, RING3_LAYOUT.code, cpus);
      const sregs = vcpu.getSregs();
      sregs.cr4 |= BigInt(X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT | X86_CR4_OSXSAVE);
      vcpu.setSregs(sregs);
      const xcr0 = supportedXcr0(vcpu);
      assert.ok(xcr0 & XFEATURE_MASK_YMM, "this host's KVM offers AVX");
      vcpu.setXcrs(xcrsWithXcr0(xcr0));
    }
    return g;
  } catch (e) {
    g.close();
    throw e;
  }
}

/** Only catches hangs: a passing test runs its guests for milliseconds. */
const HANG_LIMIT_MS = 30_000;
/** Guards the current test's KVM_RUN calls (set by withVms). */
let watchdog: RunWatchdog | undefined;

/** Runs `vcpu` on this thread until it has reported `count` checksums. */
function reports(vcpu: VcpuFd, count: number): number[] {
  const out: number[] = [];
  while (out.length < count) {
    const r = vcpu.runOnce();
    if (r === -EINTR) {
      if (watchdog?.expired()) assert.fail(`the guest made no exit for ${HANG_LIMIT_MS} ms after ${out.length} reports (lost state can leave it spinning)`);
      continue;
    }
    assert.equal(r, KVM_EXIT_IO, `exit reason ${r} after ${out.length} reports (a restore that lost state faults the guest)`);
    const v = vcpu.runView;
    assert.equal(v.getUint16(kvm_run.io_port, true), REPORT_PORT);
    assert.equal(vcpu.run[kvm_run.io_direction], KVM_EXIT_IO_OUT);
    out.push(v.getUint32(Number(v.getBigUint64(kvm_run.io_data_offset, true)), true));
  }
  return out;
}

/** Everything a snapshot of `g` holds: vCPU 0, the VM's chips and clock, guest memory. */
function snapshot(g: BareVm) {
  const vcpu = g.vcpus[0]!;
  return { vcpu: saveVcpuState(vcpu, msrsToSave(kvm, vcpu)), vm: saveVmState(g.vm), memory: g.mem.regions[0]!.bytes.slice() };
}

/** A fresh VM made like Machine.create makes one, with `snap` restored into it. */
function restored(snap: ReturnType<typeof snapshot>): BareVm {
  const g = createBareVm(kvm);
  try {
    g.mem.regions[0]!.bytes.set(snap.memory);
    restoreVcpuState(g.vcpus[0]!, snap.vcpu);
    restoreVmState(g.vm, snap.vm);
    return g;
  } catch (e) {
    g.close();
    throw e;
  }
}

/** `fn` with its vCPU runs guarded against hangs and the VMs it creates closed afterwards. */
function withVms(fn: (keep: (g: BareVm) => BareVm) => void): void {
  const vms: BareVm[] = [];
  watchdog = startRunWatchdog(HANG_LIMIT_MS);
  try {
    fn((g) => (vms.push(g), g));
  } finally {
    watchdog.stop();
    watchdog = undefined;
    for (const g of vms) g.close();
  }
}

const SAVED_AT = 5;
const THEN = 6;

test("a guest restored into a fresh VM reports exactly what an uninterrupted run reports after the same point", () => {
  withVms((keep) => {
    const expected = reports(keep(checksumVm()).vcpus[0]!, SAVED_AT + THEN);
    assert.equal(new Set(expected).size, expected.length, "every report differs, so a repeated or skipped one shows");

    const a = keep(checksumVm());
    assert.deepEqual(reports(a.vcpus[0]!, SAVED_AT), expected.slice(0, SAVED_AT));
    const snap = snapshot(a);
    const b = keep(restored(snap));
    assert.deepEqual(reports(b.vcpus[0]!, THEN), expected.slice(SAVED_AT), "B goes on where A was saved");
    assert.deepEqual(reports(a.vcpus[0]!, THEN), expected.slice(SAVED_AT), "saving did not disturb A");
  });
});

test("two clones of one saved state go on identically and independently", () => {
  withVms((keep) => {
    const expected = reports(keep(checksumVm()).vcpus[0]!, SAVED_AT + 2 * THEN);
    const a = keep(checksumVm());
    reports(a.vcpus[0]!, SAVED_AT);
    const snap = snapshot(a);
    const c = keep(restored(snap));
    const d = keep(restored(snap));
    // Interleaved: each clone's state is its own.
    const fromC = reports(c.vcpus[0]!, THEN);
    const fromD = reports(d.vcpus[0]!, THEN);
    fromC.push(...reports(c.vcpus[0]!, THEN));
    fromD.push(...reports(d.vcpus[0]!, THEN));
    assert.deepEqual(fromC, expected.slice(SAVED_AT));
    assert.deepEqual(fromD, expected.slice(SAVED_AT));
  });
});

test("a clone of a clone goes on too: a restored vCPU saves as well as one that booted", () => {
  withVms((keep) => {
    const expected = reports(keep(checksumVm()).vcpus[0]!, 3 * SAVED_AT);
    const a = keep(checksumVm());
    reports(a.vcpus[0]!, SAVED_AT);
    const b = keep(restored(snapshot(a)));
    assert.deepEqual(reports(b.vcpus[0]!, SAVED_AT), expected.slice(SAVED_AT, 2 * SAVED_AT));
    const c = keep(restored(snapshot(b)));
    assert.deepEqual(reports(c.vcpus[0]!, SAVED_AT), expected.slice(2 * SAVED_AT));
  });
});

test("a saved vCPU restored into a fresh one saves again as the same state (its TSC aside, which runs)", () => {
  withVms((keep) => {
    const a = keep(checksumVm());
    // State a fresh vCPU does not have, so a piece the restore dropped shows. The host turns on
    // kvm-clock for the guest, so the restore's KVM_KVMCLOCK_CTRL has a clock to flag.
    const v = a.vcpus[0]!;
    v.setMsrs([{ index: MSR_KVM_SYSTEM_TIME_NEW, data: BigInt(RING3_LAYOUT.data + 0x1000) | 1n }]);
    const debugregs = v.getDebugregs();
    dataView(debugregs).setBigUint64(kvm_debugregs.db, 0xfff000n, true);
    v.setDebugregs(debugregs);
    const events = v.getVcpuEvents();
    events[kvm_vcpu_events.nmi_masked] = 1;
    v.setVcpuEvents(events);
    reports(v, 2);
    const snap = snapshot(a);
    assert.equal(snap.vcpu.vcpuEvents[kvm_vcpu_events.nmi_masked], 1, "NMIs stay masked");
    assert.equal(dataView(snap.vcpu.debugregs).getBigUint64(kvm_debugregs.db, true), 0xfff000n, "DR0 was saved");
    const b = keep(restored(snap));
    const again = saveVcpuState(b.vcpus[0]!, msrsToSave(kvm, b.vcpus[0]!));
    const withoutTsc = (s: VcpuState) => ({ ...s, msrs: s.msrs.filter((e) => e.index !== MSR_IA32_TSC) });
    assert.deepEqual(withoutTsc(again), withoutTsc(snap.vcpu));
    assert.ok(snap.vcpu.msrs.some((e) => e.index === MSR_KVM_SYSTEM_TIME_NEW && e.data !== 0n), "kvm-clock's MSR was saved");
    assert.ok(snap.vcpu.msrs.length > 0);
    console.log(`# vCPU state on this host: xsave ${snap.vcpu.xsave.byteLength} bytes, ${snap.vcpu.msrs.length} MSRs of ` +
      `${msrsToSave(kvm, a.vcpus[0]!).length} listed, ${snap.vcpu.cpuid.length} CPUID entries, TSC ${snap.vcpu.tscKhz} kHz`);
  });
});

test("a VM with an AP still waiting for its start-up IPI moves with both vCPUs as they were", () => {
  withVms((keep) => {
    const expected = reports(keep(checksumVm(2)).vcpus[0]!, SAVED_AT + THEN);
    const a = keep(checksumVm(2));
    reports(a.vcpus[0]!, SAVED_AT);
    const states = a.vcpus.map((v) => saveVcpuState(v, msrsToSave(kvm, v)));
    assert.notEqual(states[1]!.mpState, states[0]!.mpState, "the AP waits, the BSP runs");
    const vmState = saveVmState(a.vm);
    const b = keep(createBareVm(kvm, 2));
    b.mem.regions[0]!.bytes.set(a.mem.regions[0]!.bytes);
    b.vcpus.forEach((v, i) => restoreVcpuState(v, states[i]!));
    restoreVmState(b.vm, vmState);
    assert.deepEqual(b.vcpus.map((v) => v.getMpState()), states.map((s) => s.mpState));
    assert.deepEqual(reports(b.vcpus[0]!, THEN), expected.slice(SAVED_AT));
  });
});

/** Asserts that `set(get())` on a fresh vCPU leaves `get()` as it was, and that `set(changed)` reads back. */
function roundTrip<T>(name: string, get: () => T, set: (x: T) => void, change?: (x: T) => T): void {
  const first = get();
  set(first);
  assert.deepEqual(get(), first, `${name}: get, set, get`);
  if (change) {
    const changed = change(get());
    set(changed);
    assert.deepEqual(get(), changed, `${name}: a changed value reads back`);
  }
}

test("every piece of vCPU state reads back as it was set", () => {
  withVms((keep) => {
    const g = keep(createBareVm(kvm));
    const v = g.vcpus[0]!;
    // KVM (and this host's PVM more so) adjusts some bits of the table it is given, never the entries.
    const cpuid = vcpuCpuid(kvm.getSupportedCpuid(), 0, 1);
    v.setCpuid2(cpuid);
    assert.deepEqual(v.getCpuid2().map((e) => [e.function, e.index]), cpuid.map((e) => [e.function, e.index]));
    roundTrip("cpuid", () => v.getCpuid2(), (x) => v.setCpuid2(x));
    roundTrip("mp_state", () => v.getMpState(), (x) => v.setMpState(x));
    roundTrip("regs", () => v.getRegs(), (x) => v.setRegs(x), (r) => ({ ...r, rax: 0x1122334455667788n, rip: 0x10000n }));
    roundTrip("sregs", () => v.getSregs(), (x) => v.setSregs(x), (s) => ({ ...s, cr2: 0xdead000n }));
    roundTrip("xcrs", () => v.getXcrs(), (x) => v.setXcrs(x), () => xcrsWithXcr0(supportedXcr0(v)));
    roundTrip("xsave", () => v.getXsave(), (x) => v.setXsave(x));
    roundTrip("debugregs", () => v.getDebugregs(), (x) => v.setDebugregs(x), (d) => {
      const c = d.slice();
      dataView(c).setBigUint64(kvm_debugregs.db, 0x1234000n, true);
      dataView(c).setBigUint64(kvm_debugregs.db + 24, 0xffff800000001000n, true);
      return c;
    });
    roundTrip("lapic", () => v.getLapic(), (x) => v.setLapic(x), (l) => configureLints(l.slice()));
    roundTrip("vcpu events", () => v.getVcpuEvents(), (x) => v.setVcpuEvents(x));
    roundTrip("tsc khz", () => v.getTscKhz(), (x) => v.setTscKhz(x));
    const saved = saveVcpuState(v, msrsToSave(kvm, v)).msrs.filter((e) => e.index !== MSR_IA32_TSC);
    roundTrip("msrs", () => v.getMsrs(saved.map((e) => e.index)), (x) => v.setMsrs(x));
  });
});

test("a vCPU's XSAVE area carries the guest's SSE and AVX registers: another vCPU given it computes on", () => {
  withVms((keep) => {
    // vCPU state moved piece by piece within one VM's memory: the guest's program and table stay.
    const a = keep(checksumVm());
    const expected = reports(keep(checksumVm()).vcpus[0]!, 4);
    reports(a.vcpus[0]!, 2);
    const snap = snapshot(a);
    const b = keep(restored(snap));
    const withFreshXsave = keep(createBareVm(kvm));
    withFreshXsave.mem.regions[0]!.bytes.set(snap.memory);
    restoreVcpuState(withFreshXsave.vcpus[0]!, { ...snap.vcpu, xsave: withFreshXsave.vcpus[0]!.getXsave() });
    assert.deepEqual(reports(b.vcpus[0]!, 2), expected.slice(2));
    assert.notDeepEqual(reports(withFreshXsave.vcpus[0]!, 2), expected.slice(2), "without the XSAVE area the guest computes otherwise");
  });
});

test("a truncated or foreign saved state throws KvmError EKVMSTATE before it reaches KVM", () => {
  withVms((keep) => {
    const a = keep(checksumVm());
    reports(a.vcpus[0]!, 1);
    const snap = snapshot(a);
    const fresh = () => keep(createBareVm(kvm, 2));
    const rejects = (fn: () => void, code: KvmError["code"], pattern: RegExp, why: string) =>
      assert.throws(fn, (e: unknown) => e instanceof KvmError && e.code === code && pattern.test(e.message), why);
    const s = snap.vcpu;
    rejects(() => restoreVcpuState(fresh().vcpus[0]!, { ...s, xsave: s.xsave.subarray(0, 100) }), "EKVMSTATE", /xsave is 100 bytes/, "short xsave");
    rejects(() => restoreVcpuState(fresh().vcpus[0]!, { ...s, lapic: new Uint8Array(0) }), "EKVMSTATE", /lapic is 0 bytes/, "empty lapic");
    rejects(() => restoreVcpuState(fresh().vcpus[0]!, { ...s, vcpuEvents: undefined as unknown as Uint8Array }), "EKVMSTATE", /vcpuEvents is missing/, "no events");
    rejects(() => restoreVcpuState(fresh().vcpus[1]!, s), "EKVMSTATE", /vCPU 0's/, "another vCPU's state");
    rejects(() => restoreVcpuState(fresh().vcpus[0]!, { ...s, version: 2 as 1 }), "EKVMSTATE", /version 2/, "a newer version");
    rejects(() => fresh().vcpus[0]!.setXsave(s.xsave.subarray(0, 8)), "EKVMSTATE", /KVM_SET_XSAVE on vCPU 0: the state is 8 bytes/, "setXsave");
    const vm = fresh().vm;
    rejects(() => restoreVmState(vm, { ...snap.vm, pit: snap.vm.pit.subarray(1) }), "EKVMSTATE", /pit is/, "short PIT");
    rejects(() => restoreVmState(vm, { ...snap.vm, picMaster: snap.vm.picSlave }), "EKVMSTATE", /irqchip 1, not 0/, "chips swapped");
    rejects(() => vm.setClock(new Uint8Array(3)), "EKVMSTATE", /KVM_SET_CLOCK: the state is 3 bytes/, "setClock");
  });
});

test("a saved state of the right size that KVM rejects throws KvmError EKVMIOCTL", () => {
  withVms((keep) => {
    const a = keep(checksumVm());
    reports(a.vcpus[0]!, 1);
    const s = snapshot(a).vcpu;
    const rejects = (fn: () => void, why: string) =>
      assert.throws(fn, (e: unknown) => e instanceof KvmError && e.code === "EKVMIOCTL" && e.errno === "EINVAL", why);
    const events = s.vcpuEvents.slice();
    dataView(events).setUint32(kvm_vcpu_events.flags, 0xffffffff, true);
    rejects(() => restoreVcpuState(keep(createBareVm(kvm)).vcpus[0]!, { ...s, vcpuEvents: events }), "event flags KVM does not know");
    rejects(() => restoreVcpuState(keep(createBareVm(kvm)).vcpus[0]!, { ...s, xsave: new Uint8Array(s.xsave.byteLength).fill(0xff) }), "an XSAVE header with reserved bits");
    rejects(() => restoreVcpuState(keep(createBareVm(kvm)).vcpus[0]!, { ...s, sregs: { ...s.sregs, cr0: s.sregs.cr0 & ~BigInt(X86_CR0_PE) } }),
      "paging without protected mode");
  });
});

test("saving completes the IN the vCPU exited on: the restored guest has the VMM's answer and goes on past it", () => {
  withVms((keep) => {
    // The answer to an IN reaches RAX only when KVM_RUN is entered again (api.rst §5), in no
    // state userspace can read: a save that skipped completing it would restore a guest that
    // asks again, or that goes on without the answer.
    const answer = 0xabcd1234;
    const a = keep(createBareVm(kvm));
    a.mem.write(RING3_LAYOUT.code, assemble(`mov dx, ${REPORT_PORT}\n in eax, dx\n out dx, eax\n 1: jmp 1b`, RING3_LAYOUT.code));
    startRing3Vcpu(kvm, a.vcpus[0]!, a.mem);
    const v = a.vcpus[0]!;
    assert.equal(v.runOnce(), KVM_EXIT_IO);
    assert.equal(v.run[kvm_run.io_direction], KVM_EXIT_IO_IN);
    v.runView.setUint32(Number(v.runView.getBigUint64(kvm_run.io_data_offset, true)), answer, true);
    const snap = snapshot(a);
    assert.equal(snap.vcpu.regs.rax & 0xffffffffn, BigInt(answer), "the saved RAX holds the answer");
    assert.deepEqual(reports(keep(restored(snap)).vcpus[0]!, 1), [answer], "the clone goes on with the answer");
    assert.deepEqual(reports(v, 1), [answer], "so does the saved VM");
  });
});
