/**
 * Rigs for the Uffd memory backend's tests (machine-uffd.test.ts,
 * src/vmm/api-uffd.test.ts): a snapshot of a running ring-3 guest that
 * counts in guest memory and prints a '.' on COM1 every 2^20 steps, the
 * page-fault handler (`flint uffd-handler`, the CLI users run) in a child
 * process, and handlers that misbehave (close the connection).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { COM1_PORT } from "../../arch/x86_64/layout.js";
import { RING3_LAYOUT } from "../../arch/x86_64/ring3.js";
import { assemble } from "../../kvm/testing/assemble.js";
import type { UffdHandlerStats } from "../../snapshot/uffd-handler.js";
import { Machine } from "../machine.js";
import { until } from "./pause-guest.js";

const CLI = fileURLToPath(new URL("../../bundle/main.js", import.meta.url));

/** Where the guest keeps its count (one vCPU). */
export const COUNT_ADDRESS = RING3_LAYOUT.data;
/** A page the guest never touches, where a test puts a marker before the snapshot. */
export const MARKER_ADDRESS = 32 << 20;

/** Counts in [COUNT_ADDRESS]; a '.' on COM1 every 2^20 steps. */
const program = assemble(`
     mov rbx, ${COUNT_ADDRESS}
  1: inc qword ptr [rbx]
     test qword ptr [rbx], 0xfffff
     jnz 1b
     mov dx, ${COM1_PORT}
     mov al, '.'
     out dx, al
     jmp 1b`, RING3_LAYOUT.code);

/** The guest's count in `m`'s memory. */
export function count(m: Machine): bigint {
  return m.memory.readU64(COUNT_ADDRESS);
}

/**
 * Runs the counting guest (1 vCPU, 64 MiB) until it counted, writes
 * `marker` at MARKER_ADDRESS, pauses it and snapshots it to `dir`/`name`.snap
 * and .mem, then stops it. Resolves with the files and the count saved.
 */
export async function snapshotCountingGuest(dir: string, name: string, marker: bigint): Promise<{ statePath: string; memoryPath: string; at: bigint }> {
  const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program } });
  const run = m.run();
  run.catch(() => undefined);
  await until("the guest to count", () => count(m) > 0n);
  m.memory.writeU64(MARKER_ADDRESS, marker);
  await m.pause();
  const files = { statePath: join(dir, `${name}.snap`), memoryPath: join(dir, `${name}.mem`) };
  await m.snapshot(files);
  const at = count(m);
  m.stop();
  await run;
  return { ...files, at };
}

/** A page-fault handler in a child process: its process, and its stats once it ends (rejects when it fails). */
export interface HandlerChild {
  child: ChildProcess;
  /** Resolves with what it printed when it ended (exit 0), rejects with its stderr otherwise. */
  done: Promise<UffdHandlerStats>;
}

/** Starts `flint uffd-handler --socket socketPath --mem-file memFilePath`; resolves once it listens. */
export async function startUffdHandler(socketPath: string, memFilePath: string): Promise<HandlerChild> {
  const child = spawn(process.execPath, [CLI, "uffd-handler", "--socket", socketPath, "--mem-file", memFilePath], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "", err = "";
  child.stdout!.on("data", (b: Buffer) => (out += b.toString()));
  const listening = new Promise<void>((resolve, reject) => {
    child.stderr!.on("data", (b: Buffer) => {
      err += b.toString();
      if (err.includes("listening on")) resolve();
    });
    child.on("exit", () => reject(new Error(`the handler ended before it listened: ${err}`)));
  });
  const done = new Promise<UffdHandlerStats>((resolve, reject) => {
    child.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out) as UffdHandlerStats) : reject(new Error(`the handler exited with ${code}: ${err.trim()}`))));
  });
  done.catch(() => undefined);
  await listening;
  return { child, done };
}

/**
 * A handler that takes the connection and the handshake and then closes
 * the connection, and exits: at once (`when` "after-handshake"), or when
 * its stdin closes ("on-stdin-end", so that a test decides when).
 * Resolves once it listens, with the process (whose exit says it closed).
 */
export async function startClosingHandler(socketPath: string, when: "after-handshake" | "on-stdin-end"): Promise<ChildProcess> {
  const script = `
    const net = require("node:net");
    const server = net.createServer((c) => {
      c.once("data", () => {
        const close = () => { c.destroy(); server.close(); };
        if (${JSON.stringify(when)} === "after-handshake") close();
        else { process.stdin.on("end", close); process.stdin.resume(); }
      });
    });
    server.listen(${JSON.stringify(socketPath)}, () => process.stderr.write("listening\\n"));`;
  const child = spawn(process.execPath, ["-e", script], { stdio: ["pipe", "ignore", "pipe"] });
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on("data", () => resolve());
    child.on("exit", (code) => reject(new Error(`the closing handler exited (${code}) before it listened`)));
  });
  return child;
}

/** Resolves once `child` has exited. */
export function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null ? Promise.resolve() : new Promise((resolve) => child.once("exit", () => resolve()));
}
