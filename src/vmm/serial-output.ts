/**
 * Where the guest's serial console output goes once PUT /serial configured it,
 * with Firecracker's semantics (its vmm_config/serial.rs, devices/legacy/serial.rs
 * and utils open_file_nonblock):
 *   - `serial_out_path`: a file or named pipe, created if missing, opened
 *     read-write and non-blocking, written from its start (neither truncated
 *     nor appended to). A write the file cannot take now (a full pipe nobody
 *     reads) is dropped and counted (`missed`), never waited for: the guest
 *     never stalls on it. Without a path, the output goes where it went before
 *     (the process's stdout), with its back-pressure;
 *   - `rate_limiter`: one token bucket of bytes; what the guest writes beyond
 *     it is dropped and counted (Firecracker's uart.rate_limiter_dropped_bytes).
 *     Firecracker asks the bucket for each byte; flint's console hands over
 *     chunks, so a chunk keeps the bytes the bucket holds and drops the rest,
 *     the same outcome byte for byte.
 */
import { closeSync, constants, openSync, writeSync } from "node:fs";
import { Writable } from "node:stream";
import { TokenBucket, type TokenBucketConfig } from "../devices/virtio/rate-limiter.js";

/** Byte counts of a serial output (totals since it was made). */
export interface SerialOutputCounts {
  /** Bytes passed on to the file or stream. */
  written: number;
  /** Bytes the rate limiter dropped. */
  rateLimited: number;
  /** Bytes the file could not take (a full pipe, an I/O error). */
  missed: number;
}

/** Options of a SerialOutput: a path, or the stream output goes to without one. */
export interface SerialOutputOptions {
  path?: string;
  target?: NodeJS.WritableStream;
  rateLimiter?: TokenBucketConfig;
  /** Milliseconds, for the bucket (default performance.now). */
  clock?: () => number;
}

/** The console's output stream for a VM whose serial device PUT /serial configured. */
export class SerialOutput extends Writable {
  private readonly fd: number | undefined;
  private readonly target: NodeJS.WritableStream | undefined;
  private readonly bucket: TokenBucket | undefined;
  private readonly clock: () => number;
  private readonly counts: SerialOutputCounts = { written: 0, rateLimited: 0, missed: 0 };

  /** Opens `path` now; throws a one-line Error when it cannot. */
  constructor(options: SerialOutputOptions) {
    super();
    this.clock = options.clock ?? (() => performance.now());
    this.bucket = TokenBucket.of(options.rateLimiter, this.clock());
    if (options.path !== undefined) {
      try {
        this.fd = openSync(options.path, constants.O_RDWR | constants.O_CREAT | constants.O_NONBLOCK, 0o666);
      } catch (e) {
        throw new Error(`Cannot open the serial output '${options.path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
    } else {
      this.target = options.target;
    }
  }

  /** Totals so far. */
  get totals(): Readonly<SerialOutputCounts> {
    return { ...this.counts };
  }

  /** How many of `n` bytes the bucket lets through now (all of them without a limiter). */
  private allowed(n: number): number {
    if (!this.bucket) return n;
    const now = this.clock();
    const take = Math.min(n, Math.floor(this.bucket.burstLeft + this.bucket.tokens(now)));
    if (take > 0) this.bucket.reduce(take, now);
    return take;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    const take = this.allowed(chunk.length);
    this.counts.rateLimited += chunk.length - take;
    const bytes = chunk.subarray(0, take);
    if (this.fd !== undefined) {
      let off = 0;
      try {
        while (off < bytes.length) off += writeSync(this.fd, bytes, off, bytes.length - off);
      } catch {
        // EAGAIN (a full pipe) or an I/O error: this output is lost, the guest goes on.
      }
      this.counts.written += off;
      this.counts.missed += bytes.length - off;
      done();
      return;
    }
    this.counts.written += bytes.length;
    if (!this.target || bytes.length === 0) {
      done();
      return;
    }
    // Done when the target has written it: its back-pressure holds the console, as without PUT /serial.
    this.target.write(bytes, () => done());
  }

  override _final(done: (error?: Error | null) => void): void {
    this.closeFile();
    done();
  }

  override _destroy(error: Error | null, done: (error?: Error | null) => void): void {
    this.closeFile();
    done(error);
  }

  private fileClosed = false;
  private closeFile(): void {
    if (this.fd === undefined || this.fileClosed) return;
    this.fileClosed = true;
    try { closeSync(this.fd); } catch { /* already closed */ }
  }
}
