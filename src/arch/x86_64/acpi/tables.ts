/**
 * flint's ACPI tables, written at ACPI_START (inside the 0xE0000-0xFFFFF
 * range the OS scans for the RSDP, ACPI 6.x §5.2.5.1):
 *
 *   RSDP (rev 2) -> XSDT -> FADT -> DSDT
 *                        -> MADT
 *
 * The platform is **hardware-reduced** (ACPI 6.x §4.1): no PM1 blocks, no
 * GPEs, no SCI. Power-off goes through the FADT SLEEP_CONTROL_REG, reset
 * through RESET_REG, both single bytes in I/O space that flint's devices
 * handle (ACPI_SLEEP_CONTROL_PORT, ACPI_RESET_PORT).
 *
 * Every table starts with the common header (§5.2.6) and is checksummed so its
 * bytes sum to zero. Layouts are ACPICA's (actbl*.h) via abi.generated.ts.
 */
import {
  ACPI_ACCESS_BIT_SHIFT, ACPI_ADR_SPACE_SYSTEM_IO, ACPI_FADT_8042, ACPI_FADT_HW_REDUCED, ACPI_FADT_NO_CMOS_RTC,
  ACPI_FADT_NO_VGA, ACPI_FADT_POWER_BUTTON, ACPI_FADT_RESET_REGISTER, ACPI_FADT_SLEEP_BUTTON,
  ACPI_MADT_ENABLED, ACPI_MADT_PCAT_COMPAT, ACPI_MADT_POLARITY_CONFORMS, ACPI_MADT_TRIGGER_CONFORMS,
  ACPI_MADT_TYPE_IO_APIC, ACPI_MADT_TYPE_LOCAL_APIC,
  ACPI_MADT_TYPE_LOCAL_APIC_NMI, ACPI_OEM_ID_SIZE, ACPI_OEM_TABLE_ID_SIZE, ACPI_RSDP_CHECKSUM_LENGTH,
  ACPI_RSDP_XCHECKSUM_LENGTH, ACPI_SIG_DSDT, ACPI_SIG_FADT, ACPI_SIG_MADT, ACPI_SIG_RSDP, ACPI_SIG_XSDT,
  acpi_generic_address, acpi_madt_io_apic, acpi_madt_local_apic,
  acpi_madt_local_apic_nmi, acpi_subtable_header, acpi_table_fadt, acpi_table_header, acpi_table_madt,
  acpi_table_rsdp, acpi_table_xsdt,
} from "../../../linux/abi.generated.js";
import type { GuestMemory } from "../../../memory/guest-memory.js";
import { byteSum, dataView, setU16, setU32, setU64, setU8 } from "../../../memory/le.js";
import { ArchError, hex } from "../errors.js";
import {
  ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_START,
  IOAPIC_START, LAPIC_START,
} from "../layout.js";
import { checkCpuCount } from "../mptable.js";
import type { Aml } from "./aml.js";
import { dsdtAml } from "./dsdt.js";

/** OEM ID of every table header and the RSDP (§5.2.6). */
export const ACPI_OEM_ID = "FLINT ";
/** OEM Table ID of every table header (§5.2.6). */
export const ACPI_OEM_TABLE_ID = "FLINTVMM";
const ACPI_OEM_REVISION = 1;
const ACPI_CREATOR_ID = "FLNT";
const ACPI_CREATOR_REVISION = 1;
/** FADT "Hypervisor Vendor Identity" (§5.2.9, ACPI 6.0+). */
export const ACPI_HYPERVISOR_ID = "FLINTVMM";

/** RSDP revision 2: ACPI 2.0+ with an XSDT (§5.2.5.3). */
const RSDP_REVISION = 2;
/** XSDT revision 1 (§5.2.8). */
const XSDT_REVISION = 1;
/** FADT 6.1, the layout ACPICA implements (actbl.h ACPI_FADT_CONFORMANCE "ACPI 6.1 (FADT version 6)"). */
const FADT_REVISION = 6;
const FADT_MINOR_REVISION = 1;
/** MADT revision 4 (ACPI 6.0/6.1, §5.2.12). */
const MADT_REVISION = 4;
/** DSDT revision 2: AML integers are 64-bit (§5.2.11.1). */
const DSDT_REVISION = 2;
/** Local APIC NMI "ACPI Processor UID" meaning all processors (§5.2.12.7). */
const ACPI_ALL_PROCESSORS = 0xff;
/** The LINT input NMI is wired to on every local APIC (as in MP spec Table 5-3). */
const NMI_LINT = 1;
/** Table alignment within the ACPI area. */
const TABLE_ALIGN = 16;

