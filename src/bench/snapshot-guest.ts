/**
 * The guest of the in-process snapshot benchmarks (snapshot-clones.ts): a
 * ring-3 program (flint's `ring3` boot, one vCPU) that first writes one
 * non-zero quadword into every 4 KiB page of a range of its RAM, so that
 * those pages are resident and land in the snapshot's memory file as data,
 * and then reads that range for ever, one quadword a page, counting each
 * page read in COUNT and each whole pass in PASSES. A restored clone shows
 * it runs by its COUNT moving, and that it has read (faulted in) every page
 * of the range by PASSES going up by two. Reading only, a clone shares the
 * memory file's pages; it writes just the status page (one page of its own).
 */
import { RING3_LAYOUT } from "../arch/x86_64/ring3.js";
import { assemble } from "../kvm/testing/assemble.js";
import { BenchError } from "./bench-error.js";

/** First byte of the range the guest touches: above the ring-3 harness's page tables, code, stack and data (all below 1 MiB). */
export const TOUCH_START = 0x10_0000;
/** The guest's status block: COUNT (pages read, ever) and PASSES (whole read passes done), 64-bit each. */
export const STATUS_ADDRESS = RING3_LAYOUT.data;
export const COUNT_OFFSET = 0;
export const PASSES_OFFSET = 8;

const PAGE = 4096;
const MiB = 1 << 20;

/** How much of its RAM the guest writes: `touchMib` from TOUCH_START, or "all" (TOUCH_START to the end: a dense memory file). */
export type TouchAmount = number | "all";

/** The bytes [TOUCH_START, end) the guest writes and reads for a guest of `memoryMib` MiB. */
export function touchRange(memoryMib: number, touch: TouchAmount): { start: number; end: number } {
  const memoryEnd = memoryMib * MiB;
  const end = touch === "all" ? memoryEnd : TOUCH_START + touch * MiB;
  if (!Number.isInteger(memoryMib) || memoryMib < 2 || (touch !== "all" && (!Number.isInteger(touch) || touch < 1)) || end > memoryEnd) {
    throw new BenchError("EBENCHARG", `Cannot touch ${touch === "all" ? "all" : `${touch} MiB`} of a ${memoryMib} MiB guest from 0x${TOUCH_START.toString(16)}`);
  }
  return { start: TOUCH_START, end };
}

/** The program (origin RING3_LAYOUT.code) for a guest of `memoryMib` MiB that touches `touch`. */
export function touchAndReadProgram(memoryMib: number, touch: TouchAmount): Uint8Array {
  const { start, end } = touchRange(memoryMib, touch);
  return assemble(`
       mov rbx, ${STATUS_ADDRESS}
       mov r8, ${start}
       mov r9, ${end}
       mov rsi, r8
    1: mov [rsi], rsi
       add rsi, ${PAGE}
       cmp rsi, r9
       jb 1b
    2: mov rsi, r8
    3: add rax, [rsi]
       inc qword ptr [rbx + ${COUNT_OFFSET}]
       add rsi, ${PAGE}
       cmp rsi, r9
       jb 3b
       inc qword ptr [rbx + ${PASSES_OFFSET}]
       jmp 2b`, RING3_LAYOUT.code);
}
