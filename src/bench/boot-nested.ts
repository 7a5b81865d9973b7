/**
 * Linux boot benchmark in the nested harness: flint vs QEMU `-M microvm`,
 * same kernel, same initramfs, same vCPUs and memory, alternating runs in one
 * outer VM. Everything in the nested VM runs under TCG, so only ratios
 * measured in the same run mean anything.
 *
 * Per VM it records: the guest's uptime when /init reported (kernel boot
 * time as the guest sees it), wall time from process start to exit, and the
 * process's peak RSS (`/usr/bin/time -f %M`).
 *
 * Then, from a monitor already up and configured, the time from the start
 * request to /init's first console line: flint over Firecracker's API
 * (`--api-sock`, PUT /boot-source and /machine-config, then InstanceStart),
 * QEMU started stopped (`-S`) and resumed over QMP (`cont`). QEMU builds the
 * VM (loads the kernel) before `cont`, flint (like Firecracker) at
 * InstanceStart, so QEMU's time from spawning it to /init is measured too.
 * The same clock (the client's) reads both ends, in the nested VM.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildInitramfs, defaultInit, parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { runNested } from "../harness/nested.js";
import { BenchError } from "./bench-error.js";
import { median } from "./process.js";

export interface BootSample {
  /** Guest uptime at /init's report, seconds. */
  guestUptimeSec: number;
  /** Process start to exit, seconds. */
  wallSec: number;
  /** Peak RSS of the monitor process, KiB. */
  peakRssKib: number;
}

export interface BootBenchResult {
  flint: BootSample[];
  qemu: BootSample[];
  median: { flint: BootSample; qemu: BootSample };
  /** Start request → /init's first line, milliseconds, per run; and their medians. */
  startToInit: { flint: number[]; qemu: number[]; qemuSpawn: number[]; median: { flint: number; qemu: number; qemuSpawn: number } };
  memoryMib: number;
  cpus: number;
}

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

/**
 * The same guest for both: reboot through a triple fault (microvm has no
 * i8042); `quiet` because each console byte is a costly nested exit.
 */
const CMDLINE = "console=ttyS0 reboot=t panic=-1 pci=off quiet";

/**
 * Runs in the nested VM: `node start-to-init.mjs flint|qemu|qemuSpawn CLI KERNEL INITRD CMDLINE CPUS MIB DIR`
 * prints `start_to_init_ms=N` once the guest's /init has reported, then waits for the VM to end.
 */
const START_TO_INIT = `
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { connect } from "node:net";
import { request } from "node:http";
const [mon, cli, kernel, initrd, cmdline, cpus, mib, dir] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sock = dir + "/" + mon + ".sock";
let t0 = mon === "qemuSpawn" ? performance.now() : 0, booted;
const child = mon === "flint"
  ? spawn(process.execPath, [cli, "--api-sock", sock, "--id", "bench"], { stdio: ["ignore", "pipe", "inherit"] })
  : spawn("qemu-system-x86_64", ["-M", "microvm,x-option-roms=off,rtc=off,pcie=off", "-accel", "kvm", "-cpu", "host", "-smp", cpus, "-m", mib,
      "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
      ...(mon === "qemu" ? ["-S", "-qmp", "unix:" + sock + ",server=on,wait=off"] : [])], { stdio: ["ignore", "pipe", "inherit"] });
let out = "";
const seen = new Promise((r) => (booted = r));
child.stdout.on("data", (b) => { out += b; if (t0 && out.includes("flint-guest: booted")) booted(performance.now()); });
const ended = new Promise((r) => child.on("exit", r));
for (let i = 0; i < 3000 && mon !== "qemuSpawn" && !existsSync(sock); i++) await sleep(10);
if (mon === "flint") {
  const call = (method, path, body) => new Promise((resolve, reject) => {
    const text = JSON.stringify(body);
    const req = request({ socketPath: sock, method, path, headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) } }, (res) => {
      res.resume(); res.on("end", () => (res.statusCode === 204 ? resolve() : reject(new Error(path + " " + res.statusCode))));
    });
    req.on("error", reject); req.end(text);
  });
  await call("PUT", "/boot-source", { kernel_image_path: kernel, initrd_path: initrd, boot_args: cmdline });
  await call("PUT", "/machine-config", { vcpu_count: Number(cpus), mem_size_mib: Number(mib) });
  t0 = performance.now();
  await call("PUT", "/actions", { action_type: "InstanceStart" });
} else if (mon === "qemu") {
  const qmp = connect(sock);
  let text = "";
  const reply = () => new Promise((r) => { const f = () => { const i = text.indexOf("\\n"); if (i < 0) return; const line = text.slice(0, i); text = text.slice(i + 1); if (line.includes('"return"') || line.includes('"QMP"')) { qmp.off("data", g); r(line); } else f(); }; const g = (b) => { text += b; f(); }; qmp.on("data", g); f(); });
  await reply();
  qmp.write(JSON.stringify({ execute: "qmp_capabilities" }) + "\\n");
  await reply();
  t0 = performance.now();
  qmp.write(JSON.stringify({ execute: "cont" }) + "\\n");
}
const t1 = await Promise.race([seen, sleep(240000).then(() => NaN)]);
console.log("start_to_init_ms=" + (t1 - t0).toFixed(1));
await ended;
process.exit(0);
`;

