/**
 * Restoring a snapshot in a new process, flint against QEMU, the same guest
 * on both: the serial-flood PVH guest (guest/ring3/serial-flood.S), which
 * writes to COM1 from ring 3 without end, so its first byte on the
 * monitor's stdout after a restore is the restored guest running again,
 * seen the same way for both monitors.
 *
 *   flint  saved once over its API (`flint --api-sock`: boot, PATCH /vm
 *          Paused, PUT /snapshot/create); restored by spawning
 *          `flint --api-sock` and sending PUT /snapshot/load with resume_vm
 *          as soon as the socket takes a connection.
 *   QEMU   saved once from a stopped VM (QMP `stop`, `migrate` to
 *          "exec:cat > FILE", without the run state: see saveQemu);
 *          restored by spawning it with `-incoming "exec:cat FILE"` (it
 *          runs the VM once the stream is in).
 *
 * Both are timed from spawn to the guest's first byte. And the load alone,
 * into a process started earlier and idle: flint's PUT /snapshot/load, and
 * QEMU started with `-incoming defer` given QMP `migrate-incoming`, each
 * timed from the request to the first byte. Runs interleave the monitors,
 * the order flipped every round.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { buildSerialFloodGuest } from "../guest/programs/testing/serial-flood.js";
import { api } from "../vmm/testing/api-client.js";
import { BenchError } from "./bench-error.js";
import { QEMU_SERIAL_MACHINE } from "./overhead-args.js";
import { tail } from "./process.js";
import { QmpClient } from "./qmp-client.js";
import { PASSES_OFFSET, STATUS_ADDRESS } from "./snapshot-guest.js";
import { type ProcessRestoreSamples, type ProcessSharingSample, findFileMapping, parseSmapsRollup } from "./snapshot-report.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A monitor process whose stdout is watched for the guest's bytes. */
class Watched {
  readonly child: ChildProcess;
  readonly startMs = performance.now();
  private stderr = "";
  private bytes = 0;
  private waiters: { after: number; resolve: (atMs: number) => void; reject: (e: Error) => void }[] = [];
  private readonly exited: Promise<void>;

  constructor(readonly name: string, file: string, args: string[]) {
    this.child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child.stderr!.setEncoding("utf8").on("data", (c: string) => (this.stderr += c));
    this.child.stdout!.on("data", (c: Buffer) => {
      const at = performance.now();
      this.bytes += c.length;
      this.waiters = this.waiters.filter((w) => (this.bytes > w.after ? (w.resolve(at), false) : true));
    });
    this.exited = new Promise((resolve) => this.child.on("close", () => {
      for (const w of this.waiters) w.reject(this.failure("exited before the guest wrote"));
      this.waiters = [];
      resolve();
    }));
    this.child.on("error", (e) => {
      for (const w of this.waiters) w.reject(new BenchError("EBENCHRUN", `Cannot run ${file}: ${e.message}`, { cause: e }));
      this.waiters = [];
    });
  }

  /** Bytes of guest output seen so far. */
  get seen(): number {
    return this.bytes;
  }

  /** Resolves with the time (performance.now()) the first byte beyond `after` arrived. */
  output(after = 0, timeoutMs = 60_000): Promise<number> {
    if (this.bytes > after) return Promise.resolve(performance.now());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new BenchError("EBENCHTIMEOUT", `${this.name}: no guest output within ${timeoutMs} ms:\n${tail(this.stderr)}`)), timeoutMs);
      this.waiters.push({ after, resolve: (at) => (clearTimeout(timer), resolve(at)), reject: (e) => (clearTimeout(timer), reject(e)) });
    });
  }

  failure(what: string): BenchError {
    return new BenchError("EBENCHRUN", `${this.name} ${what}:\n${tail(this.stderr)}`);
  }

  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
  }
}

/** Sends one API request, retrying while the socket is not there or not listening yet. */
async function apiWhenUp(sock: string, method: string, path: string, body?: unknown, timeoutMs = 30_000) {
  const end = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await api(sock, method, path, body);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if ((code !== "ENOENT" && code !== "ECONNREFUSED") || performance.now() > end) throw e;
      await sleep(1);
    }
  }
}

async function apiOk(sock: string, method: string, path: string, body?: unknown): Promise<void> {
  const r = await apiWhenUp(sock, method, path, body);
  if (r.status >= 300) throw new BenchError("EBENCHRUN", `flint's API answered ${method} ${path} with ${r.status}: ${r.text}`);
}

