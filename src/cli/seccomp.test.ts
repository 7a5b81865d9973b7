/**
 * flint as a monitor runs under its seccomp filters by default (src/seccomp):
 * these tests walk the paths a filter could miss in spawned `flint`
 * processes with the filters on and killing (FLINT_SECCOMP_AUDIT unset):
 * log and metrics FIFOs and files (pino loaded on the first PUT /logger),
 * drives, entropy, balloon and vsock (a host connection on its Unix
 * socket), PUT /serial to a file, PATCH of a drive's backing file and rate
 * limiter, FlushMetrics, pause, snapshot create, resume, SIGTERM; a second
 * flint loading that snapshot; and `flint run` to the guest's own end.
 * Killed by a filter, flint would end by SIGSYS instead of its exit code.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { buildExitLoopGuest, EXIT_LOOP_HELLO_BYTE, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import { api } from "../vmm/testing/api-client.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "flint-seccomp-cli-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The environment with the filters killing (no audit mode inherited from the caller). */
function env(): NodeJS.ProcessEnv {
  const e = { ...process.env };
  delete e.FLINT_SECCOMP_AUDIT;
  return e;
}

interface Monitor { pid: number; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>; out: () => string; err: () => string; kill: () => void }

/** How many seccomp filters each thread of process `pid` has (/proc/PID/task/TID/status, Seccomp_filters). */
function filtersPerThread(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    const m = /^Seccomp_filters:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8"));
    return m ? Number(m[1]) : -1;
  });
}

