/**
 * End-to-end: Ctrl-Alt-Del through flint's i8042 (Firecracker's
 * `SendCtrlAltDel`), with real Linux one level down in the nested harness,
 * driven through the library (`Machine.sendCtrlAltDel()`).
 *
 * Debian's distro kernel is the guest: it has the i8042 driver, atkbd and the
 * VT keyboard handler built in (flint's minimal kernel has none of them).
 * Two VMs run one after the other in one outer boot:
 *   - "kbd": the command line Firecracker users pass ("console=ttyS0 reboot=k
 *     panic=1 pci=off", `quiet` added only to spare costly console exits),
 *     without `i8042.dumbkbd`/`noaux`/`nomux`/`nopnp`: atkbd must probe the
 *     keyboard (GET ID, LEDs, typematic, enable) and bind without a timeout;
 *   - "dumbkbd": flint's default command line, which has `i8042.dumbkbd` (as
 *     Firecracker's default boot_args do): atkbd binds without talking to
 *     the keyboard.
 *     This one is paused before the keys are sent and resumed after, as
 *     Firecracker accepts the action while paused.
 * The guest's /init is a shell script, so /proc/sys/kernel/ctrl-alt-del
 * keeps the kernel's default (1: reboot at once); with reboot=k that resets
 * through the i8042, and run() resolves with reason reset/i8042.
 *
 * Also printed (not asserted): guest uptime at /init and how long atkbd's
 * probe took (dmesg time of "serio: i8042 KBD port" to "input: AT ...
 * keyboard"), with and without the keyboard probe.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { DEFAULT_CMDLINE } from "../cli/defaults.js";
import { debianKernel } from "../guest/debian-kernel.js";
import { buildInitramfs, parseGuestReport } from "../guest/initramfs.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { initPrologue } from "../harness/guest-scripts.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

/** The library as users import it (package.json main: the bundle; the tsc output is a module graph slow to load in the outer VM). */
const LIBRARY = fileURLToPath(new URL("../bundle/index.js", import.meta.url));

/** Firecracker's getting-started boot_args; no i8042.* option. */
const FIRECRACKER_USER_CMDLINE = "console=ttyS0 reboot=k panic=1 pci=off quiet";

const CASES = [
  { name: "kbd", cmdline: FIRECRACKER_USER_CMDLINE, pauseAroundKeys: false },
  { name: "dumbkbd", cmdline: `${DEFAULT_CMDLINE} quiet`, pauseAroundKeys: true },
] as const;

/**
 * Waits (atkbd binds from the kseriod work queue, after /init may have
 * started) for the keyboard's input device, reports it and the kernel's
 * i8042/atkbd messages, then waits for the host's keys.
 */
const GUEST_INIT = `${initPrologue()}echo "flint-guest: booted"
echo "flint-e2e: uptime-init=$(cut -d' ' -f1 /proc/uptime)"
n=0
until grep -q 'keyboard' /proc/bus/input/devices 2>/dev/null || [ $n -ge 60 ]; do sleep 1; n=$((n+1)); done
echo "flint-e2e: kbd-name=$(sed -n 's/^N: Name="\\(.*keyboard.*\\)"$/\\1/p' /proc/bus/input/devices)"
echo "flint-e2e: kbd-version=$(grep -B1 'keyboard' /proc/bus/input/devices | sed -n 's/.*Version=\\([0-9a-f]*\\).*/\\1/p')"
echo "flint-e2e: ctrl-alt-del=$(cat /proc/sys/kernel/ctrl-alt-del)"
dmesg | grep -i -E 'i8042|atkbd|serio|keyboard|input:|ps/2' | sed 's/^/flint-dmesg: /'
grep -E '^ *(1|12):' /proc/interrupts | sed 's/^/flint-irq: /'
echo "flint-e2e: ready"
while :; do sleep 1; done
`;

/** Runs inside the nested VM: one VM per case, each ended by Ctrl-Alt-Del from the library. */
const HOST_SCRIPT = `
import { appendFileSync } from "node:fs";
import { Writable } from "node:stream";
const [library, kernelPath, initrdPath, report, name, cmdline, pauseAroundKeys] = process.argv.slice(2);
const { Machine } = await import(library);
const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
let consoleText = "";
const consoleOutput = new Writable({ write(chunk, _e, cb) { consoleText += chunk; process.stdout.write(chunk); cb(); } });
const waitFor = async (text, ms) => {
  const end = Date.now() + ms;
  while (!consoleText.includes(text)) {
    if (Date.now() > end) throw new Error("guest never printed " + text);
    await new Promise((r) => setTimeout(r, 50));
  }
};
const vm = Machine.create({ cpus: 1, memoryMib: 384, consoleOutput, boot: { kind: "linux", kernelPath, initrdPath, cmdline } });
const done = vm.run();
let sentAt = 0;
try {
  await waitFor("flint-e2e: ready", 400_000);
  if (pauseAroundKeys === "1") {
    await vm.pause();
    await vm.sendCtrlAltDel();
    await new Promise((r) => setTimeout(r, 2000));
    say("state_after_keys_while_paused", vm.state);
    sentAt = Date.now();
    await vm.resume();
  } else {
    sentAt = Date.now();
    await vm.sendCtrlAltDel();
  }
  say("keys", "sent");
  const ended = await Promise.race([done.then(() => true), new Promise((r) => setTimeout(() => r(false), 120_000))]);
  if (!ended) { say("host_error", JSON.stringify("the guest did not end the VM within 120 s of Ctrl-Alt-Del")); vm.stop(); }
} catch (e) {
  say("host_error", JSON.stringify(e.message));
  vm.stop();
}
const result = await done;
say("keys_to_end_ms", sentAt ? Date.now() - sentAt : -1);
say("exit", result.reason.kind + (result.reason.kind === "reset" ? "/" + result.reason.source : ""));
say("i8042_faults", result.guestFaultsByDevice.i8042 ?? 0);
process.exit(0);
`;

