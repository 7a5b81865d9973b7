/**
 * The GDT and IDT flint loads before entering the kernel.
 *
 * Documentation/x86/boot.rst, "64-bit Boot Protocol": "a GDT must be loaded
 * with the descriptors for selectors __BOOT_CS(0x10) and __BOOT_DS(0x18); both
 * descriptors must be 4G flat segment; __BOOT_CS must have execute/read
 * permission, and __BOOT_DS must have read/write permission". The PVH entry
 * (xen docs/misc/pvh.pandoc) wants a flat 32-bit code segment, flat data
 * segments and a 32-bit TSS in TR, so PVH gets the same table with a 32-bit
 * code descriptor in the code slot.
 *
 * Layout (4 entries, 32 bytes: BOOT_GDT_START..BOOT_IDT_START):
 *   0x00 null   0x08 TSS   0x10 code (__BOOT_CS)   0x18 data (__BOOT_DS)
 * Descriptor format: Intel SDM vol. 3, §3.4.5 "Segment Descriptors".
 */
import type { GuestMemory } from "../../memory/guest-memory.js";
import type { KvmDtable, KvmSegment } from "../../kvm/types.js";
import { BOOT_GDT_START, BOOT_IDT_START } from "./layout.js";

/** Size of one legacy segment descriptor in bytes. */
export const GDT_ENTRY_SIZE = 8;
/** The boot TSS selector (flint's choice; boot.rst leaves the TSS to the loader). */
export const BOOT_TSS_SELECTOR = 0x08;
/** __BOOT_CS of boot.rst "64-bit Boot Protocol". */
export const BOOT_CS_SELECTOR = 0x10;
/** __BOOT_DS of boot.rst "64-bit Boot Protocol". */
export const BOOT_DS_SELECTOR = 0x18;

/** Segment type: data, read/write, accessed (SDM vol. 3, Table 3-1). */
export const SEG_TYPE_DATA_READ_WRITE_ACCESSED = 0x3;
/** Segment type: code, execute/read, accessed (SDM vol. 3, Table 3-1). */
export const SEG_TYPE_CODE_EXEC_READ_ACCESSED = 0xb;
/** System-segment type: 32-bit TSS (busy); in IA-32e mode, 64-bit TSS (busy) (SDM vol. 3, Table 3-2). */
export const SEG_TYPE_TSS_BUSY = 0xb;
/** The architectural minimum TSS limit (104 bytes - 1, SDM vol. 3 §7.2.1). */
export const TSS_MIN_LIMIT = 0x67;

/** The fields of a segment descriptor, one per SDM bit field. */
export interface SegmentDescriptor {
  base: number;
  /** 20-bit limit, in bytes or (g = 1) 4 KiB units. */
  limit: number;
  type: number;
  /** 1 for code/data segments, 0 for system segments (TSS, LDT). */
  s: number;
  dpl: number;
  present: number;
  avl: number;
  /** 64-bit code segment. */
  l: number;
  /** Default operation size 32-bit / big. */
  db: number;
  /** Limit granularity is 4 KiB. */
  g: number;
}

/** Encodes a descriptor as the 64-bit value stored in the GDT. */
export function encodeGdtEntry(d: SegmentDescriptor): bigint {
  const base = BigInt(d.base >>> 0);
  const limit = BigInt(d.limit & 0xfffff);
  return (limit & 0xffffn)
    | ((base & 0xffffffn) << 16n)
    | (BigInt(d.type & 0xf) << 40n)
    | (BigInt(d.s & 1) << 44n)
    | (BigInt(d.dpl & 3) << 45n)
    | (BigInt(d.present & 1) << 47n)
    | ((limit >> 16n) << 48n)
    | (BigInt(d.avl & 1) << 52n)
    | (BigInt(d.l & 1) << 53n)
    | (BigInt(d.db & 1) << 54n)
    | (BigInt(d.g & 1) << 55n)
    | ((base >> 24n) << 56n);
}

