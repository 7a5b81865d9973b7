/**
 * A device thread shared by several VMs (DeviceThread `shared`, the process's
 * device thread of MachineConfig.deviceThread "process"; issue 10): devices of
 * another VM join it while the first VM's devices run, each batch starts on
 * the same worker, one VM's devices stop while the other's keep working, and
 * the thread stays up without devices, waiting for more, without keeping the
 * process alive. Echo backends in the real thread (testing/device-loop-rig.ts).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { GuestMemory } from "../../memory/guest-memory.js";
import { DeviceThread, processDeviceThread, VirtioDeviceError, VirtioDeviceHandle } from "./device-thread.js";
import { DeviceLoopRig, VIRTIO_V1 } from "./testing/device-loop-rig.js";

const ECHO = new URL("./testing/test-backend.js", import.meta.url);

/** Brings `rig` up with one queue (once) and sends it one chain; resolves with what the echo device wrote back. */
async function send(rig: DeviceLoopRig, bytes: Uint8Array, writable: number): Promise<Uint8Array> {
  let drv = rig.drivers[0];
  if (!drv) {
    drv = rig.newDriver(0, { queueSize: 16 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
  }
  const before = drv.usedIdx;
  drv.addChain({ readable: [bytes], writable: [writable] });
  rig.kick(0);
  await rig.until(() => drv.usedIdx !== before, `${rig.dev.spec.name} answers`);
  return drv.popUsed()!.written;
}

/** The count of chains the device's thread had served before this one (the echo backend's stampThreadChains). */
async function threadChains(rig: DeviceLoopRig): Promise<number> {
  const w = await send(rig, new Uint8Array(0), 4);
  return new DataView(w.buffer, w.byteOffset, 4).getUint32(0, true);
}

test("devices of a second VM join a shared thread while the first VM's run, on the same worker; each VM stops alone and the thread waits for more", async () => {
  const dir = mkdtempSync(join(tmpdir(), "flint-process-thread-"));
  const thread = new DeviceThread("test shared thread", { shared: true });
  let exited = false;
  try {
    const [a1, a2] = await DeviceLoopRig.startShared([
      { backendModule: ECHO, backendOptions: { stampThreadChains: true, shutdownMarker: join(dir, "a1") }, name: "vm-a-echo-1" },
      { backendModule: ECHO, backendOptions: { stampThreadChains: true }, name: "vm-a-echo-2" },
    ], thread);
    void thread.exited.then(() => (exited = true));
    assert.equal(await threadChains(a1!), 0);
    assert.equal(await threadChains(a2!), 1);

    // VM b's devices arrive while VM a's run: one more batch on the same worker, whose
    // module-level count (the echo backend's) already holds VM a's chains.
    const [b1] = await DeviceLoopRig.startShared([
      { backendModule: ECHO, backendOptions: { stampThreadChains: true, shutdownMarker: join(dir, "b1") }, name: "vm-b-echo-1" },
    ], thread);
    assert.equal(b1!.dev.thread, thread);
    assert.equal(await threadChains(b1!), 2, "VM b's device runs in the isolate that served VM a's");
    assert.deepEqual(thread.devices, [a1!.dev, a2!.dev, b1!.dev]);

    // VM a stops: its backends shut down, VM b's device keeps working, and the thread runs on.
    await a1!.stop();
    await a2!.stop();
    assert.equal(readFileSync(join(dir, "a1"), "utf8"), "chains 1\n", "a1's shutdown ran");
    assert.equal(existsSync(join(dir, "b1")), false);
    assert.equal(await threadChains(b1!), 3);
    assert.deepEqual(thread.devices, [b1!.dev], "the thread forgets devices it let go of");

    // Its last device stopped: the thread waits, and a third VM's device starts on it.
    await b1!.stop();
    assert.equal(readFileSync(join(dir, "b1"), "utf8"), "chains 2\n", "b1's shutdown ran");
    assert.deepEqual(thread.devices, []);
    const [c1] = await DeviceLoopRig.startShared([{ backendModule: ECHO, backendOptions: { stampThreadChains: true }, name: "vm-c-echo-1" }], thread);
    assert.equal(await threadChains(c1!), 4, "the same isolate, after it had no devices");
    await c1!.stop();
    assert.equal(exited, false, "a shared thread does not end with its devices");
    assert.equal(thread.gone, false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("on a shared thread, a device whose backend cannot be created fails its own start; the rest of its batch and the running devices work", async () => {
  const thread = new DeviceThread("test shared thread", { shared: true });
  const [first] = await DeviceLoopRig.startShared([{ backendModule: ECHO, backendOptions: { stampThreadChains: true }, name: "first" }], thread);
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
  const bad = new VirtioDeviceHandle({
    name: "virtio-missing", backendModule: new URL("./no-such-backend.js", import.meta.url), memory: mem.describe(), mmioBase: 0, gsi: 5, thread,
  });
  try {
    const [late] = await DeviceLoopRig.startShared([{ backendModule: ECHO, backendOptions: { stampThreadChains: true }, name: "late" }], thread);
    await assert.rejects(bad.start(), (e: unknown) => e instanceof VirtioDeviceError && e.code === "EVIRTIOBACKEND" && /virtio-missing/.test(e.message));
    assert.equal(await threadChains(first!), 0);
    assert.equal(await threadChains(late!), 1);
    await late!.stop();
  } finally {
    await bad.stop();
    await first!.stop();
    mem.dispose();
  }
});

test("a device cannot join a shared thread that is gone; processDeviceThread() then gives a new one", async () => {
  const first = processDeviceThread();
  assert.equal(processDeviceThread(), first, "one per process");
  assert.equal(first.shared, true);
  const [rig] = await DeviceLoopRig.startShared([{ backendModule: ECHO, backendOptions: { exitThreadOnNotify: true }, name: "victim" }], first);
  // The thread dies under its device (as a crash would end it): the device no longer runs there, and the thread is gone.
  const drv = rig!.newDriver(0, { queueSize: 16 });
  rig!.bringUp({ features: VIRTIO_V1, drivers: [drv] });
  drv.addChain({ readable: [new Uint8Array(1)], writable: [1] });
  rig!.kick(0);
  await first.exited;
  assert.equal(first.gone, true);
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
  try {
    assert.throws(
      () => new VirtioDeviceHandle({ name: "virtio-late", backendModule: ECHO, memory: mem.describe(), mmioBase: 0, gsi: 6, thread: first }),
      (e: unknown) => e instanceof VirtioDeviceError && e.code === "EVIRTIOSTATE" && /exited/.test(e.message),
    );
    const second = processDeviceThread();
    assert.notEqual(second, first);
    const [again] = await DeviceLoopRig.startShared([{ backendModule: ECHO, backendOptions: { stampThreadChains: true }, name: "again" }], second);
    assert.equal(await threadChains(again!), 0);
    await again!.stop();
  } finally {
    await rig!.stop();
    mem.dispose();
  }
});

test("a VM whose guest floods its device on a shared thread does not keep another VM's devices from joining and being served", async () => {
  const thread = new DeviceThread("test shared thread", { shared: true });
  const [a] = await DeviceLoopRig.startShared([{ backendModule: ECHO, backendOptions: { budget: 8 }, name: "flooded" }], thread);
  try {
    // A ring of 128 chains kept full: the flooded device always has more than a budget of work.
    const drv = a!.newDriver(0, { queueSize: 256, heapBytes: 4 << 20 });
    a!.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    const heads = Array.from({ length: 128 }, () => drv.addChain({ readable: [new Uint8Array(4096)], writable: [4096] }, false));
    const flood = await a!.flood(0, { heads });
    await a!.until(() => flood.added > 1000, "the flood is under way");
    // Another VM's device joins the busy thread, starts, and is served while the flood goes on.
    const [b] = await DeviceLoopRig.startShared([{ backendModule: ECHO, name: "joined" }], thread);
    const w = await send(b!, new TextEncoder().encode("served"), 6);
    assert.equal(new TextDecoder().decode(w), "served");
    const added = flood.added;
    await a!.until(() => flood.added > added, "the flood still goes on");
    await flood.stop();
    await b!.stop();
  } finally {
    await a!.stop();
  }
});

test("a shared thread whose devices all stopped does not keep the process alive", () => {
  // A child process starts a device on the process's device thread, stops it, and returns from its
  // script: it must exit by itself (a ref'd idle worker would keep it running until the timeout).
  const script = `
    import { DeviceLoopRig } from ${JSON.stringify(new URL("./testing/device-loop-rig.js", import.meta.url).href)};
    import { processDeviceThread } from ${JSON.stringify(new URL("./device-thread.js", import.meta.url).href)};
    const [rig] = await DeviceLoopRig.startShared([{ backendModule: new URL(${JSON.stringify(ECHO.href)}), name: "child" }], processDeviceThread());
    await rig.stop();
    console.log("stopped");
  `;
  const dir = mkdtempSync(join(tmpdir(), "flint-process-thread-"));
  try {
    writeFileSync(join(dir, "child.mjs"), script);
    const r = spawnSync(process.execPath, [join(dir, "child.mjs")], { encoding: "utf8", timeout: 30_000 });
    assert.equal(r.error, undefined, `the child did not exit by itself: ${r.error?.message}`);
    assert.equal(r.stdout.trim(), "stopped", r.stderr);
    assert.equal(r.status, 0, r.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
