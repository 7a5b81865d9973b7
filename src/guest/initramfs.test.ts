import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import {
  buildInitramfs, defaultInit, GUEST_REPORT_PREFIX, INITRAMFS_MODULE_ORDER, InitramfsError, parseGuestReport,
} from "./initramfs.js";

/** `cpio -itv` of a gzip-compressed initramfs, one line per entry. */
function listing(image: Buffer): string[] {
  return execFileSync("cpio", ["-itv", "--quiet"], { input: gunzipSync(image), encoding: "utf8" }).trim().split("\n");
}

/** Extracts the image into a fresh directory and returns it. */
function extract(image: Buffer): string {
  const dir = mkdtempSync(join(tmpdir(), "flint-initramfs-"));
  execFileSync("cpio", ["-idm", "--quiet", "--no-absolute-filenames"], { input: gunzipSync(image), cwd: dir });
  return dir;
}

describe("buildInitramfs", () => {
  it("contains busybox, an executable /init, applet links and the early device nodes", () => {
    const lines = listing(buildInitramfs({ init: defaultInit() }));
    const find = (suffix: string) => lines.find((line) => line.endsWith(` ${suffix}`));
    assert.match(find("init") ?? "", /^-rwxr-xr-x/);
    assert.match(find("bin/busybox") ?? "", /^-rwxr-xr-x/);
    assert.match(find("bin/sh -> /bin/busybox") ?? "", /^lrwxrwxrwx/);
    assert.ok(find("sbin/poweroff -> /bin/busybox"), "poweroff applet");
    assert.ok(find("bin/cttyhack -> /bin/busybox") ?? find("sbin/cttyhack -> /bin/busybox"), "cttyhack applet");
    assert.match(find("dev/console") ?? "", /^crw------- .* 5,\s+1 /);
    assert.match(find("dev/mem") ?? "", /^crw-r----- .* 1,\s+1 /);
    assert.match(find("tmp") ?? "", /^drwxrwxrwt/);
  });

  it("runs the default /init's report through the real busybox shell up to the poweroff", () => {
    const dir = extract(buildInitramfs({ init: defaultInit() }));
    try {
      // Replay the script on the host with mount/devmem/poweroff stubbed out: the report lines must come out.
      const script = readFileSync(join(dir, "init"), "utf8")
        .replace(/^mount .*$/gm, ":")
        .replace(/^devmem .*$/gm, ":")
        .replace(/^exec <\/dev\/null .*$/m, ":")
        .replace(/^poweroff -f$/m, "echo POWEROFF");
      const output = execFileSync(join(dir, "bin/busybox"), ["sh", "-c", script], { encoding: "utf8" });
      const report = parseGuestReport(output);
      assert.equal(report.booted, true);
      assert.ok(report.nproc !== undefined && report.nproc >= 1);
      assert.ok(report.memTotalKib !== undefined && report.memTotalKib > 1024);
      assert.ok(report.uptimeSec !== undefined && report.uptimeSec > 0);
      assert.match(output, /POWEROFF\n$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("adds extra files with parent directories and decompresses .ko.xz modules in the given order", () => {
    const work = mkdtempSync(join(tmpdir(), "flint-initramfs-src-"));
    try {
      writeFileSync(join(work, "b.ko"), "module b");
      writeFileSync(join(work, "a.ko"), "module a");
      execFileSync("xz", ["-k", join(work, "a.ko")]);
      writeFileSync(join(work, "tool"), "#!/bin/sh\n");
      const image = buildInitramfs({
        init: "#!/bin/sh\n",
        files: [
          { path: "/etc/flint/motd", data: "hello\n" },
          { path: "/usr/local/bin/tool", hostPath: join(work, "tool"), mode: 0o750 },
        ],
        modules: [join(work, "b.ko"), join(work, "a.ko.xz")],
      });
      const dir = extract(image);
      try {
        assert.equal(readFileSync(join(dir, "etc/flint/motd"), "utf8"), "hello\n");
        assert.equal(readFileSync(join(dir, "lib/modules/a.ko"), "utf8"), "module a");
        assert.equal(readFileSync(join(dir, INITRAMFS_MODULE_ORDER), "utf8"), "b.ko\na.ko\n");
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      assert.ok(listing(image).some((line) => /^-rwxr-x--- .* usr\/local\/bin\/tool$/.test(line)));
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });

  it("is reproducible: the same inputs give the same bytes", () => {
    const init = defaultInit({ finish: "reboot" });
    assert.deepEqual(buildInitramfs({ init }), buildInitramfs({ init }));
  });

  it("refuses a dynamically linked busybox and a missing module", () => {
    assert.throws(
      () => buildInitramfs({ init: "", busybox: "/bin/ls" }),
      (error: unknown) => error instanceof InitramfsError && error.code === "EBUSYBOX" && /busybox-static/.test(error.message),
    );
    assert.throws(
      () => buildInitramfs({ init: "", modules: ["/nonexistent/x.ko"] }),
      (error: unknown) => error instanceof InitramfsError && error.code === "EMODULE",
    );
  });
});

describe("defaultInit", () => {
  it("drains the console, then ends with the requested action", () => {
    const drain = "exec </dev/null >/dev/null 2>&1\n";
    assert.ok(defaultInit().endsWith(`\n${drain}poweroff -f\n`));
    assert.ok(defaultInit({ finish: "reboot" }).endsWith(`\n${drain}reboot -f\n`));
    assert.ok(defaultInit({ finish: "shell" }).endsWith(`\nsetsid cttyhack sh\n${drain}poweroff -f\n`));
  });

  it("writes the boot-timer byte at 0xd0000000 and ignores failures", () => {
    assert.match(defaultInit(), /^devmem 0xd0000000 8 1 2>\/dev\/null$/m);
  });
});

describe("parseGuestReport", () => {
  it("reads the report from a serial log with carriage returns and kernel noise", () => {
    const log = [
      "[    0.500000] Run /init as init process\r",
      `${GUEST_REPORT_PREFIX} booted\r`,
      `${GUEST_REPORT_PREFIX} nproc=4\r`,
      `${GUEST_REPORT_PREFIX} MemTotal=246712 kB\r`,
      `${GUEST_REPORT_PREFIX} uptime=0.61 s\r`,
      "[    0.700000] reboot: Power down\r",
    ].join("\n");
    assert.deepEqual(parseGuestReport(log), { booted: true, nproc: 4, memTotalKib: 246712, uptimeSec: 0.61 });
  });

  it("reports not booted when the line is absent", () => {
    assert.deepEqual(parseGuestReport("Kernel panic - not syncing"), { booted: false });
  });
});
