/**
 * virtio-blk's part of a device's saved state (device-saved-state.ts):
 * what VirtioBlock.saveState writes and restoreState reads (block.ts).
 *
 * Every request is served inside the pass that popped it, except a
 * WRITE_ZEROES whose zeros the file system cannot make itself: it is written
 * over several passes (block.ts ZeroJob), its chain popped and in flight all
 * along. A quiesced device may hold such jobs, so the record lists them (the
 * chain's head, where its status byte goes, and the byte ranges still to
 * zero); the restored device writes what is left and completes them, once.
 * Everything else the device needs is its options (the image path, read-only)
 * and the features the driver accepted (write-through or write-back).
 */
import type { GuestMemory } from "../../memory/guest-memory.js";
import { checkRateLimiterSavedState, type RateLimiterSavedState } from "./rate-limiter.js";
import { savedArray, savedBool, savedObject, savedU64, savedUint, VirtioSavedStateError } from "./saved-state.js";

/** A WRITE_ZEROES request still being written (block.ts ZeroJob). */
export interface BlockZeroJobSavedState {
  /** Its chain's head (in flight in the queue's record). */
  head: number;
  /** Guest address of its status byte. */
  statusAddr: number;
  /** Byte ranges of the image still to zero, first first. */
  ranges: { offset: number; length: number; unmap: boolean }[];
}

/** virtio-blk's record. */
export interface BlockSavedState {
  /** The disk size the guest was told, in sectors (decimal string): the restored drive must have it. */
  capacitySectors: string;
  /** The drive's rate limiter (updates included). */
  limiter: RateLimiterSavedState;
  /** WRITE_ZEROES requests being written, oldest first (empty when the device was not active). */
  zeroJobs: BlockZeroJobSavedState[];
}

/** Most zero jobs a record may hold: one per descriptor of the queue (block.ts BLOCK_QUEUE_SIZE). */
const MAX_ZERO_JOBS = 256;
/** Most ranges of one job (block.ts BLOCK_MAX_DISCARD_SEG). */
const MAX_ZERO_RANGES = 8;
const SECTOR = 512n;

/**
 * Reads virtio-blk's record from JSON, for a drive of `capacitySectors` and,
 * when the driver's session was live, its guest `memory`. Throws
 * VirtioSavedStateError: EVIRTIOSNAPFORMAT when malformed, EVIRTIOSNAPMISMATCH
 * when the drive's size differs from the one the guest was told, or a job
 * lies outside the disk or guest memory.
 */
export function checkBlockSavedState(v: unknown, capacitySectors: bigint, memory: GuestMemory | undefined): BlockSavedState {
  const o = savedObject(v, "backend");
  const saved = savedU64(o.capacitySectors, "backend.capacitySectors");
  if (saved !== capacitySectors) {
    throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `the snapshot's guest saw a disk of ${saved} sectors, this drive has ${capacitySectors}`);
  }
  const diskBytes = capacitySectors * SECTOR;
  const zeroJobs = savedArray(o.zeroJobs, "backend.zeroJobs", MAX_ZERO_JOBS).map((jv, i): BlockZeroJobSavedState => {
    const p = `backend.zeroJobs[${i}]`;
    const j = savedObject(jv, p);
    const statusAddr = savedUint(j.statusAddr, `${p}.statusAddr`, Number.MAX_SAFE_INTEGER);
    if (!memory) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field ${p} is a request of a device that was not active`);
    if (!memory.contains(statusAddr, 1)) throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `${p}: status byte 0x${statusAddr.toString(16)} is outside guest memory`);
    const ranges = savedArray(j.ranges, `${p}.ranges`, MAX_ZERO_RANGES).map((rv, k) => {
      const rp = `${p}.ranges[${k}]`;
      const r = savedObject(rv, rp);
      const offset = savedUint(r.offset, `${rp}.offset`, Number.MAX_SAFE_INTEGER);
      const length = savedUint(r.length, `${rp}.length`, Number.MAX_SAFE_INTEGER);
      if (BigInt(offset) + BigInt(length) > diskBytes) throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `${rp}: bytes ${offset}+${length} lie outside the disk`);
      return { offset, length, unmap: savedBool(r.unmap, `${rp}.unmap`) };
    });
    return { head: savedUint(j.head, `${p}.head`, MAX_ZERO_JOBS - 1), statusAddr, ranges };
  });
  return { capacitySectors: saved.toString(10), limiter: checkRateLimiterSavedState(o.limiter, "backend.limiter"), zeroJobs };
}
