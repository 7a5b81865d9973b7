/**
 * Detects and loads an x86-64 Linux kernel file into guest memory: an ELF
 * `vmlinux` (booted directly at its 64-bit entry, or at its PVH entry) or a
 * `bzImage` (booted through the 64-bit boot protocol, Documentation/x86/boot.rst).
 *
 * The file is untrusted: every header field that becomes an offset, size or
 * guest address is checked against the file and guest RAM before anything is
 * written, so a malformed or hostile file ends in a BootError, never in a
 * RangeError or a write outside the kernel's area.
 */
import {
  EI_CLASS, EI_DATA, EI_MAG0, EI_MAG1, EI_MAG2, EI_MAG3, EI_VERSION, ELFCLASS64, ELFDATA2LSB, ELFMAG0, ELFMAG1,
  ELFMAG2, ELFMAG3, EM_X86_64, ET_EXEC, EV_CURRENT, LOADED_HIGH, PT_LOAD, PT_NOTE, XEN_ELFNOTE_PHYS32_ENTRY,
  XLF_KERNEL_64, Elf64_Ehdr, Elf64_Nhdr, Elf64_Phdr, boot_params, setup_header,
} from "../linux/abi.generated.js";
import { lowRamEnd } from "../arch/x86_64/e820.js";
import { CMDLINE_MAX_SIZE, HIMEM_START, MMIO_GAP_START } from "../arch/x86_64/layout.js";
import type { GuestMemory } from "../memory/guest-memory.js";
import { dataView, getU16, getU32, getU64, getU8 } from "../memory/le.js";
import { BootError, hex, mib } from "./errors.js";

/** boot.rst: boot_flag at 0x1FE holds 0xAA55. */
export const BOOT_FLAG_MAGIC = 0xaa55;
/** boot.rst: header at 0x202 holds "HdrS" (0x53726448). */
export const SETUP_HEADER_MAGIC = 0x53726448;
/** boot.rst: the 64-bit entry point is the protected-mode load address plus 0x200. */
export const BZIMAGE_ENTRY64_OFFSET = 0x200;
/** boot.rst: "if the setup_sects field contains 0, the real value is 4". */
export const DEFAULT_SETUP_SECTS = 4;
/** boot.rst: a sector is 512 bytes, whatever the medium. */
export const SECTOR_BYTES = 512;
/** Oldest boot protocol flint loads: 2.12 introduced xloadflags (XLF_KERNEL_64). */
export const MIN_BOOT_PROTOCOL = 0x020c;
/** boot.rst, initrd_addr_max: the limit for protocols without the field, and flint's for ELF kernels. */
export const DEFAULT_INITRD_ADDR_MAX = 0x37ffffff;
/** The note name of Xen ELF notes (xen/interface/elfnote.h), NUL included. */
const XEN_NOTE_NAME = "Xen\0";

/** Where the setup header starts in a bzImage file and in struct boot_params. */
const HDR = boot_params.hdr;

/** A kernel loaded into guest memory. */
export interface KernelImage {
  kind: "elf" | "bzimage";
  /** Guest-physical 64-bit entry point (startup_64). */
  entry64: number;
  /** Guest-physical 32-bit PVH entry (XEN_ELFNOTE_PHYS32_ENTRY), ELF only, when the note is present. */
  pvhEntry?: number;
  /** Lowest guest address the kernel was written to. */
  kernelStart: number;
  /** First guest address after everything the kernel needs during early boot (bzImage: init_size from its runtime start). */
  kernelEnd: number;
  /** bzImage: the setup header bytes (from file offset 0x1F1) to copy into boot_params.hdr. */
  setupHeader?: Uint8Array;
  /** bzImage: boot protocol version, e.g. 0x020f. */
  protocolVersion?: number;
  /** Highest guest address the initrd may occupy (inclusive, boot.rst initrd_addr_max). */
  initrdAddrMax: number;
  /** Longest command line the kernel accepts, without the terminating NUL. */
  cmdlineMaxBytes: number;
}

