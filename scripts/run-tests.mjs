#!/usr/bin/env node
// README's test command runs this (after `npm run build`): it prepares the
// slow, cached guest artifacts once — flint's minimal guest kernel and
// Debian's distro kernel — so that test files running in parallel never race
// to build them, then runs every test file under dist/ with node's test
// runner: unit tests, direct-KVM tests (ring-3 guest programs) and nested
// end-to-end tests (real Linux in QEMU with KVM inside).
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const { buildKernel } = await import("../dist/guest/kernel-build.js");
const { debianKernel } = await import("../dist/guest/debian-kernel.js");
let lastPhase = "";
const onProgress = (p) => {
  if (p.phase !== lastPhase || (p.done !== undefined && p.total && p.done % 500 === 0)) console.log(`[prepare] ${p.message}`);
  lastPhase = p.phase;
};
const t0 = Date.now();
const kernel = await buildKernel({ onProgress });
const debian = await debianKernel({ onProgress });
console.log(`[prepare] guest kernels ready in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${kernel.vmlinux}, ${debian.vmlinuz}`);

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
