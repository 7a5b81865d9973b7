/**
 * Runs a benchmark program as a child process with a time limit and
 * measures its wall-clock lifetime, from just before spawn to its exit.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { BenchError } from "./bench-error.js";

/** How a timed program ended. */
export interface TimedRun {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall-clock seconds from spawn to exit. */
  seconds: number;
}

/** Options for {@link runTimed}. */
export interface RunTimedOptions {
  /** Kill the program (SIGKILL) and reject with EBENCHTIMEOUT after this long. */
  timeoutMs: number;
  /** Called once the process exists, e.g. to watch /proc/<pid>. */
  onSpawn?: (child: ChildProcess) => void;
  /** Sees each chunk of stdout as it arrives, with its arrival time (process.hrtime.bigint()). */
  onStdout?: (chunk: Buffer, atNs: bigint) => void;
  /** How to install the program, for the error when it is missing. */
  installHint?: string;
}

/** Runs `file args`, resolving with its exit status and output whatever they are. */
export function runTimed(file: string, args: readonly string[], options: RunTimedOptions): Promise<TimedRun> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"] });
    let end = 0n;
    let timedOut = false;
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout!.on("data", (c: Buffer) => {
      stdout.push(c);
      options.onStdout?.(c, process.hrtime.bigint());
    });
    child.stderr!.on("data", (c: Buffer) => stderr.push(c));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, options.timeoutMs);
    child.on("spawn", () => options.onSpawn?.(child));
    child.on("exit", () => {
      end = process.hrtime.bigint();
    });
    child.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why = error.code === "ENOENT" ? `it is not installed or not on PATH${options.installHint ? ` (${options.installHint})` : ""}` : error.message;
      reject(new BenchError("EBENCHRUN", `Cannot run ${file}: ${why}`, { cause: error }));
    });
    child.on("close", (exitCode, signal) => {
      clearTimeout(timer);
      const out = Buffer.concat(stdout).toString("utf8");
      const err = Buffer.concat(stderr).toString("utf8");
      if (timedOut) {
        reject(new BenchError("EBENCHTIMEOUT", `${file} ${args.join(" ")} ran longer than ${options.timeoutMs} ms:\n${tail(out)}\n${tail(err)}`));
        return;
      }
      resolve({ exitCode, signal, stdout: out, stderr: err, seconds: Number(end - start) / 1e9 });
    });
  });
}

/** The last lines of a program's output, for error messages. */
export function tail(text: string, lines = 15): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/** The median of a non-empty list. */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError("median of an empty list");
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
