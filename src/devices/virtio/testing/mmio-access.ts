/**
 * Register access for tests that play the driver against a
 * VirtioMmioTransport directly: `r(off)` / `w(off, v)` read and write a
 * register of 1, 2 or 4 bytes (virtio 1.x §4.2.2: device registers are
 * 32-bit, config space may be narrower), little-endian.
 */
import type { BusDevice } from "../../bus.js";

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
