import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Writable } from "node:stream";
import { Worker } from "node:worker_threads";
import { COM1_IRQ } from "../../arch/x86_64/layout.js";
import {
  UART_DLL, UART_DLM, UART_EFR, UART_FCR, UART_FCR7_64BYTE, UART_FCR_CLEAR_RCVR, UART_FCR_CLEAR_XMIT,
  UART_FCR_ENABLE_FIFO, UART_IER, UART_IER_MSI, UART_IER_RDI, UART_IER_RLSI, UART_IER_THRI, UART_IER_UUE,
  UART_IIR, UART_IIR_ID, UART_IIR_MSI, UART_IIR_NO_INT, UART_IIR_RDI, UART_IIR_RLSI, UART_IIR_THRI,
  UART_LCR, UART_LCR_CONF_MODE_A, UART_LCR_CONF_MODE_B, UART_LCR_DLAB, UART_LCR_WLEN8, UART_LSR,
  UART_LSR_DR, UART_LSR_OE, UART_LSR_TEMT, UART_LSR_THRE, UART_MCR, UART_MCR_DTR, UART_MCR_LOOP,
  UART_MCR_OUT2, UART_MCR_RTS, UART_MSR, UART_MSR_CTS, UART_MSR_DCD, UART_MSR_DSR, UART_RX, UART_SCR,
  UART_TX,
} from "../../linux/abi.generated.js";
import { FakeContext, portsOf, type FakePorts } from "../testing/fake-context.js";
import { Serial, SERIAL_PORT_COUNT, createSerialShared } from "./serial.js";
import { SerialHost } from "./serial-host.js";
import { SERIAL_RX_RING_BYTES, SERIAL_TX_RING_BYTES, SerialState } from "./serial-state.js";
import { patternByte, type SerialWriterJob } from "./testing/serial-test-worker.js";

const IRQ = COM1_IRQ;

function setup() {
  const shared = createSerialShared();
  const ctx = new FakeContext();
  const uart = new Serial(shared, IRQ, ctx);
  return { shared, ctx, uart, io: portsOf(uart) };
}

