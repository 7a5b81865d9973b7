/**
 * The 16550A UART's state as it lives in one SharedArrayBuffer, shared by the
 * guest-facing register file (serial.ts, one copy per vCPU worker) and the
 * host side (serial-host.ts, main thread). Only this module knows the layout.
 *
 *   [0, HEADER_BYTES)          Int32 slots: lock, registers, ring counters
 *   [TX_RING_OFFSET, +64 KiB)  TX ring: guest -> host output
 *   [RX_RING_OFFSET, +4 KiB)   RX ring: host -> guest input
 *
 * Ring counters count bytes ever moved and wrap at 2^32; `(head - tail) | 0`
 * is the fill level and `counter & (size - 1)` the index (sizes are powers of
 * two). Each ring has one writer side and one reader side; the lock orders
 * the register and interrupt state, and Atomics.notify on a counter wakes the
 * other side (host: TX_HEAD, RX_TAIL; a vCPU blocked on a full TX ring: TX_TAIL).
 *
 * Interrupt logic lives here too, because both sides change its inputs: the
 * guest through registers, the host by draining TX (THRE) and filling RX (RDA).
 */
import type { DeviceContext } from "../bus.js";
import { SpinLock } from "../shared-lock.js";
import { KiB } from "../../arch/x86_64/layout.js";
import {
  UART_FCR_ENABLE_FIFO,
  UART_IER_MSI,
  UART_IER_RDI,
  UART_IER_RLSI,
  UART_IER_THRI,
  UART_IIR_MSI,
  UART_IIR_NO_INT,
  UART_IIR_RDI,
  UART_IIR_RLSI,
  UART_IIR_THRI,
  UART_LSR_BRK_ERROR_BITS,
  UART_MCR_DTR,
  UART_MCR_LOOP,
  UART_MCR_OUT1,
  UART_MCR_OUT2,
  UART_MCR_RTS,
  UART_MSR_ANY_DELTA,
  UART_MSR_CTS,
  UART_MSR_DCD,
  UART_MSR_DCTS,
  UART_MSR_DDCD,
  UART_MSR_DDSR,
  UART_MSR_DSR,
  UART_MSR_RI,
  UART_MSR_TERI,
} from "../../linux/abi.generated.js";

/** Depth of the 16550A's transmit and receive FIFOs (PC16550D datasheet §8.4). */
export const UART_FIFO_SIZE = 16;
/** Guest output buffered for the host: large enough that boot logs never wait. */
export const SERIAL_TX_RING_BYTES = 64 * KiB;
/** Guest input buffered from the host. */
export const SERIAL_RX_RING_BYTES = 4 * KiB;
/**
 * Longest single sleep of a vCPU waiting for TX room. The host's notify
 * normally wakes it at once; the slice bounds the one race a notify cannot
 * cover (a release or close that lands between the writer's check and its
 * wait), so a stopping VM never waits on a stalled console for longer.
 */
export const SERIAL_TX_WAIT_SLICE_MS = 20;
/**
 * Divisor latch after reset: 12 = 9600 baud from the 1.8432 MHz clock, what a
 * PC BIOS leaves (Linux's console probe_baud() divides by it, so never 0).
 */
export const UART_DEFAULT_DIVISOR = 12;

/** Int32 slot indices of the header. Each offset is written once, here. */
const LOCK = 0;
const MAGIC = 1;
const IER = 2;
const LCR = 3;
const MCR = 4;
const FCR = 5;
/** Sticky LSR error bits (OE...), cleared by reading LSR. */
const LSR_ERR = 6;
/** MSR delta bits (DCTS, DDSR, TERI, DDCD), cleared by reading MSR. */
const MSR_DELTA = 7;
const SCR = 8;
const DLL = 9;
const DLM = 10;
/** The THRE interrupt is armed (cleared by reading IIR when it is the source, or by writing THR). */
const THR_PENDING = 11;
/** The level last driven on the IRQ line, so setIrqLine runs only on change. */
const IRQ_LEVEL = 12;
/** The last byte read from RBR: what RBR returns when the receiver is empty. */
const RBR_LAST = 13;
const TX_HEAD = 14;
const TX_TAIL = 15;
/** THRE as last evaluated (1: the TX ring has room for a FIFO's worth), to see it rise. */
const TX_THRE = 16;
const RX_HEAD = 17;
const RX_TAIL = 18;
/** Set by the host's close(): blocked writers give up, the host stops. */
const CLOSED = 19;
/** Bytes the guest wrote that could not be kept (ring full and the writer may not block, or closed). */
const TX_DROPPED = 20;
/** Set when the VM is being stopped: a writer finding the ring full drops its byte instead of waiting. */
const TX_RELEASED = 21;
const SLOTS = 32;

