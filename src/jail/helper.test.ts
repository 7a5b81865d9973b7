/**
 * The jail helper (native/flint_jail.c) refuses every plan whose order or
 * arguments are wrong before its first system call (exit status 2), and stops
 * at the first step that fails (exit status 1). Runs that get past the check
 * run inside `unshare -m` with paths under a fresh temporary directory.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { helperPath } from "./jail.js";
import { buildPlan, helperArgv, type JailStep } from "./plan.js";
import { SPEC } from "./plan.test.js";

const HELPER = helperPath();
const tmp = mkdtempSync(join(tmpdir(), "flint-jail-helper-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

function helper(args: string[], sandbox = false): { status: number | null; stderr: string; stdout: string } {
  const r = sandbox
    ? spawnSync("unshare", ["-m", HELPER, ...args], { encoding: "utf8" })
    : spawnSync(HELPER, args, { encoding: "utf8" });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}
const ids = ["--uid", "123", "--gid", "100"];
const check = (steps: string[]) => helper(["--check", ...ids, ...steps]);
const TAIL = ["pivot", "pid-file", "/x.pid", "drop", "exec", "/usr/bin/node"];
const HEAD = ["unshare-mount", "bind-root", join(tmp, "root")];

describe("jail helper: the plan is checked before anything is done", () => {
  it("takes the plan TypeScript builds, in every variant", () => {
    for (const extra of [{}, { newPidNs: true }, { daemonize: true, netns: "/var/run/netns/a", fsize: 1, cgroupProcs: ["/cg/memory/flint/vm1/cgroup.procs", "/cg/cpuset/flint/vm1/cgroup.procs"] }]) {
      const argv = helperArgv(HELPER, SPEC.uid, SPEC.gid, buildPlan({ ...SPEC, ...extra })).slice(1);
      const r = helper(["--check", ...argv]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, "ok\n");
    }
  });

  it("refuses an out-of-order plan with one line and exit status 2, before any step runs", () => {
    const node = join(tmp, "kvm-node");
    // mknod before the pivot: refused, and not made, even without --check.
    for (const steps of [
      ["dev", node, "2792", "0600", ...HEAD, ...TAIL],
      [...HEAD, "dir", join(tmp, "d"), "0700", ...TAIL],
    ]) {
      const r = helper([...ids, ...steps], true);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /^flint: jail: refused: step (1 'dev'|3 'dir') must come after 'pivot'/);
      assert.equal(r.stderr.trim().split("\n").length, 1);
    }
    assert.equal(existsSync(node), false);
    assert.equal(existsSync(join(tmp, "d")), false);
  });

  it("refuses each order rule by name", () => {
    const cases: [string[], RegExp][] = [
      [["dev", "/dev/kvm", "2792", "0600", ...HEAD, ...TAIL], /step 1 'dev' must come after 'pivot'/],
      [["pivot", ...TAIL.slice(1)], /'pivot' needs 'bind-root' first/],
      [["bind-root", "/srv/x", ...TAIL], /'bind-root' needs 'unshare-mount' first/],
      [[...HEAD, "pivot", "bind-ro", "/etc", join(tmp, "root", "etc"), ...TAIL.slice(1)], /'bind-ro' must come before 'pivot'/],
      [[...HEAD, "pivot", "pid-file", "/x.pid", "exec", "/usr/bin/node"], /'exec' needs 'drop' first/],
      [[...HEAD, "pivot", "drop", "exec", "/usr/bin/node"], /'drop' needs 'new-pid-ns' or 'pid-file' first/],
      [[...HEAD, ...TAIL.slice(0, 4), "dir", "/x", "0700", "exec", "/n"], /after 'drop'/],
      [[...HEAD, "pivot", "mount-proc", "/proc", "pid-file", "/x.pid", "drop", "exec", "/n"], /'mount-proc' needs 'new-pid-ns' first/],
      [[...HEAD, "pivot", "pid-file", "/x.pid", "daemonize", "drop", "exec", "/n"], /'daemonize' must come before the pid step/],
      [[...HEAD, "pivot", "pid-file", "/x.pid", "drop"], /does not end with 'exec'/],
      [[...HEAD, "pivot", "pivot", ...TAIL.slice(1)], /a second 'pivot'/],
      [["cgroup-join", "/cg/x/cgroup.procs", "unshare-mount", "bind-root", "/r", "cgroup-join", "/cg/y/cgroup.procs", ...TAIL], /'cgroup-join' must come before 'bind-root'/],
      [["chown", "/", ...TAIL], /unknown step 'chown'/],
    ];
    for (const [steps, msg] of cases) {
      const r = check(steps);
      assert.equal(r.status, 2, `${steps.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, msg, steps.join(" "));
    }
  });

  it("refuses bad arguments: ids, modes, device numbers, paths that climb or leave the root, the host root itself", () => {
    const cases: [string[], RegExp][] = [
      [["--check", "--uid", "x", "--gid", "1", ...HEAD, ...TAIL], /--uid 'x' is not a uid/],
      [["--check", "--uid", "4294967295", "--gid", "1", ...HEAD, ...TAIL], /is not a uid/],
      [["--check", "--gid", "1", ...HEAD, ...TAIL], /--uid and --gid are required/],
      [["--check", ...ids, "unshare-mount", "bind-root", "/", ...TAIL], /other than \//],
      [["--check", ...ids, "unshare-mount", "bind-root", "/srv/../etc", ...TAIL], /not a clean absolute path/],
      [["--check", ...ids, ...HEAD, "bind-ro", "/etc", "/etc/x", ...TAIL], /not inside the jail root/],
      [["--check", ...ids, ...HEAD, "bind-ro", "/etc", `${join(tmp, "root")}x/y`, ...TAIL], /not inside the jail root/],
      [["--check", ...ids, ...HEAD, "pivot", "dir", "/dev", "777", ...TAIL.slice(1)], /mode '777' is not 0NNN/],
      [["--check", ...ids, ...HEAD, "pivot", "dir", "/dev", "4755", ...TAIL.slice(1)], /mode '4755' is not 0NNN/],
      [["--check", ...ids, ...HEAD, "pivot", "dev", "/dev/kvm", "0", "0600", ...TAIL.slice(1)], /not a device number/],
      [["--check", ...ids, ...HEAD, "pivot", "dev", "/", "2792", "0600", ...TAIL.slice(1)], /path is \//],
      [["--check", ...ids, ...HEAD, "pivot", "dev", "/dev/../kvm", "2792", "0600", ...TAIL.slice(1)], /not a clean absolute path/],
      [["--check", ...ids, "rlimit", "core", "0", ...HEAD, ...TAIL], /unknown resource 'core'/],
      [["--check", ...ids, "cgroup-join", "/cg/x/memory.max", ...HEAD, ...TAIL], /not a cgroup.procs file/],
      [["--check", ...ids, ...HEAD, "pivot", "dev", "/dev/kvm"], /needs 3 argument/],
    ];
    for (const [args, msg] of cases) {
      const r = helper(args);
      assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, msg, args.join(" "));
    }
  });

  it("stops at the first failed step (exit status 1): a missing jail root ends it before the pivot and anything after", () => {
    const node = join(tmp, "never");
    const steps: JailStep[] = [["unshare-mount"], ["bind-root", join(tmp, "no-such-root")], ["pivot"], ["dev", "/never", "2792", "0600"], ["pid-file", "/x.pid"], ["drop"], ["exec", "/usr/bin/node"]];
    const r = helper(helperArgv(HELPER, 123, 100, steps).slice(1), true);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^flint: jail: cannot resolve the jail root .*no-such-root: No such file or directory\n$/);
    assert.equal(existsSync(node), false);
  });
});
