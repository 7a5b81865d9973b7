/**
 * The VM's metrics file (Firecracker's `--metrics-path` and PUT /metrics):
 * one JSON object per line, written every METRICS_INTERVAL_MS, on
 * FlushMetrics and when the VM ends. As in Firecracker, counters are the
 * change since the previous line (its SharedIncMetric), so a reader sums
 * them; latencies are the last value measured.
 *
 * Groups: `utc_timestamp_ms`; `api_server` (process start-up, in the first
 * line); `get_api_requests`, `put_api_requests`, `patch_api_requests`
 * (`<resource>_count` and `<resource>_fails`, Firecracker's naming);
 * `latencies_us` (pause_vm, resume_vm, instance_start, full_create_snapshot, diff_create_snapshot, load_snapshot); `vmm`
 * (guest faults); `vcpu` (VM exits of all vCPUs: every exit, port I/O and
 * MMIO ones, accesses nothing handled, failed KVM_KVMCLOCK_CTRL calls); and one group per virtio device, named as Firecracker
 * names its groups (`block_<drive_id>`, `net_<iface_id>`, `vsock`,
 * `entropy`, `balloon`), with flint's transport counters (queue kicks, interrupts,
 * notifications that cost a VM exit, guest faults, host I/O errors) and the
 * device's own (block: requests, read_bytes, written_bytes, flushes; net:
 * tx/rx frames, bytes and drops; rng: requests, bytes; vsock and balloon
 * theirs), read from what each device thread publishes; and,
 * once PUT /serial configured the console, `uart` (bytes written, bytes its
 * file could not take, bytes its rate limiter dropped: Firecracker's
 * write_count, missed_write_count and rate_limiter_dropped_bytes).
 *
 * The path must exist (a file or a FIFO, as in Firecracker); a write never
 * blocks the VM: a line a full FIFO cannot take is dropped and counted.
 */
import { closeSync, constants, openSync, writeSync } from "node:fs";
import type { VirtioDeviceStats } from "../devices/virtio/device-thread.js";
import type { SerialOutputCounts } from "./serial-output.js";
import type { VcpuStats } from "../vm/vcpu-loop.js";

/** What a VM reports for each metrics line (totals; the file gets the change since the last line). */
export interface MetricsSample {
  devices: VirtioDeviceStats[];
  guestFaults: number;
  vcpus?: VcpuStats[];
  uart?: Readonly<SerialOutputCounts>;
}

/** The vcpu group's counters: Firecracker-style name → the VcpuStats figure summed over vCPUs. */
const VCPU_COUNTERS = { exits: "exits", exit_io: "ioExits", exit_mmio: "mmioExits", unhandled_io: "unhandledIo",
  unhandled_mmio: "unhandledMmio", kvmclock_ctrl_fails: "kvmclockCtrlFails" } as const satisfies Record<string, keyof VcpuStats>;

/** How often the metrics file gets a line (Firecracker's WRITE_METRICS_PERIOD_MS). */
export const METRICS_INTERVAL_MS = 60_000;

/** Why metrics could not be set up or flushed. */
export class MetricsError extends Error {
  readonly code: "EMETRICSPATH" | "EMETRICSOFF";
  constructor(code: MetricsError["code"], message: string) {
    super(message);
    this.name = "MetricsError";
    this.code = code;
  }
}

type Counters = Record<string, number>;

const DEVICE_COUNTERS = ["kicks", "interrupts", "userspaceNotifies", "guestFaults", "hostErrors"] as const;
const snake = (s: string) => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** Counters and latencies of one VM, and the file they go to. */
export class VmMetrics {
  private readonly requests = new Map<string, Counters>();
  private readonly latencies: Counters = {};
  private readonly lastDevices = new Map<string, Counters>();
  private lastGuestFaults = 0;
  private lastUart: SerialOutputCounts = { written: 0, missed: 0, rateLimited: 0 };
  private lastVcpu: Counters = {};
  private fd: number | undefined;
  private timer: NodeJS.Timeout | undefined;
  private startup: { us: number; cpuUs: number } | undefined;
  /** Lines a full FIFO could not take. */
  dropped = 0;

