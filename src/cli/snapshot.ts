/**
 * `flint snapshot inspect` and Firecracker's `--snapshot-version` and
 * `--describe-snapshot`: what a state file is, read with every check a
 * restore makes (a corrupted or foreign file is refused with one line);
 * `flint snapshot rebase`: Firecracker's rebase-snap, a Diff's memory file
 * merged onto its base.
 */
import { readFileSync } from "node:fs";
import { rebaseMemoryFile } from "../snapshot/memory-file.js";
import { decodeStateFile, SNAPSHOT_FORMAT_VERSION, SnapshotError } from "../snapshot/state-file.js";
import { readMachineSnapshot } from "../vm/machine-snapshot.js";

/** A format version as Firecracker prints its own (`v<major>.<minor>.<patch>`; flint's versions are whole numbers). */
export function formatVersionString(version: number = SNAPSHOT_FORMAT_VERSION): string {
  return `v${version}.0.0`;
}

/** `--describe-snapshot PATH`: the state file's format version, once its checksum holds. */
export function describeSnapshotVersion(path: string): string {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (e) {
    throw new SnapshotError("ESNAPIO", `Cannot read snapshot '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return formatVersionString(decodeStateFile(data, `'${path}'`).header.formatVersion);
}

/** `flint snapshot inspect PATH`: what is in the state file, as lines or as JSON. */
export function inspectSnapshot(path: string, json: boolean): string {
  const { header, snapshot: s } = readMachineSnapshot(path);
  const memoryBytes = s.memory.regions.reduce((n, r) => n + r.size, 0);
  const summary = {
    path,
    formatVersion: formatVersionString(header.formatVersion),
    checksum: `crc32:${header.checksum.toString(16).padStart(8, "0")}`,
    stateBytes: header.bodyBytes,
    flintVersion: s.flintVersion,
    createdAt: new Date(s.createdAtMs).toISOString(),
    cpus: s.cpus,
    memoryMib: s.memoryMib,
    memoryFileBytes: memoryBytes,
    memoryFile: s.memory.type === "diff" ? "Diff" : "Full",
    memoryRegions: s.memory.regions,
    boot: s.boot,
    devices: s.virtio.configs.map((c) => c.kind),
  };
  if (json) return JSON.stringify(summary, null, 2);
  const regions = s.memory.regions.map((r) => `0x${r.guestBase.toString(16)}+${r.size / (1 << 20)} MiB @ ${r.fileOffset}`).join(", ");
  return [
    `snapshot ${path}`,
    `  format         ${summary.formatVersion} (this flint reads ${formatVersionString()}), ${summary.checksum}, ${header.bodyBytes} bytes of state`,
    `  written by     flint ${s.flintVersion} at ${summary.createdAt}`,
    `  vCPUs          ${s.cpus}`,
    `  memory         ${s.memoryMib} MiB; ${summary.memoryFile} memory file ${memoryBytes} bytes: ${regions}`,
    `  guest          ${s.boot.kind === "linux" ? `Linux ${s.boot.kernelPath}${s.boot.initrdPath ? ` + ${s.boot.initrdPath}` : ""}: ${s.boot.cmdline}` : "ring-3 test program"}`,
    `  virtio devices ${summary.devices.join(", ") || "none"}`,
  ].join("\n");
}

/**
 * `flint snapshot rebase --base BASE --diff DIFF`: copies the Diff's pages
 * onto BASE (rebaseMemoryFile), which becomes the memory file of the moment
 * the Diff was taken; returns the line to print.
 */
export function rebaseSnapshot(basePath: string, diffPath: string): string {
  const r = rebaseMemoryFile(basePath, diffPath);
  return `rebased '${diffPath}' onto '${basePath}': ${r.copiedBytes} bytes in ${r.runs} run(s)`;
}
