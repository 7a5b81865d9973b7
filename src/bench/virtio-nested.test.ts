import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { packagePath } from "../guest/programs/build-cache.js";
import {
  BENCH_CMDLINE, BENCH_LINKS, BENCH_SOURCE_PORT, BENCH_TCP_PORT, QEMU_NET_NO_OFFLOADS, VIRTIO_FIGURES,
  buildVirtioBenchProgram, guestInit, monitorCommand, namedNetFeatures, type ScheduledStep, stepValue, summarize, virtioSchedule,
} from "./virtio-nested.js";
import { VIRTIO_BENCH_PREFIX, parseVirtioBenchLine, parseVirtioBenchLines } from "./virtio-report.js";

const figure = (key: string) => VIRTIO_FIGURES.find((f) => f.key === key)!;
const blkLine = (mode: string, bs: number, threads: number, ops: number, ns: number) =>
  `${VIRTIO_BENCH_PREFIX} test=blk mode=${mode} block_bytes=${bs} threads=${threads} ops=${ops} bytes=${ops * bs} ns=${ns}`;

describe("stepValue", () => {
  it("turns a blk report into IOPS or MB/s", () => {
    assert.equal(stepValue(figure("blkRand4kQd1Iops"), { guestLines: [blkLine("rand", 4096, 1, 126, 3e9)] }), 42);
    assert.equal(stepValue(figure("blkRand4kQd32Iops"), { guestLines: [blkLine("rand", 4096, 32, 1000, 2e9)] }), 500);
    assert.equal(stepValue(figure("blkSeq64kMegabytesPerSecond"), { guestLines: [blkLine("seq", 65536, 1, 100, 1e9)] }), 6.5536);
  });

  it("turns the receiver's report of a whole stream into MB/s", () => {
    const guestLines = [`${VIRTIO_BENCH_PREFIX} test=send bytes=16000000 ns=8100000000`];
    assert.equal(stepValue(figure("netTxMegabytesPerSecond"), { guestLines, sinkLine: `${VIRTIO_BENCH_PREFIX} test=sink bytes=16000000 ns=8000000000` }), 2);
  });

  it("turns the guest's report of a whole stream from the source into MB/s", () => {
    const rx = figure("netRxMegabytesPerSecond");
    const guestLines = [`${VIRTIO_BENCH_PREFIX} test=recv bytes=16000000 ns=4000000000`];
    const source = `${VIRTIO_BENCH_PREFIX} test=source bytes=16000000 ns=4100000000`;
    assert.equal(stepValue(rx, { guestLines, sinkLine: source }), 4);
    // Partial stream, a receiver's report instead of the source's, no report.
    assert.equal(stepValue(rx, { guestLines, sinkLine: source.replace("16000000", "16000001") }), undefined);
    assert.equal(stepValue(rx, { guestLines, sinkLine: source.replace("source", "sink") }), undefined);
    assert.equal(stepValue(rx, { guestLines }), undefined);
    // A send figure does not take a recv report.
    assert.equal(stepValue(figure("netTxMegabytesPerSecond"), { guestLines, sinkLine: source }), undefined);
  });

  it("gives nothing for another test's report, an empty window, a partial stream or a failure", () => {
    const rand = figure("blkRand4kQd1Iops"), net = figure("netTxMegabytesPerSecond");
    assert.equal(stepValue(rand, { guestLines: [blkLine("rand", 4096, 32, 5, 1e9)] }), undefined);
    assert.equal(stepValue(rand, { guestLines: [blkLine("rand", 4096, 1, 0, 1e9)] }), undefined);
    assert.equal(stepValue(rand, { guestLines: [blkLine("rand", 4096, 1, 5, 0)] }), undefined);
    assert.equal(stepValue(rand, { guestLines: [`${VIRTIO_BENCH_PREFIX} error=pread errno=EIO`] }), undefined);
    const sent = [`${VIRTIO_BENCH_PREFIX} test=send bytes=100 ns=5`];
    assert.equal(stepValue(net, { guestLines: sent, sinkLine: `${VIRTIO_BENCH_PREFIX} test=sink bytes=99 ns=5` }), undefined);
    assert.equal(stepValue(net, { guestLines: sent }), undefined);
    assert.equal(stepValue(net, { guestLines: [], sinkLine: `${VIRTIO_BENCH_PREFIX} test=sink bytes=100 ns=5` }), undefined);
  });
});

