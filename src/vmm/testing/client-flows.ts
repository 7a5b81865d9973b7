/**
 * A rig for replaying what Firecracker's clients do against flint's
 * `firecracker` executable: start it as they start it (a spawned process,
 * their flags, their stdio), then make their API calls with their wire habits
 * (how each serializes a body, which Host and headers it sends, whether it
 * keeps the connection alive), recording every call and its answer, so a
 * test can say exactly which calls of a client flint refuses.
 *
 * The facts each habit reproduces were read from the clients' public source
 * (client-flows.test.ts names the files); nothing here is their code.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, openSync, closeSync, symlinkSync } from "node:fs";
import { Agent, request } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The CLI bundle (package.json "bin": both `flint` and `firecracker` point at it). */
export const FLINT_BUNDLE = fileURLToPath(new URL("../../bundle/main.js", import.meta.url));

/**
 * Puts an executable named `firecracker` (a symlink to the bundle, as npm
 * installs it) in `dir` and returns its path. Its `#!/usr/bin/env node` line
 * finds node through PATH: `clientEnv()` puts this node first.
 */
export function installFirecrackerBinary(dir: string, name = "firecracker"): string {
  mkdirSync(dir, { recursive: true });
  const bin = join(dir, name);
  if (!existsSync(bin)) symlinkSync(FLINT_BUNDLE, bin);
  return bin;
}

/** The environment a client passes on, with this test's node first on PATH (for the bundle's shebang). */
export function clientEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ""}` };
}

/** A started VMM process: its output so far and how it ended. */
export interface VmmProcess {
  child: ChildProcess;
  pid: number;
  /** What it wrote to stdout (the guest's serial console) when stdout is a pipe. */
  stdout(): string;
  stderr(): string;
  /** Settles once the process has ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** True once the process has ended. */
  hasExited(): boolean;
}

/** How a client wires the VMM's stdio: piped to it, to a file, or to nothing. */
export type StdioTarget = "pipe" | "ignore" | { file: string };

/** Execs `bin args` as a client does (no shell), with stdin from nothing. */
export function startVmm(bin: string, args: string[], o: { stdout: StdioTarget; stderr: StdioTarget; cwd?: string }): VmmProcess {
  const fds: number[] = [];
  const wire = (t: StdioTarget): "pipe" | "ignore" | number => {
    if (t === "pipe" || t === "ignore") return t;
    const fd = openSync(t.file, "w");
    fds.push(fd);
    return fd;
  };
  const child = spawn(bin, args, { stdio: ["ignore", wire(o.stdout), wire(o.stderr)], env: clientEnv(), ...(o.cwd ? { cwd: o.cwd } : {}) });
  for (const fd of fds) closeSync(fd);
  let out = "", err = "", done = false;
  child.stdout?.on("data", (b: Buffer) => { out += b.toString("latin1"); });
  child.stderr?.on("data", (b: Buffer) => { err += b.toString("latin1"); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    // "close", not "exit": it comes once stdout and stderr are drained, so nothing the guest printed last is lost.
    child.on("close", (code, signal) => { done = true; resolve({ code, signal }); });
    child.on("error", () => { done = true; resolve({ code: null, signal: null }); });
  });
  return { child, pid: child.pid ?? -1, stdout: () => out, stderr: () => err, exited, hasExited: () => done };
}

/**
 * A client's HTTP habits:
 *  - "go-swagger": firecracker-go-sdk and Kata's Go runtime (go-openapi's
 *    runtime over net/http): Host `localhost`, Accept and Content-Type JSON,
 *    Go's encoding/json output with its trailing newline, keep-alive;
 *  - "hyper": Kata's runtime-rs (hyper with hyperlocal): Host is the socket
 *    path in hex, compact serde_json body, keep-alive;
 *  - "python-requests": requests with requests-unixsocket: Host is the
 *    socket path percent-encoded, json.dumps's ", " and ": " separators,
 *    `Accept: *\/*`, keep-alive.
 */
export type WireStyle = "go-swagger" | "hyper" | "python-requests";

/** One call a client made and what flint answered. */
export interface RecordedCall {
  method: string;
  path: string;
  body?: unknown;
  status: number;
  /** Firecracker's `fault_message` when the call was refused. */
  fault?: string;
  json?: unknown;
  /** From sending the request to the end of the answer. */
  ms: number;
}

