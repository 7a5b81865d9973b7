/**
 * The typed library over one microVM, and the one list of operations the
 * HTTP API (api-server.ts) and the config file sit on (as Cloud Hypervisor's
 * internal API is): configure before boot (VmResources, Firecracker's
 * resource shapes), start, pause, resume, Ctrl-Alt-Del, the balloon, and the
 * reads (instance info, machine config, the whole config). Every method
 * rejects with a one-line reason carrying a stable code; a rejected call
 * changes nothing.
 *
 *   const vm = await Vm.create({ kernel: "vmlinux", initrd: "initrd.gz", cpus: 2, memoryMib: 256,
 *     drives: [{ id: "rootfs", path: "rootfs.ext4", root: true, rateLimiter: { bandwidth: { size: 50e6, refillTimeMs: 1000 } } }] });
 *   vm.console.pipe(process.stdout);
 *   await vm.start(); await vm.pause(); await vm.resume();
 *   const result = await vm.exited;   // the guest powered off, or vm.kill()
 *
 * or, in Firecracker's terms (what the API and the config file use):
 *
 *   const vm = new Vm({ id: "vm1", consoleOutput: process.stdout });
 *   vm.resources.putBootSource({ kernel_image_path: "vmlinux", boot_args: "console=ttyS0" });
 *
 * Like Firecracker, operations run one at a time in the order called.
 */
import { EventEmitter } from "node:events";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { PassThrough, Writable } from "node:stream";
import type { RateLimiterConfig } from "../devices/virtio/rate-limiter.js";
import { Machine, type MachineConfig, type MachineResult, type MachineState } from "../vm/machine.js";
import { rateLimiterUpdate, toFcRateLimiter, tokenBucket, type FlintMachineSpec } from "../config/convert.js";
import type { Balloon, Logger, Metrics, RateLimiter, SnapshotCreateSchema } from "../config/schema.js";
import type * as z from "zod/mini";
import { LogFile, type LogLevel } from "./logger.js";
import { VmMetrics } from "./metrics.js";
import { MmdsStore } from "./mmds-store.js";
import { MMDS_DATA_MAX_BYTES } from "../devices/virtio/mmds/data.js";
import { checkDisk } from "./host-checks.js";
import { VmResources } from "./resources.js";
import { SerialOutput } from "./serial-output.js";
import { applyOverrides, readSavedVmm, type SavedVmm, type SnapshotLoad } from "./snapshot-vmm.js";

/** A snapshot Vm.snapshot wrote: its state file and its memory file. */
export interface VmSnapshot {
  statePath: string;
  memoryPath: string;
}

/** Vm.restore's options: a Vm's own, the host side of its devices, and whether it starts paused. */
export interface VmRestoreOptions extends VmOptions {
  /** New TAPs for the snapshot's interfaces, by id or in order. */
  net?: { id?: string; tap: string }[];
  /** A new host socket path for the snapshot's vsock. */
  vsock?: { uds: string };
  /** Start paused (default: running). */
  paused?: boolean;
  /**
   * Serve guest memory through the page-fault handler listening on this
   * socket (the Uffd memory backend: `flint uffd-handler --socket PATH
   * --mem-file <snap.memoryPath>`) instead of mapping the memory file.
   */
  uffdSocketPath?: string;
}

/** PUT /snapshot/create's body. */
export type SnapshotCreate = z.infer<typeof SnapshotCreateSchema>;

/** What every Vm's Machine is given, whether created or restored. */
type MachineHooks = Pick<MachineConfig, "consoleOutput" | "onGuestFault" | "onHostError" | "onSlowEnd" | "onStarted" | "seccomp" | "deviceThread">;

/** Firecracker's instance states (vmm_config/instance_info.rs VmState). */
export type VmState = "Not started" | "Running" | "Paused";

/** Why an operation was refused; `code` is stable. */
export class VmError extends Error {
  readonly code: "EPREBOOTONLY" | "EPOSTBOOTONLY" | "ENOTSUPPORTED" | "ENODEVICE" | "ESTART" | "EENDED" | "EINVALID";
  constructor(code: VmError["code"], message: string) {
    super(message);
    this.name = "VmError";
    this.code = code;
  }
}

/** GET / (swagger InstanceInfo). */
export interface InstanceInfo {
  id: string;
  state: VmState;
  vmm_version: string;
  app_name: string;
}

/** GET /balloon/statistics (swagger BalloonStats): sizes, and the guest's statistics it reported. */
export interface BalloonStatistics {
  target_pages: number;
  actual_pages: number;
  target_mib: number;
  actual_mib: number;
  [stat: string]: number;
}

