/**
 * An i8042 PS/2 keyboard controller with nothing plugged in: enough for
 * Linux's drivers/input/serio/i8042.c to probe it quickly and quietly, and
 * command 0xFE ("pulse reset line"), which is how `reboot=k` ends the VM.
 *
 * The controller answers its own commands (CTR read/write, self-test,
 * interface tests, port enable/disable, internal loopback, output port).
 * Bytes sent to the keyboard or mouse get what a controller returns when no
 * device answers: 0xFE with the status TIMEOUT bit, so atkbd/psmouse give up
 * at once instead of waiting out their timeouts.
 *
 * Ports 0x60 and 0x64 are not adjacent (0x61 is system control port B), so
 * the device exposes one BusDevice per port:
 *
 *   const kbc = new I8042(shared, ctx); // IRQs default to I8042_IRQS (1 and 12)
 *   pio.insert(I8042_DATA_PORT, 1, kbc.dataPort);
 *   pio.insert(I8042_COMMAND_PORT, 1, kbc.commandPort);
 *
 * State lives in a SharedArrayBuffer (createI8042Shared) because Linux may
 * send a command from one CPU and its parameter or read from another.
 */
import type { BusDevice, DeviceContext } from "../bus.js";
import { SpinLock } from "../shared-lock.js";
import {
  I8042_CMD_AUX_DISABLE,
  I8042_CMD_AUX_ENABLE,
  I8042_CMD_AUX_LOOP,
  I8042_CMD_AUX_SEND,
  I8042_CMD_AUX_TEST,
  I8042_CMD_CTL_RCTR,
  I8042_CMD_CTL_TEST,
  I8042_CMD_CTL_WCTR,
  I8042_CMD_KBD_DISABLE,
  I8042_CMD_KBD_ENABLE,
  I8042_CMD_KBD_LOOP,
  I8042_CMD_KBD_TEST,
  I8042_CTR_AUXDIS,
  I8042_CTR_AUXINT,
  I8042_CTR_KBDDIS,
  I8042_CTR_KBDINT,
  I8042_CTR_XLATE,
  I8042_STR_AUXDATA,
  I8042_STR_CMDDAT,
  I8042_STR_KEYLOCK,
  I8042_STR_OBF,
  I8042_STR_TIMEOUT,
} from "../../linux/abi.generated.js";

// Values Linux spells only in headers that cannot be compiled on their own
// (drivers/input/serio/i8042*.h) or as literals (arch/x86/kernel/reboot.c).
/** ISA IRQs of the keyboard and mouse ports (drivers/input/serio/i8042-io.h). */
export const I8042_KBD_IRQ = 1;
export const I8042_AUX_IRQ = 12;
/** The IRQs a PC wires the controller to. */
export const I8042_IRQS: I8042Irqs = { kbd: I8042_KBD_IRQ, aux: I8042_AUX_IRQ };
/** Self-test passed (drivers/input/serio/i8042.h). */
export const I8042_RET_CTL_TEST = 0x55;
/** Interface test (0xAB, 0xA9) passed: "no error" (i8042.c, i8042_check_aux). */
export const I8042_RET_IFACE_OK = 0x00;
/** Reply to a byte no device answered; i8042.c maps it to SERIO_TIMEOUT. */
export const I8042_RET_NO_DEVICE = 0xfe;
/** Controller commands with no name in Linux's i8042.h (IBM PC/AT Technical Reference, 8042). */
export const I8042_CMD_READ_OUTPUT_PORT = 0xd0;
export const I8042_CMD_WRITE_OUTPUT_PORT = 0xd1;
/** 0xF0-0xFF pulse output-port lines whose bit is 0; 0xFE pulses reset (reboot.c: "Pulse reset low"). */
export const I8042_CMD_PULSE_FIRST = 0xf0;
export const I8042_CMD_PULSE_RESET = 0xfe;
/** Output port bit 0: system reset line, active low. Bit 1: A20 gate. */
export const I8042_OUTPUT_PORT_RESET = 0x01;
export const I8042_OUTPUT_PORT_A20 = 0x02;

/** Linux encodes parameter/result counts above the command byte; the controller sees the low byte. */
const cmd = (linuxCommand: number): number => linuxCommand & 0xff;

/** The keyboard and mouse interrupt lines (GSIs). */
export interface I8042Irqs {
  kbd: number;
  aux: number;
}

/** Int32 slots of the shared state. */
const LOCK = 0;
const MAGIC = 1;
const CTR = 2;
const OUTPUT_PORT = 3;
/** Status bit CMDDAT: the last write went to the command port. */
const CMDDAT = 4;
/** Command byte waiting for its parameter on the data port, or 0. */
const PENDING = 5;
const Q_HEAD = 6;
const Q_COUNT = 7;
/** What the data port returns when the output buffer is empty: the last byte read. */
const LAST_DATA = 8;
const KBD_LEVEL = 9;
const AUX_LEVEL = 10;
/** Output buffer entries: byte | status flags (AUXDATA, TIMEOUT) << 8. */
const QUEUE = 16;
/** Bytes the controller holds (drivers/input/serio/i8042.h I8042_BUFFER_SIZE). */
const QUEUE_SIZE = 16;
const SLOTS = QUEUE + QUEUE_SIZE;
const LAYOUT_MAGIC = 0x08042001;

