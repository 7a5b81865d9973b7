/**
 * The snapshot state file: what a paused VM was (vCPUs, irqchip, devices,
 * the layout of its memory file), in a container that says what it is and
 * whether it is intact, so that a corrupted, truncated or foreign file is
 * refused with one line before anything starts.
 *
 * Layout (little-endian):
 *
 *   offset  size  field
 *        0     8  magic "FLINTSNP"
 *        8     4  format version (SNAPSHOT_FORMAT_VERSION)
 *       12     4  flags (0; a reader refuses bits it does not know)
 *       16     8  body length n
 *       24     n  body: UTF-8 JSON of the state, with typed values (below)
 *   24 + n     4  CRC-32 (ISO-HDLC, zlib's) of bytes [0, 24 + n)
 *
 * Firecracker's state file is likewise a versioned header, the serialized
 * state and a checksum over both (its snapshot/mod.rs: magic and version
 * first, CRC-64 last). flint's body is JSON so `flint snapshot inspect` and
 * any tool can read it; the values JSON has no form for are written as
 * one-key objects: `{"$bytes": base64}` for a Uint8Array (KVM's structs,
 * kept as the bytes KVM gave) and `{"$bigint": "decimal"}` for a bigint
 * (64-bit registers and addresses). A format version is bumped whenever a
 * reader of the previous version would misread the new body; a reader
 * refuses any version but its own (no silent best effort).
 */
import { crc32 } from "node:zlib";

/** The first 8 bytes of every flint state file. */
export const SNAPSHOT_MAGIC = "FLINTSNP";
/** The body layout this flint writes and reads. */
export const SNAPSHOT_FORMAT_VERSION = 1;

const HEADER_BYTES = 24;
const CRC_BYTES = 4;
/** A state file is a few hundred KiB at most (vCPU and device records; no guest memory). */
export const MAX_STATE_FILE_BYTES = 64 << 20;

/** Why a state file was refused; `code` is stable, the message is one line. */
export class SnapshotError extends Error {
  /**
   * ESNAPMAGIC: not a flint state file. ESNAPVERSION: another format
   * version. ESNAPTRUNCATED: shorter (or longer) than its header says.
   * ESNAPCHECKSUM: its bytes changed after it was written. ESNAPBODY: intact
   * but its body is not the state this flint expects. ESNAPMEMORY: the
   * memory file does not match the state. ESNAPIO: a file could not be read
   * or written. ESNAPSTATE: the VM is not in a state that can be saved.
   * ESNAPUFFD: the userfaultfd memory backend failed (no page-fault handler
   * at the socket, the handler closed the connection, a bad handshake).
   */
  readonly code:
    | "ESNAPMAGIC" | "ESNAPVERSION" | "ESNAPTRUNCATED" | "ESNAPCHECKSUM" | "ESNAPBODY" | "ESNAPMEMORY" | "ESNAPIO" | "ESNAPSTATE"
    | "ESNAPUFFD";
  constructor(code: SnapshotError["code"], message: string) {
    super(message);
    this.name = "SnapshotError";
    this.code = code;
  }
}

/** JSON with Uint8Array and bigint values (see the module comment). */
function replacer(this: unknown, _key: string, value: unknown): unknown {
  if (typeof value === "bigint") return { $bigint: value.toString() };
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  return value;
}

function reviver(_key: string, value: unknown): unknown {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1) {
      const v = (value as Record<string, unknown>)[keys[0]!];
      if (keys[0] === "$bigint" && typeof v === "string" && /^-?\d+$/.test(v)) return BigInt(v);
      if (keys[0] === "$bytes" && typeof v === "string") return new Uint8Array(Buffer.from(v, "base64"));
    }
  }
  return value;
}

/** The state file's bytes for `state` (any JSON-able value with Uint8Array and bigint leaves). */
export function encodeStateFile(state: unknown): Uint8Array {
  const body = Buffer.from(JSON.stringify(state, replacer), "utf8");
  const out = Buffer.alloc(HEADER_BYTES + body.length + CRC_BYTES);
  out.write(SNAPSHOT_MAGIC, 0, "latin1");
  out.writeUInt32LE(SNAPSHOT_FORMAT_VERSION, 8);
  out.writeUInt32LE(0, 12);
  out.writeBigUInt64LE(BigInt(body.length), 16);
  body.copy(out, HEADER_BYTES);
  out.writeUInt32LE(crc32(out.subarray(0, HEADER_BYTES + body.length)), HEADER_BYTES + body.length);
  return out;
}

/** What a state file's header says, read without trusting the rest. */
export interface StateFileHeader {
  formatVersion: number;
  bodyBytes: number;
  /** The CRC-32 stored in the file. */
  checksum: number;
}

/**
 * Checks a state file and returns its body (the value given to
 * encodeStateFile). Throws SnapshotError: ESNAPMAGIC, ESNAPVERSION,
 * ESNAPTRUNCATED, ESNAPCHECKSUM or ESNAPBODY (not JSON); `what` names the
 * file in the message.
 */
export function decodeStateFile(bytes: Uint8Array, what = "the snapshot"): { header: StateFileHeader; body: unknown } {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 8 || buf.toString("latin1", 0, 8) !== SNAPSHOT_MAGIC) {
    throw new SnapshotError("ESNAPMAGIC", `Cannot load ${what}: not a flint snapshot state file (no "${SNAPSHOT_MAGIC}" magic)`);
  }
  if (buf.length < HEADER_BYTES + CRC_BYTES) {
    throw new SnapshotError("ESNAPTRUNCATED", `Cannot load ${what}: truncated (${buf.length} bytes, shorter than its header)`);
  }
  const formatVersion = buf.readUInt32LE(8);
  if (formatVersion !== SNAPSHOT_FORMAT_VERSION) {
    throw new SnapshotError("ESNAPVERSION",
      `Cannot load ${what}: snapshot format version ${formatVersion}, this flint reads version ${SNAPSHOT_FORMAT_VERSION} only`);
  }
  const flags = buf.readUInt32LE(12);
  const length = buf.readBigUInt64LE(16);
  const expected = BigInt(HEADER_BYTES + CRC_BYTES) + length;
  if (expected !== BigInt(buf.length)) {
    throw new SnapshotError("ESNAPTRUNCATED",
      `Cannot load ${what}: ${buf.length} bytes where its header says ${expected} (${expected > BigInt(buf.length) ? "truncated" : "trailing bytes"})`);
  }
  const bodyBytes = Number(length);
  const stored = buf.readUInt32LE(HEADER_BYTES + bodyBytes);
  const computed = crc32(buf.subarray(0, HEADER_BYTES + bodyBytes));
  if (stored !== computed) {
    throw new SnapshotError("ESNAPCHECKSUM",
      `Cannot load ${what}: checksum mismatch (stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)}): the file changed after it was written`);
  }
  // Checked after the CRC: a flipped bit here is corruption, a set bit in an intact file is a newer writer.
  if (flags !== 0) throw new SnapshotError("ESNAPVERSION", `Cannot load ${what}: unknown header flags 0x${flags.toString(16)}`);
  let body: unknown;
  try {
    body = JSON.parse(buf.toString("utf8", HEADER_BYTES, HEADER_BYTES + bodyBytes), reviver);
  } catch (e) {
    throw new SnapshotError("ESNAPBODY", `Cannot load ${what}: its body is not JSON (${(e as Error).message})`);
  }
  return { header: { formatVersion, bodyBytes, checksum: stored }, body };
}
