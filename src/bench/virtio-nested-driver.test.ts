import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { kvmExitCounts, kvmExitDelta, runDriver, threadCpuDelta, threadTicks } from "./virtio-nested-driver.js";
import { buildVirtioBenchProgram } from "./virtio-nested.js";
import { parseVirtioBenchLine } from "./virtio-report.js";

const dir = mkdtempSync(join(tmpdir(), "flint-virtio-driver-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A stand-in for a booted guest: the /init command loop, with canned blk results and a real TCP sender. */
function fakeGuest(program: string, name: string): string {
  return `echo "booting ${name}"
echo "virtio-bench: test=devices virtio=2 name=${name}"
echo "virtio-bench: test=ready"
while read -r id verb args; do
  case "$verb" in
    blk) echo "virtio-bench: test=blk mode=rand block_bytes=4096 threads=1 ops=10 bytes=40960 ns=1000000000" ;;
    send) ${program} send $args ;;
    hang) exec sleep 30 ;;
    quit) break ;;
  esac
  echo "virtio-bench: test=end id=$id"
done
echo "${name} done"`;
}

describe("runDriver", () => {
  it("boots every monitor, runs the steps in turn with the receiver, and stops the guests with quit", { timeout: 60_000 }, async () => {
    const program = buildVirtioBenchProgram();
    const port = "17770"; // the sink also listens on port + 1 (its source): each test takes two ports
    const result = await runDriver({
      monitors: ["a", "b"].map((name) => ({ name, argv: ["sh", "-c", fakeGuest(program, name)], consoleFile: join(dir, `${name}.console`) })),
      steps: [
        { id: 1, monitor: "a", command: "blk /dev/vda rand 4096 1 0 1000", net: false },
        { id: 2, monitor: "b", command: `send 127.0.0.1 ${port} 100`, net: true },
        { id: 3, monitor: "b", command: "hang", net: false },
        { id: 4, monitor: "b", command: "blk", net: false },
        { id: 5, monitor: "a", command: `send 127.0.0.1 ${port} 50`, net: true },
      ],
      sinkArgv: [program, "sink", port],
      bootTimeoutMs: 20_000,
      stepTimeoutMs: 2_000,
      maxRestarts: 0,
    });
    assert.deepEqual(result.boots.a!.lines.map((l) => parseVirtioBenchLine(l)!.name), ["a"]);
    assert.ok(result.boots.b!.readyAfterMs! >= 0);
    const [blk, sendB, hang, afterHang, sendA] = result.steps;
    assert.equal(parseVirtioBenchLine(blk!.guestLines[0]!)!.ops, "10");
    for (const send of [sendB!, sendA!]) {
      const sent = parseVirtioBenchLine(send.guestLines[0]!)!, received = parseVirtioBenchLine(send.sinkLine!)!;
      assert.equal(received.test, "sink");
      assert.equal(received.bytes, sent.bytes);
    }
    assert.match(hang!.error!, /no end of step within 2000 ms/);
    assert.match(afterHang!.error!, /b is not running/);
    assert.deepEqual(result.exits.a, { code: 0, signal: null, killed: false });
    assert.equal(result.exits.b!.killed, true);
    assert.match(readFileSync(join(dir, "a.console"), "utf8"), /booting a[\s\S]*a done/);
  });

  it("reports a guest that never gets ready and runs nothing on it", { timeout: 60_000 }, async () => {
    const program = buildVirtioBenchProgram();
    const result = await runDriver({
      monitors: [{ name: "x", argv: ["sh", "-c", "echo 'kernel panic'; exit 3"], consoleFile: join(dir, "x.console") }],
      steps: [{ id: 1, monitor: "x", command: "blk", net: false }],
      sinkArgv: [program, "sink", "17772"],
      bootTimeoutMs: 5_000,
      stepTimeoutMs: 1_000,
      maxRestarts: 2,
    });
    assert.equal(result.boots.x!.error, "exited before its ready report (exit 3): kernel panic", "with its status and last console line");
    assert.match(result.steps[0]!.error!, /not run: x did not boot/);
    assert.equal(result.exits.x!.code, 3);
  });

  it("boots a monitor whose VM died again, runs its next step once uncounted, then counted, and goes on", { timeout: 60_000 }, async () => {
    const program = buildVirtioBenchProgram();
    const result = await runDriver({
      monitors: [{ name: "c", argv: ["sh", "-c", fakeGuest(program, "c").replace("hang) exec sleep 30", "hang) exit 9")], consoleFile: join(dir, "c.console") }],
      steps: [
        { id: 1, monitor: "c", command: "hang", net: false },
        { id: 2, monitor: "c", command: "send 127.0.0.1 17774 100", net: true },
        { id: 3, monitor: "c", command: "hang", net: false },
        { id: 4, monitor: "c", command: "blk", net: false },
      ],
      sinkArgv: [program, "sink", "17774"],
      bootTimeoutMs: 5_000,
      stepTimeoutMs: 2_000,
      maxRestarts: 1,
    });
    assert.deepEqual(result.steps.map((s) => s.error?.replace(/ \(exit 9\).*/, "") ?? "ok"), ["the VM exited during the step", "ok", "the VM exited during the step", "c is not running"]);
    assert.match(result.steps[0]!.error!, /\(exit 9\)/);
    assert.equal(result.restarts.c!.length, 1);
    assert.equal(result.restarts.c![0]!.beforeStep, 2);
    assert.ok(result.restarts.c![0]!.readyAfterMs! >= 0);
    const console = readFileSync(join(dir, "c.console"), "utf8");
    assert.equal((console.match(/booting c/g) ?? []).length, 2);
    // Step 2 ran twice on the new VM; the warm-up's stream and the outer end's report of it were
    // consumed, so the counted step pairs its own send with its own receive.
    assert.equal(result.restarts.c![0]!.warmUp?.error, undefined);
    assert.ok(result.restarts.c![0]!.warmUp!.elapsedMs >= 0);
    assert.equal((console.match(/test=end id=2\b/g) ?? []).length, 2);
    const counted = result.steps[1]!, sent = parseVirtioBenchLine(counted.guestLines[0]!)!, received = parseVirtioBenchLine(counted.sinkLine!)!;
    assert.equal(sent.test, "send");
    assert.equal(received.bytes, sent.bytes);
  });
});

describe("thread CPU accounting", () => {
  it("threadCpuDelta splits guest time, vCPU threads' own time and other threads' (busiest first, idle ones left out)", () => {
    const t = (cpu: number, guest = 0) => ({ cpu, guest });
    const before = new Map([["10", t(5)], ["11", t(7)], ["12", t(1)], ["20", t(100, 60)]]);
    const after = new Map([["10", t(9)], ["11", t(7)], ["12", t(31)], ["13", t(0)], ["20", t(150, 90)], ["21", t(20, 15)]]);
    // Thread 20 ran the guest for 30 ticks of its 50, thread 21 for 15 of 20.
    assert.deepEqual(threadCpuDelta(before, after), { guestMs: 450, vcpuMs: 250, otherMs: [300, 40] });
  });

  it("threadCpuDelta gives the busiest other thread's system calls and sleeps over the interval, when /proc showed them", () => {
    const t = (cpu: number, reads: number, guest = 0) => ({ cpu, guest, calls: { reads, writes: 2 * reads, sleeps: reads + 1 } });
    const before = new Map([["10", t(5, 100)], ["12", t(1, 10)], ["20", t(100, 7, 60)]]);
    // Thread 12 is the busiest other (30 ticks against 4); vCPU thread 20 is not "other".
    const after = new Map([["10", t(9, 150)], ["12", t(31, 40)], ["20", t(150, 9000, 90)]]);
    assert.deepEqual(threadCpuDelta(before, after).busiestCalls, { reads: 30, writes: 60, sleeps: 30 });
    const noProc = new Map([["12", { cpu: 31, guest: 0 }]]);
    assert.equal(threadCpuDelta(before, noProc).busiestCalls, undefined);
  });

  it("kvmExitCounts sums the exit counters of the process's VMs (debugfs `<pid>-<fd>` directories) and kvmExitDelta subtracts them", () => {
    const root = mkdtempSync(join(tmpdir(), "flint-kvm-debugfs-"));
    try {
      const vm = (dir: string, exits: number) => {
        mkdirSync(join(root, dir));
        const files: Record<string, number> = { exits, mmio_exits: exits / 10, io_exits: 2, halt_exits: 3, irq_injections: 4, insn_emulation: 99 };
        for (const [f, v] of Object.entries(files)) writeFileSync(join(root, dir, f), `${v}\n`);
      };
      vm("123-11", 100);
      vm("123-14", 50);
      vm("1234-11", 7000); // another process whose pid starts the same
      const counts = kvmExitCounts(123, root);
      assert.deepEqual(counts, { exits: 150, mmioExits: 15, ioExits: 4, haltExits: 6, irqInjections: 8 });
      assert.deepEqual(kvmExitDelta({ exits: 50, mmioExits: 5, ioExits: 1, haltExits: 1, irqInjections: 1 }, counts),
        { exits: 100, mmioExits: 10, ioExits: 3, haltExits: 5, irqInjections: 7 });
      assert.equal(kvmExitDelta(undefined, counts), undefined);
      assert.equal(kvmExitCounts(99, root), undefined);
      assert.equal(kvmExitCounts(123, join(root, "no-debugfs")), undefined);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("threadTicks reads every thread of a process: one that used 300 ms of CPU shows it; a missing process has none", { timeout: 30_000 }, async () => {
    // The child spins until it has used 300 ms of CPU by its own count, says so, and waits.
    const child = spawn(process.execPath, ["-e",
      "while (process.cpuUsage().user < 300000); process.stdout.write('spun\\n'); setInterval(() => {}, 1000);"], { stdio: ["ignore", "pipe", "inherit"] });
    try {
      await once(child.stdout!, "data");
      const ticks = threadTicks(child.pid);
      assert.ok(ticks.size >= 2, `a node process has several threads, saw ${ticks.size}`);
      const cpu = threadCpuDelta(new Map(), ticks);
      assert.equal(cpu.guestMs, 0);
      assert.ok(cpu.otherMs.reduce((a, b) => a + b, 0) >= 250, `CPU seen: ${cpu.otherMs.join(", ")} ms`);
      // Its own process's /proc io and status files are readable: every thread has its counts.
      for (const [tid, t] of ticks) assert.ok(t.calls && t.calls.reads >= 0 && t.calls.writes >= 0 && t.calls.sleeps >= 0, `thread ${tid}: ${JSON.stringify(t)}`);
      // The main thread wrote "spun": one write at least.
      assert.ok(ticks.get(String(child.pid))!.calls!.writes >= 1);
    } finally {
      child.kill("SIGKILL");
    }
    assert.equal(threadTicks(undefined).size, 0);
    assert.equal(threadTicks(2 ** 22 + 1).size, 0);
  });
});
