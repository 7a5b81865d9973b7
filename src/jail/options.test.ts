import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { checkJailId, DEFAULT_CHROOT_BASE, DEFAULT_NO_FILE, JailError, parseCgroupSetting, parseJailFlags, parseOwner, parseResourceLimit } from "./options.js";

const users = (n: string) => (n === "kvmuser" ? 1234 : undefined);
const groups = (n: string) => (n === "kvm" ? 99 : undefined);
const code = (c: JailError["code"], msg?: RegExp) => (e: unknown) => e instanceof JailError && e.code === c && (msg === undefined || msg.test(e.message));

describe("jail flags", () => {
  it("takes Firecracker's defaults: /srv/jailer, cgroup v1, 2048 file descriptors", () => {
    const o = parseJailFlags({ id: "vm-1", uid: "123", gid: "100" }, ["--api-sock", "/run/api.sock"], users, groups);
    assert.equal(o.chrootBaseDir, DEFAULT_CHROOT_BASE);
    assert.equal(o.cgroupVersion, 1);
    assert.equal(o.noFile, DEFAULT_NO_FILE);
    assert.equal(o.fsize, undefined);
    assert.deepEqual(o.monitorArgs, ["--api-sock", "/run/api.sock"]);
    assert.equal(o.daemonize, false);
    assert.equal(o.newPidNs, false);
  });

  it("an id is 1 to 64 ASCII letters, digits and '-'", () => {
    checkJailId("a");
    checkJailId("x".repeat(64));
    checkJailId("bd65600d-8669-4903-8a14-af88203add38");
    assert.throws(() => checkJailId(""), code("EJAILARG", /1 to 64/));
    assert.throws(() => checkJailId("x".repeat(65)), code("EJAILARG", /got 65/));
    assert.throws(() => checkJailId("../x"), code("EJAILARG", /character '\.'/));
    assert.throws(() => checkJailId("a_b"), code("EJAILARG", /'_'/));
    assert.throws(() => parseJailFlags({ uid: "1", gid: "1" }, [], users, groups), code("EJAILARG", /Missing --id/));
  });

  it("uid and gid: numbers, or names the host knows; an unknown name or a missing one is refused", () => {
    assert.equal(parseOwner("--uid", "0", users), 0);
    assert.equal(parseOwner("--uid", "4294967294", users), 4294967294);
    assert.equal(parseOwner("--uid", "kvmuser", users), 1234);
    assert.equal(parseOwner("--gid", "kvm", groups), 99);
    assert.throws(() => parseOwner("--uid", "4294967295", users), code("EJAILARG", /larger than/));
    assert.throws(() => parseOwner("--uid", "nosuchuser", users), code("EJAILARG", /^Invalid --uid: no user named 'nosuchuser'$/));
    assert.throws(() => parseOwner("--gid", "nogroup2", groups), code("EJAILARG", /no group named/));
    assert.throws(() => parseOwner("--uid", "-1", users), code("EJAILARG"));
    assert.throws(() => parseJailFlags({ id: "a", gid: "1" }, [], users, groups), code("EJAILARG", /Missing --uid/));
  });

  it("--cgroup is <controller>.<name>=<value> with nothing that climbs out of the cgroup", () => {
    assert.deepEqual(parseCgroupSetting("memory.max=256M"), { file: "memory.max", value: "256M", controller: "memory" });
    assert.deepEqual(parseCgroupSetting("cpu.max=50000 100000"), { file: "cpu.max", value: "50000 100000", controller: "cpu" });
    for (const bad of ["memory.max", "memory.max=", "a=b=c"]) assert.throws(() => parseCgroupSetting(bad), code("EJAILARG", /Invalid format for cgroups/), bad);
    for (const bad of ["../memory.max=1", "x/memory.max=1", "memory=1", ".max=1", "=1"]) assert.throws(() => parseCgroupSetting(bad), code("EJAILARG", /Cgroup invalid file/), bad);
    assert.throws(() => parseCgroupSetting("memory.max=1\n2"), code("EJAILARG", /invalid value/));
  });

  it("--cgroup-version is 1 or 2; --parent-cgroup is a plain relative path", () => {
    assert.equal(parseJailFlags({ id: "a", uid: "1", gid: "1", cgroupVersion: "2" }, [], users, groups).cgroupVersion, 2);
    assert.throws(() => parseJailFlags({ id: "a", uid: "1", gid: "1", cgroupVersion: "3" }, [], users, groups), code("EJAILARG", /3 is an invalid cgroup version/));
    assert.equal(parseJailFlags({ id: "a", uid: "1", gid: "1", parentCgroup: "vms/flint" }, [], users, groups).parentCgroup, "vms/flint");
    for (const bad of ["/abs", "../up", "a/./b", "a//b"]) {
      assert.throws(() => parseJailFlags({ id: "a", uid: "1", gid: "1", parentCgroup: bad }, [], users, groups), code("EJAILARG", /Parent cgroup path is invalid/), bad);
    }
  });

  it("--resource-limit takes fsize and no-file, the last of each winning", () => {
    assert.deepEqual(parseResourceLimit("fsize=1048576"), { name: "fsize", value: 1048576 });
    const o = parseJailFlags({ id: "a", uid: "1", gid: "1", resourceLimit: ["no-file=64", "fsize=10", "no-file=128"] }, [], users, groups);
    assert.equal(o.noFile, 128);
    assert.equal(o.fsize, 10);
    assert.throws(() => parseResourceLimit("nofile=1"), code("EJAILARG", /Invalid resource argument: nofile/));
    assert.throws(() => parseResourceLimit("fsize=-1"), code("EJAILARG", /Invalid limit value/));
    assert.throws(() => parseResourceLimit("fsize"), code("EJAILARG", /Invalid format/));
  });

  it("--netns must be an absolute path", () => {
    assert.throws(() => parseJailFlags({ id: "a", uid: "1", gid: "1", netns: "ns1" }, [], users, groups), code("EJAILARG", /--netns/));
  });
});
