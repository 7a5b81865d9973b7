/**
 * MMDS version 2 session tokens (Firecracker's MMDS user guide, "Version 2"):
 * `PUT /latest/api/token` with a lifetime of 1 to 21600 seconds returns a
 * token; a GET then presents it. A token carries its expiry (the device
 * thread's monotonic clock, in ms) and an HMAC-SHA256 of it under a key drawn
 * at random for each device, so a guest can neither forge one nor stretch its
 * lifetime, and tokens from another device or an earlier run are invalid.
 * Nothing is stored per token: the number of tokens a guest asks for costs
 * no memory.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/** The shortest and longest lifetime a token may be given, in seconds. */
export const MMDS_TOKEN_TTL_MIN_SECONDS = 1;
export const MMDS_TOKEN_TTL_MAX_SECONDS = 21600;
/** Bytes of the HMAC kept in a token (128 bits). */
const MAC_BYTES = 16;
/** Bytes of the expiry (a big-endian 64-bit count of ms). */
const EXPIRY_BYTES = 8;
/** A token is base64url of expiry + MAC: this many characters; anything longer is refused unread. */
const TOKEN_CHARS = Math.ceil(((EXPIRY_BYTES + MAC_BYTES) * 4) / 3);

/** Issues and checks the tokens of one device. */
export class TokenAuthority {
  private readonly key = randomBytes(32);

  /** `nowMs`: a monotonic clock in ms (the device thread's). */
  constructor(private readonly nowMs: () => number) {}

  /** A token valid for `ttlSeconds` (checked by the caller to lie in the bounds above). */
  issue(ttlSeconds: number): string {
    const payload = Buffer.alloc(EXPIRY_BYTES);
    payload.writeBigUInt64BE(BigInt(Math.ceil(this.nowMs() + ttlSeconds * 1000)));
    return Buffer.concat([payload, this.mac(payload)]).toString("base64url");
  }

  /** True for a token this authority issued whose lifetime has not ended. */
  isValid(token: string): boolean {
    if (token.length !== TOKEN_CHARS || !/^[A-Za-z0-9_-]+$/.test(token)) return false;
    const bytes = Buffer.from(token, "base64url");
    if (bytes.length !== EXPIRY_BYTES + MAC_BYTES) return false;
    const payload = bytes.subarray(0, EXPIRY_BYTES);
    if (!timingSafeEqual(bytes.subarray(EXPIRY_BYTES), this.mac(payload))) return false;
    return Number(payload.readBigUInt64BE()) > this.nowMs();
  }

  private mac(payload: Uint8Array): Buffer {
    return createHmac("sha256", this.key).update(payload).digest().subarray(0, MAC_BYTES);
  }
}
