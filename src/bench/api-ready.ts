/**
 * API socket ready: from spawning `flint --api-sock PATH` to its first answer
 * to `GET /`, against spawning a bare `node -e 0` to its exit on the same
 * machine (the floor any Node program pays), and then InstanceStart → the
 * ring-3 exit-loop guest's first console byte over that API. Runs are
 * interleaved; medians are printed, with flint's ready time as a ratio of
 * node's. Printed, not asserted.
 *
 * Alone: node dist/bench/api-ready.js [--runs N]
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";
import { buildExitLoopGuest, EXIT_LOOP_HELLO_BYTE, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import { api } from "../vmm/testing/api-client.js";
import { median } from "./process.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

/** The figures, in milliseconds (medians). */
export interface ApiReady {
  runs: number;
  /** spawn → `GET /` answered. */
  flintApiReadyMs: number;
  /** spawn → `node -e 0` exited. */
  nodeBareMs: number;
  ratio: number;
  /** PUT /actions InstanceStart sent → the guest's first console byte on flint's stdout. */
  instanceStartToGuestMs: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function nodeBare(): Promise<number> {
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const c = spawn(process.execPath, ["-e", "0"], { stdio: "ignore" });
    c.on("exit", () => resolve());
    c.on("error", reject);
  });
  return performance.now() - t0;
}

async function flintOnce(dir: string, i: number): Promise<{ ready: number; toGuest: number }> {
  const sock = join(dir, `b${i}.sock`);
  const t0 = performance.now();
  const child = spawn(process.execPath, [CLI, "--api-sock", sock], { stdio: ["ignore", "pipe", "ignore"] });
  let stdout = "";
  child.stdout.on("data", (b: Buffer) => { stdout += b.toString("latin1"); });
  try {
    let ready = -1;
    for (let k = 0; k < 20_000 && ready < 0; k++) {
      if (existsSync(sock)) {
        try {
          if ((await api(sock, "GET", "/")).status === 200) ready = performance.now() - t0;
        } catch { /* not listening yet */ }
      }
      if (ready < 0) await sleep(1);
    }
    if (ready < 0) throw new Error("flint's API never answered");
    await api(sock, "PUT", "/boot-source", { kernel_image_path: buildExitLoopGuest(), boot_args: exitLoopCmdline({ mode: "pio", count: 0, hello: true, halt: true }) });
    await api(sock, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 64 });
    const t1 = performance.now();
    const start = await api(sock, "PUT", "/actions", { action_type: "InstanceStart" });
    if (start.status !== 204) throw new Error(`InstanceStart answered ${start.status} ${start.text}`);
    const hello = String.fromCharCode(EXIT_LOOP_HELLO_BYTE);
    for (let k = 0; k < 20_000 && !stdout.includes(hello); k++) await sleep(1);
    return { ready, toGuest: performance.now() - t1 };
  } finally {
    child.kill("SIGKILL");
    await new Promise((r) => child.on("exit", r));
  }
}

/** Measures `runs` interleaved rounds. */
export async function measureApiReady(runs: number): Promise<ApiReady> {
  const dir = mkdtempSync(join(tmpdir(), "flint-bench-api-"));
  try {
    await nodeBare(); // warm the page cache for both
    await flintOnce(dir, -1);
    const bare: number[] = [], ready: number[] = [], toGuest: number[] = [];
    for (let i = 0; i < runs; i++) {
      bare.push(await nodeBare());
      const f = await flintOnce(dir, i);
      ready.push(f.ready);
      toGuest.push(f.toGuest);
    }
    const r = median(ready), b = median(bare);
    return { runs, flintApiReadyMs: r, nodeBareMs: b, ratio: r / b, instanceStartToGuestMs: median(toGuest) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Prints the section; returns its figures. */
export async function printApiReadySection(out: (line: string) => void, runs: number): Promise<ApiReady> {
  const r = await measureApiReady(runs);
  out(`API socket ready (spawn → GET / answered), median of ${r.runs}:`);
  out(`  flint --api-sock ${r.flintApiReadyMs.toFixed(1)} ms vs node -e 0 ${r.nodeBareMs.toFixed(1)} ms: ${r.ratio.toFixed(2)}x`);
  out(`  InstanceStart → the ring-3 guest's first console byte: ${r.instanceStartToGuestMs.toFixed(1)} ms`);
  return r;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const i = process.argv.indexOf("--runs");
  await printApiReadySection(console.log, i > 0 ? Number(process.argv[i + 1]) : 7);
}
