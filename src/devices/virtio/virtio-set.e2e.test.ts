/**
 * End-to-end: real Linux (flint's 6.1 guest kernel) finds a virtio-rng device
 * on flint's virtio-mmio transport and reads random bytes from it, with and
 * without ACPI; and a device listed both in the DSDT and on the command line
 * is not bound twice. Runs one level down in the nested harness (this host's
 * /dev/kvm cannot run a Linux kernel at usable speed); each case is one
 * Machine run by a small script inside the nested VM.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { buildInitramfs } from "../../guest/initramfs.js";
import { buildKernel } from "../../guest/kernel-build.js";
import { runNested, shellQuote as q, type NestedResult } from "../../harness/nested.js";

/** Lines the guest's /init prints, each prefixed so they can be picked out of the console. */
const P = "flint-virtio:";

/** The guest's /init: what the virtio bus and hwrng look like, then reboot (works without ACPI too). */
const INIT = `#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d/device" ] && echo "${P} device $(cat $d/device) driver=$(basename "$(readlink $d/driver)" 2>/dev/null)"
done
dmesg | grep -e "probe of" | sed 's/^/${P} dmesg /'
echo "${P} rng_current=$(cat /sys/class/misc/hw_random/rng_current 2>&1)"
echo "${P} hwrng=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
exec </dev/null >/dev/null 2>&1
reboot -f
`;

/** Runs one VM with a virtio-rng device; argv: kernel initrd announce acpi|noacpi. */
const RUNNER = `
const [kernelPath, initrdPath, announce, acpi] = process.argv.slice(2);
const { Machine } = await import(${JSON.stringify(new URL("../../vm/machine.js", import.meta.url).href)});
let out = "";
const m = Machine.create({
  cpus: 1, memoryMib: 128,
  boot: { kind: "linux", kernelPath, initrdPath, cmdline: "console=ttyS0 reboot=k panic=-1 pci=off quiet", acpi: acpi === "acpi" },
  consoleOutput: new (await import("node:stream")).Writable({ write(c, _e, cb) { out += c.toString(); cb(); } }),
  virtioDevices: [{ kind: "rng", options: {} }],
  virtioAnnounce: announce,
});
const r = await m.run();
process.stdout.write(out.split("\\n").filter((l) => l.includes(${JSON.stringify(P)})).join("\\n") + "\\n");
console.log(${JSON.stringify(P)} + " result " + JSON.stringify({ reason: r.reason, virtio: r.virtio }));
`;

interface Case {
  name: string;
  announce: string;
  acpi: boolean;
}
const CASES: Case[] = [
  { name: "acpi-auto", announce: "auto", acpi: true },
  { name: "noacpi-auto", announce: "auto", acpi: false },
  { name: "acpi-both", announce: "cmdline+dsdt", acpi: true },
];

interface Seen {
  /** The end of the runner's output, for failure messages. */
  tail?: string;
  devices: { id: string; driver: string }[];
  probeFailures: string[];
  rngCurrent?: string;
  hwrngHex?: string;
  result?: { reason: { kind: string }; virtio: { kicks: number; interrupts: number; userspaceNotifies: number; failures: string[] }[] };
}

function parse(output: string): Seen {
  const seen: Seen = { devices: [], probeFailures: [] };
  for (const raw of output.split("\n")) {
    const at = raw.indexOf(P);
    if (at < 0) continue;
    const line = raw.slice(at + P.length).trim();
    let m: RegExpExecArray | null;
    if ((m = /^device (\S+) driver=(\S*)$/.exec(line))) seen.devices.push({ id: m[1]!, driver: m[2]! });
    else if (line.startsWith("dmesg ")) seen.probeFailures.push(line.slice(6));
    else if ((m = /^rng_current=(.*)$/.exec(line))) seen.rngCurrent = m[1];
    else if ((m = /^hwrng=(.*)$/.exec(line))) seen.hwrngHex = m[1];
    else if (line.startsWith("result ")) seen.result = JSON.parse(line.slice(7)) as Seen["result"];
  }
  return seen;
}

describe("real Linux uses flint's virtio-rng (nested harness)", { timeout: 25 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-virtio-e2e-"));
  const seen = new Map<string, Seen>();
  let nested: NestedResult;

  before(async () => {
    const kernel = await buildKernel();
    const initrd = join(share, "virtio.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: INIT }));
    const runner = join(share, "run-virtio.mjs");
    writeFileSync(runner, RUNNER);
    const script = CASES.map((c) => {
      const out = join(share, `${c.name}.out`);
      return `timeout 180 ${q(process.execPath)} ${q(runner)} ${q(kernel.vmlinux)} ${q(initrd)} ${c.announce} ${c.acpi ? "acpi" : "noacpi"} >${q(out)} 2>&1`;
    }).join("\n");
    nested = await runNested({ command: script, timeoutMs: 20 * 60_000, shareDir: share });
    for (const c of CASES) {
      let text = "";
      try {
        text = readFileSync(join(share, `${c.name}.out`), "utf8");
      } catch {
        // missing: asserted below
      }
      seen.set(c.name, { ...parse(text), tail: text.slice(-2000) });
    }
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  function check(name: string): Seen {
    const s = seen.get(name)!;
    const why = `${JSON.stringify(s, null, 1)}\n--- outer serial tail ---\n${nested.serial.slice(-1500)}`;
    assert.equal(nested.timedOut, false, `nested harness timed out\n${why}`);
    assert.deepEqual(s.result?.reason, { kind: "reset", source: "i8042" }, why);
    return s;
  }

  /** One virtio device (id 0x0004), bound to virtio_rng, and /dev/hwrng readable through it. */
  function assertRngWorks(s: Seen): void {
    const why = JSON.stringify(s, null, 1);
    assert.deepEqual(s.devices, [{ id: "0x0004", driver: "virtio_rng" }], why);
    assert.equal(s.rngCurrent, "virtio_rng.0", why);
    assert.match(s.hwrngHex ?? "", /^[0-9a-f]{64}$/, why);
    assert.notEqual(s.hwrngHex, "0".repeat(64), why);
    const dev = s.result!.virtio[0]!;
    assert.ok(dev.kicks > 0 && dev.interrupts > 0, why);
    assert.equal(dev.userspaceNotifies, 0, "every kick went through the ioeventfd");
    assert.deepEqual(dev.failures, []);
  }

  it("with ACPI, the device is announced in the DSDT, probes once and /dev/hwrng reads from it", () => {
    const s = check("acpi-auto");
    assertRngWorks(s);
    assert.deepEqual(s.probeFailures, []);
  });

  it("without ACPI, the device is announced on the command line, probes once and works", () => {
    const s = check("noacpi-auto");
    assertRngWorks(s);
    assert.deepEqual(s.probeFailures, []);
  });

  it("listed in both the DSDT and the command line, the device is bound once and the duplicate fails (why flint picks one)", () => {
    const s = check("acpi-both");
    assertRngWorks(s);
    assert.equal(s.probeFailures.length, 1, JSON.stringify(s));
    assert.match(s.probeFailures[0]!, /virtio-mmio.0 failed with error -16/);
  });
});
