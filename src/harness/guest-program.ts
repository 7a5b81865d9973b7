/**
 * Guest programs for end-to-end tests: C source compiled here, statically
 * (the guest's initramfs has no C library), into a file that
 * buildInitramfs then puts in the guest.
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

/** Writes `source` to `<dir>/<name>.c`, compiles it with `gcc -static -O2` and returns the program's path. */
export function compileGuestProgram(dir: string, name: string, source: string): string {
  const program = join(dir, name);
  writeFileSync(`${program}.c`, source);
  execFileSync("gcc", ["-static", "-O2", "-o", program, `${program}.c`]);
  return program;
}
