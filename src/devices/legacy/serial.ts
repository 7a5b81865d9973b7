/**
 * A 16550A UART as Linux's 8250 driver expects it (COM1: COM1_PORT, COM1_IRQ;
 * insert with `pioBus.insert(COM1_PORT, SERIAL_PORT_COUNT, serial)`).
 *
 * Register protocol after the National Semiconductor PC16550D datasheet
 * (Table II register map, Table IV interrupt control) and the driver in
 * drivers/tty/serial/8250/8250_port.c, whose autoconfig() probe (IER test,
 * MCR loopback test, IIR FIFO bits) this device passes as a plain 16550A.
 *
 * Every vCPU worker builds its own `Serial` over the same SharedArrayBuffer
 * (createSerialShared); the host side is SerialHost (serial-host.ts).
 *
 * Choices where the chip and a VMM differ:
 * - The transmitter is the TX ring. THRE and TEMT read as set while the ring
 *   can take a FIFO's worth (UART_FIFO_SIZE), so the driver's 16-byte bursts
 *   never wait; bytes in the ring count as sent, and FCR CLEAR_XMIT does not
 *   discard them (Linux clears the FIFOs when a tty opens; boot output must
 *   survive that).
 * - Output is never lost: a THR write with the ring full blocks this vCPU
 *   (lock released) until the host drains; a slow terminal slows the guest.
 *   Only stopping the VM (SerialHost.releaseWriters, or close) ends the
 *   wait: the byte is then dropped and counted, so a stalled console can
 *   never keep a vCPU from stopping.
 * - The receiver FIFO is the RX ring, deeper than 16 bytes for host input;
 *   bytes looped back in loopback mode still obey the real FIFO depth (so
 *   the driver's size_fifo() measures 16) and overrun sets LSR.OE.
 * - Only byte accesses mean anything (the 8250 driver uses inb/outb); wider
 *   ones read 0xff and are reported as guest faults.
 */
import { isMainThread } from "node:worker_threads";
import type { BusDevice, DeviceContext } from "../bus.js";
import {
  UART_FCR,
  UART_FCR_CLEAR_RCVR,
  UART_FCR_ENABLE_FIFO,
  UART_IER,
  UART_IER_MSI,
  UART_IER_RDI,
  UART_IER_RLSI,
  UART_IER_THRI,
  UART_IIR,
  UART_IIR_THRI,
  UART_LCR,
  UART_LCR_DLAB,
  UART_LSR,
  UART_LSR_DR,
  UART_LSR_OE,
  UART_LSR_TEMT,
  UART_LSR_THRE,
  UART_MCR,
  UART_MCR_DTR,
  UART_MCR_LOOP,
  UART_MCR_OUT1,
  UART_MCR_OUT2,
  UART_MCR_RTS,
  UART_MSR,
  UART_RX,
  UART_SCR,
  UART_TX,
} from "../../linux/abi.generated.js";
import { SerialState, UART_FIFO_SIZE } from "./serial-state.js";

export {
  createSerialShared,
  SERIAL_SHARED_BYTES,
  SerialError,
  type SerialSavedState,
} from "./serial-state.js";

/** I/O ports a 16550 decodes: RBR/THR/DLL at +0 through SCR at +7. */
export const SERIAL_PORT_COUNT = UART_SCR + 1;

/**
 * IIR bits 7-6 when FCR enabled the FIFOs: a 16550A. linux/serial_reg.h names
 * it from 6.2 on; this machine's 6.1 headers lack it, so it is spelled here.
 */
export const UART_IIR_FIFO_ENABLED_16550A = 0xc0;

/** Interrupt enables a 16550A implements; IER bits 7-4 read as 0 (autoconfig checks). */
const IER_MASK = UART_IER_RDI | UART_IER_THRI | UART_IER_RLSI | UART_IER_MSI;
/** MCR bits a 16550A implements; bits 7-5 read as 0. */
const MCR_MASK = UART_MCR_DTR | UART_MCR_RTS | UART_MCR_OUT1 | UART_MCR_OUT2 | UART_MCR_LOOP;

const DEVICE = "serial";

/** The guest-facing registers of one 16550A. */
export class Serial implements BusDevice {
  private readonly state: SerialState;
  private readonly canBlock = !isMainThread;

