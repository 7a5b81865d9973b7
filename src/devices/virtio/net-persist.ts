/**
 * virtio-net's part of a device's saved state (device-saved-state.ts):
 * what VirtioNet.saveState writes and restoreState reads (net.ts).
 *
 * TX chains are all returned in the pass that took them. The receive path
 * can hold two things across passes, and the record carries both, so that
 * nothing the guest was owed is lost or given twice:
 *   - a frame read from the TAP that no receive buffer has taken yet (the
 *     TAP keeps the frames behind it): its bytes, header included;
 *   - with mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF), the receive
 *     chains the device holds: popped, in flight, unpublished, in ring
 *     order. They are taken for that frame while the driver had not posted
 *     enough for all of it (published together once the frame fits,
 *     §5.1.6.4), or held for the next frame read in place (net.ts holds
 *     room for a 64 KiB frame). Returning them empty at quiesce would show
 *     the guest length errors (and cost the frame), so they stay held and
 *     the restored device fills them.
 * Both limiters travel too (Firecracker's NetState does the same).
 *
 * Not carried (as in Firecracker, whose record keeps only MMDS's
 * configuration): MMDS's TCP connections and its data. A guest's open MMDS
 * connection is answered with a reset after a restore and it connects
 * again; the host sets the data again (MMDS_REQUEST_SET_DATA), and V2 tokens
 * issued before the snapshot are no longer valid (the key is drawn anew).
 */
import type { GuestMemory } from "../../memory/guest-memory.js";
import { checkRateLimiterSavedState, type RateLimiterSavedState } from "./rate-limiter.js";
import { bytesToSaved, savedArray, savedBool, savedBytes, savedObject, savedUint, VirtioSavedStateError } from "./saved-state.js";

/** A receive chain held for the pending frame: its head and its device-writable buffers [guest address, length]. */
export interface NetHeldChainSavedState {
  head: number;
  writable: [number, number][];
}

/** virtio-net's record. */
export interface NetSavedState {
  rxLimiter: RateLimiterSavedState;
  txLimiter: RateLimiterSavedState;
  /** The frame waiting for receive buffers, virtio header first (base64; "" when none). */
  rxPending: string;
  /** Its tokens were already taken from the RX limiter. */
  rxAdmitted: boolean;
  /** Mergeable receive buffers: the chains held (for the pending frame and after it), in order. */
  rxHeld: NetHeldChainSavedState[];
}

/** The pending frame and held chains as the device keeps them (net.ts). */
export interface NetHeldRx {
  frame: Uint8Array;
  admitted: boolean;
  chains: { head: number; writable: { addr: number; len: number }[] }[];
}

/** Bytes for the record's rxPending. */
export const frameToSaved = (frame: Uint8Array): string => bytesToSaved(frame);

/**
 * Reads virtio-net's record from JSON: a frame of at most `maxFrameBytes`,
 * at most `maxHeld` held chains (the queue size), whose buffers must lie in
 * guest `memory` (when the driver's session was live; without it nothing may
 * be held). Throws VirtioSavedStateError (EVIRTIOSNAPFORMAT, EVIRTIOSNAPMISMATCH).
 */
export function checkNetSavedState(
  v: unknown, o: { maxFrameBytes: number; maxHeld: number; memory: GuestMemory | undefined; mergeable: boolean },
): { rxLimiter: RateLimiterSavedState; txLimiter: RateLimiterSavedState; rx: NetHeldRx } {
  const r = savedObject(v, "backend");
  const frame = savedBytes(r.rxPending, "backend.rxPending", o.maxFrameBytes);
  const held = savedArray(r.rxHeld, "backend.rxHeld", o.maxHeld).map((cv, i) => {
    const p = `backend.rxHeld[${i}]`;
    const c = savedObject(cv, p);
    const writable = savedArray(c.writable, `${p}.writable`, o.maxHeld).map((bv, k) => {
      const pair = savedArray(bv, `${p}.writable[${k}]`, 2);
      if (pair.length !== 2) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field ${p}.writable[${k}] must be [address, length]`);
      const addr = savedUint(pair[0], `${p}.writable[${k}][0]`, Number.MAX_SAFE_INTEGER);
      const len = savedUint(pair[1], `${p}.writable[${k}][1]`);
      if (o.memory && !o.memory.contains(addr, len)) {
        throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `${p}: buffer 0x${addr.toString(16)}+${len} is outside guest memory`);
      }
      return { addr, len };
    });
    return { head: savedUint(c.head, `${p}.head`, o.maxHeld - 1), writable };
  });
  if (!o.memory && (frame.length > 0 || held.length > 0)) {
    throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", "saved state field backend.rxPending or rxHeld is set for a device that was not active");
  }
  if (held.length > 0 && !o.mergeable) {
    throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", "saved state field backend.rxHeld holds chains, but the driver did not negotiate mergeable receive buffers");
  }
  return {
    rxLimiter: checkRateLimiterSavedState(r.rxLimiter, "backend.rxLimiter"),
    txLimiter: checkRateLimiterSavedState(r.txLimiter, "backend.txLimiter"),
    rx: { frame, admitted: savedBool(r.rxAdmitted, "backend.rxAdmitted"), chains: held },
  };
}
