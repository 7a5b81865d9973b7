/**
 * Progress reports from slow guest-artifact work (kernel builds, downloads).
 * Builders never print; they call an optional `onProgress` callback with
 * these records and the caller (the CLI, a test) decides how to show them.
 * {@link lineProgress} is the way to show them in a log (a file, a pipe, CI):
 * one line per phase and per tenth of a countable phase, never a bar.
 */

/** One progress report. */
export interface GuestProgress {
  /** The step under way, e.g. "extract", "configure", "compile", "download". */
  phase: string;
  /** A human-readable line describing the latest event. */
  message: string;
  /** Units of work done in this phase so far, when countable. */
  done?: number;
  /** Expected units of work in this phase (an estimate; `done` may pass it). */
  total?: number;
}

/** A receiver of progress reports. */
export type ProgressCallback = (progress: GuestProgress) => void;

/** Where {@link lineProgress} writes: a stream, or anything with its write(). */
export interface ProgressLineSink {
  write(text: string): unknown;
}

/**
 * A progress callback that writes whole lines for logs: the first report of
 * each phase (its message), then, in a phase with a `total`, one line each
 * time another 10 % of it is done ("compile 40% (740/1850) CC fs/ext4/inode.o").
 * A long step thus shows at most 12 lines, however many reports it makes.
 * `prefix` starts every line (e.g. "flint: ", "[prepare] ").
 */
export function lineProgress(sink: ProgressLineSink, prefix = ""): ProgressCallback {
  let phase: string | undefined;
  let tenths = 0;
  return (p) => {
    if (p.phase !== phase) {
      phase = p.phase;
      tenths = 0;
      sink.write(`${prefix}${p.message}\n`);
    }
    if (p.done === undefined || !p.total || p.total <= 0) return;
    // `done` may pass an estimated `total`: then the phase stays at 100 %.
    const reached = Math.min(10, Math.floor((p.done * 10) / p.total));
    if (reached <= tenths) return;
    tenths = reached;
    sink.write(`${prefix}${p.phase} ${reached * 10}% (${p.done}/${Math.max(p.total, p.done)}) ${p.message}\n`);
  };
}
