/**
 * The console escape sequence, as QEMU users know it: Ctrl-A then a key.
 *   Ctrl-A x       quit flint (the VM is stopped)
 *   Ctrl-A Ctrl-A  send one Ctrl-A to the guest
 *   Ctrl-A h       print this help
 * Any other key after Ctrl-A is sent as typed, with the Ctrl-A.
 */
export const ESCAPE_CHAR = 0x01; // Ctrl-A

export const ESCAPE_HELP = "flint console: Ctrl-A x = quit, Ctrl-A Ctrl-A = send Ctrl-A, Ctrl-A h = help\r\n";

export type EscapeAction = { kind: "guest"; bytes: Uint8Array } | { kind: "quit" } | { kind: "help" };

/** Splits terminal input into bytes for the guest and console commands. Keeps state across chunks. */
export class EscapeParser {
  private pending = false;

  feed(chunk: Uint8Array): EscapeAction[] {
    const actions: EscapeAction[] = [];
    let out: number[] = [];
    const flush = () => {
      if (out.length) actions.push({ kind: "guest", bytes: Uint8Array.from(out) });
      out = [];
    };
    for (const b of chunk) {
      if (this.pending) {
        this.pending = false;
        if (b === 0x78 /* x */) { flush(); actions.push({ kind: "quit" }); return actions; }
        if (b === 0x68 /* h */) { flush(); actions.push({ kind: "help" }); continue; }
        if (b === ESCAPE_CHAR) { out.push(ESCAPE_CHAR); continue; }
        out.push(ESCAPE_CHAR, b);
      } else if (b === ESCAPE_CHAR) {
        this.pending = true;
      } else {
        out.push(b);
      }
    }
    flush();
    return actions;
  }
}