function serialize(style: WireStyle, body: unknown): string {
  switch (style) {
    case "go-swagger": return `${JSON.stringify(body)}\n`;
    case "hyper": return JSON.stringify(body);
    case "python-requests": return pythonJsonDumps(body);
  }
}

/** Python's json.dumps with its default separators (", " and ": ") and ensure_ascii. */
function pythonJsonDumps(v: unknown): string {
  if (v === null || typeof v !== "object") return JSON.stringify(v).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  if (Array.isArray(v)) return `[${v.map(pythonJsonDumps).join(", ")}]`;
  return `{${Object.entries(v as Record<string, unknown>).map(([k, x]) => `${pythonJsonDumps(k)}: ${pythonJsonDumps(x)}`).join(", ")}}`;
}

function hostHeader(style: WireStyle, socketPath: string): string {
  switch (style) {
    case "go-swagger": return "localhost";
    case "hyper": return Buffer.from(socketPath).toString("hex");
    case "python-requests": return encodeURIComponent(socketPath).replace(/%20/g, "+");
  }
}

/**
 * A call with no answer within this long is recorded as unanswered: a hang
 * catcher, not a timing assertion. Generous, because in the nested harness
 * a first call that loads a module (PUT /logger loads the logging library)
 * can take seconds on a loaded machine.
 */
const CALL_LIMIT_MS = 60_000;

/** A client session on one API socket: every call recorded in order. */
export class ClientSession {
  readonly calls: RecordedCall[] = [];
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 1 });

  constructor(readonly socketPath: string, readonly style: WireStyle) {}

  /** Sends one request the client's way and records it; rejects only when the socket cannot be reached. */
  async call(method: string, path: string, body?: unknown): Promise<RecordedCall> {
    const r = await this.send(method, path, body);
    this.calls.push(r);
    return r;
  }

  /** Sends without recording (a client's readiness probes, retried until the socket answers). */
  probe(method: string, path: string): Promise<RecordedCall> {
    return this.send(method, path, undefined);
  }

  private send(method: string, path: string, body?: unknown): Promise<RecordedCall> {
    const text = body === undefined ? undefined : serialize(this.style, body);
    const headers: Record<string, string | number> = { Host: hostHeader(this.style, this.socketPath) };
    if (this.style === "python-requests") Object.assign(headers, { "User-Agent": "python-requests/2.32.3", "Accept-Encoding": "gzip, deflate", "Accept": "*/*", "Connection": "keep-alive" });
    else headers["Accept"] = "application/json";
    if (this.style === "go-swagger") headers["User-Agent"] = "Go-http-client/1.1";
    if (text !== undefined) Object.assign(headers, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
    const t0 = performance.now();
    const ms = () => Math.round((performance.now() - t0) * 10) / 10;
    return new Promise((resolve, reject) => {
      const req = request({ socketPath: this.socketPath, method, path, agent: this.agent, headers, setHost: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const t = Buffer.concat(chunks).toString("utf8");
          let json: unknown;
          try { json = t ? JSON.parse(t) : undefined; } catch { json = undefined; }
          const fault = (json as { fault_message?: unknown } | undefined)?.fault_message;
          resolve({ method, path, ...(body !== undefined ? { body } : {}), status: res.statusCode ?? 0, json, ...(typeof fault === "string" ? { fault } : {}), ms: ms() });
        });
        res.on("error", reject);
      });
      req.on("error", reject);
      req.setTimeout(CALL_LIMIT_MS, () => {
        req.destroy();
        resolve({ method, path, ...(body !== undefined ? { body } : {}), status: 0, fault: `no answer within ${CALL_LIMIT_MS} ms`, ms: ms() });
      });
      if (text !== undefined) req.write(text);
      req.end();
    });
  }

  /** The calls flint did not answer with 2xx, one line each: "PUT /logger: 400 <fault>". */
  refused(): string[] {
    return this.calls.filter((c) => c.status < 200 || c.status > 299)
      .map((c) => `${c.method} ${c.path}${actionName(c)}: ${c.status} ${c.fault ?? ""}`.trimEnd());
  }

  /** Closes the kept-alive connection, as the client's process exit would. */
  close(): void {
    this.agent.destroy();
  }
}

