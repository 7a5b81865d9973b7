/**
 * The control block shared by the main thread and every vCPU thread: one
 * Int32Array over a SharedArrayBuffer. A vCPU checks STOP and PAUSE before
 * each KVM_RUN; the first thread to claim EXIT_CLAIMED reports why the VM
 * ended. A vCPU asked to pause parks on PAUSE with Atomics.wait (no busy
 * loop) and counts itself in PARKED, which the main thread watches.
 */
export const CONTROL_STOP = 0;
export const CONTROL_EXIT_CLAIMED = 1;
export const CONTROL_RUNNING = 2;
/** 1 while the main thread wants every vCPU parked out of KVM_RUN. */
export const CONTROL_PAUSE = 3;
/** How many vCPUs are parked (each adds itself, and removes itself when it leaves). */
export const CONTROL_PARKED = 4;
const CONTROL_WORDS = 8;

/** A fresh control block (all words 0: running, nothing claimed). */
export function createControl(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4));
}

/**
 * Marks the VM as stopping; true for the caller that got there first. A
 * parked vCPU is woken (PAUSE cleared after STOP is set, so it sees STOP):
 * a paused VM can always be stopped.
 */
export function claimExit(control: Int32Array): boolean {
  const first = Atomics.compareExchange(control, CONTROL_EXIT_CLAIMED, 0, 1) === 0;
  Atomics.store(control, CONTROL_STOP, 1);
  Atomics.store(control, CONTROL_PAUSE, 0);
  Atomics.notify(control, CONTROL_PAUSE);
  return first;
}

/** Whether the VM is ending (a vCPU leaves its loop). */
export function stopRequested(control: Int32Array): boolean {
  return Atomics.load(control, CONTROL_STOP) !== 0;
}

/** Whether the main thread wants the vCPUs parked (checked before each KVM_RUN). */
export function pauseRequested(control: Int32Array): boolean {
  return Atomics.load(control, CONTROL_PAUSE) !== 0;
}

/** Main thread: asks every vCPU to park (true) or to run again (false), waking parked ones. */
export function requestPause(control: Int32Array, on: boolean): void {
  if (on && stopRequested(control)) return; // an ending VM's vCPUs must not park again
  Atomics.store(control, CONTROL_PAUSE, on ? 1 : 0);
  if (!on) Atomics.notify(control, CONTROL_PAUSE);
}

/** vCPUs parked now. */
export function parkedCount(control: Int32Array): number {
  return Atomics.load(control, CONTROL_PARKED);
}

/**
 * vCPU thread: counts itself parked and sleeps on PAUSE until the main thread
 * resumes or stops the VM, then counts itself out. Each change of PARKED is
 * notified, so the main thread can wait for it with Atomics.waitAsync.
 */
export function parkWhilePaused(control: Int32Array): void {
  Atomics.add(control, CONTROL_PARKED, 1);
  Atomics.notify(control, CONTROL_PARKED);
  while (Atomics.load(control, CONTROL_PAUSE) !== 0) Atomics.wait(control, CONTROL_PAUSE, 1);
  Atomics.sub(control, CONTROL_PARKED, 1);
  Atomics.notify(control, CONTROL_PARKED);
}
