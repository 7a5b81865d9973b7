/**
 * Direct-KVM tests: small guest programs that run in ring 3 on this host's
 * /dev/kvm (see ../shared notes: ring 0 is emulated here, ring 3 is native).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  KVM_CAP_IRQCHIP, KVM_CAP_USER_MEMORY, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, KVM_EXIT_MMIO, kvm_run,
  KVM_CPUID_SIGNATURE, MSR_IA32_TSC,
} from "../linux/abi.generated.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { Kvm } from "./kvm.js";
import { assemble } from "./testing/assemble.js";
import { RING3_LAYOUT, startInRing3 } from "../arch/x86_64/ring3.js";
import type { VcpuFd } from "./vcpu.js";
import type { VmFd } from "./vm.js";

let kvm: Kvm;
before(() => {
  kvm = Kvm.open();
});
after(() => kvm.close());

function guest(source: string): { vm: VmFd; vcpu: VcpuFd; mem: GuestMemory; close(): void } {
  const vm = kvm.createVm();
  const size = 4 << 20;
  const mem = GuestMemory.create([{ guestBase: 0, size }]);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: size, userspaceAddr: mem.regions[0]!.hostAddress });
  const vcpu = vm.createVcpu(0);
  vcpu.setCpuid2(kvm.getSupportedCpuid());
  mem.write(RING3_LAYOUT.code, assemble(source, RING3_LAYOUT.code));
  startInRing3(vcpu, mem, RING3_LAYOUT.code);
  return { vm, vcpu, mem, close: () => { vcpu.close(); vm.close(); mem.dispose(); } };
}

test("KVM reports the capabilities flint relies on", () => {
  assert.ok(kvm.checkExtension(KVM_CAP_IRQCHIP) > 0);
  assert.ok(kvm.checkExtension(KVM_CAP_USER_MEMORY) > 0);
  assert.equal(kvm.checkExtension(0x7fffffff), 0, "an unknown capability reads as absent");
  assert.ok(kvm.getSupportedCpuid().some((e) => e.function === KVM_CPUID_SIGNATURE), "KVM paravirt leaves are offered");
});

test("KVM_GET_MSR_INDEX_LIST names the MSRs KVM saves, the TSC among them", () => {
  const list = kvm.getMsrIndexList();
  assert.ok(list.includes(MSR_IA32_TSC));
  assert.equal(new Set(list).size, list.length, "no MSR twice");
});

test("a ring-3 OUT exits to the VMM with port, size and data", () => {
  const g = guest("mov al, 0x5a\n out 0x80, al\n mov ax, 0x1234\n mov dx, 0x3f8\n out dx, ax\n 1: jmp 1b");
  try {
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_IO);
    const v = g.vcpu.runView;
    assert.equal(g.vcpu.run[kvm_run.io_direction], KVM_EXIT_IO_OUT);
    assert.equal(v.getUint16(kvm_run.io_port, true), 0x80);
    assert.equal(g.vcpu.run[kvm_run.io_size], 1);
    assert.equal(g.vcpu.run[Number(v.getBigUint64(kvm_run.io_data_offset, true))], 0x5a);
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_IO);
    assert.equal(v.getUint16(kvm_run.io_port, true), 0x3f8);
    assert.equal(g.vcpu.run[kvm_run.io_size], 2);
    assert.equal(v.getUint16(Number(v.getBigUint64(kvm_run.io_data_offset, true)), true), 0x1234);
  } finally {
    g.close();
  }
});

test("data the VMM puts in kvm_run answers a ring-3 IN", () => {
  const g = guest("mov dx, 0x60\n in al, dx\n out 0x81, al\n 1: jmp 1b");
  try {
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_IO);
    assert.equal(g.vcpu.run[kvm_run.io_direction], KVM_EXIT_IO_IN);
    g.vcpu.run[Number(g.vcpu.runView.getBigUint64(kvm_run.io_data_offset, true))] = 0xa7;
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_IO);
    assert.equal(g.vcpu.runView.getUint16(kvm_run.io_port, true), 0x81);
    assert.equal(g.vcpu.run[Number(g.vcpu.runView.getBigUint64(kvm_run.io_data_offset, true))], 0xa7);
  } finally {
    g.close();
  }
});

test("a ring-3 store outside guest RAM is an MMIO exit with address, length and data", () => {
  const g = guest("mov eax, 0xd0000000\n mov dword ptr [rax + 8], 0xcafef00d\n mov rbx, qword ptr [rax]\n out 0x80, al\n 1: jmp 1b");
  try {
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_MMIO);
    const v = g.vcpu.runView;
    assert.equal(v.getBigUint64(kvm_run.mmio_phys_addr, true), 0xd0000008n);
    assert.equal(v.getUint32(kvm_run.mmio_len, true), 4);
    assert.equal(g.vcpu.run[kvm_run.mmio_is_write], 1);
    assert.equal(v.getUint32(kvm_run.mmio_data, true), 0xcafef00d);
    // A read: the VMM's answer lands in RBX.
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_MMIO);
    assert.equal(g.vcpu.run[kvm_run.mmio_is_write], 0);
    assert.equal(v.getUint32(kvm_run.mmio_len, true), 8);
    v.setBigUint64(kvm_run.mmio_data, 0x1122334455667788n, true);
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_IO);
    assert.equal(g.vcpu.getRegs().rbx, 0x1122334455667788n);
  } finally {
    g.close();
  }
});

test("guest memory writes are visible to the host and host writes to the guest", () => {
  const data = RING3_LAYOUT.data;
  const g = guest(`mov rax, qword ptr [${data}]\n not rax\n mov qword ptr [${data + 8}], rax\n out 0x80, al\n 1: jmp 1b`);
  try {
    g.mem.writeU64(data, 0x0123456789abcdefn);
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_IO);
    assert.equal(g.mem.readU64(data + 8), ~0x0123456789abcdefn & 0xffffffffffffffffn);
  } finally {
    g.close();
  }
});

test("registers set by the VMM are used by the guest and read back after an exit", () => {
  const g = guest("add rax, rbx\n imul rcx, rcx\n out 0x80, al\n 1: jmp 1b");
  try {
    const regs = g.vcpu.getRegs();
    regs.rax = 40n;
    regs.rbx = 2n;
    regs.rcx = 0x100000000n;
    g.vcpu.setRegs(regs);
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_IO);
    const after = g.vcpu.getRegs();
    assert.equal(after.rax, 42n);
    assert.equal(after.rcx, 0n, "64-bit overflow wraps: (2^32)^2 mod 2^64");
    const sregs = g.vcpu.getSregs();
    assert.equal(sregs.cs.dpl, 3, "the guest ran in ring 3");
  } finally {
    g.close();
  }
});

test("immediate_exit makes KVM_RUN return EINTR without running the guest", () => {
  const g = guest("out 0x80, al\n 1: jmp 1b");
  try {
    g.vcpu.setImmediateExit(true);
    const r = g.vcpu.runOnce();
    assert.ok(r < 0, `expected -EINTR, got ${r}`);
    g.vcpu.setImmediateExit(false);
    assert.equal(g.vcpu.runOnce(), KVM_EXIT_IO);
  } finally {
    g.close();
  }
});

test("KVM set-up survives signals: VMs created while a sampling profiler interrupts this thread all succeed", async () => {
  // V8's CPU profiler samples the thread with SIGPROF; with a short interval KVM_CREATE_VM
  // is interrupted (EINTR) often (about 1 in 3 here before kvmIoctl retried).
  const { Session } = await import("node:inspector");
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) => new Promise<void>((resolve, reject) =>
    session.post(method, params, (err) => (err ? reject(err) : resolve())));
  await post("Profiler.enable");
  await post("Profiler.setSamplingInterval", { interval: 50 });
  await post("Profiler.start");
  try {
    for (let i = 0; i < 200; i++) {
      const k = Kvm.open();
      try {
        k.createVm().close();
      } finally {
        k.close();
      }
    }
  } finally {
    await post("Profiler.stop");
    session.disconnect();
  }
});
