/**
 * kill-child.ts's worker: stacks a vCPU or device thread's filter as those
 * threads do (when the process has one), then calls what that kind's list
 * leaves out but the process-wide list allows: a vCPU thread opens a file
 * (openat), a device thread makes a directory (mkdir).
 */
import { mkdirSync, mkdtempSync, openSync, closeSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parentPort, workerData } from "node:worker_threads";
import { installThreadSeccomp, type DefaultAction } from "../index.js";

const { kind, action } = workerData as { kind: "vcpu" | "device"; action?: DefaultAction };
const scratch = mkdtempSync(join(tmpdir(), "flint-seccomp-kill-"));
if (action) installThreadSeccomp(kind, action);
parentPort!.postMessage(`thread filter ${action ? kind : "none"}`);
if (kind === "vcpu") closeSync(openSync("/dev/null", "r"));
else mkdirSync(join(scratch, "d"));
parentPort!.postMessage("call returned");
rmSync(scratch, { recursive: true, force: true });
