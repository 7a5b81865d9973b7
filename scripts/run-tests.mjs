#!/usr/bin/env node
// README's test command runs this (after `npm run build`): it prepares the
// slow, cached guest artifacts once — flint's minimal guest kernel, the same
// kernel without ACPI, and Debian's distro kernel — so that test files running
// in parallel never race to build them, then runs every test file under dist/ with node's test
// runner: unit tests, direct-KVM tests (ring-3 guest programs) and nested
// end-to-end tests (real Linux in QEMU with KVM inside).
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const { buildKernel } = await import("../dist/guest/kernel-build.js");
const { debianKernel } = await import("../dist/guest/debian-kernel.js");
const { lineProgress } = await import("../dist/guest/progress.js");
// One line per phase and per 10 % of a long one, for each artifact: CI logs show the build moving.
const onProgress = () => lineProgress(process.stdout, "[prepare] ");
const t0 = Date.now();
const kernel = await buildKernel({ onProgress: onProgress() });
// The same kernel built without ACPI: e2e tests check that such a kernel finds every device.
const noAcpi = await buildKernel({ variant: "no-acpi", onProgress: onProgress() });
const debian = await debianKernel({ onProgress: onProgress() });
console.log(`[prepare] guest kernels ready in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${kernel.vmlinux}, ${noAcpi.vmlinux}, ${debian.vmlinuz}`);

function find(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) find(p, out);
    else if (name.endsWith(".test.js")) out.push(p);
  }
  return out;
}
const files = find("dist").sort();
const r = spawnSync(process.execPath, ["--test", "--test-concurrency=2", ...files], { stdio: "inherit" });
process.exit(r.status ?? 1);
