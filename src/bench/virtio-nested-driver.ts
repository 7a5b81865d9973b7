/**
 * The virtio benchmark's conductor, run by Node *inside* the outer VM of the
 * nested harness (src/bench/virtio-nested.ts starts it):
 *
 *   node virtio-nested-driver.js CONFIG.json RESULT.json
 *
 * RESULT.json is rewritten after every step, so it holds what was measured
 * even if the outer VM freezes before the end.
 *
 * It starts the TCP receiver (`virtio-bench sink`), boots every monitor at
 * once with its console on a pipe, waits until each guest's /init reports
 * `test=ready`, and then runs the steps one at a time, in the order given:
 * it writes "ID COMMAND" to that guest's console and waits for the guest's
 * `test=end id=ID` (and, for a TCP stream, the outer end's report: the
 * receiver's for a stream the guest sent, the source's for one it received). Only one
 * guest is busy at any time; the others wait, idle, in `read`. So flint's and
 * QEMU's tests alternate within seconds of each other and drift in the load
 * of the shared host hits both alike, while each monitor boots only once.
 *
 * A guest that does not finish a step in time is killed; a VM that died
 * (killed, or its guest crashed) is booted again before its next step, up to
 * `maxRestarts` times, after which its remaining steps are reported as not
 * run. When a guest never gets ready at the start, no step runs. Nothing here
 * throws for a guest's failure.
 * Imports nothing but Node and the report parser: it runs under TCG, where
 * every module loaded costs seconds.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, readdirSync, readFileSync, writeFileSync } from "node:fs";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { parseVirtioBenchLine } from "./virtio-report.js";

/** One VM to boot: a name for the results and the argv that boots it. */
export interface DriverMonitor {
  name: string;
  argv: string[];
  /** File that receives the monitor's whole console output and stderr. */
  consoleFile: string;
}

/** One command for one guest. */
export interface DriverStep {
  /** Unique, positive; echoed back by the guest in `test=end id=ID`. */
  id: number;
  monitor: string;
  /** The words after the id, e.g. "blk /dev/vda rand 4096 1 200 1000", "send 172.16.0.1 7777 2000" or "recv 172.16.0.1 7778 2000". */
  command: string;
  /** The step sends or receives a TCP stream: wait for the outer end's report too. */
  net: boolean;
}

/** What {@link runDriver} is given (written as JSON by the host side). */
export interface DriverConfig {
  monitors: DriverMonitor[];
  steps: DriverStep[];
  /** argv of the receiver, `virtio-bench sink PORT` (which also serves PORT + 1 as the source). */
  sinkArgv: string[];
  /** From spawning the monitors to every guest's `test=ready`. */
  bootTimeoutMs: number;
  /** Per monitor, how many times a VM that died (guest crash, step timeout) is booted again for the steps left. */
  maxRestarts: number;
  /** From writing a step's command to the guest's `test=end`. */
  stepTimeoutMs: number;
}

/** What one step produced. */
export interface DriverStepResult {
  id: number;
  /** The guest's report lines between the command and its end. */
  guestLines: string[];
  /** The outer end's report for this step's stream: the receiver's (`test=sink`) or the source's (`test=source`). */
  sinkLine?: string;
  /** Why the step gave nothing, if it did not finish. */
  error?: string;
  /** Command written to end seen, in milliseconds. */
  elapsedMs: number;
  /** The CPU time the monitor's process used during the step (from /proc). */
  cpu?: ThreadCpu;
  /** Its VM's exits during the step (KVM's debugfs statistics), when debugfs was mounted. */
  exits?: KvmExitCounts;
}

/** One boot of a monitor: when its guest reported ready, its report lines until then, or why it never did. */
export interface DriverBoot {
  readyAfterMs?: number;
  lines: string[];
  error?: string;
}

/**
 * A boot after the monitor's VM died, before the step with id `beforeStep`; and that step's
 * uncounted first run on the new VM (`warmUp`), made when the boot succeeded.
 */
export interface DriverRestart extends DriverBoot {
  beforeStep: number;
  warmUp?: { elapsedMs: number; error?: string };
}

