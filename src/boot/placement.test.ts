import assert from "node:assert/strict";
import { test } from "node:test";
import { CMDLINE_MAX_SIZE, CMDLINE_START, MiB } from "../arch/x86_64/layout.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { BootError } from "./errors.js";
import { loadInitrd, writeCmdline } from "./placement.js";

function withMemory(sizeBytes: number, fn: (mem: GuestMemory) => void): void {
  const mem = GuestMemory.create([{ guestBase: 0, size: sizeBytes }]);
  try { fn(mem); } finally { mem.dispose(); }
}
const isBootError = (code: string, text?: RegExp) => (e: unknown) =>
  e instanceof BootError && e.code === code && (!text || text.test(e.message));

test("the command line is written NUL-terminated at CMDLINE_START", () => {
  withMemory(1 * MiB, (mem) => {
    mem.fill(CMDLINE_START, 64, 0xff);
    const r = writeCmdline(mem, "console=ttyS0 root=/dev/vda", 2047);
    assert.deepEqual(r, { address: CMDLINE_START, sizeBytes: 28 });
    assert.equal(Buffer.from(mem.read(CMDLINE_START, 28)).toString("latin1"), "console=ttyS0 root=/dev/vda\0");
  });
});

test("a command line longer than the kernel's cmdline_size is rejected", () => {
  withMemory(1 * MiB, (mem) => {
    writeCmdline(mem, "x".repeat(255), 255);
    assert.throws(() => writeCmdline(mem, "x".repeat(256), 255), isBootError("ECMDLINETOOLONG", /256 bytes.*kernel accepts 255/));
    writeCmdline(mem, "x".repeat(CMDLINE_MAX_SIZE - 1), 0xffffffff);
    assert.throws(() => writeCmdline(mem, "x".repeat(CMDLINE_MAX_SIZE), 0xffffffff), isBootError("ECMDLINETOOLONG"));
  });
});

test("a command line with a NUL is rejected, multi-byte characters count as bytes", () => {
  withMemory(1 * MiB, (mem) => {
    assert.throws(() => writeCmdline(mem, "a\0b", 100), isBootError("ECMDLINEINVALID"));
    assert.throws(() => writeCmdline(mem, "é".repeat(6), 11), isBootError("ECMDLINETOOLONG"));
  });
});

test("the initrd goes page-aligned as high as allowed, below initrd_addr_max and the end of RAM", () => {
  withMemory(64 * MiB, (mem) => {
    const data = Uint8Array.from({ length: 10000 }, (_, i) => i & 0xff);
    const r = loadInitrd(mem, data, "initrd", { kernelEnd: 0x2000000, addrMax: 0xffffffff, ramEnd: 64 * MiB });
    assert.equal(r.address, 64 * MiB - 3 * 4096);
    assert.equal(r.address % 4096, 0);
    assert.deepEqual(mem.read(r.address, data.length), data);
    const capped = loadInitrd(mem, data, "initrd", { kernelEnd: 0x2000000, addrMax: 0x2ffffff, ramEnd: 64 * MiB });
    assert.ok(capped.address + data.length - 1 <= 0x2ffffff);
    assert.equal(capped.address, 0x3000000 - 3 * 4096);
  });
});

test("an initrd that would overlap the kernel gives EINITRDTOOBIG with both sizes", () => {
  withMemory(64 * MiB, (mem) => {
    assert.throws(() => loadInitrd(mem, new Uint8Array(40 * MiB), "big.cpio", { kernelEnd: 30 * MiB, addrMax: 0xffffffff, ramEnd: 64 * MiB }),
      isBootError("EINITRDTOOBIG", /'big\.cpio'.*40 MiB.*only 34 MiB/));
    assert.throws(() => loadInitrd(mem, new Uint8Array(4096), "x", { kernelEnd: 64 * MiB, addrMax: 0xffffffff, ramEnd: 64 * MiB }),
      isBootError("EINITRDTOOBIG"));
  });
});
