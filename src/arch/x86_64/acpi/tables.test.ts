import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  ACPI_FADT_8042, ACPI_FADT_HW_REDUCED, ACPI_FADT_RESET_REGISTER, ACPI_RSDP_CHECKSUM_LENGTH, ACPI_SIG_RSDP,
  ACPI_X_SLEEP_ENABLE, ACPI_X_SLEEP_TYPE_MASK, ACPI_X_SLEEP_TYPE_POSITION, acpi_generic_address,
  acpi_table_fadt, acpi_table_header, acpi_table_madt, acpi_table_rsdp, acpi_table_xsdt,
} from "../../../linux/abi.generated.js";
import { GuestMemory } from "../../../memory/guest-memory.js";
import { byteSum } from "../../../memory/le.js";
import { ArchError } from "../errors.js";
import {
  ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
  ACPI_START, GED_GSI, IOAPIC_START, LAPIC_START, MiB, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
} from "../layout.js";
import { gedDeviceAml, mmioDeviceAml, vmGenIdDeviceAml } from "./dsdt.js";
import { buildAcpiTables } from "./tables.js";

function withMemory(fn: (mem: GuestMemory) => void): void {
  const mem = GuestMemory.create([{ guestBase: 0, size: 2 * MiB }]);
  try { fn(mem); } finally { mem.dispose(); }
}

const text = (mem: GuestMemory, a: number, n: number): string => Buffer.from(mem.read(a, n)).toString("latin1");

/** Follows RSDP -> XSDT -> tables the way an OS does, checking every checksum. */
function walk(mem: GuestMemory) {
  let rsdp = -1;
  for (let a = ACPI_START; a < ACPI_END; a += 16) if (text(mem, a, 8) === ACPI_SIG_RSDP) { rsdp = a; break; }
  assert.ok(rsdp >= 0, "RSDP not found by a 16-byte scan of the BIOS area");
  assert.equal(byteSum(mem.slice(rsdp, ACPI_RSDP_CHECKSUM_LENGTH)), 0, "RSDP checksum");
  assert.equal(byteSum(mem.slice(rsdp, mem.readU32(rsdp + acpi_table_rsdp.length))), 0, "RSDP extended checksum");
  assert.equal(mem.readU8(rsdp + acpi_table_rsdp.revision), 2);
  const table = (a: number) => {
    const length = mem.readU32(a + acpi_table_header.length);
    assert.equal(byteSum(mem.slice(a, length)), 0, `checksum of ${text(mem, a, 4)}`);
    return { signature: text(mem, a, 4), address: a, length };
  };
  const xsdt = table(Number(mem.readU64(rsdp + acpi_table_rsdp.xsdt_physical_address)));
  const tables = new Map<string, { address: number; length: number }>([["XSDT", xsdt]]);
  for (let off = acpi_table_xsdt.table_offset_entry; off < xsdt.length; off += 8) {
    const t = table(Number(mem.readU64(xsdt.address + off)));
    tables.set(t.signature, t);
  }
  const fadt = tables.get("FACP")!;
  tables.set("DSDT", table(Number(mem.readU64(fadt.address + acpi_table_fadt.Xdsdt))));
  return { rsdp, tables };
}

test("the RSDP is found by a scan and leads to XSDT, FADT, MADT and DSDT with valid checksums", () => {
  withMemory((mem) => {
    const { rsdpAddress } = buildAcpiTables(mem, { cpus: 2 });
    const { rsdp, tables } = walk(mem);
    assert.equal(rsdp, rsdpAddress);
    assert.deepEqual([...tables.keys()].sort(), ["APIC", "DSDT", "FACP", "XSDT"]);
  });
});

test("the FADT is hardware-reduced with byte-wide sleep and reset registers at flint's ports", () => {
  withMemory((mem) => {
    buildAcpiTables(mem, { cpus: 1 });
    const f = walk(mem).tables.get("FACP")!.address;
    const flags = mem.readU32(f + acpi_table_fadt.flags);
    assert.ok(flags & ACPI_FADT_HW_REDUCED);
    assert.ok(flags & ACPI_FADT_RESET_REGISTER);
    assert.ok(mem.readU16(f + acpi_table_fadt.boot_flags) & ACPI_FADT_8042);
    const gas = (off: number) => ({
      space: mem.readU8(f + off + acpi_generic_address.space_id),
      bits: mem.readU8(f + off + acpi_generic_address.bit_width),
      address: Number(mem.readU64(f + off + acpi_generic_address.address)),
    });
    assert.deepEqual(gas(acpi_table_fadt.sleep_control), { space: 1, bits: 8, address: ACPI_SLEEP_CONTROL_PORT });
    assert.deepEqual(gas(acpi_table_fadt.sleep_status), { space: 1, bits: 8, address: ACPI_SLEEP_STATUS_PORT });
    assert.deepEqual(gas(acpi_table_fadt.reset_register), { space: 1, bits: 8, address: ACPI_RESET_PORT });
    assert.equal(mem.readU8(f + acpi_table_fadt.reset_value), ACPI_RESET_VALUE);
    assert.equal(text(mem, f + acpi_table_fadt.hypervisor_id, 8), "FLINTVMM");
    assert.equal(mem.readU8(f + acpi_table_header.revision), 6);
  });
});

