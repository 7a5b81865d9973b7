/**
 * An i8042 PS/2 keyboard controller with a minimal keyboard on its first
 * port and nothing on the mouse port: enough for Linux's
 * drivers/input/serio/i8042.c to probe it quickly and quietly and for
 * drivers/input/keyboard/atkbd.c to bind without `i8042.dumbkbd`, so that
 * the host can type Ctrl-Alt-Del (Firecracker's `SendCtrlAltDel`); and
 * command 0xFE ("pulse reset line"), which is how `reboot=k` ends the VM.
 *
 * The controller answers its own commands (CTR read/write, self-test,
 * interface tests, port enable/disable, internal loopback, output port).
 * The keyboard answers what atkbd and libps2 send while probing and setting
 * it up (GET ID, set LEDs, typematic rate, scan-code set, enable, reset):
 * every byte gets its ACK or a reply at once, so no probe step waits out a
 * timeout. It never types by itself; `sendCtrlAltDel()` puts the three keys
 * in the output buffer. Bytes sent to the mouse get what a controller returns
 * when no device answers: 0xFE with the status TIMEOUT bit, so psmouse gives
 * up at once.
 *
 * Ports 0x60 and 0x64 are not adjacent (0x61 is system control port B), so
 * the device exposes one BusDevice per port:
 *
 *   const kbc = new I8042(shared, ctx); // IRQs default to I8042_IRQS (1 and 12)
 *   pio.insert(I8042_DATA_PORT, 1, kbc.dataPort);
 *   pio.insert(I8042_COMMAND_PORT, 1, kbc.commandPort);
 *
 * State lives in a SharedArrayBuffer (createI8042Shared) because Linux may
 * send a command from one CPU and its parameter or read from another, and
 * the main thread types keys into the same buffer (its own I8042 over it).
 *
 * Threat model: the guest drives every register; each access does a bounded
 * amount of work, the output buffer is 16 bytes and drops (and counts as a
 * guest fault) what a guest that never reads would overflow it with.
 */
import { I8042_KBD_IRQ } from "../../arch/x86_64/layout.js";
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
  PS2_CMD_GETID,
  PS2_CMD_RESET_BAT,
  PS2_RET_ACK,
  PS2_RET_BAT,
  PS2_RET_NAK,
} from "../../linux/abi.generated.js";

// Values Linux spells only in headers that cannot be compiled on their own
// (drivers/input/serio/i8042*.h) or as literals (arch/x86/kernel/reboot.c).
/** ISA IRQs of the keyboard and mouse ports (drivers/input/serio/i8042-io.h); the keyboard's is in the layout, for ACPI. */
export { I8042_KBD_IRQ };
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

// Keyboard commands Linux names only in drivers/input/keyboard/atkbd.c (its
// ATKBD_CMD_* defines; like libps2.h's, counts sit above the low byte).
/** Set LEDs; one parameter byte. */
export const ATKBD_CMD_SETLEDS = 0x10ed;
/** Get (parameter 0) or set (1, 2, 3) the scan-code set; the "get" form also has one result. */
export const ATKBD_CMD_SSCANSET = 0x10f0;
export const ATKBD_CMD_GSCANSET = 0x11f0;
/** Set typematic rate and delay; one parameter byte. */
export const ATKBD_CMD_SETREP = 0x10f3;
/** Start scanning (sending keys). */
export const ATKBD_CMD_ENABLE = 0x00f4;
/** Restore defaults and stop scanning. */
export const ATKBD_CMD_RESET_DIS = 0x00f5;
/** Restore defaults (and scan). */
export const ATKBD_CMD_RESET_DEF = 0x00f6;
/**
 * GET ID reply of an MF2 keyboard: 0xAB 0x83 (atkbd.c, atkbd_probe: "We should
 * get 0xab83"). A translating controller passes the second byte through its
 * set-2 to set-1 table, which turns 0x83 (F7's set-2 code) into 0x41 (F7's
 * set-1 code); atkbd only checks the first byte (libps2.c ps2_is_keyboard_id).
 */