function monitor(args: string[]): Monitor {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], env: env() });
  let stdout = "", stderr = "";
  child.stdout.on("data", (b: Buffer) => { stdout += b.toString("latin1"); });
  child.stderr.on("data", (b: Buffer) => { stderr += b.toString("latin1"); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  return { pid: child.pid!, exited, out: () => stdout, err: () => stderr, kill: () => child.kill("SIGTERM") };
}

async function until(what: string, ok: () => boolean | Promise<boolean>, m: Monitor): Promise<void> {
  // Hang catcher (60 s), not a timing assertion.
  for (let i = 0; i < 600; i++) {
    if (await ok()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out waiting for ${what}; stderr: ${m.err()}`);
}

async function call(sock: string, method: string, path: string, body?: unknown, m?: Monitor): Promise<unknown> {
  const r = await api(sock, method, path, body);
  assert.ok(r.status === 204 || r.status === 200, `${method} ${path}: ${r.status} ${r.text}; stderr: ${m?.err()}`);
  return r.json;
}

test("an --api-sock monitor under its filters: logger FIFO, metrics, devices, vsock, serial file, PATCH, pause, snapshot, resume, SIGTERM; then a load", async () => {
  const sock = join(dir, "a.sock"), vsockUds = join(dir, "v.sock");
  const logFifo = join(dir, "log.fifo"), metrics = join(dir, "metrics"), serial = join(dir, "serial.out");
  execFileSync("mkfifo", [logFifo]);
  writeFileSync(metrics, "");
  const disk = join(dir, "disk.img"), disk2 = join(dir, "disk2.img");
  writeFileSync(disk, Buffer.alloc(1 << 20));
  writeFileSync(disk2, Buffer.alloc(1 << 20));
  const snap = join(dir, "vm.snap"), mem = join(dir, "vm.mem");
  const a = monitor(["--api-sock", sock, "--id", "sc-a"]);
  try {
    await until("the API socket", () => existsSync(sock), a);
    await call(sock, "PUT", "/logger", { log_path: logFifo, level: "Debug", show_level: true }, a);
    await call(sock, "PUT", "/metrics", { metrics_path: metrics }, a);
    await call(sock, "PUT", "/boot-source", { kernel_image_path: buildExitLoopGuest(), boot_args: exitLoopCmdline({ mode: "pio", count: 1000, hello: true, halt: true }) }, a);
    await call(sock, "PUT", "/machine-config", { vcpu_count: 2, mem_size_mib: 64 }, a);
    await call(sock, "PUT", "/drives/root", { drive_id: "root", path_on_host: disk, is_root_device: false, is_read_only: false, rate_limiter: { bandwidth: { size: 1 << 20, refill_time: 100 } } }, a);
    await call(sock, "PUT", "/entropy", { rate_limiter: { ops: { size: 10, refill_time: 100 } } }, a);
    await call(sock, "PUT", "/balloon", { amount_mib: 4, deflate_on_oom: false, stats_polling_interval_s: 1 }, a);
    await call(sock, "PUT", "/vsock", { guest_cid: 3, uds_path: vsockUds }, a);
    await call(sock, "PUT", "/serial", { serial_out_path: serial }, a);
    await call(sock, "PUT", "/mmds", { latest: { id: "x" } }, a);
    await call(sock, "PUT", "/actions", { action_type: "InstanceStart" }, a);
    await until("the guest's hello byte in the serial file", () => existsSync(serial) && readFileSync(serial, "latin1").includes(String.fromCharCode(EXIT_LOOP_HELLO_BYTE)), a);
    // Every thread has the process-wide filter; the two vCPU threads and the device thread one more each.
    const filters = filtersPerThread(a.pid);
    assert.ok(filters.every((n) => n >= 1), `every thread filtered: ${filters}`);
    assert.ok(filters.filter((n) => n === 2).length >= 3, `vCPU and device threads stack their own: ${filters}`);
    // A host connection to the vsock's socket: the device thread accepts it and reads the CONNECT line.
    await new Promise<void>((resolve, reject) => {
      const c = createConnection(vsockUds, () => { c.write("CONNECT 52\n"); setTimeout(() => { c.destroy(); resolve(); }, 200); });
      c.on("error", reject);
    });
    await call(sock, "PATCH", "/drives/root", { drive_id: "root", path_on_host: disk2 }, a);
    await call(sock, "PATCH", "/drives/root", { drive_id: "root", rate_limiter: { ops: { size: 100, refill_time: 50 } } }, a);
    await call(sock, "PATCH", "/balloon", { amount_mib: 2 }, a);
    await call(sock, "PUT", "/actions", { action_type: "FlushMetrics" }, a);
    await call(sock, "PATCH", "/vm", { state: "Paused" }, a);
    await call(sock, "PUT", "/snapshot/create", { snapshot_type: "Full", snapshot_path: snap, mem_file_path: mem }, a);
    await call(sock, "PATCH", "/vm", { state: "Resumed" }, a);
    await call(sock, "GET", "/vm/config", undefined, a);
  } finally {
    a.kill();
  }
  const ea = await a.exited;
  assert.deepEqual(ea, { code: 143, signal: null }, `ended by SIGTERM's exit code, not SIGSYS; stderr: ${a.err()}`);
  assert.ok(readFileSync(metrics, "utf8").includes("put_api_requests"), "metrics were written");

  // A second monitor loads the snapshot (its vsock on a new socket), runs, pauses and is stopped.
  const sockB = join(dir, "b.sock");
  const b = monitor(["--api-sock", sockB, "--id", "sc-b"]);
  try {
    await until("the API socket", () => existsSync(sockB), b);
    await call(sockB, "PUT", "/snapshot/load", { snapshot_path: snap, mem_backend: { backend_type: "File", backend_path: mem }, resume_vm: true, vsock_override: { uds_path: join(dir, "v2.sock") } }, b);
    await until("Running", async () => ((await api(sockB, "GET", "/")).json as { state: string }).state === "Running", b);
    // Running is reported once the vCPUs are started; each thread installs its own filter as it comes up.
    await until(`restored vCPU and device threads with their own filters (now ${filtersPerThread(b.pid)})`, () => filtersPerThread(b.pid).filter((n) => n === 2).length >= 3, b);
    await call(sockB, "PATCH", "/vm", { state: "Paused" }, b);
    await call(sockB, "PATCH", "/vm", { state: "Resumed" }, b);
  } finally {
    b.kill();
  }
  assert.deepEqual(await b.exited, { code: 143, signal: null }, `stderr: ${b.err()}`);
});

test("`flint run` under its filters (and with --no-seccomp): drive, entropy, balloon, vsock; the guest ends the VM", () => {
  const disk = join(dir, "run.img");
  writeFileSync(disk, Buffer.alloc(1 << 20));
  for (const extra of [[], ["--no-seccomp"]]) {
    const uds = join(dir, `run-${extra.length}.sock`);
    const r = spawnSync(process.execPath, [CLI, "run", "--kernel", buildExitLoopGuest(), "--boot", "pvh", "--cmdline", exitLoopCmdline({ mode: "mmio", count: 1000, hello: true }),
      "--memory", "64", "--cpus", "2", "--debug-exit", "--disk", disk, "--rng", "--balloon", "0", "--vsock", `cid=3,uds=${uds}`, ...extra], { encoding: "latin1", env: env(), timeout: 60_000 });
    assert.equal(r.signal, null, `not killed (${extra.join(" ")}): ${r.stderr}`);
    assert.equal(r.status, 0, `the guest's end marker is flint's exit code (${extra.join(" ")}): ${r.stderr}`);
    assert.equal(r.stdout, String.fromCharCode(EXIT_LOOP_HELLO_BYTE));
  }
});
