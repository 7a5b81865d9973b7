import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { VIRTIO_BENCH_PREFIX, parseVirtioBenchLine, parseVirtioBenchLines, recordCount, reportedError } from "./virtio-report.js";

const CONSOLE = [
  "[    0.312743] PCI: Fatal: No config space access function found",
  "virtio-bench: test=devices virtio=2 disks=vda, nics=eth0, uptime_s=3.15\r",
  "[   12.000] some kernel line virtio-bench: test=blk mode=seq ops=183",
  "virtio-bench: test=end id=3",
].join("\n");

describe("parseVirtioBenchLines", () => {
  it("reads key=value pairs after the prefix, wherever it starts, ignoring \\r and other lines", () => {
    assert.deepEqual(parseVirtioBenchLines(CONSOLE), [
      { test: "devices", virtio: "2", disks: "vda,", nics: "eth0,", uptime_s: "3.15" },
      { test: "blk", mode: "seq", ops: "183" },
      { test: "end", id: "3" },
    ]);
  });

  it("skips words without a key", () => {
    assert.deepEqual(parseVirtioBenchLine(`${VIRTIO_BENCH_PREFIX} test=x junk =y z=`), { test: "x", z: "" });
    assert.equal(parseVirtioBenchLine("no prefix here"), undefined);
  });
});

describe("recordCount", () => {
  it("reads non-negative integers only", () => {
    const r = parseVirtioBenchLine(`${VIRTIO_BENCH_PREFIX} a=12 b=-1 c=1.5 d=`)!;
    assert.equal(recordCount(r, "a"), 12);
    for (const key of ["b", "c", "d", "missing"]) assert.equal(recordCount(r, key), undefined);
    assert.equal(recordCount(undefined, "a"), undefined);
  });
});

describe("reportedError", () => {
  it("names the first failure line", () => {
    assert.equal(reportedError(`x\n${VIRTIO_BENCH_PREFIX} error=connect errno=EHOSTUNREACH\n`), "connect (EHOSTUNREACH)");
    assert.equal(reportedError(CONSOLE), undefined);
  });
});
