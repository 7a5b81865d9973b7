/**
 * Register-level tests of the virtio-mmio transport: identification, feature
 * negotiation, the device-status state machine, reset, config space and
 * accesses a well-behaved driver never makes.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
  VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG, VIRTIO_MMIO_CONFIG,
  VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID,
  VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS,
  VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
  VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_PFN, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_STATUS, VIRTIO_MMIO_VERSION, VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC, EFD_NONBLOCK,
} from "../../linux/abi.generated.js";
import { FakeContext } from "../testing/fake-context.js";
import { eventfd, sys } from "../../sys/native.js";
import { VIRTIO_MMIO_MAGIC, VirtioMmioTransport } from "./mmio.js";
import { mmioAccess } from "./testing/mmio-access.js";
import { TransportState, createTransportShared, offeredFeatures } from "./mmio-state.js";

const bit = (n: number) => 1n << BigInt(n);
const S_ACK = VIRTIO_CONFIG_S_ACKNOWLEDGE, S_DRV = VIRTIO_CONFIG_S_DRIVER, S_FOK = VIRTIO_CONFIG_S_FEATURES_OK, S_OK = VIRTIO_CONFIG_S_DRIVER_OK;

/** A transport over a freshly described device; r/w are a driver's readl/writel. */
function setup(opts: { features?: bigint; queues?: number[]; config?: number[]; writable?: (o: number, l: number) => boolean } = {}) {
  const sab = createTransportShared();
  const state = new TransportState(sab);
  state.initDevice({
    deviceId: VIRTIO_ID_RNG,
    deviceFeatures: opts.features ?? 0n,
    queueMaxSizes: opts.queues ?? [256, 64],
    config: new Uint8Array(opts.config ?? [1, 2, 3, 4, 5, 6, 7, 8]),
    configWritable: opts.writable,
  });
  const ctx = new FakeContext();
  const t = new VirtioMmioTransport(sab, "virtio-test", ctx);
  const { r, w } = mmioAccess(t);
  const features = () => (BigInt(r(VIRTIO_MMIO_DEVICE_FEATURES)) | (w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1), BigInt(r(VIRTIO_MMIO_DEVICE_FEATURES)) << 32n));
  const accept = (f: bigint) => {
    w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    w(VIRTIO_MMIO_DRIVER_FEATURES, Number(f & 0xffffffffn));
    w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    w(VIRTIO_MMIO_DRIVER_FEATURES, Number(f >> 32n));
  };
  return { sab, state, ctx, t, r, w, features, accept };
}

test("identifies as a virtio-mmio version 2 device with the backend's device id", () => {
  const { r } = setup();
  assert.equal(r(VIRTIO_MMIO_MAGIC_VALUE), VIRTIO_MMIO_MAGIC);
  assert.equal(VIRTIO_MMIO_MAGIC, 0x74726976);
  assert.equal(r(VIRTIO_MMIO_VERSION), 2);
  assert.equal(r(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG);
  assert.equal(r(VIRTIO_MMIO_SHM_LEN_LOW), 0xffffffff, "no shared memory regions");
});

test("a device the thread has not described yet reads DeviceID 0 (no device)", () => {
  const t = new VirtioMmioTransport(createTransportShared(), "x", new FakeContext());
  const d = new Uint8Array(4).fill(0xaa);
  t.read(VIRTIO_MMIO_DEVICE_ID, d);
  assert.deepEqual([...d], [0, 0, 0, 0]);
});

test("offers VERSION_1 always, ring features when the backend does, and never unimplemented transport features", () => {
  const plain = setup();
  assert.equal(plain.features(), bit(VIRTIO_F_VERSION_1));
  const rich = setup({ features: bit(0) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_F_RING_PACKED) | bit(45) });
  assert.equal(rich.features(), bit(0) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_F_VERSION_1) | bit(45));
  assert.equal(offeredFeatures(bit(VIRTIO_F_RING_PACKED)), bit(VIRTIO_F_VERSION_1));
});