/** Options of a Vm. */
export interface VmOptions {
  /** Instance id (Firecracker's --id). */
  id?: string;
  /** Version reported by GET / and GET /version. */
  version?: string;
  /** Where the guest's serial console goes (default: discarded). */
  consoleOutput?: NodeJS.WritableStream;
  /** Guest and host faults the Machine reports (one line each). */
  onGuestFault?: (device: string, message: string) => void;
  onHostError?: (device: string, message: string) => void;
  onSlowEnd?: (message: string) => void;
  /** Largest MMDS data store in bytes (Firecracker's --mmds-size-limit; default its API payload limit, 51200). */
  mmdsSizeLimit?: number;
  /** seccomp filters when the VM starts (MachineConfig.seccomp; off by default in the library). */
  seccomp?: boolean;
  /**
   * Where the VM's devices run (MachineConfig.deviceThread): "vm" (the
   * default) a device thread of its own, "process" the process's device
   * thread shared with every other such VM (for many VMs in one process).
   */
  deviceThread?: "vm" | "process";
}

/** Vm.create's options: a VM in flint's camelCase, converted to Firecracker's resources. */
export interface VmCreateOptions extends VmOptions {
  kernel: string;
  initrd?: string;
  /** Kernel command line (default VM_DEFAULT_CMDLINE); a root drive adds root=... as Firecracker does. */
  cmdline?: string;
  cpus?: number;
  memoryMib?: number;
  drives?: { id: string; path: string; root?: boolean; readOnly?: boolean; partuuid?: string; rateLimiter?: RateLimiterConfig }[];
  net?: { id: string; tap: string; mac?: string; mtu?: number; rxRateLimiter?: RateLimiterConfig; txRateLimiter?: RateLimiterConfig }[];
  vsock?: { cid: number; uds: string };
  balloon?: { amountMib: number; deflateOnOom?: boolean; statsPollingIntervalS?: number };
  /** virtio-rng, optionally rate-limited. */
  rng?: boolean | { rateLimiter?: RateLimiterConfig };
}

/** The MMDS store's limit without --mmds-size-limit: Firecracker's API payload limit. */
export const MMDS_DEFAULT_SIZE_LIMIT = 51200;

/** Vm.create's command line when none is given: the serial console on, and the VM ends when the guest reboots. */
export const VM_DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=1 pci=off";

/** 4 KiB balloon pages per MiB (virtio 1.2 §5.5.6: the balloon counts in 4 KiB pages). */
const BALLOON_PAGES_PER_MIB = 256;

/** A guest fault as the "guest-fault" event gives it: the device, and one line on what the guest did. */
export interface VmGuestFault {
  device: string;
  message: string;
}

/** The events of a Vm and their arguments. */
export interface VmEvents {
  /** The instance state, on every change. */
  state: [VmState];
  /** Bytes the guest wrote to its serial console, as they come (whatever consumes the console as well). */
  console: [Buffer];
  /** A guest fault (the first few of each device, then summaries: the monitor never floods). */
  "guest-fault": [VmGuestFault];
  /** Once the VM has ended and its threads are gone. */
  exit: [MachineResult];
}

/**
 * One microVM. Events (VmEvents): "state", "console", "guest-fault", "exit".
 */
export class Vm extends EventEmitter<VmEvents> {
  readonly id: string;
  readonly version: string;
  /** Pre-boot configuration; read-only once the VM started (PUTs then throw EPREBOOTONLY). */
  readonly resources = new VmResources();
  /** The configuration the VM started with. */
  private booted: ReturnType<VmResources["toConfig"]> | undefined;
  private machine: Machine | undefined;
  private ending: Promise<MachineResult> | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private balloonPolling = 0;
  /** MMDS's data (PUT/PATCH/GET /mmds); guests on the interfaces mmds-config names read it. */
  readonly mmds: MmdsStore;
  /** Counters and latencies for the metrics file (written once one is set). */
  readonly metrics = new VmMetrics();
  private logFile: LogFile | undefined;
  private guestFaults = 0;
  /** Each virtio device's name in metrics, in guest order, as Firecracker names its groups (block_<drive_id>, net_<iface_id>...). */
  private deviceNames: string[] = [];
  /** The console's output once PUT /serial configured it (a file, a rate limit). */
  private serialOutput: SerialOutput | undefined;

  /**
   * The guest's serial console output, when no consoleOutput was given: pipe
   * it before start(). If nothing reads it by then, the output is discarded
   * (a console nobody reads must not stall the guest).
   */
  readonly console: PassThrough = new PassThrough();