function actionName(c: RecordedCall): string {
  const t = (c.body as { action_type?: unknown } | undefined)?.action_type;
  return c.path === "/actions" && typeof t === "string" ? ` ${t}` : "";
}

/** RFC 4648 base32 without padding (firecracker-containerd names its stub drives so). */
export function base32NoPadding(bytes: Buffer): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let out = "", bits = 0, value = 0;
  for (const b of bytes) {
    value = ((value & 0xff) << 8) | b; // at most 4 bits are left over from before
    bits += 8;
    while (bits >= 5) { out += alphabet[(value >>> (bits - 5)) & 31]; bits -= 5; }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

/** Sleeps `ms`. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `probe` every `everyMs` until it returns true, the process ends, or
 * `limitMs` passes (a hang catcher); resolves with whether it became true.
 */
export async function pollUntil(vmm: VmmProcess, everyMs: number, limitMs: number, probe: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + limitMs;
  while (Date.now() < deadline && !vmm.hasExited()) {
    if (await probe().catch(() => false)) return true;
    await sleep(everyMs);
  }
  return false;
}

/** The guest's uptime in its last kernel console line ("[    0.054604] ..."), or undefined when there is none. */
export function lastKernelUptime(console: string): number | undefined {
  const all = [...console.matchAll(/^\[\s*(\d+\.\d+)\]/gm)];
  return all.length === 0 ? undefined : Number(all[all.length - 1]![1]);
}

/**
 * Waits up to `limitMs` for `marker` on the VMM's stdout (the guest's
 * console). "stalled" when the console stopped growing for `stallMs` while
 * the guest was still in its kernel's first `earlyBootS` seconds: the nested
 * harness's emulated machine has been seen to hang or reset a guest there
 * (setup_arch, setup_percpu; a few of a CI run's outer VMs), while flint
 * only serves the console's port I/O; the harness runs such a run again
 * (`flint-e2e: guest_stalled=`, nested.ts). A guest that stops later, or
 * a VMM that exits, is not a stall.
 */
export async function waitForConsole(vmm: VmmProcess, marker: string, o: { limitMs: number; stallMs?: number; earlyBootS?: number }): Promise<"found" | "stalled" | "timeout"> {
  const stallMs = o.stallMs ?? 60_000, earlyBootS = o.earlyBootS ?? 0.5;
  let seen = -1, since = Date.now(), stalled = false;
  const found = await pollUntil(vmm, 100, o.limitMs, async () => {
    const text = vmm.stdout();
    if (text.includes(marker)) return true;
    if (text.length !== seen) { seen = text.length; since = Date.now(); return false; }
    const uptime = lastKernelUptime(text);
    stalled = Date.now() - since >= stallMs && uptime !== undefined && uptime < earlyBootS;
    return stalled;
  });
  return found && !stalled ? "found" : stalled ? "stalled" : "timeout";
}

/**
 * waitForConsole for a guest's boot marker, as the end-to-end clients wait:
 * true once it is there, false after `o.limitMs`. A stall is reported through
 * `say` ("guest_stalled", the console's last 100 characters), the line the
 * nested harness makes the run again for (guestStall in nested.ts), and
 * thrown, since nothing after the boot can work.
 */
export async function waitForBoot(
  vmm: VmmProcess, marker: string, say: (key: string, value: string) => void, o: { limitMs: number; stallMs?: number },
): Promise<boolean> {
  const r = await waitForConsole(vmm, marker, o);
  if (r !== "stalled") return r === "found";
  say("guest_stalled", JSON.stringify(vmm.stdout().slice(-100)));
  throw new Error("the guest's console stopped in its early boot");
}

/**
 * Waits up to `limitMs` for the process to end on its own (hang catcher);
 * returns how it ended, or undefined when it had not.
 */
export async function waitExit(vmm: VmmProcess, limitMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null } | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([vmm.exited, new Promise<undefined>((resolve) => { timer = setTimeout(() => resolve(undefined), limitMs); })]);
  clearTimeout(timer);
  return r;
}
