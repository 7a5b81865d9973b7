/**
 * The VM's log file (Firecracker's `--log-path` and PUT /logger): one JSON
 * object per line, written by pino (a well-kept structured logger; loaded
 * only when a log file is configured). Every line has the time, the instance
 * id and the message; `level` only with show_level, `origin` (the module
 * that logged) only with show_log_origin, as Firecracker's options add the
 * level and the file:line to its lines. `module` keeps only records from
 * origins that start with it. Firecracker's levels, any letter case,
 * "Warning" or "Warn"; "Off" writes nothing.
 *
 * The path must exist (a file or a FIFO, as Firecracker opens it without
 * creating it). Writes never block the VM: a FIFO nobody reads drops lines
 * (counted) instead.
 */
import { closeSync, constants, fstatSync, openSync, writeSync } from "node:fs";

/** Firecracker's log levels, least to most verbose. */
export const LOG_LEVEL_ORDER = ["off", "error", "warn", "info", "debug", "trace"] as const;
export type LogLevel = Exclude<(typeof LOG_LEVEL_ORDER)[number], "off">;

/** A log file could not be set up. */
export class LoggerError extends Error {
  readonly code: "ELOGPATH" | "ELOGLEVEL";
  constructor(code: LoggerError["code"], message: string) {
    super(message);
    this.name = "LoggerError";
    this.code = code;
  }
}

/** The logger's configuration (swagger Logger, or the process flags). */
export interface LogFileOptions {
  path: string;
  /** Firecracker's level name (default "Info"). */
  level?: string | null;
  showLevel?: boolean | null;
  showLogOrigin?: boolean | null;
  module?: string | null;
  /** Instance id, on every line. */
  id: string;
}

/** Firecracker's level name to pino's (warning → warn, off → silent). */
export function parseLevel(level: string | null | undefined): LogLevel | "off" {
  const l = (level ?? "Info").toLowerCase();
  const name = l === "warning" ? "warn" : l;
  if (!(LOG_LEVEL_ORDER as readonly string[]).includes(name)) {
    throw new LoggerError("ELOGLEVEL", `Invalid log level '${level}': use Error, Warning, Info, Debug, Trace or Off`);
  }
  return name as LogLevel | "off";
}

type PinoLogger = { [K in LogLevel]: (obj: object, msg: string) => void } & { flush(): void };

/** An open log file. */
export class LogFile {
  /** Lines a full FIFO could not take. */
  dropped = 0;

  private constructor(
    private readonly fd: number,
    private readonly pino: PinoLogger,
    private readonly options: LogFileOptions,
    readonly level: LogLevel | "off",
  ) {}

  /** Opens `options.path` (it must exist) and the logger over it. */
  static async open(options: LogFileOptions): Promise<LogFile> {
    const level = parseLevel(options.level);
    let fd: number;
    try {
      // Read-write so that opening a FIFO never waits for a reader; O_NONBLOCK so a full one never blocks the VM.
      fd = openSync(options.path, constants.O_RDWR | constants.O_APPEND | constants.O_NONBLOCK);
    } catch (e) {
      throw new LoggerError("ELOGPATH", `Cannot open the log file '${options.path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (fstatSync(fd).isDirectory()) {
      closeSync(fd);
      throw new LoggerError("ELOGPATH", `Cannot open the log file '${options.path}': it is a directory`);
    }
    const { pino } = await import("pino");
    let file: LogFile | undefined;
    // A destination of our own: pino formats, this writes each line whole or counts it dropped.
    const stream = {
      write: (line: string) => {
        try {
          writeSync(fd, line);
        } catch {
          if (file) file.dropped++;
        }
      },
    };
    const logger = pino({
      level: level === "off" ? "silent" : level,
      base: { id: options.id },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label: string) => (options.showLevel ? { level: label } : {}) },
    }, stream) as unknown as PinoLogger;
    file = new LogFile(fd, logger, options, level);
    return file;
  }

  /** Logs `message` from `origin` (a module name such as "api_server" or "vmm") at `level`. */
  log(level: LogLevel, origin: string, message: string): void {
    if (this.options.module && !origin.startsWith(this.options.module)) return;
    this.pino[level](this.options.showLogOrigin ? { origin } : {}, message);
  }

  close(): void {
    try {
      closeSync(this.fd);
    } catch {
      // already closed
    }
  }
}
