import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  I8042_CMD_AUX_DISABLE, I8042_CMD_AUX_ENABLE, I8042_CMD_AUX_LOOP, I8042_CMD_AUX_SEND, I8042_CMD_CTL_RCTR,
  I8042_CMD_CTL_TEST, I8042_CMD_CTL_WCTR, I8042_CMD_KBD_DISABLE, I8042_CMD_KBD_TEST, I8042_CTR_AUXDIS,
  I8042_CTR_AUXINT, I8042_CTR_KBDDIS, I8042_CTR_KBDINT, I8042_STR_AUXDATA, I8042_STR_IBF, I8042_STR_KEYLOCK,
  I8042_STR_OBF, I8042_STR_TIMEOUT, I8042_CTR_XLATE, KEY_DELETE, KEY_LEFTALT, KEY_LEFTCTRL, I8042_CMD_KBD_LOOP, PS2_CMD_GETID, PS2_CMD_RESET_BAT, PS2_RET_ACK, PS2_RET_BAT,
  PS2_RET_NAK,
} from "../../linux/abi.generated.js";
import { FakeContext } from "../testing/fake-context.js";
import { atkbdDecode, loadAtkbdTables } from "./testing/atkbd-model.js";
import {
  I8042, I8042_AUX_IRQ, I8042_CMD_PULSE_RESET, I8042_CMD_WRITE_OUTPUT_PORT, I8042_KBD_IRQ,
  I8042_OUTPUT_PORT_A20, I8042_OUTPUT_PORT_RESET, I8042_RET_CTL_TEST, createI8042Shared,
  ATKBD_CMD_ENABLE, ATKBD_CMD_GSCANSET, ATKBD_CMD_RESET_DEF, ATKBD_CMD_RESET_DIS, ATKBD_CMD_SETLEDS, ATKBD_CMD_SETREP,
  ATKBD_CMD_SSCANSET, type I8042SavedState,
} from "./i8042.js";

/** The guest side of drivers/input/serio/i8042.c: status polling, commands and their parameters/results. */
class FakeI8042Driver {
  constructor(readonly kbc: I8042) {}
  status(): number {
    const b = new Uint8Array(1);
    this.kbc.commandPort.read(0, b);
    return b[0]!;
  }
  readData(): number {
    const b = new Uint8Array(1);
    this.kbc.dataPort.read(0, b);
    return b[0]!;
  }
  writeCommand(c: number): void {
    this.kbc.commandPort.write(0, Uint8Array.of(c));
  }
  writeData(d: number): void {
    this.kbc.dataPort.write(0, Uint8Array.of(d));
  }
  /** __i8042_command(): parameter and result counts are encoded above the command byte. */
  command(command: number, params: number[] = []): number[] {
    assert.equal(this.status() & I8042_STR_IBF, 0);
    this.writeCommand(command & 0xff);
    for (let i = 0; i < ((command >> 12) & 0xf); i++) this.writeData(params[i]!);
    const results: number[] = [];
    for (let i = 0; i < ((command >> 8) & 0xf); i++) {
      assert.ok(this.status() & I8042_STR_OBF, `no result ${i} for command 0x${command.toString(16)}: it would time out`);
      results.push(this.readData());
    }
    return results;
  }
  /** i8042_flush(): reads and counts whatever is in the output buffer. */
  flush(): number {
    let n = 0;
    while (this.status() & I8042_STR_OBF && n < 16) {
      this.readData();
      n++;
    }
    return n;
  }
}