  /**
   * A VM from flint-style options (every check of the API's PUTs made here,
   * each failure a one-line ConfigError, DeviceArgError or VmError); start()
   * boots it.
   */
  static async create(o: VmCreateOptions): Promise<Vm> {
    const vm = new Vm(o);
    const r = vm.resources;
    r.putBootSource({ kernel_image_path: o.kernel, boot_args: o.cmdline ?? VM_DEFAULT_CMDLINE, ...(o.initrd !== undefined ? { initrd_path: o.initrd } : {}) });
    if (o.cpus !== undefined || o.memoryMib !== undefined) {
      const m = r.machineConfig();
      r.putMachineConfig({ ...m, vcpu_count: o.cpus ?? m.vcpu_count, mem_size_mib: o.memoryMib ?? m.mem_size_mib });
    }
    for (const d of o.drives ?? []) {
      const rl = d.rateLimiter && toFcRateLimiter(d.rateLimiter);
      r.putDrive({ drive_id: d.id, path_on_host: d.path, is_root_device: !!d.root, is_read_only: !!d.readOnly, ...(d.partuuid ? { partuuid: d.partuuid } : {}), ...(rl ? { rate_limiter: rl } : {}) });
    }
    for (const n of o.net ?? []) {
      const rx = n.rxRateLimiter && toFcRateLimiter(n.rxRateLimiter), tx = n.txRateLimiter && toFcRateLimiter(n.txRateLimiter);
      r.putNetworkInterface({ iface_id: n.id, host_dev_name: n.tap, ...(n.mac ? { guest_mac: n.mac } : {}), ...(n.mtu ? { mtu: n.mtu } : {}), ...(rx ? { rx_rate_limiter: rx } : {}), ...(tx ? { tx_rate_limiter: tx } : {}) });
    }
    if (o.vsock) r.putVsock({ guest_cid: o.vsock.cid, uds_path: o.vsock.uds });
    if (o.balloon) r.putBalloon({ amount_mib: o.balloon.amountMib, deflate_on_oom: o.balloon.deflateOnOom ?? true, ...(o.balloon.statsPollingIntervalS ? { stats_polling_interval_s: o.balloon.statsPollingIntervalS } : {}) });
    if (o.rng) {
      const rl = typeof o.rng === "object" && o.rng.rateLimiter ? toFcRateLimiter(o.rng.rateLimiter) : undefined;
      r.putEntropy(rl ? { rate_limiter: rl } : {});
    }
    vm.warmUp();
    return vm;
  }

  constructor(private readonly options: VmOptions = {}) {
    super();
    this.exited = new Promise((resolve) => (this.resolveExited = resolve));
    const limit = options.mmdsSizeLimit ?? MMDS_DEFAULT_SIZE_LIMIT;
    if (!Number.isSafeInteger(limit) || limit < 0 || limit > MMDS_DATA_MAX_BYTES) {
      throw new VmError("EINVALID", `Invalid MMDS size limit ${limit}: use 0 to ${MMDS_DATA_MAX_BYTES} bytes (what a network device takes)`);
    }
    this.mmds = new MmdsStore(limit);
    this.id = options.id ?? "anonymous-instance";
    this.version = options.version ?? "0.0.0";
  }

  /** Firecracker's instance state; an ended VM reports the state it had last. */
  get state(): VmState {
    const s: MachineState | undefined = this.machine?.state;
    if (s === undefined || s === "not-started") return "Not started";
    return s === "paused" ? "Paused" : "Running";
  }

  /** True once the guest ended or the VM was killed. */
  get ended(): boolean {
    return this.machine?.state === "ended";
  }

  /** Resolves with the VM's end, once it has started and ended (a VM that never starts never resolves it). */
  readonly exited: Promise<MachineResult>;
  private resolveExited!: (result: MachineResult) => void;

  /** Runs `op` after every operation called before it (Firecracker serves one request at a time). */
  serialize<T>(op: () => T | Promise<T>): Promise<T> {
    const p = this.queue.then(op);
    this.queue = p.catch(() => undefined);
    return p;
  }

  /** Throws EPREBOOTONLY once started: configuration is read-only then. */
  requireNotStarted(): void {
    if (this.machine) throw new VmError("EPREBOOTONLY", "The requested operation is not supported after starting the microVM.");
  }

  private requireStarted(): Machine {
    if (!this.machine) throw new VmError("EPOSTBOOTONLY", "The requested operation is not supported before starting the microVM.");
    if (this.machine.state === "ended") throw new VmError("EENDED", "The microVM has ended.");
    return this.machine;
  }

  /** Writes a line to the log file, when there is one. */
  log(level: LogLevel, origin: string, message: string): void {
    this.logFile?.log(level, origin, message);
  }

  /** PUT /mmds: replaces the data; a running VM's MMDS interfaces serve the new data once this resolves. */
  async putMmds(data: unknown): Promise<void> {
    this.mmds.put(data);
    await this.pushMmds();
  }

  /** PATCH /mmds: merges a JSON merge patch (RFC 7396) into the data, then as putMmds. */
  async patchMmds(patch: unknown): Promise<void> {
    this.mmds.patch(patch);
    await this.pushMmds();
  }

  /** Sends the store's data to the network devices that answer MMDS (after boot; before, start() does). */
  private async pushMmds(): Promise<void> {
    if (!this.machine || this.machine.state === "ended" || !this.booted?.["mmds-config"]) return;
    await this.machine.setMmdsData(this.mmds.get());
  }

