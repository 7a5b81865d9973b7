/**
 * The VM-wide state (PICs, IOAPIC, PIT, kvmclock) on this host's /dev/kvm:
 * each piece reads back as it was set, and a VM's state moves into a fresh
 * VM. A guest that uses these chips needs ring 0, which this host emulates
 * too slowly to boot one (see the shared notes), so they are checked by
 * value here; vcpu-state.test.ts moves a running guest. No timing is asserted.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_ioapic_state, kvm_irqchip,
  kvm_pic_state, kvm_pit_channel_state, kvm_pit_state2,
} from "../../linux/abi.generated.js";
import { KvmError } from "../../kvm/errors.js";
import { Kvm } from "../../kvm/kvm.js";
import { dataView } from "../../memory/le.js";
import { createBareVm, type BareVm } from "./testing/bare-vm.js";
import { restoreVmState, saveVmState, type VmState } from "./vm-state.js";

let kvm: Kvm;
before(() => {
  kvm = Kvm.open();
});
after(() => kvm.close());

function withVm(fn: (g: BareVm) => void): void {
  const g = createBareVm(kvm);
  try {
    fn(g);
  } finally {
    g.close();
  }
}

/** The PIT state without its channels' load times: KVM stamps each with the host clock when it is set. */
function pitWithoutLoadTimes(pit: Uint8Array): Uint8Array {
  const out = pit.slice();
  const channels = (kvm_pit_state2.flags - kvm_pit_state2.channels) / kvm_pit_channel_state.SIZE;
  for (let i = 0; i < channels; i++) {
    dataView(out).setBigInt64(kvm_pit_state2.channels + i * kvm_pit_channel_state.SIZE + kvm_pit_channel_state.count_load_time, 0n, true);
  }
  return out;
}

const HOUR_NS = 3_600_000_000_000n;
const clockNs = (clock: Uint8Array) => dataView(clock).getBigUint64(kvm_clock_data.clock, true);

test("each irqchip's state reads back as it was set, and a changed one takes effect", () => {
  withVm(({ vm }) => {
    for (const [chip, field] of [
      [KVM_IRQCHIP_PIC_MASTER, kvm_pic_state.imr], [KVM_IRQCHIP_PIC_SLAVE, kvm_pic_state.imr], [KVM_IRQCHIP_IOAPIC, kvm_ioapic_state.id],
    ] as const) {
      const first = vm.getIrqchip(chip);
      assert.equal(dataView(first).getUint32(kvm_irqchip.chip_id, true), chip);
      vm.setIrqchip(first);
      assert.deepEqual(vm.getIrqchip(chip), first, `chip ${chip}: get, set, get`);
      const changed = first.slice();
      changed[kvm_irqchip.chip + field] ^= 0x5;
      vm.setIrqchip(changed);
      assert.deepEqual(vm.getIrqchip(chip), changed, `chip ${chip}: a changed state reads back`);
    }
  });
});

test("the PIT's state reads back as it was set, its load times aside", () => {
  withVm(({ vm }) => {
    const first = vm.getPit2();
    vm.setPit2(first);
    assert.deepEqual(pitWithoutLoadTimes(vm.getPit2()), pitWithoutLoadTimes(first));
    const changed = first.slice();
    const channel2 = kvm_pit_state2.channels + 2 * kvm_pit_channel_state.SIZE;
    dataView(changed).setUint32(channel2 + kvm_pit_channel_state.count, 0x1234, true);
    vm.setPit2(changed);
    assert.equal(dataView(vm.getPit2()).getUint32(channel2 + kvm_pit_channel_state.count, true), 0x1234);
  });
});

test("the clock is set to the given value and runs on from it", () => {
  withVm(({ vm }) => {
    const now = clockNs(vm.getClock());
    const later = vm.getClock();
    dataView(later).setBigUint64(kvm_clock_data.clock, now + HOUR_NS, true);
    vm.setClock(later);
    assert.ok(clockNs(vm.getClock()) >= now + HOUR_NS, "the clock jumped ahead to the value set");
  });
});

test("a VM's chips and clock move into a fresh VM", () => {
  withVm((a) => withVm((b) => {
    // State a fresh VM does not have, so a piece the restore dropped shows.
    const imr = kvm_irqchip.chip + kvm_pic_state.imr;
    const pic = a.vm.getIrqchip(KVM_IRQCHIP_PIC_MASTER);
    pic[imr] = 0xa5;
    a.vm.setIrqchip(pic);
    const pit = a.vm.getPit2();
    const count2 = kvm_pit_state2.channels + 2 * kvm_pit_channel_state.SIZE + kvm_pit_channel_state.count;
    dataView(pit).setUint32(count2, 0x4321, true);
    a.vm.setPit2(pit);
    const clock = a.vm.getClock();
    dataView(clock).setBigUint64(kvm_clock_data.clock, clockNs(clock) + HOUR_NS, true);
    a.vm.setClock(clock);
    const saved = saveVmState(a.vm);
    restoreVmState(b.vm, saved);
    const moved = saveVmState(b.vm);
    // The clock runs, and which of its fields KVM fills in (flags) can change once it was set.
    const comparable = (s: VmState) => ({ ...s, pit: pitWithoutLoadTimes(s.pit), clock: undefined });
    assert.deepEqual(comparable(moved), comparable(saved));
    assert.equal(moved.picMaster[imr], 0xa5);
    assert.equal(dataView(moved.pit).getUint32(count2, true), 0x4321);
    assert.ok(clockNs(moved.clock) >= clockNs(saved.clock), "B's clock goes on from A's");
  }));
});

test("a VM state that does not fit throws KvmError EKVMSTATE before it reaches KVM", () => {
  withVm(({ vm }) => {
    const s = saveVmState(vm);
    const rejects = (bad: VmState, pattern: RegExp) =>
      assert.throws(() => restoreVmState(vm, bad), (e: unknown) => e instanceof KvmError && e.code === "EKVMSTATE" && pattern.test(e.message));
    rejects({ ...s, version: 7 as 1 }, /version 7/);
    rejects({ ...s, ioapic: s.ioapic.subarray(0, 8) }, /ioapic is 8 bytes/);
    rejects({ ...s, clock: undefined as unknown as Uint8Array }, /clock is missing/);
    rejects({ ...s, picSlave: s.ioapic }, /irqchip 2, not 1/);
  });
});