test("the MADT has an enabled local APIC per vCPU, the IOAPIC, and LINT1 NMI, and no IRQ override", () => {
  withMemory((mem) => {
    buildAcpiTables(mem, { cpus: 3 });
    const m = walk(mem).tables.get("APIC")!;
    assert.equal(mem.readU32(m.address + acpi_table_madt.address), LAPIC_START);
    const entries: number[][] = [];
    for (let off = acpi_table_madt.SIZE; off < m.length; off += mem.readU8(m.address + off + 1)) {
      entries.push(Array.from(mem.read(m.address + off, mem.readU8(m.address + off + 1))));
    }
    const le32 = (x: number) => [x & 0xff, (x >> 8) & 0xff, (x >> 16) & 0xff, x >>> 24];
    assert.deepEqual(entries, [
      [0, 8, 0, 0, 1, 0, 0, 0],
      [0, 8, 1, 1, 1, 0, 0, 0],
      [0, 8, 2, 2, 1, 0, 0, 0],
      [1, 12, 3, 0, ...le32(IOAPIC_START), 0, 0, 0, 0],
      [4, 6, 0xff, 0, 0, 1],
    ]);
  });
});

test("the DSDT declares \\_S5_ with flint's sleep type so power-off writes SLP_TYP|SLP_EN", () => {
  withMemory((mem) => {
    buildAcpiTables(mem, { cpus: 1 });
    const d = walk(mem).tables.get("DSDT")!;
    const aml = Buffer.from(mem.read(d.address, d.length));
    // Name (\_S5_, Package (4) { 5, 0, 0, 0 }): NameOp, RootChar, "_S5_", PackageOp, PkgLength 7, 4 elements.
    const at = aml.indexOf(Buffer.from("\x08\\_S5_", "latin1"));
    assert.ok(at > 0);
    assert.deepEqual([...aml.subarray(at + 6, at + 14)], [0x12, 0x07, 0x04, 0x0a, ACPI_S5_SLEEP_TYPE, 0, 0, 0]);
    // What Linux's acpi_hw_extended_sleep() will write to the sleep control port.
    const value = ((ACPI_S5_SLEEP_TYPE << ACPI_X_SLEEP_TYPE_POSITION) & ACPI_X_SLEEP_TYPE_MASK) | ACPI_X_SLEEP_ENABLE;
    assert.equal(value, 0x34);
  });
});

test("too many DSDT devices for the ACPI area give ENOTABLESPACE", () => {
  withMemory((mem) => {
    const devices = Array.from({ length: 2000 }, (_, i) => mmioDeviceAml({
      name: `V${i.toString(16).toUpperCase().padStart(3, "0")}`, hid: "LNRO0005", uid: i,
      base: VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE, sizeBytes: VIRTIO_MMIO_SIZE, gsi: 5,
    }));
    assert.throws(() => buildAcpiTables(mem, { cpus: 1, extraDsdtDevices: devices }),
      (e: unknown) => e instanceof ArchError && e.code === "ENOTABLESPACE");
  });
});

