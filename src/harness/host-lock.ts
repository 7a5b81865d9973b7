/**
 * A host-wide lock between processes, so that only one nested outer VM runs
 * at a time. The outer VM is QEMU under TCG with one busy host thread per
 * vCPU; on a 2-core machine two of them at once starve each other, and the
 * guests inside see soft lockups and RCU stalls that have nothing to do with
 * the code under test. Test files run in parallel, so they queue here.
 *
 * The lock is a directory (mkdir is atomic) holding its owner's pid; a lock
 * whose owner has died is taken over.
 */
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** Why the lock could not be taken. */
export class HostLockError extends Error {
  readonly code = "ELOCKTIMEOUT";
  constructor(message: string) {
    super(message);
    this.name = "HostLockError";
  }
}

/** A lock directory without a pid file younger than this is being created, not abandoned. */
const CREATING_GRACE_MS = 10_000;

function ownerAlive(dir: string): boolean {
  let pid: number;
  try {
    pid = Number(readFileSync(join(dir, "pid"), "utf8"));
  } catch {
    try {
      return Date.now() - statSync(dir).mtimeMs < CREATING_GRACE_MS;
    } catch {
      return false; // gone already
    }
  }
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Waits until this process holds the lock at `dir`, then resolves with its
 * release function. Rejects with ELOCKTIMEOUT after `waitMs`.
 */
export async function acquireHostLock(dir: string, waitMs: number, pollMs = 200): Promise<() => void> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      mkdirSync(dir);
      writeFileSync(join(dir, "pid"), String(process.pid));
      let released = false;
      return () => {
        if (released) return;
        released = true;
        rmSync(dir, { recursive: true, force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    if (!ownerAlive(dir)) {
      rmSync(dir, { recursive: true, force: true });
      continue;
    }
    if (Date.now() >= deadline) throw new HostLockError(`Cannot take the lock '${dir}': still held after ${waitMs} ms`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