/** Options for buildAcpiTables. */
export interface AcpiOptions {
  /** Number of vCPUs (local APIC ids 0..cpus-1; the IOAPIC gets id `cpus`). */
  cpus: number;
  /** AML Device objects to add to \_SB_ in the DSDT (see mmioDeviceAml). */
  extraDsdtDevices?: readonly Aml[];
}

/** Where each table went. */
export interface AcpiTablesInfo {
  rsdpAddress: number;
  tables: { signature: string; address: number; length: number }[];
}

function ascii(v: DataView, off: number, s: string): void {
  for (let i = 0; i < s.length; i++) setU8(v, off + i, s.charCodeAt(i));
}

const checksumOf = (b: Uint8Array): number => (256 - byteSum(b)) & 0xff;

/** A table of `length` bytes with its common header filled in (checksum last, by finish()). */
function newTable(signature: string, revision: number, length: number): { bytes: Uint8Array; v: DataView } {
  const bytes = new Uint8Array(length);
  const v = dataView(bytes);
  ascii(v, acpi_table_header.signature, signature);
  setU32(v, acpi_table_header.length, length);
  setU8(v, acpi_table_header.revision, revision);
  ascii(v, acpi_table_header.oem_id, ACPI_OEM_ID.slice(0, ACPI_OEM_ID_SIZE));
  ascii(v, acpi_table_header.oem_table_id, ACPI_OEM_TABLE_ID.slice(0, ACPI_OEM_TABLE_ID_SIZE));
  setU32(v, acpi_table_header.oem_revision, ACPI_OEM_REVISION);
  ascii(v, acpi_table_header.asl_compiler_id, ACPI_CREATOR_ID);
  setU32(v, acpi_table_header.asl_compiler_revision, ACPI_CREATOR_REVISION);
  return { bytes, v };
}

function finish(t: { bytes: Uint8Array }): Uint8Array {
  t.bytes[acpi_table_header.checksum] = checksumOf(t.bytes);
  return t.bytes;
}

/** A one-byte register in System I/O space as a Generic Address Structure (§5.2.3.2). */
function ioByteRegister(v: DataView, off: number, port: number): void {
  const BITS = 8;
  setU8(v, off + acpi_generic_address.space_id, ACPI_ADR_SPACE_SYSTEM_IO);
  setU8(v, off + acpi_generic_address.bit_width, BITS);
  setU8(v, off + acpi_generic_address.bit_offset, 0);
  // Access size 1 = byte: ACPI_ACCESS_BIT_WIDTH(size) = 1 << (size + ACPI_ACCESS_BIT_SHIFT).
  setU8(v, off + acpi_generic_address.access_width, Math.log2(BITS) - ACPI_ACCESS_BIT_SHIFT);
  setU64(v, off + acpi_generic_address.address, port);
}

/** RSDP (§5.2.5.3): checksum over the ACPI 1.0 part, extended checksum over all of it. */
export function rsdpTable(xsdtAddress: number): Uint8Array {
  const bytes = new Uint8Array(ACPI_RSDP_XCHECKSUM_LENGTH);
  const v = dataView(bytes);
  ascii(v, acpi_table_rsdp.signature, ACPI_SIG_RSDP);
  ascii(v, acpi_table_rsdp.oem_id, ACPI_OEM_ID);
  setU8(v, acpi_table_rsdp.revision, RSDP_REVISION);
  setU32(v, acpi_table_rsdp.length, ACPI_RSDP_XCHECKSUM_LENGTH);
  setU64(v, acpi_table_rsdp.xsdt_physical_address, xsdtAddress);
  setU8(v, acpi_table_rsdp.checksum, checksumOf(bytes.subarray(0, ACPI_RSDP_CHECKSUM_LENGTH)));
  setU8(v, acpi_table_rsdp.extended_checksum, checksumOf(bytes));
  return bytes;
}

