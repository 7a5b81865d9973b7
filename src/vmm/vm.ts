/**
 * The typed library over one microVM, and the one list of operations the
 * HTTP API (api-server.ts) and the config file sit on (as Cloud Hypervisor's
 * internal API is): configure before boot (VmResources, Firecracker's
 * resource shapes), start, pause, resume, Ctrl-Alt-Del, the balloon, and the
 * reads (instance info, machine config, the whole config). Every method
 * rejects with a one-line reason carrying a stable code; a rejected call
 * changes nothing.
 *
 *   const vm = new Vm({ id: "vm1", consoleOutput: process.stdout });
 *   vm.resources.putBootSource({ kernel_image_path: "vmlinux", boot_args: "console=ttyS0" });
 *   await vm.start(); await vm.pause(); await vm.resume();
 *   const result = await vm.exited;   // the guest powered off, or vm.kill()
 *
 * Like Firecracker, operations run one at a time in the order called.
 */
import { EventEmitter } from "node:events";
import { devicePlacement } from "../devices/virtio/virtio-set.js";
import { Machine, type MachineResult, type MachineState } from "../vm/machine.js";
import type { Balloon } from "../config/schema.js";
import { VmResources } from "./resources.js";

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
}

/** 4 KiB balloon pages per MiB (virtio 1.2 §5.5.6: the balloon counts in 4 KiB pages). */
const BALLOON_PAGES_PER_MIB = 256;

/**
 * One microVM. Events: "state" (VmState, on every change), "exit"
 * (MachineResult, once the VM has ended and its threads are gone).
 */
export class Vm extends EventEmitter {
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

  constructor(private readonly options: VmOptions = {}) {
    super();
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

  /** Resolves with the VM's end once it started and ended (rejects if start failed). */
  get exited(): Promise<MachineResult> {
    if (!this.ending) return Promise.reject(new VmError("EPOSTBOOTONLY", "The VM has not started"));
    return this.ending;
  }

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
    const spec = this.resources.spec();
    Machine.prestart({ vcpuThreads: spec.cpus, deviceThreads: devicePlacement(spec.virtioDevices).threads });
    let machine: Machine;
    try {
      machine = Machine.create({
        cpus: spec.cpus,
        memoryMib: spec.memoryMib,
        boot: { kind: "linux", kernelPath: spec.kernelPath, initrdPath: spec.initrdPath, cmdline: spec.cmdline, acpi: true, mode: spec.bootMode },
        hugePages: spec.hugePages,
        virtioDevices: spec.virtioDevices,
        ...(this.options.consoleOutput ? { consoleOutput: this.options.consoleOutput } : {}),
        ...(this.options.onGuestFault ? { onGuestFault: this.options.onGuestFault } : {}),
        ...(this.options.onHostError ? { onHostError: this.options.onHostError } : {}),
        ...(this.options.onSlowEnd ? { onSlowEnd: this.options.onSlowEnd } : {}),
        onStarted: () => this.emit("state", this.state),
      });
    } catch (e) {
      throw new VmError("ESTART", `Start microvm error: ${(e as Error).message.split("\n")[0]}`);
    }
    this.machine = machine;
    this.booted = this.resources.toConfig();
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const onState = () => started();
    this.once("state", onState);
    const run = machine.run();
    this.ending = run.then((result) => {
      this.emit("exit", result);
      return result;
    });
    // A start that fails before the guest runs (a device that cannot open) ends run() with an error.
    const failed = run.then(() => undefined, (e: unknown) => e as Error);
    const first = await Promise.race([running.then(() => undefined), failed]);
    if (first instanceof Error) {
      this.off("state", onState);
      this.machine = undefined;
      this.booted = undefined;
      this.ending = undefined;
      throw new VmError("ESTART", `Start microvm error: ${first.message.split("\n")[0]}`);
    }
    this.ending.catch(() => undefined);
  }

  /** PATCH /vm {"state": "Paused"}: every vCPU out of the guest, every device at rest. */
  async pause(): Promise<void> {
    await this.requireStarted().pause();
    this.emit("state", this.state);
  }

  /** PATCH /vm {"state": "Resumed"}. */
  async resume(): Promise<void> {
    await this.requireStarted().resume();
    this.emit("state", this.state);
  }

  /** Ends the VM now, from any state (the guest is not asked); resolves when it has ended. */
  async kill(): Promise<MachineResult | undefined> {
    if (!this.machine) return undefined;
    this.machine.stop({ kind: "poweroff" });
    return this.ending;
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
