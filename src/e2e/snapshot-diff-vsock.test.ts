/**
 * End-to-end: a Diff snapshot over a Full one, with real Linux one level
 * down in the nested harness, and a count that goes to a vsock peer on the
 * host as well as to the console and the disk (the snapshot issue's test).
 * flint A boots, with dirty-page tracking (machine-config
 * track_dirty_pages), a guest whose counter program writes tick i to the
 * console, to sector i of its disk past the page cache, and over vsock to a
 * host peer that acknowledges each number; an unacknowledged number is sent
 * again on a new connection, after the peer's greeting says the last number
 * it has (so the application sees each number once across a restore, where
 * flint resets the guest's vsock connections as Firecracker does). A is
 * paused and saved Full, runs on, is paused and saved Diff, and is killed
 * (SIGKILL). `flint snapshot rebase` merges the Diff's pages onto the Full
 * memory file, and flint B loads the Diff's state file with it in a new
 * process, its vsock at another socket path (vsock_override) whose listener
 * is the same peer. B must go on from the Diff's moment, not the Full one's:
 * A's console and B's count on with nothing missing or repeated; the disk
 * holds every tick at its sector; the peer received 1, 2, 3... each once,
 * past the Diff's moment. No kernel warning.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { explainClientE2e, runClientE2e } from "../harness/client-e2e.js";
import { API_CLIENT_JS, flintProcessesJs } from "../harness/api-client-script.js";
import { e2eValue } from "../harness/e2e-report.js";
import { E2E_GUEST_NET, initPrologue } from "../harness/guest-scripts.js";
import type { NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const NET = E2E_GUEST_NET;

/**
 * The guest's counter: `vsock-counter CID PORT DISK`. Tick i: a console
 * line, sector i of DISK (O_DIRECT), then i delivered to the host peer:
 * sent as "i\n" and acknowledged by the same line; any error on the way
 * (a reset connection after a restore) means a new connection, whose first
 * line from the peer, "last=L", says whether i already arrived.
 */
const COUNTER_C = `
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int readline(int fd, char *buf, int cap) {
  int n = 0;
  while (n < cap - 1) {
    if (read(fd, buf + n, 1) != 1) return -1;
    if (buf[n] == '\\n') break;
    n++;
  }
  buf[n] = 0;
  return n;
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = atoi(argv[1]), .svm_port = atoi(argv[2]) };
  int disk = open(argv[3], O_WRONLY | O_DIRECT);
  char *sector;
  if (disk < 0 || posix_memalign((void **)&sector, 4096, 512)) { perror("disk"); return 1; }
  int fd = -1;
  long last = 0;
  char line[64];
  for (long i = 1;; i++) {
    char up[32] = "?";
    FILE *f = fopen("/proc/uptime", "r");
    if (f) { if (fscanf(f, "%31s", up) != 1) strcpy(up, "?"); fclose(f); }
    printf("tick=%ld up=%s\\n", i, up);
    fflush(stdout);
    memset(sector, 0, 512);
    snprintf(sector, 512, "tick=%08ld", i);
    if (pwrite(disk, sector, 512, i * 512) != 512) { perror("pwrite"); return 1; }
    while (last < i) {
      if (fd < 0) {
        fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) || readline(fd, line, sizeof line) < 0 || strncmp(line, "last=", 5)) {
          if (fd >= 0) close(fd);
          fd = -1;
          usleep(100000);
          continue;
        }
        last = atol(line + 5);
        continue;
      }
      int n = snprintf(line, sizeof line, "%ld\\n", i);
      if (write(fd, line, n) != n || readline(fd, line, sizeof line) < 0 || atol(line) != i) {
        close(fd);
        fd = -1;
        continue;
      }
      last = i;
    }
    usleep(200000);
  }
}
`;

const GUEST_INIT = `${initPrologue()}echo "flint-guest: booted"
exec /bin/vsock-counter 2 ${NET.hostPort} /dev/vda
`;

