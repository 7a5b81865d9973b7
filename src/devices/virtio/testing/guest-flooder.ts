/**
 * What the main thread and a guest flooder thread (guest-flooder-worker.ts)
 * share: the thread's workerData and the slots of its control block.
 */
import type { MemoryDescriptor } from "../../../memory/guest-memory.js";
import type { QueueLayout } from "../types.js";

/** workerData of the flooder thread. */
export interface FlooderInit {
  memory: MemoryDescriptor;
  layout: QueueLayout;
  heads: number[];
  maxOutstanding: number;
  /** The queue's notify eventfd, or -1 for no kicks. */
  notifyFd: number;
  /** Int32 slots: FLOOD_STOP, FLOOD_ADDED, FLOOD_KICKS, FLOOD_RUNNING, FLOOD_PAUSE, FLOOD_PAUSED. */
  control: SharedArrayBuffer;
}

/** Slots of FlooderInit.control. */
export const FLOOD_STOP = 0;
export const FLOOD_ADDED = 1;
export const FLOOD_KICKS = 2;
export const FLOOD_RUNNING = 3;
/** Set by the main thread to pause the flood; the thread answers in FLOOD_PAUSED. */
export const FLOOD_PAUSE = 4;
export const FLOOD_PAUSED = 5;
export const FLOOD_SLOTS = 6;