const HEADER_BYTES = SLOTS * Int32Array.BYTES_PER_ELEMENT;
const TX_RING_OFFSET = HEADER_BYTES;
const RX_RING_OFFSET = TX_RING_OFFSET + SERIAL_TX_RING_BYTES;
/** Size of the SharedArrayBuffer createSerialShared returns. */
export const SERIAL_SHARED_BYTES = RX_RING_OFFSET + SERIAL_RX_RING_BYTES;
/** "16550A" layout version 1, to catch a buffer that was not made by createSerialShared. */
const LAYOUT_MAGIC = 0x16550a01;

/** Why a serial port could not be built. */
export class SerialError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "SerialError";
    this.code = code;
  }
}

/** A fresh, reset 16550A (registers at their power-on values, rings empty). */
export function createSerialShared(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(SERIAL_SHARED_BYTES);
  const s = new Int32Array(sab, 0, SLOTS);
  s[MAGIC] = LAYOUT_MAGIC;
  s[DLL] = UART_DEFAULT_DIVISOR & 0xff;
  s[DLM] = UART_DEFAULT_DIVISOR >> 8;
  s[TX_THRE] = 1;
  return sab;
}

/** Register values that survive a snapshot (the TX ring is flushed first; RX bytes are kept). */
export interface SerialSavedState {
  kind: "serial-16550a";
  version: 1;
  ier: number; lcr: number; mcr: number; fcr: number; lsrErr: number; msrDelta: number;
  scr: number; dll: number; dlm: number; thrPending: number; rbrLast: number;
  rx: number[];
}

/** A view of one UART's shared state, with the operations both sides need. */
export class SerialState {
  readonly lock: SpinLock;
  private readonly s: Int32Array;
  private readonly tx: Uint8Array;
  private readonly rx: Uint8Array;

  constructor(shared: SharedArrayBuffer, readonly irq: number, private readonly ctx: DeviceContext) {
    if (!(shared instanceof SharedArrayBuffer) || shared.byteLength !== SERIAL_SHARED_BYTES) {
      throw new SerialError("EBADSHARED", "Cannot attach serial port: buffer was not made by createSerialShared()");
    }
    this.s = new Int32Array(shared, 0, SLOTS);
    if (Atomics.load(this.s, MAGIC) !== LAYOUT_MAGIC) {
      throw new SerialError("EBADSHARED", "Cannot attach serial port: buffer was not made by createSerialShared()");
    }
    this.tx = new Uint8Array(shared, TX_RING_OFFSET, SERIAL_TX_RING_BYTES);
    this.rx = new Uint8Array(shared, RX_RING_OFFSET, SERIAL_RX_RING_BYTES);
    this.lock = new SpinLock(this.s, LOCK);
  }

