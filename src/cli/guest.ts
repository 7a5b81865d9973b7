/** `flint build-kernel` and `flint build-initramfs`: guest artifacts for microVMs. */
import { SingleBar, Presets } from "cli-progress";
import { readFileSync, writeFileSync } from "node:fs";
import { buildKernel, type KernelArtifacts, type KernelVariant } from "../guest/kernel-build.js";
import { buildInitramfs, defaultInit, type DefaultInitFinish } from "../guest/initramfs.js";
import { lineProgress, type GuestProgress, type ProgressCallback } from "../guest/progress.js";

/** A progress display on a stream, and how to end it. */
export interface ProgressDisplay {
  onProgress: ProgressCallback;
  /** Ends a bar still drawn (a no-op for line output). */
  stop(): void;
}

/**
 * Shows progress on `stream`: a bar per countable phase on a terminal, and in
 * a log (not a terminal: CI, a file, `| tee`) one line per phase and per 10 %
 * of each countable phase (lineProgress), so long work is never silent there.
 */
export function progressDisplay(stream: NodeJS.WritableStream & { isTTY?: boolean }): ProgressDisplay {
  if (stream.isTTY !== true) return { onProgress: lineProgress(stream, "flint: "), stop: () => {} };
  let bar: SingleBar | undefined;
  let phase = "";
  const onProgress = (p: GuestProgress) => {
    if (p.phase !== phase) {
      bar?.stop();
      bar = undefined;
      phase = p.phase;
      if (!p.total) stream.write(`flint: ${p.message}\n`);
    }
    if (p.total) {
      if (!bar) {
        bar = new SingleBar({ format: `${p.phase} [{bar}] {percentage}% {value}/{total}`, stream }, Presets.shades_classic);
        bar.start(p.total, p.done ?? 0);
      }
      bar.setTotal(Math.max(p.total, p.done ?? 0));
      bar.update(p.done ?? 0);
    }
  };
  return { onProgress, stop: () => bar?.stop() };
}

/** Builds (or finds cached) a guest kernel variant, showing progress on stderr. */
export async function buildKernelWithProgress(variant: KernelVariant = "default"): Promise<KernelArtifacts> {
  const display = progressDisplay(process.stderr);
  try {
    return await buildKernel({ variant, onProgress: display.onProgress });
  } finally {
    display.stop();
  }
}

export async function buildKernelCommand(o: { json: boolean; acpi: boolean }): Promise<void> {
  const k = await buildKernelWithProgress(o.acpi ? "default" : "no-acpi");
  if (o.json) process.stdout.write(`${JSON.stringify(k, null, 2)}\n`);
  else process.stdout.write(`vmlinux: ${k.vmlinux}\nbzImage: ${k.bzImage}\n`);
}

export function buildInitramfsCommand(o: { output: string; init?: string; finish: DefaultInitFinish }): void {
  const init = o.init ? readFileSync(o.init, "utf8") : defaultInit({ finish: o.finish });
  const image = buildInitramfs({ init });
  writeFileSync(o.output, image);
  process.stdout.write(`${o.output}: ${image.length} bytes\n`);
}