const DEVICE = "i8042";

/** A controller after BIOS POST: keyboard interrupt on, translation on, no reset. */
export function createI8042Shared(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(SLOTS * Int32Array.BYTES_PER_ELEMENT);
  const s = new Int32Array(sab);
  s[MAGIC] = LAYOUT_MAGIC;
  s[CTR] = I8042_CTR_KBDINT | I8042_CTR_XLATE;
  s[OUTPUT_PORT] = I8042_OUTPUT_PORT_RESET | I8042_OUTPUT_PORT_A20;
  return sab;
}

/** Why an i8042 could not be built or restored. */
export class I8042Error extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "I8042Error";
    this.code = code;
  }
}

/** Saved controller state. */
export interface I8042SavedState {
  kind: "i8042";
  version: 1;
  ctr: number; outputPort: number; cmddat: number; pending: number; lastData: number;
  /** Output buffer, oldest first: byte | status flags << 8. */
  queue: number[];
}

/** One i8042; `dataPort` and `commandPort` go on the PIO bus. */
export class I8042 {
  readonly dataPort: BusDevice;
  readonly commandPort: BusDevice;
  private readonly s: Int32Array;
  private readonly lock: SpinLock;

  constructor(
    shared: SharedArrayBuffer,
    private readonly ctx: DeviceContext,
    private readonly irqs: I8042Irqs = I8042_IRQS,
  ) {
    if (!(shared instanceof SharedArrayBuffer) || shared.byteLength !== SLOTS * Int32Array.BYTES_PER_ELEMENT
      || new Int32Array(shared)[MAGIC] !== LAYOUT_MAGIC) {
      throw new I8042Error("EBADSHARED", "Cannot attach i8042: buffer was not made by createI8042Shared()");
    }
    this.s = new Int32Array(shared);
    this.lock = new SpinLock(this.s, LOCK);
    this.dataPort = {
      read: (_offset, data) => this.access(data, () => this.readData()),
      write: (_offset, data) => this.access(data, () => this.writeData(data[0]!)),
    };
    this.commandPort = {
      read: (_offset, data) => this.access(data, () => this.readStatus()),
      write: (_offset, data) => this.access(data, () => this.writeCommand(data[0]!)),
    };
  }

  /** Runs a byte access under the lock, then updates the IRQ lines; never throws. */
  private access(data: Uint8Array, fn: () => number | void): void {
    if (data.length !== 1) {
      data.fill(0xff);
      this.ctx.guestFault(DEVICE, `${data.length}-byte access ignored`);
      return;
    }
    try {
      this.lock.with(() => {
        const value = fn();
        if (typeof value === "number") data[0] = value;
        this.updateIrqs();
      });
    } catch (e) {
      this.ctx.guestFault(DEVICE, `internal error: ${(e as Error).message}`);
    }
  }

  private readStatus(): number {
    const s = this.s;
    let status = I8042_STR_KEYLOCK | (s[CMDDAT] ? I8042_STR_CMDDAT : 0); // KEYLOCK set = not inhibited
    if (s[Q_COUNT]! > 0) status |= I8042_STR_OBF | (s[QUEUE + s[Q_HEAD]!]! >> 8);
    return status; // IBF is never set: every write is handled at once
  }

  private readData(): number {
    const s = this.s;
    if (s[Q_COUNT]! > 0) {
      s[LAST_DATA] = s[QUEUE + s[Q_HEAD]!]! & 0xff;
      s[Q_HEAD] = (s[Q_HEAD]! + 1) % QUEUE_SIZE;
      s[Q_COUNT]!--;
    }
    return s[LAST_DATA]!;
  }

  /** Puts a byte in the output buffer; a full buffer drops it, as the chip's would overrun. */
  private push(byte: number, flags = 0): void {
    const s = this.s;
    if (s[Q_COUNT]! >= QUEUE_SIZE) {
      this.ctx.guestFault(DEVICE, "output buffer overrun");
      return;
    }
    s[QUEUE + ((s[Q_HEAD]! + s[Q_COUNT]!) % QUEUE_SIZE)] = (byte & 0xff) | (flags << 8);
    s[Q_COUNT]!++;
  }

