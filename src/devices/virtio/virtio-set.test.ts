/**
 * virtio devices in a whole machine, on this host's KVM: a ring-3 guest
 * program is a polled virtio driver for the echo device (MMIO registers on
 * the vCPU thread, the kick through KVM_IOEVENTFD, the device thread, the
 * interrupt through KVM_IRQFD), and powers off through ACPI S5.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import {
  VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_F_VERSION_1, VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
  VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY,
  VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH,
  VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VIRTIO_ID_RNG, VIRTIO_MMIO_DEVICE_ID,
  VIRTIO_MMIO_VERSION,
  vring_avail, vring_desc, vring_used, vring_used_elem,
} from "../../linux/abi.generated.js";
import {
  DEBUG_EXIT_PORT, FIRST_DEVICE_IRQ, GED_GSI, IOAPIC_START, VIRTIO_MMIO_BASE, VIRTIO_MMIO_CMDLINE_BASE, VIRTIO_MMIO_SIZE,
} from "../../arch/x86_64/layout.js";
import { assemble } from "../../kvm/testing/assemble.js";
import { RING3_LAYOUT } from "../../arch/x86_64/ring3.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { Machine } from "../../vm/machine.js";
import { VIRTIO_MMIO_MAGIC, VirtioMmioTransport } from "./mmio.js";
import { Bus, type BusDevice } from "../bus.js";
import { FakeContext } from "../testing/fake-context.js";
import { createTransportShared, TransportState } from "./mmio-state.js";
import { FakeDriver } from "./testing/fake-driver.js";
import { mmioAccess, probeAsLinux } from "./testing/mmio-access.js";
import {
  devicePlacement, insertVirtioTransports, MAX_VIRTIO_DEVICES, VirtioSet, VIRTIO_MMIO_ACPI_HID, virtioAnnouncement, virtioCmdlineParam, virtioDsdtDevices, virtioSlot,
} from "./virtio-set.js";

const ECHO = new URL("./testing/test-backend.js", import.meta.url);

test("device i sits at its own window, a command-line window and a GSI, and is announced as virtio_mmio.device=4K@base:gsi", () => {
  assert.deepEqual(virtioSlot(0), { mmioBase: VIRTIO_MMIO_BASE, cmdlineBase: VIRTIO_MMIO_CMDLINE_BASE, gsi: FIRST_DEVICE_IRQ });
  assert.deepEqual(virtioSlot(2), {
    mmioBase: VIRTIO_MMIO_BASE + 2 * VIRTIO_MMIO_SIZE, cmdlineBase: VIRTIO_MMIO_CMDLINE_BASE + 2 * VIRTIO_MMIO_SIZE, gsi: FIRST_DEVICE_IRQ + 2,
  });
  assert.equal(virtioCmdlineParam(0), "virtio_mmio.device=4K@0xd0001000:5");
  assert.equal(virtioCmdlineParam(1, "second-window"), "virtio_mmio.device=4K@0xd0101000:6");
  assert.equal(MAX_VIRTIO_DEVICES, 18);
  const last = virtioSlot(MAX_VIRTIO_DEVICES - 1);
  assert.ok(last.gsi < GED_GSI, "the last device's GSI is below the Generic Event Device's");
  assert.ok(last.mmioBase + VIRTIO_MMIO_SIZE <= VIRTIO_MMIO_CMDLINE_BASE, "device windows end below the command-line windows");
  assert.ok(last.cmdlineBase + VIRTIO_MMIO_SIZE <= IOAPIC_START, "command-line windows end below the IOAPIC");
});

test("with ACPI tables each device is announced in the DSDT and, at its second window, on the command line; without, on the command line", () => {
  assert.deepEqual(virtioAnnouncement("auto", true), { cmdline: "second-window", dsdt: true });
  assert.deepEqual(virtioAnnouncement("auto", false), { cmdline: "same-window", dsdt: false });
  assert.deepEqual(virtioAnnouncement("dsdt", false), { cmdline: "none", dsdt: false }, "no DSDT without ACPI");
  assert.deepEqual(virtioAnnouncement("cmdline+dsdt", true), { cmdline: "same-window", dsdt: true });
  const aml = virtioDsdtDevices(2);
  assert.equal(aml.length, 2);
  const text = Buffer.from(aml[1]!).toString("latin1");
  assert.ok(text.includes("V001") && text.includes(VIRTIO_MMIO_ACPI_HID), text);
});

test("the command-line window is the device's registers, but reads DeviceID 0 once a driver started through either window", () => {
  const sab = createTransportShared();
  new TransportState(sab).initDevice({ deviceId: VIRTIO_ID_RNG, deviceFeatures: 0n, queueMaxSizes: [64], config: new Uint8Array(0) });
  const { mmioBase, cmdlineBase } = virtioSlot(0);
  const bus = new Bus();
  insertVirtioTransports(bus, [{ name: "virtio-rng", mmioBase, mmioSize: VIRTIO_MMIO_SIZE, state: sab, cmdlineBase }], new FakeContext());
  const window = (base: number): BusDevice => ({ read: (o, d) => void bus.read(base + o, d), write: (o, d) => void bus.write(base + o, d) });
  const dsdt = mmioAccess(window(mmioBase));
  const cmdline = mmioAccess(window(cmdlineBase));
  // A kernel without ACPI probes only the command-line window: a fresh device, its real ID.
  assert.equal(cmdline.r(VIRTIO_MMIO_MAGIC_VALUE), VIRTIO_MMIO_MAGIC);
  assert.equal(cmdline.r(VIRTIO_MMIO_VERSION), 2);
  assert.equal(cmdline.r(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG);
  // A kernel with ACPI registers the DSDT's device first (reset, then ACKNOWLEDGE)...
  assert.equal(dsdt.r(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG);
  dsdt.w(VIRTIO_MMIO_STATUS, 0);
  dsdt.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
  // ...then probes the command-line window: a placeholder (§4.2.2), which Linux skips quietly.
  assert.equal(cmdline.r(VIRTIO_MMIO_MAGIC_VALUE), VIRTIO_MMIO_MAGIC);
  assert.equal(cmdline.r(VIRTIO_MMIO_DEVICE_ID), 0);
  assert.equal(dsdt.r(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG, "the DSDT's window keeps its ID");
  assert.equal(cmdline.r(VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE, "the other registers are the device's");
  dsdt.w(VIRTIO_MMIO_STATUS, 0);
  assert.equal(cmdline.r(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG, "after a reset the device is free again");
});

test("too many virtio devices is a configuration error", () => {
  assert.throws(
    () => Machine.create({
      cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: new Uint8Array([0xf4]) },
      virtioDevices: Array.from({ length: MAX_VIRTIO_DEVICES + 1 }, () => ({ kind: "rng" as const, options: {}, backendModule: ECHO })),
    }),
    (e: unknown) => (e as { code?: string }).code === "EVIRTIOCOUNT",
  );
});

/** Guest addresses of the ring-3 driver's queue and buffers. */
const QSIZE = 16;
const DESC = 0x100000;
const AVAIL = 0x100100;
const USED = 0x100200;
const OUT = 0x102000;
const OUT_BYTES = 64;
const MESSAGE = "hello from a ring-3 virtio driver";

