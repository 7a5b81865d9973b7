/**
 * Pause and resume latency: the time from Machine.pause() to its promise
 * resolving (every vCPU parked out of KVM_RUN, every device thread
 * quiesced) and from resume() to every vCPU back on its way into KVM_RUN,
 * over many cycles of a running VM. Ring-3 guests on /dev/kvm whose vCPUs
 * all spin (src/vm/testing/pause-guest.ts), so each pause has to kick
 * vCPUs out of the guest; with and without a virtio device (whose thread
 * quiesces). Printed, not asserted; Firecracker reports the same two
 * latencies in its metrics (latencies_us.vmm_pause_vm / vmm_resume_vm).
 *
 * Alone: node dist/bench/pause-latency.js [--cycles N]
 */
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import type { VirtioDeviceConfig } from "../devices/virtio/virtio-set.js";
import { counters, startCounterVm, until } from "../vm/testing/pause-guest.js";
import { median } from "./process.js";

/** One VM shape's figures (milliseconds). */
export interface PauseLatency {
  describe: string;
  cycles: number;
  pause: { medianMs: number; maxMs: number };
  resume: { medianMs: number; maxMs: number };
}

const SHAPES: { describe: string; cpus: number; virtio: VirtioDeviceConfig[] }[] = [
  { describe: "1 vCPU, no devices", cpus: 1, virtio: [] },
  { describe: "2 vCPUs, no devices", cpus: 2, virtio: [] },
  { describe: "2 vCPUs, virtio-rng (device thread quiesces)", cpus: 2, virtio: [{ kind: "rng", options: {} }] },
];

/** Pauses and resumes one VM of each shape `cycles` times, letting the guest run between cycles. */
export async function measurePauseLatency(cycles: number): Promise<PauseLatency[]> {
  const out: PauseLatency[] = [];
  for (const shape of SHAPES) {
    const { machine, running } = await startCounterVm(shape.cpus, { virtioDevices: shape.virtio });
    const pauses: number[] = [], resumes: number[] = [];
    try {
      for (let i = 0; i < cycles; i++) {
        const t0 = performance.now();
        await machine.pause();
        const t1 = performance.now();
        const frozen = counters(machine);
        await machine.resume();
        const t2 = performance.now();
        pauses.push(t1 - t0);
        resumes.push(t2 - t1);
        // Back in the guest before the next pause, so each one kicks running vCPUs.
        await until("the guest to run again", () => counters(machine).every((c, k) => c > frozen[k]!));
      }
    } finally {
      machine.stop();
      await running;
    }
    out.push({
      describe: shape.describe, cycles,
      pause: { medianMs: median(pauses), maxMs: Math.max(...pauses) },
      resume: { medianMs: median(resumes), maxMs: Math.max(...resumes) },
    });
  }
  return out;
}

/** Measures and prints the section; returns the figures for --json. */
export async function printPauseLatencySection(out: (line: string) => void, cycles: number): Promise<PauseLatency[]> {
  out(`== pause/resume latency: Machine.pause() and resume() until resolved, ring-3 guests on /dev/kvm, ${cycles} cycles ==`);
  const results = await measurePauseLatency(cycles);
  for (const r of results) {
    out(`${r.describe.padEnd(48)} pause ${r.pause.medianMs.toFixed(2).padStart(6)} ms (max ${r.pause.maxMs.toFixed(2)})` +
      `   resume ${r.resume.medianMs.toFixed(2).padStart(6)} ms (max ${r.resume.maxMs.toFixed(2)})   medians`);
  }
  return results;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf("--cycles");
  await printPauseLatencySection((l) => console.log(l), i > 0 ? Number(process.argv[i + 1]) : 50);
}
