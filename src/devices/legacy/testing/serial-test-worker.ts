/**
 * Test worker: a "vCPU" that builds its own Serial over the shared state and
 * writes `count` bytes to THR, the way a polled console would (LSR, then THR).
 * Posts { done, fullSeen } where fullSeen counts LSR reads with THRE clear.
 */
import { parentPort, workerData } from "node:worker_threads";
import { COM1_IRQ } from "../../../arch/x86_64/layout.js";
import { UART_LSR, UART_LSR_THRE, UART_TX } from "../../../linux/abi.generated.js";
import { Serial } from "../serial.js";

export interface SerialWriterJob {
  shared: SharedArrayBuffer;
  count: number;
  /** Byte i is `((i * 7 + (i >> 9)) % modulus + offset) & 0xff` (see patternByte). */
  offset: number;
  modulus: number;
}

export function patternByte(job: Omit<SerialWriterJob, "shared" | "count">, i: number): number {
  return (((i * 7 + (i >> 9)) % job.modulus) + job.offset) & 0xff;
}

if (parentPort && workerData) {
  const job = workerData as SerialWriterJob;
  const faults: string[] = [];
  const uart = new Serial(job.shared, COM1_IRQ, {
    setIrqLine() {},
    requestExit() {},
    guestFault: (device, message) => void faults.push(`${device}: ${message}`),
  });
  const byte = new Uint8Array(1);
  const lsr = new Uint8Array(1);
  let fullSeen = 0;
  for (let i = 0; i < job.count; i++) {
    uart.read(UART_LSR, lsr);
    if (!(lsr[0]! & UART_LSR_THRE)) fullSeen++;
    byte[0] = patternByte(job, i);
    uart.write(UART_TX, byte);
  }
  parentPort.postMessage({ done: true, fullSeen, faults });
}