/** Reads a 64-bit field and returns it as a number, or undefined if it is above 2^53. */
function u64(v: DataView, off: number): number | undefined {
  const x = getU64(v, off);
  return x <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(x) : undefined;
}

/** Loads `file` (an ELF vmlinux or a bzImage) into `mem`; `path` is only used in messages. */
export function loadKernel(mem: GuestMemory, file: Uint8Array, path: string): KernelImage {
  const v = dataView(file);
  if (file.length >= Elf64_Ehdr.SIZE && getU8(v, EI_MAG0) === ELFMAG0 && getU8(v, EI_MAG1) === ELFMAG1
    && getU8(v, EI_MAG2) === ELFMAG2 && getU8(v, EI_MAG3) === ELFMAG3) {
    return loadElf(mem, file, v, path);
  }
  if (file.length >= HDR + setup_header.header + 4 && getU16(v, HDR + setup_header.boot_flag) === BOOT_FLAG_MAGIC
    && getU32(v, HDR + setup_header.header) === SETUP_HEADER_MAGIC) {
    return loadBzImage(mem, file, v, path);
  }
  throw new BootError("EKERNELFORMAT", `Cannot load kernel: file '${path}' is neither an ELF vmlinux nor a bzImage`);
}

// ---------------------------------------------------------------------------
// ELF vmlinux (System V ABI, ELF-64 Object File Format)
// ---------------------------------------------------------------------------

interface Segment { fileOffset: number; fileBytes: number; paddr: number; memBytes: number }

function loadElf(mem: GuestMemory, file: Uint8Array, v: DataView, path: string): KernelImage {
  const bad = (why: string): never => {
    throw new BootError("EKERNELFORMAT", `Cannot load kernel: ELF file '${path}' ${why}`);
  };
  if (getU8(v, EI_CLASS) !== ELFCLASS64 || getU8(v, EI_DATA) !== ELFDATA2LSB || getU16(v, Elf64_Ehdr.e_machine) !== EM_X86_64) {
    bad("is not a 64-bit little-endian x86-64 image (build the kernel for x86_64)");
  }
  if (getU8(v, EI_VERSION) !== EV_CURRENT || getU16(v, Elf64_Ehdr.e_type) !== ET_EXEC) bad("is not an ELF executable (vmlinux is ET_EXEC)");
  const phoff = u64(v, Elf64_Ehdr.e_phoff);
  const phentsize = getU16(v, Elf64_Ehdr.e_phentsize);
  const phnum = getU16(v, Elf64_Ehdr.e_phnum);
  if (phoff === undefined || phnum === 0 || phentsize < Elf64_Phdr.SIZE || phoff + phnum * phentsize > file.length) {
    bad("has no valid program header table");
  }
  const entry = u64(v, Elf64_Ehdr.e_entry);

  const ram = lowRamEnd(mem.regions);
  const loads: Segment[] = [];
  let pvhEntry: number | undefined;
  for (let i = 0; i < phnum; i++) {
    const ph = phoff! + i * phentsize;
    const type = getU32(v, ph + Elf64_Phdr.p_type);
    if (type !== PT_LOAD && type !== PT_NOTE) continue;
    const fileOffset = u64(v, ph + Elf64_Phdr.p_offset);
    const fileBytes = u64(v, ph + Elf64_Phdr.p_filesz);
    if (fileOffset === undefined || fileBytes === undefined || fileOffset + fileBytes > file.length) {
      bad(`has program header ${i} pointing outside the file (truncated?)`);
    }
    if (type === PT_NOTE) {
      const align = u64(v, ph + Elf64_Phdr.p_align) === 8 ? 8 : 4;
      pvhEntry ??= findPvhEntry(file, v, fileOffset!, fileBytes!, align, bad);
      continue;
    }
    const paddr = u64(v, ph + Elf64_Phdr.p_paddr);
    const memBytes = u64(v, ph + Elf64_Phdr.p_memsz);
    if (memBytes === undefined || fileBytes! > memBytes) bad(`has segment ${i} whose file size exceeds its memory size`);
    if (memBytes === 0) continue;
    if (paddr === undefined || paddr < HIMEM_START || paddr + memBytes! > ram || !mem.contains(paddr, memBytes!)) {
      throw new BootError("EKERNELPLACEMENT", `Cannot load kernel '${path}': segment ${i} at physical ${hex(paddr ?? getU64(v, ph + Elf64_Phdr.p_paddr))}+${hex(memBytes!)} is not inside guest RAM between ${hex(HIMEM_START)} and ${hex(ram)}${paddr !== undefined && paddr >= HIMEM_START ? "; give the VM more memory" : ""}`);
    }
    loads.push({ fileOffset: fileOffset!, fileBytes: fileBytes!, paddr, memBytes: memBytes! });
  }
  if (loads.length === 0) bad("has no loadable segments");
  const inside = (a: number | undefined): boolean => a !== undefined && loads.some((s) => a >= s.paddr && a < s.paddr + s.fileBytes);
  if (!inside(entry)) bad(`has entry point ${hex(getU64(v, Elf64_Ehdr.e_entry))} outside its loaded segments (is it a vmlinux with a physical entry?)`);
  if (pvhEntry !== undefined && !inside(pvhEntry)) bad(`has a PVH entry note (${hex(pvhEntry)}) outside its loaded segments`);

  // Everything is checked: copy each segment and zero its bss.
  for (const s of loads) {
    mem.write(s.paddr, file.subarray(s.fileOffset, s.fileOffset + s.fileBytes));
    mem.fill(s.paddr + s.fileBytes, s.memBytes - s.fileBytes, 0);
  }
  return {
    kind: "elf",
    entry64: entry!,
    ...(pvhEntry !== undefined ? { pvhEntry } : {}),
    kernelStart: Math.min(...loads.map((s) => s.paddr)),
    kernelEnd: Math.max(...loads.map((s) => s.paddr + s.memBytes)),
    initrdAddrMax: DEFAULT_INITRD_ADDR_MAX,
    cmdlineMaxBytes: CMDLINE_MAX_SIZE - 1,
  };
}

