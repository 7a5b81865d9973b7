/**
 * End-to-end: real Linux and flint's virtio-balloon, steered at run time
 * through the library API (`machine.balloon.setTarget`), one level down in
 * the nested harness. The guest dirties 160 MiB and frees it again, so the
 * host still holds those pages; inflating the balloon must hand them back:
 * flint's resident memory (measured in its own process) drops. Deflating
 * gives the memory back to the guest, which then uses it again.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { buildInitramfs, parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

/** The library as users import it (package.json main: the bundle; the tsc output is a module graph slow to load in the outer VM). */
const LIBRARY = fileURLToPath(new URL("../bundle/index.js", import.meta.url));
const GUEST_MIB = 256;
const FILL_MIB = 160;
const TARGET_MIB = 192;

const GUEST_INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "flint-guest: booted"
echo "flint-e2e: balloon-driver=$(ls /sys/bus/virtio/drivers/virtio_balloon | grep -c virtio)"
mkdir -p /mnt
mount -t tmpfs -o size=${FILL_MIB + 20}m tmpfs /mnt
dd if=/dev/zero of=/mnt/fill bs=1M count=${FILL_MIB} 2>/dev/null
rm /mnt/fill
echo "flint-e2e: filled=1"
# The host inflates and deflates the balloon, then says go.
read go
if dd if=/dev/zero of=/mnt/fill bs=1M count=${FILL_MIB} 2>/dev/null; then echo "flint-e2e: refill=ok"; else echo "flint-e2e: refill=failed"; fi
# The host measures, then says go again.
read go
poweroff -f
`;

/** Runs inside the nested VM: flint as a library, and the balloon steered while the guest runs. */
const HOST_SCRIPT = `
import { appendFileSync, readFileSync } from "node:fs";
import { Writable } from "node:stream";
const [library, kernelPath, initrdPath, report] = process.argv.slice(2);
const { Machine } = await import(library);
const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
const rssMib = () => Math.round(Number(/VmRSS:\\s+(\\d+)/.exec(readFileSync("/proc/self/status", "utf8"))[1]) / 1024);
let consoleText = "";
const consoleOutput = new Writable({ write(chunk, _e, cb) { consoleText += chunk; process.stdout.write(chunk); cb(); } });
const waitFor = async (text, ms) => {
  const end = Date.now() + ms;
  while (!consoleText.includes(text)) {
    if (Date.now() > end) throw new Error("guest never printed " + text);
    await new Promise((r) => setTimeout(r, 50));
  }
};
const vm = Machine.create({
  cpus: 2, memoryMib: ${GUEST_MIB}, consoleOutput,
  boot: { kind: "linux", kernelPath, initrdPath, cmdline: "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init" },
  virtioDevices: [{ kind: "balloon", options: { targetMib: 0 } }],
  onSlowEnd: (m) => say("slow_end", JSON.stringify(m)),
});
const done = vm.run();
try {
  await waitFor("flint-e2e: filled=1", 240_000);
  say("rss_filled_mib", rssMib());
  const t0 = Date.now();
  await vm.balloon.setTarget(${TARGET_MIB});
  const inflated = await vm.balloon.waitForTarget({ timeoutMs: 120_000, intervalMs: 100 });
  say("inflate_ms", Date.now() - t0);
  say("inflated_actual_mib", inflated.actualMib);
  say("inflated_pages", inflated.metrics.inflatedPages);
  say("rss_inflated_mib", rssMib());
  await vm.balloon.setTarget(0);
  const deflated = await vm.balloon.waitForTarget({ timeoutMs: 120_000, intervalMs: 100 });
  say("deflated_actual_mib", deflated.actualMib);
  say("deflated_pages", deflated.metrics.deflatedPages);
  // The driver refills the stats buffer each time the device hands it back (every info()).
  let info = await vm.balloon.info();
  for (let i = 0; i < 100 && info.statsUpdates < 2; i++) { await new Promise((r) => setTimeout(r, 100)); info = await vm.balloon.info(); }
  say("stats_updates", info.statsUpdates);
  say("stats_total_mib", Math.round((info.stats["total-memory"] ?? 0) / 1048576));
  vm.consoleInput(Buffer.from("go\\n"));
  await waitFor("flint-e2e: refill=", 240_000);
  say("rss_refilled_mib", rssMib());
  vm.consoleInput(Buffer.from("go\\n"));
} catch (e) {
  say("host_error", JSON.stringify(e.message));
  vm.stop();
}
const result = await done;
say("exit", result.reason.kind);
if (result.reason.kind === "reset") say("reset", JSON.stringify(result.reason.source + " " + (result.reason.detail ?? "")));
process.exit(0);
`;

describe("real Linux gives memory back through flint's virtio-balloon (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-balloon-"));
  let out = "";
  let hostOut = "";
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    const initrd = join(share, "initramfs.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: GUEST_INIT }));
    const script = join(share, "host.mjs");
    writeFileSync(script, HOST_SCRIPT);
    const outFile = join(share, "out.txt"), hostFile = join(share, "host.txt");
    const command = `timeout 500 ${q(process.execPath)} ${q(script)} ${q(LIBRARY)} ${q(kernel.vmlinux)} ${q(initrd)} ${q(hostFile)} </dev/null >${q(outFile)} 2>&1`;
    const retryAfterTimeout = () => { for (const f of [outFile, hostFile]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 12 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [outFile] });
    out = readTextIfAny(outFile);
    hostOut = readTextIfAny(hostFile);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}\n${out.slice(-2000)}\n--- host ---\n${hostOut}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const value = (key: string) => e2eValue(key, out, hostOut);
  const num = (key: string) => Number(value(key) ?? Number.NaN);

  it("the guest's virtio_balloon driver binds, and the VM powers off normally", () => {
    assert.ok(parseGuestReport(out).booted, why());
    assert.equal(value("balloon-driver"), "1", why());
    assert.equal(value("host_error"), undefined, why());
    assert.equal(value("exit"), "poweroff", why());
  });

  it(`inflating to ${TARGET_MIB} MiB at run time returns the guest's freed pages: flint's RSS drops by over 100 MiB`, () => {
    assert.equal(num("inflated_actual_mib"), TARGET_MIB, why());
    assert.equal(num("inflated_pages"), (TARGET_MIB * 1024) / 4, why());
    const drop = num("rss_filled_mib") - num("rss_inflated_mib");
    assert.ok(drop > 100, `RSS ${num("rss_filled_mib")} -> ${num("rss_inflated_mib")} MiB\n${why()}`);
  });

  it("deflating to 0 gives the memory back: the guest fills it again", () => {
    assert.equal(num("deflated_actual_mib"), 0, why());
    assert.equal(num("deflated_pages"), (TARGET_MIB * 1024) / 4, why());
    assert.equal(value("refill"), "ok", why());
    assert.ok(num("rss_refilled_mib") - num("rss_inflated_mib") > 100, `the refill faulted pages back in\n${why()}`);
  });

  it("the statistics queue reports the guest's memory", () => {
    assert.ok(num("stats_updates") >= 2, why());
    const total = num("stats_total_mib");
    assert.ok(total > GUEST_MIB / 2 && total <= GUEST_MIB, `total-memory ${total} MiB\n${why()}`);
  });
});
