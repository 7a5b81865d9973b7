import assert from "node:assert/strict";
import { buildKernel } from "../guest/kernel-build.js";
import { debianKernel } from "../guest/debian-kernel.js";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { SMP_MAGIC_IDENT, XEN_HVM_START_MAGIC_VALUE, boot_params, hvm_start_info, setup_header } from "../linux/abi.generated.js";
import { ArchError } from "../arch/x86_64/errors.js";
import { ACPI_START, CMDLINE_START, MiB, MPTABLE_START, PVH_INFO_START, ZERO_PAGE_START, ramRegions } from "../arch/x86_64/layout.js";
import { translate } from "../arch/x86_64/testing/page-walk.js";
import { mmioDeviceAml } from "../arch/x86_64/acpi/dsdt.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { BootError, setupBoot, type BootOptions } from "./index.js";
import { makeBzImage, makeElfKernel } from "./testing/images.js";

function withMemory(sizeBytes: number, fn: (mem: GuestMemory) => void): void {
  const mem = GuestMemory.create(ramRegions(sizeBytes));
  try { fn(mem); } finally { mem.dispose(); }
}
const hdr = (f: keyof typeof setup_header): number => ZERO_PAGE_START + boot_params.hdr + setup_header[f];
const cstring = (mem: GuestMemory, a: number): string => {
  const bytes: number[] = [];
  for (let b = mem.readU8(a); b !== 0; b = mem.readU8(++a)) bytes.push(b);
  return Buffer.from(bytes).toString("utf8");
};

const elf = makeElfKernel({
  entry: 0x1000000, pvhEntry: 0x1000040,
  segments: [{ paddr: 0x1000000, data: new Uint8Array(0x2000).fill(0x90), memBytes: 0x100000 }],
});
const base = (kernel: Uint8Array): BootOptions => ({ kernel, kernelPath: "k", cmdline: "console=ttyS0 panic=-1", cpus: 2, acpi: true });

test("an ELF vmlinux boots at its 64-bit entry with the zero page, cmdline, MP and ACPI tables in place", () => {
  withMemory(128 * MiB, (mem) => {
    const initrd = new Uint8Array(3 * MiB).fill(7);
    const r = setupBoot(mem, { ...base(elf), initrd, initrdPath: "initrd.cpio" });
    assert.equal(r.kind, "elf");
    assert.equal(r.entry.regs.rip, 0x1000000n);
    assert.equal(r.entry.regs.rsi, BigInt(ZERO_PAGE_START));
    assert.equal(r.entry.sregs.cs!.l, 1);
    assert.equal(translate(mem, r.entry.sregs.cr3!, r.entry.regs.rip), r.entry.regs.rip);
    assert.equal(cstring(mem, mem.readU32(hdr("cmd_line_ptr"))), "console=ttyS0 panic=-1");
    assert.equal(mem.readU32(hdr("ramdisk_image")), r.initrd!.address);
    assert.ok(r.initrd!.address >= r.kernel.kernelEnd);
    assert.deepEqual(mem.read(r.initrd!.address, 16), initrd.subarray(0, 16));
    assert.equal(mem.readU64(ZERO_PAGE_START + boot_params.acpi_rsdp_addr), BigInt(r.rsdpAddress!));
    assert.equal(Buffer.from(mem.read(r.rsdpAddress!, 8)).toString("latin1"), "RSD PTR ");
    assert.equal(mem.readU32(MPTABLE_START), SMP_MAGIC_IDENT);
    assert.match(r.summary, /ELF vmlinux.*64-bit entry 0x1000000.*initrd 3 MiB.*2 vCPUs.*ACPI RSDP 0xe0000/);
  });
});

test("PVH boot enters the ELF's PVH entry with EBX at the start info", () => {
  withMemory(64 * MiB, (mem) => {
    const r = setupBoot(mem, { ...base(elf), bootMode: "pvh", initrd: new Uint8Array(4096) });
    assert.equal(r.kind, "pvh");
    assert.equal(r.entry.regs.rip, 0x1000040n);
    assert.equal(r.entry.regs.rbx, BigInt(PVH_INFO_START));
    assert.equal(r.entry.sregs.cr0, 1n);
    assert.equal(mem.readU32(PVH_INFO_START + hvm_start_info.magic), XEN_HVM_START_MAGIC_VALUE);
    assert.equal(cstring(mem, Number(mem.readU64(PVH_INFO_START + hvm_start_info.cmdline_paddr))), "console=ttyS0 panic=-1");
    assert.equal(mem.readU64(PVH_INFO_START + hvm_start_info.rsdp_paddr), BigInt(r.rsdpAddress!));
    assert.equal(mem.readU32(PVH_INFO_START + hvm_start_info.nr_modules), 1);
  });
});

