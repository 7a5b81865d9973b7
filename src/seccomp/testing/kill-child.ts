/**
 * A child process for seccomp.test.ts: installs flint's process-wide filter
 * through the same call as the CLI (installProcessSeccomp, its action from
 * FLINT_SECCOMP_AUDIT), or none with --no-seccomp, then makes a call outside
 * a list and prints "survived" if it lives on:
 *   kill-child.js process [--no-seccomp]   starts a program (clone for a new process)
 *   kill-child.js vcpu|device [--no-seccomp]  a worker stacks that kind's filter
 *                                              (installThreadSeccomp), then calls
 *                                              what its list leaves out
 */
import { spawnSync } from "node:child_process";
import { Worker } from "node:worker_threads";
import { installProcessSeccomp, processSeccompAction } from "../index.js";

const kind = process.argv[2];
const on = !process.argv.includes("--no-seccomp");
if (on) installProcessSeccomp();
process.stdout.write(`installed ${processSeccompAction() ?? "none"}\n`);
if (kind === "process") {
  const r = spawnSync("/bin/true");
  process.stdout.write(`survived (child status ${r.status})\n`);
} else if (kind === "vcpu" || kind === "device") {
  const w = new Worker(new URL("./kill-worker.js", import.meta.url), { workerData: { kind, action: processSeccompAction() } });
  w.on("error", (e) => { process.stdout.write(`worker failed: ${e.message}\n`); process.exitCode = 1; });
  w.on("exit", () => process.stdout.write("survived\n"));
} else {
  process.stderr.write(`unknown kind '${kind}'\n`);
  process.exitCode = 2;
}
