/**
 * Device-thread tests: a real worker thread running the echo backend, driven
 * through the MMIO register file (here on the main thread) and the fake
 * guest driver's rings. Without a VM the eventfds are not registered with
 * KVM: a QueueNotify write reaches the transport, which signals the queue's
 * eventfd itself, and the test reads the irqfd eventfd that KVM would have.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  POLLIN, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION,
  VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
  VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS, VIRTIO_RING_F_EVENT_IDX, pollfd,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { sys } from "../../sys/native.js";
import { FakeContext } from "../testing/fake-context.js";
import { VirtioDeviceError, VirtioDeviceHandle } from "./device-thread.js";
import { VirtioMmioTransport } from "./mmio.js";
import { HOST_ERRORS_LOGGED } from "./mmio-state.js";
import { mmioAccess, probeAsLinux } from "./testing/mmio-access.js";
import { ECHO_CONFIG_SCRATCH, ECHO_FAIL_MAGIC, type EchoOptions } from "./testing/test-backend.js";
import { FakeDriver } from "./testing/fake-driver.js";

const ECHO = new URL("./testing/test-backend.js", import.meta.url);
const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
after(() => mem.dispose());

/** Blocks up to `timeoutMs` for `fd` to become readable, then reads its counter (0 on timeout). */
function waitEventfd(fd: number, timeoutMs = 5000): bigint {
  const p = new Uint8Array(pollfd.SIZE);
  const v = new DataView(p.buffer);
  v.setInt32(pollfd.fd, fd, true);
  v.setInt16(pollfd.events, POLLIN, true);
  if (sys.poll(p, 1, timeoutMs) <= 0) return 0n;
  const c = new BigUint64Array(1);
  return sys.read(fd, c, 8) === 8 ? c[0]! : 0n;
}

async function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Starts an echo device and returns a driver-side view: MMIO accessors and the queue's rings. */
async function echoDevice(options: EchoOptions = {}) {
  const faults: string[] = [];
  const hostErrors: string[] = [];
  const dev = new VirtioDeviceHandle({
    name: "virtio-echo", backendModule: ECHO, backendOptions: options, memory: mem.describe(), mmioBase: 0, gsi: 5,
    onGuestFault: (_d, m) => faults.push(m),
    onHostError: (_d, m) => hostErrors.push(m),
  });
  await dev.start();
  const ctx = new FakeContext();
  const t = new VirtioMmioTransport(dev.describe().state, "virtio-echo", ctx);
  const { r, w } = mmioAccess(t);
  /** Linux's virtio_mmio probe + virtio_dev_probe, for queue 0. */
  const bringUp = (features: bigint, drv: FakeDriver) => probeAsLinux(w, features, [drv]);
  return { dev, t, r, w, bringUp, faults, hostErrors, ctx };
}

const V1 = 1n << BigInt(VIRTIO_F_VERSION_1);
const text = (s: string) => new TextEncoder().encode(s);

