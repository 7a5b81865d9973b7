import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { applyCgroupPlan, findCgroup2Mount, findCgroupV1Mounts, planCgroupV1, planCgroupV2 } from "./cgroup.js";
import { JailError, parseCgroupSetting } from "./options.js";

const MOUNTS = `sysfs /sys sysfs rw,nosuid 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
cgroup2 /sys/fs/cgroup/uni\\040fied cgroup2 rw,relatime 0 0
cgroup2 /other cgroup2 rw 0 0
`;

describe("jail cgroup (v2)", () => {
  it("finds the first cgroup2 mount in /proc/mounts, undoing its octal escapes; none is undefined", () => {
    assert.equal(findCgroup2Mount(MOUNTS), "/sys/fs/cgroup/uni fied");
    assert.equal(findCgroup2Mount("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"), undefined);
  });

  it("plans <mount>/<parent>/<id>, hands each controller down from the mount to the parent, then writes the files", () => {
    const p = planCgroupV2("/cg", "cpuset cpu io memory pids", "flint", "vm1", ["memory.max=1G", "cpu.max=max 100000", "memory.high=900M"].map(parseCgroupSetting));
    assert.deepEqual(p.dirs, ["/cg/flint/vm1"]);
    assert.deepEqual(p.procs, ["/cg/flint/vm1/cgroup.procs"]);
    assert.deepEqual(p.enable, [
      { file: "/cg/cgroup.subtree_control", controller: "memory" },
      { file: "/cg/flint/cgroup.subtree_control", controller: "memory" },
      { file: "/cg/cgroup.subtree_control", controller: "cpu" },
      { file: "/cg/flint/cgroup.subtree_control", controller: "cpu" },
    ]);
    assert.deepEqual(p.writes, [
      { file: "/cg/flint/vm1/memory.max", value: "1G" },
      { file: "/cg/flint/vm1/cpu.max", value: "max 100000" },
      { file: "/cg/flint/vm1/memory.high", value: "900M" },
    ]);
    const nested = planCgroupV2("/cg", "memory", "a/b", "x", [parseCgroupSetting("memory.max=1")]);
    assert.deepEqual(nested.enable.map((e) => e.file), ["/cg/cgroup.subtree_control", "/cg/a/cgroup.subtree_control", "/cg/a/b/cgroup.subtree_control"]);
  });

  it("refuses a controller the hierarchy does not offer", () => {
    assert.throws(() => planCgroupV2("/cg", "cpu io", "flint", "vm1", [parseCgroupSetting("memory.max=1G")]),
      (e: unknown) => e instanceof JailError && e.code === "ECGROUP" && /^Controller memory is unavailable/.test(e.message));
  });

  it("applies a plan to a directory tree shaped like cgroupfs; a file the cgroup does not have is a one-line error", () => {
    const dir = mkdtempSync(join(tmpdir(), "flint-cg-"));
    try {
      // A stand-in for cgroupfs: the files exist before they are written, as the kernel makes them.
      writeFileSync(join(dir, "cgroup.subtree_control"), "");
      mkdirSync(join(dir, "flint", "vm1"), { recursive: true });
      writeFileSync(join(dir, "flint", "cgroup.subtree_control"), "");
      writeFileSync(join(dir, "flint", "vm1", "memory.max"), "max\n");
      const plan = planCgroupV2(dir, "memory", "flint", "vm1", [parseCgroupSetting("memory.max=64M")]);
      applyCgroupPlan(plan);
      assert.equal(readFileSync(join(dir, "flint", "vm1", "memory.max"), "utf8"), "64M\n");
      assert.equal(readFileSync(join(dir, "cgroup.subtree_control"), "utf8"), "+memory\n");
      const missing = planCgroupV2(dir, "memory", "flint", "vm1", [parseCgroupSetting("memory.maxx=1")]);
      assert.throws(() => applyCgroupPlan(missing), (e: unknown) => e instanceof JailError && e.code === "ECGROUP" && /memory\.maxx does not exist/.test(e.message) && !e.message.includes("\n"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

const V1_MOUNTS = `tmpfs /sys/fs/cgroup tmpfs rw,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/mem\\040ory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
`;

describe("jail cgroup (v1)", () => {
  it("finds every cgroup v1 hierarchy and its options (octal escapes undone), not the cgroup2 one", () => {
    assert.deepEqual(findCgroupV1Mounts(V1_MOUNTS).map((m) => m.dir), ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/mem ory", "/sys/fs/cgroup/systemd"]);
    assert.deepEqual(findCgroupV1Mounts(V1_MOUNTS)[0]!.options, ["rw", "nosuid", "relatime", "cpu", "cpuacct"]);
    assert.deepEqual(findCgroupV1Mounts("cgroup2 /x cgroup2 rw 0 0\n"), []);
  });

  it("plans <hierarchy>/<parent>/<id> in the hierarchy of each setting's controller, one cgroup.procs each, every value inherited first", () => {
    const settings = ["cpuset.cpus=0", "memory.limit_in_bytes=64M", "cpuset.mems=0", "cpu.cfs_quota_us=50000"].map(parseCgroupSetting);
    const p = planCgroupV1(findCgroupV1Mounts(V1_MOUNTS), "flint", "vm1", settings);
    assert.deepEqual(p.dirs, ["/sys/fs/cgroup/cpuset/flint/vm1", "/sys/fs/cgroup/mem ory/flint/vm1", "/sys/fs/cgroup/cpu,cpuacct/flint/vm1"]);
    assert.deepEqual(p.procs, p.dirs.map((d) => `${d}/cgroup.procs`));
    assert.deepEqual(p.enable, []);
    assert.deepEqual(p.writes, [
      { file: "/sys/fs/cgroup/cpuset/flint/vm1/cpuset.cpus", value: "0", inheritLevels: 1 },
      { file: "/sys/fs/cgroup/mem ory/flint/vm1/memory.limit_in_bytes", value: "64M", inheritLevels: 1 },
      { file: "/sys/fs/cgroup/cpuset/flint/vm1/cpuset.mems", value: "0", inheritLevels: 1 },
      { file: "/sys/fs/cgroup/cpu,cpuacct/flint/vm1/cpu.cfs_quota_us", value: "50000", inheritLevels: 1 },
    ]);
    assert.equal(planCgroupV1(findCgroupV1Mounts(V1_MOUNTS), "a/b", "x", [parseCgroupSetting("cpuset.cpus=1")]).writes[0]!.inheritLevels, 2);
  });

  it("refuses a controller no hierarchy mounts, naming those that are", () => {
    assert.throws(() => planCgroupV1(findCgroupV1Mounts(V1_MOUNTS), "flint", "vm1", [parseCgroupSetting("pids.max=10")]),
      (e: unknown) => e instanceof JailError && e.code === "ECGROUP" && e.message === "Controller pids is unavailable (no cgroup v1 hierarchy mounts it; mounted: cpu cpuacct cpuset memory)");
  });

  it("applies a plan to a tree shaped like cgroupfs: empty levels are filled from the hierarchy's root down, then the value written", () => {
    const dir = mkdtempSync(join(tmpdir(), "flint-cg1-"));
    try {
      // cpuset's root holds the host's CPUs; the kernel makes a new cgroup's cpuset files empty.
      const cpuset = join(dir, "cpuset");
      mkdirSync(join(cpuset, "flint", "vm1"), { recursive: true });
      writeFileSync(join(cpuset, "cpuset.cpus"), "0-3\n");
      writeFileSync(join(cpuset, "cpuset.mems"), "0\n");
      for (const level of ["flint", "flint/vm1"]) for (const f of ["cpuset.cpus", "cpuset.mems"]) writeFileSync(join(cpuset, level, f), "");
      const mounts = [{ dir: cpuset, options: ["rw", "cpuset"] }];
      applyCgroupPlan(planCgroupV1(mounts, "flint", "vm1", ["cpuset.cpus=1", "cpuset.mems=0"].map(parseCgroupSetting)));
      assert.equal(readFileSync(join(cpuset, "flint", "cpuset.cpus"), "utf8"), "0-3\n", "the parent took the root's CPUs");
      assert.equal(readFileSync(join(cpuset, "flint", "cpuset.mems"), "utf8"), "0\n");
      assert.equal(readFileSync(join(cpuset, "flint", "vm1", "cpuset.cpus"), "utf8"), "1\n");
      assert.equal(readFileSync(join(cpuset, "flint", "vm1", "cpuset.mems"), "utf8"), "0\n");
      // Nothing to inherit anywhere up to the hierarchy's root: one line.
      writeFileSync(join(cpuset, "cpuset.cpus"), "");
      writeFileSync(join(cpuset, "flint", "cpuset.cpus"), "");
      assert.throws(() => applyCgroupPlan(planCgroupV1(mounts, "flint", "vm1", [parseCgroupSetting("cpuset.cpus=1")])),
        (e: unknown) => e instanceof JailError && e.code === "ECGROUP" && /^Failed to inherit cpuset\.cpus from the parent of .*\/flint\/vm1: it is empty there$/.test(e.message));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
