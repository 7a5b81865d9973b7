/**
 * Local APIC LINT0/LINT1 wiring as on a PC (MP spec 1.4 §3.6.8; Intel SDM
 * vol. 3 §10.5.1): LINT0 delivers ExtINT from the PIC, LINT1 delivers NMI.
 */
import { APIC_LVT0, APIC_LVT1, APIC_MODE_EXTINT, APIC_MODE_NMI } from "../../linux/abi.generated.js";
import { kvm_lapic_state } from "../../linux/abi.generated.js";
import { dataView } from "../../memory/le.js";

/** Delivery mode field of an LVT entry: bits 10:8. */
const LVT_DELIVERY_MODE_SHIFT = 8;
const LVT_DELIVERY_MODE_MASK = 0x7 << LVT_DELIVERY_MODE_SHIFT;

function setDeliveryMode(reg: number, mode: number): number {
  return ((reg & ~LVT_DELIVERY_MODE_MASK) | (mode << LVT_DELIVERY_MODE_SHIFT)) >>> 0;
}

/** Rewrites a struct kvm_lapic_state so LINT0 = ExtINT and LINT1 = NMI. */
export function configureLints(lapicState: Uint8Array): Uint8Array {
  const v = dataView(lapicState);
  const lvt0 = kvm_lapic_state.regs + APIC_LVT0;
  const lvt1 = kvm_lapic_state.regs + APIC_LVT1;
  v.setUint32(lvt0, setDeliveryMode(v.getUint32(lvt0, true), APIC_MODE_EXTINT), true);
  v.setUint32(lvt1, setDeliveryMode(v.getUint32(lvt1, true), APIC_MODE_NMI), true);
  return lapicState;
}
