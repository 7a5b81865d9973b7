import assert from "node:assert/strict";
import { test } from "node:test";
import { Elf64_Ehdr, Elf64_Phdr, boot_params, setup_header, XLF_CAN_BE_LOADED_ABOVE_4G } from "../linux/abi.generated.js";
import { HIMEM_START, MiB } from "../arch/x86_64/layout.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { dataView, setU16, setU32, setU64 } from "../memory/le.js";
import { BootError } from "./errors.js";
import { DEFAULT_INITRD_ADDR_MAX, loadKernel } from "./kernel-image.js";
import { makeBzImage, makeElfKernel } from "./testing/images.js";

function withMemory(sizeBytes: number, fn: (mem: GuestMemory) => void): void {
  const mem = GuestMemory.create([{ guestBase: 0, size: sizeBytes }]);
  try { fn(mem); } finally { mem.dispose(); }
}

const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);
const isBootError = (code: string, text?: RegExp) => (e: unknown) =>
  e instanceof BootError && e.code === code && (!text || text.test(e.message));

test("an ELF vmlinux is loaded at its physical addresses with its bss zeroed", () => {
  withMemory(64 * MiB, (mem) => {
    mem.fill(0x1000000, 0x20000, 0xaa); // garbage where the bss goes
    const text = pattern(0x3000, 1), data = pattern(0x1000, 2);
    const k = loadKernel(mem, makeElfKernel({
      entry: 0x1000000,
      segments: [{ paddr: 0x1000000, data: text }, { paddr: 0x1010000, data, memBytes: 0x8000 }],
    }), "vmlinux");
    assert.equal(k.kind, "elf");
    assert.equal(k.entry64, 0x1000000);
    assert.equal(k.pvhEntry, undefined);
    assert.equal(k.kernelStart, 0x1000000);
    assert.equal(k.kernelEnd, 0x1018000);
    assert.equal(k.initrdAddrMax, DEFAULT_INITRD_ADDR_MAX);
    assert.deepEqual(mem.read(0x1000000, text.length), text);
    assert.deepEqual(mem.read(0x1010000, data.length), data);
    assert.ok(mem.read(0x1011000, 0x7000).every((b) => b === 0), "bss is zero");
  });
});

test("the PVH entry is read from the Xen PHYS32_ENTRY note, 8-byte or 4-byte", () => {
  withMemory(64 * MiB, (mem) => {
    for (const pvhDescBytes of [8, 4] as const) {
      const k = loadKernel(mem, makeElfKernel({
        entry: 0x1000000, pvhEntry: 0x1000480, pvhDescBytes, segments: [{ paddr: 0x1000000, data: pattern(0x1000, 3) }],
      }), "vmlinux");
      assert.equal(k.pvhEntry, 0x1000480);
    }
  });
});

test("a relocatable bzImage is loaded at pref_address with the 64-bit entry at +0x200", () => {
  withMemory(64 * MiB, (mem) => {
    const payload = pattern(0x5000, 4);
    const file = makeBzImage({ payload, prefAddress: 0x1000000, initSize: 0x900000 });
    const k = loadKernel(mem, file, "bzImage");
    assert.equal(k.kind, "bzimage");
    assert.equal(k.kernelStart, 0x1000000);
    assert.equal(k.entry64, 0x1000200);
    assert.equal(k.kernelEnd, 0x1900000);
    assert.equal(k.protocolVersion, 0x020f);
    assert.equal(k.cmdlineMaxBytes, 2047);
    assert.equal(k.initrdAddrMax, 0x7fffffff);
    assert.deepEqual(mem.read(0x1000000, payload.length), payload);
    assert.deepEqual(k.setupHeader, file.subarray(boot_params.hdr, boot_params.hdr + setup_header.SIZE));
  });
});

test("a bzImage whose pref_address is unusable is loaded at 1 MiB and runs from the aligned address", () => {
  withMemory(64 * MiB, (mem) => {
    const k = loadKernel(mem, makeBzImage({ payload: pattern(0x3000, 5), prefAddress: 0x1000, initSize: 0x400000 }), "bzImage");
    assert.equal(k.kernelStart, HIMEM_START);
    assert.equal(k.entry64, HIMEM_START + 0x200);
    assert.equal(k.kernelEnd, 0x200000 + 0x400000); // align_up(1 MiB, 2 MiB) + init_size
  });
});

test("setup_sects 0 means 4 setup sectors", () => {
  withMemory(64 * MiB, (mem) => {
    const payload = pattern(0x2000, 6);
    loadKernel(mem, makeBzImage({ payload, setupSects: 0 }), "bzImage");
    assert.deepEqual(mem.read(0x1000000, payload.length), payload);
  });
});

test("a bzImage whose init_size does not fit in guest RAM is rejected with the sizes", () => {
  withMemory(32 * MiB, (mem) => {
    assert.throws(() => loadKernel(mem, makeBzImage({ payload: pattern(0x1000, 7), initSize: 40 * MiB }), "big.bz"),
      isBootError("EKERNELPLACEMENT", /'big\.bz'.*40 MiB init_size.*more memory/));
  });
});

test("a file that is neither ELF nor bzImage is rejected with its name", () => {
  withMemory(4 * MiB, (mem) => {
    assert.throws(() => loadKernel(mem, pattern(4096, 8), "/tmp/x"),
      isBootError("EKERNELFORMAT", /file '\/tmp\/x' is neither an ELF vmlinux nor a bzImage/));
    assert.throws(() => loadKernel(mem, new Uint8Array(0), "empty"), isBootError("EKERNELFORMAT"));
  });
});

