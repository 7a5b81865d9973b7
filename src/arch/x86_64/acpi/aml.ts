/**
 * A small encoder for ACPI Machine Language, enough for flint's DSDT: names,
 * integers, strings, packages, buffers, Name, Scope, Device, Method/Return,
 * method arguments, If, LEqual, Notify, EISA ids, and resource templates
 * (IO, IRQ, Memory32Fixed, Interrupt, EndTag).
 *
 * Every builder returns the encoded bytes of one AML term, so terms compose:
 *
 *   amlDevice("COM1", [amlName("_HID", amlEisaId("PNP0501")), ...])
 *
 * Grammar: ACPI 6.x, chapter 20 "ACPI Machine Language (AML) Specification";
 * resource descriptors: §6.4 "Resource Data Types for ACPI". Opcodes and
 * descriptor layouts come from ACPICA's amlcode.h / amlresrc.h via abi.generated.ts.
 */
import {
  ACPI_ACTIVE_HIGH, ACPI_ACTIVE_LOW, ACPI_CONSUMER, ACPI_DECODE_16, ACPI_EDGE_SENSITIVE, ACPI_EXCLUSIVE,
  ACPI_LEVEL_SENSITIVE, ACPI_NAMESEG_SIZE, ACPI_READ_ONLY_MEMORY, ACPI_READ_WRITE_MEMORY,
  ACPI_RESOURCE_NAME_END_TAG, ACPI_RESOURCE_NAME_EXTENDED_IRQ, ACPI_RESOURCE_NAME_FIXED_MEMORY32,
  ACPI_RESOURCE_NAME_IO, ACPI_RESOURCE_NAME_IRQ, ACPI_SHARED, AML_BUFFER_OP, AML_BYTE_OP, AML_DEVICE_OP,
  AML_ARG0, AML_DUAL_NAME_PREFIX, AML_DWORD_OP, AML_IF_OP, AML_LOGICAL_EQUAL_OP, AML_NOTIFY_OP, AML_METHOD_ARG_COUNT, AML_METHOD_OP, AML_METHOD_SERIALIZED,
  AML_MULTI_NAME_PREFIX, AML_NAME_OP, AML_ONE_OP, AML_ONES_OP, AML_PACKAGE_OP, AML_PARENT_PREFIX, AML_QWORD_OP,
  AML_RETURN_OP, AML_ROOT_PREFIX, AML_SCOPE_OP, AML_STRING_OP, AML_WORD_OP, AML_ZERO_OP,
  aml_resource_end_tag, aml_resource_extended_irq, aml_resource_fixed_memory32, aml_resource_io,
  aml_resource_irq, aml_resource_irq_noflags, aml_resource_large_header,
} from "../../../linux/abi.generated.js";
import { byteSum, dataView, setU16, setU32, setU8 } from "../../../memory/le.js";
import { ArchError } from "../errors.js";

/** Encoded AML: one or more complete terms. */
export type Aml = Uint8Array;

