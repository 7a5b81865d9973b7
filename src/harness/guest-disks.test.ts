import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { buildExt4Image } from "./guest-disks.js";

const e2fsprogs = spawnSync("debugfs", ["-V"]).status === 0 && spawnSync("mkfs.ext4", ["-V"]).status === 0;
const work = mkdtempSync(join(tmpdir(), "flint-guest-disks-"));
after(() => rmSync(work, { recursive: true, force: true }));

test("an ext4 image holds the files given, under the label given", { skip: !e2fsprogs && "needs e2fsprogs" }, () => {
  const image = join(work, "data.ext4");
  buildExt4Image(image, join(work, "files"), { "a.txt": "first\n", "b.txt": "second\n" }, { label: "flinttest", size: "4M" });
  const cat = (name: string) => execFileSync("debugfs", ["-R", `cat /${name}`, image], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  assert.equal(cat("a.txt"), "first\n");
  assert.equal(cat("b.txt"), "second\n");
  assert.equal(execFileSync("e2label", [image], { encoding: "utf8" }).trim(), "flinttest");
});
