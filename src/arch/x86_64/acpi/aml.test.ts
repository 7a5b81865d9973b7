import assert from "node:assert/strict";
import { test } from "node:test";
import { byteSum } from "../../../memory/le.js";
import { ArchError } from "../errors.js";
import {
  amlArg, amlDevice, amlEisaId, amlIf, amlLEqual, amlNotify, amlInteger, amlMethod, amlName, amlNameString, amlPackage, amlPkgLength, amlReturn,
  amlScope, amlString, extendedInterruptResource, ioResource, irqNoFlagsResource, irqResource,
  memory32FixedResource, resourceTemplate,
} from "./aml.js";

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const ascii = (s: string): string => Buffer.from(s, "latin1").toString("hex");
const isArchError = (code: string) => (e: unknown) => e instanceof ArchError && e.code === code;

test("integers use the smallest encoding", () => {
  assert.equal(hex(amlInteger(0)), "00");
  assert.equal(hex(amlInteger(1)), "01");
  assert.equal(hex(amlInteger(2)), "0a02");
  assert.equal(hex(amlInteger(0xff)), "0aff");
  assert.equal(hex(amlInteger(0x100)), "0b0001");
  assert.equal(hex(amlInteger(0x10000)), "0c00000100");
  assert.equal(hex(amlInteger(0x1_0000_0000)), "0e0000000001000000");
  assert.equal(hex(amlInteger((1n << 64n) - 1n)), "ff");
  assert.equal(hex(amlInteger((1n << 64n) - 2n)), "0efeffffffffffffff");
});

test("integers that do not fit 64 bits are rejected", () => {
  assert.throws(() => amlInteger(-1), isArchError("EAMLVALUE"));
  assert.throws(() => amlInteger(1n << 64n), isArchError("EAMLVALUE"));
  assert.throws(() => amlInteger(0.5), isArchError("EAMLVALUE"));
});

test("names are padded segments with root, dual and multi prefixes", () => {
  assert.equal(hex(amlNameString("_HID")), ascii("_HID"));
  assert.equal(hex(amlNameString("COM")), ascii("COM_"));
  assert.equal(hex(amlNameString("\\_S5")), "5c" + ascii("_S5_"));
  assert.equal(hex(amlNameString("\\_SB_.COM1")), "5c2e" + ascii("_SB_COM1"));
  assert.equal(hex(amlNameString("A.B.C")), "2f03" + ascii("A___B___C___"));
  assert.equal(hex(amlNameString("^^FOO")), "5e5e" + ascii("FOO_"));
});

test("invalid names are rejected with EAMLNAME", () => {
  for (const bad of ["", "1ABC", "ABCDE", "a", "\\", "A..B", "_SB_.", "CÖM"]) {
    assert.throws(() => amlNameString(bad), isArchError("EAMLNAME"), bad);
  }
});

test("package lengths switch to multi-byte encoding above 63 and count their own bytes", () => {
  assert.equal(hex(amlPkgLength(0)), "01");
  assert.equal(hex(amlPkgLength(62)), "3f");
  // 63 + 2 PkgLength bytes = 65 = 0x41: lead 0x40 | 0x1, then 0x41 >> 4.
  assert.equal(hex(amlPkgLength(63)), "4104");
  assert.equal(hex(amlPkgLength(4093)), "4fff"); // 4093 + 2 = 0xfff, the 2-byte maximum
  assert.equal(hex(amlPkgLength(4094)), "8100 01".replace(" ", "")); // 4094 + 3 = 0x1001
  assert.throws(() => amlPkgLength(1 << 28), isArchError("EAMLVALUE"));
});

test("a large scope's PkgLength covers exactly its body", () => {
  const body = new Uint8Array(300).fill(0xa3); // Noop opcodes
  const s = amlScope("\\_SB_", [body]);
  assert.equal(s[0], 0x10);
  const lead = s[1]!;
  const follow = lead >> 6;
  let len = lead & 0xf;
  for (let i = 0; i < follow; i++) len |= s[2 + i]! << (4 + 8 * i);
  assert.equal(1 + len, s.length, "PkgLength = everything after the opcode");
});