test("the status machine accepts the driver's sequence and reports DRIVER_OK to the device thread", () => {
  const { r, w, accept, state, ctx } = setup();
  w(VIRTIO_MMIO_STATUS, S_ACK);
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV);
  accept(bit(VIRTIO_F_VERSION_1));
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK);
  assert.equal(r(VIRTIO_MMIO_STATUS), S_ACK | S_DRV | S_FOK);
  assert.equal(state.activations, 0);
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK | S_OK);
  assert.equal(r(VIRTIO_MMIO_STATUS), S_ACK | S_DRV | S_FOK | S_OK);
  assert.equal(state.activations, 1);
  assert.equal(state.driverFeatures, bit(VIRTIO_F_VERSION_1));
  assert.deepEqual(ctx.faults, []);
});

test("FEATURES_OK is refused when the driver accepts a feature not offered", () => {
  const { r, w, accept, ctx } = setup({ features: bit(0) });
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV);
  accept(bit(VIRTIO_F_VERSION_1) | bit(1));
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK);
  assert.equal(r(VIRTIO_MMIO_STATUS), S_ACK | S_DRV, "FEATURES_OK reads back clear");
  assert.match(ctx.faults.join("\n"), /not offered/);
});

test("FEATURES_OK is refused without VIRTIO_F_VERSION_1 (legacy drivers)", () => {
  const { r, w, accept } = setup({ features: bit(0) });
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV);
  accept(bit(0));
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK);
  assert.equal(r(VIRTIO_MMIO_STATUS) & S_FOK, 0);
  // And DRIVER_OK cannot follow a refused FEATURES_OK.
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK | S_OK);
  assert.equal(r(VIRTIO_MMIO_STATUS) & (S_FOK | S_OK), 0);
});

test("status steps cannot be skipped or cleared, and FAILED sticks until reset", () => {
  const { r, w, ctx } = setup();
  w(VIRTIO_MMIO_STATUS, S_DRV);
  assert.equal(r(VIRTIO_MMIO_STATUS), 0, "DRIVER without ACKNOWLEDGE is ignored");
  w(VIRTIO_MMIO_STATUS, S_ACK | S_FOK);
  assert.equal(r(VIRTIO_MMIO_STATUS), 0, "FEATURES_OK without DRIVER is ignored");
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV);
  w(VIRTIO_MMIO_STATUS, S_ACK);
  assert.equal(r(VIRTIO_MMIO_STATUS), S_ACK | S_DRV, "clearing DRIVER is ignored");
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | VIRTIO_CONFIG_S_FAILED);
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | VIRTIO_CONFIG_S_FAILED | S_FOK);
  assert.equal(r(VIRTIO_MMIO_STATUS), S_ACK | S_DRV | VIRTIO_CONFIG_S_FAILED);
  assert.equal(ctx.faults.length, 4);
});

test("driver features can only be written between DRIVER and FEATURES_OK", () => {
  const { w, state, accept } = setup({ features: bit(3) });
  accept(bit(3));
  assert.equal(state.driverFeatures, 0n, "ignored before DRIVER");
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV);
  accept(bit(3) | bit(VIRTIO_F_VERSION_1));
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK);
  accept(0n);
  assert.equal(state.driverFeatures, bit(3) | bit(VIRTIO_F_VERSION_1), "ignored after FEATURES_OK");
});

