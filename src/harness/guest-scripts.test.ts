import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { ethUpSh, HWRNG_REPORT_SH, initPrologue, vsockConnectC } from "./guest-scripts.js";

const gcc = spawnSync("gcc", ["--version"]).status === 0;

test("the /init prologue is a shell script with the given PATH that mounts /proc, /sys and /dev", () => {
  assert.ok(initPrologue().startsWith("#!/bin/sh\nexport PATH=/bin:/sbin:/usr/bin:/usr/sbin\n"));
  const p = initPrologue("/bin");
  assert.ok(p.startsWith("#!/bin/sh\nexport PATH=/bin\n"));
  for (const [fs, dir] of [["proc", "/proc"], ["sysfs", "/sys"], ["devtmpfs", "/dev"]]) assert.match(p, new RegExp(`^mount -t ${fs} ${fs} ${dir}\\b`, "m"));
  assert.ok(p.endsWith("\n"), "the caller's lines start on a line of their own");
});

test("the rng and eth0 snippets report the keys the e2e tests read", () => {
  assert.match(HWRNG_REPORT_SH, /flint-e2e: rng-current=/);
  assert.match(HWRNG_REPORT_SH, /flint-e2e: hwrng=/);
  const eth = ethUpSh("172.16.0.2");
  assert.match(eth, /^ip addr add 172\.16\.0\.2\/24 dev eth0$/m);
  assert.match(eth, /flint-e2e: mac=/);
});

test("every vsock-connect variant is valid C and does what its options say", { skip: !gcc && "needs gcc" }, () => {
  for (const reportLocalCid of [false, true]) {
    for (const detailedErrors of [false, true]) {
      const c = vsockConnectC({ reportLocalCid, detailedErrors });
      const cc = spawnSync("gcc", ["-fsyntax-only", "-Wall", "-Werror", "-Wno-unused-result", "-x", "c", "-"], { input: c, encoding: "utf8" });
      assert.equal(cc.status, 0, `${JSON.stringify({ reportLocalCid, detailedErrors })}\n${cc.stderr}`);
      assert.equal(c.includes("IOCTL_VM_SOCKETS_GET_LOCAL_CID"), reportLocalCid);
      assert.equal(c.includes(`perror("connect")`), detailedErrors);
      assert.equal(c.includes(`perror("vsock")`), !detailedErrors);
      assert.match(c, /flint-e2e: vsock-got=%s/);
    }
  }
});