test("bzImages without the 64-bit boot protocol are unsupported", () => {
  withMemory(64 * MiB, (mem) => {
    const payload = pattern(0x1000, 9);
    assert.throws(() => loadKernel(mem, makeBzImage({ payload, version: 0x020b }), "old"), isBootError("EKERNELUNSUPPORTED", /2\.11/));
    assert.throws(() => loadKernel(mem, makeBzImage({ payload, xloadflags: XLF_CAN_BE_LOADED_ABOVE_4G }), "32"), isBootError("EKERNELUNSUPPORTED"));
    assert.throws(() => loadKernel(mem, makeBzImage({ payload, loadflags: 0 }), "z"), isBootError("EKERNELUNSUPPORTED", /zImage/));
  });
});

test("a bzImage truncated before its payload is a format error", () => {
  withMemory(64 * MiB, (mem) => {
    const file = makeBzImage({ payload: pattern(0x1000, 10) });
    assert.throws(() => loadKernel(mem, file.subarray(0, 5 * 512), "cut"), isBootError("EKERNELFORMAT"));
    assert.throws(() => loadKernel(mem, file.subarray(0, 0x210), "cut"), isBootError("EKERNELFORMAT"));
  });
});

/** Patches a field of the first program header of a synthetic ELF. */
function withPhdr(file: Uint8Array, index: number, field: keyof typeof Elf64_Phdr, value: bigint | number): Uint8Array {
  const copy = file.slice();
  setU64(dataView(copy), Elf64_Ehdr.SIZE + index * Elf64_Phdr.SIZE + Elf64_Phdr[field], value);
  return copy;
}

test("hostile ELF program headers give BootErrors and write nothing", () => {
  withMemory(64 * MiB, (mem) => {
    const good = makeElfKernel({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: pattern(0x1000, 11) }] });
    const cases: [Uint8Array, string][] = [
      [withPhdr(good, 0, "p_paddr", 64 * MiB - 0x800), "EKERNELPLACEMENT"], // runs past the end of RAM
      [withPhdr(good, 0, "p_paddr", 0x7000), "EKERNELPLACEMENT"], // over the boot structures
      [withPhdr(good, 0, "p_paddr", 1n << 63n), "EKERNELPLACEMENT"],
      [withPhdr(good, 0, "p_memsz", 0x10), "EKERNELFORMAT"], // filesz > memsz
      [withPhdr(good, 0, "p_offset", 1n << 62n), "EKERNELFORMAT"],
      [withPhdr(good, 0, "p_filesz", 0x100000), "EKERNELFORMAT"], // past the end of the file
      [withPhdr(good, 1, "p_filesz", 0x100000), "EKERNELFORMAT"], // the note segment
    ];
    for (const [file, code] of cases) {
      mem.fill(0x1000000, 0x1000, 0);
      assert.throws(() => loadKernel(mem, file, "evil"), isBootError(code), `case ${cases.findIndex((c) => c[0] === file)}: ${code}`);
      assert.ok(mem.read(0x1000000, 0x1000).every((b) => b === 0), "nothing was loaded");
    }
  });
});

test("ELF headers that are not x86-64 executables, or whose entry is outside the image, are rejected", () => {
  withMemory(64 * MiB, (mem) => {
    const good = makeElfKernel({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: pattern(0x1000, 12) }] });
    const patch = (fn: (v: DataView) => void): Uint8Array => { const c = good.slice(); fn(dataView(c)); return c; };
    assert.throws(() => loadKernel(mem, patch((v) => setU16(v, Elf64_Ehdr.e_machine, 3)), "i386"), isBootError("EKERNELFORMAT", /x86-64/));
    assert.throws(() => loadKernel(mem, patch((v) => setU64(v, Elf64_Ehdr.e_entry, 0xffffffff81000000n)), "virt"), isBootError("EKERNELFORMAT", /entry point/));
    assert.throws(() => loadKernel(mem, patch((v) => setU64(v, Elf64_Ehdr.e_phoff, 1n << 60n)), "ph"), isBootError("EKERNELFORMAT"));
    assert.throws(() => loadKernel(mem, patch((v) => setU16(v, Elf64_Ehdr.e_phnum, 0xffff)), "ph"), isBootError("EKERNELFORMAT"));
    assert.throws(() => loadKernel(mem, good.subarray(0, 70), "short"), isBootError("EKERNELFORMAT"));
    const pvhOutside = makeElfKernel({ entry: 0x1000000, pvhEntry: 0x5000000, segments: [{ paddr: 0x1000000, data: pattern(0x1000, 13) }] });
    assert.throws(() => loadKernel(mem, pvhOutside, "pvh"), isBootError("EKERNELFORMAT", /PVH/));
  });
});

test("randomly corrupted kernel headers only ever produce BootErrors", () => {
  withMemory(32 * MiB, (mem) => {
    const seeds = [
      makeElfKernel({ entry: 0x1000000, pvhEntry: 0x1000010, segments: [{ paddr: 0x1000000, data: pattern(0x800, 14), memBytes: 0x2000 }] }),
      makeBzImage({ payload: pattern(0x800, 15) }),
    ];
    let state = 12345;
    const rand = (n: number): number => { state = (state * 1103515245 + 12345) & 0x7fffffff; return state % n; };
    for (let i = 0; i < 3000; i++) {
      const file = seeds[i % 2]!.slice();
      const headerBytes = i % 2 === 0 ? 0x140 : 0x280;
      for (let j = 0, n = 1 + rand(4); j < n; j++) file[rand(headerBytes)] = rand(256);
      if (rand(4) === 0) setU32(dataView(file), rand(headerBytes - 4) & ~3, 0xffffffff);
      try {
        loadKernel(mem, rand(8) === 0 ? file.subarray(0, rand(file.length)) : file, "fuzz");
      } catch (e) {
        assert.ok(e instanceof BootError, `iteration ${i}: ${String(e)}`);
      }
    }
  });
});