  // --- registers (call with the lock held) -------------------------------
  get ier(): number { return this.s[IER]!; }
  set ier(v: number) { this.s[IER] = v; }
  get lcr(): number { return this.s[LCR]!; }
  set lcr(v: number) { this.s[LCR] = v; }
  get mcr(): number { return this.s[MCR]!; }
  set mcr(v: number) { this.s[MCR] = v; }
  get fcr(): number { return this.s[FCR]!; }
  set fcr(v: number) { this.s[FCR] = v; }
  get lsrErr(): number { return this.s[LSR_ERR]!; }
  set lsrErr(v: number) { this.s[LSR_ERR] = v; }
  get msrDelta(): number { return this.s[MSR_DELTA]!; }
  set msrDelta(v: number) { this.s[MSR_DELTA] = v; }
  get scr(): number { return this.s[SCR]!; }
  set scr(v: number) { this.s[SCR] = v; }
  get dll(): number { return this.s[DLL]!; }
  set dll(v: number) { this.s[DLL] = v; }
  get dlm(): number { return this.s[DLM]!; }
  set dlm(v: number) { this.s[DLM] = v; }
  get thrPending(): boolean { return this.s[THR_PENDING] !== 0; }
  set thrPending(v: boolean) { this.s[THR_PENDING] = v ? 1 : 0; }
  get rbrLast(): number { return this.s[RBR_LAST]!; }
  set rbrLast(v: number) { this.s[RBR_LAST] = v; }
  get fifoEnabled(): boolean { return (this.s[FCR]! & UART_FCR_ENABLE_FIFO) !== 0; }
  get loopback(): boolean { return (this.s[MCR]! & UART_MCR_LOOP) !== 0; }

  /**
   * MSR bits 4-7. In loopback the modem inputs are wired to the MCR outputs
   * (RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD; PC16550D §8.6, as Linux's
   * autoconfig LOOP test expects); otherwise a modem is always "connected".
   */
  modemLines(mcr = this.mcr): number {
    if (!(mcr & UART_MCR_LOOP)) return UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS;
    return (mcr & UART_MCR_RTS ? UART_MSR_CTS : 0) | (mcr & UART_MCR_DTR ? UART_MSR_DSR : 0)
      | (mcr & UART_MCR_OUT1 ? UART_MSR_RI : 0) | (mcr & UART_MCR_OUT2 ? UART_MSR_DCD : 0);
  }

  /** Writes MCR and latches the MSR delta bits its change causes. */
  writeMcr(value: number): void {
    const before = this.modemLines();
    this.mcr = value;
    const after = this.modemLines();
    const changed = before ^ after;
    let delta = 0;
    if (changed & UART_MSR_CTS) delta |= UART_MSR_DCTS;
    if (changed & UART_MSR_DSR) delta |= UART_MSR_DDSR;
    if (changed & UART_MSR_DCD) delta |= UART_MSR_DDCD;
    if (before & UART_MSR_RI && !(after & UART_MSR_RI)) delta |= UART_MSR_TERI; // trailing edge only
    this.msrDelta |= delta;
  }

  // --- TX ring: vCPU writes, host drains ----------------------------------
  txHead(): number { return Atomics.load(this.s, TX_HEAD); }
  txTail(): number { return Atomics.load(this.s, TX_TAIL); }
  txUsed(): number { return (this.txHead() - this.txTail()) | 0; }
  txFree(): number { return SERIAL_TX_RING_BYTES - this.txUsed(); }
  /** THRE/TEMT: the ring can take a whole FIFO's worth, so a driver may write 16 bytes. */
  txHasFifoRoom(): boolean { return this.txFree() >= UART_FIFO_SIZE; }

  /** Appends a byte; the caller checked txFree() > 0 with the lock held. Wakes the host. */
  txPush(byte: number): void {
    const head = this.txHead();
    this.tx[head & (SERIAL_TX_RING_BYTES - 1)] = byte;
    Atomics.store(this.s, TX_HEAD, (head + 1) | 0);
    Atomics.notify(this.s, TX_HEAD);
  }

  /** Copies out the bytes in [tail, head) without consuming them (host side, no lock needed). */
  txPeek(head: number, tail: number): Buffer {
    const n = (head - tail) | 0;
    const out = Buffer.allocUnsafe(n);
    const start = tail & (SERIAL_TX_RING_BYTES - 1);
    const first = Math.min(n, SERIAL_TX_RING_BYTES - start);
    out.set(this.tx.subarray(start, start + first), 0);
    if (first < n) out.set(this.tx.subarray(0, n - first), first);
    return out;
  }

