/**
 * `flint demo` (README's first command): builds the default guest (minimal
 * kernel + busybox initramfs), then boots it — directly when this host runs
 * guest kernel code natively, or, saying so, inside the nested harness (QEMU
 * with an emulated SVM CPU and KVM inside) when `doctor` finds that this
 * host emulates guest ring 0, as on flint's CI machines. There, a guest that
 * the emulated machine kills (a triple fault Linux did not ask for, an outer
 * kernel lockup: README, Tests) is booted again in a fresh outer VM, as the
 * end-to-end tests do, and the user is told why; so is a run that stopped
 * (a frozen outer VM, or a guest stuck in early boot until the time limit).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cacheKey, cachePath } from "../guest/cache.js";
import { buildInitramfs, defaultInit } from "../guest/initramfs.js";
import { runNested, shellQuote, unrequestedTripleFault } from "../harness/nested.js";
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
  // The share must be one the outer VM can write: flint's output goes there, where the retry looks for a guest that died.
  const share = mkdtempSync(join(tmpdir(), "flint-demo-"));
  const log = join(share, "flint.log");
  try {
    const res = await runNested({
      command: demoNestedCommand([process.execPath, cli, "run", ...args, "--boot-time"], log),
      timeoutMs: 10 * 60_000, shareDir: share,
      retryAfterTimeout: () => rmSync(log, { force: true }), retryOnGuestCrash: [log],
    });
    const output = existsSync(log) ? readFileSync(log, "utf8") : res.output;
    process.stdout.write(output);
    if (res.retryReason !== undefined) {
      process.stderr.write(`flint: booted again in a fresh outer VM (${res.attempts} in all): ${res.retryReason}; the emulated machine kills or stops nested guests now and then\n`);
    }
    process.stderr.write(`flint: nested run finished in ${(res.durationMs / 1000).toFixed(1)} s with exit code ${res.exitCode}${res.timedOut ? " (timed out)" : ""}\n`);
    // flint exits 0 when the guest resets the VM; a reset Linux did not ask for is a failed boot.
    return res.exitCode === 0 && unrequestedTripleFault(output) === undefined ? 0 : 1;
  } finally {
    rmSync(share, { recursive: true, force: true });
  }
}

/** The outer VM's shell command for the demo: flint's argv, its stdout and stderr into `log`, and its exit status. */
export function demoNestedCommand(argv: readonly string[], log: string): string {
  return `${argv.map(shellQuote).join(" ")} >${shellQuote(log)} 2>&1`;
}
