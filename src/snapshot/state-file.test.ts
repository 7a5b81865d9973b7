import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeStateFile, encodeStateFile, SNAPSHOT_FORMAT_VERSION, SnapshotError } from "./state-file.js";

const sample = {
  vcpus: [{ id: 0, regs: new Uint8Array([1, 2, 3, 255]), msrs: [{ index: 0x10, data: 0xffff_ffff_ffff_fff0n }] }],
  name: "vm1",
  nested: { empty: new Uint8Array(0), n: -5n, list: [1, "two", null] },
};

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof SnapshotError, `a SnapshotError, got ${e}`);
    assert.doesNotMatch(e.message, /\n/, "one line");
    return e.code;
  }
  assert.fail("it was accepted");
}

describe("state file", () => {
  it("round-trips bytes, bigints and plain values, and says its version", () => {
    const { header, body } = decodeStateFile(encodeStateFile(sample));
    assert.deepEqual(body, sample);
    assert.equal(header.formatVersion, SNAPSHOT_FORMAT_VERSION);
  });

  it("refuses every single flipped bit (checksum, header or magic)", () => {
    const good = encodeStateFile(sample);
    const codes = new Set<string>();
    for (let bit = 0; bit < good.length * 8; bit++) {
      const bad = Uint8Array.from(good);
      bad[bit >> 3]! ^= 1 << (bit & 7);
      codes.add(code(() => decodeStateFile(bad)));
    }
    // Each flipped bit is caught by whichever check sees it first; none passes.
    assert.ok(codes.has("ESNAPCHECKSUM"));
    assert.ok(codes.has("ESNAPMAGIC"));
    assert.ok(codes.has("ESNAPVERSION"));
    assert.ok(codes.has("ESNAPTRUNCATED"));
  });

  it("refuses a truncated file at any length, and trailing bytes", () => {
    const good = encodeStateFile(sample);
    for (let n = 0; n < good.length; n++) {
      const c = code(() => decodeStateFile(good.subarray(0, n)));
      assert.ok(c === "ESNAPTRUNCATED" || c === "ESNAPMAGIC", `length ${n}: ${c}`);
    }
    assert.equal(code(() => decodeStateFile(Buffer.concat([good, Buffer.from([0])]))), "ESNAPTRUNCATED");
  });

  it("refuses another format version even with a valid checksum", async () => {
    const good = Buffer.from(encodeStateFile(sample));
    good.writeUInt32LE(SNAPSHOT_FORMAT_VERSION + 1, 8);
    const { crc32 } = await import("node:zlib");
    good.writeUInt32LE(crc32(good.subarray(0, good.length - 4)), good.length - 4);
    assert.equal(code(() => decodeStateFile(good)), "ESNAPVERSION");
  });

  it("names the file in its message", () => {
    assert.throws(() => decodeStateFile(Buffer.from("hello"), "'vm.snap'"), /Cannot load 'vm\.snap': not a flint snapshot/);
  });
});
