import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { JailError } from "./options.js";
import { buildPlan, checkPlan, helperArgv, type JailSpec, type JailStep } from "./plan.js";

export const SPEC: JailSpec = {
  root: "/srv/jailer/flint/vm1/root", name: "flint", uid: 123, gid: 100,
  binds: [{ source: "/usr/bin/node", target: "/usr/bin/node", kind: "file" }, { source: "/pkg/dist/bundle", target: "/opt/flint/dist/bundle", kind: "dir" }],
  devices: [{ path: "/dev/kvm", rdev: 2792 }],
  noFile: 2048, cgroupProcs: [], daemonize: false, newPidNs: false, node: "/usr/bin/node", monitorArgs: ["--id", "vm1", "--api-sock", "/run/api.sock"],
};

const names = (steps: JailStep[]) => steps.map((s) => s[0]);
const planError = (msg: RegExp) => (e: unknown) => e instanceof JailError && e.code === "EJAILPLAN" && msg.test(e.message);

describe("jail plan", () => {
  it("orders the steps as Firecracker's jailer does: limits, mount namespace and binds, pivot, the jail's own files, pid, drop, exec", () => {
    const steps = buildPlan(SPEC);
    assert.deepEqual(names(steps), ["rlimit", "unshare-mount", "bind-root", "bind-ro", "bind-ro", "pivot", "dir", "dir", "dir", "dir", "dev", "symlink", "pid-file", "drop", "exec"]);
    assert.deepEqual(steps[3], ["bind-ro", "/usr/bin/node", "/srv/jailer/flint/vm1/root/usr/bin/node"]);
    assert.deepEqual(steps[6], ["dir", "/", "0700"]);
    assert.deepEqual(steps[10], ["dev", "/dev/kvm", "2792", "0600"]);
    assert.deepEqual(steps[11], ["symlink", "/opt/flint/dist/bundle/main.js", "/flint"]);
    assert.deepEqual(steps[12], ["pid-file", "/flint.pid"]);
    assert.deepEqual(steps[14], ["exec", "/usr/bin/node", "/flint", "--id", "vm1", "--api-sock", "/run/api.sock"]);
  });

  it("places netns, fsize and the cgroups (one per v1 hierarchy) before the mount namespace; daemonize and the new pid namespace (with its /proc) after the pivot", () => {
    const procs = ["/cg/memory/flint/vm1/cgroup.procs", "/cg/cpuset/flint/vm1/cgroup.procs"];
    const steps = buildPlan({ ...SPEC, netns: "/var/run/netns/a", fsize: 10, cgroupProcs: procs, daemonize: true, newPidNs: true });
    assert.deepEqual(names(steps).slice(0, 6), ["setns-net", "rlimit", "rlimit", "cgroup-join", "cgroup-join", "unshare-mount"]);
    assert.deepEqual(steps.filter((s) => s[0] === "cgroup-join").map((s) => s[1]), procs);
    assert.deepEqual(names(steps).slice(-6), ["symlink", "daemonize", "new-pid-ns", "mount-proc", "drop", "exec"]);
  });

  it("refuses plans out of order: anything that owns or makes nodes before the pivot, binds after it, steps after exec, a bind outside the root", () => {
    const good = buildPlan(SPEC);
    const root = SPEC.root;
    const devFirst: JailStep[] = [["dev", "/dev/kvm", "2792", "0600"], ...good];
    assert.throws(() => checkPlan(devFirst, root), planError(/step 2 'rlimit' comes after the post phase/));
    const bindLate: JailStep[] = [...good.slice(0, 6), ["bind-ro", "/etc", `${root}/etc`], ...good.slice(6)];
    assert.throws(() => checkPlan(bindLate, root), planError(/'bind-ro' comes after the pivot phase/));
    assert.throws(() => checkPlan(good.filter((s) => s[0] !== "pivot"), root), planError(/exactly one pivot/));
    assert.throws(() => checkPlan([...good, ["dir", "/x", "0700"]], root), planError(/comes after the exec phase/));
    const outside: JailStep[] = good.map((s) => (s[0] === "bind-ro" ? ["bind-ro", "/etc", "/etc"] : s));
    assert.throws(() => checkPlan(outside, root), planError(/outside the jail root/));
    assert.throws(() => checkPlan(good.slice(0, -1), root), planError(/last step must be exec/));
  });

  it("hands the helper --uid, --gid, then the steps flattened", () => {
    assert.deepEqual(helperArgv("/h", 1, 2, [["pivot"], ["exec", "/n", "a"]]), ["/h", "--uid", "1", "--gid", "2", "pivot", "exec", "/n", "a"]);
  });
});
