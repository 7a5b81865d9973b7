/**
 * Direct-KVM tests of flint's virtio-blk as a guest driver sees it: the
 * ring-3 polled driver guest (guest/ring3/virtio-blk-driver.c, protocol in
 * virtio-blk-driver.ts beside this test) boots by PVH in a real Machine on this
 * host's /dev/kvm, negotiates over virtio-mmio (virtio 1.x §4.2.3), sets up
 * a split virtqueue in its own memory (§2.7) and issues block requests
 * (§5.2.6) with QueueNotify kicks through the ioeventfd, against raw image
 * files in a temporary directory. Everything the guest saw comes back as its
 * report on the UART; what it wrote is checked in the file afterwards.
 */
import assert from "node:assert/strict";
import { randomBytes, randomInt } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, describe, it } from "node:test";
import {
  VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
  VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
} from "../../linux/abi.generated.js";
import {
  VBLK_END_OK, VBLK_MAX_DEPTH, VBLK_QUEUE_SIZE, VBLK_SECTOR_BYTES, VBLK_TEST_HOST_BYTES, VBLK_TEST_HOST_SECTOR,
  VBLK_TEST_MIN_DISK_BYTES, VBLK_TEST_WRITE_BYTES, VBLK_TEST_WRITE_SECTOR, VblkReport, buildVirtioBlkGuest,
  fnv1a32, vblkCmdline, vblkWritePattern, writeStampedImage, type VblkRun,
} from "./virtio-blk-driver.js";
import { GuestProgramError } from "./program-error.js";
import { Machine, type MachineResult } from "../../vm/machine.js";
import { virtioSlot } from "../../devices/virtio/virtio-set.js";
import { VIRTIO_MMIO_MAGIC, VIRTIO_MMIO_VERSION_2 } from "../../devices/virtio/mmio.js";

