/**
 * Guest physical memory: host mappings (anonymous, or a snapshot's memory file
 * mapped copy-on-write), one per region, with
 * bounds-checked little-endian accessors. A guest address is a plain number
 * (guest-physical, < 2^52); any address that comes from the guest must pass
 * through these accessors or `slice`, which throw MemoryError when the range
 * is not entirely inside one region — never touching host memory outside it.
 *
 * Guest memory is ordinary Linux memory: it can use transparent huge pages
 * and KSM merging (madvise), and be given back with MADV_DONTNEED.
 */
import {
  MADV_DONTNEED, MADV_HUGEPAGE, MADV_MERGEABLE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE,
  PROT_READ, PROT_WRITE,
} from "../linux/abi.generated.js";
import { madvise, mmap, munmap, sys } from "../sys/native.js";

/** A guest-physical address. */
export type GuestAddress = number;

/** Why a guest memory access failed. */
export class MemoryError extends Error {
  /** EGUESTRANGE: outside guest memory. EMEMCONFIG: a bad layout. EDISPOSED: the memory was released. */
  readonly code: "EGUESTRANGE" | "EMEMCONFIG" | "EDISPOSED";
  constructor(code: MemoryError["code"], message: string) {
    super(message);
    this.name = "MemoryError";
    this.code = code;
  }
}

/** One contiguous range of guest-physical memory backed by one host mapping. */
export interface MemoryRegion {
  /** First guest-physical address. */
  readonly guestBase: number;
  /** Size in bytes (a multiple of the page size). */
  readonly size: number;
  /** Host virtual address of the mapping (for KVM_SET_USER_MEMORY_REGION). */
  readonly hostAddress: bigint;
  /** The region's bytes. */
  readonly bytes: Uint8Array;
  /** A little-endian view of the same bytes. */
  readonly view: DataView;
}

/** A transferable description of guest memory, for vCPU worker threads. */
export interface MemoryDescriptor {
  regions: { guestBase: number; size: number; hostAddress: bigint }[];
}

/** Options for creating guest memory. */
export interface MemoryOptions {
  /** Ask for transparent huge pages (MADV_HUGEPAGE). */
  hugePages?: boolean;
  /** Let KSM merge identical pages (MADV_MERGEABLE). */
  mergeable?: boolean;
}