  /** PUT /logger (before boot, as in Firecracker): the log file, its level and what each line shows. */
  async setLogger(l: Logger): Promise<void> {
    this.requireNotStarted();
    if (this.logFile) throw new VmError("EINVALID", "Logger error: the logger is already configured.");
    if (l.log_path == null) throw new VmError("EINVALID", "Logger error: flint writes its log to a file or FIFO: log_path is required.");
    this.logFile = await LogFile.open({
      path: l.log_path, id: this.id, level: l.level ?? null, showLevel: l.show_level ?? null,
      showLogOrigin: l.show_log_origin ?? null, module: l.module ?? null,
    });
    this.log("info", "vmm", `Running flint v${this.version} as instance ${this.id}`);
  }

  /**
   * Boots, ahead of InstanceStart, the vCPU and device threads the
   * configuration so far needs and that are not booting yet (each an idle
   * isolate until the VM takes it), and the first time a bare KVM VM
   * (Machine.prestart's kvmVm): a VM configured over the API, or loaded
   * from a snapshot, then starts on threads and a KVM VM that are ready.
   * The API server calls it after each pre-boot change; start() calls it
   * last.
   */
  warmUp(spec?: FlintMachineSpec): void {
    if (this.machine) return;
    if (!this.warmed.kvmVm) {
      // The KVM VM itself (irqchip, PIT) fits any shape: made once, in the event loop's next turn.
      this.warmed.kvmVm = true;
      Machine.prestart({ vcpuThreads: 0, deviceThreads: 0, kvmVm: true });
    }
    let planned: { vcpuThreads: number; deviceThreads: number; sharedDevices: boolean };
    try {
      planned = this.resources.plannedThreads(spec);
      // The devices placed "shared" go to the process's device thread, which is not booted per VM.
      if (this.options.deviceThread === "process" && planned.sharedDevices) planned.deviceThreads--;
    } catch {
      return; // a configuration that cannot run yet: start() will say why
    }
    const more = { vcpuThreads: Math.max(0, planned.vcpuThreads - this.warmed.vcpuThreads), deviceThreads: Math.max(0, planned.deviceThreads - this.warmed.deviceThreads) };
    if (more.vcpuThreads + more.deviceThreads === 0) return;
    Machine.prestart(more);
    this.warmed.vcpuThreads += more.vcpuThreads;
    this.warmed.deviceThreads += more.deviceThreads;
  }

  private readonly warmed = { vcpuThreads: 0, deviceThreads: 0, kvmVm: false };

