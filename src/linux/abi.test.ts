import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { KVM_RUN, kvm_run, KVM_API_VERSION } from "./abi.generated.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

test("the committed ABI file matches what this machine's headers generate", () => {
  const r = spawnSync(process.execPath, [join(root, "scripts/gen-abi.mjs"), "--check"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr + r.stdout);
});

test("generated values are the kernel's (spot checks against api.rst)", () => {
  assert.equal(KVM_API_VERSION, 12);
  assert.equal(KVM_RUN, 0xae80); // _IO(KVMIO, 0x80)
  assert.equal(kvm_run.exit_reason, 8);
});
