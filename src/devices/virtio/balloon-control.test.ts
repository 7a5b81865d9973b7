/**
 * The balloon's run-time controls through a real device thread: requests
 * travel to the worker, are answered between guest events, and a new target
 * reaches the driver as config space plus a config-change interrupt.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import {
  POLLIN, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_F_VERSION_1, VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL,
  VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_STATUS, pollfd, virtio_balloon_config,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { sys } from "../../sys/native.js";
import { FakeContext } from "../testing/fake-context.js";
import { BALLOON_PAGE_SIZE } from "./balloon.js";
import { BalloonControl } from "./balloon-control.js";
import { VirtioDeviceHandle } from "./device-thread.js";
import { VirtioMmioTransport } from "./mmio.js";
import { mmioAccess } from "./testing/mmio-access.js";

const GUEST_MIB = 2;
const mem = GuestMemory.create([{ guestBase: 0, size: GUEST_MIB << 20 }]);
after(() => mem.dispose());
const pagesPerMib = (1 << 20) / BALLOON_PAGE_SIZE;

function readableWithin(fd: number, timeoutMs: number): boolean {
  const p = new Uint8Array(pollfd.SIZE);
  const v = new DataView(p.buffer);
  v.setInt32(pollfd.fd, fd, true);
  v.setInt16(pollfd.events, POLLIN, true);
  if (sys.poll(p, 1, timeoutMs) <= 0) return false;
  sys.read(fd, new BigUint64Array(1), 8);
  return true;
}

async function balloonDevice(backendModule = new URL("./balloon.js", import.meta.url)) {
  const dev = new VirtioDeviceHandle({ name: "virtio-balloon", backendModule, backendOptions: { targetMib: 1 }, memory: mem.describe(), mmioBase: 0, gsi: 5 });
  await dev.start();
  const t = new VirtioMmioTransport(dev.describe().state, "virtio-balloon", new FakeContext());
  const { r, w } = mmioAccess(t);
  /** The driver's bring-up with no queues made ready: enough for config space and its interrupt. */
  const driverOk = () => {
    const s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    w(VIRTIO_MMIO_STATUS, 0);
    w(VIRTIO_MMIO_STATUS, s);
    w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    w(VIRTIO_MMIO_DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
    w(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
    w(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
  };
  return { dev, r, w, driverOk, control: new BalloonControl(dev, GUEST_MIB) };
}

test("a target set before the driver is up is kept, and reaches config space on DRIVER_OK", async () => {
  const { dev, r, driverOk, control } = await balloonDevice();
  try {
    assert.equal((await control.info()).targetMib, 1, "the configured initial target");
    const info = await control.setTarget(2);
    assert.equal(info.targetMib, 2);
    assert.equal(info.actualMib, 0);
    driverOk();
    // The device thread writes the new target on activation and tells the driver.
    const deadline = Date.now() + 5000;
    while (r(VIRTIO_MMIO_CONFIG + virtio_balloon_config.num_pages) !== 2 * pagesPerMib && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 5));
    }
    assert.equal(r(VIRTIO_MMIO_CONFIG + virtio_balloon_config.num_pages), 2 * pagesPerMib);
  } finally {
    await dev.stop();
  }
});

test("a target set while the driver runs raises a config-change interrupt; the driver's `actual` is reported back", async () => {
  const { dev, r, w, driverOk, control } = await balloonDevice();
  try {
    driverOk();
    await control.info(); // the activation (and its own config interrupt) is done once the thread answers
    readableWithin(dev.irqFd, 0);
    await control.setTarget(0);
    assert.ok(readableWithin(dev.irqFd, 5000), "config-change interrupt");
    assert.ok(r(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG);
    assert.equal(r(VIRTIO_MMIO_CONFIG + virtio_balloon_config.num_pages), 0);
    w(VIRTIO_MMIO_CONFIG + virtio_balloon_config.actual, pagesPerMib / 2);
    const info = await control.info();
    assert.equal(info.actualPages, pagesPerMib / 2);
    assert.equal(info.actualMib, 0.5);
    await assert.rejects(control.waitForTarget({ timeoutMs: 50, intervalMs: 10 }), { code: "EBALLOONTIMEOUT" });
    w(VIRTIO_MMIO_CONFIG + virtio_balloon_config.actual, 0);
    assert.equal((await control.waitForTarget({ timeoutMs: 5000, intervalMs: 10 })).actualMib, 0);
  } finally {
    await dev.stop();
  }
});

test("bad targets are refused with a one-line error and change nothing", async () => {
  const { dev, control } = await balloonDevice();
  try {
    for (const bad of [-1, 1.5, GUEST_MIB + 1, Number.NaN]) {
      await assert.rejects(control.setTarget(bad), (e: Error & { code?: string }) => e.code === "EBALLOONTARGET" && !e.message.includes("\n"));
    }
    await assert.rejects(dev.request("setTarget", { targetMib: "lots" }), { code: "EVIRTIOREQUEST", message: /targetMib must be a number/ });
    await assert.rejects(dev.request("explode"), { code: "EVIRTIOREQUEST", message: /unknown request 'explode'/ });
    assert.equal((await control.info()).targetMib, 1);
  } finally {
    await dev.stop();
  }
});

test("requests to a device without controls, or to a stopped device, are refused", async () => {
  const echo = await balloonDevice(new URL("./testing/test-backend.js", import.meta.url));
  await assert.rejects(echo.dev.request("info"), { code: "EVIRTIOREQUEST", message: /does not take requests/ });
  await echo.dev.stop();
  const { dev, control } = await balloonDevice();
  await dev.stop();
  await assert.rejects(control.info(), { code: "EVIRTIOREQUEST", message: /not running/ });
});