function makeRegion(guestBase: number, size: number, hostAddress: bigint): MemoryRegion {
  const bytes = new Uint8Array(sys.view(hostAddress, size));
  return { guestBase, size, hostAddress, bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
}

/** Guest physical memory made of one or more regions. */
export class GuestMemory {
  readonly regions: readonly MemoryRegion[];
  private readonly owned: boolean;
  private disposed = false;

  private constructor(regions: MemoryRegion[], owned: boolean) {
    this.regions = regions.sort((a, b) => a.guestBase - b.guestBase);
    this.owned = owned;
  }

  /** Maps fresh zeroed anonymous memory for each {guestBase, size} range. */
  static create(ranges: { guestBase: number; size: number }[], options: MemoryOptions = {}): GuestMemory {
    const regions: MemoryRegion[] = [];
    try {
      for (const r of ranges) {
        if (r.size <= 0 || r.size % 4096 !== 0 || r.guestBase % 4096 !== 0) {
          throw new MemoryError("EMEMCONFIG", `Cannot map guest memory: region 0x${r.guestBase.toString(16)}+0x${r.size.toString(16)} is not page-aligned`);
        }
        const host = mmap(r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
        if (options.hugePages) madvise(host, r.size, MADV_HUGEPAGE);
        if (options.mergeable) madvise(host, r.size, MADV_MERGEABLE);
        regions.push(makeRegion(r.guestBase, r.size, host));
      }
    } catch (e) {
      for (const r of regions) munmap(r.hostAddress, r.size);
      throw e;
    }
    const m = new GuestMemory(regions, true);
    m.checkOverlaps();
    return m;
  }

  /**
   * Maps each range from `fd` (a snapshot's memory file) at its
   * `fileOffset`, private and copy-on-write (MAP_PRIVATE): nothing is read
   * until the guest or flint touches a page, a page read is the file's page
   * (shared, through the page cache, with every other mapping of the file),
   * and a page written becomes this VM's own. So mapping takes the same time
   * whatever the size of guest memory, and clones of one snapshot share the
   * pages none of them has written. The fd may be closed once this returns.
   * Note that `discard` (MADV_DONTNEED) of such a page brings back the file's
   * page, not zeros.
   */
  static mapFile(ranges: { guestBase: number; size: number; fileOffset: number }[], fd: number, options: MemoryOptions = {}): GuestMemory {
    const regions: MemoryRegion[] = [];
    try {
      for (const r of ranges) {
        if (r.size <= 0 || r.size % 4096 !== 0 || r.guestBase % 4096 !== 0 || r.fileOffset % 4096 !== 0) {
          throw new MemoryError("EMEMCONFIG", `Cannot map guest memory: region 0x${r.guestBase.toString(16)}+0x${r.size.toString(16)} at file offset ${r.fileOffset} is not page-aligned`);
        }
        const host = mmap(r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, r.fileOffset);
        if (options.mergeable) madvise(host, r.size, MADV_MERGEABLE);
        regions.push(makeRegion(r.guestBase, r.size, host));
      }
    } catch (e) {
      for (const r of regions) munmap(r.hostAddress, r.size);
      throw e;
    }
    const m = new GuestMemory(regions, true);
    m.checkOverlaps();
    return m;
  }

  /** Views memory described by another thread (does not own the mappings). */
  static attach(desc: MemoryDescriptor): GuestMemory {
    return new GuestMemory(desc.regions.map((r) => makeRegion(r.guestBase, r.size, r.hostAddress)), false);
  }

  /** A description that can be posted to a worker and passed to `attach`. */
  describe(): MemoryDescriptor {
    return { regions: this.regions.map((r) => ({ guestBase: r.guestBase, size: r.size, hostAddress: r.hostAddress })) };
  }

  /** Total guest RAM in bytes. */
  get totalBytes(): number {
    return this.regions.reduce((s, r) => s + r.size, 0);
  }

  private checkOverlaps(): void {
    for (let i = 1; i < this.regions.length; i++) {
      const a = this.regions[i - 1]!, b = this.regions[i]!;
      if (a.guestBase + a.size > b.guestBase) {
        throw new MemoryError("EMEMCONFIG", "Cannot map guest memory: regions overlap");
      }
    }
  }

  /** The region that holds all of [address, address+length), or undefined. */
  findRegion(address: number, length: number): MemoryRegion | undefined {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0) return undefined;
    for (const r of this.regions) {
      if (address >= r.guestBase && address + length <= r.guestBase + r.size) return r;
    }
    return undefined;
  }

  /** True when [address, address+length) lies entirely in guest memory. */
  contains(address: number, length: number): boolean {
    return this.findRegion(address, length) !== undefined;
  }

  private region(address: number, length: number): MemoryRegion {
    // A read of unmapped memory would end the process (SIGSEGV): after dispose() every accessor throws instead.
    if (this.disposed) throw new MemoryError("EDISPOSED", "guest memory was released (the VM ended)");
    const r = this.findRegion(address, length);
    if (!r) {
      throw new MemoryError("EGUESTRANGE", `guest range 0x${address.toString(16)}+${length} is outside guest memory`);
    }
    return r;
  }

  /** A live view (no copy) of guest bytes [address, address+length). */
  slice(address: GuestAddress, length: number): Uint8Array {
    const r = this.region(address, length);
    const off = address - r.guestBase;
    return r.bytes.subarray(off, off + length);
  }

  /**
   * The index in `regions` of the region that holds guest bytes [address,
   * address+length) (their offset in its `bytes` is address - guestBase), for a
   * system call that reads or writes them in place: writev names them by
   * (buffer, offset, length) and the addon checks the range, so no host address
   * leaves this module. Throws MemoryError like the accessors.
   */
  regionIndex(address: GuestAddress, length: number): number {
    return this.regions.indexOf(this.region(address, length));
  }

  /** Copies `data` into guest memory at `address`. */
  write(address: GuestAddress, data: Uint8Array): void {
    this.slice(address, data.length).set(data);
  }

  /** Copies `length` guest bytes out of guest memory. */
  read(address: GuestAddress, length: number): Uint8Array {
    return this.slice(address, length).slice();
  }

  /** Sets `length` bytes at `address` to `value`. */
  fill(address: GuestAddress, length: number, value = 0): void {
    this.slice(address, length).fill(value);
  }

  readU8(a: GuestAddress): number { const r = this.region(a, 1); return r.view.getUint8(a - r.guestBase); }
  readU16(a: GuestAddress): number { const r = this.region(a, 2); return r.view.getUint16(a - r.guestBase, true); }
  readU32(a: GuestAddress): number { const r = this.region(a, 4); return r.view.getUint32(a - r.guestBase, true); }
  readU64(a: GuestAddress): bigint { const r = this.region(a, 8); return r.view.getBigUint64(a - r.guestBase, true); }
  writeU8(a: GuestAddress, x: number): void { const r = this.region(a, 1); r.view.setUint8(a - r.guestBase, x); }
  writeU16(a: GuestAddress, x: number): void { const r = this.region(a, 2); r.view.setUint16(a - r.guestBase, x, true); }
  writeU32(a: GuestAddress, x: number): void { const r = this.region(a, 4); r.view.setUint32(a - r.guestBase, x >>> 0, true); }
  writeU64(a: GuestAddress, x: bigint | number): void { const r = this.region(a, 8); r.view.setBigUint64(a - r.guestBase, BigInt(x), true); }

  /**
   * Gives pages back to the host (MADV_DONTNEED): they read as zero
   * afterwards, or, in memory mapped from a snapshot's file (mapFile), as
   * the file's pages again.
   */
  discard(address: GuestAddress, length: number): void {
    const r = this.region(address, length);
    if ((address - r.guestBase) % 4096 !== 0 || length % 4096 !== 0) {
      throw new MemoryError("EGUESTRANGE", "discard range must be page-aligned");
    }
    madvise(r.hostAddress + BigInt(address - r.guestBase), length, MADV_DONTNEED);
  }

  /** Unmaps owned memory. Views must not be used afterwards. */
  dispose(): void {
    if (this.disposed || !this.owned) return;
    this.disposed = true;
    for (const r of this.regions) munmap(r.hostAddress, r.size);
  }
}