/**
 * Scans a PT_NOTE segment for the Xen note XEN_ELFNOTE_PHYS32_ENTRY, whose
 * descriptor is the 32-bit physical PVH entry (Linux emits it with _ASM_PTR,
 * 8 bytes on x86-64; 4 bytes is accepted too).
 */
function findPvhEntry(file: Uint8Array, v: DataView, start: number, length: number, align: number, bad: (why: string) => never): number | undefined {
  const end = start + length;
  const pad = (n: number): number => Math.ceil(n / align) * align;
  let off = start;
  while (off + Elf64_Nhdr.SIZE <= end) {
    const nameBytes = getU32(v, off + Elf64_Nhdr.n_namesz);
    const descBytes = getU32(v, off + Elf64_Nhdr.n_descsz);
    const type = getU32(v, off + Elf64_Nhdr.n_type);
    const name = off + Elf64_Nhdr.SIZE;
    const desc = name + pad(nameBytes);
    const next = desc + pad(descBytes);
    if (desc + descBytes > end) bad("has a truncated ELF note");
    const isXen = nameBytes === XEN_NOTE_NAME.length
      && Buffer.from(file.buffer, file.byteOffset + name, nameBytes).toString("latin1") === XEN_NOTE_NAME;
    if (isXen && type === XEN_ELFNOTE_PHYS32_ENTRY) {
      if (descBytes === 4) return getU32(v, desc);
      if (descBytes === 8 && getU32(v, desc + 4) === 0) return getU32(v, desc);
      bad(`has a malformed PVH entry note (${descBytes} bytes, or not a 32-bit address)`);
    }
    off = next;
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// bzImage (Documentation/x86/boot.rst)
// ---------------------------------------------------------------------------

function loadBzImage(mem: GuestMemory, file: Uint8Array, v: DataView, path: string): KernelImage {
  const field = {
    u8: (f: keyof typeof setup_header): number => getU8(v, HDR + setup_header[f]),
    u16: (f: keyof typeof setup_header): number => getU16(v, HDR + setup_header[f]),
    u32: (f: keyof typeof setup_header): number => getU32(v, HDR + setup_header[f]),
    u64: (f: keyof typeof setup_header): bigint => getU64(v, HDR + setup_header[f]),
  };
  if (file.length < HDR + setup_header.SIZE) {
    throw new BootError("EKERNELFORMAT", `Cannot load kernel: bzImage '${path}' is truncated inside its setup header`);
  }
  const version = field.u16("version");
  const versionText = `${version >> 8}.${(version & 0xff).toString().padStart(2, "0")}`;
  if (version < MIN_BOOT_PROTOCOL || !(field.u16("xloadflags") & XLF_KERNEL_64)) {
    throw new BootError("EKERNELUNSUPPORTED", `Cannot load kernel: bzImage '${path}' (boot protocol ${versionText}) has no 64-bit entry point; flint needs protocol 2.12+ with XLF_KERNEL_64 (a 64-bit kernel from Linux 3.8 or later)`);
  }
  if (!(field.u8("loadflags") & LOADED_HIGH)) {
    throw new BootError("EKERNELUNSUPPORTED", `Cannot load kernel: '${path}' is a zImage (not loaded high); use a bzImage`);
  }
  const setupSects = field.u8("setup_sects") || DEFAULT_SETUP_SECTS;
  const setupBytes = (setupSects + 1) * SECTOR_BYTES;
  if (file.length <= setupBytes) {
    throw new BootError("EKERNELFORMAT", `Cannot load kernel: bzImage '${path}' ends before its protected-mode code (setup_sects ${setupSects})`);
  }
  const protectedMode = file.subarray(setupBytes);
  // boot.rst "64-bit Boot Protocol": the header ends at 0x202 + the byte at 0x201.
  const headerEnd = Math.min(setup_header.jump + 2 + getU8(v, HDR + setup_header.jump + 1), setup_header.SIZE);
  const setupHeader = file.slice(HDR, HDR + headerEnd);

  const alignment = field.u32("kernel_alignment");
  const relocatable = field.u8("relocatable_kernel") !== 0;
  const initBytes = field.u32("init_size");
  const prefRaw = field.u64("pref_address");
  const pref = prefRaw < BigInt(MMIO_GAP_START) ? Number(prefRaw) : undefined;
  if (alignment === 0 || (alignment & (alignment - 1)) !== 0 || pref === undefined) {
    throw new BootError("EKERNELFORMAT", `Cannot load kernel: bzImage '${path}' has an invalid kernel_alignment (${hex(alignment)}) or pref_address (${hex(prefRaw)})`);
  }
  const ram = lowRamEnd(mem.regions);
  // Load at pref_address when everything fits there (no relocation needed), else at 1 MiB.
  const fitsAtPref = pref >= HIMEM_START && pref % 4096 === 0 && pref + Math.max(protectedMode.length, initBytes) <= ram;
  const loadAddress = fitsAtPref ? pref : HIMEM_START;
  // Where the kernel decompresses and runs: boot.rst init_size, refined by
  // arch/x86/boot/compressed/head_64.S, which never goes below LOAD_PHYSICAL_ADDR (= pref_address).
  const runtimeStart = relocatable ? Math.max(Math.ceil(loadAddress / alignment) * alignment, pref) : pref;
  const kernelEnd = Math.max(loadAddress + protectedMode.length, runtimeStart + initBytes);
  if (kernelEnd > ram || !mem.contains(loadAddress, protectedMode.length)) {
    throw new BootError("EKERNELPLACEMENT", `Cannot load kernel '${path}': it needs guest RAM up to ${hex(kernelEnd)} (${mib(initBytes)} init_size from ${hex(runtimeStart)}) but RAM ends at ${hex(ram)}; give the VM more memory`);
  }
  mem.write(loadAddress, protectedMode);
  return {
    kind: "bzimage",
    entry64: loadAddress + BZIMAGE_ENTRY64_OFFSET,
    kernelStart: loadAddress,
    kernelEnd,
    setupHeader,
    protocolVersion: version,
    initrdAddrMax: field.u32("initrd_addr_max"),
    cmdlineMaxBytes: field.u32("cmdline_size"),
  };
}
