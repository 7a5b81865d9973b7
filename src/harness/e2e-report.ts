/**
 * How end-to-end tests read what their guests and host-side helpers report:
 * lines of the form `flint-e2e: key=value`, on the guest console or in a
 * helper's own file (never both on one stream: writers interleave).
 */
import { readFileSync } from "node:fs";

/** Prefix of a report line. */
export const E2E_REPORT_PREFIX = "flint-e2e:";

/** The value of the last `flint-e2e: key=value` line in any of `texts` (trailing \r and spaces dropped). */
export function e2eValue(key: string, ...texts: string[]): string | undefined {
  let value: string | undefined;
  const escaped = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  for (const text of texts) {
    for (const m of text.matchAll(new RegExp(`${E2E_REPORT_PREFIX} ${escaped}=(.*)$`, "gm"))) value = m[1]!.replace(/\r$/, "").trim();
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
