import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CpioError, type CpioEntry, writeCpio } from "./cpio.js";

const entries: CpioEntry[] = [
  { type: "directory", path: "bin" },
  { type: "directory", path: "/dev", mode: 0o700 },
  { type: "file", path: "bin/tool", data: "#!/bin/sh\necho hi\n", mode: 0o755 },
  { type: "file", path: "a", data: new Uint8Array([1, 2, 3]) },
  { type: "file", path: "empty", data: "" },
  { type: "symlink", path: "bin/sh", target: "busybox" },
  { type: "device", path: "dev/console", kind: "char", major: 5, minor: 1 },
  { type: "device", path: "dev/vda", kind: "block", major: 254, minor: 0, mode: 0o660 },
];

/** Runs Debian's cpio on the archive with the given arguments. */
function cpio(archive: Buffer, args: string[], cwd?: string): string {
  return execFileSync("cpio", args, { input: archive, cwd, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] });
}

describe("writeCpio", () => {
  it("produces an archive that GNU cpio lists with the right types, modes and names", () => {
    const listing = cpio(writeCpio(entries), ["-itv", "--quiet"]).trim().split("\n");
    assert.equal(listing.length, entries.length);
    // "drwxr-xr-x   2 root  root  0 Jan  1  1970 name": the name follows the date.
    const nameOf = (line: string) => / [A-Z][a-z]{2} +\d+ +(?:\d{4}|\d\d:\d\d) (.*)$/.exec(line)?.[1] ?? line;
    const byName = new Map(listing.map((line) => [nameOf(line), line]));
    assert.match(byName.get("bin")!, /^drwxr-xr-x/);
    assert.match(byName.get("dev")!, /^drwx------/);
    assert.match(byName.get("bin/tool")!, /^-rwxr-xr-x .* 18 /);
    assert.match(byName.get("a")!, /^-rw-r--r-- .* 3 /);
    assert.match(byName.get("bin/sh -> busybox")!, /^lrwxrwxrwx/);
    assert.match(byName.get("dev/console")!, /^crw------- .* 5,\s+1 /);
    assert.match(byName.get("dev/vda")!, /^brw-rw---- .* 254,\s+0 /);
  });

  it("round-trips file contents, symlink targets and device numbers through cpio -i", () => {
    const dir = mkdtempSync(join(tmpdir(), "flint-cpio-"));
    try {
      cpio(writeCpio(entries), ["-idm", "--quiet", "--no-absolute-filenames"], dir);
      assert.equal(readFileSync(join(dir, "bin/tool"), "utf8"), "#!/bin/sh\necho hi\n");
      assert.deepEqual([...readFileSync(join(dir, "a"))], [1, 2, 3]);
      assert.equal(readFileSync(join(dir, "empty")).length, 0);
      assert.equal(readlinkSync(join(dir, "bin/sh")), "busybox");
      assert.equal(lstatSync(join(dir, "bin/tool")).mode & 0o7777, 0o755);
      if (process.getuid?.() === 0) {
        const console = lstatSync(join(dir, "dev/console"));
        assert.ok(console.isCharacterDevice());
        // Linux's new_encode_dev for small numbers: major << 8 | minor.
        assert.equal(console.rdev, (5 << 8) | 1);
        assert.ok(lstatSync(join(dir, "dev/vda")).isBlockDevice());
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("pads every header+name and every data block to 4 bytes and ends with TRAILER!!!", () => {
    const names = ["x", "xy", "xyz", "wxyz", "vwxyz"];
    const archive = writeCpio(names.map((name, i) => ({ type: "file", path: name, data: "d".repeat(i) })));
    assert.equal(archive.length % 4, 0);
    const tail = archive.subarray(archive.length - 128).toString("latin1");
    assert.match(tail, /070701[0-9a-f]{104}TRAILER!!!\0/);
    assert.deepEqual(cpio(archive, ["-it", "--quiet"]).trim().split("\n"), names);
  });

  it("rejects paths that climb out of the archive root and duplicate names", () => {
    assert.throws(() => writeCpio([{ type: "file", path: "../etc/passwd", data: "" }]), CpioError);
    assert.throws(
      () => writeCpio([{ type: "directory", path: "d" }, { type: "directory", path: "/d" }]),
      (error: unknown) => error instanceof CpioError && error.code === "ECPIOENTRY",
    );
  });

  it("rejects permission bits outside 0..0o7777", () => {
    assert.throws(() => writeCpio([{ type: "file", path: "f", data: "", mode: 0o100644 }]), CpioError);
  });
});