/** Concatenates encoded terms. */
export function amlConcat(parts: readonly Uint8Array[]): Aml {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

const bytes = (...b: number[]): Uint8Array => Uint8Array.from(b);

/** An extended (0x5B-prefixed) opcode as its two bytes, e.g. AML_DEVICE_OP. */
const extOp = (op: number): Uint8Array => bytes(op >> 8, op & 0xff);

function invalid(code: "EAMLNAME" | "EAMLVALUE", message: string): never {
  throw new ArchError(code, message);
}

// ---------------------------------------------------------------------------
// Package length (§20.2.4 "Package Length Encoding")
// ---------------------------------------------------------------------------

/** Largest PkgLength value: 28 bits. */
const MAX_PKG_LENGTH = (1 << 28) - 1;

/**
 * Encodes the PkgLength of a package whose contents after the PkgLength are
 * `bodyLength` bytes. The encoded length counts the PkgLength bytes themselves.
 * Up to 63 fits one byte; otherwise bits 7-6 of the lead byte give the number
 * of following bytes, its bits 3-0 the low nibble, the following bytes the rest.
 */
export function amlPkgLength(bodyLength: number): Uint8Array {
  if (bodyLength + 1 <= 0x3f) return bytes(bodyLength + 1);
  for (let follow = 1; follow <= 3; follow++) {
    const total = bodyLength + 1 + follow;
    if (total < 2 ** (4 + 8 * follow)) {
      const out = new Uint8Array(1 + follow);
      out[0] = (follow << 6) | (total & 0xf);
      for (let i = 1; i <= follow; i++) out[i] = (total >> (4 + 8 * (i - 1))) & 0xff;
      return out;
    }
  }
  return invalid("EAMLVALUE", `Cannot encode AML: a package of ${bodyLength} bytes exceeds the ${MAX_PKG_LENGTH}-byte PkgLength limit`);
}

/** An opcode, a PkgLength and a body: the shape of Scope, Device, Method, Package, Buffer. */
function withPkgLength(op: Uint8Array, body: readonly Uint8Array[]): Aml {
  const b = amlConcat(body);
  return amlConcat([op, amlPkgLength(b.length), b]);
}

// ---------------------------------------------------------------------------
// Names (§20.2.2 "Name Objects Encoding")
// ---------------------------------------------------------------------------

const LEAD_NAME_CHAR = /^[A-Z_][A-Z0-9_]{0,3}$/;

/** A NameSeg: 1-4 characters [A-Z_][A-Z0-9_]*, padded to four with '_'. */
export function amlNameSeg(seg: string): Uint8Array {
  if (!LEAD_NAME_CHAR.test(seg)) {
    invalid("EAMLNAME", `Cannot encode AML name segment '${seg}': it must be 1-${ACPI_NAMESEG_SIZE} characters A-Z, 0-9 or _, not starting with a digit`);
  }
  return Uint8Array.from(seg.padEnd(ACPI_NAMESEG_SIZE, "_"), (c) => c.charCodeAt(0));
}

/**
 * A NameString: an optional root prefix '\' or parent prefixes '^', then
 * dot-separated NameSegs ("\_SB_.COM1", "^PCI0", "_HID").
 */
export function amlNameString(path: string): Uint8Array {
  let rest = path;
  const prefix: number[] = [];
  if (rest.startsWith("\\")) { prefix.push(AML_ROOT_PREFIX); rest = rest.slice(1); }
  else while (rest.startsWith("^")) { prefix.push(AML_PARENT_PREFIX); rest = rest.slice(1); }
  const segs = rest.split(".");
  if (segs.length > 255 || segs.some((s) => s.length === 0)) invalid("EAMLNAME", `Cannot encode AML name '${path}': it needs 1 to 255 non-empty segments`);
  const encoded = segs.map(amlNameSeg);
  const head = segs.length === 1 ? [] : segs.length === 2 ? [AML_DUAL_NAME_PREFIX] : [AML_MULTI_NAME_PREFIX, segs.length];
  return amlConcat([Uint8Array.from([...prefix, ...head]), ...encoded]);
}

// ---------------------------------------------------------------------------
// Data objects (§20.2.3 "Data Objects Encoding")
// ---------------------------------------------------------------------------

const U64_MAX = (1n << 64n) - 1n;

/**
 * An integer in its smallest encoding: ZeroOp, OneOp, OnesOp (all 64 bits set),
 * or a Byte/Word/DWord/QWord prefix and the little-endian value. Tables that
 * use this must have revision >= 2 (64-bit integers).
 */
export function amlInteger(value: number | bigint): Aml {
  if (typeof value === "number" && !Number.isSafeInteger(value)) invalid("EAMLVALUE", `Cannot encode AML integer ${value}: not an integer`);
  const v = BigInt(value);
  if (v < 0n || v > U64_MAX) invalid("EAMLVALUE", `Cannot encode AML integer ${v}: it must be between 0 and 2^64-1`);
  if (v === 0n) return bytes(AML_ZERO_OP);
  if (v === 1n) return bytes(AML_ONE_OP);
  if (v === U64_MAX) return bytes(AML_ONES_OP);
  const [op, size] = v <= 0xffn ? [AML_BYTE_OP, 1] : v <= 0xffffn ? [AML_WORD_OP, 2] : v <= 0xffff_ffffn ? [AML_DWORD_OP, 4] : [AML_QWORD_OP, 8];
  const out = new Uint8Array(1 + size);
  out[0] = op;
  for (let i = 0; i < size; i++) out[1 + i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return out;
}

/** A String: ASCII characters 0x01-0x7F, NUL-terminated. */
export function amlString(s: string): Aml {
  const chars = Array.from(s, (c) => c.charCodeAt(0));
  if (chars.some((c) => c < 0x01 || c > 0x7f)) invalid("EAMLVALUE", `Cannot encode AML string '${s}': only ASCII characters 0x01-0x7F are allowed`);
  return Uint8Array.from([AML_STRING_OP, ...chars, 0]);
}

/** A Package of up to 255 encoded data objects (DefPackage). */
export function amlPackage(elements: readonly Aml[]): Aml {
  if (elements.length > 255) invalid("EAMLVALUE", `Cannot encode AML package of ${elements.length} elements: at most 255`);
  return withPkgLength(bytes(AML_PACKAGE_OP), [bytes(elements.length), ...elements]);
}

/** A Buffer holding `data` (DefBuffer, with its size as an integer). */
export function amlBuffer(data: Uint8Array): Aml {
  return withPkgLength(bytes(AML_BUFFER_OP), [amlInteger(data.length), data]);
}

/**
 * A compressed EISA id such as "PNP0501" (ASL EISAID(), §19.6.35): three
 * letters of 5 bits each and four hex digits, stored big-endian in a DWord.
 */
export function amlEisaId(id: string): Aml {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) invalid("EAMLVALUE", `Cannot encode EISA id '${id}': it must be three letters A-Z and four hex digits`);
  const letter = (i: number): number => id.charCodeAt(i) - 0x40;
  const value = ((letter(0) << 26) | (letter(1) << 21) | (letter(2) << 16) | parseInt(id.slice(3), 16)) >>> 0;
  const swapped = (((value & 0xff) << 24) | ((value & 0xff00) << 8) | ((value >>> 8) & 0xff00) | (value >>> 24)) >>> 0;
  return amlInteger(swapped);
}

// ---------------------------------------------------------------------------
// Named objects and statements (§20.2.5)
// ---------------------------------------------------------------------------

/** Name(path, data): DefName. */
export function amlName(path: string, data: Aml): Aml {
  return amlConcat([bytes(AML_NAME_OP), amlNameString(path), data]);
}

/** Scope(path) { terms }: DefScope. */
export function amlScope(path: string, terms: readonly Aml[]): Aml {
  return withPkgLength(bytes(AML_SCOPE_OP), [amlNameString(path), ...terms]);
}

/** Device(path) { terms }: DefDevice. */
export function amlDevice(path: string, terms: readonly Aml[]): Aml {
  return withPkgLength(extOp(AML_DEVICE_OP), [amlNameString(path), ...terms]);
}

/** Method(path, argCount, Serialized?) { terms }: DefMethod, sync level 0. */
export function amlMethod(path: string, argCount: number, serialized: boolean, terms: readonly Aml[]): Aml {
  if (!Number.isInteger(argCount) || argCount < 0 || argCount > AML_METHOD_ARG_COUNT) {
    invalid("EAMLVALUE", `Cannot encode AML method '${path}': ${argCount} arguments, at most ${AML_METHOD_ARG_COUNT}`);
  }
  const flags = argCount | (serialized ? AML_METHOD_SERIALIZED : 0);
  return withPkgLength(bytes(AML_METHOD_OP), [amlNameString(path), bytes(flags), ...terms]);
}

/** Return(data): DefReturn. */
export function amlReturn(data: Aml): Aml {
  return amlConcat([bytes(AML_RETURN_OP), data]);
}

/** ArgN, the method's N-th argument (ArgObj, §20.2.6.1: Arg0Op 0x68 ... Arg6Op 0x6E). */
export function amlArg(n: number): Aml {
  if (!Number.isInteger(n) || n < 0 || n >= AML_METHOD_ARG_COUNT) {
    invalid("EAMLVALUE", `Cannot encode AML Arg${n}: a method has arguments Arg0 to Arg${AML_METHOD_ARG_COUNT - 1}`);
  }
  return bytes(AML_ARG0 + n);
}

/** LEqual(a, b): DefLEqual (§20.2.5.4), One when the two operands are equal, else Zero. */
export function amlLEqual(a: Aml, b: Aml): Aml {
  return amlConcat([bytes(AML_LOGICAL_EQUAL_OP), a, b]);
}

/** If (predicate) { terms }: DefIfElse without an Else (§20.2.5.3). */
export function amlIf(predicate: Aml, terms: readonly Aml[]): Aml {
  return withPkgLength(bytes(AML_IF_OP), [predicate, ...terms]);
}

/**
 * Notify(path, value): DefNotify (§20.2.5.3, §5.6.6 "Device Object
 * Notifications"): queues notification `value` (0x80 and up are
 * device-specific) for the object at `path`, which the OS hands to its driver.
 */
export function amlNotify(path: string, value: number): Aml {
  checkRange("Notify value", value, 0xff);
  return amlConcat([bytes(AML_NOTIFY_OP), amlNameString(path), amlInteger(value)]);
}

// ---------------------------------------------------------------------------
// Resource descriptors (§6.4) and ResourceTemplate
// ---------------------------------------------------------------------------

/** Small-descriptor tag byte: name in bits 6-3, length (after the tag) in bits 2-0 (§6.4.2). */
const smallTag = (name: number, size: number): number => name | (size - 1);

function checkRange(what: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    invalid("EAMLVALUE", `Cannot encode ${what} ${value}: it must be between 0 and ${max}`);
  }
}