describe("virtioSchedule", () => {
  const steps = virtioSchedule({ rounds: 2, warmupMs: 200, runMs: 1000, netMs: 2000 });

  it("runs each figure on each monitor once per round", () => {
    assert.equal(steps.length, 2 * VIRTIO_FIGURES.length * 2);
    assert.deepEqual(steps.map((s) => s.id), steps.map((_, i) => i + 1));
    for (const f of VIRTIO_FIGURES) assert.equal(steps.filter((s) => s.figure === f.key && s.monitor === "flint").length, 2);
  });

  it("alternates which monitor goes first, test by test", () => {
    assert.deepEqual(steps.slice(0, 2).map((s) => s.monitor), ["flint", "qemu"]);
    const round1 = steps.filter((s) => s.round === 1);
    assert.deepEqual(round1.slice(0, 2).map((s) => s.monitor), ["qemu", "flint"]);
  });

  it("asks for the figure's test with the given windows", () => {
    assert.equal(steps[0]!.command, "blk /dev/vda rand 4096 1 200 1000");
    assert.equal(steps[0]!.net, false);
    const net = steps.find((s) => s.figure === "netTxMegabytesPerSecond" && s.monitor === "qemu")!;
    assert.equal(net.command, `send ${BENCH_LINKS.qemuOffload.outerIpv4} ${BENCH_TCP_PORT} 2000`);
    assert.equal(net.net, true);
    const flintNet = steps.find((s) => s.figure === "netTxMegabytesPerSecond" && s.monitor === "flint")!;
    assert.equal(flintNet.command, `send ${BENCH_LINKS.flint.outerIpv4} ${BENCH_TCP_PORT} 2000`);
    const rx = steps.find((s) => s.figure === "netRxMegabytesPerSecond" && s.monitor === "qemu")!;
    assert.equal(rx.command, `recv ${BENCH_LINKS.qemuOffload.outerIpv4} ${BENCH_SOURCE_PORT} 2000`);
    assert.equal(rx.net, true);
  });

  it("runs only the figures asked for", () => {
    const net = virtioSchedule({ rounds: 2, warmupMs: 0, runMs: 1000, netMs: 1000, figures: ["netTxMegabytesPerSecond", "netRxMegabytesPerSecond"] });
    assert.deepEqual([...new Set(net.map((s) => s.figure))], ["netTxMegabytesPerSecond", "netRxMegabytesPerSecond"]);
    assert.equal(net.length, 2 * 2 * 2);
    assert.deepEqual(Object.keys(summarize(net, [])), ["netTxMegabytesPerSecond", "netRxMegabytesPerSecond"]);
  });
});

describe("virtioSchedule with warm-up rounds", () => {
  it("runs them first, with negative round numbers, and summarize leaves them out", () => {
    const steps = virtioSchedule({ rounds: 2, warmupRounds: 1, warmupMs: 0, runMs: 1000, netMs: 1000 });
    assert.equal(steps.length, 3 * VIRTIO_FIGURES.length * 2);
    assert.deepEqual([...new Set(steps.map((s) => s.round))], [-1, 0, 1]);
    assert.deepEqual(steps.slice(0, 2).map((s) => s.monitor), ["qemu", "flint"], "the warm-up alternates like any round");
    assert.deepEqual(steps.filter((s) => s.round === 0).slice(0, 2).map((s) => s.monitor), ["flint", "qemu"]);
    const qd1 = steps.filter((s) => s.figure === "blkRand4kQd1Iops");
    const iops = (s: ScheduledStep) => (s.round < 0 ? 1 : s.monitor === "flint" ? 100 + s.round : 100);
    const f = summarize(qd1, qd1.map((s) => ({ id: s.id, guestLines: [blkLine("rand", 4096, 1, iops(s), 1e9)] }))).blkRand4kQd1Iops!;
    assert.deepEqual(f.samples, { flint: [100, 101], qemu: [100, 100] });
    assert.equal(f.ratio, 1.005);
  });
});

