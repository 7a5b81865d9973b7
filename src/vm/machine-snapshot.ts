/**
 * What a snapshot of a Machine holds besides guest memory, and how it is
 * written and read: the state file's body (src/snapshot/state-file.ts gives
 * it a version and a checksum), checked field by field on the way in so that
 * a snapshot from a stranger, or one that is intact but not a Machine's, is
 * refused with one line before any KVM object exists.
 *
 * A Machine is saved paused (Machine.snapshot): every vCPU out of KVM_RUN,
 * every device quiesced; and it is restored (Machine.restore) into a fresh
 * KVM VM whose memory is the memory file mapped copy-on-write, or filled
 * page by page by a page-fault handler (the Uffd backend).
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import * as z from "zod/mini";
import type { VcpuState } from "../arch/x86_64/vcpu-state.js";
import type { VmState } from "../arch/x86_64/vm-state.js";
import type { I8042SavedState } from "../devices/legacy/i8042.js";
import type { SerialSavedState } from "../devices/legacy/serial-state.js";
import type { VmGenIdSavedState } from "../devices/acpi/vmgenid.js";
import type { VirtioDeviceConfig } from "../devices/virtio/virtio-set.js";
import type { MemoryFileRegion } from "../snapshot/memory-file.js";
import { decodeStateFile, encodeStateFile, MAX_STATE_FILE_BYTES, SnapshotError, type StateFileHeader } from "../snapshot/state-file.js";

/** How the snapshotted guest was started (informational: a restore boots nothing). */
export type SavedBoot =
  | { kind: "linux"; kernelPath: string; initrdPath?: string; cmdline: string; acpi: boolean }
  | { kind: "ring3" };

/** The body of a Machine's state file. */
export interface MachineSnapshot {
  kind: "flint-machine";
  /** The flint that wrote it (informational). */
  flintVersion: string;
  /** Wall-clock time of the save, ms since the epoch. */
  createdAtMs: number;
  cpus: number;
  memoryMib: number;
  boot: SavedBoot;
  debugExit: boolean;
  /**
   * Where each guest memory region is in the memory file, and whether that
   * file is a Diff ("diff": only the pages written since the snapshot
   * before, to be merged onto it with rebaseMemoryFile before a restore;
   * absent: a Full one). As in Firecracker, a Diff does not say which
   * snapshot is its base: the caller keeps that order. Its state is whole.
   */
  memory: { regions: MemoryFileRegion[]; type?: "diff" };
  /** irqchip, PIT and kvm-clock. */
  vm: VmState;
  /** One per vCPU, in id order. */
  vcpus: VcpuState[];
  /** The legacy devices; `vmgenid` only when the VM has the VMGenID device (snapshots from before it have none). */
  legacy: { serial: SerialSavedState; i8042: I8042SavedState; vmgenid?: VmGenIdSavedState };
  /** The virtio devices as configured (a restore may override host-side options). */
  virtio: {
    configs: SavedVirtioConfig[];
    /** Each device's saved-state record, in configuration order. */
    states: unknown[];
    /** Whether each device also has its command-line window (VirtioSetHooks.cmdlineWindows). */
    cmdlineWindows: boolean;
  };
  /** What the layer above the Machine saved with it (the API's resources: drive and interface ids), returned by restore as is. */
  vmm?: unknown;
}

/** A VirtioDeviceConfig as saved (a backend module URL as its href). */
export type SavedVirtioConfig = Omit<VirtioDeviceConfig, "backendModule"> & { backendModule?: string };

const bytes = z.instanceof(Uint8Array);
const u32 = z.number().check(z.int(), z.minimum(0), z.maximum(0xffff_ffff));
const count = (max: number) => z.number().check(z.int(), z.minimum(1), z.maximum(max));
const region = z.object({ guestBase: z.number().check(z.int(), z.minimum(0)), size: count(Number.MAX_SAFE_INTEGER), fileOffset: z.number().check(z.int(), z.minimum(0)) });