/** atkbd's side of libps2.c __ps2_command: each byte ACKed (or NAKed), then the results, one per keyboard interrupt. */
class FakePs2Keyboard {
  constructor(readonly drv: FakeI8042Driver, readonly ctx: FakeContext) {}
  /** Reads one byte the way i8042_interrupt does: only after a fresh edge on IRQ 1. */
  private receive(what: string): number {
    const edges = this.edges();
    assert.ok(edges > this.seenEdges, `no IRQ 1 edge for ${what}: libps2 would wait out its timeout`);
    this.seenEdges = edges;
    const status = this.drv.status();
    assert.equal(status & (I8042_STR_OBF | I8042_STR_AUXDATA | I8042_STR_TIMEOUT), I8042_STR_OBF, `${what}: status 0x${status.toString(16)}`);
    return this.drv.readData();
  }
  private seenEdges = 0;
  edges(): number {
    let n = 0;
    let level = 0;
    for (const c of this.ctx.irqCalls) {
      if (c.gsi !== I8042_KBD_IRQ) continue;
      if (c.level && !level) n++;
      level = c.level;
    }
    return n;
  }
  /** Returns the results, or "nak" when the command or a parameter was refused (libps2 then fails it). */
  command(command: number, params: number[] = []): number[] | "nak" {
    for (const [i, byte] of [command & 0xff, ...params.slice(0, (command >> 12) & 0xf)].entries()) {
      this.drv.writeData(byte);
      const reply = this.receive(`ACK of byte ${i} of command 0x${command.toString(16)}`);
      if (reply === PS2_RET_NAK) return "nak";
      assert.equal(reply, PS2_RET_ACK);
    }
    const results: number[] = [];
    for (let i = 0; i < ((command >> 8) & 0xf); i++) results.push(this.receive(`result ${i} of command 0x${command.toString(16)}`));
    assert.equal(this.drv.status() & I8042_STR_OBF, 0, "no stray bytes after the command");
    return results;
  }
}

/** A guest whose i8042 driver enabled the keyboard port and its interrupt, with translation as given. */
function keyboardSetup(translated: boolean) {
  const t = setup();
  t.drv.command(I8042_CMD_CTL_WCTR, [I8042_CTR_KBDINT | (translated ? I8042_CTR_XLATE : 0)]);
  return { ...t, kbd: new FakePs2Keyboard(t.drv, t.ctx) };
}

/** Reads the output buffer the way the guest does, one byte per IRQ 1 edge; fails on a byte without its edge. */
function readKeys(drv: FakeI8042Driver, ctx: FakeContext): number[] {
  const bytes: number[] = [];
  for (let i = 0; i < 16 && drv.status() & I8042_STR_OBF; i++) {
    assert.equal(ctx.level(I8042_KBD_IRQ), 1, `IRQ 1 not raised for byte ${i}`);
    const before = ctx.irqCalls.length;
    bytes.push(drv.readData());
    if (drv.status() & I8042_STR_OBF) {
      const calls = ctx.irqCalls.slice(before).filter((c) => c.gsi === I8042_KBD_IRQ).map((c) => c.level);
      assert.deepEqual(calls, [0, 1], `byte ${i + 1} needs a fresh edge on IRQ 1`);
    }
  }
  assert.equal(ctx.level(I8042_KBD_IRQ), 0, "IRQ 1 lowered once the buffer is empty");
  return bytes;
}

/** Set 1 (translated): Left Ctrl 1D, Left Alt 38, Delete E0 53 pressed, then released (code | 0x80) in reverse order. */
const CAD_SET1 = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
/** Set 2: Left Ctrl 14, Left Alt 11, Delete E0 71 pressed, then released (F0 before the code) in reverse order. */
const CAD_SET2 = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14];

function setup() {
  const ctx = new FakeContext();
  const shared = createI8042Shared();
  const kbc = new I8042(shared, ctx);
  return { ctx, shared, kbc, drv: new FakeI8042Driver(kbc) };
}