describe("summarize", () => {
  it("takes medians per monitor and the median of per-round ratios, skipping failed steps", () => {
    const steps = virtioSchedule({ rounds: 3, warmupMs: 0, runMs: 1000, netMs: 1000 }).filter((s) => s.figure === "blkRand4kQd1Iops");
    const iops: Record<string, (number | undefined)[]> = { flint: [100, 50, 90], qemu: [200, 100, undefined] };
    const results = steps.map((s) => {
      const v = iops[s.monitor]![s.round];
      return { id: s.id, guestLines: v === undefined ? [] : [blkLine("rand", 4096, 1, v, 1e9)] };
    });
    const f = summarize(steps, results).blkRand4kQd1Iops!;
    assert.deepEqual(f.samples, { flint: [100, 50, 90], qemu: [200, 100, undefined] });
    assert.equal(f.flint, 90);
    assert.equal(f.qemu, 150);
    assert.equal(f.ratio, 0.5);
  });

  it("counts each monitor's CPU per 1000 requests (guest, vCPU threads, other threads and the busiest), the busiest's system calls and the VM's exits, over the steps that measured", () => {
    const steps = virtioSchedule({ rounds: 3, warmupMs: 0, runMs: 1000, netMs: 1000 }).filter((s) => s.figure === "blkRand4kQd1Iops");
    const results = steps.map((s) => ({
      id: s.id, guestLines: s.round === 2 && s.monitor === "qemu" ? [] : [blkLine("rand", 4096, 1, 2000, 1e9), `${VIRTIO_BENCH_PREFIX} test=counts irqs=${s.monitor === "flint" ? 600 : 400} packets=0`],
      cpu: s.monitor === "flint"
        ? { guestMs: 1000, vcpuMs: 200, otherMs: [300 + 100 * s.round, 100], busiestCalls: { reads: 2000 * (s.round + 1), writes: 4000, sleeps: 200 } }
        : { guestMs: 800, vcpuMs: 100 * (s.round + 1), otherMs: [] },
      ...(s.monitor === "flint" ? { exits: { exits: 6000 + 2000 * s.round, mmioExits: 1200, ioExits: 0, haltExits: 20, irqInjections: 600 } } : {}),
    }));
    const f = summarize(steps, results).blkRand4kQd1Iops!;
    // 2000 requests per step; flint's other threads used 400, 500, 600 ms; QEMU's third step measured nothing.
    assert.deepEqual(f.cpu, {
      flint: {
        guest: 500, vcpu: 100, other: 250, busiestOther: 200, irqs: 300, packets: 0,
        // Per 1000 requests, medians of the three steps (reads 1000, 2000, 3000; exits 3000, 4000, 5000).
        calls: { reads: 2000, writes: 2000, sleeps: 100 },
        exits: { exits: 4000, mmioExits: 600, ioExits: 0, haltExits: 10, irqInjections: 300 },
      },
      // QEMU's steps had no counts: no calls or exits, rather than zeros.
      qemu: { guest: 400, vcpu: 75, other: 0, busiestOther: 0, irqs: 200, packets: 0 },
    });
  });
});

describe("monitor commands", () => {
  const inputs = { vmlinux: "/dev/shm/vmlinux", initrd: "/dev/shm/i.cpio.gz", image: "/dev/shm/a,b.img", cpus: 2, memoryMib: 256 };

  it("give both monitors the same kernel, initramfs, command line, vCPUs and memory", () => {
    const flint = monitorCommand("flint", inputs), qemu = monitorCommand("qemu", inputs);
    for (const argv of [flint, qemu]) {
      assert.ok(argv.includes(inputs.vmlinux) && argv.includes(inputs.initrd) && argv.includes(BENCH_CMDLINE), argv.join(" "));
    }
    assert.deepEqual(flint.slice(flint.indexOf("--cpus"), flint.indexOf("--cpus") + 4), ["--cpus", "2", "--memory", "256"]);
    assert.deepEqual(qemu.slice(qemu.indexOf("-smp"), qemu.indexOf("-smp") + 4), ["-smp", "2", "-m", "256"]);
  });

  it("attach the image read-only and a TAP of their own; QEMU's first link has no offloads, its second QEMU's defaults", () => {
    const flint = monitorCommand("flint", inputs).join(" "), qemu = monitorCommand("qemu", inputs);
    assert.match(flint, /--disk \/dev\/shm\/a,b\.img,ro --net tap=tap0,mac=06:00:ac:10:00:02/);
    assert.ok(qemu.includes("id=vda,file=/dev/shm/a,,b.img,format=raw,if=none,readonly=on"));
    assert.ok(qemu.includes(`tap,id=n0,ifname=${BENCH_LINKS.qemu.tap},script=no,downscript=no`));
    assert.ok(qemu.includes(`virtio-net-device,netdev=n0,mac=${BENCH_LINKS.qemu.guestMac},${QEMU_NET_NO_OFFLOADS}`));
    assert.ok(qemu.includes(`tap,id=n1,ifname=${BENCH_LINKS.qemuOffload.tap},script=no,downscript=no`));
    assert.ok(qemu.includes(`virtio-net-device,netdev=n1,mac=${BENCH_LINKS.qemuOffload.guestMac}`));
    const taps = Object.values(BENCH_LINKS).map((l) => l.tap), macs = Object.values(BENCH_LINKS).map((l) => l.guestMac);
    assert.equal(new Set(taps).size, taps.length);
    assert.equal(new Set(macs).size, macs.length);
  });

});

