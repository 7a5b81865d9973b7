/**
 * The pieces every virtio saved-state record is made of: its error (with a
 * stable code), and how values are written into a record and read back
 * from one that came in as JSON (from a snapshot file: untrusted until
 * read through these).
 *
 * A record is plain JSON (JSON.stringify / JSON.parse give it back as it
 * was), with two conventions:
 *   - 64-bit values (feature bits, ring addresses) are decimal strings, so
 *     that none loses bits as a JSON number (u64ToSaved / savedU64);
 *   - bytes (config space, a held frame) are base64 strings (bytesToSaved /
 *     savedBytes): a third of the size of a number array, and one string.
 * Every other value is a number, a boolean, null, an array or an object.
 *
 * The readers throw VirtioSavedStateError "EVIRTIOSNAPFORMAT" naming the
 * field by its path in the record ("transport.queues[1].size"), so that a
 * damaged or hand-edited record is refused with one line that says where.
 */

/**
 * Why a saved state could not be taken or used:
 *   - EVIRTIOSNAPVERSION: the record's version is not one this flint reads;
 *   - EVIRTIOSNAPFORMAT: the record is malformed (a field missing, of the wrong type or out of range);
 *   - EVIRTIOSNAPMISMATCH: the record is well-formed but does not fit the device it is restored into
 *     (another kind, queue count, config size, disk size, or guest memory);
 *   - EVIRTIONOTQUIESCED: a save was asked of a device that is not quiesced (VirtioSet.quiesce first).
 */
export class VirtioSavedStateError extends Error {
  readonly code: "EVIRTIOSNAPVERSION" | "EVIRTIOSNAPFORMAT" | "EVIRTIOSNAPMISMATCH" | "EVIRTIONOTQUIESCED";
  constructor(code: VirtioSavedStateError["code"], message: string) {
    super(message);
    this.name = "VirtioSavedStateError";
    this.code = code;
  }

  /** The same error with `prefix` before its message ("Cannot restore virtio-net@0x...: "). */
  prefixed(prefix: string): VirtioSavedStateError {
    return new VirtioSavedStateError(this.code, `${prefix}${this.message}`);
  }
}

const malformed = (path: string, what: string): VirtioSavedStateError =>
  new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field ${path} ${what}`);

/** A u64 for a record (a decimal string). */
export const u64ToSaved = (v: bigint): string => BigInt.asUintN(64, v).toString(10);

/** Bytes for a record (base64). */
export const bytesToSaved = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");

/** `v` as an object (not null, not an array), or throws. */
export function savedObject(v: unknown, path: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw malformed(path, "must be an object");
  return v as Record<string, unknown>;
}

/** `v` as an array of at most `maxLength` entries, or throws. */
export function savedArray(v: unknown, path: string, maxLength: number): unknown[] {
  if (!Array.isArray(v)) throw malformed(path, "must be an array");
  if (v.length > maxLength) throw malformed(path, `has ${v.length} entries, at most ${maxLength} fit`);
  return v;
}

/** `v` as a whole number from 0 to `max` (default 2^32 - 1), or throws. */
export function savedUint(v: unknown, path: string, max = 0xffff_ffff): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > max) throw malformed(path, `must be a whole number from 0 to ${max}`);
  return v;
}

/** `v` as a boolean, or throws. */
export function savedBool(v: unknown, path: string): boolean {
  if (typeof v !== "boolean") throw malformed(path, "must be true or false");
  return v;
}

/** `v` as a u64 written by u64ToSaved (a decimal string), or throws. */
export function savedU64(v: unknown, path: string): bigint {
  if (typeof v !== "string" || !/^(0|[1-9][0-9]{0,19})$/.test(v) || BigInt(v) >= 1n << 64n) {
    throw malformed(path, "must be a 64-bit unsigned integer as a decimal string");
  }
  return BigInt(v);
}

/** `v` as bytes written by bytesToSaved (base64, at most `maxBytes`), or throws. */
export function savedBytes(v: unknown, path: string, maxBytes: number): Uint8Array {
  if (typeof v !== "string" || v.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) throw malformed(path, "must be base64");
  if ((v.length / 4) * 3 > maxBytes + 2) throw malformed(path, `holds more than ${maxBytes} bytes`);
  const b = Buffer.from(v, "base64");
  if (b.length > maxBytes) throw malformed(path, `holds more than ${maxBytes} bytes`);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}