export const ATKBD_ID_MF2 = 0xab83;
export const ATKBD_ID_MF2_TRANSLATED = 0xab41;
/** The only scan-code set this keyboard speaks (the PS/2 default; atkbd's `set` parameter defaults to 2). */
export const ATKBD_SCANCODE_SET = 2;
/** Prefix of an extended key, and set 2's release prefix (atkbd.c ATKBD_RET_EMUL0, ATKBD_RET_RELEASE). */
export const ATKBD_RET_EMUL0 = 0xe0;
export const ATKBD_RET_RELEASE = 0xf0;
/** Set 1 marks a release by bit 7 of the code (atkbd.c, atkbd_interrupt: `release = code >> 7`). */
export const SET1_RELEASE_BIT = 0x80;

/**
 * Left Ctrl, Left Alt and Delete: their set-2 codes (what the keyboard sends)
 * and set-1 codes (what a controller with CTR.XLATE set delivers). Linux has
 * them only as table entries: atkbd.c's atkbd_set2_keycode maps set-2 0x14,
 * 0x11 and E0 0x71 to KEY_LEFTCTRL, KEY_LEFTALT and KEY_DELETE, and its
 * atkbd_unxlate_table maps set-1 0x1D, 0x38, 0x53 back to set-2 0x14, 0x11, 0x71.
 */
const KEYS_CTRL_ALT_DEL = [
  { set2: [0x14], set1: [0x1d] },
  { set2: [0x11], set1: [0x38] },
  { set2: [ATKBD_RET_EMUL0, 0x71], set1: [ATKBD_RET_EMUL0, 0x53] },
] as const;

/**
 * The bytes a keyboard sends for pressing Ctrl, Alt and Delete and releasing
 * them in reverse order, as the guest reads them: set 1 when the controller
 * translates (CTR.XLATE), set 2 otherwise.
 */
export function ctrlAltDelBytes(translated: boolean): number[] {
  const press: number[] = [];
  const release: number[] = [];
  for (const key of KEYS_CTRL_ALT_DEL) {
    if (translated) {
      press.push(...key.set1);
      // E0 0x53 is released as E0 0xD3: the prefix stays, the code gets bit 7.
      release.unshift(...key.set1.map((b, i) => (i === key.set1.length - 1 ? b | SET1_RELEASE_BIT : b)));
    } else {
      press.push(...key.set2);
      // Set 2 releases with F0 before the code, after any E0 prefix.
      const code = key.set2[key.set2.length - 1]!;
      release.unshift(...key.set2.slice(0, -1), ATKBD_RET_RELEASE, code);
    }
  }
  return [...press, ...release];
}

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
/** Keyboard command waiting for its parameter byte (low byte of an ATKBD_CMD_*), or 0. */
const KBD_PENDING = 11;
/** 1 while the keyboard scans (sends keys): after power-on, ENABLE, RESET_DEF and reset; 0 after RESET_DIS. */
const KBD_SCANNING = 12;
/** Output buffer entries: byte | status flags (AUXDATA, TIMEOUT) << 8. */
const QUEUE = 16;
/** Bytes the controller holds (drivers/input/serio/i8042.h I8042_BUFFER_SIZE). */
const QUEUE_SIZE = 16;
const SLOTS = QUEUE + QUEUE_SIZE;
const LAYOUT_MAGIC = 0x08042002;

const DEVICE = "i8042";

/** A controller after BIOS POST: keyboard interrupt on, translation on, no reset. */
export function createI8042Shared(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(SLOTS * Int32Array.BYTES_PER_ELEMENT);
  const s = new Int32Array(sab);
  s[MAGIC] = LAYOUT_MAGIC;
  s[CTR] = I8042_CTR_KBDINT | I8042_CTR_XLATE;
  s[OUTPUT_PORT] = I8042_OUTPUT_PORT_RESET | I8042_OUTPUT_PORT_A20;
  s[KBD_SCANNING] = 1; // a keyboard scans once its power-on self-test passed
  return sab;
}