  /** Consumes `n` bytes (lock held), wakes blocked writers, and raises THRE if it came back. */
  txConsume(n: number): void {
    Atomics.store(this.s, TX_TAIL, (this.txTail() + n) | 0);
    Atomics.notify(this.s, TX_TAIL);
    this.noteThre();
  }

  /**
   * Records THRE after the ring changed. THRE rising (the host made room)
   * arms the THRE interrupt, as a real transmitter does when its FIFO empties.
   */
  noteThre(): void {
    const thre = this.txHasFifoRoom();
    if (thre && this.s[TX_THRE] === 0) this.thrPending = true;
    this.s[TX_THRE] = thre ? 1 : 0;
  }

  /**
   * After a THR write (lock held): writing THR cleared the THRE interrupt; the
   * byte went straight to the ring (the "wire"), so if the ring can still take
   * a FIFO's worth THRE is set again at once and the interrupt re-arms, just
   * as a real 16550A's would once its FIFO drained. Otherwise the host's drain
   * re-arms it (noteThre).
   */
  afterTransmit(): void {
    const thre = this.txHasFifoRoom();
    this.thrPending = thre;
    this.s[TX_THRE] = thre ? 1 : 0;
  }

  /**
   * Blocks the calling vCPU thread (lock released) until the host moves the
   * TX tail away from `tail`, closes the port or releases writers. Returns
   * false where the writer must give up instead: blocking is not allowed (the
   * main thread, whose event loop is the one that drains), or the port was
   * closed or its writers released (the VM is stopping).
   */
  waitForTxRoom(tail: number, canBlock: boolean): boolean {
    if (!canBlock) return false;
    this.lock.unlock();
    try {
      // Sleep in slices: a release that slips in between the check and the wait is seen within one.
      while (Atomics.load(this.s, TX_TAIL) === tail && !this.isClosed() && !this.writersReleased()) {
        Atomics.wait(this.s, TX_TAIL, tail, SERIAL_TX_WAIT_SLICE_MS);
      }
    } finally {
      this.lock.lock();
    }
    return !this.isClosed() && !this.writersReleased();
  }

  /**
   * Stops vCPUs from waiting for TX room (the VM is stopping): a writer
   * blocked on a full ring, or one that finds it full later, drops its byte
   * and counts it. The host keeps draining what the ring holds.
   */
  releaseWriters(): void {
    Atomics.store(this.s, TX_RELEASED, 1);
    Atomics.notify(this.s, TX_TAIL);
  }

  writersReleased(): boolean { return Atomics.load(this.s, TX_RELEASED) !== 0; }

  countTxDropped(): void { Atomics.add(this.s, TX_DROPPED, 1); }
  txDropped(): number { return Atomics.load(this.s, TX_DROPPED); }

  // --- RX ring: host fills, vCPU reads -------------------------------------
  rxHead(): number { return Atomics.load(this.s, RX_HEAD); }
  rxTail(): number { return Atomics.load(this.s, RX_TAIL); }
  rxCount(): number { return (this.rxHead() - this.rxTail()) | 0; }
  rxFree(): number { return SERIAL_RX_RING_BYTES - this.rxCount(); }

  /** Appends up to rxFree() bytes (lock held); returns how many were taken. */
  rxPush(bytes: Uint8Array): number {
    const n = Math.min(bytes.length, this.rxFree());
    let head = this.rxHead();
    for (let i = 0; i < n; i++, head = (head + 1) | 0) this.rx[head & (SERIAL_RX_RING_BYTES - 1)] = bytes[i]!;
    Atomics.store(this.s, RX_HEAD, head);
    return n;
  }

  /** Takes one byte (lock held, rxCount() > 0) and wakes a host waiting for room. */
  rxPop(): number {
    const tail = this.rxTail();
    const byte = this.rx[tail & (SERIAL_RX_RING_BYTES - 1)]!;
    Atomics.store(this.s, RX_TAIL, (tail + 1) | 0);
    Atomics.notify(this.s, RX_TAIL);
    return byte;
  }

