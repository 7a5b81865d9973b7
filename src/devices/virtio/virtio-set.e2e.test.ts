/**
 * End-to-end: what real Linux does with each way flint can announce a
 * virtio-mmio device (here a virtio-rng), measured with flint's 6.1 guest
 * kernel built with ACPI and the same kernel built without
 * (src/devices/virtio/virtio-set.ts records the findings). Runs one level down
 * in the nested harness (this host's /dev/kvm cannot run a Linux kernel at
 * usable speed); each case is one Machine run by a small script inside the
 * nested VM, all in one outer boot.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { buildInitramfs } from "../../guest/initramfs.js";
import { buildKernel, type KernelVariant } from "../../guest/kernel-build.js";
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
for d in /sys/bus/virtio/devices/*; do
  echo "${P} parent $(basename "$(dirname "$(readlink -f $d)")")"
done
dmesg | grep -e "probe of" | sed 's/^/${P} dmesg /'
dmesg | grep -e "virtio" -e "LNRO" | grep -v "probe of" | sed 's/^/${P} log /'
echo "${P} rng_current=$(cat /sys/class/misc/hw_random/rng_current 2>&1)"
echo "${P} hwrng=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
exec </dev/null >/dev/null 2>&1
reboot -f
`;

/** Runs one VM with a virtio-rng device; argv: kernel initrd announce acpi|noacpi. */
const RUNNER = `
const [kernelPath, initrdPath, announce, acpi] = process.argv.slice(2);
const { Machine } = await import(${JSON.stringify(new URL("../../bundle/index.js", import.meta.url).href)});
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
  /** The guest kernel: built with ACPI ("default") or without ("no-acpi"). */
  kernel: KernelVariant;
  announce: string;
  /** flint gives the guest ACPI tables. */
  acpi: boolean;
}
// Both kernels with flint's default announcement ("auto") are checked with every device by
// src/e2e/acpi-kernels.test.ts (which platform device each binds to, no failed probe); the
// cases here are the other announcements, kept to show why "auto" is what it is.
const CASES: Case[] = [
  { name: "acpi-tables-off", kernel: "default", announce: "auto", acpi: false },
  { name: "acpi-cmdline-only", kernel: "default", announce: "cmdline", acpi: true },
  { name: "acpi-same-window", kernel: "default", announce: "cmdline+dsdt", acpi: true },
  { name: "noacpi-dsdt-only", kernel: "no-acpi", announce: "dsdt", acpi: true },
];

interface Seen {
  /** The end of the runner's output, for failure messages. */
  tail?: string;
  devices: { id: string; driver: string }[];
  /** The platform device each virtio device hangs from (LNRO0005:NN or virtio-mmio.N). */
  parents: string[];
  probeFailures: string[];
  /** The kernel's other virtio lines, for the record. */
  log: string[];
  rngCurrent?: string;
  hwrngHex?: string;
  result?: { reason: { kind: string }; virtio: { kicks: number; interrupts: number; userspaceNotifies: number; failures: string[] }[] };
}

function parse(output: string): Seen {
  const seen: Seen = { devices: [], parents: [], probeFailures: [], log: [] };
  for (const raw of output.split("\n")) {
    const at = raw.indexOf(P);
    if (at < 0) continue;
    const line = raw.slice(at + P.length).trim();
    let m: RegExpExecArray | null;
    if ((m = /^device (\S+) driver=(\S*)$/.exec(line))) seen.devices.push({ id: m[1]!, driver: m[2]! });
    else if (line.startsWith("parent ")) seen.parents.push(line.slice(7));
    else if (line.startsWith("dmesg ")) seen.probeFailures.push(line.slice(6));
    else if (line.startsWith("log ")) seen.log.push(line.slice(4));
    else if ((m = /^rng_current=(.*)$/.exec(line))) seen.rngCurrent = m[1];
    else if ((m = /^hwrng=(.*)$/.exec(line))) seen.hwrngHex = m[1];
    else if (line.startsWith("result ")) seen.result = JSON.parse(line.slice(7)) as Seen["result"];
  }
  return seen;
}

describe("how Linux finds a virtio-mmio device announced in the DSDT, on the command line or both (nested harness)", { timeout: 25 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-virtio-e2e-"));
  const seen = new Map<string, Seen>();
  let nested: NestedResult;

  before(async () => {
    const kernels = { default: (await buildKernel()).vmlinux, "no-acpi": (await buildKernel({ variant: "no-acpi" })).vmlinux };
    const initrd = join(share, "virtio.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: INIT }));
    const runner = join(share, "run-virtio.mjs");
    writeFileSync(runner, RUNNER);
    const script = CASES.map((c) => {
      const out = join(share, `${c.name}.out`);
      return `timeout 180 ${q(process.execPath)} ${q(runner)} ${q(kernels[c.kernel])} ${q(initrd)} ${c.announce} ${c.acpi ? "acpi" : "noacpi"} >${q(out)} 2>&1`;
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

  it("without ACPI tables (--no-acpi), the command line names the device's own window, which probes and works", () => {
    const s = check("acpi-tables-off");
    assertRngWorks(s);
    assert.deepEqual(s.parents, ["virtio-mmio.0"], JSON.stringify(s));
    assert.deepEqual(s.probeFailures, []);
  });

  it("kernel without ACPI, device in the DSDT only (flint's announcement before): no device at all", () => {
    const s = check("noacpi-dsdt-only");
    assert.deepEqual(s.devices, [], JSON.stringify(s));
    assert.notEqual(s.rngCurrent, "virtio_rng.0");
  });

  it("kernel with ACPI, one window named in both the DSDT and the command line: bound once, the duplicate fails with -16", () => {
    const s = check("acpi-same-window");
    assertRngWorks(s);
    assert.deepEqual(s.parents, ["LNRO0005:00"], JSON.stringify(s));
    assert.equal(s.probeFailures.length, 1, JSON.stringify(s));
    assert.match(s.probeFailures[0]!, /probe of virtio-mmio.0 failed with error -16/);
  });

  it("kernel with ACPI, device on the command line only: it registers but its driver cannot get its interrupt", () => {
    const s = check("acpi-cmdline-only");
    assert.deepEqual(s.parents, ["virtio-mmio.0"], JSON.stringify(s));
    assert.notEqual(s.rngCurrent, "virtio_rng.0", JSON.stringify(s));
    assert.ok(s.probeFailures.some((l) => /failed with error -22/.test(l)), JSON.stringify(s));
  });
});
