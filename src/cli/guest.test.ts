import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { progressDisplay } from "./guest.js";

/** stderr redirected to a file or a pipe: not a terminal. */
function pipeLike(): Writable & { isTTY: false; text: () => string } {
  let text = "";
  const w = new Writable({ write: (c: Buffer, _e, cb) => ((text += c.toString()), cb()) }) as Writable & { isTTY: false; text: () => string };
  w.isTTY = false;
  w.text = () => text;
  return w;
}

test("flint build-kernel in a log (stderr not a terminal) prints a line per phase and per 10 % of the compile", async () => {
  const err = pipeLike();
  const display = progressDisplay(err);
  display.onProgress({ phase: "configure", message: "make tinyconfig" });
  for (let i = 0; i <= 2000; i++) display.onProgress({ phase: "compile", message: `CC f${i}.o`, done: i, total: 2000 });
  display.onProgress({ phase: "done", message: "Kernel abc built" });
  display.stop();
  await new Promise((resolve) => setImmediate(resolve));
  const lines = err.text().split("\n").filter(Boolean);
  assert.equal(lines[0], "flint: make tinyconfig");
  assert.equal(lines[1], "flint: CC f0.o");
  assert.deepEqual(lines.slice(2, 12).map((l) => l.split(" ")[2]), ["10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "100%"]);
  assert.equal(lines[2], "flint: compile 10% (200/2000) CC f200.o");
  assert.equal(lines.at(-1), "flint: Kernel abc built");
  assert.equal(lines.length, 13);
  assert.ok(!err.text().includes("\r") && !err.text().includes("\u001b["), "no bar, no cursor control in a log");
});