/** Runs inside the nested VM. */
const CLIENT = `
import { spawn, spawnSync } from "node:child_process";
import { appendFileSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { createServer } from "node:net";
const [cli, kernel, initrd, work, report, consoles] = process.argv.slice(2);
${API_CLIENT_JS}
const disk = work + "/disk.img";
${flintProcessesJs("diff-")}
// The host peer: one for A and B (two listeners, one record). Greets each connection with the last number it has.
const received = [];
let outOfOrder = 0, connections = 0;
function peer(path) {
  const server = createServer((s) => {
    connections++;
    s.write("last=" + (received.length ? received[received.length - 1] : 0) + "\\n");
    let buf = "";
    s.on("error", () => undefined);
    s.on("data", (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf("\\n")) >= 0) {
        const n = Number(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        const last = received.length ? received[received.length - 1] : 0;
        if (n === last + 1) received.push(n); else outOfOrder++;
        s.write(n + "\\n");
      }
    });
  });
  server.listen(path + "_${NET.hostPort}");
  return server;
}
const ticks = (text) => [...text.matchAll(/tick=(\\d+) up=([0-9.]+)\\r?\\n/g)].map((m) => [Number(m[1]), Number(m[2])]);
const lastTick = (vm) => { const t = ticks(vm.console); return t.length ? t[t.length - 1][0] : 0; };
const listeners = [];
try {
  const a = startFlint("a");
  listeners.push(peer(work + "/a.vsock"));
  await socketUp(a);
  await must(a.sock, "PUT", "/boot-source", { kernel_image_path: kernel, initrd_path: initrd, boot_args: "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init" });
  await must(a.sock, "PUT", "/machine-config", { vcpu_count: 2, mem_size_mib: 256, track_dirty_pages: true });
  writeFileSync(disk, Buffer.alloc(4 << 20));
  await must(a.sock, "PUT", "/drives/data", { drive_id: "data", path_on_host: disk, is_root_device: false, is_read_only: false });
  await must(a.sock, "PUT", "/vsock", { guest_cid: ${NET.cid}, uds_path: work + "/a.vsock" });
  await must(a.sock, "PUT", "/actions", { action_type: "InstanceStart" });
  for (let i = 0; i < 3000 && received.length < 10; i++) await sleep(100);
  await must(a.sock, "PATCH", "/vm", { state: "Paused" });
  await must(a.sock, "PUT", "/snapshot/create", { snapshot_type: "Full", snapshot_path: work + "/full.snap", mem_file_path: work + "/full.mem" });
  say("ticks_at_full", lastTick(a));
  await must(a.sock, "PATCH", "/vm", { state: "Resumed" });
  const full = lastTick(a);
  for (let i = 0; i < 3000 && lastTick(a) < full + 8; i++) await sleep(100);
  await must(a.sock, "PATCH", "/vm", { state: "Paused" });
  await must(a.sock, "PUT", "/snapshot/create", { snapshot_type: "Diff", snapshot_path: work + "/diff.snap", mem_file_path: work + "/diff.mem" });
  const inspect = spawnSync(process.execPath, [cli, "snapshot", "inspect", work + "/diff.snap", "--json"], { encoding: "utf8" });
  say("inspect", JSON.stringify(inspect.status === 0 ? JSON.parse(inspect.stdout) : inspect.stderr));
  a.fc.kill("SIGKILL");
  await a.exited;
  say("ticks_at_diff", lastTick(a));
  say("received_at_diff", received.length);
  const rebase = spawnSync(process.execPath, [cli, "snapshot", "rebase", "--base", work + "/full.mem", "--diff", work + "/diff.mem"], { encoding: "utf8" });
  say("rebase", JSON.stringify((rebase.stdout + rebase.stderr).trim()));
  say("rebase_status", rebase.status);
  const b = startFlint("b");
  listeners.push(peer(work + "/b.vsock"));
  await socketUp(b);
  await must(b.sock, "PUT", "/snapshot/load", {
    snapshot_path: work + "/diff.snap", mem_backend: { backend_type: "File", backend_path: work + "/full.mem" }, resume_vm: true,
    vsock_override: { uds_path: work + "/b.vsock" },
  });
  const target = lastTick(a) + 10;
  for (let i = 0; i < 1200 && (lastTick(b) < target || received.length < target - 1); i++) await sleep(100);
  const seq = ticks(a.console + b.console);
  let gaps = 0, back = 0;
  for (let i = 1; i < seq.length; i++) {
    if (seq[i][0] !== seq[i - 1][0] + 1) gaps++;
    if (seq[i][1] < seq[i - 1][1]) back++;
  }
  say("first_tick_b", ticks(b.console)[0]?.[0]);
  say("ticks_b", lastTick(b));
  say("sequence_breaks", gaps);
  say("uptime_back", back);
  say("received", received.length);
  say("received_contiguous", received.every((n, i) => n === i + 1));
  say("out_of_order", outOfOrder);
  say("connections", connections);
  b.fc.kill("SIGKILL");
  await b.exited;
  const bytes = readFileSync(disk);
  const last = lastTick(b);
  let bad = 0;
  for (let i = 1; i < last; i++) if (bytes.toString("latin1", i * 512, i * 512 + 13) !== "tick=" + String(i).padStart(8, "0")) bad++;
  say("disk_ticks", last - 1);
  say("disk_bad", bad);
} catch (e) {
  say("client_error", JSON.stringify(e.message));
}
for (const l of listeners) l.close();
endFlints();
process.exit(0);
`;

