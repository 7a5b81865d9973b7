/**
 * The control block shared by the main thread and every vCPU thread: one
 * Int32Array over a SharedArrayBuffer. A vCPU checks STOP before each
 * KVM_RUN; the first thread to claim EXIT_CLAIMED reports why the VM ended.
 */
export const CONTROL_STOP = 0;
export const CONTROL_EXIT_CLAIMED = 1;
export const CONTROL_RUNNING = 2;
const CONTROL_WORDS = 4;

export function createControl(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4));
}

/** Marks the VM as stopping; true for the caller that got there first. */
export function claimExit(control: Int32Array): boolean {
  const first = Atomics.compareExchange(control, CONTROL_EXIT_CLAIMED, 0, 1) === 0;
  Atomics.store(control, CONTROL_STOP, 1);
  return first;
}

export function stopRequested(control: Int32Array): boolean {
  return Atomics.load(control, CONTROL_STOP) !== 0;
}
