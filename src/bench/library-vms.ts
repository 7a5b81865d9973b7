/**
 * A child program of the per-VM overhead section (per-vm-overhead.ts): a
 * library user who runs several VMs in one Node process. It loads flint's
 * bundled library (dist/bundle/index.js, as `import "flint"` would), starts
 * the VMs one after the other, each with one of every device given (on a
 * device thread of its own, or on the process's one: input.deviceThread), the
 * exit-loop guest with `hello halt` (one console byte, then asleep), and
 * records for each (threads and a KVM VM kept warm: Machine.keepWarm): Machine.create to its first console byte, and this
 * process's memory once it has settled. Then it stops them in a random
 * order. Prints one JSON line (LibraryVmsReport) on stdout.
 *
 *   node dist/bench/library-vms.js '<LibraryVmsInput as JSON>'
 */
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { Writable } from "node:stream";
import { pathToFileURL } from "node:url";
import type { MachineResult, VirtioDeviceConfig } from "../index.js";
import { EXIT_LOOP_HELLO_BYTE, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import type { LibraryVmsInput, LibraryVmsReport, LibraryVmSample } from "./overhead-report.js";
import type { OverheadDevices } from "./overhead-args.js";
import { anonKib, guestRamResidency, readProcStatus } from "./proc-memory.js";

type Flint = typeof import("../index.js");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The process's memory now, with the guest RAM of `vms` VMs. */
function memory(memoryMib: number, vms: number): Pick<LibraryVmSample, "rssKib" | "anonKib" | "guestRamKib" | "mergedExtraKib" | "threads"> {
  const s = readProcStatus("self")!;
  const g = guestRamResidency(readFileSync("/proc/self/smaps", "utf8"), memoryMib * 1024, vms);
  return { rssKib: s.vmRssKib, anonKib: anonKib(s), guestRamKib: g.rssKib, mergedExtraKib: g.mergedExtraKib, threads: s.threads };
}

/** The CLI's device order: block, net, rng, balloon, vsock. */
function virtioDevices(d: OverheadDevices): VirtioDeviceConfig[] {
  return [
    { kind: "block", options: { path: d.diskPath, readOnly: false } },
    ...(d.tap !== undefined ? [{ kind: "net" as const, options: { tap: d.tap, mac: d.mac } }] : []),
    { kind: "rng", options: {} },
    { kind: "balloon", options: { targetMib: 0 } },
    { kind: "vsock", options: { cid: d.vsockCid, uds: d.vsockUds } },
  ];
}

async function main(): Promise<void> {
  const input = JSON.parse(process.argv[2]!) as LibraryVmsInput;
  const flint = (await import(pathToFileURL(input.bundle).href)) as Flint;
  // What a library user starting many VMs does: keep one vCPU and one device thread booted
  // ahead, and one KVM VM of this shape made, so a new VM takes ready threads and a ready VM
  // (each replaced in the background). The spares are in the baseline, so each VM's figures
  // are its own. With the process's device thread, VMs need no device thread of their own
  // (the first VM starts the shared one).
  const deviceThreads = input.deviceThread === "process" ? 0 : 1;
  flint.Machine.keepWarm({ vcpuThreads: 1, deviceThreads, vms: { cpus: 1, memoryMib: input.memoryMib, count: 1 } });
  await sleep(input.settleMs);
  const baseline = memory(input.memoryMib, 0);
  const cmdline = exitLoopCmdline({ mode: "pio", count: 0, hello: true, halt: true });
  const vms: { stop(): void; running: Promise<MachineResult> }[] = [];
  const samples: LibraryVmSample[] = [];
  for (const [i, devices] of input.vms.entries()) {
    let firstByte!: (atMs: number) => void;
    let wrongByte!: (error: Error) => void;
    const first = new Promise<number>((resolve, reject) => {
      firstByte = resolve;
      wrongByte = reject;
    });
    let seen = false;
    const consoleOutput = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        if (!seen) {
          seen = true;
          if (chunk[0] === EXIT_LOOP_HELLO_BYTE) firstByte(performance.now());
          else wrongByte(new Error(`VM ${i + 1} wrote '${chunk.toString("latin1").slice(0, 80)}' before the guest's first byte`));
        }
        callback();
      },
    });
    const t0 = performance.now();
    const machine = flint.Machine.create({
      cpus: 1,
      memoryMib: input.memoryMib,
      boot: { kind: "linux", kernelPath: input.guest, cmdline, acpi: false, mode: "pvh" },
      consoleOutput,
      virtioDevices: virtioDevices(devices),
      deviceThread: input.deviceThread,
    });
    const createMs = performance.now() - t0;
    const running = machine.run();
    vms.push({ stop: () => machine.stop({ kind: "poweroff" }), running });
    const endedEarly = running.then((r) => {
      throw new Error(`VM ${i + 1} ended before its first console byte (${r.reason.kind}${r.reason.kind === "error" ? `: ${r.reason.message}` : ""})`);
    });
    const firstOutputMs = (await Promise.race([first, endedEarly])) - t0;
    endedEarly.catch(() => {}); // settles (rejected) when the VM is stopped at the end
    await sleep(input.settleMs);
    samples.push({ vm: i + 1, createMs, firstOutputMs, ...memory(input.memoryMib, i + 1) });
  }
  const peakRssKib = readProcStatus("self")!.vmHwmKib;

  // Fisher-Yates: every order equally likely.
  const order = vms.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const stops: LibraryVmsReport["stops"] = [];
  for (const i of order) {
    const t0 = performance.now();
    vms[i]!.stop();
    const result = await vms[i]!.running;
    stops.push({ vm: i + 1, ms: performance.now() - t0, reason: result.reason.kind });
  }
  const report: LibraryVmsReport = { baseline, vms: samples, peakRssKib, stops };
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

await main();
