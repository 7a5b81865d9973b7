/**
 * Installed filters, in child processes (a filter cannot be taken back): a
 * call outside a thread kind's list kills the whole process with SIGSYS; the
 * same child in audit mode (FLINT_SECCOMP_AUDIT=1) or without a filter
 * (--no-seccomp) makes the call and lives on.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const CHILD = fileURLToPath(new URL("./testing/kill-child.js", import.meta.url));

function run(kind: string, o: { audit?: boolean; off?: boolean } = {}) {
  const env = { ...process.env };
  delete env.FLINT_SECCOMP_AUDIT;
  if (o.audit) env.FLINT_SECCOMP_AUDIT = "1";
  const r = spawnSync(process.execPath, [CHILD, kind, ...(o.off ? ["--no-seccomp"] : [])], { encoding: "utf8", env, timeout: 60_000 });
  return { signal: r.signal, status: r.status, out: r.stdout, err: r.stderr };
}

test("the process-wide filter: starting a program kills flint's process with SIGSYS", () => {
  const r = run("process");
  assert.equal(r.signal, "SIGSYS", `killed by SIGSYS: ${JSON.stringify(r)}`);
  assert.match(r.out, /^installed kill\n$/);
});

test("a vCPU thread's filter: making a directory kills the process with SIGSYS", () => {
  const r = run("vcpu");
  assert.equal(r.signal, "SIGSYS", JSON.stringify(r));
  assert.match(r.out, /installed kill\nthread filter vcpu\n$/);
});

test("a device thread's filter: making a directory kills the process with SIGSYS", () => {
  const r = run("device");
  assert.equal(r.signal, "SIGSYS", JSON.stringify(r));
  assert.match(r.out, /installed kill\nthread filter device\n$/);
});

test("in audit mode and with --no-seccomp the same calls run and the process lives on", () => {
  for (const kind of ["process", "vcpu", "device"]) {
    const audit = run(kind, { audit: true });
    assert.equal(audit.status, 0, `${kind} audit: ${JSON.stringify(audit)}`);
    assert.match(audit.out, /^installed log\n/, kind);
    assert.match(audit.out, /survived/, kind);
    if (kind !== "process") assert.match(audit.out, new RegExp(`thread filter ${kind}\ncall returned\n`), kind);
    const off = run(kind, { off: true });
    assert.equal(off.status, 0, `${kind} off: ${JSON.stringify(off)}`);
    assert.match(off.out, /^installed none\n/, kind);
    assert.match(off.out, /survived/, kind);
  }
});