test("the device thread echoes a chain and interrupts through the irqfd eventfd", async () => {
  const { dev, r, w, bringUp } = await echoDevice();
  try {
    const drv = new FakeDriver(mem, { base: 0x10000, bytes: 0x10000, queueSize: 16 });
    bringUp(V1, drv);
    drv.addChain({ readable: [text("hello, "), text("virtio")], writable: [8, 8] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert.equal(waitEventfd(dev.irqFd), 1n, "one interrupt");
    assert.equal(r(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    w(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert.equal(r(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    const used = drv.popUsed()!;
    assert.equal(used.len, 13);
    assert.equal(new TextDecoder().decode(used.written), "hello, virtio");
    assert.deepEqual(dev.state.stats, { kicks: 1, interrupts: 1, userspaceNotifies: 1, guestFaults: 0, hostErrors: 0 });
  } finally {
    await dev.stop();
  }
});

test("an interrupt the driver has not acknowledged is not signalled again; the first used buffer after the ack is", async () => {
  const { dev, r, w, bringUp } = await echoDevice();
  try {
    const drv = new FakeDriver(mem, { base: 0x10000, bytes: 0x10000, queueSize: 16 });
    bringUp(V1, drv);
    const echo = (s: string) => {
      drv.addChain({ readable: [text(s)], writable: [8] });
      w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    };
    echo("one");
    assert.equal(waitEventfd(dev.irqFd), 1n, "the first used buffer raises the line");
    echo("two");
    await until(() => dev.state.stats.kicks === 2);
    assert.equal(waitEventfd(dev.irqFd, 50), 0n, "no second edge while InterruptStatus still shows the first");
    assert.equal(r(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    // Linux's vm_interrupt: read the status, acknowledge it, then look at the rings.
    w(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert.deepEqual([drv.popUsed(), drv.popUsed()].map((u) => new TextDecoder().decode(u!.written)), ["one", "two"], "both are in the used ring");
    echo("three");
    assert.equal(waitEventfd(dev.irqFd), 1n, "after the ack, the next used buffer raises it again");
    assert.equal(dev.state.stats.interrupts, 2);
  } finally {
    await dev.stop();
  }
});

test("a backend that yields after a batch (ctx.kick) is called again by the device thread until the queue is empty", async () => {
  const { dev, w, bringUp } = await echoDevice({ budget: 2 });
  try {
    const drv = new FakeDriver(mem, { base: 0x10000, bytes: 0x10000, queueSize: 16 });
    bringUp(V1, drv);
    for (let i = 0; i < 5; i++) drv.addChain({ readable: [text(`chain ${i}`)], writable: [8] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    const used: string[] = [];
    await until(() => {
      for (let u = drv.popUsed(); u; u = drv.popUsed()) used.push(new TextDecoder().decode(u.written));
      return used.length === 5;
    });
    assert.deepEqual(used, [0, 1, 2, 3, 4].map((i) => `chain ${i}`));
    // One guest kick, then the thread's own two (after 2 and 4 chains). Each batch raises
    // InterruptStatus, but the driver acknowledges nothing here: one edge on the irqfd.
    await until(() => dev.state.stats.kicks === 3);
    assert.deepEqual(dev.state.stats, { kicks: 3, interrupts: 1, userspaceNotifies: 1, guestFaults: 0, hostErrors: 0 });
  } finally {
    await dev.stop();
  }
});

test("host errors are all counted but only the first HOST_ERRORS_LOGGED reach the main thread; the device keeps working", async () => {
  const { dev, w, bringUp, faults, hostErrors } = await echoDevice({ hostErrorsPerChain: 7 });
  try {
    const drv = new FakeDriver(mem, { base: 0x10000, bytes: 0x10000, queueSize: 16 });
    bringUp(V1, drv);
    for (let i = 0; i < 4; i++) drv.addChain({ readable: [text(`chain ${i}`)], writable: [8] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let used = 0;
    await until(() => {
      while (drv.popUsed()) used++;
      return used === 4 && hostErrors.length === HOST_ERRORS_LOGGED;
    });
    assert.equal(dev.state.stats.hostErrors, 28);
    assert.deepEqual(hostErrors.slice(0, 2), ["host error 0 on chain 1", "host error 1 on chain 1"]);
    assert.deepEqual(faults, [], "a host error is not the guest's fault");
    assert.equal(dev.state.stats.guestFaults, 0);
    // Give stray messages time to arrive: none beyond the limit does.
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(hostErrors.length, HOST_ERRORS_LOGGED);
  } finally {
    await dev.stop();
  }
});

test("with EVENT_IDX, the device interrupts only when the driver's used_event asks", async () => {
  const { dev, w, bringUp } = await echoDevice({ eventIdx: true });
  try {
    const drv = new FakeDriver(mem, { base: 0x10000, bytes: 0x10000, queueSize: 16, features: { eventIdx: true } });
    bringUp(V1 | (1n << BigInt(VIRTIO_RING_F_EVENT_IDX)), drv);
    drv.addChain({ readable: [text("a")], writable: [1] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert.equal(waitEventfd(dev.irqFd), 1n, "interrupt for the first chain");
    w(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert.ok(drv.popUsed());
    drv.setCallbacks(false); // virtqueue_disable_cb
    drv.usedEvent = drv.availIdx + 100; // "interrupt me 100 chains from now"
    drv.addChain({ readable: [text("b")], writable: [1] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    await until(() => drv.popUsed() !== undefined);
    assert.equal(waitEventfd(dev.irqFd, 50), 0n, "no interrupt while used_event is ahead");
    drv.setCallbacks(true);
    drv.addChain({ readable: [text("b")], writable: [1] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert.equal(waitEventfd(dev.irqFd), 1n);
  } finally {
    await dev.stop();
  }
});

test("a reset stops the old session and the device works again after a fresh bring-up", async () => {
  const { dev, r, w, bringUp } = await echoDevice();
  try {
    bringUp(V1, new FakeDriver(mem, { base: 0x10000, bytes: 0x10000, queueSize: 16 }));
    w(VIRTIO_MMIO_STATUS, 0);
    await until(() => dev.state.resetsDone === dev.state.resetsRequested);
    assert.equal(r(VIRTIO_MMIO_STATUS), 0);
    // New rings somewhere else: the device must use these, not the old ones.
    const drv = new FakeDriver(mem, { base: 0x40000, bytes: 0x10000, queueSize: 8 });
    bringUp(V1, drv);
    await until(() => dev.state.resetsDone === dev.state.resetsRequested);
    drv.addChain({ readable: [text("again")], writable: [5] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert.equal(waitEventfd(dev.irqFd), 1n);
    assert.equal(new TextDecoder().decode(drv.popUsed()!.written), "again");
  } finally {
    await dev.stop();
  }
});

test("a broken ring puts the device in NEEDS_RESET with a config interrupt, and the thread survives", async () => {
  const { dev, r, w, bringUp } = await echoDevice();
  try {
    const drv = new FakeDriver(mem, { base: 0x10000, bytes: 0x10000, queueSize: 16 });
    bringUp(V1, drv);
    drv.setAvailIdx(1000); // far more chains than the ring holds
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert.equal(waitEventfd(dev.irqFd), 1n);
    assert.ok(r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET);
    assert.equal(r(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    await until(() => dev.failures.length === 1);
    // Recovery: reset and bring up again.
    const drv2 = new FakeDriver(mem, { base: 0x40000, bytes: 0x10000, queueSize: 16 });
    bringUp(V1, drv2);
    await until(() => dev.state.resetsDone === dev.state.resetsRequested);
    drv2.addChain({ readable: [text("ok")], writable: [2] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert.equal(waitEventfd(dev.irqFd), 1n);
    assert.equal(r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
  } finally {
    await dev.stop();
  }
});

test("driver config writes reach the backend; device config changes bump ConfigGeneration", async () => {
  const { dev, r, w, bringUp } = await echoDevice({ configEvery: 1 });
  try {
    const drv = new FakeDriver(mem, { base: 0x10000, bytes: 0x10000, queueSize: 16 });
    bringUp(V1, drv);
    const gen = r(VIRTIO_MMIO_CONFIG_GENERATION);
    drv.addChain({ readable: [text("x")], writable: [1] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert.ok(waitEventfd(dev.irqFd) >= 1n);
    await until(() => (r(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG) !== 0);
    assert.notEqual(r(VIRTIO_MMIO_CONFIG_GENERATION), gen);
    assert.equal(r(VIRTIO_MMIO_CONFIG), 1, "chains echoed, published in config space");
    w(VIRTIO_MMIO_CONFIG + ECHO_CONFIG_SCRATCH, ECHO_FAIL_MAGIC);
    await until(() => dev.failures.length === 1);
    assert.match(dev.failures[0]!, /asked the echo device to fail/);
  } finally {
    await dev.stop();
  }
});

test("stop() resolves after the backend's shutdown ran", async () => {
  const dir = mkdtempSync(join(tmpdir(), "flint-virtio-"));
  try {
    const marker = join(dir, "shutdown");
    const { dev } = await echoDevice({ shutdownMarker: marker });
    assert.equal(existsSync(marker), false);
    await dev.stop();
    assert.equal(readFileSync(marker, "utf8"), "chains 0\n");
    assert.equal(dev.state.threadRunning, false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a backend module that cannot be loaded fails start() with a stable code", async () => {
  const dev = new VirtioDeviceHandle({
    name: "virtio-missing", backendModule: new URL("./no-such-backend.js", import.meta.url), memory: mem.describe(), mmioBase: 0, gsi: 5,
  });
  await assert.rejects(dev.start(), (e: unknown) => e instanceof VirtioDeviceError && e.code === "EVIRTIOBACKEND" && /virtio-missing/.test(e.message));
  await dev.stop();
});
