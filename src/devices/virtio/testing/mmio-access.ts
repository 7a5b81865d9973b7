/**
 * Register access for tests that play the driver against a
 * VirtioMmioTransport directly: `r(off)` / `w(off, v)` read and write a
 * register of 1, 2 or 4 bytes (virtio 1.x §4.2.2: device registers are
 * 32-bit, config space may be narrower), little-endian.
 */
import {
  VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
  VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS,
} from "../../../linux/abi.generated.js";
import type { BusDevice } from "../../bus.js";
import type { FakeDriver } from "./fake-driver.js";

export interface MmioAccess {
  /** Reads `size` bytes at `off` (the buffer starts as 0xaa, so an untouched byte shows). */
  r(off: number, size?: number): number;
  w(off: number, v: number, size?: number): void;
}

/** Accessors over a transport, or any register window that forwards to one. */
export function mmioAccess(t: BusDevice): MmioAccess {
  return {
    r(off, size = 4) {
      const d = new Uint8Array(size).fill(0xaa);
      t.read(off, d);
      const v = new DataView(d.buffer);
      return size === 4 ? v.getUint32(0, true) : size === 2 ? v.getUint16(0, true) : d[0]!;
    },
    w(off, value, size = 4) {
      const d = new Uint8Array(size);
      const v = new DataView(d.buffer);
      if (size === 4) v.setUint32(0, value >>> 0, true);
      else if (size === 2) v.setUint16(0, value, true);
      else d[0] = value;
      t.write(off, d);
    },
  };
}

/**
 * Linux's virtio_mmio probe and virtio_dev_probe through `w` (virtio 1.x §3.1.1):
 * reset, ACKNOWLEDGE, DRIVER, the driver's `features`, FEATURES_OK, then for
 * each queue index with a driver its size and ring addresses and QueueReady,
 * then DRIVER_OK. Queues whose entry is undefined are left alone.
 */
export function probeAsLinux(w: MmioAccess["w"], features: bigint, drivers: readonly (FakeDriver | undefined)[]): void {
  w(VIRTIO_MMIO_STATUS, 0);
  w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
  w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
  w(VIRTIO_MMIO_DRIVER_FEATURES, Number(features & 0xffffffffn));
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
  w(VIRTIO_MMIO_DRIVER_FEATURES, Number(features >> 32n));
  w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
  drivers.forEach((drv, q) => {
    if (!drv) return;
    const l = drv.layout;
    w(VIRTIO_MMIO_QUEUE_SEL, q);
    w(VIRTIO_MMIO_QUEUE_NUM, l.size);
    w(VIRTIO_MMIO_QUEUE_DESC_LOW, l.descTable % 2 ** 32); w(VIRTIO_MMIO_QUEUE_DESC_HIGH, Math.floor(l.descTable / 2 ** 32));
    w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, l.availRing % 2 ** 32); w(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, Math.floor(l.availRing / 2 ** 32));
    w(VIRTIO_MMIO_QUEUE_USED_LOW, l.usedRing % 2 ** 32); w(VIRTIO_MMIO_QUEUE_USED_HIGH, Math.floor(l.usedRing / 2 ** 32));
    w(VIRTIO_MMIO_QUEUE_READY, 1);
  });
  w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
}