test("auto mode uses the 64-bit entry even when the ELF has a PVH note", () => {
  withMemory(64 * MiB, (mem) => {
    assert.equal(setupBoot(mem, { ...base(elf), bootMode: "auto" }).entry.regs.rip, 0x1000000n);
  });
});

test("prefer-pvh mode (Firecracker's choice) enters through PVH when the ELF has the note, else the 64-bit entry", () => {
  withMemory(64 * MiB, (mem) => {
    const r = setupBoot(mem, { ...base(elf), bootMode: "prefer-pvh" });
    assert.equal(r.kind, "pvh");
    assert.equal(r.entry.regs.rip, 0x1000040n);
  });
  const noNote = makeElfKernel({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: new Uint8Array(4096) }] });
  withMemory(64 * MiB, (mem) => {
    const r = setupBoot(mem, { ...base(noNote), bootMode: "prefer-pvh" });
    assert.equal(r.kind, "elf");
    assert.equal(r.entry.regs.rip, 0x1000000n);
  });
});

test("a bzImage boots at load address + 0x200 with its header in the zero page", () => {
  withMemory(64 * MiB, (mem) => {
    const r = setupBoot(mem, base(makeBzImage({ payload: new Uint8Array(0x4000), cmdlineSize: 100 })));
    assert.equal(r.kind, "bzimage");
    assert.equal(r.entry.regs.rip, BigInt(r.kernel.kernelStart + 0x200));
    assert.equal(mem.readU32(hdr("cmdline_size")), 100);
    assert.equal(mem.readU32(hdr("cmd_line_ptr")), CMDLINE_START);
    assert.throws(() => setupBoot(mem, { ...base(makeBzImage({ payload: new Uint8Array(16), cmdlineSize: 10 })) }),
      (e: unknown) => e instanceof BootError && e.code === "ECMDLINETOOLONG");
  });
});

test("without ACPI there is no RSDP anywhere and the MP table describes the CPUs", () => {
  withMemory(64 * MiB, (mem) => {
    const r = setupBoot(mem, { ...base(elf), acpi: false });
    assert.equal(r.rsdpAddress, undefined);
    assert.equal(mem.readU64(ZERO_PAGE_START + boot_params.acpi_rsdp_addr), 0n);
    assert.ok(mem.read(ACPI_START, 0x1000).every((b) => b === 0));
    assert.equal(mem.readU32(MPTABLE_START), SMP_MAGIC_IDENT);
    assert.match(r.summary, /no ACPI/);
  });
});

test("extra DSDT devices end up in the DSDT", () => {
  withMemory(64 * MiB, (mem) => {
    const dev = mmioDeviceAml({ name: "V000", hid: "LNRO0005", uid: 0, base: 0xd0001000, sizeBytes: 0x1000, gsi: 5 });
    setupBoot(mem, { ...base(elf), extraDsdtDevices: [dev] });
    assert.ok(Buffer.from(mem.read(ACPI_START, 0x1000)).includes(Buffer.from(dev)));
  });
});

test("PVH is refused for a bzImage and for an ELF without the note", () => {
  withMemory(64 * MiB, (mem) => {
    const noNote = makeElfKernel({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: new Uint8Array(16) }] });
    assert.throws(() => setupBoot(mem, { ...base(makeBzImage({ payload: new Uint8Array(16) })), bootMode: "pvh" }),
      (e: unknown) => e instanceof BootError && e.code === "ENOPVHENTRY" && /bzImage/.test(e.message));
    assert.throws(() => setupBoot(mem, { ...base(noNote), bootMode: "pvh" }),
      (e: unknown) => e instanceof BootError && e.code === "ENOPVHENTRY" && /CONFIG_PVH/.test(e.message));
  });
});

test("an impossible vCPU count is refused before anything is written", () => {
  withMemory(64 * MiB, (mem) => {
    assert.throws(() => setupBoot(mem, { ...base(elf), cpus: 0 }), (e: unknown) => e instanceof ArchError && e.code === "ETOOMANYCPUS");
    assert.ok(mem.read(0x1000000, 16).every((b) => b === 0));
  });
});

// Real kernels: flint's minimal vmlinux and bzImage, and Debian's distro kernel
// (scripts/run-tests.mjs prepares them in the cache before the tests run).
test("real kernels load and get an entry state", async () => {
  const minimal = await buildKernel();
  const debian = await debianKernel();
  const realKernels = [minimal.vmlinux, minimal.bzImage, debian.vmlinuz];
  for (const path of realKernels) {
    assert.ok(existsSync(path), path);
    withMemory(512 * MiB, (mem) => {
      const r = setupBoot(mem, { ...base(readFileSync(path)), kernelPath: path, initrd: new Uint8Array(MiB) });
      assert.ok(r.entry.regs.rip >= 0x100000n, path);
      assert.equal(translate(mem, r.entry.sregs.cr3!, r.entry.regs.rip), r.entry.regs.rip);
    });
  }
});