describe("namedNetFeatures", () => {
  it("names the offload bits of a sysfs features string, bit 0 first", () => {
    const bits = (...set: number[]) => Array.from({ length: 64 }, (_, i) => (set.includes(i) ? "1" : "0")).join("");
    assert.deepEqual(namedNetFeatures(bits(0, 1, 5, 7, 11, 15, 32)), ["csum", "guest_csum", "host_tso4", "guest_tso4", "mrg_rxbuf"]);
    assert.deepEqual(namedNetFeatures(bits(5, 16, 32)), []);
    assert.deepEqual(namedNetFeatures(""), []);
  });
});

describe("guestInit", () => {
  const init = guestInit();

  it("brings up every link by MAC and serves blk, send, recv and quit commands", () => {
    for (const l of Object.values(BENCH_LINKS)) assert.ok(init.includes(`link_up ${l.guestMac} ${l.guestIpv4}`));
    assert.match(init, /blk\|send\|recv\) \/bin\/virtio-bench \$verb \$args/);
    assert.match(init, /test=end id=\$id/);
  });

  it("is a valid shell script that answers each command, with the interrupts and packets it took, and stops on quit", () => {
    execFileSync("sh", ["-n"], { input: init });
    // Run the command loop alone (and the counting it uses, here over the host's /proc and /sys), with the program replaced by echo.
    const start = init.indexOf("counts() {");
    const loop = init.slice(start, init.indexOf("\ndone\n", start) + 6).replace("/bin/virtio-bench", "echo ran");
    const out = execFileSync("sh", ["-c", loop], { input: "1 blk /dev/vda rand 4096 1 0 10\n2 dance\n4 recv 1.2.3.4 5 6\n0 quit\n3 blk x\n", encoding: "utf8" });
    const records = parseVirtioBenchLines(out);
    assert.match(out, /^ran blk \/dev\/vda rand 4096 1 0 10$/m);
    assert.match(out, /^ran recv 1\.2\.3\.4 5 6$/m);
    assert.deepEqual(records.map((r) => r.test ?? r.error), ["counts", "end", "unknown-command-dance", "counts", "end", "counts", "end"]);
    for (const r of records.filter((x) => x.test === "counts")) assert.match(`${r.irqs} ${r.packets}`, /^\d+ \d+$/);
    assert.ok(!out.includes("blk x"));
  });
});

describe("the load generator", () => {
  it("uses the report prefix the parser expects", () => {
    assert.ok(readFileSync(packagePath("guest/linux/virtio-bench.c"), "utf8").includes(`#define REPORT "${VIRTIO_BENCH_PREFIX} "`));
  });

  it("builds statically and measures reads of a file and TCP streams on this host", async () => {
    const program = buildVirtioBenchProgram();
    const blk = parseVirtioBenchLine(execFileSync(program, ["blk", program, "rand", "4096", "4", "0", "100"], { encoding: "utf8" }))!;
    assert.equal(blk.test, "blk");
    assert.equal(blk.threads, "4");
    assert.ok(Number(blk.ops) > 0);
    const sink = spawn(program, ["sink", "17777"]);
    let sinkOut = "";
    sink.stdout.on("data", (d: Buffer) => { sinkOut += d.toString(); });
    try {
      for (let i = 0; i < 2; i++) {
        const sent = execFileSync(program, ["send", "127.0.0.1", "17777", "50"], { encoding: "utf8" });
        while (parseVirtioBenchLines(sinkOut).filter((r) => r.test === "sink").length <= i) await new Promise((r) => setTimeout(r, 10));
        const sinkLine = sinkOut.trim().split("\n").pop()!;
        assert.ok(stepValue(figure("netTxMegabytesPerSecond"), { guestLines: [sent], sinkLine })! > 0, `${sent} ${sinkLine}`);
      }
      // The source on the next port, for streams to the guest.
      for (let i = 0; i < 2; i++) {
        const received = execFileSync(program, ["recv", "127.0.0.1", "17778", "50"], { encoding: "utf8" });
        while (parseVirtioBenchLines(sinkOut).filter((r) => r.test === "source").length <= i) await new Promise((r) => setTimeout(r, 10));
        const sourceLine = sinkOut.trim().split("\n").pop()!;
        assert.ok(stepValue(figure("netRxMegabytesPerSecond"), { guestLines: [received], sinkLine: sourceLine })! > 0, `${received} ${sourceLine}`);
      }
    } finally {
      sink.kill();
    }
  });
});