function qemuArgs(guest: string, memoryMib: number, extra: string[]): string[] {
  return [
    "-accel", "kvm", "-M", QEMU_SERIAL_MACHINE, "-nodefaults", "-no-user-config", "-display", "none",
    "-serial", "stdio", "-m", String(memoryMib), "-kernel", guest, ...extra,
  ];
}

/** Options for {@link measureProcessRestore}. */
export interface ProcessRestoreOptions {
  runs: number;
  /** Guest RAM of both monitors' VMs. */
  memoryMib: number;
  /** How long an idle process waits before its load (its threads booted, as a process started ahead has). */
  idleMs?: number;
}

/** Saves the guest with each monitor, then restores it `runs` times each way. */
export async function measureProcessRestore(options: ProcessRestoreOptions): Promise<ProcessRestoreSamples> {
  const { runs, memoryMib } = options;
  const idleMs = options.idleMs ?? 300;
  const guest = buildSerialFloodGuest();
  const dir = mkdtempSync(join(tmpdir(), "flint-bench-snap-"));
  try {
    const flintSnap = { snapshot_path: join(dir, "flint.snap"), mem_file_path: join(dir, "flint.mem") };
    const qemuFile = join(dir, "qemu.migration");
    await saveFlint(dir, guest, memoryMib, flintSnap);
    await saveQemu(dir, guest, memoryMib, qemuFile);
    const load = { snapshot_path: flintSnap.snapshot_path, mem_backend: { backend_type: "File", backend_path: flintSnap.mem_file_path }, resume_vm: true };
    const samples: ProcessRestoreSamples = {
      memoryMib, flintStateBytes: statSync(flintSnap.snapshot_path).size, qemuFileBytes: statSync(qemuFile).size,
      flintSpawn: [], qemuSpawn: [], flintLoad: [], qemuLoad: [],
    };
    let n = 0;
    const steps = {
      flintSpawn: async () => {
        const sock = join(dir, `r${n++}.sock`);
        const p = new Watched("flint", process.execPath, [CLI, "--api-sock", sock]);
        try {
          await apiOk(sock, "PUT", "/snapshot/load", load);
          samples.flintSpawn.push((await p.output()) - p.startMs);
        } finally {
          await p.kill();
        }
      },
      qemuSpawn: async () => {
        const p = new Watched("QEMU", "qemu-system-x86_64", qemuArgs(guest, memoryMib, ["-incoming", `exec:cat ${qemuFile}`]));
        try {
          samples.qemuSpawn.push((await p.output()) - p.startMs);
        } finally {
          await p.kill();
        }
      },
      flintLoad: async () => {
        const sock = join(dir, `r${n++}.sock`);
        const p = new Watched("flint", process.execPath, [CLI, "--api-sock", sock]);
        try {
          await apiOk(sock, "GET", "/");
          await sleep(idleMs);
          const t0 = performance.now();
          await apiOk(sock, "PUT", "/snapshot/load", load);
          samples.flintLoad.push((await p.output()) - t0);
        } finally {
          await p.kill();
        }
      },
      qemuLoad: async () => {
        const qmpSock = join(dir, `q${n++}.qmp`);
        const p = new Watched("QEMU", "qemu-system-x86_64", qemuArgs(guest, memoryMib, ["-incoming", "defer", "-qmp", `unix:${qmpSock},server=on,wait=off`]));
        let qmp: QmpClient | undefined;
        try {
          qmp = await QmpClient.connect(qmpSock);
          await sleep(idleMs);
          const t0 = performance.now();
          await qmp.execute("migrate-incoming", { uri: `exec:cat ${qemuFile}` });
          samples.qemuLoad.push((await p.output()) - t0);
        } finally {
          qmp?.close();
          await p.kill();
        }
      },
    };
    const order = ["flintSpawn", "qemuSpawn", "flintLoad", "qemuLoad"] as const;
    for (let round = 0; round < runs; round++) {
      for (const step of round % 2 === 0 ? order : [...order].reverse()) await steps[step]();
    }
    return samples;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Boots the guest in `flint --api-sock`, pauses it once it writes, and saves it with PUT /snapshot/create. */
async function saveFlint(dir: string, guest: string, memoryMib: number, paths: { snapshot_path: string; mem_file_path: string }): Promise<void> {
  const sock = join(dir, "save.sock");
  const p = new Watched("flint", process.execPath, [CLI, "--api-sock", sock]);
  try {
    await apiOk(sock, "PUT", "/boot-source", { kernel_image_path: guest, boot_args: "" });
    await apiOk(sock, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: memoryMib });
    await apiOk(sock, "PUT", "/actions", { action_type: "InstanceStart" });
    await p.output();
    await apiOk(sock, "PATCH", "/vm", { state: "Paused" });
    await apiOk(sock, "PUT", "/snapshot/create", { snapshot_type: "Full", ...paths });
  } finally {
    await p.kill();
  }
}

/** Boots the guest in QEMU, stops it once it writes, and migrates it into `file`. */
async function saveQemu(dir: string, guest: string, memoryMib: number, file: string): Promise<void> {
  const qmpSock = join(dir, "save.qmp");
  // Without the run state in the stream (global state), the restoring QEMU runs the VM once it is in,
  // as flint's resume_vm; with it, a VM saved stopped would come back stopped (migration/global_state.c).
  const p = new Watched("QEMU", "qemu-system-x86_64", qemuArgs(guest, memoryMib, ["-global", "migration.store-global-state=off", "-qmp", `unix:${qmpSock},server=on,wait=off`]));
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect(qmpSock);
    await p.output();
    await qmp.execute("stop");
    await qmp.execute("migrate", { uri: `exec:cat > ${file}` });
    for (let i = 0; ; i++) {
      const s = (await qmp.execute("query-migrate")) as { status?: string; "error-desc"?: string };
      if (s.status === "completed") break;
      if (s.status === "failed" || s.status === "cancelled" || i > 30_000) throw p.failure(`could not save its VM: ${s.status} ${s["error-desc"] ?? ""}`);
      await sleep(2);
    }
  } finally {
    qmp?.close();
    await p.kill();
  }
}