/** dmesg's "[   12.345678] text" timestamp of the first report line matching `re`, in seconds. */
function dmesgTime(out: string, re: RegExp): number | undefined {
  for (const line of out.split("\n")) {
    if (!line.startsWith("flint-dmesg: ") || !re.test(line)) continue;
    const m = /\[\s*(\d+\.\d+)\]/.exec(line);
    if (m) return Number(m[1]);
  }
  return undefined;
}

describe("Ctrl-Alt-Del ends a real Linux guest through flint's i8042 keyboard (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-cad-"));
  const out = new Map<string, string>();
  const host = new Map<string, string>();
  let nested: NestedResult | undefined;

  before(async () => {
    const debian = await debianKernel();
    const initrd = join(share, "initramfs.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: GUEST_INIT }));
    const script = join(share, "host.mjs");
    writeFileSync(script, HOST_SCRIPT);
    const files = (name: string) => ({ out: join(share, `${name}.out`), host: join(share, `${name}.host`) });
    const command = CASES.map((c) => {
      const f = files(c.name);
      const args = [LIBRARY, debian.vmlinuz, initrd, f.host, c.name, c.cmdline, c.pauseAroundKeys ? "1" : "0"];
      return `timeout 480 ${q(process.execPath)} ${q(script)} ${args.map(q).join(" ")} </dev/null >${q(f.out)} 2>&1`;
    }).join("\n");
    const retryAfterTimeout = () => {
      for (const c of CASES) for (const f of Object.values(files(c.name))) rmSync(f, { force: true });
    };
    nested = await runNested({ command, timeoutMs: 18 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout,
      retryOnGuestCrash: CASES.map((c) => files(c.name).out) });
    for (const c of CASES) {
      out.set(c.name, readTextIfAny(files(c.name).out));
      host.set(c.name, readTextIfAny(files(c.name).host));
    }
    // The figures the README quotes: printed, not asserted.
    for (const c of CASES) {
      const o = out.get(c.name)!;
      const port = dmesgTime(o, /serio: i8042 KBD port/);
      const input = dmesgTime(o, /input: AT .*keyboard/);
      const probeMs = port !== undefined && input !== undefined ? ((input - port) * 1000).toFixed(1) : "?";
      console.log(`# ${c.name}: uptime at /init ${e2eValue("uptime-init", o) ?? "?"} s; i8042 KBD port to atkbd input device ${probeMs} ms; ` +
        `keys to VM end ${e2eValue("keys_to_end_ms", host.get(c.name)!) ?? "?"} ms`);
    }
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = (name: string) =>
    `${describeNestedRun(nested)}\n${out.get(name)?.slice(-3000)}\n--- host ---\n${host.get(name)}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const value = (name: string, key: string) => e2eValue(key, out.get(name) ?? "", host.get(name) ?? "");

  it("without i8042.dumbkbd, atkbd probes flint's keyboard and binds it as a translated MF2 keyboard, with no timeout or error logged", () => {
    const o = out.get("kbd") ?? "";
    assert.ok(parseGuestReport(o).booted, why("kbd"));
    assert.equal(value("kbd", "kbd-name"), "AT Translated Set 2 keyboard", why("kbd"));
    // input_dev->id.version is atkbd's id: 0xab41 means GET ID was answered (a failed GET ID gives 0xabba).
    assert.equal(value("kbd", "kbd-version"), "ab41", why("kbd"));
    const complaints = o.split("\n").filter((l) => l.startsWith("flint-dmesg: ") && /timeout|time out|fail|spurious|unknown key|can't|error|warn/i.test(l));
    assert.deepEqual(complaints, [], why("kbd"));
    assert.equal(value("kbd", "i8042_faults"), "0", why("kbd"));
  });

  it("Ctrl-Alt-Del from Machine.sendCtrlAltDel() reboots the guest: reboot=k resets through the i8042 and run() resolves", () => {
    assert.equal(value("kbd", "ctrl-alt-del"), "1", why("kbd"));
    assert.equal(value("kbd", "host_error"), undefined, why("kbd"));
    assert.equal(value("kbd", "keys"), "sent", why("kbd"));
    assert.equal(value("kbd", "exit"), "reset/i8042", why("kbd"));
  });

  it("with i8042.dumbkbd too; keys sent while paused are read once resumed", () => {
    assert.ok(parseGuestReport(out.get("dumbkbd") ?? "").booted, why("dumbkbd"));
    assert.equal(value("dumbkbd", "kbd-name"), "AT Translated Set 2 keyboard", why("dumbkbd"));
    assert.equal(value("dumbkbd", "host_error"), undefined, why("dumbkbd"));
    assert.equal(value("dumbkbd", "state_after_keys_while_paused"), "paused", why("dumbkbd"));
    assert.equal(value("dumbkbd", "exit"), "reset/i8042", why("dumbkbd"));
  });
});
