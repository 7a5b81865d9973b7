/**
 * A virtio backend whose device thread blocks in a host syscall, standing in
 * for a disk that does not answer: on the driver's first queue kick it writes
 * `markerPath` (so a test knows the thread is about to block) and then
 * read(2)s one byte from the FIFO at `fifoPath`, which blocks until the test
 * writes to it. V8 cannot interrupt the thread meanwhile; only the syscall
 * returning can.
 */
import { writeFileSync } from "node:fs";
import { O_CLOEXEC, O_RDWR } from "../../linux/abi.generated.js";
import type { VirtioBackend } from "../../devices/virtio/types.js";
import { sys } from "../../sys/native.js";

/** Options (JSON). */
export interface StallOptions {
  /** A FIFO (mkfifo); opened read-write, so neither the open nor the test's later write blocks. */
  fifoPath: string;
  /** Written right before the device thread blocks. */
  markerPath: string;
}

/** Not a real device type, so no guest driver binds to it. */
export const STALL_DEVICE_ID = 0x3ffe;

export function createBackend(options: unknown): VirtioBackend {
  const o = options as StallOptions;
  const fd = sys.open(o.fifoPath, O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) throw new Error(`cannot open ${o.fifoPath}: errno ${-fd}`);
  const byte = new Uint8Array(1);
  return {
    deviceId: STALL_DEVICE_ID,
    queueMaxSizes: [16],
    deviceFeatures: 0n,
    initialConfig: () => new Uint8Array(0),
    activate() {},
    onNotify() {
      writeFileSync(o.markerPath, "blocked\n");
      sys.read(fd, byte, 1); // blocks: the "slow disk"
    },
    reset() {},
    shutdown() {
      sys.close(fd);
    },
  };
}
