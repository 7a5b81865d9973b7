import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "flint-cli-rebase-"));
after(() => rmSync(dir, { recursive: true, force: true }));

test("flint snapshot rebase --base --diff copies the diff's data pages onto the base and leaves the rest", () => {
  const base = join(dir, "base.mem"), diff = join(dir, "diff.mem");
  writeFileSync(base, Buffer.alloc(16 * 4096, 0xaa));
  // A sparse diff: page 3 zeroed (data, not a hole), page 9 new bytes.
  writeFileSync(diff, "");
  const fd = openSync(diff, "r+");
  writeSync(fd, Buffer.alloc(4096, 0), 0, 4096, 3 * 4096);
  writeSync(fd, Buffer.alloc(4096, 0x42), 0, 4096, 9 * 4096);
  ftruncateSync(fd, 16 * 4096);
  closeSync(fd);
  const r = spawnSync(process.execPath, [CLI, "snapshot", "rebase", "--base", base, "--diff", diff], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /rebased .* 8192 bytes in 2 run\(s\)/);
  const out = readFileSync(base);
  for (let p = 0; p < 16; p++) {
    const want = p === 3 ? 0 : p === 9 ? 0x42 : 0xaa;
    assert.ok(out.subarray(p * 4096, (p + 1) * 4096).every((b) => b === want), `page ${p}`);
  }
  const bad = spawnSync(process.execPath, [CLI, "snapshot", "rebase", "--base", base, "--diff", join(dir, "none.mem")], { encoding: "utf8" });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /^flint: Cannot rebase .*none\.mem.*ENOENT/);
});

test("flint uffd-handler refuses a missing or empty memory file, a socket path already taken, and missing flags: one line, exit 2", () => {
  const sock = join(dir, "h.sock");
  const empty = join(dir, "empty.mem"), mem = join(dir, "one.mem");
  writeFileSync(empty, "");
  writeFileSync(mem, Buffer.alloc(4096));
  writeFileSync(join(dir, "taken.sock"), "");
  for (const [args, why] of [
    [["--socket", sock, "--mem-file", join(dir, "none.mem")], /^flint: Cannot open memory file '.*none\.mem': ENOENT$/],
    [["--socket", sock, "--mem-file", empty], /^flint: Cannot serve '.*empty\.mem': not a regular file with data$/],
    [["--socket", join(dir, "taken.sock"), "--mem-file", mem], /^flint: Cannot listen on '.*taken\.sock': EADDRINUSE$/],
    [["--mem-file", mem], /--socket/],
  ] as const) {
    const r = spawnSync(process.execPath, [CLI, "uffd-handler", ...args], { encoding: "utf8" });
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr.trim(), why);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});
