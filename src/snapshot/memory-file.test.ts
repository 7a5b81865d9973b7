import assert from "node:assert/strict";
import { closeSync, copyFileSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { GuestMemory } from "../memory/guest-memory.js";
import { openMemoryFile, rebaseMemoryFile, writeDiffMemoryFile, writeMemoryFile } from "./memory-file.js";
import { SnapshotError } from "./state-file.js";

const dir = mkdtempSync(join(tmpdir(), "flint-memfile-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

function guest(): GuestMemory {
  const m = GuestMemory.create([{ guestBase: 0, size: 2 * MiB }, { guestBase: 16 * MiB, size: 4 * MiB }]);
  m.write(0x1000, Buffer.from("first region"));
  m.writeU64(2 * MiB - 8, 0x1122334455667788n); // the last word of region 0
  m.write(16 * MiB + 3 * MiB + 5, Buffer.from("second region"));
  return m;
}

/** Whether the host page behind guest address `address` of `m` is present or swapped (/proc/self/pagemap bits 63, 62). */
function resident(m: GuestMemory, address: number): boolean {
  const r = m.regions.find((x) => address >= x.guestBase && address < x.guestBase + x.size)!;
  const page = (r.hostAddress + BigInt(address - r.guestBase)) / 4096n;
  const fd = openSync("/proc/self/pagemap", "r");
  try {
    const entry = Buffer.alloc(8);
    readSync(fd, entry, 0, 8, Number(page) * 8);
    return (entry.readBigUInt64LE(0) >> 62n) !== 0n;
  } finally {
    closeSync(fd);
  }
}

describe("memory file", () => {
  it("writes regions back to back, only their non-zero pages, and maps back copy-on-write", () => {
    const m = guest();
    const path = join(dir, "a.mem");
    const w = writeMemoryFile(m, path);
    assert.deepEqual(w.regions, [{ guestBase: 0, size: 2 * MiB, fileOffset: 0 }, { guestBase: 16 * MiB, size: 4 * MiB, fileOffset: 2 * MiB }]);
    assert.equal(statSync(path).size, 6 * MiB);
    assert.equal(w.dataBytes, 3 * 4096, "three pages hold data");
    assert.ok(statSync(path).blocks * 512 < MiB, "the zero pages are holes");
    const fileBytes = readFileSync(path);
    assert.equal(fileBytes.toString("latin1", 0x1000, 0x1000 + 12), "first region");

    const fd = openMemoryFile(path, w.regions);
    const r = GuestMemory.mapFile(w.regions, fd);
    closeSync(fd);
    try {
      for (const reg of m.regions) assert.ok(Buffer.from(r.slice(reg.guestBase, reg.size)).equals(Buffer.from(m.slice(reg.guestBase, reg.size))));
      // A write stays in this mapping: the file and another mapping of it keep the snapshot's bytes.
      r.write(0x1000, Buffer.from("changed"));
      const fd2 = openMemoryFile(path, w.regions);
      const r2 = GuestMemory.mapFile(w.regions, fd2);
      closeSync(fd2);
      assert.equal(Buffer.from(r2.read(0x1000, 12)).toString(), "first region");
      assert.equal(readFileSync(path).toString("latin1", 0x1000, 0x1000 + 12), "first region");
      r2.dispose();
    } finally {
      r.dispose();
      m.dispose();
    }
  });

  it("refuses a memory file shorter than the snapshot's memory, and a missing one", () => {
    const m = guest();
    const path = join(dir, "short.mem");
    const w = writeMemoryFile(m, path);
    m.dispose();
    truncateSync(path, 6 * MiB - 4096);
    assert.throws(() => openMemoryFile(path, w.regions), (e: unknown) => e instanceof SnapshotError && e.code === "ESNAPMEMORY" && /needs 6291456/.test(e.message));
    assert.throws(() => openMemoryFile(join(dir, "none.mem"), w.regions), (e: unknown) => e instanceof SnapshotError && e.code === "ESNAPIO" && /ENOENT/.test(e.message));
  });

  it("leaves untouched and discarded anonymous pages as holes without faulting them in", () => {
    const m = guest();
    try {
      m.writeU64(16 * MiB + 64 * 1024, 1n);
      m.discard(16 * MiB + 64 * 1024, 4096); // written, then given back: zeros again
      const untouched = 16 * MiB + MiB;
      assert.equal(resident(m, untouched), false);
      const w = writeMemoryFile(m, join(dir, "sparse.mem"));
      assert.equal(w.dataBytes, 3 * 4096, "only the three written pages");
      assert.equal(resident(m, untouched), false, "saving did not read the untouched page (no fault, no zero-page mapping)");
      assert.ok(readFileSync(join(dir, "sparse.mem")).subarray(2 * MiB).equals(Buffer.from(m.slice(16 * MiB, 4 * MiB))));
    } finally {
      m.dispose();
    }
  });

  it("writes the data of a memory-file mapping's pages that were never read (a restored VM saved again)", () => {
    const m = guest();
    const first = join(dir, "first.mem"), again = join(dir, "again.mem");
    const w = writeMemoryFile(m, first);
    m.dispose();
    const fd = openMemoryFile(first, w.regions);
    const r = GuestMemory.mapFile(w.regions, fd);
    closeSync(fd);
    try {
      assert.equal(resident(r, 0x1000), false, "nothing read yet");
      const w2 = writeMemoryFile(r, again);
      assert.equal(w2.dataBytes, 3 * 4096);
      assert.ok(readFileSync(again).equals(readFileSync(first)));
    } finally {
      r.dispose();
    }
  });

  it("a Diff writes exactly the dirty pages, zeros included, and rebase copies them (only them) onto the base", () => {
    const m = guest();
    const base = join(dir, "base.mem");
    writeMemoryFile(m, base);
    m.fill(0x1000, 4096, 0); // a page zeroed: the Diff must carry its zeros
    m.write(16 * MiB + 8192, Buffer.from("new"));
    const dirty = m.regions.map((r) => new Uint8Array(r.size / 4096));
    dirty[0]![1] = 1;
    dirty[1]![2] = 1;
    const diff = join(dir, "diff.mem");
    const w = writeDiffMemoryFile(m, diff, dirty);
    assert.equal(statSync(diff).size, 6 * MiB);
    assert.equal(w.dataBytes, 2 * 4096);
    assert.ok(statSync(diff).blocks * 512 <= 64 * 1024, "the rest are holes");
    const merged = join(dir, "merged.mem");
    copyFileSync(base, merged);
    const r = rebaseMemoryFile(merged, diff);
    assert.deepEqual(r, { copiedBytes: 2 * 4096, runs: 2 });
    const after = readFileSync(merged), before = readFileSync(base);
    assert.ok(after.subarray(0x1000, 0x2000).every((b) => b === 0), "the zeroed page");
    assert.equal(after.toString("latin1", 2 * MiB + 8192, 2 * MiB + 8195), "new");
    assert.ok(after.subarray(2 * MiB - 8, 2 * MiB).equals(before.subarray(2 * MiB - 8, 2 * MiB)), "pages not in the diff are the base's");
    assert.ok(after.subarray(2 * MiB + 3 * MiB).equals(before.subarray(2 * MiB + 3 * MiB)));
    m.dispose();
  });

  it("rebase refuses files of different sizes and a missing file", () => {
    const a = join(dir, "small.mem"), b = join(dir, "big.mem");
    writeFileSync(a, Buffer.alloc(4096));
    writeFileSync(b, Buffer.alloc(8192));
    assert.throws(() => rebaseMemoryFile(a, b), (e: unknown) => e instanceof SnapshotError && e.code === "ESNAPMEMORY");
    assert.throws(() => rebaseMemoryFile(a, join(dir, "none.mem")), (e: unknown) => e instanceof SnapshotError && e.code === "ESNAPIO");
  });
});
