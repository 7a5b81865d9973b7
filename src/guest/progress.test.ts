import assert from "node:assert/strict";
import { test } from "node:test";
import { lineProgress, type GuestProgress } from "./progress.js";

/** A stream that is not a terminal, as in CI logs or `| tee`: it keeps what is written. */
function fakeLog(): { isTTY: false; lines: () => string[]; write: (text: string) => boolean } {
  let text = "";
  return { isTTY: false, lines: () => text.split("\n").slice(0, -1), write: (t) => ((text += t), true) };
}

/** What kernel-build.ts reports for a build of `steps` make lines (the estimate is `total`). */
function buildReports(steps: number, total: number): GuestProgress[] {
  const reports: GuestProgress[] = [
    { phase: "configure", message: "make tinyconfig" },
    { phase: "configure", message: "make olddefconfig" },
    { phase: "compile", message: "make -j2 bzImage", done: 0, total },
  ];
  for (let i = 1; i <= steps; i++) reports.push({ phase: "compile", message: `CC file${i}.o`, done: i, total: Math.max(total, i) });
  reports.push({ phase: "done", message: "Kernel built" });
  return reports;
}

test("in a log, a kernel build shows one line per phase and one per 10 % of the compile", () => {
  const log = fakeLog();
  const report = lineProgress(log, "[prepare] ");
  for (const p of buildReports(1850, 1850)) report(p);
  const lines = log.lines();
  assert.deepEqual(lines.slice(0, 2), ["[prepare] make tinyconfig", "[prepare] make -j2 bzImage"]);
  const percents = lines.filter((l) => l.includes("% (")).map((l) => /compile (\d+)% \((\d+)\/1850\) CC file\2\.o$/.exec(l)?.[1]);
  assert.deepEqual(percents, ["10", "20", "30", "40", "50", "60", "70", "80", "90", "100"]);
  assert.equal(lines.at(-1), "[prepare] Kernel built");
  assert.equal(lines.length, 13, "1850 reports became 13 lines");
  assert.ok(lines.every((l) => l.startsWith("[prepare] ")));
});

test("a build longer than its estimate stops at 100 % without repeating lines; a shorter one ends with the phase", () => {
  const longer = fakeLog();
  const report = lineProgress(longer);
  for (const p of buildReports(3000, 1000)) report(p);
  assert.equal(longer.lines().filter((l) => l.startsWith("compile 100% ")).length, 1);
  assert.equal(longer.lines().filter((l) => l.includes("% (")).length, 10);

  const shorter = fakeLog();
  const r2 = lineProgress(shorter);
  for (const p of buildReports(450, 1000)) r2(p);
  assert.deepEqual(shorter.lines().filter((l) => l.includes("% (")).map((l) => l.split(" ")[1]), ["10%", "20%", "30%", "40%"]);
  assert.equal(shorter.lines().at(-1), "Kernel built");
});

test("each phase starts its own count, and a phase without a total is one line", () => {
  const log = fakeLog();
  const report = lineProgress(log);
  report({ phase: "extract", message: "Extracting linux.tar.xz", done: 0, total: 100 });
  report({ phase: "extract", message: "f50", done: 50, total: 100 });
  report({ phase: "wait", message: "Waiting for another process" });
  report({ phase: "wait", message: "Waiting for another process" });
  report({ phase: "compile", message: "CC a.o", done: 10, total: 100 });
  assert.deepEqual(log.lines(), [
    "Extracting linux.tar.xz", "extract 50% (50/100) f50", "Waiting for another process", "CC a.o", "compile 10% (10/100) CC a.o",
  ]);
});
