import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { applyCgroupPlan, findCgroup2Mount, planCgroupV2 } from "./cgroup.js";
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
    assert.equal(p.dir, "/cg/flint/vm1");
    assert.equal(p.procs, "/cg/flint/vm1/cgroup.procs");
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
