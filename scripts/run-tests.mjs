#!/usr/bin/env node
// Runs every test file under dist/ with node's test runner: unit tests,
// direct-KVM tests (ring-3 guest programs) and nested end-to-end tests
// (real Linux in QEMU with KVM inside).
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

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
