import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import {
  EM_X86_64,
  ELFCLASS64,
  EI_CLASS,
  Elf64_Ehdr,
  Elf64_Nhdr,
  Elf64_Phdr,
  PT_LOAD,
  PT_NOTE,
  XEN_ELFNOTE_PHYS32_ENTRY,
  hvm_start_info,
} from "../../linux/abi.generated.js";
import { dataView, getU16, getU32, getU64Number } from "../../memory/le.js";
import { GuestProgramError } from "./program-error.js";
import { flintAbiHeader } from "./c-header.js";
import {
  EXIT_LOOP_LOAD_ADDR,
  EXIT_LOOP_MMIO_EXIT_ADDR,
  buildExitLoopGuest,
  exitLoopCmdline,
  exitLoopProtocolHeader,
} from "./exit-loop.js";

interface Segment { type: number; offset: number; paddr: number; filesz: number; memsz: number; align: number }

function segments(elf: Buffer): Segment[] {
  const v = dataView(elf);
  const phoff = getU64Number(v, Elf64_Ehdr.e_phoff);
  const out: Segment[] = [];
  for (let i = 0; i < getU16(v, Elf64_Ehdr.e_phnum); i++) {
    const p = phoff + i * Elf64_Phdr.SIZE;
    out.push({
      type: getU32(v, p + Elf64_Phdr.p_type),
      offset: getU64Number(v, p + Elf64_Phdr.p_offset),
      paddr: getU64Number(v, p + Elf64_Phdr.p_paddr),
      filesz: getU64Number(v, p + Elf64_Phdr.p_filesz),
      memsz: getU64Number(v, p + Elf64_Phdr.p_memsz),
      align: getU64Number(v, p + Elf64_Phdr.p_align),
    });
  }
  return out;
}

describe("exitLoopCmdline", () => {
  it("formats the mode and a decimal count", () => {
    assert.equal(exitLoopCmdline({ mode: "pio", count: 1_000_000 }), "mode=pio count=1000000");
    assert.equal(exitLoopCmdline({ mode: "mmio", count: 0 }), "mode=mmio count=0");
  });

  it("adds the hello and halt words when asked", () => {
    assert.equal(exitLoopCmdline({ mode: "pio", count: 0, hello: true }), "mode=pio count=0 hello");
    assert.equal(exitLoopCmdline({ mode: "pio", count: 0, halt: true }), "mode=pio count=0 halt");
    assert.equal(exitLoopCmdline({ mode: "pio", count: 0, hello: true, halt: true }), "mode=pio count=0 hello halt");
    assert.equal(exitLoopCmdline({ mode: "pio", count: 0, hello: false, halt: false }), "mode=pio count=0");
  });

  it("rejects counts the guest cannot hold and unknown modes", () => {
    for (const count of [-1, 1.5, 2 ** 31, Number.NaN]) {
      assert.throws(() => exitLoopCmdline({ mode: "pio", count }), (e: GuestProgramError) => e instanceof GuestProgramError && e.code === "EPROGARG");
    }
    assert.throws(() => exitLoopCmdline({ mode: "io" as "pio", count: 1 }), (e: GuestProgramError) => e instanceof GuestProgramError && e.code === "EPROGARG");
  });
});

describe("generated headers", () => {
  it("carry the ABI file's PVH constants and the protocol under their own names", () => {
    const abi = flintAbiHeader();
    assert.match(abi, new RegExp(`^#define XEN_ELFNOTE_PHYS32_ENTRY 0x${XEN_ELFNOTE_PHYS32_ENTRY.toString(16)}$`, "m"));
    assert.match(abi, new RegExp(`^#define hvm_start_info_cmdline_paddr 0x${hvm_start_info.cmdline_paddr.toString(16)}$`, "m"));
    assert.match(exitLoopProtocolHeader(), new RegExp(`^#define EXIT_LOOP_MMIO_EXIT_ADDR 0x${EXIT_LOOP_MMIO_EXIT_ADDR.toString(16)}$`, "m"));
  });
});

describe("buildExitLoopGuest", () => {
  it("builds a PVH ELF64 with one PT_LOAD at 1 MiB and a Xen entry note inside it", () => {
    const elf = readFileSync(buildExitLoopGuest());
    const v = dataView(elf);
    assert.equal(elf.subarray(0, 4).toString("latin1"), "\x7fELF");
    assert.equal(elf[EI_CLASS], ELFCLASS64);
    assert.equal(getU16(v, Elf64_Ehdr.e_machine), EM_X86_64);

    const loads = segments(elf).filter((s) => s.type === PT_LOAD);
    assert.equal(loads.length, 1);
    const load = loads[0]!;
    assert.equal(load.paddr, EXIT_LOOP_LOAD_ADDR);
    assert.ok(load.filesz > 0 && load.memsz === load.filesz);

    const note = segments(elf).find((s) => s.type === PT_NOTE);
    assert.ok(note, "a PT_NOTE segment");
    // QEMU pads the name to the note segment's p_align: it must be 4 for the gABI layout.
    assert.equal(note.align, 4);
    const n = note.offset;
    assert.equal(getU32(v, n + Elf64_Nhdr.n_type), XEN_ELFNOTE_PHYS32_ENTRY);
    assert.equal(getU32(v, n + Elf64_Nhdr.n_namesz), 4);
    assert.equal(elf.subarray(n + Elf64_Nhdr.SIZE, n + Elf64_Nhdr.SIZE + 4).toString("latin1"), "Xen\0");
    assert.equal(getU32(v, n + Elf64_Nhdr.n_descsz), 8);
    const entry = getU64Number(v, n + Elf64_Nhdr.SIZE + 4);
    assert.ok(entry >= load.paddr && entry < load.paddr + load.filesz, `entry 0x${entry.toString(16)} inside the image`);
  });

  it("returns the cached ELF on a second call", () => {
    assert.equal(buildExitLoopGuest(), buildExitLoopGuest());
  });
});
