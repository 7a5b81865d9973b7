/**
 * Assembles small x86-64 guest programs for direct-KVM tests with binutils
 * (`as` + `objcopy`, installed with gcc), so test guests are readable source.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Assembles Intel-syntax `source` linked at `origin`, returning the raw bytes. */
export function assemble(source: string, origin: number, bits: 16 | 32 | 64 = 64): Uint8Array {
  const dir = mkdtempSync(join(tmpdir(), "flint-as-"));
  try {
    const src = join(dir, "p.s");
    writeFileSync(src, `.intel_syntax noprefix\n.code${bits}\n${source}\n`);
    execFileSync("as", ["--64", "-o", join(dir, "p.o"), src]);
    execFileSync("ld", ["-m", "elf_x86_64", "-Ttext", `0x${origin.toString(16)}`, "-e", "0", "-o", join(dir, "p.elf"), join(dir, "p.o")]);
    execFileSync("objcopy", ["-O", "binary", "-j", ".text", join(dir, "p.elf"), join(dir, "p.bin")]);
    return new Uint8Array(readFileSync(join(dir, "p.bin")));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
