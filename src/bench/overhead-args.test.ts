import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import { GuestProgramError } from "../guest/programs/program-error.js";
import { type OverheadDevices, type OverheadRun, QEMU_SERIAL_MACHINE, ceilingRunArgs, flintRunArgs, qemuRunArgs } from "./overhead-args.js";

const devices: OverheadDevices = {
  diskPath: "/tmp/x/disk0.img",
  tap: "flb1t0",
  mac: "52:54:00:f1:1b:00",
  vsockCid: 3,
  vsockUds: "/tmp/x/vsock0.sock",
  qemuVsock: false,
};
const bare: OverheadRun = { cpus: 1, memoryMib: 64, guest: { mode: "pio", count: 0, hello: true }, exitOnEnd: true };

/** The value after each occurrence of `flag`. */
const valuesOf = (args: readonly string[], flag: string) => args.flatMap((a, i) => (a === flag ? [args[i + 1]] : []));

describe("flintRunArgs", () => {
  it("boots the guest by PVH without ACPI, with the guest's words and --debug-exit when the guest's end should end flint", () => {
    const args = flintRunArgs("/g.elf", bare);
    assert.deepEqual(args.slice(0, 7), ["run", "--kernel", "/g.elf", "--boot", "pvh", "--no-acpi", "--cpus"]);
    assert.deepEqual(valuesOf(args, "--cmdline"), ["mode=pio count=0 hello"]);
    assert.deepEqual(valuesOf(args, "--memory"), ["64"]);
    assert.ok(args.includes("--debug-exit"));
    for (const flag of ["--disk", "--net", "--rng", "--balloon", "--vsock"]) assert.ok(!args.includes(flag), flag);
    assert.ok(!flintRunArgs("/g.elf", { ...bare, exitOnEnd: false }).includes("--debug-exit"));
  });

  it("adds one of every device", () => {
    const args = flintRunArgs("/g.elf", { ...bare, cpus: 2, devices, guest: { mode: "pio", count: 0, hello: true, halt: true } });
    assert.deepEqual(valuesOf(args, "--cpus"), ["2"]);
    assert.deepEqual(valuesOf(args, "--cmdline"), ["mode=pio count=0 hello halt"]);
    assert.deepEqual(valuesOf(args, "--disk"), ["/tmp/x/disk0.img"]);
    assert.deepEqual(valuesOf(args, "--net"), ["tap=flb1t0,mac=52:54:00:f1:1b:00"]);
    assert.deepEqual(valuesOf(args, "--balloon"), ["0"]);
    assert.deepEqual(valuesOf(args, "--vsock"), ["cid=3,uds=/tmp/x/vsock0.sock"]);
    assert.ok(args.includes("--rng"));
  });

  it("leaves virtio-net out when there is no TAP", () => {
    const { tap: _, ...noTap } = devices;
    assert.ok(!flintRunArgs("/g.elf", { ...bare, devices: noTap }).includes("--net"));
  });

  it("rejects a VM it cannot describe", () => {
    assert.throws(() => flintRunArgs("/g.elf", { ...bare, cpus: 0 }), (e: BenchError) => e.code === "EBENCHARG");
    assert.throws(() => flintRunArgs("/g.elf", { ...bare, memoryMib: 1.5 }), (e: BenchError) => e.code === "EBENCHARG");
  });
});

describe("qemuRunArgs", () => {
  it("runs microvm with its serial port on stdio, the same guest words, and isa-debug-exit on the end-marker port", () => {
    const args = qemuRunArgs("/g.elf", bare);
    assert.deepEqual(valuesOf(args, "-M"), [QEMU_SERIAL_MACHINE]);
    assert.match(QEMU_SERIAL_MACHINE, /^microvm,.*isa-serial=on/);
    assert.doesNotMatch(QEMU_SERIAL_MACHINE, /isa-serial=off/);
    assert.deepEqual(valuesOf(args, "-serial"), ["stdio"]);
    assert.deepEqual(valuesOf(args, "-append"), ["mode=pio count=0 hello"]);
    assert.deepEqual(valuesOf(args, "-device"), ["isa-debug-exit,iobase=0xf4,iosize=4"]);
    assert.deepEqual(valuesOf(qemuRunArgs("/g.elf", { ...bare, exitOnEnd: false }), "-device"), []);
  });

  it("adds the same devices as virtio-mmio ones, vsock only where vhost-vsock works", () => {
    const args = qemuRunArgs("/g.elf", { ...bare, cpus: 2, devices });
    assert.deepEqual(valuesOf(args, "-smp"), ["2"]);
    assert.deepEqual(valuesOf(args, "-device"), [
      "isa-debug-exit,iobase=0xf4,iosize=4",
      "virtio-blk-device,drive=disk0",
      "virtio-net-device,netdev=net0,mac=52:54:00:f1:1b:00",
      "virtio-rng-device",
      "virtio-balloon-device",
    ]);
    assert.deepEqual(valuesOf(args, "-drive"), ["if=none,id=disk0,format=raw,file=/tmp/x/disk0.img"]);
    assert.deepEqual(valuesOf(args, "-netdev"), ["tap,id=net0,ifname=flb1t0,script=no,downscript=no"]);
    const withVsock = qemuRunArgs("/g.elf", { ...bare, devices: { ...devices, qemuVsock: true } });
    assert.ok(withVsock.includes("vhost-vsock-device,guest-cid=3"));
  });

  it("doubles a comma in the image path, QEMU's escape", () => {
    const args = qemuRunArgs("/g.elf", { ...bare, devices: { ...devices, diskPath: "/tmp/a,b.img" } });
    assert.deepEqual(valuesOf(args, "-drive"), ["if=none,id=disk0,format=raw,file=/tmp/a,,b.img"]);
  });
});

describe("ceilingRunArgs", () => {
  it("passes mode, count and hello", () => {
    assert.deepEqual(ceilingRunArgs("/g.elf", { mode: "pio", count: 0, hello: true }), ["/g.elf", "pio", "0", "hello"]);
    assert.deepEqual(ceilingRunArgs("/g.elf", { mode: "mmio", count: 5 }), ["/g.elf", "mmio", "5"]);
    // The guest program refuses the count itself (its own error class, not the benchmark's).
    assert.throws(() => ceilingRunArgs("/g.elf", { mode: "pio", count: -1 }), (e: GuestProgramError) => e instanceof GuestProgramError && e.code === "EPROGARG");
  });
});
