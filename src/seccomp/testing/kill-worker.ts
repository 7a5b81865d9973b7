/**
 * kill-child.ts's worker: stacks a vCPU or device thread's filter as those
 * threads do (when the process has one), then calls what that kind's list
 * leaves out but the process-wide list allows: making a directory (mkdir).
 */
import { mkdirSync, mkdtempSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { workerData } from "node:worker_threads";
import { installThreadSeccomp, type DefaultAction } from "../index.js";

const { kind, action } = workerData as { kind: "vcpu" | "device"; action?: DefaultAction };
const scratch = mkdtempSync(join(tmpdir(), "flint-seccomp-kill-"));
if (action) installThreadSeccomp(kind, action);
// Written straight to stdout (write(2) is on every list): a message might not reach the main thread before the kill.
writeSync(1, `thread filter ${action ? kind : "none"}\n`);
mkdirSync(join(scratch, "d"));
writeSync(1, "call returned\n");
rmSync(scratch, { recursive: true, force: true });
