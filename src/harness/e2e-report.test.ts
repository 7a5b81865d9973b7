import assert from "node:assert/strict";
import { test } from "node:test";
import { e2eValue, readTextIfAny } from "./e2e-report.js";

test("the last report line of a key wins, across texts, without \\r", () => {
  const guest = "boot\r\nflint-e2e: a=1\r\nflint-e2e: b=x y \r\nnoise flint-e2e: a=2\n";
  const host = "flint-e2e: c=host\n";
  assert.equal(e2eValue("a", guest, host), "2");
  assert.equal(e2eValue("b", guest), "x y");
  assert.equal(e2eValue("c", guest, host), "host");
  assert.equal(e2eValue("d", guest, host), undefined);
  assert.equal(e2eValue("a.b", "flint-e2e: aXb=1"), undefined, "keys are literal");
});

test("a missing file reads as empty", () => {
  assert.equal(readTextIfAny("/nonexistent/flint/report"), "");
});

test("a kernel message printed into the middle of a report line is cut off", () => {
  const text = "flint-e2e: disks=vda vdb vdc vdd[    2.833217] I/O error, dev vdb, sector 0 op 0x0:(READ)\r\nflint-e2e: rtt=1.2/3.4/5.6ms\n";
  assert.equal(e2eValue("disks", text), "vda vdb vdc vdd");
  assert.equal(e2eValue("rtt", text), "1.2/3.4/5.6ms", "values with brackets but no kernel timestamp are kept");
  assert.equal(e2eValue("x", "flint-e2e: x=[a] [1.5] b\n"), "[a] [1.5] b");
});

test("a kernel message printed into a report line that goes on after it is taken out, and the line joined", () => {
  const text = "flint-e2e: disks[    4.180649] I/O error, dev vdb, sector 0 op 0x0:(READ) flags 0x800\r\n=vda vdb vdc vdd\r\n" +
    "flint-e2e: n=1[    5.000001] one\r\n[    5.000002] two\r\n2\r\n[    6.000000] a line of its own\r\nflint-e2e: m=3\r\n";
  assert.equal(e2eValue("disks", text), "vda vdb vdc vdd");
  assert.equal(e2eValue("n", text), "12");
  assert.equal(e2eValue("m", text), "3");
});