/** A polled virtio driver for the echo device at `base`; on a failed check, exits with its number on the debug-exit port. */
function driverProgram(base: number): string {
  const reg = (off: number) => `[rbx + ${off}]`;
  const S1 = VIRTIO_CONFIG_S_ACKNOWLEDGE, S2 = S1 | VIRTIO_CONFIG_S_DRIVER, S3 = S2 | VIRTIO_CONFIG_S_FEATURES_OK, S4 = S3 | VIRTIO_CONFIG_S_DRIVER_OK;
  return `
       mov rbx, ${base}
       mov eax, dword ptr ${reg(VIRTIO_MMIO_MAGIC_VALUE)}
       cmp eax, ${VIRTIO_MMIO_MAGIC}
       mov cl, 1
       jne 9f
       mov dword ptr ${reg(VIRTIO_MMIO_STATUS)}, ${S1}
       mov dword ptr ${reg(VIRTIO_MMIO_STATUS)}, ${S2}
       mov dword ptr ${reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL)}, 1
       mov dword ptr ${reg(VIRTIO_MMIO_DRIVER_FEATURES)}, ${1 << (VIRTIO_F_VERSION_1 - 32)}
       mov dword ptr ${reg(VIRTIO_MMIO_STATUS)}, ${S3}
       mov eax, dword ptr ${reg(VIRTIO_MMIO_STATUS)}
       cmp eax, ${S3}
       mov cl, 2
       jne 9f
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_SEL)}, 0
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_NUM)}, ${QSIZE}
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_DESC_LOW)}, ${DESC}
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_DESC_HIGH)}, 0
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_AVAIL_LOW)}, ${AVAIL}
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_AVAIL_HIGH)}, 0
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_USED_LOW)}, ${USED}
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_USED_HIGH)}, 0
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_READY)}, 1
       mov dword ptr ${reg(VIRTIO_MMIO_STATUS)}, ${S4}
       # descriptor 0: the message, device-readable, chained to 1
       lea rax, [rip + msg]
       mov qword ptr [${DESC} + ${vring_desc.addr}], rax
       mov dword ptr [${DESC} + ${vring_desc.len}], ${MESSAGE.length}
       mov word ptr [${DESC} + ${vring_desc.flags}], ${VRING_DESC_F_NEXT}
       mov word ptr [${DESC} + ${vring_desc.next}], 1
       # descriptor 1: the answer buffer, device-writable
       mov qword ptr [${DESC + vring_desc.SIZE} + ${vring_desc.addr}], ${OUT}
       mov dword ptr [${DESC + vring_desc.SIZE} + ${vring_desc.len}], ${OUT_BYTES}
       mov word ptr [${DESC + vring_desc.SIZE} + ${vring_desc.flags}], ${VRING_DESC_F_WRITE}
       mov word ptr [${AVAIL} + ${vring_avail.ring}], 0
       mov word ptr [${AVAIL} + ${vring_avail.idx}], 1
       # kick: KVM_IOEVENTFD turns this store into an eventfd signal, no exit
       mov dword ptr ${reg(VIRTIO_MMIO_QUEUE_NOTIFY)}, 0
    1: pause
       movzx eax, word ptr [${USED} + ${vring_used.idx}]
       cmp eax, 1
       jne 1b
       cmp dword ptr [${USED} + ${vring_used.ring} + ${vring_used_elem.len}], ${MESSAGE.length}
       mov cl, 3
       jne 9f
       lea rsi, [rip + msg]
       mov rdi, ${OUT}
       mov ecx, ${MESSAGE.length}
       repe cmpsb
       mov cl, 4
       jne 9f
       # INT_VRING is set right after the used ring is written (then the irqfd):
       # poll for it (interrupts are off in ring 3), counting reads in r12d
       xor r12d, r12d
    4: inc r12d
       mov eax, dword ptr ${reg(VIRTIO_MMIO_INTERRUPT_STATUS)}
       test eax, ${VIRTIO_MMIO_INT_VRING}
       jz 4b
       mov dword ptr ${reg(VIRTIO_MMIO_INTERRUPT_ACK)}, ${VIRTIO_MMIO_INT_VRING}
       # report the poll count on the UART, 4 bytes little-endian
       mov dx, 0x3f8
       mov eax, r12d
       mov ecx, 4
    5: out dx, al
       shr eax, 8
       loop 5b
       mov dx, 0x600          # ACPI S5: SLP_TYP 5 | SLP_EN
       mov al, 0x34
       out dx, al
    2: jmp 2b
    9: mov al, cl             # failure: report which check failed on the debug-exit port
       out ${DEBUG_EXIT_PORT}, al
    3: jmp 3b
  msg: .ascii "${MESSAGE}"`;
}