test("EISA ids compress to the values firmware uses", () => {
  assert.equal(hex(amlEisaId("PNP0501")), "0c41d00501");
  assert.equal(hex(amlEisaId("PNP0A03")), "0c41d00a03");
  assert.throws(() => amlEisaId("pnp0501"), isArchError("EAMLVALUE"));
  assert.throws(() => amlEisaId("PNP05010"), isArchError("EAMLVALUE"));
});

test("strings, packages, names, devices, methods and returns encode per the AML grammar", () => {
  assert.equal(hex(amlString("AB")), "0d414200");
  assert.throws(() => amlString("é"), isArchError("EAMLVALUE"));
  assert.equal(hex(amlPackage([amlInteger(5), amlInteger(0)])), "1205020a0500");
  assert.equal(hex(amlName("_UID", amlInteger(0))), "08" + ascii("_UID") + "00");
  assert.equal(hex(amlDevice("DEV0", [])), "5b8205" + ascii("DEV0"));
  assert.equal(hex(amlMethod("_STA", 0, false, [amlReturn(amlInteger(0xf))])), "1409" + ascii("_STA") + "00a40a0f");
  assert.equal(hex(amlMethod("FOO", 2, true, [])), "1406" + ascii("FOO_") + "0a");
  assert.throws(() => amlMethod("FOO", 8, false, []), isArchError("EAMLVALUE"));
});

test("resource descriptors have the ACPI small/large item layouts", () => {
  assert.equal(hex(ioResource({ min: 0x3f8, length: 8 })), "47" + "01" + "f803" + "f803" + "01" + "08");
  assert.equal(hex(irqNoFlagsResource([4])), "221000");
  assert.equal(hex(irqResource([4, 3], { edge: false, activeLow: true, shared: true })), "231800" + "18");
  assert.equal(hex(memory32FixedResource({ base: 0xd0001000, length: 0x1000 })), "860900" + "01" + "0010 00d0".replace(" ", "") + "00100000");
  assert.equal(hex(extendedInterruptResource([5])), "890600" + "03" + "01" + "05000000");
  assert.equal(hex(extendedInterruptResource([20, 21], { edge: false, activeLow: true, shared: true })), "890a00" + "0d" + "02" + "14000000" + "15000000");
  assert.throws(() => irqNoFlagsResource([16]), isArchError("EAMLVALUE"));
  assert.throws(() => ioResource({ min: 0x10000, length: 1 }), isArchError("EAMLVALUE"));
  assert.throws(() => extendedInterruptResource([]), isArchError("EAMLVALUE"));
});

test("a resource template ends with an End Tag whose checksum zeroes the template", () => {
  const t = resourceTemplate([ioResource({ min: 0x3f8, length: 8 }), irqNoFlagsResource([4])]);
  // Buffer: 0x11, PkgLength, BufferSize (ByteConst), then the descriptors.
  assert.equal(t[0], 0x11);
  assert.equal(t[1], t.length - 1, "one-byte PkgLength");
  assert.equal(t[2], 0x0a, "BufferSize as ByteConst");
  const size = t[3]!;
  const data = t.subarray(4);
  assert.equal(data.length, size);
  assert.equal(data[data.length - 2], 0x79);
  assert.equal(byteSum(data), 0);
});

test("Arg, LEqual, If and Notify encode per the AML grammar", () => {
  assert.equal(hex(amlArg(0)), "68");
  assert.equal(hex(amlArg(6)), "6e");
  assert.throws(() => amlArg(7), isArchError("EAMLVALUE"));
  assert.throws(() => amlArg(-1), isArchError("EAMLVALUE"));
  const equal = amlLEqual(amlArg(0), amlInteger(23));
  assert.equal(hex(equal), "93" + "68" + "0a17");
  const notify = amlNotify("\\_SB_.VGEN", 0x80);
  assert.equal(hex(notify), "86" + "5c2e" + ascii("_SB_VGEN") + "0a80");
  assert.throws(() => amlNotify("VGEN", 0x100), isArchError("EAMLVALUE"));
  // If: opcode, PkgLength (covers itself, the predicate and the terms), predicate, terms.
  assert.equal(hex(amlIf(equal, [notify])), "a0" + (1 + equal.length + notify.length).toString(16).padStart(2, "0") + hex(equal) + hex(notify));
  assert.equal(hex(amlMethod("_EVT", 1, true, [amlIf(equal, [])])), "14" + "0c" + ascii("_EVT") + "09" + "a005" + hex(equal));
});