test("queue registers: sizes are checked, missing queues read 0, a ready queue is frozen", () => {
  const { r, w, state, ctx } = setup({ queues: [256, 64] });
  w(VIRTIO_MMIO_QUEUE_SEL, 1);
  assert.equal(r(VIRTIO_MMIO_QUEUE_NUM_MAX), 64);
  w(VIRTIO_MMIO_QUEUE_NUM, 100); // not a power of two
  w(VIRTIO_MMIO_QUEUE_NUM, 128); // above max
  assert.equal(state.queueLayout(1).size, 64);
  w(VIRTIO_MMIO_QUEUE_NUM, 32);
  w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
  w(VIRTIO_MMIO_QUEUE_DESC_HIGH, 1);
  w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
  w(VIRTIO_MMIO_QUEUE_READY, 1);
  w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x5000); // frozen while ready
  assert.deepEqual(state.queueLayout(1), { size: 32, descTable: 0x1_0000_1000, availRing: 0x2000, usedRing: 0 });
  assert.equal(r(VIRTIO_MMIO_QUEUE_READY), 1);
  w(VIRTIO_MMIO_QUEUE_SEL, 7);
  assert.equal(r(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
  assert.equal(r(VIRTIO_MMIO_QUEUE_READY), 0);
  w(VIRTIO_MMIO_QUEUE_NUM, 16);
  assert.equal(ctx.faults.length, 4);
  assert.equal(state.guestFaults, 4);
});

test("writing 0 to Status really resets: status, features, queues, selectors, interrupts", () => {
  const { r, w, accept, state } = setup({ features: bit(2) });
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV);
  accept(bit(2) | bit(VIRTIO_F_VERSION_1));
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK);
  w(VIRTIO_MMIO_QUEUE_SEL, 1);
  w(VIRTIO_MMIO_QUEUE_NUM, 16);
  w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x3000);
  w(VIRTIO_MMIO_QUEUE_READY, 1);
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK | S_OK);
  state.raiseInterrupt(VIRTIO_MMIO_INT_VRING);
  const before = state.resetsRequested;
  w(VIRTIO_MMIO_STATUS, 0);
  assert.equal(r(VIRTIO_MMIO_STATUS), 0);
  assert.equal(state.driverFeatures, 0n);
  assert.equal(r(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
  assert.equal(state.resetsRequested, before + 1, "the device thread is told");
  assert.equal(state.queueSel, 0);
  w(VIRTIO_MMIO_QUEUE_SEL, 1);
  assert.equal(r(VIRTIO_MMIO_QUEUE_READY), 0);
  assert.deepEqual(state.queueLayout(1), { size: 64, descTable: 0, availRing: 0, usedRing: 0 });
  // And the device can be brought up again.
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV);
  accept(bit(VIRTIO_F_VERSION_1));
  w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK | S_OK);
  assert.equal(r(VIRTIO_MMIO_STATUS), S_ACK | S_DRV | S_FOK | S_OK);
});