/** A writable that keeps what it gets; `delayMs` makes each write complete late (backpressure). */
class Collector extends Writable {
  readonly chunks: Buffer[] = [];
  drains = 0;
  constructor(private readonly delayMs = 0, highWaterMark = 16 * 1024) {
    super({ highWaterMark });
    this.on("drain", () => this.drains++);
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.chunks.push(Buffer.from(chunk));
    if (this.delayMs > 0) setTimeout(cb, this.delayMs);
    else cb();
  }
  text(): string {
    return Buffer.concat(this.chunks).toString("latin1");
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/**
 * The 8250 driver's autoconfig() with CONFIG_SERIAL_8250_16550A_VARIANTS, step
 * by step (drivers/tty/serial/8250/8250_port.c, Linux 6.1); returns the port
 * type it would pick. Literal values are the driver's own.
 */
function linuxAutoconfig(io: FakePorts): string {
  const scratch = io.inb(UART_IER);
  io.outb(UART_IER, 0);
  const scratch2 = io.inb(UART_IER) & 0x0f;
  io.outb(UART_IER, 0x0f);
  const scratch3 = io.inb(UART_IER) & 0x0f;
  io.outb(UART_IER, scratch);
  if (scratch2 !== 0 || scratch3 !== 0x0f) return "none (IER test failed)";

  const saveMcr = io.inb(UART_MCR);
  const saveLcr = io.inb(UART_LCR);
  io.outb(UART_MCR, UART_MCR_LOOP | 0x0a);
  const status1 = io.inb(UART_MSR) & 0xf0;
  io.outb(UART_MCR, saveMcr);
  if (status1 !== 0x90) return `none (LOOP test failed: ${status1.toString(16)})`;

  io.outb(UART_LCR, UART_LCR_CONF_MODE_B);
  io.outb(UART_EFR, 0);
  io.outb(UART_LCR, 0);
  io.outb(UART_FCR, UART_FCR_ENABLE_FIFO);
  const iir = io.inb(UART_IIR);
  let type: string;
  switch (iir >> 6) {
    case 0: type = "8250"; break;
    case 1: type = "unknown"; break;
    case 2: type = "16550"; break;
    default: type = autoconfig16550a(io);
  }
  io.outb(UART_LCR, saveLcr);
  // Reset the UART as autoconfig() does.
  io.outb(UART_MCR, saveMcr);
  io.outb(UART_FCR, UART_FCR_ENABLE_FIFO);
  io.outb(UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT);
  io.outb(UART_FCR, 0);
  io.inb(UART_RX);
  io.outb(UART_IER, 0);
  return type;
}

function autoconfig16550a(io: FakePorts): string {
  io.outb(UART_LCR, UART_LCR_CONF_MODE_A);
  if (io.inb(UART_EFR) === 0) return "16650 or FSL64 (EFRv1)";
  io.outb(UART_LCR, UART_LCR_CONF_MODE_B);
  if (io.inb(UART_EFR) === 0) return "EFRv2";
  io.outb(UART_LCR, 0);
  const mcr = io.inb(UART_MCR);
  io.outb(UART_LCR, 0xe0);
  let status2 = io.inb(0x02);
  if (!((status2 ^ mcr) & UART_MCR_LOOP)) {
    io.outb(UART_LCR, 0);
    io.outb(UART_MCR, mcr ^ UART_MCR_LOOP);
    io.outb(UART_LCR, 0xe0);
    status2 = io.inb(0x02);
    io.outb(UART_LCR, 0);
    io.outb(UART_MCR, mcr);
    if ((status2 ^ mcr) & UART_MCR_LOOP) return "NS16550A";
  }
  io.outb(UART_LCR, 0);
  io.outb(UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR7_64BYTE);
  const s1 = io.inb(UART_IIR) >> 5;
  io.outb(UART_FCR, UART_FCR_ENABLE_FIFO);
  io.outb(UART_LCR, UART_LCR_CONF_MODE_A);
  io.outb(UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR7_64BYTE);
  const s2 = io.inb(UART_IIR) >> 5;
  io.outb(UART_FCR, UART_FCR_ENABLE_FIFO);
  io.outb(UART_LCR, 0);
  if (s1 === 6 && s2 === 7) return "16750";
  const iersave = io.inb(UART_IER);
  io.outb(UART_IER, iersave & ~UART_IER_UUE);
  if (!(io.inb(UART_IER) & UART_IER_UUE)) {
    io.outb(UART_IER, iersave | UART_IER_UUE);
    if (io.inb(UART_IER) & UART_IER_UUE) return "XScale";
  }
  io.outb(UART_IER, iersave);
  return sizeFifo(io) === 64 ? "U6_16550A" : "16550A";
}

/** size_fifo(): counts how many looped-back bytes the receiver FIFO holds. */
function sizeFifo(io: FakePorts): number {
  const oldLcr = io.inb(UART_LCR);
  io.outb(UART_LCR, 0);
  const oldFcr = io.inb(UART_FCR);
  const oldMcr = io.inb(UART_MCR);
  io.outb(UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT);
  io.outb(UART_MCR, UART_MCR_LOOP);
  io.outb(UART_LCR, UART_LCR_CONF_MODE_A);
  const oldDl = io.inb(UART_DLL) | (io.inb(UART_DLM) << 8);
  io.outb(UART_DLL, 1);
  io.outb(UART_DLM, 0);
  io.outb(UART_LCR, UART_LCR_WLEN8);
  for (let i = 0; i < 256; i++) io.outb(UART_TX, i);
  let count = 0;
  while (io.inb(UART_LSR) & UART_LSR_DR && count < 256) {
    io.inb(UART_RX);
    count++;
  }
  io.outb(UART_FCR, oldFcr);
  io.outb(UART_MCR, oldMcr);
  io.outb(UART_LCR, UART_LCR_CONF_MODE_A);
  io.outb(UART_DLL, oldDl & 0xff);
  io.outb(UART_DLM, oldDl >> 8);
  io.outb(UART_LCR, oldLcr);
  return count;
}

describe("16550A UART", () => {
  it("is detected as a 16550A by Linux's autoconfig probe, and the probe's loopback bytes never reach the host", async () => {
    const { shared, ctx, io } = setup();
    const out = new Collector();
    const host = new SerialHost(shared, IRQ, ctx, out);
    assert.equal(linuxAutoconfig(io), "16550A");
    await host.flush();
    await host.close();
    assert.equal(out.bytes().length, 0);
    assert.deepEqual(ctx.faults, []);
  });

  it("reflects MCR in MSR while in loopback and reports a connected modem otherwise", () => {
    const { io } = setup();
    assert.equal(io.inb(UART_MSR) & 0xf0, UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS);
    io.outb(UART_MCR, UART_MCR_LOOP | UART_MCR_RTS);
    assert.equal(io.inb(UART_MSR) & 0xf0, UART_MSR_CTS);
    io.outb(UART_MCR, UART_MCR_LOOP | UART_MCR_DTR | UART_MCR_OUT2);
    assert.equal(io.inb(UART_MSR) & 0xf0, UART_MSR_DSR | UART_MSR_DCD);
  });

  it("loops THR back to RBR in loopback mode, up to the FIFO depth, then flags overrun", () => {
    const { io } = setup();
    io.outb(UART_FCR, UART_FCR_ENABLE_FIFO);
    io.outb(UART_MCR, UART_MCR_LOOP);
    for (let i = 0; i < 20; i++) io.outb(UART_TX, 0x41 + i);
    const lsr = io.inb(UART_LSR);
    assert.ok(lsr & UART_LSR_DR);
    assert.ok(lsr & UART_LSR_OE);
    const got: number[] = [];
    while (io.inb(UART_LSR) & UART_LSR_DR) got.push(io.inb(UART_RX));
    assert.deepEqual(got, Array.from({ length: 16 }, (_, i) => 0x41 + i));
    assert.equal(io.inb(UART_LSR) & UART_LSR_OE, 0, "OE clears when LSR is read");
  });

  it("keeps the divisor latch apart from RBR/THR and IER while DLAB is set", async () => {
    const { shared, ctx, io } = setup();
    const out = new Collector();
    const host = new SerialHost(shared, IRQ, ctx, out);
    io.outb(UART_IER, UART_IER_RDI);
    io.outb(UART_LCR, UART_LCR_DLAB | UART_LCR_WLEN8);
    assert.equal(io.inb(UART_DLL) | (io.inb(UART_DLM) << 8), 12, "9600 baud after reset");
    io.outb(UART_DLL, 0x01);
    io.outb(UART_DLM, 0x00);
    io.outb(UART_LCR, UART_LCR_WLEN8);
    assert.equal(io.inb(UART_IER), UART_IER_RDI);
    io.outb(UART_LCR, UART_LCR_DLAB);
    assert.equal(io.inb(UART_DLL), 0x01);
    io.outb(UART_LCR, UART_LCR_WLEN8);
    await host.flush();
    await host.close();
    assert.equal(out.bytes().length, 0, "divisor writes are not output");
  });

  it("keeps whatever is written to the scratch register", () => {
    const { io } = setup();
    io.outb(UART_SCR, 0x5a);
    assert.equal(io.inb(UART_SCR), 0x5a);
  });

  it("passes the driver's THRE and TXEN tests (THRE re-armed when IER.THRI is set again)", () => {
    const { io } = setup();
    // serial8250_do_startup(): the THRE re-assert test.
    io.outb(UART_IER, UART_IER_THRI);
    const iir1 = io.inb(UART_IIR);
    io.outb(UART_IER, 0);
    io.outb(UART_IER, UART_IER_THRI);
    const iir = io.inb(UART_IIR);
    io.outb(UART_IER, 0);
    assert.equal(iir1 & UART_IIR_ID, UART_IIR_THRI);
    assert.equal(iir & UART_IIR_ID, UART_IIR_THRI, "THRE must re-assert (else the driver sets UART_BUG_THRE)");
    // The TXEN test.
    io.outb(UART_LCR, UART_LCR_WLEN8);
    io.outb(UART_MCR, UART_MCR_DTR | UART_MCR_RTS | UART_MCR_OUT2);
    io.outb(UART_IER, UART_IER_THRI);
    const lsr = io.inb(UART_LSR);
    const iir2 = io.inb(UART_IIR);
    io.outb(UART_IER, 0);
    assert.ok(lsr & UART_LSR_TEMT);
    assert.equal(iir2 & UART_IIR_NO_INT, 0, "a TX interrupt must follow enabling THRI");
  });

  it("clears the THRE interrupt on an IIR read that reports it, and re-arms it after a THR write", async () => {
    const { shared, ctx, io } = setup();
    const out = new Collector();
    const host = new SerialHost(shared, IRQ, ctx, out);
    io.outb(UART_MCR, UART_MCR_OUT2);
    io.outb(UART_IER, UART_IER_THRI);
    assert.equal(ctx.level(IRQ), 1);
    assert.equal(io.inb(UART_IIR) & UART_IIR_ID, UART_IIR_THRI);
    assert.equal(io.inb(UART_IIR), UART_IIR_NO_INT, "cleared by the read that reported it");
    assert.equal(ctx.level(IRQ), 0);
    io.outb(UART_TX, 0x21);
    assert.equal(ctx.level(IRQ), 1, "the byte left at once, THR is empty again");
    io.outb(UART_IER, 0);
    assert.equal(ctx.level(IRQ), 0);
    await host.flush();
    await host.close();
    assert.equal(out.text(), "!");
  });

  it("gates the IRQ line with MCR.OUT2 and drives it only when the level changes", () => {
    const { ctx, io } = setup();
    io.outb(UART_IER, UART_IER_THRI);
    assert.equal(io.inb(UART_IIR) & UART_IIR_ID, UART_IIR_THRI); // the read clears it
    io.outb(UART_IER, 0);
    io.outb(UART_IER, UART_IER_THRI); // pending again, but OUT2 is clear
    assert.deepEqual(ctx.irqCalls, []);
    io.outb(UART_MCR, UART_MCR_OUT2);
    io.outb(UART_SCR, 1);
    io.outb(UART_SCR, 2);
    assert.deepEqual(ctx.irqCalls, [{ gsi: IRQ, level: 1 }]);
    io.outb(UART_MCR, UART_MCR_OUT2 | UART_MCR_LOOP);
    assert.deepEqual(ctx.irqCalls.at(-1), { gsi: IRQ, level: 0 }, "loopback disconnects the interrupt output");
  });

  it("raises the received-data interrupt when the host sends input, above THRE in priority", async () => {
    const { shared, ctx, io } = setup();
    const host = new SerialHost(shared, IRQ, ctx, new Collector());
    io.outb(UART_MCR, UART_MCR_OUT2);
    io.outb(UART_IER, UART_IER_RDI | UART_IER_THRI);
    assert.equal(host.input(Buffer.from("hi")), 2);
    assert.equal(ctx.level(IRQ), 1);
    assert.equal(io.inb(UART_IIR) & UART_IIR_ID, UART_IIR_RDI);
    assert.ok(io.inb(UART_LSR) & UART_LSR_DR);
    assert.equal(String.fromCharCode(io.inb(UART_RX), io.inb(UART_RX)), "hi");
    assert.equal(io.inb(UART_LSR) & UART_LSR_DR, 0);
    assert.equal(io.inb(UART_IIR) & UART_IIR_ID, UART_IIR_THRI, "THRE shows once RX is empty");
    assert.equal(io.inb(UART_IIR), UART_IIR_NO_INT);
    assert.equal(ctx.level(IRQ), 0);
    await host.close();
  });

  it("orders interrupt sources line status > received data > THR empty > modem status", () => {
    const { io } = setup();
    io.outb(UART_MCR, UART_MCR_LOOP); // FIFOs off: a one-byte receiver, easy to overrun
    io.outb(UART_IER, UART_IER_RLSI | UART_IER_RDI | UART_IER_THRI | UART_IER_MSI);
    io.outb(UART_TX, 1);
    io.outb(UART_TX, 2); // overrun
    io.outb(UART_MCR, UART_MCR_LOOP | UART_MCR_RTS); // CTS changes: modem status
    assert.equal(io.inb(UART_IIR) & UART_IIR_ID, UART_IIR_RLSI);
    io.inb(UART_LSR);
    assert.equal(io.inb(UART_IIR) & UART_IIR_ID, UART_IIR_RDI);
    assert.equal(io.inb(UART_RX), 1);
    assert.equal(io.inb(UART_IIR) & UART_IIR_ID, UART_IIR_THRI);
    const iir = io.inb(UART_IIR);
    assert.equal(iir & UART_IIR_NO_INT, 0);
    assert.equal(iir & UART_IIR_ID, UART_IIR_MSI);
    io.inb(UART_MSR);
    assert.equal(io.inb(UART_IIR), UART_IIR_NO_INT);
  });

  it("reports FIFO mode in IIR bits 7-6 and clears received bytes on FCR CLEAR_RCVR", async () => {
    const { shared, ctx, io } = setup();
    const host = new SerialHost(shared, IRQ, ctx, new Collector());
    assert.equal(io.inb(UART_IIR) & 0xc0, 0);
    io.outb(UART_FCR, UART_FCR_ENABLE_FIFO);
    assert.equal(io.inb(UART_IIR) & 0xc0, 0xc0);
    host.input(Buffer.from("xyz"));
    io.outb(UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR);
    assert.equal(io.inb(UART_LSR) & UART_LSR_DR, 0);
    await host.close();
  });

  it("takes only what fits in the RX ring and says when there is room again", async () => {
    const { shared, ctx, io } = setup();
    const host = new SerialHost(shared, IRQ, ctx, new Collector());
    assert.equal(host.input(new Uint8Array(SERIAL_RX_RING_BYTES + 10).fill(0x61)), SERIAL_RX_RING_BYTES);
    assert.equal(host.input(Uint8Array.of(0x62)), 0);
    let roomy = false;
    const room = host.inputRoom().then(() => (roomy = true));
    await new Promise((r) => setImmediate(r));
    assert.equal(roomy, false);
    io.inb(UART_RX);
    await room;
    assert.equal(host.input(Uint8Array.of(0x62)), 1);
    await host.close();
  });

  it("feeds a paused-and-resumed input stream without dropping bytes", async () => {
    const { shared, ctx, io } = setup();
    const host = new SerialHost(shared, IRQ, ctx, new Collector());
    const { PassThrough } = await import("node:stream");
    const stdin = new PassThrough();
    const detach = host.connectInput(stdin);
    const sent = Buffer.alloc(3 * SERIAL_RX_RING_BYTES, 0).map((_, i) => i & 0xff);
    stdin.write(sent);
    const got: number[] = [];
    while (got.length < sent.length) {
      if (io.inb(UART_LSR) & UART_LSR_DR) got.push(io.inb(UART_RX));
      else await new Promise((r) => setImmediate(r));
    }
    assert.deepEqual(Buffer.from(got), sent);
    detach();
    await host.close();
  });

  it("sets THRE and TEMT while the TX ring can take a FIFO's worth", () => {
    const { shared, io } = setup();
    // No host drains: fill the ring from this (main) thread, where writes may not block.
    for (let i = 0; i < SERIAL_TX_RING_BYTES - 16; i++) io.outb(UART_TX, 0x2e);
    assert.equal(io.inb(UART_LSR) & (UART_LSR_THRE | UART_LSR_TEMT), UART_LSR_THRE | UART_LSR_TEMT);
    io.outb(UART_TX, 0x2e);
    assert.equal(io.inb(UART_LSR) & (UART_LSR_THRE | UART_LSR_TEMT), 0);
    const st = new SerialState(shared, IRQ, new FakeContext());
    assert.equal(st.txUsed(), SERIAL_TX_RING_BYTES - 15);
  });

  it("never throws on random reads and writes of any size at any offset", () => {
    const { ctx, uart } = setup();
    let seed = 12345;
    const rand = (n: number): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    for (let i = 0; i < 200_000; i++) {
      const data = new Uint8Array([1, 2, 4, 8][rand(4)]!).map(() => rand(256));
      const offset = rand(SERIAL_PORT_COUNT + 4) - 2;
      if (rand(2)) uart.read(offset, data);
      else uart.write(offset, data);
    }
    assert.ok(ctx.faults.every((f) => f.startsWith("serial: ") && !f.includes("internal error")), ctx.faults.find((f) => f.includes("internal")));
  });

  it("saves and restores its registers and pending input", async () => {
    const a = setup();
    const hostA = new SerialHost(a.shared, IRQ, a.ctx, new Collector());
    a.io.outb(UART_LCR, UART_LCR_WLEN8);
    a.io.outb(UART_IER, UART_IER_RDI);
    a.io.outb(UART_MCR, UART_MCR_OUT2 | UART_MCR_DTR);
    a.io.outb(UART_SCR, 0x77);
    hostA.input(Buffer.from("ok"));
    const saved = hostA.save();
    const b = setup();
    const hostB = new SerialHost(b.shared, IRQ, b.ctx, new Collector());
    hostB.restore(JSON.parse(JSON.stringify(saved)));
    assert.deepEqual(hostB.save(), saved);
    assert.equal(b.ctx.level(IRQ), 1, "the restored pending input interrupts");
    assert.equal(String.fromCharCode(b.io.inb(UART_RX), b.io.inb(UART_RX)), "ok");
    await hostA.close();
    await hostB.close();
  });
});

function runWriter(job: SerialWriterJob): { worker: Worker; done: Promise<{ fullSeen: number; faults: string[] }> } {
  const worker = new Worker(new URL("./testing/serial-test-worker.js", import.meta.url), { workerData: job });
  const done = new Promise<{ fullSeen: number; faults: string[] }>((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
  });
  return { worker, done };
}

describe("16550A UART across threads", () => {
  it("delivers 1 MiB written by a vCPU worker to a slow writable in order, losing nothing", async () => {
    const shared = createSerialShared();
    const ctx = new FakeContext();
    const out = new Collector(50, 4096); // a terminal slower than the guest
    const host = new SerialHost(shared, IRQ, ctx, out);
    const job = { count: 1024 * 1024, offset: 0, modulus: 256 };
    const { worker, done } = runWriter({ shared, ...job });
    const result = await done;
    await host.flush();
    await host.close();
    await worker.terminate();
    const expected = Buffer.alloc(job.count).map((_, i) => patternByte(job, i));
    const got = out.bytes();
    assert.equal(got.length, expected.length);
    assert.ok(got.equals(expected), "output differs from what the guest wrote");
    assert.equal(host.droppedBytes, 0);
    assert.ok(result.fullSeen > 0, "the ring never filled, so the test did not exercise blocking");
    assert.ok(out.drains > 0, "the writable never applied backpressure");
    assert.deepEqual(result.faults, []);
  });

  it("interleaves two vCPU writers without losing or reordering either one's bytes", async () => {
    const shared = createSerialShared();
    const ctx = new FakeContext();
    const out = new Collector(1, 4096);
    const host = new SerialHost(shared, IRQ, ctx, out);
    const low = { count: 200_000, offset: 0, modulus: 128 };
    const high = { count: 200_000, offset: 128, modulus: 128 };
    const a = runWriter({ shared, ...low });
    const b = runWriter({ shared, ...high });
    await Promise.all([a.done, b.done]);
    await host.flush();
    await host.close();
    await Promise.all([a.worker.terminate(), b.worker.terminate()]);
    const got = out.bytes();
    const lows = got.filter((x) => x < 128);
    const highs = got.filter((x) => x >= 128);
    assert.ok(Buffer.from(lows).equals(Buffer.alloc(low.count).map((_, i) => patternByte(low, i))));
    assert.ok(Buffer.from(highs).equals(Buffer.alloc(high.count).map((_, i) => patternByte(high, i))));
  });

  it("releases a vCPU blocked on a full ring when the host closes", async () => {
    const shared = createSerialShared();
    const ctx = new FakeContext();
    const stuck = new Writable({ highWaterMark: 1, write() { /* never completes */ } });
    const host = new SerialHost(shared, IRQ, ctx, stuck);
    const { worker, done } = runWriter({ shared, count: 4 * SERIAL_TX_RING_BYTES, offset: 0, modulus: 256 });
    const st = new SerialState(shared, IRQ, new FakeContext());
    while (st.txFree() > 0) await new Promise((r) => setTimeout(r, 5));
    await host.close();
    await done; // the worker finished instead of waiting forever
    await worker.terminate();
    assert.ok(host.droppedBytes > 0);
    await host.flush(); // resolves at once after close
  });

  it("keeps a vCPU blocked on a full ring until writers are released, then lets it drop its bytes and finish", async () => {
    const shared = createSerialShared();
    const ctx = new FakeContext();
    const stuck = new Writable({ highWaterMark: 1, write() { /* a console reader that stopped reading */ } });
    const host = new SerialHost(shared, IRQ, ctx, stuck);
    const count = 4 * SERIAL_TX_RING_BYTES;
    const { worker, done } = runWriter({ shared, count, offset: 0, modulus: 256 });
    const st = new SerialState(shared, IRQ, new FakeContext());
    while (st.txFree() > 0) await new Promise((r) => setTimeout(r, 5));
    // Full and stalled: the writer waits (nothing is dropped) for as long as nobody stops the VM.
    let finished = false;
    void done.then(() => (finished = true));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(finished, false, "the writer gave up on its own");
    assert.equal(host.droppedBytes, 0);
    host.releaseWriters();
    await done; // released: the rest of its bytes are dropped instead of waited for
    await worker.terminate();
    assert.ok(host.droppedBytes > 0);
    assert.ok(host.pendingBytes >= SERIAL_TX_RING_BYTES, "what the ring holds is still there to flush");
    await host.close();
  });
});