  constructor(shared: SharedArrayBuffer, irq: number, private readonly ctx: DeviceContext) {
    this.state = new SerialState(shared, irq, ctx);
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0xff);
    if (data.length !== 1 || offset < 0 || offset >= SERIAL_PORT_COUNT) {
      this.ctx.guestFault(DEVICE, `${data.length}-byte read at offset ${offset} ignored`);
      return;
    }
    this.guarded(() => {
      data[0] = this.readRegister(offset);
    });
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || offset < 0 || offset >= SERIAL_PORT_COUNT) {
      this.ctx.guestFault(DEVICE, `${data.length}-byte write at offset ${offset} ignored`);
      return;
    }
    const value = data[0]!;
    this.guarded(() => this.writeRegister(offset, value));
  }

  /** Runs a register access under the lock, then updates the IRQ line; never throws. */
  private guarded(access: () => void): void {
    const st = this.state;
    try {
      st.lock.with(() => {
        access();
        st.updateIrq();
      });
    } catch (e) {
      this.ctx.guestFault(DEVICE, `internal error: ${(e as Error).message}`);
    }
  }

  private readRegister(offset: number): number {
    const st = this.state;
    const dlab = (st.lcr & UART_LCR_DLAB) !== 0;
    switch (offset) {
      case UART_RX:
        if (dlab) return st.dll;
        if (st.rxCount() > 0) st.rbrLast = st.rxPop();
        return st.rbrLast;
      case UART_IER:
        return dlab ? st.dlm : st.ier;
      case UART_IIR: {
        const id = st.interruptId();
        // Reading IIR clears the THRE interrupt when it is the source (PC16550D Table IV).
        if (id === UART_IIR_THRI) st.thrPending = false;
        return id | (st.fifoEnabled ? UART_IIR_FIFO_ENABLED_16550A : 0);
      }
      case UART_LCR:
        return st.lcr;
      case UART_MCR:
        return st.mcr;
      case UART_LSR: {
        const lsr = (st.rxCount() > 0 ? UART_LSR_DR : 0) | st.lsrErr
          | (st.txHasFifoRoom() ? UART_LSR_THRE | UART_LSR_TEMT : 0);
        st.lsrErr = 0; // error bits clear on read, and with them the RLS interrupt
        return lsr;
      }
      case UART_MSR: {
        const msr = st.modemLines() | st.msrDelta;
        st.msrDelta = 0;
        return msr;
      }
      case UART_SCR:
        return st.scr;
      default:
        return 0xff;
    }
  }

  private writeRegister(offset: number, value: number): void {
    const st = this.state;
    const dlab = (st.lcr & UART_LCR_DLAB) !== 0;
    switch (offset) {
      case UART_TX:
        if (dlab) st.dll = value;
        else this.transmit(value);
        return;
      case UART_IER:
        if (dlab) {
          st.dlm = value;
          return;
        }
        {
          const ier = value & IER_MASK;
          // Enabling THRI while THR is empty raises the THRE interrupt at once;
          // disabling it drops it (the driver's THRE and TXEN tests rely on this).
          if ((st.ier ^ ier) & UART_IER_THRI) st.thrPending = (ier & UART_IER_THRI) !== 0 && st.txHasFifoRoom();
          st.ier = ier;
        }
        return;
      case UART_FCR: {
        const enable = value & UART_FCR_ENABLE_FIFO;
        // Changing FIFO mode clears the FIFOs (PC16550D FCR bit 0).
        if (value & UART_FCR_CLEAR_RCVR || enable !== (st.fcr & UART_FCR_ENABLE_FIFO)) st.rxClear();
        st.fcr = enable;
        return;
      }
      case UART_LCR:
        st.lcr = value;
        return;
      case UART_MCR:
        st.writeMcr(value & MCR_MASK);
        return;
      case UART_SCR:
        st.scr = value;
        return;
      default:
        return; // LSR and MSR are read-only (writes are factory test modes)
    }
  }

  /** A THR write: loop back to the receiver, or append to the TX ring (blocking while it is full). */
  private transmit(byte: number): void {
    const st = this.state;
    if (st.loopback) {
      const depth = st.fifoEnabled ? UART_FIFO_SIZE : 1;
      if (st.rxCount() < depth) st.rxPush(Uint8Array.of(byte));
      else st.lsrErr |= UART_LSR_OE;
      st.afterTransmit();
      return;
    }
    while (st.txFree() === 0) {
      if (st.writersReleased() || !st.waitForTxRoom(st.txTail(), this.canBlock)) {
        st.countTxDropped();
        return;
      }
    }
    st.txPush(byte);
    st.afterTransmit();
  }
}