  /** Empties the receive FIFO (FCR CLEAR_RCVR) and wakes a host waiting for room. */
  rxClear(): void {
    Atomics.store(this.s, RX_TAIL, this.rxHead());
    Atomics.notify(this.s, RX_TAIL);
  }

  // --- interrupts ------------------------------------------------------------
  /**
   * IIR bits 0-3: the highest-priority enabled pending source (PC16550D
   * Table IV: line status > received data > THR empty > modem status).
   */
  interruptId(): number {
    const ier = this.ier;
    if (ier & UART_IER_RLSI && this.lsrErr & UART_LSR_BRK_ERROR_BITS) return UART_IIR_RLSI;
    if (ier & UART_IER_RDI && this.rxCount() > 0) return UART_IIR_RDI;
    if (ier & UART_IER_THRI && this.thrPending) return UART_IIR_THRI;
    if (ier & UART_IER_MSI && this.msrDelta & UART_MSR_ANY_DELTA) return UART_IIR_MSI;
    return UART_IIR_NO_INT;
  }

  /**
   * Drives the IRQ line from the state (lock held). On a PC the UART's INTR
   * reaches the bus through a buffer enabled by OUT2; in loopback the chip
   * forces its OUT2 pin inactive, so the line is quiet (PC16550D §8.6).
   */
  updateIrq(): void {
    const mcr = this.mcr;
    const level: 0 | 1 =
      this.interruptId() !== UART_IIR_NO_INT && mcr & UART_MCR_OUT2 && !(mcr & UART_MCR_LOOP) ? 1 : 0;
    if (level === this.s[IRQ_LEVEL]) return;
    this.s[IRQ_LEVEL] = level;
    this.ctx.setIrqLine(this.irq, level);
  }

  // --- host control ------------------------------------------------------------
  isClosed(): boolean { return Atomics.load(this.s, CLOSED) !== 0; }

  /** Marks the port closed and wakes everyone who may be waiting on it. */
  close(): void {
    Atomics.store(this.s, CLOSED, 1);
    Atomics.store(this.s, TX_RELEASED, 1);
    for (const slot of [TX_HEAD, TX_TAIL, RX_TAIL]) Atomics.notify(this.s, slot);
  }

  /** Int32 cells the host waits on with Atomics.waitAsync. */
  waitCell(which: "txHead" | "rxTail"): [Int32Array, number] {
    return [this.s, which === "txHead" ? TX_HEAD : RX_TAIL];
  }

  save(): SerialSavedState {
    const rx: number[] = [];
    for (let i = this.rxTail(); i !== this.rxHead(); i = (i + 1) | 0) rx.push(this.rx[i & (SERIAL_RX_RING_BYTES - 1)]!);
    return {
      kind: "serial-16550a", version: 1,
      ier: this.ier, lcr: this.lcr, mcr: this.mcr, fcr: this.fcr, lsrErr: this.lsrErr,
      msrDelta: this.msrDelta, scr: this.scr, dll: this.dll, dlm: this.dlm,
      thrPending: this.thrPending ? 1 : 0, rbrLast: this.rbrLast, rx,
    };
  }

  restore(st: SerialSavedState): void {
    if (st.kind !== "serial-16550a" || st.version !== 1) {
      throw new SerialError("EBADSTATE", `Cannot restore serial port: unknown state ${st.kind} v${st.version}`);
    }
    const byte = (v: number): number => v & 0xff;
    this.ier = byte(st.ier); this.lcr = byte(st.lcr); this.mcr = byte(st.mcr); this.fcr = byte(st.fcr);
    this.lsrErr = byte(st.lsrErr); this.msrDelta = byte(st.msrDelta); this.scr = byte(st.scr);
    this.dll = byte(st.dll); this.dlm = byte(st.dlm); this.thrPending = st.thrPending !== 0;
    this.rbrLast = byte(st.rbrLast);
    this.rxClear();
    this.rxPush(Uint8Array.from(st.rx.slice(0, SERIAL_RX_RING_BYTES), byte));
    this.noteThre();
    this.updateIrq();
  }
}
