/** `flint build-kernel` and `flint build-initramfs`: guest artifacts for microVMs. */
import { SingleBar, Presets } from "cli-progress";
import { readFileSync, writeFileSync } from "node:fs";
import { buildKernel, type KernelArtifacts } from "../guest/kernel-build.js";
import { buildInitramfs, defaultInit, type DefaultInitFinish } from "../guest/initramfs.js";
import type { GuestProgress } from "../guest/progress.js";

/** Builds (or finds cached) the guest kernel, showing progress on stderr. */
export async function buildKernelWithProgress(): Promise<KernelArtifacts> {
  const tty = process.stderr.isTTY === true;
  let bar: SingleBar | undefined;
  let phase = "";
  const onProgress = (p: GuestProgress) => {
    if (p.phase !== phase) {
      bar?.stop();
      bar = undefined;
      phase = p.phase;
      if (!(tty && p.total)) process.stderr.write(`flint: ${p.message}\n`);
    }
    if (tty && p.total) {
      if (!bar) {
        bar = new SingleBar({ format: `${p.phase} [{bar}] {percentage}% {value}/{total}`, stream: process.stderr }, Presets.shades_classic);
        bar.start(p.total, p.done ?? 0);
      }
      bar.setTotal(Math.max(p.total, p.done ?? 0));
      bar.update(p.done ?? 0);
    }
  };
  try {
    return await buildKernel({ onProgress });
  } finally {
    bar?.stop();
  }
}

export async function buildKernelCommand(o: { json: boolean }): Promise<void> {
  const k = await buildKernelWithProgress();
  if (o.json) process.stdout.write(`${JSON.stringify(k, null, 2)}\n`);
  else process.stdout.write(`vmlinux: ${k.vmlinux}\nbzImage: ${k.bzImage}\n`);
}

export function buildInitramfsCommand(o: { output: string; init?: string; finish: DefaultInitFinish }): void {
  const init = o.init ? readFileSync(o.init, "utf8") : defaultInit({ finish: o.finish });
  const image = buildInitramfs({ init });
  writeFileSync(o.output, image);
  process.stdout.write(`${o.output}: ${image.length} bytes\n`);
}
