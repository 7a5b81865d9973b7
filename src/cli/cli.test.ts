/** The CLI as a user meets it: bad input gets one line on stderr and exit code 2, before any guest runs. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { buildExitLoopGuest, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import { makeElfKernel } from "../boot/testing/images.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "flint-cli-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function flint(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  return flintWith({}, [], ...args);
}

function flintWith(env: Record<string, string>, prefix: string[], ...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const cmd = [...prefix, process.execPath, CLI, ...args];
  const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: "utf8", timeout: 30_000, env: { ...process.env, ...env } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function expectUserError(args: string[], pattern: RegExp, env: Record<string, string> = {}, prefix: string[] = []): void {
  const r = flintWith(env, prefix, ...args);
  assert.equal(r.code, 2, `exit code for ${args.join(" ")}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line expected, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
}

// A valid (tiny) ELF kernel, so errors after the format check can be reached.
const tinyKernel = join(dir, "tiny-vmlinux");
writeFileSync(tinyKernel, makeElfKernel({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: new Uint8Array(4096) }] }));
const bigInitrd = join(dir, "big-initrd");
writeFileSync(bigInitrd, new Uint8Array(48 << 20));

const notAKernel = join(dir, "not-a-kernel");
writeFileSync(notAKernel, "this is text, not a kernel image\n".repeat(100));
chmodSync(dir, 0o755);
chmodSync(notAKernel, 0o644);

test("--version and --help succeed", () => {
  assert.match(flint("--version").stdout, /^\d+\.\d+\.\d+/);
  const help = flint("run", "--help");
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--kernel/);
});

test("a missing kernel file is a one-line error", () => {
  expectUserError(["run", "--kernel", join(dir, "missing")], /Cannot read kernel: .*missing.*no such file/);
});

test("a kernel path that is a directory is a one-line error", () => {
  expectUserError(["run", "--kernel", dir], /Cannot read kernel: .*not a regular file/);
});

test("a file that is neither ELF nor bzImage is a one-line error", () => {
  expectUserError(["run", "--kernel", notAKernel], /neither an ELF vmlinux nor a bzImage/);
});

test("memory too small or too large is a one-line error", () => {
  expectUserError(["run", "--kernel", notAKernel, "--memory", "1"], /--memory 1 MiB is too small/);
  expectUserError(["run", "--kernel", notAKernel, "--memory", "99999999"], /--memory 99999999 MiB is more than this host/);
  expectUserError(["run", "--kernel", notAKernel, "--memory", "lots"], /--memory must be a whole number/);
});

test("cpus out of range is a one-line error", () => {
  expectUserError(["run", "--kernel", notAKernel, "--cpus", "0"], /--cpus 0 is out of range/);
  expectUserError(["run", "--kernel", notAKernel, "--cpus", "100000"], /--cpus 100000 is out of range/);
});

test("a missing initrd is a one-line error", () => {
  expectUserError(["run", "--kernel", notAKernel, "--initrd", join(dir, "nope.cpio")], /Cannot read initrd/);
});

test("an unknown option is a one-line usage error", () => {
  expectUserError(["run", "--kernel", notAKernel, "--frobnicate"], /unknown option '--frobnicate'/);
});

test("no /dev/kvm is a one-line error", () => {
  expectUserError(["run", "--kernel", notAKernel], /Cannot use KVM: .* does not exist/, { FLINT_KVM_DEVICE: join(dir, "no-kvm") });
});

test("no permission on /dev/kvm is a one-line error", () => {
  // Run as 'nobody' (flint's tests run as root): /dev/kvm is root-only here.
  expectUserError(["run", "--kernel", notAKernel], /Cannot use KVM: no permission/, {}, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
});

test("an initrd that does not fit in guest memory is a one-line error", () => {
  expectUserError(["run", "--kernel", tinyKernel, "--initrd", bigInitrd, "--memory", "40"], /Cannot load initrd .*big-initrd.*only .* fit/);
});

test("a command line that is too long is a one-line error", () => {
  expectUserError(["run", "--kernel", tinyKernel, "--cmdline", "x".repeat(70000)], /Cannot set the kernel command line: it is 70000 bytes/);
});

test("bad drive arguments are one-line errors before the guest starts", () => {
  const image = join(dir, "disk.img");
  writeFileSync(image, new Uint8Array(1 << 20));
  chmodSync(image, 0o444);
  const odd = join(dir, "odd.img");
  writeFileSync(odd, new Uint8Array(1000));
  expectUserError(["run", "--kernel", tinyKernel, "--disk", join(dir, "nope.img")], /Cannot attach drive: file '.*nope.img' does not exist/);
  expectUserError(["run", "--kernel", tinyKernel, "--disk", dir], /Cannot attach drive: '.*' is neither a regular file nor a block device/);
  expectUserError(["run", "--kernel", tinyKernel, "--disk", odd], /not a whole number of 512-byte sectors/);
  expectUserError(["run", "--kernel", tinyKernel, "--disk", `${image},rx`], /unknown option 'rx'/);
  expectUserError(["run", "--kernel", tinyKernel, "--balloon", "512", "--memory", "256"], /--balloon 512 MiB is more than the guest's --memory 256 MiB/);
  // As 'nobody', a root-owned 0444 image can be read but not written.
  expectUserError(["run", "--kernel", tinyKernel, "--disk", image], /file '.*disk.img' is read-only \(attach it with ',ro'\)/, {}, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
});

test("bad network arguments are one-line errors before the guest starts", () => {
  expectUserError(["run", "--kernel", tinyKernel, "--net", "tap=flint-no-such-tap0,mac=06:00:ac:10:00:02"], /Cannot attach network: .*flint-no-such-tap0/);
  expectUserError(["run", "--kernel", tinyKernel, "--net", "tap=lo,mac=06:00:ac:10:00:02"], /Cannot attach network: .*lo/);
  expectUserError(["run", "--kernel", tinyKernel, "--net", "tap=tap0,mac=01:00:5e:00:00:01"], /Cannot attach network: .*/);
  expectUserError(["run", "--kernel", tinyKernel, "--net", "tap=tap0,mac=zz"], /Cannot attach network: .*/);
});

test("FLINT_DEBUG=1 prints the run's counters at exit as one JSON line", () => {
  const kernel = buildExitLoopGuest();
  const args = ["run", "--kernel", kernel, "--boot", "pvh", "--no-acpi", "--memory", "64", "--debug-exit", "--rng",
    "--cmdline", exitLoopCmdline({ mode: "pio", count: 1000 })];
  const quiet = flint(...args);
  assert.equal(quiet.code, 0, quiet.stderr);
  assert.doesNotMatch(quiet.stderr, /counters/, "nothing without FLINT_DEBUG");
  const r = flintWith({ FLINT_DEBUG: "1" }, [], ...args);
  assert.equal(r.code, 0, r.stderr);
  const line = r.stderr.split("\n").find((l) => l.startsWith("flint: counters "));
  assert.ok(line, r.stderr);
  const counters = JSON.parse(line.slice("flint: counters ".length)) as { vcpus: { ioExits: number }[]; virtio: { name: string }[] };
  assert.equal(counters.vcpus.length, 1);
  assert.ok(counters.vcpus[0]!.ioExits >= 1000, `the guest's 1000 port writes are counted: ${line}`);
  assert.match(counters.virtio[0]!.name, /^virtio-rng@/);
});
