/**
 * Synthetic kernel images for tests: a minimal x86-64 ELF vmlinux (PT_LOAD
 * segments, optional Xen PVH note) and a minimal bzImage (setup sectors with
 * a setup header, then a protected-mode payload). Built from the same ABI
 * offsets as the loader, so a field written here is the field the loader reads.
 */
import {
  EI_CLASS, EI_DATA, EI_VERSION, ELFCLASS64, ELFDATA2LSB, ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, EM_X86_64,
  ET_EXEC, EV_CURRENT, LOADED_HIGH, PT_LOAD, PT_NOTE, XEN_ELFNOTE_PHYS32_ENTRY, XLF_KERNEL_64, Elf64_Ehdr,
  Elf64_Nhdr, Elf64_Phdr, boot_params, setup_header,
} from "../../linux/abi.generated.js";
import { dataView, setU16, setU32, setU64, setU8 } from "../../memory/le.js";
import { BOOT_FLAG_MAGIC, SECTOR_BYTES, SETUP_HEADER_MAGIC } from "../kernel-image.js";

/** One PT_LOAD segment of a synthetic ELF. */
export interface TestSegment {
  paddr: number;
  data: Uint8Array;
  /** Defaults to data.length; larger means a bss. */
  memBytes?: number;
}

/** Options for makeElfKernel. */
export interface TestElfOptions {
  segments: TestSegment[];
  entry: number;
  /** Adds a Xen XEN_ELFNOTE_PHYS32_ENTRY note with this address. */
  pvhEntry?: number;
  /** Descriptor size of the PVH note: 8 (Linux's _ASM_PTR on x86-64, default) or 4. */
  pvhDescBytes?: 4 | 8;
}

function note(name: string, type: number, desc: Uint8Array): Uint8Array {
  const pad = (n: number): number => Math.ceil(n / 4) * 4;
  const nameBytes = Buffer.from(`${name}\0`, "latin1");
  const out = new Uint8Array(Elf64_Nhdr.SIZE + pad(nameBytes.length) + pad(desc.length));
  const v = dataView(out);
  setU32(v, Elf64_Nhdr.n_namesz, nameBytes.length);
  setU32(v, Elf64_Nhdr.n_descsz, desc.length);
  setU32(v, Elf64_Nhdr.n_type, type);
  out.set(nameBytes, Elf64_Nhdr.SIZE);
  out.set(desc, Elf64_Nhdr.SIZE + pad(nameBytes.length));
  return out;
}