function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function parseSample(out: string, timeLine: string): BootSample {
  const report = parseGuestReport(out);
  const [wall, rss] = timeLine.trim().split(/\s+/).map(Number);
  if (!report.booted || report.uptimeSec === undefined || wall === undefined || rss === undefined) {
    throw new BenchError("EBENCHRUN", `a boot run did not report (tail: ${out.slice(-400)})`);
  }
  return { guestUptimeSec: report.uptimeSec, wallSec: wall, peakRssKib: rss };
}

function medianSample(xs: BootSample[]): BootSample {
  return {
    guestUptimeSec: median(xs.map((x) => x.guestUptimeSec)),
    wallSec: median(xs.map((x) => x.wallSec)),
    peakRssKib: median(xs.map((x) => x.peakRssKib)),
  };
}

/** Runs `runs` boots of each monitor, alternating, inside one nested VM. */
export async function benchBootNested(opts: { runs?: number; cpus?: number; memoryMib?: number } = {}): Promise<BootBenchResult> {
  const runs = opts.runs ?? 3;
  const cpus = opts.cpus ?? 2;
  const memoryMib = opts.memoryMib ?? 256;
  const kernel = await buildKernel();
  const share = mkdtempSync(join(tmpdir(), "flint-bench-boot-"));
  try {
    const initrd = join(share, "reboot.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: defaultInit({ finish: "reboot" }) }));
    const flintCmd = [process.execPath, CLI, "run", "--kernel", kernel.vmlinux, "--initrd", initrd,
      "--cmdline", CMDLINE, "--cpus", String(cpus), "--memory", String(memoryMib)];
    const qemuCmd = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,pcie=off", "-accel", "kvm", "-cpu", "host",
      "-smp", String(cpus), "-m", String(memoryMib), "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
      "-serial", "stdio", "-kernel", kernel.vmlinux, "-initrd", initrd, "-append", CMDLINE];
    const lines: string[] = [];
    for (let i = 0; i < runs; i++) {
      for (const [name, cmd] of [["flint", flintCmd], ["qemu", qemuCmd]] as const) {
        const out = join(share, `${name}-${i}`);
        lines.push(`/usr/bin/time -f '%e %M' -o ${q(out)}.time timeout 300 ${cmd.map(q).join(" ")} </dev/null >${q(out)}.out 2>&1`);
      }
    }
    const script = join(share, "start-to-init.mjs");
    writeFileSync(script, START_TO_INIT);
    // Unix sockets need a local file system: the nested VM's /dev/shm is a tmpfs (the share is 9p).
    lines.push("mkdir -p /dev/shm/flint-bench");
    for (let i = 0; i < runs; i++) {
      for (const name of ["flint", "qemu", "qemuSpawn"] as const) {
        const args = [name, CLI, kernel.vmlinux, initrd, CMDLINE, String(cpus), String(memoryMib), "/dev/shm/flint-bench"];
        lines.push(`timeout 300 ${q(process.execPath)} ${q(script)} ${args.map(q).join(" ")} </dev/null >${q(join(share, `start-${name}-${i}.out`))} 2>&1`);
      }
    }
    const res = await runNested({ command: lines.join("\n"), timeoutMs: 30 * 60_000, shareDir: share, memoryMib: 2048 });
    if (res.timedOut) throw new BenchError("EBENCHTIMEOUT", "the nested boot benchmark timed out");
    const result: BootBenchResult = { flint: [], qemu: [], median: undefined!, startToInit: { flint: [], qemu: [], qemuSpawn: [], median: undefined! }, memoryMib, cpus };
    for (let i = 0; i < runs; i++) {
      for (const name of ["flint", "qemu"] as const) {
        const out = join(share, `${name}-${i}`);
        result[name].push(parseSample(readFileSync(`${out}.out`, "utf8"), readFileSync(`${out}.time`, "utf8").split("\n").filter(Boolean).pop() ?? ""));
      }
    }
    result.median = { flint: medianSample(result.flint), qemu: medianSample(result.qemu) };
    for (let i = 0; i < runs; i++) {
      for (const name of ["flint", "qemu", "qemuSpawn"] as const) {
        const text = readFileSync(join(share, `start-${name}-${i}.out`), "utf8");
        const ms = Number(/start_to_init_ms=([0-9.]+)/.exec(text)?.[1]);
        if (!(ms > 0)) throw new BenchError("EBENCHRUN", `a ${name} start-to-init run did not report (tail: ${text.slice(-400)})`);
        result.startToInit[name].push(ms);
      }
    }
    const st = result.startToInit;
    st.median = { flint: median(st.flint), qemu: median(st.qemu), qemuSpawn: median(st.qemuSpawn) };
    return result;
  } finally {
    rmSync(share, { recursive: true, force: true });
  }
}