const dir = mkdtempSync(join(tmpdir(), "flint-r3-blk-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const bit = (n: number): bigint => 1n << BigInt(n);
const LIVE_STATUS = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;
/** A guest that hangs is stopped after this long (its own poll limit is several seconds). */
const RUN_TIMEOUT_MS = 60_000;

interface GuestRun {
  report: VblkReport;
  result: MachineResult;
  faults: string[];
}

/** Boots the driver guest with one virtio-blk over `path` and returns what it reported. */
async function runGuest(path: string, readOnly: boolean, run: Omit<VblkRun, "blkBase">, id?: string, deviceThread?: "vm" | "process"): Promise<GuestRun> {
  const chunks: Buffer[] = [];
  const faults: string[] = [];
  const m = Machine.create({
    cpus: 1,
    memoryMib: 64,
    boot: { kind: "linux", kernelPath: buildVirtioBlkGuest(), cmdline: vblkCmdline({ blkBase: virtioSlot(0).mmioBase, ...run }), acpi: false, mode: "pvh" },
    debugExit: true,
    consoleOutput: new Writable({ write(c: Buffer, _e, cb) { chunks.push(Buffer.from(c)); cb(); } }),
    virtioDevices: [{ kind: "block", options: { path, readOnly, ...(id !== undefined ? { id } : {}) } }],
    onGuestFault: (device, message) => faults.push(`${device}: ${message}`),
    ...(deviceThread ? { deviceThread } : {}),
  });
  const timer = setTimeout(() => m.stop({ kind: "error", message: `guest still running after ${RUN_TIMEOUT_MS} ms` }), RUN_TIMEOUT_MS);
  const result = await m.run().finally(() => clearTimeout(timer));
  const report = new VblkReport(Buffer.concat(chunks).toString("latin1"));
  assert.equal(report.error, undefined, `the guest gave up:\n${report.text}`);
  assert.deepEqual(result.reason, { kind: "poweroff" }, report.text);
  assert.equal(result.debugExit?.status, VBLK_END_OK, `end code:\n${report.text}`);
  assert.equal(report.num("done"), 1);
  return { report, result, faults };
}

/** A 1 MiB image of zeros with random bytes at the host-pattern sector; returns the path and those bytes. */
function testImage(name: string): { path: string; hostPattern: Uint8Array } {
  const path = join(dir, name);
  const image = Buffer.alloc(VBLK_TEST_MIN_DISK_BYTES);
  const hostPattern = randomBytes(VBLK_TEST_HOST_BYTES);
  hostPattern.copy(image, VBLK_TEST_HOST_SECTOR * VBLK_SECTOR_BYTES);
  writeFileSync(path, image);
  return { path, hostPattern };
}

const randomSeed = (): number => randomInt(1, 2 ** 32 - 1);

describe("a ring-3 polled virtio-blk driver on flint's virtio-mmio transport", () => {
  it("finds a modern block device, negotiates VERSION_1 and FLUSH, and brings queue 0 up", async () => {
    const { path } = testImage("setup.img");
    const { report } = await runGuest(path, false, { mode: "test", seed: randomSeed() });
    assert.equal(report.num("magic"), VIRTIO_MMIO_MAGIC);
    assert.equal(report.num("version"), VIRTIO_MMIO_VERSION_2);
    assert.equal(report.num("device_id"), VIRTIO_ID_BLOCK);
    const offered = report.big("device_features");
    assert.ok(offered & bit(VIRTIO_F_VERSION_1) && offered & bit(VIRTIO_BLK_F_FLUSH), `offered 0x${offered.toString(16)}`);
    assert.equal(offered & bit(VIRTIO_BLK_F_RO), 0n, "a writable drive must not offer RO");
    assert.equal(report.big("driver_features"), bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_FLUSH));
    assert.ok(report.num("queue_num_max") >= VBLK_QUEUE_SIZE);
    assert.equal(report.num("status"), LIVE_STATUS);
    assert.equal(report.big("capacity"), BigInt(VBLK_TEST_MIN_DISK_BYTES / VBLK_SECTOR_BYTES));
  });

  it("answers GET_ID with the configured serial, NUL-padded to 20 bytes", async () => {
    const { path } = testImage("id.img");
    const id = "r3-blk-serial-42";
    const { report } = await runGuest(path, false, { mode: "test", seed: randomSeed() }, id);
    assert.equal(report.num("get_id.status"), VIRTIO_BLK_S_OK);
    assert.equal(report.num("get_id.used_len"), VIRTIO_BLK_ID_BYTES + 1);
    const expected = Buffer.alloc(VIRTIO_BLK_ID_BYTES);
    expected.write(id, "latin1");
    assert.deepEqual(Buffer.from(report.bytes("get_id.data")), expected);
  });

  it("writes the guest's pattern into the file, reads it back, reads the host's pattern, and flushes", async () => {
    const { path, hostPattern } = testImage("data.img");
    const before = readFileSync(path);
    const seed = randomSeed();
    const { report, result, faults } = await runGuest(path, false, { mode: "test", seed });

    // Guest -> host: the split two-descriptor write landed, byte for byte, and nothing else changed.
    assert.equal(report.num("write.status"), VIRTIO_BLK_S_OK);
    const after = readFileSync(path);
    const at = VBLK_TEST_WRITE_SECTOR * VBLK_SECTOR_BYTES;
    assert.deepEqual(new Uint8Array(after.subarray(at, at + VBLK_TEST_WRITE_BYTES)), vblkWritePattern(seed));
    after.fill(0, at, at + VBLK_TEST_WRITE_BYTES);
    before.fill(0, at, at + VBLK_TEST_WRITE_BYTES);
    assert.ok(after.equals(before), "bytes outside the written range changed");

    // ... and the guest read back what it wrote.
    assert.equal(report.num("readback.status"), VIRTIO_BLK_S_OK);
    assert.equal(report.num("readback.used_len"), VBLK_TEST_WRITE_BYTES + 1);
    assert.equal(report.num("readback.match"), 1);

    // Host -> guest: the guest hashed exactly the host's bytes.
    assert.equal(report.num("host_read.status"), VIRTIO_BLK_S_OK);
    assert.equal(report.num("host_read.fnv1a"), fnv1a32(hostPattern));
    assert.deepEqual(report.bytes("host_read.data"), new Uint8Array(hostPattern.subarray(0, 16)));

    assert.equal(report.num("flush.status"), VIRTIO_BLK_S_OK);
    assert.equal(report.num("flush.used_len"), 1);

    // Kicks went through the ioeventfd (no exit to flint) and, with
    // VRING_AVAIL_F_NO_INTERRUPT set, the device raised no interrupt.
    const dev = result.virtio[0]!;
    assert.equal(dev.userspaceNotifies, 0, "a QueueNotify write reached user space");
    assert.equal(dev.kicks, report.num("kicks"));
    assert.equal(dev.interrupts, 0);
    assert.deepEqual(dev.failures, []);
    // The only guest faults are the two reads at the end of the disk (next test).
    assert.equal(faults.length, 2, faults.join("\n"));
  });

  it("fails reads at and across the end of the disk with IOERR, and the device stays live", async () => {
    const { path } = testImage("end.img");
    const { report, faults } = await runGuest(path, false, { mode: "test", seed: randomSeed() });
    assert.equal(report.num("read_end.status"), VIRTIO_BLK_S_IOERR);
    assert.equal(report.num("read_across_end.status"), VIRTIO_BLK_S_IOERR);
    assert.ok(faults.every((f) => /outside the disk/.test(f)), faults.join("\n"));
    // Requests after the failed ones still complete (the kicks counter is the last thing reported).
    assert.equal(report.num("kicks"), 7);
  });

  it("on a read-only drive offers VIRTIO_BLK_F_RO, fails the write with IOERR and leaves the file alone", async () => {
    const { path, hostPattern } = testImage("ro.img");
    const before = readFileSync(path);
    const { report, faults } = await runGuest(path, true, { mode: "test", seed: randomSeed() });
    assert.ok(report.big("device_features") & bit(VIRTIO_BLK_F_RO));
    assert.equal(report.big("driver_features"), bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_RO));
    assert.equal(report.num("write.status"), VIRTIO_BLK_S_IOERR);
    assert.equal(report.num("readback.status"), VIRTIO_BLK_S_OK);
    assert.equal(report.num("readback.match"), 0, "the refused write is not readable");
    assert.ok(readFileSync(path).equals(before), "a read-only image changed");
    assert.equal(report.num("host_read.fnv1a"), fnv1a32(hostPattern));
    assert.equal(report.num("flush.status"), VIRTIO_BLK_S_OK);
    assert.ok(faults.some((f) => /read-only/.test(f)), faults.join("\n"));
  });

  it("with only VIRTIO_F_VERSION_1 negotiated (a write-through cache) still stores and returns the guest's data", async () => {
    const { path } = testImage("version1-only.img");
    const seed = randomSeed();
    const { report } = await runGuest(path, false, { mode: "test", seed, minimalFeatures: true });
    assert.equal(report.big("driver_features"), bit(VIRTIO_F_VERSION_1));
    assert.equal(report.num("status"), LIVE_STATUS, "FEATURES_OK without FLUSH is accepted");
    assert.equal(report.num("write.status"), VIRTIO_BLK_S_OK);
    assert.equal(report.num("readback.match"), 1);
    const at = VBLK_TEST_WRITE_SECTOR * VBLK_SECTOR_BYTES;
    assert.deepEqual(new Uint8Array(readFileSync(path).subarray(at, at + VBLK_TEST_WRITE_BYTES)), vblkWritePattern(seed));
  });

  it(`returns the sectors each request asked for with ${VBLK_MAX_DEPTH} requests in flight`, async () => {
    const path = join(dir, "stamped.img");
    writeStampedImage(path, 8 << 20);
    const counts = { qd1: 300, qd32: 3000, seq: 200 };
    const { report, result } = await runGuest(path, true, { mode: "bench", seed: randomSeed(), ...counts });
    for (const [phase, n] of Object.entries(counts)) {
      assert.equal(report.num(`${phase}.requests`), n, phase);
      for (const k of ["errors", "bad_len", "bad_data"]) assert.equal(report.num(`${phase}.${k}`), 0, `${phase}.${k}`);
    }
    assert.equal(report.num("qd32.depth"), VBLK_MAX_DEPTH);
    // Batched refills: fewer kicks than requests at depth 32.
    assert.ok(report.num("qd32.kicks") < counts.qd32, `qd32.kicks ${report.num("qd32.kicks")}`);
    assert.equal(result.virtio[0]!.userspaceNotifies, 0);
    assert.equal(result.guestFaults, 0);
  });

  it("on the process's shared device thread (deviceThread \"process\"), four VMs at once each drive their own disk: every pattern lands in its own file only", async () => {
    const vms = Array.from({ length: 4 }, (_, i) => ({ ...testImage(`process-thread-${i}.img`), seed: randomSeed() }));
    const stamped = join(dir, "process-thread-stamped.img");
    writeStampedImage(stamped, 8 << 20);
    const counts = { qd1: 200, qd32: 2000, seq: 100 };
    // A fifth VM keeps 32 requests in flight on the same thread meanwhile.
    const [busy, ...runs] = await Promise.all([
      runGuest(stamped, true, { mode: "bench", seed: randomSeed(), ...counts }, undefined, "process"),
      ...vms.map((v) => runGuest(v.path, false, { mode: "test", seed: v.seed }, undefined, "process")),
    ]);
    for (const [phase, n] of Object.entries(counts)) {
      assert.equal(busy!.report.num(`${phase}.requests`), n, phase);
      for (const k of ["errors", "bad_len", "bad_data"]) assert.equal(busy!.report.num(`${phase}.${k}`), 0, `${phase}.${k}`);
    }
    const at = VBLK_TEST_WRITE_SECTOR * VBLK_SECTOR_BYTES;
    runs.forEach(({ report, result }, i) => {
      const v = vms[i]!;
      assert.equal(report.num("write.status"), VIRTIO_BLK_S_OK, `VM ${i}`);
      assert.equal(report.num("readback.match"), 1, `VM ${i}`);
      assert.equal(report.num("host_read.fnv1a"), fnv1a32(v.hostPattern), `VM ${i} read its own host pattern`);
      assert.deepEqual(new Uint8Array(readFileSync(v.path).subarray(at, at + VBLK_TEST_WRITE_BYTES)), vblkWritePattern(v.seed), `VM ${i}'s file holds its own pattern`);
      assert.deepEqual(result.virtio[0]!.failures, [], `VM ${i}`);
      assert.deepEqual(result.unstoppedDevices, []);
    });
  });
});

