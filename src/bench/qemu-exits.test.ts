import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import { EXIT_LOOP_END_BAD_CMDLINE, buildExitLoopGuest } from "../guest/programs/exit-loop.js";
import { median, runTimed } from "./process.js";
import { QEMU_MACHINE, parseSmapsRssKib, parseStatusKib, runQemuExits } from "./qemu-exits.js";


describe("runQemuExits", () => {
  it("derives an exit rate and QEMU's memory overhead", async () => {
    const result = await runQemuExits({ mode: "mmio", count: 20_000, runs: 1 });
    assert.ok(result.exitsPerSecond > 1000, `${result.exitsPerSecond} exits/s`);
    assert.ok(result.guestRamTouchedKib > 0 && result.guestRamTouchedKib < 64 * 1024);
    assert.ok(result.memoryOverheadKib > 1024 && result.memoryOverheadKib < result.peakRssKib);
  });

  it("refuses a count of zero, which leaves nothing to difference", async () => {
    await assert.rejects(runQemuExits({ mode: "pio", count: 0 }), (e: BenchError) => e.code === "EBENCHARG");
  });
});

describe("the exit-loop guest under QEMU", () => {
  const exitStatusOf = async (cmdline: string): Promise<number | null> => {
    const args = ["-accel", "kvm", "-M", QEMU_MACHINE, "-nodefaults", "-no-user-config", "-nographic", "-m", "16",
      "-kernel", buildExitLoopGuest(), "-append", cmdline, "-device", "isa-debug-exit,iobase=0xf4,iosize=4"];
    return (await runTimed("qemu-system-x86_64", args, { timeoutMs: 60_000 })).exitCode;
  };
  const ok = 1;
  const badCmdline = 2 * EXIT_LOOP_END_BAD_CMDLINE + 1;

  it("ignores unknown words and extra spaces", async () => {
    assert.equal(await exitStatusOf("  console=ttyS0 mode=pio  count=3 quiet"), ok);
  });

  it("takes the hello and halt words (the end marker still ends it), but not longer words that start with them", async () => {
    assert.equal(await exitStatusOf("mode=pio count=3 hello halt"), ok);
    assert.equal(await exitStatusOf("halt mode=mmio hello count=0"), ok);
    for (const cmdline of ["mode=pio count=3 hellox", "mode=pio count=3 halted", "mode=pio count=3 hello=1"]) {
      assert.equal(await exitStatusOf(cmdline), badCmdline, cmdline);
    }
  });

  it("reports a bad command line on the end marker", async () => {
    for (const cmdline of ["mode=pio", "count=3", "mode=disk count=3", "mode=pio count=", "mode=pio count=3x", "mode=mmio count=2147483648"]) {
      assert.equal(await exitStatusOf(cmdline), badCmdline, cmdline);
    }
  });
});

describe("proc parsers", () => {
  it("reads a KiB field from /proc/<pid>/status", () => {
    assert.equal(parseStatusKib("Name:\tqemu\nVmHWM:\t   39080 kB\nVmRSS:\t 36360 kB\n", "VmHWM"), 39080);
    assert.throws(() => parseStatusKib("Name:\tqemu\n", "VmHWM"), BenchError);
  });

  it("finds the anonymous mapping of the guest RAM size in smaps", () => {
    const smaps = [
      "55d3a6d1e000-55d3a76eb000 rw-p 00000000 00:00 0                          [heap]",
      "Size:              65536 kB",
      "Rss:                4264 kB",
      "7f1c8be00000-7f1c8fe00000 rw-p 00000000 00:00 0 ",
      "Size:              65536 kB",
      "Rss:                2048 kB",
      "7f1c97c00000-7f1c97cc5000 r--p 00000000 fe:00 5595148                    /usr/lib/libcrypto.so.3",
      "Size:              65536 kB",
      "Rss:                 788 kB",
    ].join("\n");
    assert.equal(parseSmapsRssKib(smaps, 65536), 2048);
    assert.throws(() => parseSmapsRssKib(smaps, 1024), BenchError);
  });
});

describe("median", () => {
  it("takes the middle value, or the mean of the middle two", () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.throws(() => median([]), RangeError);
  });
});