/** A minimal ELF64 x86-64 executable, laid out: ehdr, phdrs, notes, segment data. */
export function makeElfKernel(o: TestElfOptions): Uint8Array {
  const notes: Uint8Array[] = [note("GNU", 3, new Uint8Array(20))]; // an unrelated note first, as in a real vmlinux
  if (o.pvhEntry !== undefined) {
    const desc = new Uint8Array(o.pvhDescBytes ?? 8);
    setU32(dataView(desc), 0, o.pvhEntry);
    notes.push(note("Xen", XEN_ELFNOTE_PHYS32_ENTRY, desc));
  }
  const noteBytes = Buffer.concat(notes);
  const phnum = o.segments.length + 1;
  const phoff = Elf64_Ehdr.SIZE;
  const notesOffset = phoff + phnum * Elf64_Phdr.SIZE;
  let dataOffset = notesOffset + noteBytes.length;
  const size = dataOffset + o.segments.reduce((n, s) => n + s.data.length, 0);
  const out = new Uint8Array(size);
  const v = dataView(out);
  out.set([ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3]);
  setU8(v, EI_CLASS, ELFCLASS64);
  setU8(v, EI_DATA, ELFDATA2LSB);
  setU8(v, EI_VERSION, EV_CURRENT);
  setU16(v, Elf64_Ehdr.e_type, ET_EXEC);
  setU16(v, Elf64_Ehdr.e_machine, EM_X86_64);
  setU32(v, Elf64_Ehdr.e_version, EV_CURRENT);
  setU64(v, Elf64_Ehdr.e_entry, o.entry);
  setU64(v, Elf64_Ehdr.e_phoff, phoff);
  setU16(v, Elf64_Ehdr.e_ehsize, Elf64_Ehdr.SIZE);
  setU16(v, Elf64_Ehdr.e_phentsize, Elf64_Phdr.SIZE);
  setU16(v, Elf64_Ehdr.e_phnum, phnum);
  o.segments.forEach((s, i) => {
    const ph = phoff + i * Elf64_Phdr.SIZE;
    setU32(v, ph + Elf64_Phdr.p_type, PT_LOAD);
    setU64(v, ph + Elf64_Phdr.p_offset, dataOffset);
    setU64(v, ph + Elf64_Phdr.p_vaddr, BigInt(s.paddr) + 0xffffffff80000000n);
    setU64(v, ph + Elf64_Phdr.p_paddr, s.paddr);
    setU64(v, ph + Elf64_Phdr.p_filesz, s.data.length);
    setU64(v, ph + Elf64_Phdr.p_memsz, s.memBytes ?? s.data.length);
    setU64(v, ph + Elf64_Phdr.p_align, 0x200000);
    out.set(s.data, dataOffset);
    dataOffset += s.data.length;
  });
  const nph = phoff + o.segments.length * Elf64_Phdr.SIZE;
  setU32(v, nph + Elf64_Phdr.p_type, PT_NOTE);
  setU64(v, nph + Elf64_Phdr.p_offset, notesOffset);
  setU64(v, nph + Elf64_Phdr.p_filesz, noteBytes.length);
  setU64(v, nph + Elf64_Phdr.p_memsz, noteBytes.length);
  setU64(v, nph + Elf64_Phdr.p_align, 4);
  out.set(noteBytes, notesOffset);
  return out;
}

/** Options for makeBzImage; defaults describe a modern relocatable 64-bit kernel. */
export interface TestBzImageOptions {
  payload: Uint8Array;
  setupSects?: number;
  version?: number;
  loadflags?: number;
  xloadflags?: number;
  relocatable?: boolean;
  kernelAlignment?: number;
  prefAddress?: number | bigint;
  initSize?: number;
  initrdAddrMax?: number;
  cmdlineSize?: number;
}

/** A minimal bzImage: (setup_sects + 1) sectors of real-mode part holding the header, then `payload`. */
export function makeBzImage(o: TestBzImageOptions): Uint8Array {
  const sects = o.setupSects ?? 4;
  const setupBytes = ((sects || 4) + 1) * SECTOR_BYTES;
  const out = new Uint8Array(setupBytes + o.payload.length);
  const v = dataView(out);
  const h = (f: keyof typeof setup_header): number => boot_params.hdr + setup_header[f];
  setU8(v, h("setup_sects"), sects);
  setU16(v, h("boot_flag"), BOOT_FLAG_MAGIC);
  // jump: a short jmp (0xEB) over the header; its displacement gives the header's end.
  setU8(v, h("jump"), 0xeb);
  setU8(v, h("jump") + 1, setup_header.SIZE - (setup_header.jump + 2));
  setU32(v, h("header"), SETUP_HEADER_MAGIC);
  setU16(v, h("version"), o.version ?? 0x020f);
  setU8(v, h("loadflags"), o.loadflags ?? LOADED_HIGH);
  setU32(v, h("initrd_addr_max"), o.initrdAddrMax ?? 0x7fffffff);
  setU32(v, h("kernel_alignment"), o.kernelAlignment ?? 0x200000);
  setU8(v, h("relocatable_kernel"), (o.relocatable ?? true) ? 1 : 0);
  setU16(v, h("xloadflags"), o.xloadflags ?? XLF_KERNEL_64);
  setU32(v, h("cmdline_size"), o.cmdlineSize ?? 2047);
  setU64(v, h("pref_address"), o.prefAddress ?? 0x1000000);
  setU32(v, h("init_size"), o.initSize ?? 0x800000);
  out.set(o.payload, setupBytes);
  return out;
}