/** IO(Decode16, min, max, alignment, length): I/O port descriptor (§6.4.2.5). */
export function ioResource(o: { min: number; max?: number; alignment?: number; length: number }): Uint8Array {
  const max = o.max ?? o.min;
  const alignment = o.alignment ?? 1;
  checkRange("I/O port", o.min, 0xffff); checkRange("I/O port", max, 0xffff);
  checkRange("I/O alignment", alignment, 0xff); checkRange("I/O length", o.length, 0xff);
  const out = new Uint8Array(aml_resource_io.SIZE);
  const v = dataView(out);
  setU8(v, aml_resource_io.descriptor_type, smallTag(ACPI_RESOURCE_NAME_IO, aml_resource_io.SIZE));
  setU8(v, aml_resource_io.flags, ACPI_DECODE_16);
  setU16(v, aml_resource_io.minimum, o.min);
  setU16(v, aml_resource_io.maximum, max);
  setU8(v, aml_resource_io.alignment, alignment);
  setU8(v, aml_resource_io.address_length, o.length);
  return out;
}

function irqMask(irqs: readonly number[]): number {
  let mask = 0;
  for (const irq of irqs) { checkRange("ISA IRQ", irq, 15); mask |= 1 << irq; }
  return mask;
}

/** IRQNoFlags(){irqs}: ISA IRQs, edge-triggered active-high exclusive (§6.4.2.1). */
export function irqNoFlagsResource(irqs: readonly number[]): Uint8Array {
  const out = new Uint8Array(aml_resource_irq_noflags.SIZE);
  const v = dataView(out);
  setU8(v, aml_resource_irq_noflags.descriptor_type, smallTag(ACPI_RESOURCE_NAME_IRQ, aml_resource_irq_noflags.SIZE));
  setU16(v, aml_resource_irq_noflags.irq_mask, irqMask(irqs));
  return out;
}

