/**
 * For tests: how Linux's atkbd turns the bytes it reads from the i8042 into
 * key events, so that a test can check what the guest would see rather than
 * compare bytes with a list typed by hand. The two scan-code tables are read
 * at test time from drivers/input/keyboard/atkbd.c in Debian's
 * linux-source-6.1 (the tarball gen-abi already needs), never retyped here;
 * the decoding follows atkbd_interrupt(), atkbd_compat_scancode() and
 * atkbd_set_keycode_table() for scan-code set 2, raw or translated, for
 * ordinary keys (no scroll-wheel, Korean-key or xl_bit special cases).
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** atkbd's set-2 keycode table (non-HP build, as on x86) and its set-1 to set-2 "unxlate" table. */
export interface AtkbdTables {
  set2: number[];
  unxlate: number[];
}

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));

/** The numbers of a C array initializer `name[...] = { ... };`, preprocessor branch `#else` taken. */
function cArray(source: string, name: string): number[] {
  const start = source.indexOf(`${name}[`);
  if (start < 0) throw new Error(`atkbd.c: table ${name} not found`);
  let body = source.slice(source.indexOf("{", start) + 1, source.indexOf("};", start));
  const elseAt = body.indexOf("#else");
  if (elseAt >= 0) body = body.slice(elseAt + "#else".length, body.indexOf("#endif"));
  body = body.replace(/\/\*[\s\S]*?\*\//g, "");
  return [...body.matchAll(/\d+/g)].map((m) => Number(m[0]));
}

/** Reads both tables from the kernel source (extracted once into flint's cache by scripts/kernel-source.mjs). */
export function loadAtkbdTables(): AtkbdTables {
  const helper = pathToFileURL(join(ROOT, "scripts/kernel-source.mjs")).href;
  const dir = execFileSync(process.execPath, [
    "--input-type=module", "-e",
    `import { kernelSourceFiles } from ${JSON.stringify(helper)}; console.log(kernelSourceFiles(["drivers/input/keyboard/atkbd.c"]));`,
  ], { encoding: "utf8" }).trim();
  const source = readFileSync(join(dir, "drivers/input/keyboard/atkbd.c"), "utf8");
  const set2 = cArray(source, "atkbd_set2_keycode");
  const unxlate = cArray(source, "atkbd_unxlate_table");
  if (unxlate.length !== 128) throw new Error(`atkbd.c: atkbd_unxlate_table has ${unxlate.length} entries, not 128`);
  while (set2.length < 512) set2.push(0);
  return { set2, unxlate };
}

/** One key event as atkbd reports it to the input layer. */
export interface KeyEvent {
  keycode: number;
  pressed: boolean;
}

const EMUL0 = 0xe0;
const RELEASE = 0xf0;

/** The key events atkbd reports for `bytes` read from the keyboard port (scan-code set 2, translated or raw). */
export function atkbdDecode(tables: AtkbdTables, bytes: number[], translated: boolean): KeyEvent[] {
  // atkbd_set_keycode_table: translated mode indexes by set-1 code, bit 7 standing for the E0 prefix.
  const keycode = (code: number): number => {
    if (!translated) return tables.set2[code] ?? 0;
    const set2 = tables.unxlate[code & 0x7f]!;
    return tables.set2[code & 0x80 ? set2 | 0x80 : set2] ?? 0;
  };
  const events: KeyEvent[] = [];
  let emul = false;
  let release = false;
  for (const data of bytes) {
    let code = data;
    if (translated && (emul || code !== EMUL0)) {
      release = (code & 0x80) !== 0; // set 1: bit 7 is the release flag
      code &= 0x7f;
    }
    if (code === EMUL0) {
      emul = true;
      continue;
    }
    if (code === RELEASE && !translated) {
      release = true;
      continue;
    }
    // atkbd_compat_scancode for set 2: bit 7 of the index stands for the E0 prefix.
    const index = (code & 0x7f) | ((code & 0x80) << 1) | (emul ? 0x80 : 0);
    events.push({ keycode: keycode(index), pressed: !release });
    emul = false;
    release = false;
  }
  return events;
}