test("a ring-3 guest driver echoes through the device thread: kick by ioeventfd (no exit), interrupt by irqfd", async () => {
  const source = driverProgram(VIRTIO_MMIO_BASE);
  const program = assemble(source, RING3_LAYOUT.code);
  const faults: string[] = [];
  const out: Buffer[] = [];
  const m = Machine.create({
    cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, debugExit: true,
    consoleOutput: new Writable({ write: (c: Buffer, _e, cb) => (out.push(Buffer.from(c)), cb()) }),
    virtioDevices: [{ kind: "rng", options: {}, backendModule: ECHO }],
    onGuestFault: (d, msg) => faults.push(`${d}: ${msg}`),
  });
  const t0 = process.hrtime.bigint();
  const r = await m.run();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  assert.deepEqual(r.reason, { kind: "poweroff" }, `failed check ${r.debugExit?.status}\n${faults.join("\n")}`);
  assert.deepEqual(faults, []);
  const dev = r.virtio[0]!;
  assert.equal(dev.kicks, 1, "the device thread saw the kick");
  assert.equal(dev.userspaceNotifies, 0, "the kick never reached the register file");
  assert.equal(dev.interrupts, 1, "one interrupt through the irqfd");
  // Every register access is one MMIO exit — the InterruptStatus poll once per read —
  // except the QueueNotify store, which KVM turned into an eventfd signal.
  const polls = Buffer.concat(out).readUInt32LE(0);
  const registerAccesses = (source.match(/\[rbx \+/g) ?? []).length + polls - 1;
  assert.equal(r.stats[0]!.mmioExits, registerAccesses - 1, JSON.stringify(r.stats[0]));
  console.log(`# ring-3 virtio round trip: ${r.stats[0]!.mmioExits} MMIO exits for ${registerAccesses} register accesses (${polls} status polls), VM run ${ms.toFixed(1)} ms`);
});

for (const thread of ["shared", "own"] as const) {
  test(`two virtio devices coexist, the second on ${thread === "own" ? "a thread of its own" : "the shared device thread"}: each has its own window and eventfds`, async () => {
    const source = driverProgram(VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE);
    const m = Machine.create({
      cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: assemble(source, RING3_LAYOUT.code) }, debugExit: true,
      virtioDevices: [{ kind: "rng", options: {}, backendModule: ECHO }, { kind: "rng", options: {}, backendModule: ECHO, thread }],
    });
    const r = await m.run();
    assert.deepEqual(r.reason, { kind: "poweroff" }, `failed check ${r.debugExit?.status}`);
    assert.equal(r.virtio[0]!.kicks, 0);
    assert.equal(r.virtio[1]!.kicks, 1);
    assert.equal(r.virtio[1]!.interrupts, 1);
    assert.deepEqual(r.unstoppedDevices, []);
  });
}

