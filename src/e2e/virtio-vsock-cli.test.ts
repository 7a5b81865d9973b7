/** `flint run --vsock cid=N,uds=PATH` as a user meets it: bad values are one line and exit code 2, before any guest runs. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { DeviceArgError, MAX_UDS_PATH_BYTES, virtioDevicesFromFlags } from "../cli/devices.js";
import { sys } from "../sys/native.js";
import { listenUnix } from "../devices/virtio/vsock/index.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "flint-vsock-cli-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function expectUserError(args: string[], pattern: RegExp): void {
  const r = spawnSync(process.execPath, [CLI, "run", "--kernel", join(dir, "no-kernel"), ...args], { encoding: "utf8", timeout: 30_000 });
  assert.equal(r.status, 2, `exit code for ${args.join(" ")}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line expected, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
}

const flags = (...vsock: string[]) => () => virtioDevicesFromFlags({ vsock });
const argError = (pattern: RegExp) => (e: unknown) => e instanceof DeviceArgError && pattern.test(e.message);

test("--vsock cid=N,uds=PATH becomes a vsock device", () => {
  const uds = join(dir, "ok.sock");
  assert.deepEqual(virtioDevicesFromFlags({ vsock: [`cid=3,uds=${uds}`, `uds=${uds}2,cid=4294967294`] }), [
    { kind: "vsock", options: { cid: 3, uds } },
    { kind: "vsock", options: { cid: 4294967294, uds: `${uds}2` } },
  ]);
});

test("reserved or too large cids, duplicates and malformed values are refused", () => {
  const uds = join(dir, "a.sock");
  assert.throws(flags(`cid=2,uds=${uds}`), argError(/cid 2 is reserved/));
  assert.throws(flags(`cid=4294967295,uds=${uds}`), argError(/cid 4294967295 is reserved or too large/));
  assert.throws(flags(`cid=-1,uds=${uds}`), argError(/cid '-1' is not a whole number/));
  assert.throws(flags(`cid=3`), argError(/needs cid=N and uds=PATH/));
  assert.throws(flags(`cid=3,uds=${uds},port=9`), argError(/unknown option 'port'/));
  assert.throws(flags(`cid=3,uds=${uds}`, `cid=3,uds=${uds}x`), argError(/cid 3 is given to more than one --vsock/));
  assert.throws(flags(`cid=3,uds=${uds}`, `cid=4,uds=${uds}`), argError(/given to more than one --vsock/));
});

test("socket paths that cannot be bound are refused: missing directory, too long, not a socket, in use", () => {
  assert.throws(flags(`cid=3,uds=${join(dir, "missing", "v.sock")}`), argError(/directory '.*missing' does not exist/));
  const long = join(dir, "x".repeat(MAX_UDS_PATH_BYTES));
  assert.throws(flags(`cid=3,uds=${long}`), argError(/more than a Unix socket address holds/));
  const file = join(dir, "file");
  writeFileSync(file, "");
  assert.throws(flags(`cid=3,uds=${file}`), argError(/exists and is not a socket/));
  mkdirSync(join(dir, "sub"), { recursive: true });
  const busy = join(dir, "sub", "busy.sock");
  const fd = listenUnix(busy);
  try {
    assert.throws(flags(`cid=3,uds=${busy}`), argError(/in use by a listening socket/));
  } finally {
    sys.close(fd);
  }
  // Nobody listens any more: a stale socket file is fine (the device replaces it).
  assert.equal(virtioDevicesFromFlags({ vsock: [`cid=3,uds=${busy}`] }).length, 1);
});

test("the CLI reports each as one line with exit code 2 before the guest starts", () => {
  expectUserError(["--vsock", `cid=1,uds=${join(dir, "v.sock")}`], /^flint: Cannot attach vsock: cid 1 is reserved/);
  expectUserError(["--vsock", `cid=3,uds=${join(dir, "v.sock")}`, "--vsock", `cid=3,uds=${join(dir, "w.sock")}`], /cid 3 is given to more than one --vsock/);
  expectUserError(["--vsock", `cid=3,uds=${join(dir, "nodir", "v.sock")}`], /directory .* does not exist/);
  expectUserError(["--vsock", `cid=3,uds=${join(dir, "y".repeat(200))}`], /more than a Unix socket address holds/);
});