/** XSDT (§5.2.8): 64-bit pointers to every table but the DSDT (which the FADT points to). */
export function xsdtTable(entries: readonly number[]): Uint8Array {
  const t = newTable(ACPI_SIG_XSDT, XSDT_REVISION, acpi_table_xsdt.table_offset_entry + 8 * entries.length);
  entries.forEach((a, i) => setU64(t.v, acpi_table_xsdt.table_offset_entry + 8 * i, a));
  return finish(t);
}

/** FADT (§5.2.9), hardware-reduced. */
export function fadtTable(dsdtAddress: number): Uint8Array {
  const t = newTable(ACPI_SIG_FADT, FADT_REVISION, acpi_table_fadt.SIZE);
  const v = t.v;
  // Both DSDT pointers, equal: ACPICA warns only when they differ.
  setU32(v, acpi_table_fadt.dsdt, dsdtAddress);
  setU64(v, acpi_table_fadt.Xdsdt, dsdtAddress);
  // IA-PC boot architecture flags: there is an i8042 (reboot=k, keyboard probe); no VGA, no CMOS RTC.
  setU16(v, acpi_table_fadt.boot_flags, ACPI_FADT_8042 | ACPI_FADT_NO_VGA | ACPI_FADT_NO_CMOS_RTC);
  // No fixed-feature buttons, a reset register, hardware-reduced.
  setU32(v, acpi_table_fadt.flags, ACPI_FADT_HW_REDUCED | ACPI_FADT_RESET_REGISTER | ACPI_FADT_POWER_BUTTON | ACPI_FADT_SLEEP_BUTTON);
  ioByteRegister(v, acpi_table_fadt.reset_register, ACPI_RESET_PORT);
  setU8(v, acpi_table_fadt.reset_value, ACPI_RESET_VALUE);
  setU8(v, acpi_table_fadt.minor_revision, FADT_MINOR_REVISION);
  ioByteRegister(v, acpi_table_fadt.sleep_control, ACPI_SLEEP_CONTROL_PORT);
  ioByteRegister(v, acpi_table_fadt.sleep_status, ACPI_SLEEP_STATUS_PORT);
  ascii(v, acpi_table_fadt.hypervisor_id, ACPI_HYPERVISOR_ID);
  return finish(t);
}

/** Bytes of the MADT for `cpus` vCPUs. */
function madtLength(cpus: number): number {
  return acpi_table_madt.SIZE + cpus * acpi_madt_local_apic.SIZE + acpi_madt_io_apic.SIZE
    + acpi_madt_local_apic_nmi.SIZE;
}

/**
 * MADT (§5.2.12): one enabled Processor Local APIC per vCPU (UID = APIC id = index),
 * the IOAPIC (id `cpus`, GSI base 0), and NMI on LINT1 of all CPUs. There is no
 * interrupt source override: KVM's default routing wires ISA IRQ n (the PIT
 * on 0) to IOAPIC pin n, exactly as flint's MP table says, so identity is right.
 */
