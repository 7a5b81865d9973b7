/**
 * End-to-end: real Linux talks to the host over flint's virtio-vsock, one
 * level down in the nested harness, driven through the CLI as a user would
 * (`flint run --vsock cid=3,uds=PATH`). The guest runs a tiny static AF_VSOCK
 * program (compiled here with gcc): it serves port 1234 and connects to the
 * host's port 5678. On the host side (inside the nested VM), a Node helper
 * listens at PATH_5678 and, once the guest listens, connects to PATH with
 * "CONNECT 1234": an echo is initiated from each side. Then a bulk run: the
 * guest sends BULK_BYTES to the host's port 5679, which echoes them back, and
 * checks every byte (credit is exercised both ways, many buffers over; the
 * Linux driver respects flint's credit, so nothing may be reset).
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { buildInitramfs, parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { compileGuestProgram } from "../harness/guest-program.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { initPrologue } from "../harness/guest-scripts.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const GUEST_PORT = 1234;
const HOST_PORT = 5678;
const BULK_PORT = 5679;
const BULK_BYTES = 2 * 1024 * 1024;

/** The guest's AF_VSOCK client/server: `serve PORT` (one connection) or `connect CID PORT MESSAGE`. */
const GUEST_C = `
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <linux/vm_sockets.h>

/* The bulk stream's byte at offset i. */
static unsigned char pattern(long i) { return (unsigned char)(i * 7 + (i >> 11)); }

static int readline(int fd, char *buf, int max) {
  int n = 0;
  while (n < max - 1) {
    int r = read(fd, buf + n, 1);
    if (r <= 0 || buf[n] == '\\n') break;
    n++;
  }
  buf[n] = 0;
  return n;
}

int main(int argc, char **argv) {
  struct sockaddr_vm sa = { .svm_family = AF_VSOCK };
  char line[256], out[300];
  int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (fd < 0) { perror("socket"); return 1; }
  if (argc == 3 && !strcmp(argv[1], "serve")) {
    sa.svm_cid = VMADDR_CID_ANY;
    sa.svm_port = atoi(argv[2]);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 1)) { perror("bind/listen"); return 1; }
    printf("flint-e2e: guest-listening=%s\\n", argv[2]);
    fflush(stdout);
    int c = accept(fd, NULL, NULL);
    if (c < 0) { perror("accept"); return 1; }
    readline(c, line, sizeof line);
    printf("flint-e2e: guest-served=%s\\n", line);
    int n = snprintf(out, sizeof out, "guest-echo:%s\\n", line);
    write(c, out, n);
    close(c);
    return 0;
  }
  if (argc == 5 && !strcmp(argv[1], "connect")) {
    sa.svm_cid = atoi(argv[2]);
    sa.svm_port = atoi(argv[3]);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("connect"); return 1; }
    int n = snprintf(out, sizeof out, "%s\\n", argv[4]);
    write(fd, out, n);
    readline(fd, line, sizeof line);
    printf("flint-e2e: guest-got=%s\\n", line);
    return 0;
  }
  if (argc == 5 && !strcmp(argv[1], "bulk")) {
    static unsigned char buf[65536];
    long n = atol(argv[4]), got = 0, bad = -1;
    sa.svm_cid = atoi(argv[2]);
    sa.svm_port = atoi(argv[3]);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("connect"); return 1; }
    pid_t pid = fork();
    if (pid == 0) {
      long sent = 0;
      while (sent < n) {
        int k = n - sent < (long)sizeof buf ? (int)(n - sent) : (int)sizeof buf;
        for (int i = 0; i < k; i++) buf[i] = pattern(sent + i);
        int w = write(fd, buf, k);
        if (w <= 0) { perror("bulk write"); _exit(1); }
        sent += w;
      }
      shutdown(fd, SHUT_WR);
      _exit(0);
    }
    while (got < n) {
      int r = read(fd, buf, sizeof buf);
      if (r <= 0) { if (r < 0) perror("bulk read"); break; }
      for (int i = 0; i < r; i++) if (bad < 0 && buf[i] != pattern(got + i)) bad = got + i;
      got += r;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int ok = got == n && bad < 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    printf("flint-e2e: guest-bulk=%s %ld\\n", ok ? "ok" : "bad", got);
    if (bad >= 0) printf("flint-e2e: guest-bulk-mismatch=%ld\\n", bad);
    return 0;
  }
  fprintf(stderr, "usage: vsock-e2e serve PORT | connect CID PORT MESSAGE | bulk CID PORT BYTES\\n");
  return 2;
}
`;

