/**
 * Progress reports from slow guest-artifact work (kernel builds, downloads).
 * Builders never print; they call an optional `onProgress` callback with
 * these records and the caller (the CLI, a test) decides how to show them.
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
