/**
 * The report lines of the virtio benchmark's load generator
 * (guest/linux/virtio-bench.c) and of the guest's /init: "virtio-bench: "
 * followed by key=value words, e.g.
 *   virtio-bench: test=blk mode=rand block_bytes=4096 threads=1 ops=126 bytes=516096 ns=3000000000
 *   virtio-bench: error=connect errno=EHOSTUNREACH
 * Shared by the host side (src/bench/virtio-nested.ts) and the driver that
 * runs inside the outer VM (src/bench/virtio-nested-driver.ts), which is why
 * it imports nothing.
 */

/** Prefix of every report line (guest/linux/virtio-bench.c, REPORT). */
export const VIRTIO_BENCH_PREFIX = "virtio-bench:";

/** One parsed report line: its key=value pairs. */
export type VirtioBenchRecord = Readonly<Record<string, string>>;

/** Parses one line, or returns undefined when it is not a report line (text before the prefix and \r are ignored). */
export function parseVirtioBenchLine(line: string): VirtioBenchRecord | undefined {
  const at = line.indexOf(VIRTIO_BENCH_PREFIX);
  if (at < 0) return undefined;
  const record: Record<string, string> = {};
  for (const word of line.slice(at + VIRTIO_BENCH_PREFIX.length).trim().split(/\s+/)) {
    const eq = word.indexOf("=");
    if (eq > 0) record[word.slice(0, eq)] = word.slice(eq + 1);
  }
  return record;
}

/** Parses every report line in `output`; other lines are ignored. */
export function parseVirtioBenchLines(output: string): VirtioBenchRecord[] {
  return output.split("\n").map(parseVirtioBenchLine).filter((r): r is VirtioBenchRecord => r !== undefined);
}

/** A record's field as a non-negative integer, or undefined. */
export function recordCount(record: VirtioBenchRecord | undefined, key: string): number | undefined {
  const text = record?.[key];
  return text !== undefined && /^\d+$/.test(text) ? Number(text) : undefined;
}

/** The first `error=` report line in `output`, as "what (errno)". */
export function reportedError(output: string): string | undefined {
  const e = parseVirtioBenchLines(output).find((r) => r.error !== undefined);
  return e && `${e.error} (${e.errno ?? "?"})`;
}
