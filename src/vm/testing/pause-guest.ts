/**
 * A ring-3 guest for the pause tests (machine-pause.test.ts) and the
 * pause-latency benchmark (src/bench/pause-latency.ts): every vCPU increments
 * its own 64-bit counter in guest memory as fast as it can, so a paused vCPU
 * shows as a counter that stops, and a running one as a thread that burns a
 * core. Plus per-thread CPU time from /proc/self/task, to tell the vCPU
 * threads apart (the busy ones) and to see that they are idle while paused.
 */
import { readdirSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { RING3_LAYOUT } from "../../arch/x86_64/ring3.js";
import { assemble } from "../../kvm/testing/assemble.js";
import { Machine, type MachineConfig } from "../machine.js";

/** Bytes between two vCPUs' counters (one cache line each). */
const COUNTER_STRIDE = 64;

/** Where vCPU `id` keeps its counter. */
export function counterAddress(id: number): number {
  return RING3_LAYOUT.data + id * COUNTER_STRIDE;
}

/** The program: RDI is the vCPU's id (ring-3 boot), its counter at counterAddress(id). */
export function counterProgram(): Uint8Array {
  return assemble(`
       mov rbx, rdi
       shl rbx, 6
       add rbx, ${RING3_LAYOUT.data}
    1: inc qword ptr [rbx]
       jmp 1b`, RING3_LAYOUT.code);
}

/** A VM running counterProgram on `cpus` vCPUs (run() started; resolves once every counter moved). */
export async function startCounterVm(cpus: number, extra: Partial<MachineConfig> = {}): Promise<{ machine: Machine; running: ReturnType<Machine["run"]> }> {
  const machine = Machine.create({ cpus, memoryMib: 64, boot: { kind: "ring3", program: counterProgram() }, ...extra });
  const running = machine.run();
  running.catch(() => undefined); // the caller awaits it; a failure must not be unhandled meanwhile
  await until("every vCPU to count", () => counters(machine).every((c) => c > 0n));
  return { machine, running };
}

/** Every vCPU's counter now. */
export function counters(machine: Machine): bigint[] {
  return machine.vcpus.map((v) => machine.memory.readU64(counterAddress(v.id)));
}

/** Polls `fn` every 2 ms until it is true; throws after `limitMs` (a hang, not a timing check). */
export async function until(what: string, fn: () => boolean, limitMs = 20_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`pause guest: timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** One thread of this process: its state letter (R, S, ...) and CPU time in clock ticks. */
export interface TaskSample {
  tid: number;
  state: string;
  ticks: number;
}

/** Every thread of this process, from /proc/self/task/<tid>/stat (proc(5): state is field 3, utime 14, stime 15). */
export function sampleTasks(): Map<number, TaskSample> {
  const out = new Map<number, TaskSample>();
  for (const name of readdirSync("/proc/self/task")) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/self/task/${name}/stat`, "utf8");
    } catch {
      continue; // the thread ended meanwhile
    }
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    out.set(Number(name), { tid: Number(name), state: f[0]!, ticks: Number(f[11]) + Number(f[12]) });
  }
  return out;
}

/** The `n` threads that used the most CPU between two samples (the spinning vCPUs of a counter VM). */
export function busiestTasks(before: Map<number, TaskSample>, after: Map<number, TaskSample>, n: number): { tid: number; ticks: number }[] {
  return [...after.values()]
    .map((t) => ({ tid: t.tid, ticks: t.ticks - (before.get(t.tid)?.ticks ?? 0) }))
    .sort((a, b) => b.ticks - a.ticks)
    .slice(0, n);
}

/**
 * vCPU 0 writes pages of bytes to the serial port for ever (rep outsb: one
 * KVM_EXIT_IO per page) and counts the pages in its counter; every other
 * vCPU counts as in counterProgram. With a slow console, vCPU 0 keeps the
 * serial ring full.
 */
export function consoleWriterProgram(): Uint8Array {
  return assemble(`
       test rdi, rdi
       jnz 2f
       mov dx, 0x3f8
    1: mov rsi, ${RING3_LAYOUT.code}
       mov ecx, 4096
       rep outsb
       inc qword ptr [${RING3_LAYOUT.data}]
       jmp 1b
    2: mov rbx, rdi
       shl rbx, 6
       add rbx, ${RING3_LAYOUT.data}
    3: inc qword ptr [rbx]
       jmp 3b`, RING3_LAYOUT.code);
}