  private writeCommand(command: number): void {
    const s = this.s;
    s[CMDDAT] = 1;
    s[PENDING] = 0;
    switch (command) {
      case cmd(I8042_CMD_CTL_RCTR): this.push(s[CTR]!); return;
      case cmd(I8042_CMD_CTL_TEST): this.push(I8042_RET_CTL_TEST); return;
      case cmd(I8042_CMD_KBD_TEST): this.push(I8042_RET_IFACE_OK); return;
      case cmd(I8042_CMD_AUX_TEST): this.push(I8042_RET_IFACE_OK); return;
      case cmd(I8042_CMD_KBD_DISABLE): s[CTR]! |= I8042_CTR_KBDDIS; return;
      case cmd(I8042_CMD_KBD_ENABLE): s[CTR]! &= ~I8042_CTR_KBDDIS; return;
      case cmd(I8042_CMD_AUX_DISABLE): s[CTR]! |= I8042_CTR_AUXDIS; return;
      case cmd(I8042_CMD_AUX_ENABLE): s[CTR]! &= ~I8042_CTR_AUXDIS; return;
      case I8042_CMD_READ_OUTPUT_PORT: this.push(s[OUTPUT_PORT]!); return;
      case cmd(I8042_CMD_CTL_WCTR):
      case cmd(I8042_CMD_KBD_LOOP):
      case cmd(I8042_CMD_AUX_LOOP):
      case cmd(I8042_CMD_AUX_SEND):
      case I8042_CMD_WRITE_OUTPUT_PORT:
        s[PENDING] = command; // the parameter follows on the data port
        return;
      default:
        if (command >= I8042_CMD_PULSE_FIRST) {
          if (!(command & I8042_OUTPUT_PORT_RESET)) this.ctx.requestExit({ kind: "reset", source: "i8042" });
          return;
        }
        this.ctx.guestFault(DEVICE, `unsupported command 0x${command.toString(16)} ignored`);
    }
  }

  private writeData(value: number): void {
    const s = this.s;
    const pending = s[PENDING]!;
    s[CMDDAT] = 0;
    s[PENDING] = 0;
    switch (pending) {
      case cmd(I8042_CMD_CTL_WCTR): s[CTR] = value; return;
      case cmd(I8042_CMD_KBD_LOOP): this.push(value); return;
      case cmd(I8042_CMD_AUX_LOOP): this.push(value, I8042_STR_AUXDATA); return;
      case cmd(I8042_CMD_AUX_SEND): this.push(I8042_RET_NO_DEVICE, I8042_STR_AUXDATA | I8042_STR_TIMEOUT); return;
      case I8042_CMD_WRITE_OUTPUT_PORT:
        s[OUTPUT_PORT] = value;
        if (!(value & I8042_OUTPUT_PORT_RESET)) this.ctx.requestExit({ kind: "reset", source: "i8042" });
        return;
      default:
        this.push(I8042_RET_NO_DEVICE, I8042_STR_TIMEOUT); // a byte for the (absent) keyboard
    }
  }

  /** Keyboard bytes interrupt on IRQ 1 if CTR.KBDINT, mouse bytes on IRQ 12 if CTR.AUXINT. */
  private updateIrqs(): void {
    const s = this.s;
    const head = s[Q_COUNT]! > 0 ? s[QUEUE + s[Q_HEAD]!]! : undefined;
    const aux = head !== undefined && ((head >> 8) & I8042_STR_AUXDATA) !== 0;
    const kbdLevel: 0 | 1 = head !== undefined && !aux && s[CTR]! & I8042_CTR_KBDINT ? 1 : 0;
    const auxLevel: 0 | 1 = aux && s[CTR]! & I8042_CTR_AUXINT ? 1 : 0;
    if (kbdLevel !== s[KBD_LEVEL]) {
      s[KBD_LEVEL] = kbdLevel;
      this.ctx.setIrqLine(this.irqs.kbd, kbdLevel);
    }
    if (auxLevel !== s[AUX_LEVEL]) {
      s[AUX_LEVEL] = auxLevel;
      this.ctx.setIrqLine(this.irqs.aux, auxLevel);
    }
  }

  save(): I8042SavedState {
    return this.lock.with(() => {
      const s = this.s;
      const queue: number[] = [];
      for (let i = 0; i < s[Q_COUNT]!; i++) queue.push(s[QUEUE + ((s[Q_HEAD]! + i) % QUEUE_SIZE)]!);
      return {
        kind: "i8042", version: 1, ctr: s[CTR]!, outputPort: s[OUTPUT_PORT]!, cmddat: s[CMDDAT]!,
        pending: s[PENDING]!, lastData: s[LAST_DATA]!, queue,
      };
    });
  }

  restore(st: I8042SavedState): void {
    if (st.kind !== "i8042" || st.version !== 1) {
      throw new I8042Error("EBADSTATE", `Cannot restore i8042: unknown state ${st.kind} v${st.version}`);
    }
    this.lock.with(() => {
      const s = this.s;
      s[CTR] = st.ctr & 0xff; s[OUTPUT_PORT] = st.outputPort & 0xff; s[CMDDAT] = st.cmddat ? 1 : 0;
      s[PENDING] = st.pending & 0xff; s[LAST_DATA] = st.lastData & 0xff;
      s[Q_HEAD] = 0; s[Q_COUNT] = 0;
      for (const e of st.queue.slice(0, QUEUE_SIZE)) this.push(e & 0xff, (e >> 8) & 0xff);
      this.updateIrqs();
    });
  }
}
