/**
 * The --disk value's options, and what they become in the VM's device list.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { DeviceArgError, parseDisk, virtioDevicesFromFlags } from "./devices.js";

test("--disk takes ro/rw and thread=own|shared in any order", () => {
  assert.deepEqual(parseDisk("a.img"), { path: "a.img", readOnly: false, thread: "shared" });
  assert.deepEqual(parseDisk("a.img,ro,thread=own"), { path: "a.img", readOnly: true, thread: "own" });
  assert.deepEqual(parseDisk("a.img,thread=own,rw,thread=shared"), { path: "a.img", readOnly: false, thread: "shared" });
  assert.throws(() => parseDisk("a.img,thread=mine"), (e: unknown) => e instanceof DeviceArgError && /unknown option 'thread=mine'/.test(e.message));
});

test("a disk with thread=own is placed on its own device thread; the others stay on the shared one", () => {
  const dir = mkdtempSync(join(tmpdir(), "flint-disk-"));
  try {
    const [a, b] = [join(dir, "a.img"), join(dir, "b.img")];
    writeFileSync(a, Buffer.alloc(512));
    writeFileSync(b, Buffer.alloc(512));
    const devices = virtioDevicesFromFlags({ disk: [`${a},thread=own`, b], rng: true });
    assert.deepEqual(devices.map((d) => d.thread), ["own", undefined, undefined]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
