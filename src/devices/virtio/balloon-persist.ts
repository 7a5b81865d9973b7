/**
 * virtio-balloon's part of a device's saved state (device-saved-state.ts):
 * what VirtioBalloon.saveState writes and restoreState reads (balloon.ts).
 *
 * Inflate and deflate requests are completed in the pass that took them.
 * The statistics buffer is not: the device holds it (popped, in flight)
 * until the host wants fresh statistics, and then gives it back (§5.5.6.3).
 * The record names it, so that the restored device gives it back once, when
 * asked. With it: the target the host set (the guest was told it in config
 * space, which travels with the registers), the size the driver reported,
 * the guest's latest statistics, and which pages are in the balloon (so that
 * a page inflated twice is still refused, and deflating counts right). The
 * ballooned pages themselves were given back to the host (MADV_DONTNEED):
 * they read as zeros in the snapshot's memory, as in the VM it came from.
 * Counters (metrics) are per run and start afresh.
 */
import type { GuestMemory } from "../../memory/guest-memory.js";
import { savedArray, savedObject, savedU64, savedUint, u64ToSaved, VirtioSavedStateError } from "./saved-state.js";

/** virtio-balloon's record. */
export interface BalloonSavedState {
  /** The target (config num_pages) in 4 KiB balloon pages. */
  targetPages: number;
  /** The balloon's size the driver last reported (config actual), in pages. */
  actualPages: number;
  /** Head of the statistics buffer the device holds (in flight on the stats queue), or null. */
  statsHead: number | null;
  /** How many statistics reports the driver has sent, and the latest: [tag, value as a decimal string]. */
  statsUpdates: number;
  stats: [number, string][];
  /** The pages in the balloon, as runs [guest address, pages]. */
  inflated: [number, number][];
}

/** The balloon's state as the device keeps it, read from a record (checkBalloonSavedState). */
export interface BalloonRestored {
  targetPages: number;
  actualPages: number;
  statsHead: number | undefined;
  statsUpdates: number;
  stats: Map<number, bigint>;
  inflated: [number, number][];
}

/** Stats entries as a record holds them. */
export const statsToSaved = (byTag: ReadonlyMap<number, bigint>): [number, string][] =>
  [...byTag].map(([tag, value]) => [tag, u64ToSaved(value)]);

/**
 * Reads the balloon's record from JSON, for a device with queues of
 * `queueSize` and, when the driver's session was live, its guest `memory`
 * (every inflated run must be whole pages of it; without a session nothing
 * may be held or inflated). Throws VirtioSavedStateError.
 */
export function checkBalloonSavedState(
  v: unknown, o: { queueSize: number; maxStats: number; pageBytes: number; memory: GuestMemory | undefined },
): BalloonRestored {
  const r = savedObject(v, "backend");
  const stats = new Map<number, bigint>();
  savedArray(r.stats, "backend.stats", o.maxStats).forEach((ev, i) => {
    const pair = savedArray(ev, `backend.stats[${i}]`, 2);
    if (pair.length !== 2) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field backend.stats[${i}] must be [tag, value]`);
    stats.set(savedUint(pair[0], `backend.stats[${i}][0]`, 0xffff), savedU64(pair[1], `backend.stats[${i}][1]`));
  });
  const maxRuns = o.memory ? Math.ceil(o.memory.totalBytes / o.pageBytes) : 0;
  const inflated = savedArray(r.inflated, "backend.inflated", maxRuns).map((ev, i): [number, number] => {
    const p = `backend.inflated[${i}]`;
    const pair = savedArray(ev, p, 2);
    if (pair.length !== 2) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field ${p} must be [guest address, pages]`);
    const addr = savedUint(pair[0], `${p}[0]`, Number.MAX_SAFE_INTEGER), pages = savedUint(pair[1], `${p}[1]`, maxRuns);
    if (addr % o.pageBytes !== 0 || pages === 0 || !o.memory?.contains(addr, pages * o.pageBytes)) {
      throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `${p}: ${pages} balloon pages at 0x${addr.toString(16)} are not whole pages of guest memory`);
    }
    return [addr, pages];
  });
  const statsHead = r.statsHead === null ? undefined : savedUint(r.statsHead, "backend.statsHead", o.queueSize - 1);
  if (statsHead !== undefined && !o.memory) {
    throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", "saved state field backend.statsHead is set for a device that was not active");
  }
  return {
    targetPages: savedUint(r.targetPages, "backend.targetPages"), actualPages: savedUint(r.actualPages, "backend.actualPages"),
    statsHead, statsUpdates: savedUint(r.statsUpdates, "backend.statsUpdates", Number.MAX_SAFE_INTEGER), stats, inflated,
  };
}
