/**
 * Rate-limited reporting of guest-caused faults.
 *
 * A guest decides how many faults it causes (a bad request per chain, a bad
 * register access per exit: millions a second), so a log line or a
 * postMessage per fault lets a guest grow the host's memory and flood its
 * logs. Every fault is counted, per device; only the first
 * GUEST_FAULT_LOG_FIRST of each device are reported one by one, and after
 * that one summary ("N more guest faults in <device>, last: ...") at most
 * every GUEST_FAULT_SUMMARY_MS, plus one on flush() (at stop). What the log
 * holds per device is a few numbers and the last message, whatever the guest
 * does.
 *
 * The device threads (device-thread-worker.ts) use one to decide what to post
 * to the main thread; the Machine uses one for what it logs.
 */

/** Faults reported one by one per device before only summaries are. */
export const GUEST_FAULT_LOG_FIRST = 10;
/** Shortest time between two summaries of the same device. */
export const GUEST_FAULT_SUMMARY_MS = 1000;
/** Longest message kept or reported (a guest may put anything in a message). */
const MAX_MESSAGE_CHARS = 200;

/** What a GuestFaultLog emits: a fault (`count` 1) or a summary of `count` suppressed ones. */
export interface GuestFaultReport {
  device: string;
  /** The fault's message, or the summary line. */
  message: string;
  /** Faults this report stands for. */
  count: number;
}

interface DeviceFaults {
  total: number;
  reported: number;
  suppressed: number;
  last: string;
  lastSummaryMs: number;
}

/** Options (tests set a clock). */
export interface GuestFaultLogOptions {
  first?: number;
  summaryMs?: number;
  now?: () => number;
}

const clip = (m: string): string => (m.length > MAX_MESSAGE_CHARS ? `${m.slice(0, MAX_MESSAGE_CHARS)}...` : m);

/** Counts guest faults per device and emits the first few, then summaries. See the module comment. */
export class GuestFaultLog {
  private readonly devices = new Map<string, DeviceFaults>();
  private readonly first: number;
  private readonly summaryMs: number;
  private readonly now: () => number;

  constructor(private readonly emit: (r: GuestFaultReport) => void, o: GuestFaultLogOptions = {}) {
    this.first = o.first ?? GUEST_FAULT_LOG_FIRST;
    this.summaryMs = o.summaryMs ?? GUEST_FAULT_SUMMARY_MS;
    this.now = o.now ?? (() => performance.now());
  }

  /**
   * Counts `count` faults of `device` (more than 1 when another log already
   * summarised them: `message` is then that summary and is passed on as is).
   */
  fault(device: string, message: string, count = 1): void {
    let d = this.devices.get(device);
    if (!d) {
      d = { total: 0, reported: 0, suppressed: 0, last: "", lastSummaryMs: this.now() };
      this.devices.set(device, d);
    }
    d.total += count;
    if (count === 1 && d.reported < this.first) {
      d.reported++;
      this.emit({ device, message: clip(message), count: 1 });
      return;
    }
    if (count > 1) {
      // Already a summary (at most one a second from its source): report it, with ours if due.
      this.emit({ device, message: clip(message), count });
      return;
    }
    d.suppressed++;
    d.last = message;
    if (this.now() - d.lastSummaryMs >= this.summaryMs) this.summarise(device, d);
  }

  /** Emits a summary for every device with faults not reported yet. */
  flush(): void {
    for (const [device, d] of this.devices) if (d.suppressed > 0) this.summarise(device, d);
  }

  /** Milliseconds until a pending summary is due (0: now), or undefined when none is pending. */
  nextSummaryInMs(): number | undefined {
    // The clock is read only when a summary is pending: the device loop asks on every pass.
    let dueMs: number | undefined;
    for (const d of this.devices.values()) {
      if (d.suppressed === 0) continue;
      const due = d.lastSummaryMs + this.summaryMs;
      dueMs = dueMs === undefined ? due : Math.min(dueMs, due);
    }
    return dueMs === undefined ? undefined : Math.max(0, dueMs - this.now());
  }

  /** Emits the summaries that are due. */
  tick(): void {
    const now = this.now();
    for (const [device, d] of this.devices) if (d.suppressed > 0 && now - d.lastSummaryMs >= this.summaryMs) this.summarise(device, d);
  }

  /** Faults counted so far, by device. */
  counts(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [device, d] of this.devices) out[device] = d.total;
    return out;
  }

  /** Faults counted so far, all devices. */
  get total(): number {
    let n = 0;
    for (const d of this.devices.values()) n += d.total;
    return n;
  }

  private summarise(device: string, d: DeviceFaults): void {
    const n = d.suppressed;
    d.suppressed = 0;
    d.lastSummaryMs = this.now();
    this.emit({ device, message: `${n} more guest fault${n === 1 ? "" : "s"} in ${device}, last: ${clip(d.last)}`, count: n });
  }
}
