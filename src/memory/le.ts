/**
 * Little-endian access: the only place flint reads or writes multi-byte
 * values in guest-visible or ABI memory. Everything x86 and virtio is
 * little-endian; these helpers make that explicit and keep DataView creation
 * correct for views that do not start at offset 0.
 */

/** A DataView over exactly the bytes of `bytes` (honours byteOffset). */
export function dataView(bytes: ArrayBufferView): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export const getU8 = (v: DataView, off: number): number => v.getUint8(off);
export const getU16 = (v: DataView, off: number): number => v.getUint16(off, true);
export const getU32 = (v: DataView, off: number): number => v.getUint32(off, true);
export const getU64 = (v: DataView, off: number): bigint => v.getBigUint64(off, true);
export const getI32 = (v: DataView, off: number): number => v.getInt32(off, true);
export const setU8 = (v: DataView, off: number, x: number): void => v.setUint8(off, x);
export const setU16 = (v: DataView, off: number, x: number): void => v.setUint16(off, x, true);
export const setU32 = (v: DataView, off: number, x: number): void => v.setUint32(off, x >>> 0, true);
export const setU64 = (v: DataView, off: number, x: bigint | number): void =>
  v.setBigUint64(off, BigInt(x), true);

/** Reads an unsigned 64-bit value as a number, throwing if it exceeds 2^53. */
export function getU64Number(v: DataView, off: number): number {
  const x = v.getBigUint64(off, true);
  if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`64-bit value 0x${x.toString(16)} is too large`);
  return Number(x);
}

/** Reads a little-endian unsigned value of 1, 2, 4 or 8 bytes (8 as number if safe). */
export function getUint(v: DataView, off: number, size: number): number {
  switch (size) {
    case 1: return v.getUint8(off);
    case 2: return v.getUint16(off, true);
    case 4: return v.getUint32(off, true);
    case 8: return getU64Number(v, off);
    default: throw new RangeError(`bad access size ${size}`);
  }
}

/** Writes a little-endian unsigned value of 1, 2, 4 or 8 bytes. */
export function setUint(v: DataView, off: number, size: number, x: number): void {
  switch (size) {
    case 1: v.setUint8(off, x & 0xff); return;
    case 2: v.setUint16(off, x & 0xffff, true); return;
    case 4: v.setUint32(off, x >>> 0, true); return;
    case 8: v.setBigUint64(off, BigInt(x), true); return;
    default: throw new RangeError(`bad access size ${size}`);
  }
}

/** Sum of bytes modulo 256 (ACPI and MP table checksums). */
export function byteSum(bytes: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i++) s = (s + bytes[i]!) & 0xff;
  return s;
}