export function madtTable(cpus: number): Uint8Array {
  checkCpuCount(cpus);
  const t = newTable(ACPI_SIG_MADT, MADT_REVISION, madtLength(cpus));
  const v = t.v;
  setU32(v, acpi_table_madt.address, LAPIC_START);
  setU32(v, acpi_table_madt.flags, ACPI_MADT_PCAT_COMPAT); // KVM's irqchip has the dual 8259s
  let off = acpi_table_madt.SIZE;
  const sub = (type: number, size: number): number => {
    setU8(v, off + acpi_subtable_header.type, type);
    setU8(v, off + acpi_subtable_header.length, size);
    const at = off;
    off += size;
    return at;
  };
  for (let id = 0; id < cpus; id++) {
    const at = sub(ACPI_MADT_TYPE_LOCAL_APIC, acpi_madt_local_apic.SIZE);
    setU8(v, at + acpi_madt_local_apic.processor_id, id);
    setU8(v, at + acpi_madt_local_apic.id, id);
    setU32(v, at + acpi_madt_local_apic.lapic_flags, ACPI_MADT_ENABLED);
  }
  let at = sub(ACPI_MADT_TYPE_IO_APIC, acpi_madt_io_apic.SIZE);
  setU8(v, at + acpi_madt_io_apic.id, cpus);
  setU32(v, at + acpi_madt_io_apic.address, IOAPIC_START);
  setU32(v, at + acpi_madt_io_apic.global_irq_base, 0);
  at = sub(ACPI_MADT_TYPE_LOCAL_APIC_NMI, acpi_madt_local_apic_nmi.SIZE);
  setU8(v, at + acpi_madt_local_apic_nmi.processor_id, ACPI_ALL_PROCESSORS);
  setU16(v, at + acpi_madt_local_apic_nmi.inti_flags, ACPI_MADT_POLARITY_CONFORMS | ACPI_MADT_TRIGGER_CONFORMS);
  setU8(v, at + acpi_madt_local_apic_nmi.lint, NMI_LINT);
  return finish(t);
}

/** DSDT (§5.2.11.1): the header and the AML of dsdtAml(). */
export function dsdtTable(extraDevices: readonly Aml[] = []): Uint8Array {
  const aml = dsdtAml(extraDevices);
  const t = newTable(ACPI_SIG_DSDT, DSDT_REVISION, acpi_table_header.SIZE + aml.length);
  t.bytes.set(aml, acpi_table_header.SIZE);
  return finish(t);
}

const alignUp = (x: number, a: number): number => Math.ceil(x / a) * a;

/**
 * Writes RSDP, XSDT, FADT, MADT and DSDT into [ACPI_START, ACPI_END) and
 * returns the RSDP address (for boot_params.acpi_rsdp_addr or
 * hvm_start_info.rsdp_paddr; the RSDP is also where a scan finds it).
 */
export function buildAcpiTables(mem: GuestMemory, opts: AcpiOptions): AcpiTablesInfo {
  checkCpuCount(opts.cpus);
  const dsdt = dsdtTable(opts.extraDsdtDevices ?? []);
  const madt = madtTable(opts.cpus);
  const tableCount = 2; // FADT, MADT
  const sizes = [ACPI_RSDP_XCHECKSUM_LENGTH, acpi_table_xsdt.table_offset_entry + 8 * tableCount, acpi_table_fadt.SIZE, madt.length, dsdt.length];
  const addresses: number[] = [];
  let next = ACPI_START;
  for (const size of sizes) { addresses.push(next); next = alignUp(next + size, TABLE_ALIGN); }
  const end = addresses[addresses.length - 1]! + sizes[sizes.length - 1]!;
  if (end > ACPI_END || !mem.contains(ACPI_START, end - ACPI_START)) {
    throw new ArchError("ENOTABLESPACE", `Cannot write the ACPI tables: they need ${end - ACPI_START} bytes at ${hex(ACPI_START)} but only ${ACPI_END - ACPI_START} are reserved (too many DSDT devices?)`);
  }
  const [rsdpAddress, xsdtAddress, fadtAddress, madtAddress, dsdtAddress] = addresses as [number, number, number, number, number];
  const tables: [string, number, Uint8Array][] = [
    [ACPI_SIG_RSDP, rsdpAddress, rsdpTable(xsdtAddress)],
    [ACPI_SIG_XSDT, xsdtAddress, xsdtTable([fadtAddress, madtAddress])],
    [ACPI_SIG_FADT, fadtAddress, fadtTable(dsdtAddress)],
    [ACPI_SIG_MADT, madtAddress, madt],
    [ACPI_SIG_DSDT, dsdtAddress, dsdt],
  ];
  mem.fill(ACPI_START, end - ACPI_START, 0);
  for (const [, address, bytes] of tables) mem.write(address, bytes);
  return {
    rsdpAddress,
    tables: tables.map(([signature, address, bytes]) => ({ signature, address, length: bytes.length })),
  };
}