test("iasl disassembles every table without checksum or parse errors, and recompiles the DSDT", () => {
    // iasl comes from Debian's acpica-tools (scripts/install-deps.sh); its absence fails the test.
    assert.equal(spawnSync("iasl", ["-v"], { encoding: "utf8" }).status, 0, "iasl is not installed (apt-get install acpica-tools)");
    withMemory((mem) => {
      const devices = [...[0, 1].map((i) => mmioDeviceAml({
        name: `V00${i}`, hid: "LNRO0005", uid: i, base: VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE, sizeBytes: VIRTIO_MMIO_SIZE, gsi: 5 + i,
      })), vmGenIdDeviceAml(0x1_2345_6780), gedDeviceAml(GED_GSI)];
      const info = buildAcpiTables(mem, { cpus: 2, extraDsdtDevices: devices });
      const dir = mkdtempSync(join(tmpdir(), "flint-acpi-"));
      try {
        const dsl = new Map<string, string>();
        // iasl 20200925 cannot read a bare RSDP file; the walk above checks it.
        for (const t of info.tables.filter((x) => x.signature !== ACPI_SIG_RSDP)) {
          const dat = join(dir, `${t.signature}.dat`);
          writeFileSync(dat, mem.read(t.address, t.length));
          const r = spawnSync("iasl", ["-d", dat], { encoding: "utf8", cwd: dir });
          const out = `${r.stdout}${r.stderr}`;
          assert.equal(r.status, 0, out);
          assert.doesNotMatch(out, /error|warning|incorrect|invalid/i, `${t.signature}: ${out}`);
          const source = readFileSync(join(dir, `${t.signature}.dsl`), "utf8");
          assert.doesNotMatch(source, /incorrect|invalid|unknown/i, `${t.signature}.dsl`);
          dsl.set(t.signature, source);
        }
        const dsdt = dsl.get("DSDT")!;
        assert.match(dsdt, /Name \(\\_S5, Package \(0x04\)/);
        assert.match(dsdt, /EisaId \("PNP0501"\)/);
        assert.match(dsdt, /IO \(Decode16,\s+0x03F8,[^,]*0x03F8,[^,]*0x01,[^,]*0x08,/);
        assert.match(dsdt, /IRQNoFlags \(\)\s+\{4\}/);
        // The i8042 with its keyboard IRQ: Linux's i8042 driver needs it to get IRQ 1 on a hardware-reduced platform.
        assert.match(dsdt, /Device \(PS2K\)[\s\S]*EisaId \("PNP0303"\)[\s\S]*IO \(Decode16,\s+0x0060,[^,]*0x0060,[^,]*0x01,[^,]*0x01,[\s\S]*IO \(Decode16,\s+0x0064,[^,]*0x0064,[^,]*0x01,[^,]*0x01,[\s\S]*IRQNoFlags \(\)\s+\{1\}/);
        assert.match(dsdt, /Device \(V001\)[\s\S]*"LNRO0005"[\s\S]*Memory32Fixed \(ReadWrite,\s+0xD0002000,[^,]*0x00001000,[\s\S]*Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s+\{\s+0x00000006,/);
        // VMGenID as Linux's drivers/virt/vmgenid.c binds it, and the Generic Event Device whose _EVT notifies it.
        assert.match(dsdt, /Device \(VGEN\)\s+\{\s+Name \(_HID, "VMGENCTR"\)[^\n]*\n\s+Name \(_CID, "VM_GEN_COUNTER"\)/);
        assert.match(dsdt, /Method \(ADDR, 0, NotSerialized\)\s+\{\s+Return \(Package \(0x02\)\s+\{\s+0x23456780,\s+One\s+\}\)/);
        assert.match(dsdt, /Device \(GED0\)\s+\{\s+Name \(_HID, "ACPI0013"[\s\S]*Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s+\{\s+0x00000017,/);
        assert.match(dsdt, /Method \(_EVT, 1, Serialized\)[^\n]*\s+\{\s+If \(\(Arg0 == 0x17\)\)\s+\{\s+Notify \(\\_SB\.VGEN, 0x80\)/);
        assert.match(dsl.get("FACP")!, /Hardware Reduced \(V5\) : 1/);
        assert.match(dsl.get("APIC")!, /I\/O Apic ID : 02/);
        // The one error iasl's compiler reports is its style rule on _HID "VMGENCTR" (not four letters and four hex
        // digits): the id Linux's vmgenid driver matches, so kept. Everything else must recompile cleanly.
        const r = spawnSync("iasl", ["-f", join(dir, "DSDT.dsl")], { encoding: "utf8", cwd: dir });
        const compiled = `${r.stdout}${r.stderr}`;
        const errors = [...compiled.matchAll(/^\s*Error\s+(\d+)/gm)].map((m) => m[1]);
        assert.deepEqual(errors, ["6035"], compiled);
        assert.match(compiled, /_HID suffix must be all hex digits/, compiled);
        assert.match(compiled, /Name \(_HID, "VMGENCTR"\)[\s\S]*Error\s+6035/, compiled);
        assert.match(compiled, /1 Errors, 0 Warnings/, compiled);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