  /** Counts one API request: `method` GET/PUT/PATCH, `resource` in Firecracker's words ("drive", "machine_cfg"...). */
  apiRequest(method: string, resource: string, failed: boolean): void {
    const group = `${method.toLowerCase()}_api_requests`;
    let c = this.requests.get(group);
    if (!c) this.requests.set(group, (c = {}));
    c[`${resource}_count`] = (c[`${resource}_count`] ?? 0) + 1;
    if (failed) c[`${resource}_fails`] = (c[`${resource}_fails`] ?? 0) + 1;
  }

  /** Records the latest duration of `what` ("pause_vm", "resume_vm", "instance_start", "full_create_snapshot", "diff_create_snapshot", "load_snapshot"). */
  latency(what: string, us: number): void {
    this.latencies[what] = Math.round(us);
  }

  /** Process start-up figures, reported once (Firecracker's api_server group). */
  setStartup(us: number, cpuUs: number): void {
    this.startup = { us: Math.round(us), cpuUs: Math.round(cpuUs) };
  }

  /** True once a metrics file is open. */
  get enabled(): boolean {
    return this.fd !== undefined;
  }

  /** Opens the metrics file (it must exist) and starts the periodic writes, which call `sample` for the VM's figures. */
  open(path: string, sample: () => MetricsSample): void {
    if (this.fd !== undefined) throw new MetricsError("EMETRICSPATH", "Metrics error: the metrics file is already set");
    try {
      this.fd = openSync(path, constants.O_RDWR | constants.O_APPEND | constants.O_NONBLOCK);
    } catch (e) {
      throw new MetricsError("EMETRICSPATH", `Cannot open the metrics file '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    this.sample = sample;
    this.timer = setInterval(() => this.flush(), METRICS_INTERVAL_MS);
    this.timer.unref();
  }

  private sample: () => MetricsSample = () => ({ devices: [], guestFaults: 0 });

  /** The line the next flush would write, and the counters reset (deltas since the last one). */
  take(): Record<string, unknown> {
    const line: Record<string, unknown> = { utc_timestamp_ms: Date.now() };
    if (this.startup) {
      line["api_server"] = { process_startup_time_us: this.startup.us, process_startup_time_cpu_us: this.startup.cpuUs };
      this.startup = undefined;
    }
    for (const [group, counters] of this.requests) line[group] = { ...counters };
    this.requests.clear();
    line["latencies_us"] = { ...this.latencies };
    const { devices, guestFaults, uart, vcpus } = this.sample();
    line["vmm"] = { guest_faults: guestFaults - this.lastGuestFaults };
    this.lastGuestFaults = guestFaults;
    if (vcpus) {
      const delta: Counters = {};
      for (const [name, key] of Object.entries(VCPU_COUNTERS)) {
        const total = vcpus.reduce((n, v) => n + v[key], 0);
        delta[name] = total - (this.lastVcpu[name] ?? 0);
        this.lastVcpu[name] = total;
      }
      line["vcpu"] = delta;
    }
    if (uart) {
      const last = this.lastUart;
      line["uart"] = { write_count: uart.written - last.written, missed_write_count: uart.missed - last.missed, rate_limiter_dropped_bytes: uart.rateLimited - last.rateLimited };
      this.lastUart = { ...uart };
    }
    for (const d of devices) {
      const last = this.lastDevices.get(d.name) ?? {};
      const now: Counters = {};
      const delta: Counters = {};
      for (const k of DEVICE_COUNTERS) {
        now[k] = d[k];
        delta[snake(k)] = d[k] - (last[k] ?? 0);
      }
      for (const [k, v] of Object.entries(d.backend ?? {})) {
        const name = snake(k);
        if (name in delta) continue; // the transport's count of the same thing (host_errors)
        now[`backend.${k}`] = v;
        delta[name] = v - (last[`backend.${k}`] ?? 0);
      }
      this.lastDevices.set(d.name, now);
      line[d.name] = delta;
    }
    return line;
  }

  /** Writes one line now (FlushMetrics); throws EMETRICSOFF without a metrics file. */
  flush(): void {
    if (this.fd === undefined) throw new MetricsError("EMETRICSOFF", "Metrics error: no metrics file is set (PUT /metrics or --metrics-path first)");
    try {
      writeSync(this.fd, `${JSON.stringify(this.take())}\n`);
    } catch {
      this.dropped++;
    }
  }

  /** Stops the periodic writes and closes the file. */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.fd !== undefined) {
      try { closeSync(this.fd); } catch { /* already closed */ }
    }
    this.fd = undefined;
  }
}
