import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { demoNestedCommand } from "./demo.js";

test("the demo's nested command leaves flint's stdout and stderr in the log and keeps its exit status", () => {
  const dir = mkdtempSync(join(tmpdir(), "flint-demo-test-"));
  try {
    const log = join(dir, "it's a log");
    const argv = ["sh", "-c", "echo \"out $1\"; echo err >&2; exit 3", "sh", "don't split me"];
    const r = spawnSync("sh", ["-c", demoNestedCommand(argv, log)], { encoding: "utf8" });
    assert.equal(r.status, 3);
    assert.equal(r.stdout, "");
    assert.equal(readFileSync(log, "utf8"), "out don't split me\nerr\n");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
