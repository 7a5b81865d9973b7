/**
 * `flint demo` (README's first command): builds the default guest (minimal
 * kernel + busybox initramfs), then boots it — directly when this host runs
 * guest kernel code natively, or, saying so, inside the nested harness (QEMU
 * with an emulated SVM CPU and KVM inside) when `doctor` finds that this
 * host emulates guest ring 0, as on flint's CI machines.
 */
import { writeFileSync, existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { cacheKey, cachePath } from "../guest/cache.js";
import { buildInitramfs, defaultInit } from "../guest/initramfs.js";
import { runNested } from "../harness/nested.js";
import { runDoctor } from "../doctor/doctor.js";
import { buildKernelWithProgress } from "./guest.js";
import { DEFAULT_CMDLINE } from "./defaults.js";
import { runVm } from "./run.js";

export async function runDemo(o: { cpus: number; memoryMib: number; forceNested: boolean }): Promise<number> {
  const kernel = await buildKernelWithProgress();
  const init = defaultInit({ finish: "poweroff" });
  const initrd = cachePath(`default-initramfs-${cacheKey([init])}.cpio.gz`);
  if (!existsSync(initrd)) writeFileSync(initrd, buildInitramfs({ init }));
  process.stderr.write(`flint: default guest: ${kernel.vmlinux} + ${initrd}\n`);

  const report = runDoctor();
  if (!report.usable) {
    process.stderr.write(`flint: ${report.verdict}\n`);
    return 1;
  }
  const args = ["--kernel", kernel.vmlinux, "--initrd", initrd, "--cpus", String(o.cpus), "--memory", String(o.memoryMib)];
  if (!o.forceNested && !report.kernelModeEmulated) {
    return runVm({
      kernel: kernel.vmlinux, initrd, cmdline: DEFAULT_CMDLINE, cpus: o.cpus, memoryMib: o.memoryMib,
      bootMode: "auto", acpi: true, hugePages: false, mergeable: false, bootTime: true,
    });
  }
  process.stderr.write(
    "flint: this host emulates guest kernel mode, so Linux cannot boot at usable speed on its /dev/kvm.\n" +
    "flint: booting in the nested harness instead: QEMU (TCG, emulated AMD SVM CPU) runs a Linux with real KVM, and flint runs inside it.\n",
  );
  const cli = fileURLToPath(new URL("./main.js", import.meta.url));
  const command = [process.execPath, cli, "run", ...args, "--boot-time"].map((a) => `'${a}'`).join(" ");
  const res = await runNested({ command, timeoutMs: 10 * 60_000 });
  process.stdout.write(res.output);
  process.stderr.write(`flint: nested run finished in ${(res.durationMs / 1000).toFixed(1)} s with exit code ${res.exitCode}${res.timedOut ? " (timed out)" : ""}\n`);
  return res.exitCode === 0 ? 0 : 1;
}
