/**
 * A minimal client of QEMU's machine protocol (QMP, docs/interop/qmp-spec:
 * one JSON object a line each way; a greeting, then `qmp_capabilities`
 * before any other command; asynchronous events interleaved with replies),
 * for the benchmarks that drive QEMU: one command at a time, events kept
 * aside. The line parsing is apart (QmpLines) so that a test can feed it.
 */
import { createConnection, type Socket } from "node:net";
import { BenchError } from "./bench-error.js";

/** One message from QEMU, sorted by kind. */
export type QmpMessage =
  | { kind: "greeting" }
  | { kind: "return"; value: unknown }
  | { kind: "error"; class: string; desc: string }
  | { kind: "event"; event: string; data: unknown };

/** Splits QMP's stream into messages; `push` takes any chunking and returns the messages completed. */
export class QmpLines {
  private text = "";

  push(chunk: string): QmpMessage[] {
    this.text += chunk;
    const out: QmpMessage[] = [];
    let newline: number;
    while ((newline = this.text.indexOf("\n")) >= 0) {
      const line = this.text.slice(0, newline).trim();
      this.text = this.text.slice(newline + 1);
      if (line !== "") out.push(parseQmpLine(line));
    }
    return out;
  }
}

/** One QMP line as a message; throws EBENCHRUN on anything that is not one. */
export function parseQmpLine(line: string): QmpMessage {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(line) as Record<string, unknown>;
  } catch {
    throw new BenchError("EBENCHRUN", `QMP sent a line that is not JSON: '${line.slice(0, 200)}'`);
  }
  if (v !== null && typeof v === "object") {
    if ("QMP" in v) return { kind: "greeting" };
    if ("return" in v) return { kind: "return", value: v.return };
    if ("event" in v && typeof v.event === "string") return { kind: "event", event: v.event, data: v.data };
    const e = v.error as { class?: unknown; desc?: unknown } | undefined;
    if (e && typeof e === "object") return { kind: "error", class: String(e.class), desc: String(e.desc) };
  }
  throw new BenchError("EBENCHRUN", `QMP sent an unexpected message: '${line.slice(0, 200)}'`);
}

/** A QMP connection past its capabilities negotiation. */
export class QmpClient {
  private readonly lines = new QmpLines();
  private waiting: { resolve: (m: QmpMessage) => void; reject: (e: Error) => void } | undefined;
  private readonly queue: QmpMessage[] = [];
  private failure: Error | undefined;
  /** Events received so far, in order. */
  readonly events: { event: string; data: unknown }[] = [];

  private constructor(private readonly socket: Socket) {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      try {
        for (const m of this.lines.push(chunk)) this.deliver(m);
      } catch (e) {
        this.fail(e as Error);
      }
    });
    socket.on("error", (e) => this.fail(e));
    socket.on("close", () => this.fail(new BenchError("EBENCHRUN", "QEMU closed its QMP socket")));
  }

  /** Connects to the Unix socket at `path` (retrying while QEMU has not made it yet, up to `timeoutMs`) and negotiates. */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path);
          s.once("connect", () => resolve(s));
          s.once("error", reject);
        });
        const client = new QmpClient(socket);
        const greeting = await client.next();
        if (greeting.kind !== "greeting") throw new BenchError("EBENCHRUN", "QEMU's QMP sent no greeting");
        await client.execute("qmp_capabilities");
        return client;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if ((code !== "ENOENT" && code !== "ECONNREFUSED") || Date.now() > end) throw e;
        await new Promise((r) => setTimeout(r, 2));
      }
    }
  }

  /** Runs one command; resolves with its return value, rejects with EBENCHRUN on a QMP error. */
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    const m = await this.next();
    if (m.kind === "error") throw new BenchError("EBENCHRUN", `QMP ${command} failed: ${m.class}: ${m.desc}`);
    if (m.kind !== "return") throw new BenchError("EBENCHRUN", `QMP ${command}: unexpected ${m.kind}`);
    return m.value;
  }

  close(): void {
    this.socket.destroy();
  }

  /** The next message that is not an event. */
  private next(): Promise<QmpMessage> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  private deliver(m: QmpMessage): void {
    if (m.kind === "event") {
      this.events.push({ event: m.event, data: m.data });
      return;
    }
    const w = this.waiting;
    this.waiting = undefined;
    if (w) w.resolve(m);
    else this.queue.push(m);
  }

  private fail(e: Error): void {
    this.failure ??= e;
    const w = this.waiting;
    this.waiting = undefined;
    w?.reject(this.failure);
  }
}