/** Interrupt polarity/trigger/sharing options shared by IRQ() and Interrupt(). */
export interface InterruptMode {
  /** Edge-triggered (default) or level-triggered. */
  edge?: boolean;
  /** Active-low (default: active-high). */
  activeLow?: boolean;
  /** Shared (default: exclusive). */
  shared?: boolean;
}

/** IRQ(Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared){irqs} (§6.4.2.1, flags: _HE bit 0, _LL bit 3, _SHR bit 4). */
export function irqResource(irqs: readonly number[], mode: InterruptMode = {}): Uint8Array {
  const out = new Uint8Array(aml_resource_irq.SIZE);
  const v = dataView(out);
  setU8(v, aml_resource_irq.descriptor_type, smallTag(ACPI_RESOURCE_NAME_IRQ, aml_resource_irq.SIZE));
  setU16(v, aml_resource_irq.irq_mask, irqMask(irqs));
  setU8(v, aml_resource_irq.flags, ((mode.edge ?? true) ? ACPI_EDGE_SENSITIVE : ACPI_LEVEL_SENSITIVE)
    | ((mode.activeLow ? ACPI_ACTIVE_LOW : ACPI_ACTIVE_HIGH) << 3)
    | ((mode.shared ? ACPI_SHARED : ACPI_EXCLUSIVE) << 4));
  return out;
}

