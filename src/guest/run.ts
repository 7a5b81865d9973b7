/**
 * Runs a host tool (make, tar, apt-get, dpkg-deb...) as a child process
 * without a shell, collecting its output, and optionally passing each output
 * line to a callback for progress reporting. Nothing is printed.
 */
import { spawn } from "node:child_process";

/** Why a host tool could not be run, or failed. */
export class RunError extends Error {
  readonly code: "ENOTOOL" | "ECOMMAND";
  /** The command's exit code (ECOMMAND), or null when it was killed. */
  readonly exitCode: number | null;
  /** Everything the command wrote to stdout and stderr, interleaved. */
  readonly output: string;
  constructor(code: RunError["code"], message: string, exitCode: number | null, output: string) {
    super(message);
    this.name = "RunError";
    this.code = code;
    this.exitCode = exitCode;
    this.output = output;
  }
}

/** Options for {@link runCommand}. */
export interface RunOptions {
  /** Working directory. */
  cwd?: string;
  /** Extra environment variables (added to the current environment). */
  env?: Record<string, string>;
  /** Called with each complete line of stdout or stderr. */
  onLine?: (line: string) => void;
  /** Data written to the command's stdin (then closed). */
  input?: string | Uint8Array;
  /** Keep only the last this-many characters of combined output (default 64 KiB). */
  maxOutputChars?: number;
}

/** What a successful command produced. */
export interface RunResult {
  stdout: string;
  stderr: string;
}

/**
 * Runs `file` with `args`; resolves when it exits with status 0. Rejects with
 * a RunError: ENOTOOL if the program does not exist, ECOMMAND on a non-zero
 * exit (the message ends with the last lines of its output).
 */
export function runCommand(file: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const maxOutputChars = options.maxOutputChars ?? 64 * 1024;
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: options.cwd,
      env: { ...process.env, ...options.env },
      stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    });
    const stdout: string[] = [];
    const stderr: string[] = [];
    let combined = "";
    const partial = { out: "", err: "" };
    const take = (stream: "out" | "err", chunk: string): void => {
      (stream === "out" ? stdout : stderr).push(chunk);
      combined += chunk;
      if (combined.length > maxOutputChars * 2) combined = combined.slice(-maxOutputChars);
      if (!options.onLine) return;
      const lines = (partial[stream] + chunk).split("\n");
      partial[stream] = lines.pop() ?? "";
      for (const line of lines) options.onLine(line);
    };
    child.stdout!.setEncoding("utf8").on("data", (c: string) => take("out", c));
    child.stderr!.setEncoding("utf8").on("data", (c: string) => take("err", c));
    if (options.input !== undefined && child.stdin) child.stdin.end(options.input);
    child.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") {
        reject(new RunError("ENOTOOL", `Cannot run ${file}: it is not installed or not on PATH`, null, ""));
      } else {
        reject(new RunError("ECOMMAND", `Cannot run ${file}: ${error.message}`, null, combined));
      }
    });
    child.on("close", (exitCode, signal) => {
      if (options.onLine) {
        if (partial.out) options.onLine(partial.out);
        if (partial.err) options.onLine(partial.err);
      }
      if (exitCode === 0) {
        resolve({ stdout: stdout.join(""), stderr: stderr.join("") });
        return;
      }
      const tail = combined.slice(-maxOutputChars).trimEnd().split("\n").slice(-20).join("\n");
      const how = signal ? `was killed by ${signal}` : `exited with status ${exitCode}`;
      reject(new RunError("ECOMMAND", `${file} ${args.join(" ")} ${how}:\n${tail}`, exitCode, combined));
    });
  });
}
