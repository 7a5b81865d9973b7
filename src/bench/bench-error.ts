/**
 * The error class of the benchmark's own code (C ceiling, QEMU runners,
 * probes, reports). `code` is stable:
 *   EBENCHARG      a bad mode, count or option
 *   EBENCHRUN      a program failed, or printed something unexpected
 *   EBENCHTIMEOUT  a program ran longer than allowed and was killed
 * The guest programs the benchmark runs (src/guest/programs/) throw their own
 * GuestProgramError (EPROGARG, EPROGBUILD for every gcc build here too, the
 * C ceiling's included, EPROGRUN); the benchmark lets those through
 * unchanged, so a failure names the program at fault.
 */
export class BenchError extends Error {
  readonly code: "EBENCHARG" | "EBENCHRUN" | "EBENCHTIMEOUT";
  constructor(code: BenchError["code"], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "BenchError";
    this.code = code;
  }
}
