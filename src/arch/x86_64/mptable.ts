/**
 * The Intel MultiProcessor Specification 1.4 tables: an MP floating pointer
 * structure (§4.1) in the EBDA, where Linux's smp_scan_config() looks
 * (arch/x86/kernel/mpparse.c scans 639 KiB..640 KiB), followed by the MP
 * configuration table (§4.2) describing:
 *
 *   - one processor entry per vCPU, local APIC ids 0..cpus-1, the first is the BSP;
 *   - one ISA bus (id 0);
 *   - the KVM in-kernel IOAPIC, id `cpus`, at IOAPIC_START, 24 pins;
 *   - an I/O interrupt entry routing bus IRQ i to IOAPIC pin i for every pin
 *     (ISA IRQs 0..15 and device IRQs 16..23, as Firecracker does: KVM's default
 *     GSI routing sends GSI i to IOAPIC pin i);
 *   - local interrupts: ExtINT on LINT0 of the BSP, NMI on LINT1 of every CPU
 *     (the "default configuration" of MP spec §5.1, Table 5-3).
 *
 * Linux uses these tables when booted with acpi=off or without ACPI tables.
 */
import {
  BUSTYPE_ISA, CPU_BOOTPROCESSOR, CPU_ENABLED, KVM_IOAPIC_NUM_PINS, MP_APIC_ALL, MP_BUS, MP_INTSRC, MP_IOAPIC,
  MP_IRQPOL_DEFAULT, MP_IRQTRIG_DEFAULT, MP_LINTSRC, MP_PROCESSOR, MPC_APIC_USABLE, MPC_SIGNATURE, SMP_MAGIC_IDENT,
  mp_ExtINT, mp_INT, mp_NMI, mpc_bus, mpc_cpu, mpc_intsrc, mpc_ioapic, mpc_lintsrc, mpc_table, mpf_intel,
} from "../../linux/abi.generated.js";
import type { GuestMemory } from "../../memory/guest-memory.js";
import { byteSum, dataView, setU16, setU32, setU8 } from "../../memory/le.js";
import { ArchError, hex } from "./errors.js";
import { ACPI_START, IOAPIC_START, LAPIC_START, MPTABLE_START } from "./layout.js";

/**
 * Most vCPUs the firmware tables describe: xAPIC ids are 8 bits, 0xff is the
 * broadcast id, and the IOAPIC takes the id after the last CPU.
 */
export const MAX_CPUS = 254;

/** MP spec revision 1.4, as stored in mpf_intel.specification and mpc_table.spec (§4.1, §4.2). */
export const MP_SPEC_REVISION = 4;
/**
 * Local APIC / IOAPIC version reported in the tables: 0x14 is an integrated
 * APIC, the value KVM's emulated local APIC reports (arch/x86/kvm/lapic.c APIC_VERSION).
 */
export const MP_APIC_VERSION = 0x14;
/** Processor signature: family 6 (MP spec Table 4-5, CPUID.1:EAX layout). */
export const MP_CPU_SIGNATURE = 6 << 8;
/** Feature flags: FPU (bit 0) and APIC (bit 9) of CPUID.1:EDX (MP spec Table 4-6). */
export const MP_CPU_FEATURES = (1 << 0) | (1 << 9);
/** mpc_table.oem and productid, space padded (MP spec Table 4-2). */
const OEM_ID = "FLINT   ";
const PRODUCT_ID = "MICROVM     ";
/** The ISA bus id used by every interrupt entry. */
const ISA_BUS_ID = 0;

/** Throws unless 1 <= cpus <= MAX_CPUS. */
export function checkCpuCount(cpus: number): void {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_CPUS) {
    throw new ArchError("ETOOMANYCPUS", `Cannot describe ${cpus} vCPUs in the firmware tables: the count must be between 1 and ${MAX_CPUS}`);
  }
}

/** Bytes the MP floating pointer and configuration table need for `cpus` vCPUs. */
export function mpTableSize(cpus: number): number {
  return mpf_intel.SIZE + mpc_table.SIZE + cpus * mpc_cpu.SIZE + mpc_bus.SIZE + mpc_ioapic.SIZE
    + KVM_IOAPIC_NUM_PINS * mpc_intsrc.SIZE + 2 * mpc_lintsrc.SIZE;
}

function ascii(v: DataView, off: number, s: string): void {
  for (let i = 0; i < s.length; i++) setU8(v, off + i, s.charCodeAt(i));
}

/**
 * Writes the MP floating pointer at MPTABLE_START and the configuration table
 * right after it, for `cpus` vCPUs. Returns the address of the configuration table.
 */
