/**
 * A KVM VM set up the way Machine.create sets one up (TSS and identity-map
 * pages, in-kernel irqchip and PIT, one memory slot, vCPUs), without devices
 * or threads: for tests that drive vCPUs on the calling thread, such as
 * saving a vCPU's state in one VM and restoring it into another.
 */
import { KVM_CAP_TSC_DEADLINE_TIMER, KVM_PIT_SPEAKER_DUMMY } from "../../../linux/abi.generated.js";
import type { Kvm } from "../../../kvm/kvm.js";
import type { VcpuFd } from "../../../kvm/vcpu.js";
import type { VmFd } from "../../../kvm/vm.js";
import { GuestMemory } from "../../../memory/guest-memory.js";
import { vcpuCpuid } from "../cpuid.js";
import { configureLints } from "../lapic.js";
import { KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS } from "../layout.js";
import { bootMsrs } from "../msr.js";
import { RING3_LAYOUT, startInRing3 } from "../ring3.js";

/** Guest RAM of a bare VM: room for the ring-3 harness (RING3_LAYOUT lies in the first MiB). */
export const BARE_VM_MEMORY_BYTES = 4 << 20;

/** A VM, its vCPUs and guest memory; close() frees them all. */
export interface BareVm {
  vm: VmFd;
  vcpus: VcpuFd[];
  mem: GuestMemory;
  close(): void;
}

/** A VM with `cpus` vCPUs that have not been given any state. */
export function createBareVm(kvm: Kvm, cpus = 1): BareVm {
  const vm = kvm.createVm();
  const vcpus: VcpuFd[] = [];
  let mem: GuestMemory | undefined;
  const close = () => {
    for (const v of vcpus) v.close();
    mem?.dispose();
    vm.close();
  };
  try {
    vm.setTssAddr(KVM_TSS_ADDRESS);
    vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDRESS);
    vm.createIrqchip();
    vm.createPit2(KVM_PIT_SPEAKER_DUMMY);
    mem = GuestMemory.create([{ guestBase: 0, size: BARE_VM_MEMORY_BYTES }]);
    vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: BARE_VM_MEMORY_BYTES, userspaceAddr: mem.regions[0]!.hostAddress });
    for (let id = 0; id < cpus; id++) vcpus.push(vm.createVcpu(id));
    return { vm, vcpus, mem, close };
  } catch (e) {
    close();
    throw e;
  }
}

/**
 * Gives `vcpu` the CPUID, MSRs, FPU and LAPIC that Machine.create gives a
 * vCPU, and starts it in ring 3 at `entry` (the program must be in memory).
 */
export function startRing3Vcpu(kvm: Kvm, vcpu: VcpuFd, mem: GuestMemory, entry: number = RING3_LAYOUT.code, cpus = 1): void {
  const cpuidHost = { tscDeadline: kvm.checkExtension(KVM_CAP_TSC_DEADLINE_TIMER) > 0 };
  vcpu.setCpuid2(vcpuCpuid(kvm.getSupportedCpuid(), vcpu.id, cpus, cpuidHost));
  vcpu.setMsrs(bootMsrs());
  vcpu.setFpuDefaults();
  vcpu.setLapic(configureLints(vcpu.getLapic()));
  startInRing3(vcpu, mem, entry, RING3_LAYOUT.stackTop - vcpu.id * 0x1000);
}
