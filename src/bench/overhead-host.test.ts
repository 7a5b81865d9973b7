import assert from "node:assert/strict";
import { existsSync, statSync } from "node:fs";
import { describe, it } from "node:test";
import { prepareOverheadHost, tapName, vmMac } from "./overhead-host.js";

describe("tapName and vmMac", () => {
  it("fit an interface name in IFNAMSIZ - 1 and give each VM its own unicast MAC", () => {
    assert.equal(tapName(4_194_303, 7), "flb94303t7");
    assert.ok(tapName(4_194_303, 255).length <= 15);
    assert.equal(vmMac(10), "52:54:00:f1:1b:0a");
    assert.throws(() => vmMac(256), RangeError);
  });
});

describe("prepareOverheadHost", () => {
  it("makes a sparse disk and a TAP per VM, a fresh socket path per call, and removes them all", () => {
    const host = prepareOverheadHost(2);
    const a = host.devices(1);
    try {
      assert.equal(statSync(a.diskPath).size, 16 * 1024 * 1024);
      assert.notEqual(host.devices(1).vsockUds, a.vsockUds);
      if (host.tapMissing === undefined) {
        assert.ok(existsSync(`/sys/class/net/${a.tap}/tun_flags`), `${a.tap} is a TUN/TAP device`);
      } else {
        assert.equal(a.tap, undefined);
      }
    } finally {
      host.close();
    }
    assert.ok(!existsSync(a.diskPath));
    if (a.tap) assert.ok(!existsSync(`/sys/class/net/${a.tap}`));
  });
});