/** Everything the driver saw, written as JSON for the host side. */
export interface DriverResult {
  /** Per monitor, its first boot. */
  boots: Record<string, DriverBoot>;
  /** Per monitor, the boots after its VM died, each before the step with id `beforeStep`. */
  restarts: Record<string, DriverRestart[]>;
  steps: DriverStepResult[];
  /** Per monitor: how the process ended. */
  exits: Record<string, { code: number | null; signal: string | null; killed: boolean }>;
}

/** The lines of a stream, waited for one at a time. */
class LineStream {
  private readonly lines: string[] = [];
  private partial = "";
  private ended = false;
  private wake: (() => void) | undefined;

  constructor(stream: Readable, onText?: (text: string) => void) {
    stream.setEncoding("utf8");
    stream.on("data", (text: string) => {
      onText?.(text);
      const parts = (this.partial + text).split("\n");
      this.partial = parts.pop()!;
      for (const line of parts) this.lines.push(line.replace(/\r$/, ""));
      this.wake?.();
    });
    stream.on("close", () => {
      this.ended = true;
      this.wake?.();
    });
  }

  /** The lines not taken yet, the unterminated last one included (nothing is consumed). */
  pending(): string[] {
    return this.partial ? [...this.lines, this.partial] : [...this.lines];
  }

  /** The stream ended (for a console: the monitor exited). */
  get closed(): boolean {
    return this.ended;
  }

  /**
   * Waits up to `timeoutMs` for a line matching `match`; returns it and the
   * lines before it (all consumed), or no line when the time ran out or the
   * stream closed (then nothing is consumed).
   */
  async take(match: (line: string) => boolean, timeoutMs: number): Promise<{ line?: string; before: string[] }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.lines.findIndex(match);
      if (at >= 0) {
        const taken = this.lines.splice(0, at + 1);
        return { line: taken.pop(), before: taken };
      }
      const left = deadline - Date.now();
      if (this.ended || left <= 0) return { before: [] };
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }
}

/** A report line's `test` field. */
const isTest = (test: string, id?: number) => (line: string) => {
  const r = parseVirtioBenchLine(line);
  return r?.test === test && (id === undefined || r.id === String(id));
};

/**
 * One thread's CPU time in clock ticks: utime + stime, and the part of it spent running a
 * guest (guest_time); and, where /proc shows them, its read and write system calls (`io`:
 * syscr, syscw) and the times it went to sleep (`status`: voluntary_ctxt_switches).
 */
export interface ThreadTicks {
  cpu: number;
  guest: number;
  calls?: SyscallCounts;
}

/** A thread's read-like and write-like system calls and its sleeps (voluntary context switches). */
export interface SyscallCounts {
  reads: number;
  writes: number;
  sleeps: number;
}

/** The number after `key:` in a /proc text, or undefined. */
function procField(text: string, key: string): number | undefined {
  const m = new RegExp(`^${key}:\\s+(\\d+)$`, "m").exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Each thread of process `pid`, by thread id (empty when /proc cannot be read). */
export function threadTicks(pid: number | undefined): Map<string, ThreadTicks> {
  const out = new Map<string, ThreadTicks>();
  if (pid === undefined) return out;
  let tids: string[];
  try { tids = readdirSync(`/proc/${pid}/task`); } catch { return out; }
  for (const tid of tids) {
    let ticks: ThreadTicks;
    try {
      // proc(5): after the command name's closing parenthesis come state (field 3) on; utime is
      // field 14, stime 15, guest_time 43 (guest time is counted in utime too).
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "latin1");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks = { cpu: Number(f[11]) + Number(f[12]), guest: Number(f[40]) };
    } catch { continue; /* the thread ended */ }
    try {
      const io = readFileSync(`/proc/${pid}/task/${tid}/io`, "latin1"), status = readFileSync(`/proc/${pid}/task/${tid}/status`, "latin1");
      const reads = procField(io, "syscr"), writes = procField(io, "syscw"), sleeps = procField(status, "voluntary_ctxt_switches");
      if (reads !== undefined && writes !== undefined && sleeps !== undefined) ticks.calls = { reads, writes, sleeps };
    } catch { /* no io file (another user's process) or the thread ended: CPU time only */ }
    out.set(tid, ticks);
  }
  return out;
}

