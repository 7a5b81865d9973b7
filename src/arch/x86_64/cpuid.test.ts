import assert from "node:assert/strict";
import { test } from "node:test";
import { KVM_CPUID_FEATURES, KVM_CPUID_SIGNATURE } from "../../linux/abi.generated.js";
import { Kvm } from "../../kvm/kvm.js";
import { vcpuCpuid } from "./cpuid.js";

const kvm = Kvm.open();
const supported = kvm.getSupportedCpuid();
kvm.close();
const leaf = (t: ReturnType<typeof vcpuCpuid>, fn: number, index = 0) => t.find((e) => e.function === fn && e.index === index);

test("every vCPU is told it runs under a hypervisor and gets KVM's paravirtual leaves", () => {
  const t = vcpuCpuid(supported, 0, 2);
  assert.ok((leaf(t, 1)!.ecx & (1 << 31)) !== 0);
  const sig = leaf(t, KVM_CPUID_SIGNATURE)!;
  assert.equal(Buffer.from(new Uint32Array([sig.ebx, sig.ecx, sig.edx]).buffer).toString("latin1").replace(/\0+$/, ""), "KVMKVMKVM");
  assert.ok(leaf(t, KVM_CPUID_FEATURES), "KVM feature leaf (kvm-clock) present");
});

test("each vCPU has its own initial APIC id and sees the logical processor count", () => {
  for (const id of [0, 1, 3]) {
    const l1 = leaf(vcpuCpuid(supported, id, 4), 1)!;
    assert.equal(l1.ebx >>> 24, id);
    assert.equal((l1.ebx >>> 16) & 0xff, 4);
  }
});

test("the extended topology leaf describes N single-thread cores and the vCPU's x2APIC id", () => {
  const t = vcpuCpuid(supported, 2, 3);
  const smt = leaf(t, 0xb, 0), core = leaf(t, 0xb, 1);
  assert.ok(smt && core, "sub-leaves 0 and 1 exist");
  assert.equal(smt.ebx, 1);
  assert.equal(core.ebx, 3);
  assert.equal(core.eax, 2, "2 bits of core id for 3 cores");
  assert.equal(core.edx, 2);
  assert.equal(leaf(t, 0xb, 2)!.ecx >> 8, 0, "sub-leaf 2 ends the enumeration");
});

test("the TSC-deadline timer bit (CPUID.1:ECX[24]) follows what KVM emulates, not KVM_GET_SUPPORTED_CPUID", () => {
  const bit = (t: ReturnType<typeof vcpuCpuid>) => (leaf(t, 1)!.ecx >>> 24) & 1;
  // Some KVMs list the bit in KVM_GET_SUPPORTED_CPUID, others (e.g. nested under an emulated SVM) do not.
  const without = supported.map((e) => (e.function === 1 ? { ...e, ecx: e.ecx & ~(1 << 24) } : e));
  assert.equal(bit(vcpuCpuid(without, 0, 1, { tscDeadline: true })), 1);
  assert.equal(bit(vcpuCpuid(without, 0, 1, { tscDeadline: false })), 0);
});
