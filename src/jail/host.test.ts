import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { charDeviceNumber, dependencyClosure, lookupName, parseLdd, resolveExecFile, sharedObjects } from "./host.js";
import { JailError } from "./options.js";

const LDD = `	linux-vdso.so.1 (0x00007ffd5b1f0000)
	libdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f01cf61a000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f01cf117000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f01cf633000)
`;
const ENTRY = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

describe("jail host facts", () => {
  it("reads ldd's output: the interpreter first, then the libraries; the vDSO left out; a missing library refused", () => {
    assert.deepEqual(parseLdd(LDD, "node"), ["/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libdl.so.2", "/lib/x86_64-linux-gnu/libc.so.6"]);
    assert.throws(() => parseLdd("\tlibfoo.so.1 => not found\n", "node"), (e: unknown) => e instanceof JailError && /library libfoo\.so\.1 is not found/.test(e.message));
  });

  it("lists this Node's shared objects, libc among them", () => {
    const libs = sharedObjects(process.execPath);
    assert.ok(libs.some((l) => /\/libc\.so/.test(l)), libs.join(" "));
    assert.ok(libs.every((l) => l.startsWith("/")));
  });

  it("knows a character device's number and says undefined for a file or nothing", () => {
    assert.equal(typeof charDeviceNumber("/dev/null"), "number");
    assert.equal(charDeviceNumber("/etc/passwd"), undefined);
    assert.equal(charDeviceNumber("/nonexistent/dev"), undefined);
  });

  it("looks names up in passwd/group files", () => {
    const dir = mkdtempSync(join(tmpdir(), "flint-jail-host-"));
    try {
      writeFileSync(join(dir, "passwd"), "root:x:0:0::/root:/bin/sh\nkvmuser:x:1234:99::/:/bin/false\n");
      assert.equal(lookupName(join(dir, "passwd"), "kvmuser"), 1234);
      assert.equal(lookupName(join(dir, "passwd"), "root"), 0);
      assert.equal(lookupName(join(dir, "passwd"), "kvm"), undefined);
      assert.equal(lookupName(join(dir, "missing"), "root"), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("finds a package's dependencies in a flat node_modules", () => {
    const dir = mkdtempSync(join(tmpdir(), "flint-jail-deps-"));
    try {
      const pkg = (name: string, deps: Record<string, string>) => {
        mkdirSync(join(dir, "node_modules", name), { recursive: true });
        writeFileSync(join(dir, "node_modules", name, "package.json"), JSON.stringify({ name, dependencies: deps }));
      };
      pkg("pino", { "sonic-boom": "1", "@pinojs/redact": "1" });
      pkg("sonic-boom", { "atomic-sleep": "1" });
      pkg("atomic-sleep", {});
      pkg("@pinojs/redact", { pino: "1" });
      pkg("unrelated", {});
      assert.deepEqual(dependencyClosure(dir, ["pino"]), ["@pinojs/redact", "atomic-sleep", "pino", "sonic-boom"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("--exec-file: flint's own entry by default (named flint), a link's name as given, anything else refused", () => {
    const own = resolveExecFile(undefined, ENTRY);
    assert.equal(own.name, "flint");
    assert.equal(own.entry, ENTRY);
    const dir = mkdtempSync(join(tmpdir(), "flint-jail-exec-"));
    try {
      symlinkSync(ENTRY, join(dir, "firecracker"));
      assert.equal(resolveExecFile(join(dir, "firecracker"), ENTRY).name, "firecracker");
      writeFileSync(join(dir, "other.js"), "");
      const refused = (path: string, msg: RegExp) => assert.throws(() => resolveExecFile(path, ENTRY), (e: unknown) => e instanceof JailError && e.code === "EJAILARG" && msg.test(e.message), path);
      refused(join(dir, "other.js"), /is not flint's entry/);
      refused(join(dir, "missing"), /no such file/);
      refused(dir, /is not a file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