/**
 * A monitor's CPU time between two threadTicks samples, in milliseconds (USER_HZ is 100 on
 * Linux): running its guest, its vCPU threads' own work (threads that ran the guest, less
 * the guest's time: exits handled in the monitor), and every other thread's, busiest first;
 * and the busiest other thread's system calls and sleeps (flint's device thread, QEMU's
 * main loop), when /proc showed them.
 */
export interface ThreadCpu {
  guestMs: number;
  vcpuMs: number;
  otherMs: number[];
  busiestCalls?: SyscallCounts;
}

/** The CPU each kind of thread used between two threadTicks samples of one process. */
export function threadCpuDelta(before: Map<string, ThreadTicks>, after: Map<string, ThreadTicks>): ThreadCpu {
  const out: ThreadCpu = { guestMs: 0, vcpuMs: 0, otherMs: [] };
  let busiest: { cpu: number; calls?: SyscallCounts } | undefined;
  for (const [tid, t] of after) {
    const b = before.get(tid) ?? { cpu: 0, guest: 0, calls: { reads: 0, writes: 0, sleeps: 0 } };
    const cpu = (t.cpu - b.cpu) * 10, guest = (t.guest - b.guest) * 10;
    if (t.guest > 0) {
      out.guestMs += guest;
      out.vcpuMs += Math.max(0, cpu - guest);
    } else if (cpu > 0) {
      out.otherMs.push(cpu);
      if (busiest === undefined || cpu > busiest.cpu) {
        const calls = t.calls && b.calls
          ? { reads: t.calls.reads - b.calls.reads, writes: t.calls.writes - b.calls.writes, sleeps: t.calls.sleeps - b.calls.sleeps }
          : undefined;
        busiest = { cpu, calls };
      }
    }
  }
  out.otherMs.sort((a, b) => b - a);
  if (busiest?.calls) out.busiestCalls = busiest.calls;
  return out;
}

/**
 * KVM's exit counters for one VM (its debugfs statistics, the vCPU counters of
 * arch/x86/kvm/x86.c summed over the VM's vCPUs): every exit from the guest,
 * the MMIO and port I/O exits that went to the monitor (KVM_EXIT_MMIO, KVM_EXIT_IO), the
 * halts, and the interrupts injected.
 */
export interface KvmExitCounts {
  exits: number;
  mmioExits: number;
  ioExits: number;
  haltExits: number;
  irqInjections: number;
}

const KVM_EXIT_FILES: readonly [keyof KvmExitCounts, string][] = [
  ["exits", "exits"], ["mmioExits", "mmio_exits"], ["ioExits", "io_exits"], ["haltExits", "halt_exits"], ["irqInjections", "irq_injections"],
];

/**
 * The exit counters of the KVM VMs of process `pid`, summed (debugfs names each VM's directory
 * `<pid>-<fd>`); undefined when debugfs is not mounted or the process has no VM.
 */
export function kvmExitCounts(pid: number | undefined, root = "/sys/kernel/debug/kvm"): KvmExitCounts | undefined {
  if (pid === undefined) return undefined;
  let dirs: string[];
  try { dirs = readdirSync(root).filter((d) => d.startsWith(`${pid}-`)); } catch { return undefined; }
  if (dirs.length === 0) return undefined;
  const out: KvmExitCounts = { exits: 0, mmioExits: 0, ioExits: 0, haltExits: 0, irqInjections: 0 };
  for (const d of dirs) {
    for (const [key, file] of KVM_EXIT_FILES) {
      try { out[key] += Number(readFileSync(`${root}/${d}/${file}`, "latin1").trim()) || 0; } catch { /* a VM that just went away */ }
    }
  }
  return out;
}

/** `after - before`, field by field; undefined unless both were read. */
export function kvmExitDelta(before: KvmExitCounts | undefined, after: KvmExitCounts | undefined): KvmExitCounts | undefined {
  if (!before || !after) return undefined;
  const out = { ...after };
  for (const [key] of KVM_EXIT_FILES) out[key] -= before[key];
  return out;
}