export function writeMpTable(mem: GuestMemory, cpus: number): { mpcAddress: number; sizeBytes: number } {
  checkCpuCount(cpus);
  const sizeBytes = mpTableSize(cpus);
  if (MPTABLE_START + sizeBytes > ACPI_START || !mem.contains(MPTABLE_START, sizeBytes)) {
    throw new ArchError("ENOTABLESPACE", `Cannot write the MP table: ${sizeBytes} bytes at ${hex(MPTABLE_START)} do not fit below ${hex(ACPI_START)} in guest memory`);
  }
  const bytes = mem.slice(MPTABLE_START, sizeBytes);
  bytes.fill(0);
  const v = dataView(bytes);
  const ioapicId = cpus;
  const mpcOffset = mpf_intel.SIZE;

  // MP floating pointer structure (§4.1).
  setU32(v, mpf_intel.signature, SMP_MAGIC_IDENT);
  setU32(v, mpf_intel.physptr, MPTABLE_START + mpcOffset);
  setU8(v, mpf_intel.length, mpf_intel.SIZE / 16); // in 16-byte paragraphs
  setU8(v, mpf_intel.specification, MP_SPEC_REVISION);
  setU8(v, mpf_intel.checksum, (256 - byteSum(bytes.subarray(0, mpf_intel.SIZE))) & 0xff);

  // Configuration table entries (§4.3), in the order the spec lists them.
  let off = mpcOffset + mpc_table.SIZE;
  let count = 0;
  for (let id = 0; id < cpus; id++) {
    setU8(v, off + mpc_cpu.type, MP_PROCESSOR);
    setU8(v, off + mpc_cpu.apicid, id);
    setU8(v, off + mpc_cpu.apicver, MP_APIC_VERSION);
    setU8(v, off + mpc_cpu.cpuflag, CPU_ENABLED | (id === 0 ? CPU_BOOTPROCESSOR : 0));
    setU32(v, off + mpc_cpu.cpufeature, MP_CPU_SIGNATURE);
    setU32(v, off + mpc_cpu.featureflag, MP_CPU_FEATURES);
    off += mpc_cpu.SIZE; count++;
  }
  setU8(v, off + mpc_bus.type, MP_BUS);
  setU8(v, off + mpc_bus.busid, ISA_BUS_ID);
  ascii(v, off + mpc_bus.bustype, BUSTYPE_ISA.padEnd(6, " "));
  off += mpc_bus.SIZE; count++;

  setU8(v, off + mpc_ioapic.type, MP_IOAPIC);
  setU8(v, off + mpc_ioapic.apicid, ioapicId);
  setU8(v, off + mpc_ioapic.apicver, MP_APIC_VERSION);
  setU8(v, off + mpc_ioapic.flags, MPC_APIC_USABLE);
  setU32(v, off + mpc_ioapic.apicaddr, IOAPIC_START);
  off += mpc_ioapic.SIZE; count++;

  for (let pin = 0; pin < KVM_IOAPIC_NUM_PINS; pin++) {
    setU8(v, off + mpc_intsrc.type, MP_INTSRC);
    setU8(v, off + mpc_intsrc.irqtype, mp_INT);
    setU16(v, off + mpc_intsrc.irqflag, MP_IRQPOL_DEFAULT | MP_IRQTRIG_DEFAULT);
    setU8(v, off + mpc_intsrc.srcbus, ISA_BUS_ID);
    setU8(v, off + mpc_intsrc.srcbusirq, pin);
    setU8(v, off + mpc_intsrc.dstapic, ioapicId);
    setU8(v, off + mpc_intsrc.dstirq, pin);
    off += mpc_intsrc.SIZE; count++;
  }
  const lint = (irqtype: number, destapic: number, destapiclint: number): void => {
    setU8(v, off + mpc_lintsrc.type, MP_LINTSRC);
    setU8(v, off + mpc_lintsrc.irqtype, irqtype);
    setU16(v, off + mpc_lintsrc.irqflag, MP_IRQPOL_DEFAULT | MP_IRQTRIG_DEFAULT);
    setU8(v, off + mpc_lintsrc.srcbusid, ISA_BUS_ID);
    setU8(v, off + mpc_lintsrc.srcbusirq, 0);
    setU8(v, off + mpc_lintsrc.destapic, destapic);
    setU8(v, off + mpc_lintsrc.destapiclint, destapiclint);
    off += mpc_lintsrc.SIZE; count++;
  };
  lint(mp_ExtINT, 0, 0);
  lint(mp_NMI, MP_APIC_ALL, 1);

  // Configuration table header (§4.2), checksummed over header and entries.
  const mpcLength = off - mpcOffset;
  ascii(v, mpcOffset + mpc_table.signature, MPC_SIGNATURE);
  setU16(v, mpcOffset + mpc_table.length, mpcLength);
  setU8(v, mpcOffset + mpc_table.spec, MP_SPEC_REVISION);
  ascii(v, mpcOffset + mpc_table.oem, OEM_ID);
  ascii(v, mpcOffset + mpc_table.productid, PRODUCT_ID);
  setU16(v, mpcOffset + mpc_table.oemcount, count);
  setU32(v, mpcOffset + mpc_table.lapic, LAPIC_START);
  const mpc = bytes.subarray(mpcOffset, off);
  setU8(v, mpcOffset + mpc_table.checksum, (256 - byteSum(mpc)) & 0xff);
  return { mpcAddress: MPTABLE_START + mpcOffset, sizeBytes };
}