test("InterruptACK clears only the acknowledged bits", () => {
  const { r, w, state } = setup();
  state.raiseInterrupt(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
  w(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
  assert.equal(r(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
});

test("config space reads any aligned size; writes land only where the backend allows and are reported", () => {
  const { r, w, state, ctx } = setup({ config: [1, 2, 3, 4, 5, 6, 7, 8], writable: (o, l) => o >= 4 && o + l <= 8 });
  assert.equal(r(VIRTIO_MMIO_CONFIG, 1), 1);
  assert.equal(r(VIRTIO_MMIO_CONFIG + 2, 2), 0x0403);
  assert.equal(r(VIRTIO_MMIO_CONFIG + 4), 0x08070605);
  w(VIRTIO_MMIO_CONFIG, 0xffffffff); // read-only field
  assert.equal(r(VIRTIO_MMIO_CONFIG), 0x04030201);
  w(VIRTIO_MMIO_CONFIG + 4, 0x11223344);
  assert.equal(r(VIRTIO_MMIO_CONFIG + 4), 0x11223344);
  assert.deepEqual(state.takeConfigDirty(), { offset: 4, length: 4 });
  assert.equal(state.takeConfigDirty(), undefined);
  assert.equal(r(VIRTIO_MMIO_CONFIG + 8), 0, "beyond the config space");
  assert.equal(r(VIRTIO_MMIO_CONFIG + 1, 2), 0, "misaligned");
  assert.equal(ctx.faults.length, 3);
});

test("ConfigGeneration changes when the device changes its config", () => {
  const { r, state } = setup();
  const g = r(VIRTIO_MMIO_CONFIG_GENERATION);
  state.config[0] = 9;
  state.bumpConfigGeneration();
  assert.notEqual(r(VIRTIO_MMIO_CONFIG_GENERATION), g);
});

test("wrong-size, misaligned and legacy register accesses are ignored and counted, never thrown", () => {
  const { t, r, w, ctx, state } = setup();
  const d = new Uint8Array(2).fill(0xaa);
  t.read(VIRTIO_MMIO_STATUS, d);
  assert.deepEqual([...d], [0, 0]);
  w(VIRTIO_MMIO_STATUS, S_ACK, 1);
  assert.equal(r(VIRTIO_MMIO_STATUS), 0);
  t.write(VIRTIO_MMIO_STATUS + 1, new Uint8Array(4));
  w(VIRTIO_MMIO_QUEUE_PFN, 0x1234);
  assert.equal(r(VIRTIO_MMIO_QUEUE_PFN), 0);
  w(VIRTIO_MMIO_DEVICE_ID, 5);
  t.write(VIRTIO_MMIO_MAGIC_VALUE, new Uint8Array(8));
  assert.equal(ctx.faults.length, 7);
  assert.equal(state.guestFaults, 7);
});

test("a QueueNotify that reaches the transport signals the queue's eventfd; a bad index is a fault", () => {
  const { w, state, ctx } = setup();
  const fd = eventfd(0, EFD_NONBLOCK);
  try {
    state.setNotifyFd(1, fd);
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    const buf = new BigUint64Array(1);
    assert.equal(sys.read(fd, buf, 8), 8);
    assert.equal(buf[0], 2n);
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 9);
    assert.equal(ctx.faults.length, 1);
  } finally {
    sys.close(fd);
  }
});

test("the registers come back through a saved state: what the driver reads from the restored device is what it read before", () => {
  const features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX);
  const a = setup({ features: bit(VIRTIO_RING_F_EVENT_IDX), writable: (o) => o >= 4 });
  a.w(VIRTIO_MMIO_STATUS, S_ACK);
  a.w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV);
  a.accept(features);
  a.w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK);
  a.w(VIRTIO_MMIO_QUEUE_SEL, 1);
  a.w(VIRTIO_MMIO_QUEUE_NUM, 32);
  a.w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x10000);
  a.w(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x1);
  a.w(VIRTIO_MMIO_QUEUE_READY, 1);
  a.w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV | S_FOK | S_OK);
  a.w(VIRTIO_MMIO_CONFIG + 4, 0xabcd, 2);
  a.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
  a.state.raiseInterrupt(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
  a.state.bumpConfigGeneration();
  const saved = JSON.parse(JSON.stringify(a.state.saveRegisters()));
  assert.equal(saved.driverFeatures, features.toString(), "64-bit values as decimal strings");
  assert.equal(saved.queues[1].descTable, String(0x1_0001_0000));
  const b = setup({ features: bit(VIRTIO_RING_F_EVENT_IDX), writable: (o) => o >= 4 });
  b.state.restoreRegisters(saved);
  assert.deepEqual(b.state.saveRegisters(), saved, "the record comes back unchanged");
  for (const off of [VIRTIO_MMIO_STATUS, VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_CONFIG + 4]) {
    assert.equal(b.r(off), a.r(off), `register 0x${off.toString(16)}`);
  }
  assert.deepEqual(b.state.queueLayout(1), a.state.queueLayout(1));
  assert.equal(b.state.driverFeatures, features);
});

test("registers saved from another device are refused (EVIRTIOSNAPMISMATCH), and nothing changes", () => {
  const a = setup({ features: bit(VIRTIO_RING_F_EVENT_IDX) });
  a.w(VIRTIO_MMIO_STATUS, S_ACK);
  a.w(VIRTIO_MMIO_STATUS, S_ACK | S_DRV);
  a.accept(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX));
  const saved = a.state.saveRegisters();
  const refused = (b: ReturnType<typeof setup>, pattern: RegExp) => {
    const before = b.state.saveRegisters();
    assert.throws(() => b.state.restoreRegisters(saved), (e: unknown) => (e as { code?: string }).code === "EVIRTIOSNAPMISMATCH" && pattern.test((e as Error).message));
    assert.deepEqual(b.state.saveRegisters(), before);
  };
  refused(setup({ features: bit(VIRTIO_RING_F_EVENT_IDX), queues: [256] }), /has 2 queues, this one 1/);
  refused(setup({ features: bit(VIRTIO_RING_F_EVENT_IDX), queues: [256, 128] }), /queue 1 of the snapshot's device holds 64 descriptors at most, this one 128/);
  refused(setup({ features: bit(VIRTIO_RING_F_EVENT_IDX), config: [1, 2] }), /config space has 8 bytes, this device's 2/);
  refused(setup({ features: 0n }), /accepted features 0x20000000 that this device does not offer/);
});