/**
 * The shape a body must have. Device records (legacy and virtio) and the
 * KVM blobs are checked by their own restore code, which knows their
 * versions and sizes; here only what a restore reads before it gets to them.
 */
const snapshotSchema = z.object({
  kind: z.literal("flint-machine"),
  flintVersion: z.string(),
  createdAtMs: z.number(),
  cpus: count(254),
  memoryMib: count(1 << 20),
  boot: z.union([
    z.object({ kind: z.literal("linux"), kernelPath: z.string(), initrdPath: z.optional(z.string()), cmdline: z.string(), acpi: z.boolean() }),
    z.object({ kind: z.literal("ring3") }),
  ]),
  debugExit: z.boolean(),
  memory: z.object({ regions: z.array(region).check(z.minLength(1)), type: z.optional(z.literal("diff")) }),
  vm: z.object({ picMaster: bytes, picSlave: bytes, ioapic: bytes, pit: bytes, clock: bytes }),
  vcpus: z.array(z.object({ id: u32 })),
  legacy: z.object({
    serial: z.object({ kind: z.literal("serial-16550a"), version: z.literal(1) }),
    i8042: z.object({ kind: z.literal("i8042"), version: z.union([z.literal(1), z.literal(2)]) }),
    vmgenid: z.optional(z.object({ kind: z.literal("vmgenid"), version: z.literal(1), guestAddress: z.number().check(z.int(), z.minimum(0)), gsi: u32 })),
  }),
  virtio: z.object({
    configs: z.array(z.object({ kind: z.string(), options: z.unknown(), backendModule: z.optional(z.string()), thread: z.optional(z.enum(["shared", "own"])) })),
    states: z.array(z.unknown()),
    cmdlineWindows: z.boolean(),
  }),
  vmm: z.optional(z.unknown()),
});

/** Writes `snapshot` to `path` atomically (a temporary file renamed over it): a crash mid-write leaves the old file or none. */
export function writeMachineSnapshot(path: string, snapshot: MachineSnapshot): number {
  const data = encodeStateFile(snapshot);
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, data, { mode: 0o600 });
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new SnapshotError("ESNAPIO", `Cannot write snapshot '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return data.length;
}

/**
 * Reads and checks a Machine's state file. Throws SnapshotError: ESNAPIO
 * (cannot read), the state file's own refusals (magic, version, truncated,
 * checksum), ESNAPBODY (intact, but not a Machine snapshot this flint can
 * restore: the first wrong field is named).
 */
export function readMachineSnapshot(path: string): { header: StateFileHeader; snapshot: MachineSnapshot } {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (e) {
    throw new SnapshotError("ESNAPIO", `Cannot read snapshot '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (data.length > MAX_STATE_FILE_BYTES) {
    throw new SnapshotError("ESNAPBODY", `Cannot load '${path}': ${data.length} bytes, more than a state file holds (${MAX_STATE_FILE_BYTES})`);
  }
  const { header, body } = decodeStateFile(data, `'${path}'`);
  const parsed = snapshotSchema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(/^\./, "");
    throw new SnapshotError("ESNAPBODY", `Cannot load '${path}': not a flint machine snapshot this flint can restore (${where || "body"}: ${issue.message})`);
  }
  const snapshot = body as MachineSnapshot;
  if (snapshot.vcpus.length !== snapshot.cpus || snapshot.vcpus.some((v, i) => v.id !== i)) {
    throw new SnapshotError("ESNAPBODY", `Cannot load '${path}': it has ${snapshot.vcpus.length} vCPU records for ${snapshot.cpus} vCPUs`);
  }
  if (snapshot.virtio.states.length !== snapshot.virtio.configs.length) {
    throw new SnapshotError("ESNAPBODY", `Cannot load '${path}': ${snapshot.virtio.states.length} virtio device records for ${snapshot.virtio.configs.length} devices`);
  }
  return { header, snapshot };
}