/**
 * Converts a GDT descriptor and its selector to the KvmSegment KVM_SET_SREGS
 * takes (the hidden part of a segment register). The limit is expanded to
 * bytes when the granularity bit is set; a not-present descriptor is unusable.
 */
export function gdtEntryToSegment(entry: bigint, selector: number): KvmSegment {
  const bits = (shift: bigint, width: bigint): number => Number((entry >> shift) & ((1n << width) - 1n));
  const base = BigInt(bits(16n, 24n)) | (BigInt(bits(56n, 8n)) << 24n);
  const rawLimit = bits(0n, 16n) | (bits(48n, 4n) << 16);
  const g = bits(55n, 1n);
  const present = bits(47n, 1n);
  return {
    base,
    limit: g ? ((rawLimit << 12) | 0xfff) >>> 0 : rawLimit,
    selector,
    type: bits(40n, 4n),
    present,
    dpl: bits(45n, 2n),
    db: bits(54n, 1n),
    s: bits(44n, 1n),
    l: bits(53n, 1n),
    g,
    avl: bits(52n, 1n),
    unusable: present ? 0 : 1,
  };
}

const flat = { base: 0, limit: 0xfffff, s: 1, dpl: 0, present: 1, avl: 0, g: 1 };

/** Which entry the boot GDT is for. */
export type BootGdtMode = "long64" | "protected32";

/** The boot GDT's descriptors, indexed by selector / 8. */
export function bootGdtEntries(mode: BootGdtMode): bigint[] {
  const code = mode === "long64"
    ? { ...flat, type: SEG_TYPE_CODE_EXEC_READ_ACCESSED, l: 1, db: 0 }
    : { ...flat, type: SEG_TYPE_CODE_EXEC_READ_ACCESSED, l: 0, db: 1 };
  const entries = [0n, 0n, 0n, 0n];
  entries[BOOT_TSS_SELECTOR / GDT_ENTRY_SIZE] = encodeGdtEntry({
    base: 0, limit: TSS_MIN_LIMIT, type: SEG_TYPE_TSS_BUSY, s: 0, dpl: 0, present: 1, avl: 0, l: 0, db: 0, g: 0,
  });
  entries[BOOT_CS_SELECTOR / GDT_ENTRY_SIZE] = encodeGdtEntry(code);
  entries[BOOT_DS_SELECTOR / GDT_ENTRY_SIZE] = encodeGdtEntry({ ...flat, type: SEG_TYPE_DATA_READ_WRITE_ACCESSED, l: 0, db: 1 });
  return entries;
}

/** The segment registers, GDTR and IDTR matching a boot GDT. */
export interface BootSegments {
  cs: KvmSegment;
  ds: KvmSegment;
  tr: KvmSegment;
  gdt: KvmDtable;
  idt: KvmDtable;
}

/**
 * Writes the boot GDT at BOOT_GDT_START and an empty IDT at BOOT_IDT_START
 * (one zero entry: the kernel loads its own IDT before enabling interrupts,
 * and any exception before that is a triple fault, which KVM reports as a
 * shutdown), and returns the register values that describe them.
 */
export function writeBootGdt(mem: GuestMemory, mode: BootGdtMode): BootSegments {
  const entries = bootGdtEntries(mode);
  const gdtBytes = entries.length * GDT_ENTRY_SIZE;
  entries.forEach((e, i) => mem.writeU64(BOOT_GDT_START + i * GDT_ENTRY_SIZE, e));
  mem.writeU64(BOOT_IDT_START, 0n);
  const seg = (selector: number): KvmSegment => gdtEntryToSegment(entries[selector / GDT_ENTRY_SIZE]!, selector);
  return {
    cs: seg(BOOT_CS_SELECTOR),
    ds: seg(BOOT_DS_SELECTOR),
    tr: seg(BOOT_TSS_SELECTOR),
    gdt: { base: BigInt(BOOT_GDT_START), limit: gdtBytes - 1 },
    idt: { base: BigInt(BOOT_IDT_START), limit: GDT_ENTRY_SIZE - 1 },
  };
}
