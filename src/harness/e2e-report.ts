/**
 * How end-to-end tests read what their guests and host-side helpers report:
 * lines of the form `flint-e2e: key=value`, on the guest console or in a
 * helper's own file (never both on one stream: writers interleave).
 */
import { readFileSync } from "node:fs";

/** Prefix of a report line. */
export const E2E_REPORT_PREFIX = "flint-e2e:";

/** The timestamp every kernel message on the console starts with ("[    4.180649]"). */
const KERNEL_TIMESTAMP = String.raw`\[\s*\d+\.\d{6}\]`;

/**
 * A kernel message that landed in the middle of a report line: the guest's
 * shell and printk share the serial console, so "disks=vda vdb[    2.833217]
 * I/O error, ..." happens when a message is printed while a line is written.
 */
const KERNEL_MESSAGE_TAIL = new RegExp(`${KERNEL_TIMESTAMP}.*$`);

/**
 * Whole kernel messages, their line ends included, printed into a line that
 * goes on after them ("flint-e2e: disks[    4.180649] I/O error, ...\r\n=vda
 * vdb"): taken out, the report line is whole again (unless a new report line
 * follows them: then the line had ended).
 */
const KERNEL_MESSAGES_INSIDE = new RegExp(`(?<=[^\\n])(?:${KERNEL_TIMESTAMP}[^\\n]*\\n)+`, "g");

/** `text` with kernel messages printed into its lines taken out. */
function withoutKernelInterjections(text: string): string {
  return text.replace(KERNEL_MESSAGES_INSIDE, (messages: string, offset: number) =>
    text.startsWith(E2E_REPORT_PREFIX, offset + messages.length) ? "\n" : "");
}

/**
 * The value of the last `flint-e2e: key=value` line in any of `texts`
 * (trailing \r and spaces dropped, and a kernel message printed into the
 * line taken out).
 */
export function e2eValue(key: string, ...texts: string[]): string | undefined {
  let value: string | undefined;
  const escaped = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  for (const text of texts) {
    for (const m of withoutKernelInterjections(text).matchAll(new RegExp(`${E2E_REPORT_PREFIX} ${escaped}=(.*)$`, "gm"))) {
      value = m[1]!.replace(/\r$/, "").replace(KERNEL_MESSAGE_TAIL, "").trim();
    }
  }
  return value;
}

/** A file's text, or "" when it was never written (the assertions then say what is missing). */
export function readTextIfAny(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

/**
 * The lines of a guest's console in which its kernel reported trouble: a
 * WARNING, a BUG or a call trace (an end-to-end test expects none).
 */
export function kernelTroubleLines(console: string): string[] {
  return console.split("\n").filter((l) => /WARNING:|BUG:|Call Trace/.test(l));
}