describe("i8042", () => {
  it("goes through Linux's probe without a timeout: self-test, stable CTR, AUX detection, no MUX", () => {
    const { ctx, drv } = setup();
    assert.equal(drv.flush(), 0, "i8042_controller_check: empty");
    assert.deepEqual(drv.command(I8042_CMD_CTL_TEST), [I8042_RET_CTL_TEST]);
    // i8042_controller_init: two equal CTR reads, then keyboard off and written back.
    const [ctr0] = drv.command(I8042_CMD_CTL_RCTR);
    const [ctr1] = drv.command(I8042_CMD_CTL_RCTR);
    assert.equal(ctr0, ctr1);
    assert.ok(drv.status() & I8042_STR_KEYLOCK, "keylock must not be active");
    let ctr = (ctr0! | I8042_CTR_KBDDIS) & ~I8042_CTR_KBDINT;
    drv.command(I8042_CMD_CTL_WCTR, [ctr]);
    assert.deepEqual(drv.command(I8042_CMD_CTL_RCTR), [ctr]);
    // i8042_check_aux: internal loopback comes back on the AUX side.
    assert.deepEqual(drv.command(I8042_CMD_AUX_LOOP, [0x5a]), [0x5a]);
    drv.command(I8042_CMD_AUX_DISABLE);
    assert.ok(drv.command(I8042_CMD_CTL_RCTR)[0]! & I8042_CTR_AUXDIS);
    drv.command(I8042_CMD_AUX_ENABLE);
    assert.equal(drv.command(I8042_CMD_CTL_RCTR)[0]! & I8042_CTR_AUXDIS, 0);
    // AUX IRQ delivery test: loop 0xa5 with AUXINT on must raise IRQ 12.
    ctr = (ctr & ~I8042_CTR_AUXDIS) | I8042_CTR_AUXINT;
    drv.command(I8042_CMD_CTL_WCTR, [ctr]);
    drv.command(I8042_CMD_AUX_LOOP & 0xf0ff, [0xa5]);
    assert.equal(ctx.level(I8042_AUX_IRQ), 1);
    assert.ok(drv.status() & I8042_STR_AUXDATA);
    assert.equal(drv.readData(), 0xa5);
    assert.equal(ctx.level(I8042_AUX_IRQ), 0);
    // i8042_set_mux_mode: the third loop byte comes back unchanged, so no active multiplexer.
    assert.deepEqual(drv.command(I8042_CMD_AUX_LOOP, [0xf0]), [0xf0]);
    assert.deepEqual(drv.command(I8042_CMD_AUX_LOOP, [0x56]), [0x56]);
    assert.deepEqual(drv.command(I8042_CMD_AUX_LOOP, [0xa4]), [0xa4]);
    assert.deepEqual(ctx.exits, []);
    assert.deepEqual(ctx.faults, []);
  });

  it("answers the keyboard interface test with 0x00 and disables the keyboard port on command", () => {
    const { drv } = setup();
    assert.deepEqual(drv.command(I8042_CMD_KBD_TEST), [0x00]);
    drv.command(I8042_CMD_KBD_DISABLE);
    assert.ok(drv.command(I8042_CMD_CTL_RCTR)[0]! & I8042_CTR_KBDDIS);
  });

  it("replies 0xFE with TIMEOUT to bytes for the absent mouse, on IRQ 12", () => {
    const { ctx, drv } = setup();
    drv.command(I8042_CMD_CTL_WCTR, [I8042_CTR_KBDINT | I8042_CTR_AUXINT]);
    drv.command(I8042_CMD_AUX_SEND, [0xf2]); // psmouse: GET ID
    assert.equal(drv.status() & (I8042_STR_TIMEOUT | I8042_STR_AUXDATA), I8042_STR_TIMEOUT | I8042_STR_AUXDATA);
    assert.equal(ctx.level(I8042_AUX_IRQ), 1);
    assert.equal(drv.readData(), 0xfe);
  });

  it("answers atkbd's probe and setup on a translating controller: MF2 id (translated), no timeout", () => {
    const { kbd, ctx } = keyboardSetup(true);
    // atkbd_connect -> atkbd_probe, atkbd_select_set (translated: no command), atkbd_reset_state, atkbd_activate.
    assert.deepEqual(kbd.command(PS2_CMD_GETID), [0xab, 0x41]);
    assert.deepEqual(kbd.command(ATKBD_CMD_RESET_DIS), []);
    assert.deepEqual(kbd.command(ATKBD_CMD_SETLEDS, [0]), []);
    assert.deepEqual(kbd.command(ATKBD_CMD_SETREP, [0]), []);
    assert.deepEqual(kbd.command(ATKBD_CMD_ENABLE), []);
    assert.deepEqual(ctx.faults, []);
  });

  it("answers a non-translating driver: MF2 id 0xAB83, scan-code set 2 only, reset with BAT passed", () => {
    const { kbd, ctx } = keyboardSetup(false);
    assert.deepEqual(kbd.command(PS2_CMD_GETID), [0xab, 0x83]);
    // atkbd_select_set with atkbd.set=3: set 3 refused, so atkbd stays in set 2.
    assert.equal(kbd.command(ATKBD_CMD_SSCANSET, [3]), "nak");
    assert.deepEqual(kbd.command(ATKBD_CMD_SSCANSET, [2]), []);
    assert.deepEqual(kbd.command(ATKBD_CMD_GSCANSET, [0]), [2]);
    // libps2 asks for two bytes after a reset (a mouse adds its id) and accepts one: a keyboard sends only BAT.
    assert.deepEqual(kbd.command((PS2_CMD_RESET_BAT & 0xf0ff) | 0x100), [PS2_RET_BAT]);
    assert.deepEqual(kbd.command(ATKBD_CMD_RESET_DEF), []);
    assert.equal(kbd.command(0xea, [0x71]), "nak", "IBM RapidAccess extra keys (ATKBD_CMD_EX_ENABLE): not this keyboard");
    assert.deepEqual(ctx.faults, []);
  });

  it("types Ctrl-Alt-Del as set-1 codes when the controller translates, one IRQ 1 edge per byte", () => {
    const { kbc, drv, ctx } = keyboardSetup(true);
    kbc.sendCtrlAltDel();
    assert.deepEqual(readKeys(drv, ctx), CAD_SET1);
  });

  it("types Ctrl-Alt-Del as set-2 codes when translation is off", () => {
    const { kbc, drv, ctx } = keyboardSetup(false);
    kbc.sendCtrlAltDel();
    assert.deepEqual(readKeys(drv, ctx), CAD_SET2);
  });

  it("atkbd (its own tables, read from the kernel source) decodes both forms as Ctrl, Alt, Delete pressed, then released", () => {
    const tables = loadAtkbdTables();
    const expected = [
      { keycode: KEY_LEFTCTRL, pressed: true }, { keycode: KEY_LEFTALT, pressed: true }, { keycode: KEY_DELETE, pressed: true },
      { keycode: KEY_DELETE, pressed: false }, { keycode: KEY_LEFTALT, pressed: false }, { keycode: KEY_LEFTCTRL, pressed: false },
    ];
    for (const translated of [true, false]) {
      const { kbc, drv, ctx } = keyboardSetup(translated);
      kbc.sendCtrlAltDel();
      assert.deepEqual(atkbdDecode(tables, readKeys(drv, ctx), translated), expected, translated ? "translated" : "raw set 2");
    }
    // The other way round is wrong: set-2 bytes read as set 1 are other keys (why Firecracker, which
    // sends set 2, clears CTR.XLATE).
    assert.notDeepEqual(atkbdDecode(tables, CAD_SET2, true).slice(0, 3), expected.slice(0, 3));
  });

  it("types Ctrl-Alt-Del from another thread's I8042 over the same state, raising IRQ 1 through that thread's context", () => {
    const { shared, drv, ctx } = keyboardSetup(true);
    const mainCtx = new FakeContext();
    new I8042(shared, mainCtx).sendCtrlAltDel();
    assert.equal(mainCtx.level(I8042_KBD_IRQ), 1);
    assert.ok(drv.status() & I8042_STR_OBF);
    assert.equal(drv.readData(), CAD_SET1[0]);
    assert.deepEqual(ctx.irqCalls.filter((c) => c.gsi === I8042_KBD_IRQ).map((c) => c.level), [0, 1], "the reader re-arms the edge");
  });

  it("queues Ctrl-Alt-Del without an interrupt while CTR.KBDINT is clear (the guest polls)", () => {
    const { kbc, drv, ctx } = setup();
    drv.command(I8042_CMD_CTL_WCTR, [I8042_CTR_XLATE]);
    kbc.sendCtrlAltDel();
    assert.equal(ctx.level(I8042_KBD_IRQ), 0);
    const bytes: number[] = [];
    while (drv.status() & I8042_STR_OBF) bytes.push(drv.readData());
    assert.deepEqual(bytes, CAD_SET1);
    assert.ok(!ctx.irqCalls.some((c) => c.gsi === I8042_KBD_IRQ && c.level === 1));
  });

  it("refuses Ctrl-Alt-Del with EBUFFERFULL, typing nothing, when the buffer cannot take the whole sequence", () => {
    const { kbc, drv } = keyboardSetup(true);
    for (let i = 0; i < 16 - CAD_SET1.length + 1; i++) drv.command(I8042_CMD_KBD_LOOP & 0xf0ff, [0x42]); // a guest that does not read
    const before = kbc.save().queue;
    assert.throws(() => kbc.sendCtrlAltDel(), (e: Error & { code?: string }) => e.code === "EBUFFERFULL" && /^Cannot send Ctrl-Alt-Del: /.test(e.message));
    assert.deepEqual(kbc.save().queue, before);
    drv.readData(); // room for exactly the sequence now
    kbc.sendCtrlAltDel();
    assert.deepEqual(kbc.save().queue.slice(-CAD_SET1.length).map((e) => e & 0xff), CAD_SET1);
  });

  it("refuses Ctrl-Alt-Del with EKBDDISABLED while the guest has the keyboard or its port off", () => {
    const { kbc, kbd, drv } = keyboardSetup(true);
    kbd.command(ATKBD_CMD_RESET_DIS);
    assert.throws(() => kbc.sendCtrlAltDel(), { code: "EKBDDISABLED" });
    kbd.command(ATKBD_CMD_ENABLE);
    drv.command(I8042_CMD_KBD_DISABLE);
    assert.throws(() => kbc.sendCtrlAltDel(), { code: "EKBDDISABLED" });
    assert.equal(drv.status() & I8042_STR_OBF, 0);
  });

  it("requests a reset when the guest pulses the reset line (reboot=k)", () => {
    const { ctx, drv } = setup();
    assert.equal(drv.status() & I8042_STR_IBF, 0, "kb_wait() in reboot.c needs IBF clear");
    drv.writeCommand(I8042_CMD_PULSE_RESET);
    assert.deepEqual(ctx.exits, [{ kind: "reset", source: "i8042" }]);
  });

  it("does not reset on a pulse that leaves the reset line alone, nor on an A20 output-port write", () => {
    const { ctx, drv } = setup();
    drv.writeCommand(0xff);
    drv.writeCommand(I8042_CMD_WRITE_OUTPUT_PORT);
    drv.writeData(I8042_OUTPUT_PORT_RESET | I8042_OUTPUT_PORT_A20);
    assert.deepEqual(ctx.exits, []);
    drv.writeCommand(I8042_CMD_WRITE_OUTPUT_PORT);
    drv.writeData(I8042_OUTPUT_PORT_A20);
    assert.deepEqual(ctx.exits, [{ kind: "reset", source: "i8042" }]);
  });

  it("shares command state between vCPUs: a command on one, its parameter and result on another", () => {
    const { shared, drv } = setup();
    const other = new FakeI8042Driver(new I8042(shared, new FakeContext()));
    drv.writeCommand(I8042_CMD_CTL_WCTR & 0xff);
    other.writeData(0x61);
    drv.writeCommand(I8042_CMD_CTL_RCTR & 0xff);
    assert.equal(other.readData(), 0x61);
  });

  it("rejects a buffer not made by createI8042Shared", () => {
    assert.throws(() => new I8042(new SharedArrayBuffer(8), new FakeContext()), { code: "EBADSHARED" });
  });

  it("never throws on random accesses of any size, and only these commands reset", () => {
    const { ctx, kbc } = setup();
    let seed = 99;
    const rand = (n: number): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    for (let i = 0; i < 100_000; i++) {
      const port = rand(2) ? kbc.dataPort : kbc.commandPort;
      const data = new Uint8Array([1, 2, 4, 8][rand(4)]!).map(() => rand(256));
      if (rand(2)) port.read(rand(4), data);
      else port.write(rand(4), data);
    }
    assert.ok(!ctx.faults.some((f) => f.includes("internal error")));
    assert.ok(ctx.exits.every((e) => e.kind === "reset" && e.source === "i8042"));
  });

  it("saves and restores the keyboard's state, and restores a version 1 record with the keyboard as at power-on", () => {
    const a = keyboardSetup(true);
    a.kbd.command(ATKBD_CMD_RESET_DIS);
    a.drv.writeData(ATKBD_CMD_SETLEDS & 0xff); // parameter still to come
    a.drv.readData();
    const saved = a.kbc.save();
    const b = setup();
    b.kbc.restore(JSON.parse(JSON.stringify(saved)));
    assert.deepEqual(b.kbc.save(), saved);
    assert.throws(() => b.kbc.sendCtrlAltDel(), { code: "EKBDDISABLED" });
    const { kbdPending: _p, kbdScanning: _s, ...v1 } = saved;
    const c = setup();
    c.kbc.restore({ ...v1, version: 1 } as I8042SavedState);
    c.kbc.sendCtrlAltDel();
  });

  it("saves and restores CTR, output port and the output buffer", () => {
    const a = setup();
    a.drv.command(I8042_CMD_CTL_WCTR, [I8042_CTR_KBDINT]);
    a.drv.writeCommand(I8042_CMD_CTL_RCTR & 0xff);
    const saved = a.kbc.save();
    const b = setup();
    b.kbc.restore(JSON.parse(JSON.stringify(saved)));
    assert.deepEqual(b.kbc.save(), saved);
    assert.equal(b.ctx.level(I8042_KBD_IRQ), 1);
    assert.equal(b.drv.readData(), I8042_CTR_KBDINT);
  });
});