/** Large-descriptor header: tag byte and the 16-bit length of what follows it (§6.4.3). */
function largeDescriptor(name: number, size: number): { out: Uint8Array; v: DataView } {
  const out = new Uint8Array(size);
  const v = dataView(out);
  setU8(v, aml_resource_large_header.descriptor_type, name);
  setU16(v, aml_resource_large_header.resource_length, size - aml_resource_large_header.SIZE);
  return { out, v };
}

/** Memory32Fixed(ReadWrite|ReadOnly, base, length) (§6.4.3.4). */
export function memory32FixedResource(o: { base: number; length: number; writable?: boolean }): Uint8Array {
  checkRange("Memory32Fixed base", o.base, 0xffff_ffff);
  checkRange("Memory32Fixed length", o.length, 0xffff_ffff);
  const { out, v } = largeDescriptor(ACPI_RESOURCE_NAME_FIXED_MEMORY32, aml_resource_fixed_memory32.SIZE);
  setU8(v, aml_resource_fixed_memory32.flags, (o.writable ?? true) ? ACPI_READ_WRITE_MEMORY : ACPI_READ_ONLY_MEMORY);
  setU32(v, aml_resource_fixed_memory32.address, o.base);
  setU32(v, aml_resource_fixed_memory32.address_length, o.length);
  return out;
}

/**
 * Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared){gsis}:
 * the Extended Interrupt Descriptor (§6.4.3.6; flags: consumer bit 0, _HE bit 1,
 * _LL bit 2, _SHR bit 3). Used for GSIs above 15, e.g. virtio-mmio devices.
 */
export function extendedInterruptResource(gsis: readonly number[], mode: InterruptMode = {}): Uint8Array {
  if (gsis.length < 1 || gsis.length > 255) invalid("EAMLVALUE", `Cannot encode Interrupt(): ${gsis.length} interrupts, need 1 to 255`);
  gsis.forEach((g) => checkRange("interrupt number", g, 0xffff_ffff));
  const entrySize = aml_resource_extended_irq.SIZE - aml_resource_extended_irq.interrupts;
  const { out, v } = largeDescriptor(ACPI_RESOURCE_NAME_EXTENDED_IRQ, aml_resource_extended_irq.interrupts + gsis.length * entrySize);
  setU8(v, aml_resource_extended_irq.flags, ACPI_CONSUMER
    | (((mode.edge ?? true) ? ACPI_EDGE_SENSITIVE : ACPI_LEVEL_SENSITIVE) << 1)
    | ((mode.activeLow ? ACPI_ACTIVE_LOW : ACPI_ACTIVE_HIGH) << 2)
    | ((mode.shared ? ACPI_SHARED : ACPI_EXCLUSIVE) << 3));
  setU8(v, aml_resource_extended_irq.interrupt_count, gsis.length);
  gsis.forEach((g, i) => setU32(v, aml_resource_extended_irq.interrupts + i * entrySize, g));
  return out;
}

/**
 * ResourceTemplate(){ descriptors }: a Buffer holding the descriptors and an
 * End Tag (§6.4.2.9) whose checksum makes the bytes of the template sum to zero.
 */
export function resourceTemplate(descriptors: readonly Uint8Array[]): Aml {
  const body = amlConcat([...descriptors, new Uint8Array(aml_resource_end_tag.SIZE)]);
  const endTag = body.length - aml_resource_end_tag.SIZE;
  body[endTag + aml_resource_end_tag.descriptor_type] = smallTag(ACPI_RESOURCE_NAME_END_TAG, aml_resource_end_tag.SIZE);
  body[endTag + aml_resource_end_tag.checksum] = (256 - byteSum(body)) & 0xff;
  return amlBuffer(body);
}