describe("real Linux: a Diff snapshot over a Full one restores the Diff's moment; the count reaches a vsock peer each number once (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-diff-"));
  let report = "";
  let consoles: Record<string, string> = {};
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    ({ nested, report, consoles } = await runClientE2e({
      share, cli: CLI, kernel: kernel.vmlinux, init: GUEST_INIT, program: { name: "vsock-counter", source: COUNTER_C }, client: CLIENT,
      workDir: "/dev/shm/diff", names: ["a", "b"], clientTimeoutS: 500, timeoutMs: 12 * 60_000, memoryMib: 1536,
    }));
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => explainClientE2e({ nested, report, consoles });
  const value = (key: string) => e2eValue(key, report, "");

  it("A boots with dirty-page tracking, is saved Full, runs on and is saved Diff; the Diff is rebased onto the Full memory file", () => {
    assert.equal(value("client_error"), undefined, why());
    assert.ok(parseGuestReport(consoles.a ?? "").booted, why());
    const inspect = JSON.parse(value("inspect") ?? "{}") as { memoryFile?: string };
    assert.equal(inspect.memoryFile, "Diff", why());
    assert.equal(value("rebase_status"), "0", why());
    assert.ok(Number(value("ticks_at_diff")) >= Number(value("ticks_at_full")) + 8, why());
  });

  it("B, loaded from the Diff's state and the rebased memory, goes on from the Diff's moment: one count with A's, nothing missing or repeated, its clock never back", () => {
    // Restored from the Full one's moment, B would count from there again (and break the sequence).
    assert.ok(Number(value("first_tick_b")) > Number(value("ticks_at_full")) + 1, why());
    assert.ok(Number(value("ticks_b")) >= Number(value("ticks_at_diff")) + 10, why());
    assert.equal(value("sequence_breaks"), "0", why());
    assert.equal(value("uptime_back"), "0", why());
    assert.doesNotMatch(consoles.b ?? "", /booted/, why());
  });

  it("the disk holds every tick, each at its sector, before and after both snapshots", () => {
    assert.ok(Number(value("disk_ticks")) > Number(value("ticks_at_diff")), why());
    assert.equal(value("disk_bad"), "0", why());
  });

  it("the host's vsock peer received every number once, in order, across the restore (a new connection after the reset), past the Diff's moment", () => {
    assert.equal(value("received_contiguous"), "true", why());
    assert.equal(value("out_of_order"), "0", why());
    assert.ok(Number(value("received")) >= Number(value("ticks_at_diff")) + 5, why());
    assert.ok(Number(value("connections")) >= 2, `B made its own connection\n${why()}`);
  });

  it("no kernel warning on either console", () => {
    for (const c of Object.values(consoles)) assert.doesNotMatch(c, /WARNING:|BUG:|Call Trace|soft lockup|rcu_.*stall/, why());
  });
});
