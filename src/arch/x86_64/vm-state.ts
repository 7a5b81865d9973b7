/**
 * The VM-wide KVM state of an x86-64 VM as plain data: the in-kernel
 * interrupt controllers (two i8259 PICs and the IOAPIC), the i8254 PIT and
 * kvmclock. Saved after every vCPU (vcpu-state.ts) and restored after every
 * vCPU, as Firecracker does (src/vmm/src/lib.rs save_state, builder.rs; its
 * arch/x86_64/vm.rs for the order of the ioctls).
 */
import {
  KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip, kvm_pit_state2,
} from "../../linux/abi.generated.js";
import { KvmError } from "../../kvm/errors.js";
import type { VmFd } from "../../kvm/vm.js";
import { dataView } from "../../memory/le.js";

/** The version of the VmState record; bump it when a field changes meaning. */
export const VM_STATE_VERSION = 1;

/** Everything KVM holds for a VM beyond its vCPUs and memory. Plain data. */
export interface VmState {
  version: typeof VM_STATE_VERSION;
  /** struct kvm_irqchip of KVM_IRQCHIP_PIC_MASTER (api.rst 4.26). */
  picMaster: Uint8Array;
  /** struct kvm_irqchip of KVM_IRQCHIP_PIC_SLAVE. */
  picSlave: Uint8Array;
  /** struct kvm_irqchip of KVM_IRQCHIP_IOAPIC. */
  ioapic: Uint8Array;
  /** struct kvm_pit_state2 (api.rst 4.72). */
  pit: Uint8Array;
  /** struct kvm_clock_data (api.rst 4.29): the guest's kvmclock when saved. */
  clock: Uint8Array;
}

const CHIPS = [
  ["picMaster", KVM_IRQCHIP_PIC_MASTER],
  ["picSlave", KVM_IRQCHIP_PIC_SLAVE],
  ["ioapic", KVM_IRQCHIP_IOAPIC],
] as const;

/** Saves the VM's chips and clock, in Firecracker's order: PIT, clock, PIC master, PIC slave, IOAPIC. */
export function saveVmState(vm: VmFd): VmState {
  const pit = vm.getPit2();
  const clock = vm.getClock();
  return {
    version: VM_STATE_VERSION,
    picMaster: vm.getIrqchip(KVM_IRQCHIP_PIC_MASTER),
    picSlave: vm.getIrqchip(KVM_IRQCHIP_PIC_SLAVE),
    ioapic: vm.getIrqchip(KVM_IRQCHIP_IOAPIC),
    pit,
    clock,
  };
}

/** Throws EKVMSTATE, before any ioctl, when `s` cannot be restored. */
function checkVmState(s: VmState): void {
  const fail = (why: string) => new KvmError("EKVMSTATE", `Cannot restore the VM's chips and clock: ${why}`);
  if (s.version !== VM_STATE_VERSION) throw fail(`the saved state has version ${String(s.version)}, flint reads ${VM_STATE_VERSION}`);
  const blobs: [string, Uint8Array, number][] = [
    ...CHIPS.map(([name]) => [name, s[name], kvm_irqchip.SIZE] as [string, Uint8Array, number]),
    ["pit", s.pit, kvm_pit_state2.SIZE], ["clock", s.clock, kvm_clock_data.SIZE],
  ];
  for (const [name, bytes, size] of blobs) {
    if (!(bytes instanceof Uint8Array) || bytes.byteLength !== size) {
      throw fail(`its ${name} is ${bytes instanceof Uint8Array ? `${bytes.byteLength} bytes` : "missing"}, KVM here takes ${size}`);
    }
  }
  for (const [name, chipId] of CHIPS) {
    const saved = dataView(s[name]).getUint32(kvm_irqchip.chip_id, true);
    if (saved !== chipId) throw fail(`its ${name} holds the state of irqchip ${saved}, not ${chipId}`);
  }
}

/**
 * Restores `s` into `vm`, which has its irqchip and PIT created and every
 * vCPU already restored: setting the IOAPIC and PICs recomputes interrupt
 * routing into the vCPUs' LAPICs, and setting the clock updates their
 * kvmclock pages. Order as Firecracker's restore_state: PIT, clock, PIC
 * master, PIC slave, IOAPIC.
 *
 * The clock is restored with flags 0 (api.rst 4.30): the guest's kvmclock
 * goes on from the saved value, as if no time had passed while the VM was
 * saved. Firecracker does the same unless asked for `clock_realtime`; then it
 * passes KVM_CLOCK_REALTIME (refusing a snapshot whose clock lacks it) and KVM
 * adds the real time elapsed since the save.
 */
export function restoreVmState(vm: VmFd, s: VmState): void {
  checkVmState(s);
  vm.setPit2(s.pit);
  const clock = s.clock.slice();
  dataView(clock).setUint32(kvm_clock_data.flags, 0, true);
  vm.setClock(clock);
  for (const [name] of CHIPS) vm.setIrqchip(s[name]);
}