/** A running VM. */
interface Vm {
  monitor: DriverMonitor;
  child: ChildProcess;
  lines: LineStream;
  alive: boolean;
  killed: boolean;
  exited: Promise<{ code: number | null; signal: string | null }>;
  /** The console file is complete (the monitor's stdout closed and everything is written). */
  logged: Promise<void>;
}

function startVm(monitor: DriverMonitor): Vm {
  // Appending: a restarted monitor adds to its console file.
  const log = createWriteStream(monitor.consoleFile, { flags: "a" });
  const child = spawn(monitor.argv[0]!, monitor.argv.slice(1), { stdio: ["pipe", "pipe", "pipe"] });
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    // "exit", not "close": a killed monitor's stray children may hold its pipes open.
    child.on("exit", (code, signal) => resolve({ code, signal }));
    child.on("error", () => resolve({ code: null, signal: null }));
  });
  child.stdin!.on("error", () => undefined); // a guest that went away: its step times out instead
  const write = (data: string | Buffer) => {
    if (!log.writableEnded) log.write(data);
  };
  child.stderr!.on("data", write);
  child.stdout!.on("close", () => log.end());
  const logged = new Promise<void>((resolve) => log.on("close", resolve));
  const vm: Vm = { monitor, child, lines: new LineStream(child.stdout!, write), alive: true, killed: false, exited, logged };
  void exited.then(() => {
    vm.alive = false;
  });
  return vm;
}

/**
 * For the report of a VM that ended by itself: its exit status and the last
 * console lines that were not benchmark reports (a monitor's error, a panic).
 */
async function howItEnded(vm: Vm): Promise<string> {
  const lines = vm.lines.pending();
  const status = await Promise.race([vm.exited, new Promise<undefined>((resolve) => setTimeout(resolve, 5_000))]);
  const how = status === undefined ? "still exiting" : status.signal ? `signal ${status.signal}` : `exit ${status.code}`;
  const last = lines.filter((l) => l.trim() !== "" && parseVirtioBenchLine(l) === undefined).slice(-3);
  return ` (${how})${last.length > 0 ? `: ${last.join(" | ")}` : ""}`;
}

function kill(vm: Vm): void {
  if (!vm.alive) return;
  vm.killed = true;
  vm.alive = false;
  vm.child.kill("SIGKILL");
}

/**
 * Boots the monitors, runs the steps, stops everything, and reports.
 * `onProgress` gets the result so far after the boots and after every step,
 * so that a caller can keep what was measured if the whole machine stops.
 */
