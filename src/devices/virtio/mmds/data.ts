/**
 * The device thread's copy of the MMDS data (the API's store, PUT/PATCH /mmds,
 * is the main thread's; Machine.setMmdsData sends each new version here as
 * JSON text) and the two ways a guest reads it (Firecracker's MMDS user guide,
 * "Retrieve metadata"): JSON, or the EC2 IMDS plain-text form, where an
 * object lists its keys one per line (an object's key ends in '/') and a
 * string is itself; other JSON types have no plain-text form.
 */

/** The largest JSON text the device takes (UTF-8 bytes); larger data is refused whole. */
export const MMDS_DATA_MAX_BYTES = 4 << 20;
/** Deepest nesting taken (serde_json's recursion limit, which bounds what Firecracker's store holds). */
export const MMDS_DATA_MAX_DEPTH = 128;

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Why data was refused. */
export class MmdsDataError extends Error {
  readonly code = "EMMDSDATA";
  constructor(message: string) {
    super(message);
    this.name = "MmdsDataError";
  }
}

const isObject = (v: Json | undefined): v is { [key: string]: Json } => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Copies `value` with every object's keys sorted (byte order for ASCII keys, as
 * Firecracker's serde_json map lists them) and checks its depth.
 */
function normalize(value: Json, depth: number): Json {
  if (depth > MMDS_DATA_MAX_DEPTH) throw new MmdsDataError(`Cannot set MMDS data: it nests deeper than ${MMDS_DATA_MAX_DEPTH} levels`);
  if (Array.isArray(value)) return value.map((v) => normalize(v, depth + 1));
  if (!isObject(value)) return value;
  const out: { [key: string]: Json } = {};
  for (const key of Object.keys(value).sort()) out[key] = normalize(value[key]!, depth + 1);
  return out;
}

/** Parses `text` (JSON, at most MMDS_DATA_MAX_BYTES of UTF-8) into normalized data; throws MmdsDataError. */
export function parseMmdsData(text: string): Json {
  if (typeof text !== "string") throw new MmdsDataError("Cannot set MMDS data: it must be JSON text");
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MMDS_DATA_MAX_BYTES) throw new MmdsDataError(`Cannot set MMDS data: ${bytes} bytes of JSON exceed the device's limit of ${MMDS_DATA_MAX_BYTES}`);
  let value: Json;
  try {
    value = JSON.parse(text) as Json;
  } catch (e) {
    throw new MmdsDataError(`Cannot set MMDS data: it is not JSON (${(e as Error).message})`);
  }
  return normalize(value, 0);
}

/**
 * The value at `path`, a URI path read as a JSON pointer (RFC 6901: "/a/b"; "" and "/"
 * are the whole document; "~1" is '/', "~0" is '~'); undefined when there is none.
 * A trailing '/' is ignored, as Firecracker's get_value does.
 */
export function lookup(data: Json, path: string): Json | undefined {
  const pointer = path.endsWith("/") ? path.slice(0, -1) : path;
  if (pointer === "") return data;
  if (!pointer.startsWith("/")) return undefined;
  let node: Json | undefined = data;
  for (const raw of pointer.slice(1).split("/")) {
    const key = raw.replace(/~1/g, "/").replace(/~0/g, "~");
    if (Array.isArray(node)) {
      node = /^(0|[1-9]\d{0,8})$/.test(key) ? node[Number(key)] : undefined;
    } else if (isObject(node)) {
      node = Object.hasOwn(node, key) ? node[key] : undefined;
    } else {
      return undefined;
    }
    if (node === undefined) return undefined;
  }
  return node;
}

/** The IMDS plain-text form of `value`, or undefined when it has none (not an object or a string). */
export function formatImds(value: Json): string | undefined {
  if (typeof value === "string") return value;
  if (!isObject(value)) return undefined;
  return Object.keys(value).map((k) => (isObject(value[k]) ? `${k}/` : k)).join("\n");
}
