/**
 * MMDS's data store (PUT, PATCH and GET /mmds): one JSON object, replaced
 * by PUT, merged by PATCH as a JSON merge patch (RFC 7396), bounded in size
 * (Firecracker's --mmds-size-limit, by default its API payload limit). A
 * change that would pass the limit is refused and changes nothing.
 */

/** Why the store refused a change; EMMDSLIMIT is Firecracker's 413. */
export class MmdsError extends Error {
  readonly code: "EMMDSLIMIT" | "EMMDSVALUE";
  constructor(code: MmdsError["code"], message: string) {
    super(message);
    this.name = "MmdsError";
    this.code = code;
  }
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function isObject(v: unknown): v is Record<string, Json> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** RFC 7396 §2: null deletes a member, an object merges into an object, anything else replaces. */
export function mergePatch(target: Json, patch: Json): Json {
  if (!isObject(patch)) return patch;
  const out: Record<string, Json> = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k] ?? null, v);
  }
  return out;
}

/** The store of one VM. */
export class MmdsStore {
  private data: Record<string, Json> = {};

  constructor(readonly limitBytes: number) {}

  /** GET /mmds: the whole object. */
  get(): Record<string, Json> {
    return this.data;
  }

  /** PUT /mmds: replaces the contents. */
  put(value: unknown): void {
    this.take(value);
  }

  /** PATCH /mmds: merges `patch` into the contents. */
  patch(patch: unknown): void {
    if (!isObject(patch)) throw new MmdsError("EMMDSVALUE", "MMDS error: The MMDS patch request must be a JSON object.");
    this.take(mergePatch(this.data, patch));
  }

  private take(value: unknown): void {
    if (!isObject(value)) throw new MmdsError("EMMDSVALUE", "MMDS error: The MMDS data store holds a JSON object.");
    const size = Buffer.byteLength(JSON.stringify(value));
    if (size > this.limitBytes) {
      throw new MmdsError("EMMDSLIMIT", `MMDS limit exceeded error: The MMDS data store would hold ${size} bytes, more than its limit of ${this.limitBytes}.`);
    }
    this.data = value;
  }
}
