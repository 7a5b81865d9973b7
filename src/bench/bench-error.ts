/**
 * The error class of the benchmark's reference side (guest program, C
 * ceiling, QEMU runner). `code` is stable:
 *   EBENCHARG      a bad mode or count
 *   EBENCHBUILD    gcc failed or is missing
 *   EBENCHRUN      a program failed, or printed something unexpected
 *   EBENCHTIMEOUT  a program ran longer than allowed and was killed
 */
export class BenchError extends Error {
  readonly code: "EBENCHARG" | "EBENCHBUILD" | "EBENCHRUN" | "EBENCHTIMEOUT";
  constructor(code: BenchError["code"], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "BenchError";
    this.code = code;
  }
}