  /** The console's output, with a "console" event for each chunk on its way to `target`. */
  private consoleTee(target: NodeJS.WritableStream): Writable {
    return new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        if (this.listenerCount("console") > 0) this.emit("console", chunk);
        // Done once the target has it: its back-pressure holds the guest's console.
        target.write(chunk, () => done());
      },
    });
  }

  /** PUT /metrics (before boot, as in Firecracker): where the metrics lines go. */
  setMetrics(m: Metrics): void {
    this.requireNotStarted();
    this.metrics.open(m.metrics_path, () => ({
      devices: (this.machine?.deviceStats() ?? []).map((d, i) => ({ ...d, name: this.deviceNames[i] ?? d.name })),
      guestFaults: this.guestFaults,
      ...(this.machine ? { vcpus: this.machine.vcpuStats() } : {}),
      ...(this.serialOutput ? { uart: this.serialOutput.totals } : {}),
    }));
  }

  /** FlushMetrics: a metrics line now (after boot, as in Firecracker). */
  flushMetrics(): void {
    this.requireStarted();
    this.metrics.flush();
  }

  /**
   * Pushes bytes to the guest's serial console; returns how many it took (none
   * before the VM started or after it ended). A console whose output goes to
   * a file (PUT /serial's serial_out_path) has no input, as in Firecracker:
   * the bytes are taken and dropped.
   */
  consoleInput(bytes: Uint8Array): number {
    if (this.resources.serialConfig()?.serial_out_path != null) return bytes.length;
    return this.machine && this.machine.state !== "ended" ? this.machine.consoleInput(bytes) : 0;
  }

  /** Resolves when the console can take input again (once the VM started, if it has not). */
  async consoleWritable(): Promise<void> {
    if (!this.machine) await new Promise((resolve) => this.once("state", resolve));
    if (this.machine && this.machine.state !== "ended") await this.machine.consoleWritable();
  }

  /** GET /. */
  info(): InstanceInfo {
    return { id: this.id, state: this.state, vmm_version: this.version, app_name: "Firecracker" };
  }

  /** GET /vm/config: the configuration as a config file (what the VM booted with, once started). */
  config(): ReturnType<VmResources["toConfig"]> {
    return this.booted ?? this.resources.toConfig();
  }

  /**
   * InstanceStart: builds the VM from the resources and lets its vCPUs run;
   * resolves once they do. Rejects (ESTART, with the reason) when the
   * configuration cannot boot; the VM then stays "Not started".
   */
  async start(): Promise<void> {
    this.requireNotStarted();
    const t0 = performance.now();
    const spec = this.resources.spec();
    this.warmUp(spec);
    const drives = this.resources.driveList().map((d) => d.drive_id), ifaces = this.resources.interfaceList().map((n) => n.iface_id);
    const deviceIds = spec.virtioDevices.map((d) => d.kind === "block" ? drives.shift() : d.kind === "net" ? ifaces.shift() : undefined);
    await this.launch(() => (hooks) => Machine.create({
      cpus: spec.cpus,
      memoryMib: spec.memoryMib,
      boot: { kind: "linux", kernelPath: spec.kernelPath, initrdPath: spec.initrdPath, cmdline: spec.cmdline, acpi: true, mode: spec.bootMode },
      hugePages: spec.hugePages,
      trackDirtyPages: spec.trackDirtyPages,
      virtioDevices: spec.virtioDevices,
      ...hooks,
    }), { config: this.resources.toConfig(), deviceIds }, "Start microvm error");
    this.metrics.latency("instance_start", (performance.now() - t0) * 1000);
    this.log("info", "vmm", `Started the VM: ${spec.cpus} vCPUs, ${spec.memoryMib} MiB, ${spec.virtioDevices.length} virtio devices`);
  }

  /**
   * PUT /snapshot/load: restores a VM saved by createSnapshot() (Machine.restore:
   * its memory file mapped copy-on-write, or with `mem_backend` Uffd served by
   * the page-fault handler listening at `backend_path`), running when `resume_vm`, else
   * paused. Only before anything that configures a boot was given (as
   * Firecracker: boot source, machine config, devices, MMDS config), since
   * the snapshot is the whole VM. `network_overrides` give interfaces new
   * TAPs by iface_id and `vsock_override` the vsock a new socket path, so
   * that clones of one snapshot do not collide. Rejects with the reason
   * (EPREBOOTONLY once started, ENOTSUPPORTED for what flint cannot do,
   * ESTART for a snapshot that cannot be restored), changing nothing.
   */
  async loadSnapshot(l: SnapshotLoad): Promise<void> {
    this.requireNotStarted();
    if (this.resources.bootConfigured) {
      throw new VmError("EPREBOOTONLY", "Loading a microVM snapshot not allowed after configuring boot-specific resources.");
    }
    const backendPath = l.mem_backend != null ? l.mem_backend.backend_path : l.mem_file_path;
    // Uffd: backend_path is the page-fault handler's socket (src/snapshot/uffd.ts); File (and mem_file_path): the memory file.
    if (backendPath == null) throw new VmError("EINVALID", "Missing field: either `mem_backend` or `mem_file_path` is required.");
    const memory = l.mem_backend?.backend_type === "Uffd" ? { uffdSocketPath: backendPath } : { memoryPath: backendPath };
    if (l.huge_pages !== undefined && l.huge_pages !== "None") throw new VmError("ENOTSUPPORTED", `The requested operation is not supported: huge pages "${l.huge_pages}" for restored memory`);
    if (l.clock_realtime) throw new VmError("ENOTSUPPORTED", "The requested operation is not supported: clock_realtime (the guest's clock goes on from the snapshot's value)");
    const t0 = performance.now();
    let saved: ReturnType<typeof readSavedVmm>, overridden: ReturnType<typeof applyOverrides>;
    try {
      saved = readSavedVmm(l.snapshot_path);
      overridden = applyOverrides(saved, l);
    } catch (e) {
      throw new VmError("ESTART", `Load snapshot error: ${(e as Error).message.split("\n")[0]}`);
    }
    const { virtioDevices, config } = overridden;
    // enable_diff_snapshots is the deprecated name of track_dirty_pages (vmm_config/snapshot.rs); the loaded VM's machine-config says which it got.
    const trackDirtyPages = l.track_dirty_pages ?? l.enable_diff_snapshots ?? false;
    if (config["machine-config"]) config["machine-config"].track_dirty_pages = trackDirtyPages;
    await this.launch(() => (hooks) => Machine.restore({
      statePath: l.snapshot_path, snapshot: saved.snapshot, ...memory, virtioDevices, paused: !(l.resume_vm ?? false), trackDirtyPages, ...hooks,
    }), { config, deviceIds: saved.deviceIds }, "Load snapshot error");
    this.metrics.latency("load_snapshot", (performance.now() - t0) * 1000);
    this.log("info", "vmm", `Loaded the VM from snapshot ${l.snapshot_path}: ${this.state}`);
  }

  /**
   * PUT /snapshot/create: saves the paused VM (Machine.snapshot) to
   * `snapshot_path` and `mem_file_path`; the VM stays paused. A Diff
   * snapshot (only the pages written since the previous snapshot; merge it
   * onto that one's memory file with `flint snapshot rebase`) needs
   * track_dirty_pages, at boot (machine-config) or load; without it it is
   * refused (ENOTSUPPORTED) with Firecracker's message.
   */
  async createSnapshot(c: SnapshotCreate): Promise<void> {
    const machine = this.requireStarted();
    const diff = c.snapshot_type === "Diff";
    if (diff && !machine.config.trackDirtyPages) {
      throw new VmError("ENOTSUPPORTED", "The requested operation is not supported: Diff snapshots are not allowed on uVMs with dirty page tracking disabled.");
    }
    if (machine.state !== "paused") throw new VmError("EINVALID", "Create snapshot error: the microVM must be paused first (PATCH /vm {\"state\": \"Paused\"})");
    const t0 = performance.now();
    try {
      await machine.snapshot({ statePath: c.snapshot_path, memoryPath: c.mem_file_path, vmm: this.savedVmm, type: diff ? "diff" : "full" });
    } catch (e) {
      throw new VmError("EINVALID", `Create snapshot error: ${(e as Error).message.split("\n")[0]}`);
    }
    this.metrics.latency(diff ? "diff_create_snapshot" : "full_create_snapshot", (performance.now() - t0) * 1000);
    this.log("info", "vmm", `Created a ${diff ? "Diff" : "Full"} snapshot: ${c.snapshot_path}, memory ${c.mem_file_path}`);
  }

  /**
   * The library's snapshot: pauses the VM if it runs, writes `dir`/vm.snap
   * and `dir`/vm.mem (createSnapshot; `dir` is created), and resumes it
   * unless `resume` is false. Resolves with the snapshot, for Vm.restore.
   */
  async snapshot(o: { dir: string; resume?: boolean }): Promise<VmSnapshot> {
    const machine = this.requireStarted();
    const wasRunning = machine.state === "running";
    mkdirSync(o.dir, { recursive: true });
    const snap: VmSnapshot = { statePath: join(o.dir, "vm.snap"), memoryPath: join(o.dir, "vm.mem") };
    if (wasRunning) await this.pause();
    try {
      await this.createSnapshot({ snapshot_path: snap.statePath, mem_file_path: snap.memoryPath });
    } finally {
      if (wasRunning && o.resume !== false && (machine.state as MachineState) === "paused") await this.resume();
    }
    return snap;
  }

  /**
   * A new Vm restored from `snap` (loadSnapshot), running unless `paused`:
   * `net` gives its interfaces their own TAPs (by iface id, or in order
   * when no id is given), `vsock` its own socket path, so that many clones
   * of one snapshot run side by side. The other options are a Vm's own.
   */
  static async restore(snap: VmSnapshot, o: VmRestoreOptions = {}): Promise<Vm> {
    const vm = new Vm(o);
    let ids: (string | undefined)[] = [];
    if (o.net?.some((n) => n.id === undefined)) {
      try {
        const saved = readSavedVmm(snap.statePath);
        ids = saved.virtioDevices.flatMap((d, i) => (d.kind === "net" ? [saved.deviceIds[i]] : []));
      } catch (e) {
        throw new VmError("ESTART", `Load snapshot error: ${(e as Error).message.split("\n")[0]}`);
      }
    }
    await vm.loadSnapshot({
      snapshot_path: snap.statePath,
      mem_backend: o.uffdSocketPath !== undefined ? { backend_type: "Uffd", backend_path: o.uffdSocketPath } : { backend_type: "File", backend_path: snap.memoryPath },
      resume_vm: !o.paused,
      ...(o.net ? { network_overrides: o.net.map((n, i) => ({ iface_id: n.id ?? ids[i] ?? `#${i}`, host_dev_name: n.tap })) } : {}),
      ...(o.vsock ? { vsock_override: { uds_path: o.vsock.uds } } : {}),
    });
    return vm;
  }

  /** What a snapshot of this VM carries for the API: the configuration it runs with and its devices' ids. */
  private savedVmm: SavedVmm | undefined;

  /**
   * Builds a Machine with `make` (given the hooks every Vm's Machine gets:
   * console, faults, events) and runs it until its vCPUs are let go; on
   * failure nothing is kept and the rejection says `failure`: the reason.
   */
  private async launch(make: () => (hooks: MachineHooks) => Machine, saved: SavedVmm, failure: string): Promise<void> {
    let machine: Machine;
    let consoleOutput = this.options.consoleOutput ?? (this.console.listenerCount("data") > 0 || this.console.readableFlowing ? this.console : new Writable({ write: (_c, _e, cb) => cb() }));
    const serial = this.resources.serialConfig();
    try {
      if (serial) {
        const rateLimiter = tokenBucket(serial.rate_limiter);
        this.serialOutput = new SerialOutput({
          ...(serial.serial_out_path != null ? { path: serial.serial_out_path } : { target: consoleOutput }),
          ...(rateLimiter ? { rateLimiter } : {}),
        });
        consoleOutput = this.serialOutput;
      }
      consoleOutput = this.consoleTee(consoleOutput);
      machine = make()({
        consoleOutput,
        onGuestFault: (device, message) => {
          this.guestFaults++;
          this.log("warn", `devices::${device}`, `guest fault: ${message}`);
          this.options.onGuestFault?.(device, message);
          this.emit("guest-fault", { device, message });
        },
        onHostError: (device, message) => {
          this.log("error", `devices::${device}`, `host error: ${message}`);
          this.options.onHostError?.(device, message);
        },
        onSlowEnd: (message) => {
          this.log("warn", "vmm", message);
          this.options.onSlowEnd?.(message);
        },
        onStarted: () => this.emit("state", this.state),
        ...(this.options.seccomp ? { seccomp: true } : {}),
        ...(this.options.deviceThread ? { deviceThread: this.options.deviceThread } : {}),
      });
    } catch (e) {
      this.serialOutput?.destroy();
      this.serialOutput = undefined;
      throw new VmError("ESTART", `${failure}: ${(e as Error).message.split("\n")[0]}`);
    }
    this.machine = machine;
    this.booted = saved.config;
    this.savedVmm = saved;
    const names: Record<string, string> = { vsock: "vsock", rng: "entropy", balloon: "balloon" };
    this.deviceNames = (machine.config.virtioDevices ?? []).map((d, i) => d.kind === "block" ? `block_${saved.deviceIds[i]}` : d.kind === "net" ? `net_${saved.deviceIds[i]}` : names[d.kind] ?? d.kind);
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const onState = () => started();
    this.once("state", onState);
    const run = machine.run();
    this.ending = run.then((result) => {
      this.log("info", "vmm", `The VM ended: ${result.reason.kind}${result.reason.kind === "error" ? `: ${result.reason.message.split("\n")[0]}` : ""}`);
      if (this.metrics.enabled) this.metrics.flush();
      this.metrics.close();
      this.serialOutput?.end();
      if (!this.options.consoleOutput) this.console.end();
      this.emit("exit", result);
      this.resolveExited(result);
      this.logFile?.close();
      return result;
    });
    // Its rejection (a start that failed) is reported by this call, not left unhandled.
    this.ending.catch(() => undefined);
    // A start that fails before the guest runs (a device that cannot open) ends run() with an error.
    const failed = run.then(() => undefined, (e: unknown) => e as Error);
    const first = await Promise.race([running.then(() => undefined), failed]);
    if (first instanceof Error) {
      this.off("state", onState);
      this.machine = undefined;
      this.booted = undefined;
      this.savedVmm = undefined;
      this.ending = undefined;
      throw new VmError("ESTART", `${failure}: ${first.message.split("\n")[0]}`);
    }
    // The MMDS interfaces get the data stored before boot (their device threads are running now).
    await this.pushMmds();
  }

  /** PATCH /vm {"state": "Paused"}: every vCPU out of the guest, every device at rest. */
  async pause(): Promise<void> {
    const t0 = performance.now();
    await this.requireStarted().pause();
    this.metrics.latency("pause_vm", (performance.now() - t0) * 1000);
    this.log("info", "vmm", "Paused the VM");
    this.emit("state", this.state);
  }

  /** PATCH /vm {"state": "Resumed"}. */
  async resume(): Promise<void> {
    const t0 = performance.now();
    await this.requireStarted().resume();
    this.metrics.latency("resume_vm", (performance.now() - t0) * 1000);
    this.log("info", "vmm", "Resumed the VM");
    this.emit("state", this.state);
  }

  /** SendCtrlAltDel: types Ctrl-Alt-Del on the guest's keyboard (Machine.sendCtrlAltDel); the guest decides what follows. */
  async sendCtrlAltDel(): Promise<void> {
    await this.requireStarted().sendCtrlAltDel();
    this.log("info", "vmm", "Sent Ctrl-Alt-Del to the guest");
  }

  /**
   * Asks the guest to end (Ctrl-Alt-Del) and waits for it; after `timeoutMs`
   * (default 30 s) a guest that did not end is stopped at once. Resolves with
   * how the VM ended.
   */
  async shutdown(timeoutMs = 30_000): Promise<MachineResult> {
    await this.sendCtrlAltDel();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
    const ended = await Promise.race([this.exited, late.then(() => undefined)]);
    clearTimeout(timer);
    if (ended) return ended;
    this.log("warn", "vmm", `The guest did not end ${timeoutMs} ms after Ctrl-Alt-Del: stopping it`);
    return (await this.kill())!;
  }

  /** Ends the VM now, from any state (the guest is not asked); resolves when it has ended. */
  async kill(): Promise<MachineResult | undefined> {
    if (!this.machine) return undefined;
    this.machine.stop({ kind: "poweroff" });
    return this.ending;
  }

  /**
   * PATCH /drives/{id} after boot: a new backing file (or the same path,
   * re-read after it was resized), which the guest sees as a capacity change
   * (Kata and firecracker-containerd swap container disks this way); and a
   * new rate limiter, at once (Firecracker's update rules: a bucket given
   * replaces the old one, size or refill_time 0 removes it, a bucket not
   * given stays). The file is checked as at PUT time before anything changes.
   */
  async updateDrive(p: { drive_id: string; path_on_host?: string | null; rate_limiter?: RateLimiter | null }): Promise<void> {
    const machine = this.requireStarted();
    const index = this.deviceNames.indexOf(`block_${p.drive_id}`);
    const drive = this.booted?.drives.find((d) => d.drive_id === p.drive_id);
    if (index < 0 || !drive) throw new VmError("ENODEVICE", `Drive config error: no drive '${p.drive_id}' was attached at boot`);
    if (p.path_on_host != null) {
      checkDisk({ path: p.path_on_host, readOnly: drive.is_read_only ?? false });
      await machine.updateDriveBacking(index, p.path_on_host);
      drive.path_on_host = p.path_on_host;
      this.log("info", "vmm", `Drive ${p.drive_id} now backed by ${p.path_on_host}`);
    }
    if (p.rate_limiter != null) {
      const now = await machine.updateRateLimiter(index, "io", rateLimiterUpdate(p.rate_limiter));
      const fc = toFcRateLimiter(now);
      if (fc) drive.rate_limiter = fc;
      else delete drive.rate_limiter;
    }
  }

  /** PATCH /network-interfaces/{id} after boot: new RX and TX rate limiters, with the rules of updateDrive. */
  async updateNetworkInterface(p: { iface_id: string; rx_rate_limiter?: RateLimiter | null; tx_rate_limiter?: RateLimiter | null }): Promise<void> {
    const machine = this.requireStarted();
    const index = this.deviceNames.indexOf(`net_${p.iface_id}`);
    const iface = this.booted?.["network-interfaces"]?.find((n) => n.iface_id === p.iface_id);
    if (index < 0 || !iface) throw new VmError("ENODEVICE", `Network interface error: no interface '${p.iface_id}' was attached at boot`);
    for (const [which, given, key] of [["rx", p.rx_rate_limiter, "rx_rate_limiter"], ["tx", p.tx_rate_limiter, "tx_rate_limiter"]] as const) {
      if (given == null) continue;
      const fc = toFcRateLimiter(await machine.updateRateLimiter(index, which, rateLimiterUpdate(given)));
      if (fc) iface[key] = fc;
      else delete iface[key];
    }
  }

  /** GET /balloon: the balloon's configuration, with its current target once started. */
  async balloon(): Promise<Balloon> {
    const configured = (this.booted?.balloon ?? this.resources.balloonConfig()) ?? undefined;
    if (!configured) throw new VmError("ENODEVICE", "Balloon config error: No balloon device found.");
    if (!this.machine || this.machine.state === "ended" || !this.machine.balloon) return { ...configured, stats_polling_interval_s: this.balloonPolling || (configured.stats_polling_interval_s ?? 0) };
    const info = await this.machine.balloon.info();
    return { ...configured, amount_mib: info.targetMib, stats_polling_interval_s: this.balloonPolling || (configured.stats_polling_interval_s ?? 0) };
  }

  /** PATCH /balloon: a new target for the guest. */
  async setBalloonTarget(amountMib: number): Promise<void> {
    const control = this.balloonControl();
    await control.setTarget(amountMib);
  }

  /**
   * GET /balloon/statistics: the sizes and the guest's latest statistics, as
   * Firecracker names them. Firecracker refuses this when statistics are off
   * (stats_polling_interval_s 0); flint asks the guest on each read, so it
   * answers whenever the balloon exists.
   */
  async balloonStatistics(): Promise<BalloonStatistics> {
    const info = await this.balloonControl().info();
    const out: BalloonStatistics = {
      target_pages: info.targetMib * BALLOON_PAGES_PER_MIB, actual_pages: info.actualPages,
      target_mib: info.targetMib, actual_mib: info.actualMib,
    };
    for (const [name, value] of Object.entries(info.stats)) out[name.replace(/-/g, "_")] = value;
    return out;
  }

  /** PATCH /balloon/statistics: flint reads statistics on request; the interval is kept and reported. */
  setBalloonStatsInterval(seconds: number): void {
    this.balloonControl();
    const configured = this.booted?.balloon?.stats_polling_interval_s ?? 0;
    // Firecracker: statistics cannot be turned on or off after boot, only their interval changed.
    if ((configured === 0) !== (seconds === 0)) {
      throw new VmError("EINVALID", "Balloon update error: Cannot enable or disable the statistics after boot.");
    }
    this.balloonPolling = seconds;
  }

  private balloonControl(): NonNullable<Machine["balloon"]> {
    const machine = this.requireStarted();
    const b = machine.balloon;
    if (!b) throw new VmError("ENODEVICE", "Balloon update error: No balloon device found.");
    return b;
  }
}