/**
 * Why an i8042 could not be built or restored (EBADSHARED, EBADSTATE), or
 * why sendCtrlAltDel() typed nothing: EBUFFERFULL (the output buffer has no
 * room for the whole sequence: the guest is not reading it), EKBDDISABLED
 * (the guest turned the keyboard off: RESET_DIS, or CTR.KBDDIS).
 */
export class I8042Error extends Error {
  readonly code: "EBADSHARED" | "EBADSTATE" | "EBUFFERFULL" | "EKBDDISABLED";
  constructor(code: I8042Error["code"], message: string) {
    super(message);
    this.name = "I8042Error";
    this.code = code;
  }
}

/** Saved controller state. */
export interface I8042SavedState {
  kind: "i8042";
  /** 2 added the keyboard's state; a version 1 record restores with the keyboard as after power-on. */
  version: 1 | 2;
  ctr: number; outputPort: number; cmddat: number; pending: number; lastData: number;
  /** Keyboard command waiting for its parameter (0: none), and whether the keyboard scans (version 2). */
  kbdPending?: number; kbdScanning?: boolean;
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
      // IRQs 1 and 12 are edge-triggered ISA lines and Linux's i8042_interrupt reads one
      // byte per interrupt: like the chip, which drops its IRQ output when the output buffer
      // is read and raises it when the next byte is loaded, lower the line here so that
      // updateIrqs() makes a fresh edge for the next byte (a reply of several bytes).
      this.lowerIrqs();
    }
    return s[LAST_DATA]!;
  }

  private lowerIrqs(): void {
    const s = this.s;
    if (s[KBD_LEVEL]) {
      s[KBD_LEVEL] = 0;
      this.ctx.setIrqLine(this.irqs.kbd, 0);
    }
    if (s[AUX_LEVEL]) {
      s[AUX_LEVEL] = 0;
      this.ctx.setIrqLine(this.irqs.aux, 0);
    }
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
        this.keyboardByte(value); // no controller command pending: the byte goes to the keyboard
    }
  }

  /**
   * The keyboard's side of libps2's command protocol (libps2.c __ps2_command):
   * every command byte and parameter byte is acknowledged (ACK) or refused
   * (NAK), then the command's results follow. NAK makes libps2 give up on the
   * command (after one resend), and atkbd falls back: that is the answer to
   * what this keyboard does not do (other scan-code sets, the extended
   * commands of IBM RapidAccess-style keyboards, typematic-only set-3 modes).
   */
  private keyboardByte(value: number): void {
    const s = this.s;
    const pending = s[KBD_PENDING]!;
    s[KBD_PENDING] = 0;
    if (pending === cmd(ATKBD_CMD_SSCANSET)) {
      // Parameter 0 asks for the current set (one result byte); 1..3 select one.
      if (value === 0) this.pushKbd(PS2_RET_ACK, ATKBD_SCANCODE_SET);
      else this.pushKbd(value === ATKBD_SCANCODE_SET ? PS2_RET_ACK : PS2_RET_NAK);
      return;
    }
    if (pending !== 0) {
      this.pushKbd(PS2_RET_ACK); // LED state or typematic rate: nothing to show or repeat
      return;
    }
    switch (value) {
      case cmd(ATKBD_CMD_SETLEDS):
      case cmd(ATKBD_CMD_SETREP):
      case cmd(ATKBD_CMD_SSCANSET):
        s[KBD_PENDING] = value;
        this.pushKbd(PS2_RET_ACK);
        return;
      case cmd(PS2_CMD_GETID): {
        const id = s[CTR]! & I8042_CTR_XLATE ? ATKBD_ID_MF2_TRANSLATED : ATKBD_ID_MF2;
        this.pushKbd(PS2_RET_ACK, id >> 8, id & 0xff);
        return;
      }
      case cmd(ATKBD_CMD_ENABLE):
      case cmd(ATKBD_CMD_RESET_DEF):
        s[KBD_SCANNING] = 1;
        this.pushKbd(PS2_RET_ACK);
        return;
      case cmd(ATKBD_CMD_RESET_DIS):
        s[KBD_SCANNING] = 0;
        this.pushKbd(PS2_RET_ACK);
        return;
      case cmd(PS2_CMD_RESET_BAT):
        // The self-test (BAT) passes at once; afterwards the keyboard scans with its defaults.
        // libps2 asks for two bytes and accepts one (a mouse adds its id): it waits up to 100 ms
        // for the second, as with any keyboard. atkbd resets only with atkbd.reset=1 on x86.
        s[KBD_SCANNING] = 1;
        this.pushKbd(PS2_RET_ACK, PS2_RET_BAT);
        return;
      default:
        this.pushKbd(PS2_RET_NAK);
    }
  }

  /** Queues the keyboard's reply bytes, behind any keys still unread. */
  private pushKbd(...bytes: number[]): void {
    for (const b of bytes) this.push(b);
  }

  /**
   * Types Ctrl-Alt-Del: puts the make codes of Left Ctrl, Left Alt and
   * Delete, then their break codes (as a keyboard sends them when the keys
   * are pressed together and let go, so the guest's input layer is not left
   * with three keys held down) in the output buffer, in the form the guest
   * reads (set 1 when CTR.XLATE is set, set 2 otherwise), and raises IRQ 1
   * if CTR.KBDINT is set. All or nothing: throws I8042Error EBUFFERFULL when
   * the buffer has no room for the whole sequence, EKBDDISABLED when the
   * guest turned the keyboard or its port off (a real keyboard would not
   * send, and bytes arriving in the middle of a driver's command exchange
   * would be taken for its replies). Callable from any thread sharing the
   * state: the main thread attaches its own I8042 with a DeviceContext
   * whose setIrqLine drives KVM_IRQ_LINE.
   */
  sendCtrlAltDel(): void {
    this.lock.with(() => {
      const s = this.s;
      if (!s[KBD_SCANNING]) throw new I8042Error("EKBDDISABLED", "Cannot send Ctrl-Alt-Del: the guest has disabled the keyboard");
      if (s[CTR]! & I8042_CTR_KBDDIS) {
        throw new I8042Error("EKBDDISABLED", "Cannot send Ctrl-Alt-Del: the guest has disabled the keyboard port");
      }
      const bytes = ctrlAltDelBytes((s[CTR]! & I8042_CTR_XLATE) !== 0);
      const room = QUEUE_SIZE - s[Q_COUNT]!;
      if (room < bytes.length) {
        throw new I8042Error("EBUFFERFULL", `Cannot send Ctrl-Alt-Del: the i8042 output buffer has room for ${room} of its ${bytes.length} bytes (the guest is not reading it)`);
      }
      for (const b of bytes) this.push(b);
      this.updateIrqs();
    });
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
        kind: "i8042", version: 2, ctr: s[CTR]!, outputPort: s[OUTPUT_PORT]!, cmddat: s[CMDDAT]!,
        pending: s[PENDING]!, lastData: s[LAST_DATA]!, queue, kbdPending: s[KBD_PENDING]!, kbdScanning: s[KBD_SCANNING] === 1,
      };
    });
  }

  restore(st: I8042SavedState): void {
    if (st.kind !== "i8042" || (st.version !== 1 && st.version !== 2)) {
      throw new I8042Error("EBADSTATE", `Cannot restore i8042: unknown state ${st.kind} v${st.version}`);
    }
    this.lock.with(() => {
      const s = this.s;
      s[CTR] = st.ctr & 0xff; s[OUTPUT_PORT] = st.outputPort & 0xff; s[CMDDAT] = st.cmddat ? 1 : 0;
      s[PENDING] = st.pending & 0xff; s[LAST_DATA] = st.lastData & 0xff;
      s[KBD_PENDING] = st.version === 2 ? (st.kbdPending ?? 0) & 0xff : 0;
      s[KBD_SCANNING] = st.version === 2 ? (st.kbdScanning ? 1 : 0) : 1;
      s[Q_HEAD] = 0; s[Q_COUNT] = 0;
      for (const e of st.queue.slice(0, QUEUE_SIZE)) this.push(e & 0xff, (e >> 8) & 0xff);
      this.updateIrqs();
    });
  }
}
