/**
 * Rate-limited disk read: achieved rate vs the bucket's rate. The ring-3
 * virtio-blk driver guest of virtio-blk-bench.ts reads through flint's
 * virtio-blk with a bandwidth bucket on the drive (Firecracker's drive
 * rate_limiter); its 4 KiB phases run first and drain the bucket, so the
 * 64 KiB sequential phase that follows runs at the steady state, where every
 * byte waits for its tokens. The figure is that phase's rate (timed by the
 * guest's TSC, calibrated in the same run) over the bucket's rate,
 * size / refill time: 1.00 is exact, below 1 is time lost to wake-ups. The
 * bucket may refill while the guest reports between phases, so the phase can
 * start with up to one bucket (1 MB, 1 % of the phase) in hand: the most the
 * limit allows is (phase bytes + size) / phase time, printed as the bound
 * ratio (at most 1). Goal: within 10 %.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildVirtioBlkGuest, writeStampedImage } from "../guest/programs/virtio-blk-driver.js";
import type { TokenBucketConfig } from "../devices/virtio/rate-limiter.js";
import { median } from "./process.js";
import { runFlintVblk } from "./virtio-blk-bench.js";

/** The drive's bandwidth bucket: 40 MB/s in 1 MB buckets refilled every 25 ms. */
export const RATE_LIMIT_BENCH_BUCKET: TokenBucketConfig = { size: 1_000_000, refillTimeMs: 25 };
/** Requests per phase: ~9 MB of 4 KiB reads (more than the bucket), then ~105 MB sequential (~2.6 s at 40 MB/s). */
const COUNTS = { qd1: 256, qd32: 2048, seq: 1600 };

/** The figure, per run and as the median. */
export interface RateLimitBenchResult {
  bucket: TokenBucketConfig;
  bucketBytesPerSecond: number;
  achievedBytesPerSecond: number[];
  /** Median achieved / bucket rate. */
  ratio: number;
  /** Median of each run's bytes / (size + rate * phase time): at most 1 when the limit holds. */
  boundRatio: number;
}

/** Runs the rate-limited guest `runs` times. */
export async function benchRateLimitedRead(runs = 3): Promise<RateLimitBenchResult> {
  const bucket = RATE_LIMIT_BENCH_BUCKET;
  const bucketBytesPerSecond = (bucket.size / bucket.refillTimeMs) * 1000;
  const dir = mkdtempSync(join(tmpdir(), "flint-rl-bench-"));
  try {
    const image = join(dir, "stamped.img");
    writeStampedImage(image, 256 * 1024 * 1024);
    buildVirtioBlkGuest();
    const achieved: number[] = [], bound: number[] = [];
    for (let i = 0; i < runs; i++) {
      const seq = (await runFlintVblk(image, COUNTS, 180_000, { bandwidth: bucket })).phases.seq;
      achieved.push(seq.megabytesPerSecond * 1e6);
      bound.push((seq.requests * seq.bytesPerRequest) / (bucket.size + bucketBytesPerSecond * seq.seconds));
    }
    return { bucket, bucketBytesPerSecond, achievedBytesPerSecond: achieved, ratio: median(achieved) / bucketBytesPerSecond, boundRatio: median(bound) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `npm run bench`'s section: prints the figure and returns it for the JSON file. */
export async function printRateLimitSection(out: (line: string) => void, runs = 3): Promise<RateLimitBenchResult> {
  out("\n== rate-limited disk read: achieved rate vs bucket rate ==");
  const r = await benchRateLimitedRead(runs);
  const mb = (x: number) => (x / 1e6).toFixed(2);
  out(`ring-3 virtio-blk guest, 64 KiB sequential reads at QD1 under a bandwidth bucket of ${r.bucket.size} bytes per ${r.bucket.refillTimeMs} ms ` +
    `(${mb(r.bucketBytesPerSecond)} MB/s), bucket drained first; median of ${runs}`);
  out(`achieved ${mb(median(r.achievedBytesPerSecond))} MB/s (runs: ${r.achievedBytesPerSecond.map(mb).join(", ")})  -> achieved/bucket ${r.ratio.toFixed(3)} (goal within 10 %); ` +
    `bytes/(size + rate x time) ${r.boundRatio.toFixed(3)} (at most 1: the limit held)\n`);
  return r;
}
