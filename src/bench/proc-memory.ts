/**
 * A process's memory as /proc shows it (proc(5)): the fields of
 * /proc/<pid>/status the overhead section reports, the resident part of the
 * guest RAM mapping(s) in /proc/<pid>/smaps, and a sampler that follows a
 * running process to the peak of its private memory.
 *
 * RSS counts file-backed pages (the node or qemu binary, shared libraries)
 * that every process running the same binary shares; anonymous memory
 * (RssAnon + RssShmem: heaps, stacks, JIT code, and guest RAM) is what each
 * further VM costs a host. Both are reported.
 */
import { readFileSync } from "node:fs";
import { BenchError } from "./bench-error.js";

/** The /proc/<pid>/status fields used here, KiB. */
export interface ProcStatus {
  /** Peak resident set size (the kernel's high-water mark). */
  vmHwmKib: number;
  vmRssKib: number;
  rssAnonKib: number;
  rssFileKib: number;
  rssShmemKib: number;
  threads: number;
}

/** Parses /proc/<pid>/status; throws EBENCHRUN if a field is missing. */
export function parseProcStatus(status: string): ProcStatus {
  const field = (name: string, unit: " kB" | ""): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+)${unit}$`, "m").exec(status);
    if (!match) throw new BenchError("EBENCHRUN", `Cannot find ${name} in /proc/<pid>/status`);
    return Number(match[1]);
  };
  return {
    vmHwmKib: field("VmHWM", " kB"),
    vmRssKib: field("VmRSS", " kB"),
    rssAnonKib: field("RssAnon", " kB"),
    rssFileKib: field("RssFile", " kB"),
    rssShmemKib: field("RssShmem", " kB"),
    threads: field("Threads", ""),
  };
}

/** Anonymous memory: private anonymous pages plus shared memory (a memfd guest RAM would be there). */
export const anonKib = (s: ProcStatus): number => s.rssAnonKib + s.rssShmemKib;

/** What {@link guestRamResidency} found. */
export interface GuestRamResidency {
  /** Resident KiB of the mappings that hold guest RAM. */
  rssKib: number;
  /** How many such mappings. */
  mappings: number;
  /**
   * Their total size minus `count * guestKib`: the kernel merges an anonymous
   * mapping with a neighbour of the same flags (flint's guest RAM is often
   * merged with a malloc arena's first pages), and the neighbour's resident
   * pages then count here too, so rssKib is exact when this is 0 and an upper
   * bound by at most this much otherwise.
   */
  mergedExtraKib: number;
}

/**
 * The guest RAM of `count` VMs of `guestKib` each in /proc/<pid>/smaps: the
 * writable private anonymous (or memfd) mappings at least `guestKib` long.
 * A monitor's other anonymous mappings of that size are reservations with no
 * access (---p): V8's, glibc's arenas. Throws EBENCHRUN when fewer than
 * `count` guest RAMs fit in what was found.
 */
export function guestRamResidency(smaps: string, guestKib: number, count = 1): GuestRamResidency {
  let rssKib = 0, mappings = 0, totalKib = 0;
  let candidate = false;
  let size = -1;
  for (const line of smaps.split("\n")) {
    const header = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) {
      const name = header[2]!;
      candidate = header[1] === "rw-p" && (name === "" || name.startsWith("/memfd:"));
      size = -1;
      continue;
    }
    const field = /^(Size|Rss):\s+(\d+) kB$/.exec(line);
    if (!field || !candidate) continue;
    if (field[1] === "Size") size = Number(field[2]);
    else if (size >= guestKib) {
      rssKib += Number(field[2]);
      totalKib += size;
      mappings++;
    }
  }
  if (totalKib < count * guestKib) {
    throw new BenchError("EBENCHRUN", `Cannot find the guest RAM: ${count} x ${guestKib} KiB, but only ${totalKib} KiB of writable anonymous mappings that large in /proc/<pid>/smaps`);
  }
  return { rssKib, mappings, mergedExtraKib: totalKib - count * guestKib };
}

/**
 * Reads /proc/<pid>/status, or undefined once the process is gone or is
 * exiting (a zombie has released its memory: its status has no Vm* lines).
 */
export function readProcStatus(pid: number | "self"): ProcStatus | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT" || (error as NodeJS.ErrnoException).code === "ESRCH") return undefined;
    throw error;
  }
  return /^VmRSS:/m.test(status) ? parseProcStatus(status) : undefined;
}

/** Follows a process's anonymous memory to its peak, reading /proc every `intervalMs`. */
export class PeakSampler {
  private peak = 0;
  private failure: unknown;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pid: number, intervalMs = 5) {
    this.timer = setInterval(() => {
      try {
        this.sample();
      } catch (error) {
        // Not thrown from a timer (it would end the benchmark): stop() rethrows it.
        this.failure ??= error;
        clearInterval(this.timer);
      }
    }, intervalMs);
    this.sample();
  }

  /** Takes one sample now (also called by the timer); undefined once the process is gone. */
  sample(): ProcStatus | undefined {
    const s = readProcStatus(this.pid);
    if (s) this.peak = Math.max(this.peak, anonKib(s));
    return s;
  }

  /** Stops sampling; returns the peak anonymous KiB seen, or throws what a timed sample threw. */
  stop(): number {
    clearInterval(this.timer);
    if (this.failure !== undefined) throw this.failure;
    return this.peak;
  }
}