export async function runDriver(config: DriverConfig, onProgress?: (partial: DriverResult) => void): Promise<DriverResult> {
  const result: DriverResult = { boots: {}, restarts: {}, steps: [], exits: {} };
  const sink = spawn(config.sinkArgv[0]!, config.sinkArgv.slice(1), { stdio: ["ignore", "pipe", "inherit"] });
  const sinkLines = new LineStream(sink.stdout!);
  const vms = new Map<string, Vm>();
  /** Starts `monitor`'s VM and waits for its guest's ready report (a VM that never gets ready is killed). */
  const boot = async (monitor: DriverMonitor): Promise<DriverBoot> => {
    const started = Date.now();
    const vm = startVm(monitor);
    vms.set(monitor.name, vm);
    const ready = await vm.lines.take(isTest("ready"), config.bootTimeoutMs);
    const lines = ready.before.filter((l) => parseVirtioBenchLine(l) !== undefined);
    if (ready.line) return { readyAfterMs: Date.now() - started, lines };
    if (vm.lines.closed) return { lines, error: `exited before its ready report${await howItEnded(vm)}` };
    kill(vm);
    return { lines, error: "no ready report before the boot timeout" };
  };
  /** Runs `step` on `vm`: its command, the guest's lines to its end, the outer end's report, the monitor's CPU and exits. */
  const runStep = async (vm: Vm, step: DriverStep): Promise<DriverStepResult> => {
    const t0 = Date.now();
    const ticks0 = threadTicks(vm.child.pid), exits0 = kvmExitCounts(vm.child.pid);
    vm.child.stdin!.write(`${step.id} ${step.command}\n`);
    const end = await vm.lines.take(isTest("end", step.id), config.stepTimeoutMs);
    const guestLines = end.before.filter((l) => parseVirtioBenchLine(l) !== undefined);
    const r: DriverStepResult = { id: step.id, guestLines, elapsedMs: Date.now() - t0, cpu: threadCpuDelta(ticks0, threadTicks(vm.child.pid)) };
    const exits = kvmExitDelta(exits0, kvmExitCounts(vm.child.pid));
    if (exits) r.exits = exits;
    if (!end.line && vm.lines.closed) {
      r.error = `the VM exited during the step${await howItEnded(vm)}`;
    } else if (!end.line) {
      r.error = `no end of step within ${config.stepTimeoutMs} ms (the VM was killed)`;
      kill(vm);
    }
    // Each sender waits for its receiver's close, so the outer end's report is out or on its way.
    if (step.net && guestLines.some(isTest("send"))) {
      r.sinkLine = (await sinkLines.take(isTest("sink"), 30_000)).line;
    } else if (step.net && guestLines.some(isTest("recv"))) {
      r.sinkLine = (await sinkLines.take(isTest("source"), 30_000)).line;
    }
    return r;
  };
  try {
    if (!(await sinkLines.take(isTest("listening"), 60_000)).line) throw new Error("the TCP receiver did not start");
    await Promise.all(config.monitors.map(async (m) => {
      result.boots[m.name] = await boot(m);
    }));
    onProgress?.(result);

    // Without every guest there is nothing to compare: run no steps.
    const missing = config.monitors.filter((m) => result.boots[m.name]?.error).map((m) => m.name);
    for (const step of config.steps) {
      let vm = vms.get(step.monitor);
      const restarts = (result.restarts[step.monitor] ??= []);
      if (missing.length === 0 && vm && !vm.alive && restarts.length < config.maxRestarts) {
        // The old process must be gone before a new one can take its TAP.
        await vm.exited;
        const restart: DriverRestart = { beforeStep: step.id, ...(await boot(vm.monitor)) };
        restarts.push(restart);
        vm = vms.get(step.monitor);
        // A fresh monitor is not in its steady state (flint's JIT compiles its hot paths, on its
        // threads and the outer VM's CPUs): the step runs once uncounted, as the warm-up round did.
        if (vm?.alive && restart.error === undefined) {
          const warm = await runStep(vm, step);
          restart.warmUp = warm.error === undefined ? { elapsedMs: warm.elapsedMs } : { elapsedMs: warm.elapsedMs, error: warm.error };
        }
      }
      if (missing.length > 0 || !vm?.alive) {
        const why = missing.length > 0 ? `not run: ${missing.join(", ")} did not boot` : `${step.monitor} is not running`;
        result.steps.push({ id: step.id, guestLines: [], error: why, elapsedMs: 0 });
        continue;
      }
      result.steps.push(await runStep(vm, step));
      onProgress?.(result);
    }

    for (const vm of vms.values()) if (vm.alive) vm.child.stdin!.write("0 quit\n");
    await Promise.all([...vms.values()].map(async (vm) => {
      const timer = setTimeout(() => kill(vm), 120_000);
      const { code, signal } = await vm.exited;
      clearTimeout(timer);
      result.exits[vm.monitor.name] = { code, signal, killed: vm.killed };
      // A killed monitor's stray children may keep its stdout open: do not wait for them long.
      await Promise.race([vm.logged, new Promise((resolve) => setTimeout(resolve, 5_000))]);
    }));
    return result;
  } finally {
    for (const vm of vms.values()) kill(vm);
    sink.kill("SIGKILL");
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [configPath, resultPath] = process.argv.slice(2);
  if (!configPath || !resultPath) {
    process.stderr.write("usage: virtio-nested-driver CONFIG.json RESULT.json\n");
    process.exit(2);
  }
  const save = (result: DriverResult) => writeFileSync(resultPath, JSON.stringify(result, null, 1));
  save(await runDriver(JSON.parse(readFileSync(configPath, "utf8")) as DriverConfig, save));
}
