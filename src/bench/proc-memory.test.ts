import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import { PeakSampler, anonKib, guestRamResidency, parseProcStatus, readProcStatus } from "./proc-memory.js";

const STATUS = [
  "Name:\tnode",
  "VmPeak:\t 4716940 kB",
  "VmHWM:\t  112788 kB",
  "VmRSS:\t  110000 kB",
  "RssAnon:\t   65112 kB",
  "RssFile:\t   44888 kB",
  "RssShmem:\t       0 kB",
  "Threads:\t18",
].join("\n");

describe("parseProcStatus", () => {
  it("reads the memory fields in KiB and the thread count", () => {
    assert.deepEqual(parseProcStatus(STATUS), {
      vmHwmKib: 112788, vmRssKib: 110000, rssAnonKib: 65112, rssFileKib: 44888, rssShmemKib: 0, threads: 18,
    });
  });

  it("does not take VmPeak for VmHWM, and fails on a missing field", () => {
    assert.equal(parseProcStatus(STATUS.replace("VmHWM:\t  112788 kB\n", "VmHWM:\t  1 kB\n")).vmHwmKib, 1);
    assert.throws(() => parseProcStatus(STATUS.replace(/^RssAnon.*$/m, "")), (e: BenchError) => e.code === "EBENCHRUN" && /RssAnon/.test(e.message));
  });

  it("counts shared memory as anonymous (a memfd guest RAM is there)", () => {
    assert.equal(anonKib(parseProcStatus(STATUS.replace("RssShmem:\t       0", "RssShmem:\t    1000"))), 66112);
  });

  it("treats a process that has released its memory (a zombie) as gone", async () => {
    // The shell's background child exits after the shell has become `sleep 30`, which never reaps it.
    const parent = spawn("sh", ["-c", "sleep 0.2 & echo $!; exec sleep 30"], { stdio: ["ignore", "pipe", "ignore"] });
    try {
      const [line] = (await once(parent.stdout!, "data")) as [Buffer];
      const zombie = Number(line.toString().trim());
      let state = "";
      for (let i = 0; i < 500 && !state.startsWith("Z"); i++) {
        await new Promise((r) => setTimeout(r, 10));
        state = /^State:\s+(.*)$/m.exec(readFileSync(`/proc/${zombie}/status`, "utf8"))?.[1] ?? "";
      }
      assert.match(state, /^Z/);
      assert.equal(readProcStatus(zombie), undefined);
    } finally {
      parent.kill("SIGKILL");
    }
  });

  it("reads this process's own status", () => {
    const s = readProcStatus("self")!;
    assert.ok(s.vmRssKib > 0 && s.vmHwmKib >= s.vmRssKib && s.threads >= 1);
    assert.equal(readProcStatus(2 ** 22 + 1), undefined); // above pid_max: never a process
  });
});

/** One smaps entry. */
const entry = (range: string, perms: string, name: string, sizeKib: number, rssKib: number) =>
  `${range} ${perms} 00000000 00:00 0 ${name}\nSize: ${String(sizeKib).padStart(16)} kB\nKernelPageSize:        4 kB\nRss: ${String(rssKib).padStart(17)} kB\nAnonymous: ${rssKib} kB\n`;

describe("guestRamResidency", () => {
  const smaps = [
    entry("00b72000-025fe000", "r-xp", "/usr/bin/node", 27184, 20536),
    entry("7f227403f000-7f2293e40000", "---p", "", 522244, 0), // a V8 reservation
    entry("7f2294021000-7f2298000000", "---p", "", 65404, 0), // a malloc arena's reserve
    entry("7f22a4000000-7f22a8021000", "rw-p", "", 65668, 72), // guest RAM merged with an arena's first 132 KiB
    entry("7f22b0000000-7f22b0400000", "rw-p", "", 4096, 4000), // the heap: too small to be guest RAM
    entry("7f22c0000000-7f22c4000000", "rw-s", "/memfd:other (deleted)", 65536, 9999), // shared: not ours
  ].join("");

  it("takes the resident part of writable private anonymous mappings as large as the guest RAM, and says how much larger they are", () => {
    assert.deepEqual(guestRamResidency(smaps, 65536), { rssKib: 72, mappings: 1, mergedExtraKib: 132 });
  });

  it("sums several VMs' guest RAM, a memfd one included", () => {
    const two = smaps + entry("7f22d0000000-7f22d4000000", "rw-p", "/memfd:guest (deleted)", 65536, 2048);
    assert.deepEqual(guestRamResidency(two, 65536, 2), { rssKib: 2120, mappings: 2, mergedExtraKib: 132 });
  });

  it("fails when fewer guest RAMs are mapped than VMs run", () => {
    assert.throws(() => guestRamResidency(smaps, 65536, 2), (e: BenchError) => e.code === "EBENCHRUN");
    assert.throws(() => guestRamResidency(smaps, 128 * 1024), BenchError);
  });
});

describe("PeakSampler", () => {
  it("keeps the largest anonymous figure it saw", () => {
    const sampler = new PeakSampler(process.pid, 1000);
    const now = anonKib(sampler.sample()!);
    assert.ok(sampler.stop() >= now && now > 0);
  });
});