describe("the driver guest's protocol on the host side", () => {
  const isProgramError = (code: GuestProgramError["code"]) => (e: unknown): boolean => e instanceof GuestProgramError && e.code === code;

  it("refuses command lines the guest would refuse, with EPROGARG", () => {
    const ok: VblkRun = { blkBase: virtioSlot(0).mmioBase, mode: "test", seed: 1 };
    assert.match(vblkCmdline(ok), /^blk=0x[0-9a-f]+ mode=test seed=0x1$/);
    for (const bad of [{ ...ok, mode: "fast" as "test" }, { ...ok, blkBase: 0 }, { ...ok, blkBase: 2 ** 32 }, { ...ok, seed: 0 }, { ...ok, qd1: -1 }]) {
      assert.throws(() => vblkCmdline(bad), isProgramError("EPROGARG"), JSON.stringify(bad));
    }
    assert.throws(() => writeStampedImage(join(dir, "odd.img"), 1000), isProgramError("EPROGARG"));
  });

  it("reports a missing or malformed value in the guest's output with EPROGRUN", () => {
    const report = new VblkReport("vblk magic=0x74726976\nvblk error=no device\nvblk get_id.data=zz\n");
    assert.equal(report.num("magic"), VIRTIO_MMIO_MAGIC);
    assert.throws(() => report.num("capacity"), (e: unknown) => isProgramError("EPROGRUN")(e) && /no device/.test((e as Error).message));
    assert.throws(() => report.bytes("get_id.data"), isProgramError("EPROGRUN"));
  });
});