const GUEST_INIT = `${initPrologue()}echo "flint-guest: booted"
/bin/vsock-e2e serve ${GUEST_PORT} &
server=$!
/bin/vsock-e2e connect 2 ${HOST_PORT} "hello from guest" || echo "flint-e2e: guest-connect-failed"
wait $server
/bin/vsock-e2e bulk 2 ${BULK_PORT} ${BULK_BYTES} || echo "flint-e2e: guest-bulk=failed"
poweroff -f
`;

/** Runs inside the nested VM: the host's echo service, flint, and a host client once the guest listens. */
const HOST_HELPER = `
import { spawn } from "node:child_process";
import { appendFileSync } from "node:fs";
import net from "node:net";
const [cli, uds, report, ...flintArgs] = process.argv.slice(2);
// The helper's own lines go to a separate file: the guest's console shares stdout and would interleave.
const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
const server = net.createServer((s) => {
  let buf = "";
  s.on("data", (d) => {
    buf += d;
    if (buf.includes("\\n")) { say("host-served", buf.trim()); s.end("host-echo:" + buf); }
  });
});
server.listen(uds + "_${HOST_PORT}");
// The bulk service echoes everything back (pipe: it stops reading while the guest is slow to take the echo).
const bulk = net.createServer((s) => {
  let n = 0;
  s.on("data", (d) => { n += d.length; });
  s.on("close", () => say("host-bulk", n));
  s.on("error", (e) => say("host-bulk-error", e.code));
  s.pipe(s);
});
bulk.listen(uds + "_${BULK_PORT}");
const flint = spawn(process.execPath, [cli, ...flintArgs, "--vsock", "cid=3,uds=" + uds], { stdio: ["ignore", "pipe", "inherit"] });
let out = "", connected = false;
flint.stdout.on("data", (d) => {
  process.stdout.write(d);
  out += d;
  if (!connected && out.includes("guest-listening=")) {
    connected = true;
    const c = net.connect(uds);
    let got = "";
    c.on("data", (x) => { got += x; });
    c.on("connect", () => c.write("CONNECT ${GUEST_PORT}\\nhello from host\\n"));
    c.on("close", () => { say("host-got", JSON.stringify(got)); });
  }
});
flint.on("exit", (code) => { say("flint-exit", code); server.close(); bulk.close(); process.exit(0); });
`;

describe("real Linux talks to the host over flint's virtio-vsock (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-vsock-"));
  let out = "";
  let hostOut = "";
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    const program = compileGuestProgram(share, "vsock-e2e", GUEST_C);
    const initrd = join(share, "initramfs.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: GUEST_INIT, files: [{ path: "/bin/vsock-e2e", hostPath: program, mode: 0o755 }] }));
    const helper = join(share, "host-helper.mjs");
    writeFileSync(helper, HOST_HELPER);
    const outFile = join(share, "out.txt");
    const hostFile = join(share, "host.txt");
    const cmdline = "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init";
    // Unix sockets need a local file system: the nested VM's /dev/shm is a tmpfs (the share is 9p).
    const uds = "/dev/shm/flint-vsock/v.sock";
    const args = ["run", "--kernel", kernel.vmlinux, "--initrd", initrd, "--cmdline", cmdline, "--memory", "256", "--cpus", "2"];
    const command = `mkdir -p /dev/shm/flint-vsock && timeout 400 ${q(process.execPath)} ${q(helper)} ${q(CLI)} ${q(uds)} ${q(hostFile)} ${args.map(q).join(" ")} </dev/null >${q(outFile)} 2>&1`;
    const retryAfterTimeout = () => { for (const f of [outFile, hostFile]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 12 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [outFile] });
    out = readTextIfAny(outFile);
    hostOut = readTextIfAny(hostFile);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}\n${out.slice(-3000)}\n--- host helper ---\n${hostOut}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const line = (key: string) => e2eValue(key, out, hostOut);

  it("boots, and the guest powers off with flint exiting 0", () => {
    assert.ok(parseGuestReport(out).booted, why());
    assert.equal(line("flint-exit"), "0", why());
  });

  it("guest-initiated: the guest connects to host port 5678 (PATH_5678) and gets the echo", () => {
    assert.equal(line("host-served"), "hello from guest", why());
    assert.equal(line("guest-got"), "host-echo:hello from guest", why());
  });

  it("bulk: 2 MiB from the guest come back through the host's echo intact, and the connection is never reset", () => {
    assert.equal(line("guest-bulk"), `ok ${BULK_BYTES}`, why());
    assert.equal(line("host-bulk"), String(BULK_BYTES), why());
  });

  it("host-initiated: CONNECT 1234 on PATH reaches the guest's server, OK <port>, then the echo", () => {
    assert.equal(line("guest-served"), "hello from host", why());
    assert.match(line("host-got") ?? "", /^"OK \d+\\nguest-echo:hello from host\\n"$/, why());
  });
});
