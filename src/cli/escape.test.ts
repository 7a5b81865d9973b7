import assert from "node:assert/strict";
import { test } from "node:test";
import { EscapeParser } from "./escape.js";

const bytes = (s: string) => new TextEncoder().encode(s);

test("plain input passes through to the guest", () => {
  assert.deepEqual(new EscapeParser().feed(bytes("ls\r")), [{ kind: "guest", bytes: bytes("ls\r") }]);
});

test("Ctrl-A x quits, even when split across chunks, after delivering earlier bytes", () => {
  const p = new EscapeParser();
  assert.deepEqual(p.feed(bytes("ab\x01")), [{ kind: "guest", bytes: bytes("ab") }]);
  assert.deepEqual(p.feed(bytes("xzz")), [{ kind: "quit" }]);
});

test("Ctrl-A Ctrl-A sends a single Ctrl-A; Ctrl-A with another key sends both", () => {
  assert.deepEqual(new EscapeParser().feed(bytes("\x01\x01\x01q")), [{ kind: "guest", bytes: bytes("\x01\x01q") }]);
});

test("Ctrl-A h asks for help without sending anything", () => {
  assert.deepEqual(new EscapeParser().feed(bytes("\x01h")), [{ kind: "help" }]);
});