/** Options for {@link measureProcessSharing}. */
export interface ProcessSharingOptions {
  /** A snapshot of the touch-and-read guest (snapshot-guest.ts), with its PASSES when saved. */
  statePath: string;
  memoryPath: string;
  passes: number;
  clones: number;
  settleMs: number;
}

/**
 * Clones of one snapshot in separate processes, as one process per VM runs
 * them: `clones` times `flint --api-sock` + PUT /snapshot/load (resume_vm),
 * each run until its guest has read its memory twice over (its PASSES read
 * through /proc/<pid>/mem at the memory file's mapping), then PATCH /vm
 * Paused; the processes' /proc/<pid>/smaps_rollup, summed.
 */
export async function measureProcessSharing(o: ProcessSharingOptions): Promise<ProcessSharingSample> {
  const dir = mkdtempSync(join(tmpdir(), "flint-bench-clones-"));
  const procs: { p: Watched; sock: string }[] = [];
  try {
    for (let i = 0; i < o.clones; i++) {
      const sock = join(dir, `c${i}.sock`);
      procs.push({ p: new Watched("flint", process.execPath, [CLI, "--api-sock", sock]), sock });
    }
    const t0 = performance.now();
    for (const { sock } of procs) {
      await apiOk(sock, "PUT", "/snapshot/load", { snapshot_path: o.statePath, mem_backend: { backend_type: "File", backend_path: o.memoryPath }, resume_vm: true });
    }
    const passes = (pid: number) => readGuestU64(pid, o.memoryPath, STATUS_ADDRESS + PASSES_OFFSET);
    for (const { p } of procs) {
      while (passes(p.child.pid!) < BigInt(o.passes + 2)) {
        if (performance.now() - t0 > 300_000) throw p.failure("did not read its memory within 300 s");
        await sleep(10);
      }
    }
    const readMs = performance.now() - t0;
    for (const { sock } of procs) await apiOk(sock, "PATCH", "/vm", { state: "Paused" });
    await sleep(o.settleMs);
    const each = procs.map(({ p }) => parseSmapsRollup(readFileSync(`/proc/${p.child.pid}/smaps_rollup`, "utf8")));
    return { clones: o.clones, each, readMs };
  } finally {
    for (const { p } of procs) await p.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A 64-bit value of guest memory in process `pid`, read through /proc/<pid>/mem at its mapping of the memory file. */
function readGuestU64(pid: number, memoryPath: string, guestAddress: number): bigint {
  const mapping = findFileMapping(readFileSync(`/proc/${pid}/maps`, "utf8"), memoryPath, guestAddress);
  if (!mapping) return 0n; // not mapped yet
  const fd = openSync(`/proc/${pid}/mem`, "r");
  try {
    const b = Buffer.alloc(8);
    readSync(fd, b, 0, 8, mapping);
    return b.readBigUInt64LE(0);
  } finally {
    closeSync(fd);
  }
}