test("devices share one device thread unless placed on their own", () => {
  assert.deepEqual(devicePlacement([]), { threadOf: [], threads: 0, shared: undefined });
  assert.deepEqual(devicePlacement([{}, { thread: "shared" }, {}]), { threadOf: [0, 0, 0], threads: 1, shared: 0 });
  assert.deepEqual(devicePlacement([{ thread: "own" }, {}, { thread: "own" }, {}]), { threadOf: [0, 1, 2, 1], threads: 3, shared: 1 });
  assert.deepEqual(devicePlacement([{ thread: "own" }, { thread: "own" }]), { threadOf: [0, 1], threads: 2, shared: undefined });
});

test("a device placed on its own thread runs there, and the shared thread carries the others", async () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
  const set = new VirtioSet([
    { kind: "rng", options: {}, backendModule: ECHO },
    { kind: "rng", options: {}, backendModule: ECHO, thread: "own" },
    { kind: "rng", options: {}, backendModule: ECHO },
  ], mem.describe(), undefined);
  try {
    assert.equal(set.threads.length, 2);
    const [d0, d1, d2] = set.devices;
    assert.equal(d0!.thread, d2!.thread);
    assert.notEqual(d1!.thread, d0!.thread);
    assert.deepEqual(d1!.thread.devices, [d1]);
    await set.start();
    // Drive the dedicated device as a guest would: its chain comes back through its own thread.
    const { w } = mmioAccess(new VirtioMmioTransport(d1!.describe().state, "own", new FakeContext()));
    const drv = new FakeDriver(mem, { base: 0x10000, bytes: 0x10000, queueSize: 16 });
    probeAsLinux(w, 1n << BigInt(VIRTIO_F_VERSION_1), [drv]);
    drv.addChain({ readable: [new TextEncoder().encode("own")], writable: [3] });
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    const end = Date.now() + 10_000;
    while (drv.usedIdx === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 1));
    assert.equal(new TextDecoder().decode(drv.popUsed()!.written), "own");
    assert.equal(d1!.state.stats.kicks, 1);
    assert.equal(d0!.state.stats.kicks + d2!.state.stats.kicks, 0);
  } finally {
    await set.stop();
    mem.dispose();
  }
});
