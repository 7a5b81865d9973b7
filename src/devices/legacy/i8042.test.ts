import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  I8042_CMD_AUX_DISABLE, I8042_CMD_AUX_ENABLE, I8042_CMD_AUX_LOOP, I8042_CMD_AUX_SEND, I8042_CMD_CTL_RCTR,
  I8042_CMD_CTL_TEST, I8042_CMD_CTL_WCTR, I8042_CMD_KBD_DISABLE, I8042_CMD_KBD_TEST, I8042_CTR_AUXDIS,
  I8042_CTR_AUXINT, I8042_CTR_KBDDIS, I8042_CTR_KBDINT, I8042_STR_AUXDATA, I8042_STR_IBF, I8042_STR_KEYLOCK,
  I8042_STR_OBF, I8042_STR_TIMEOUT,
} from "../../linux/abi.generated.js";
import { FakeContext } from "../testing/fake-context.js";
import {
  I8042, I8042_AUX_IRQ, I8042_CMD_PULSE_RESET, I8042_CMD_WRITE_OUTPUT_PORT, I8042_KBD_IRQ,
  I8042_OUTPUT_PORT_A20, I8042_OUTPUT_PORT_RESET, I8042_RET_CTL_TEST, createI8042Shared,
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

  it("replies 0xFE with TIMEOUT to bytes for the absent keyboard and mouse, on their IRQs", () => {
    const { ctx, drv } = setup();
    drv.command(I8042_CMD_CTL_WCTR, [I8042_CTR_KBDINT | I8042_CTR_AUXINT]);
    drv.writeData(0xf2); // atkbd: GET ID
    assert.equal(drv.status() & (I8042_STR_OBF | I8042_STR_TIMEOUT | I8042_STR_AUXDATA), I8042_STR_OBF | I8042_STR_TIMEOUT);
    assert.equal(ctx.level(I8042_KBD_IRQ), 1);
    assert.equal(drv.readData(), 0xfe);
    assert.equal(ctx.level(I8042_KBD_IRQ), 0);
    drv.command(I8042_CMD_AUX_SEND, [0xf2]); // psmouse: GET ID
    assert.equal(drv.status() & (I8042_STR_TIMEOUT | I8042_STR_AUXDATA), I8042_STR_TIMEOUT | I8042_STR_AUXDATA);
    assert.equal(ctx.level(I8042_AUX_IRQ), 1);
    assert.equal(drv.readData(), 0xfe);
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
