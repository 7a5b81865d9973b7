/**
 * One monitor process, watched from outside the way a user sees it: the
 * time from spawn to the guest's first serial byte on its stdout (the
 * exit-loop guest's `hello`), and either the time to the process's exit
 * after the guest's end marker ("timing"), or its memory while the guest
 * sleeps ("memory": peak RSS, peak anonymous memory sampled from spawn on,
 * and the resident guest RAM, read a settle time after the first byte;
 * then the process is killed).
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { BenchError } from "./bench-error.js";
import { EXIT_LOOP_HELLO_BYTE } from "../guest/programs/exit-loop.js";
import { tail } from "./process.js";
import { type GuestRamResidency, PeakSampler, anonKib, guestRamResidency } from "./proc-memory.js";

/** A program to start. */
export interface ProbeCommand {
  file: string;
  args: readonly string[];
  /** For error messages: "flint", "QEMU", "the C ceiling". */
  name: string;
}

/** Spawn to first byte, spawn to exit. */
export interface TimingProbe {
  firstOutputMs: number;
  exitMs: number;
}

/** A monitor's memory with its guest up and asleep. */
export interface MemoryProbe {
  firstOutputMs: number;
  /** VmHWM: the peak RSS, file-backed pages included. */
  peakRssKib: number;
  /** Peak of RssAnon + RssShmem, sampled every few ms from spawn. */
  peakAnonKib: number;
  guestRam: GuestRamResidency;
  threads: number;
}

/** Options for {@link probeTiming} and {@link probeMemory}. */
export interface ProbeOptions {
  timeoutMs?: number;
}

const msSince = (startNs: bigint): number => Number(process.hrtime.bigint() - startNs) / 1e6;

/**
 * Runs `cmd` to its exit, which must come with `expectedStatus` after the
 * guest's first byte.
 */
export function probeTiming(cmd: ProbeCommand, expectedStatus: number, options: ProbeOptions = {}): Promise<TimingProbe> {
  return watch(cmd, options, (child, firstOutput) =>
    new Promise((resolve, reject) => {
      child.on("exit", (code, signal) => {
        const exitMs = msSince(child.startNs);
        child.done.then(() => {
          if (code !== expectedStatus) return reject(child.failure(`exited with ${signal ?? `status ${code}`}, not ${expectedStatus}`));
          firstOutput.then((firstOutputMs) => resolve({ firstOutputMs, exitMs }), reject);
        }, reject);
      });
    }));
}

/**
 * Starts `cmd` (whose guest must stay up: no exit on its end marker),
 * samples its anonymous memory from spawn on, and `settleMs` after the
 * guest's first byte reads its peak RSS and guest RAM, then kills it.
 */
export function probeMemory(cmd: ProbeCommand, guestMib: number, settleMs: number, options: ProbeOptions = {}): Promise<MemoryProbe> {
  return watch(cmd, options, (child, firstOutput) => {
    const sampler = new PeakSampler(child.pid);
    const measured = firstOutput.then(async (firstOutputMs) => {
      await new Promise((r) => setTimeout(r, settleMs));
      const status = sampler.sample();
      let smaps: string;
      try {
        smaps = readFileSync(`/proc/${child.pid}/smaps`, "utf8");
      } catch {
        smaps = "";
      }
      if (!status || !child.running()) throw child.failure("exited while its memory was read");
      const peakAnonKib = Math.max(sampler.stop(), anonKib(status));
      return { firstOutputMs, peakRssKib: status.vmHwmKib, peakAnonKib, guestRam: guestRamResidency(smaps, guestMib * 1024), threads: status.threads };
    });
    const killed = measured.finally(() => {
      child.kill();
      try {
        sampler.stop(); // only to end the timer: a failed sample has failed `measured` already
      } catch {}
    });
    return killed.then(async (r) => {
      await child.done;
      return r;
    });
  });
}

/** The spawned process, as the two probes need it. */
interface Watched {
  pid: number;
  startNs: bigint;
  /** Settles when the process has exited and its pipes are closed. */
  done: Promise<void>;
  running(): boolean;
  kill(): void;
  failure(what: string): BenchError;
  on(event: "exit", listener: (code: number | null, signal: NodeJS.Signals | null) => void): void;
}

/**
 * Spawns `cmd`, resolves `firstOutput` when its first stdout byte arrives
 * (which must be the guest's hello byte), and runs `body`; kills the process
 * on a timeout or an error.
 */
function watch<T>(cmd: ProbeCommand, options: ProbeOptions, body: (child: Watched, firstOutput: Promise<number>) => Promise<T>): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const startNs = process.hrtime.bigint();
  const child = spawn(cmd.file, cmd.args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  const failure = (what: string): BenchError => new BenchError("EBENCHRUN", `${cmd.name} ${what}:\n${tail(stderr)}`);
  const done = new Promise<void>((resolve) => child.on("close", () => resolve()));
  const firstOutput = new Promise<number>((resolve, reject) => {
    child.stdout!.once("data", (chunk: Buffer) => {
      const atMs = msSince(startNs);
      if (chunk[0] === EXIT_LOOP_HELLO_BYTE) resolve(atMs);
      else reject(failure(`printed '${chunk.toString("latin1").slice(0, 80)}' before the guest's first byte`));
      child.stdout!.resume(); // drain the rest
    });
    child.on("close", () => reject(failure("exited before the guest's first byte")));
  });
  firstOutput.catch(() => {}); // a probe that never awaits it must not see an unhandled rejection
  const running = () => child.exitCode === null && child.signalCode === null;
  const kill = () => {
    if (running()) child.kill("SIGKILL");
  };
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      kill();
      reject(new BenchError("EBENCHTIMEOUT", `${cmd.name} ran longer than ${timeoutMs} ms:\n${tail(stderr)}`));
    }, timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(new BenchError("EBENCHRUN", `Cannot run ${cmd.file}: ${error.message}`, { cause: error }));
    });
    if (child.pid === undefined) return; // 'error' follows
    const watched: Watched = { pid: child.pid, startNs, done, running, kill, failure, on: (e, l) => child.on(e, l) };
    body(watched, firstOutput).then(
      (r) => {
        clearTimeout(timer);
        resolve(r);
      },
      (e: unknown) => {
        clearTimeout(timer);
        kill();
        reject(e);
      },
    );
  });
}

