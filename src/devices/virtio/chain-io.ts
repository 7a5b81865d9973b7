/**
 * Gather/scatter over a popped descriptor chain. A request's bytes are spread
 * over the chain's buffers in any split the driver likes (virtio 1.x §2.6.4:
 * "message framing" — devices must not assume particular buffer boundaries),
 * so device code reads headers and payloads through these helpers rather than
 * through individual buffers.
 *
 * The buffers were checked by SplitQueue.pop to lie inside guest memory; the
 * helpers never read outside the readable buffers nor write past the writable
 * ones. The driver may change the bytes concurrently: copy what you validate.
 */
import type { GuestMemory } from "../../memory/guest-memory.js";
import { dataView, getU16, getU32, getU64, setU16, setU32, setU64 } from "../../memory/le.js";
import type { DescriptorChain, GuestBuffer } from "./types.js";

/** A request that does not fit its chain (a guest fault: fail the request, not the device). */
export class ChainIoError extends Error {
  readonly code: "ECHAINSHORT";
  constructor(code: ChainIoError["code"], message: string) {
    super(message);
    this.name = "ChainIoError";
    this.code = code;
  }
}

/** Calls `visit(addr, length, done)` for each piece of `buffers` in [offset, offset+length); returns the bytes visited. */
function forEachPart(
  buffers: readonly GuestBuffer[], offset: number, length: number,
  visit: (addr: number, length: number, done: number) => void,
): number {
  let done = 0, skip = Math.max(0, offset);
  for (const b of buffers) {
    if (done >= length) break;
    if (skip >= b.len) { skip -= b.len; continue; }
    const n = Math.min(b.len - skip, length - done);
    visit(b.addr + skip, n, done);
    done += n;
    skip = 0;
  }
  return done;
}

/**
 * Copies up to `length` bytes starting `offset` bytes into the chain's readable buffers.
 * The result is shorter when the readable buffers end first.
 */
export function readChain(mem: GuestMemory, chain: DescriptorChain, offset: number, length: number): Uint8Array {
  const n = Math.max(0, Math.min(length, chain.readableBytes - offset));
  const out = new Uint8Array(n);
  forEachPart(chain.readable, offset, n, (addr, len, done) => out.set(mem.slice(addr, len), done));
  return out;
}

/**
 * Copies `data` into the chain's writable buffers starting `offset` bytes in; returns the
 * bytes written, fewer than data.length when the writable buffers end first.
 */
export function writeChain(mem: GuestMemory, chain: DescriptorChain, offset: number, data: Uint8Array): number {
  const n = Math.max(0, Math.min(data.length, chain.writableBytes - offset));
  return forEachPart(chain.writable, offset, n, (addr, len, done) => mem.write(addr, data.subarray(done, done + len)));
}

/** A cursor over a chain's readable bytes: parse a header, then the payload. */
export class ChainReader {
  private pos = 0;
  constructor(private readonly mem: GuestMemory, private readonly chain: DescriptorChain) {}

  /** Bytes consumed so far. */
  get position(): number { return this.pos; }
  /** Readable bytes not consumed yet. */
  get remaining(): number { return this.chain.readableBytes - this.pos; }

  /** The next `length` bytes (a copy); throws ChainIoError "ECHAINSHORT" when fewer remain. */
  read(length: number): Uint8Array {
    if (!Number.isInteger(length) || length < 0 || length > this.remaining) {
      throw new ChainIoError("ECHAINSHORT", `Cannot read ${length} bytes from chain ${this.chain.head}: ${this.remaining} readable bytes remain`);
    }
    const out = readChain(this.mem, this.chain, this.pos, length);
    this.pos += length;
    return out;
  }

  /** Up to `length` of the next bytes: fewer when the chain ends. */
  readUpTo(length: number): Uint8Array {
    return this.read(Math.max(0, Math.min(length, this.remaining)));
  }

  /** Steps over `length` bytes (ChainIoError when fewer remain). */
  skip(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.remaining) {
      throw new ChainIoError("ECHAINSHORT", `Cannot skip ${length} bytes of chain ${this.chain.head}: ${this.remaining} readable bytes remain`);
    }
    this.pos += length;
  }

  readU8(): number { return this.read(1)[0]!; }
  readU16(): number { return getU16(dataView(this.read(2)), 0); }
  readU32(): number { return getU32(dataView(this.read(4)), 0); }
  readU64(): bigint { return getU64(dataView(this.read(8)), 0); }
}

/** A cursor over a chain's writable bytes; `written` is what to pass to pushUsed. */
export class ChainWriter {
  private pos = 0;
  constructor(private readonly mem: GuestMemory, private readonly chain: DescriptorChain) {}

  /** Bytes written so far. */
  get written(): number { return this.pos; }
  /** Writable bytes left. */
  get remaining(): number { return this.chain.writableBytes - this.pos; }

  /** Writes all of `data`; throws ChainIoError "ECHAINSHORT" (writing nothing) when it does not fit. */
  write(data: Uint8Array): void {
    if (data.length > this.remaining) {
      throw new ChainIoError("ECHAINSHORT", `Cannot write ${data.length} bytes to chain ${this.chain.head}: ${this.remaining} writable bytes remain`);
    }
    this.pos += writeChain(this.mem, this.chain, this.pos, data);
  }

  /** Writes as much of `data` as fits; returns the bytes written. */
  writeUpTo(data: Uint8Array): number {
    const n = writeChain(this.mem, this.chain, this.pos, data);
    this.pos += n;
    return n;
  }

  writeU8(x: number): void { this.write(Uint8Array.of(x & 0xff)); }
  writeU16(x: number): void { const b = new Uint8Array(2); setU16(dataView(b), 0, x); this.write(b); }
  writeU32(x: number): void { const b = new Uint8Array(4); setU32(dataView(b), 0, x); this.write(b); }
  writeU64(x: bigint): void { const b = new Uint8Array(8); setU64(dataView(b), 0, BigInt.asUintN(64, x)); this.write(b); }
}
