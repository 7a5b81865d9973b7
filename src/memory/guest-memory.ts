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
  PROT_NONE, PROT_READ, PROT_WRITE,
} from "../linux/abi.generated.js";
import { madvise, mmap, mmapOver, munmap, sys } from "../sys/native.js";

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
  /**
   * With dirty tracking (MemoryOptions.trackDirty): one byte per 4 KiB page,
   * set (to 1) when flint itself may have written the page, shared by every
   * thread's view of this memory. KVM's dirty log covers the guest's own
   * writes; this covers the device emulation's (as Firecracker's bitmap does).
   */
  readonly dirty?: Uint8Array;
}

/** A transferable description of guest memory, for vCPU worker threads. */
export interface MemoryDescriptor {
  regions: { guestBase: number; size: number; hostAddress: bigint; dirty?: SharedArrayBuffer }[];
}

/** The page size of dirty tracking (KVM's dirty log is per 4 KiB page on x86). */
export const DIRTY_PAGE_SIZE = 4096;

/** Options for creating guest memory. */
export interface MemoryOptions {
  /** Ask for transparent huge pages (MADV_HUGEPAGE). */
  hugePages?: boolean;
  /** Let KSM merge identical pages (MADV_MERGEABLE). */
  mergeable?: boolean;
  /**
   * Keep a dirty-page map of flint's own writes (MemoryRegion.dirty), for
   * Diff snapshots. Off by default: the accessors then cost one test more.
   */
  trackDirty?: boolean;
  /**
   * Pages nobody has touched yet are filled on their first touch by someone
   * else (a userfaultfd page-fault handler: src/snapshot/uffd.ts), so an
   * untouched page is not known to be zero: a snapshot must read it.
   */
  externallyPopulated?: boolean;
}

function makeRegion(guestBase: number, size: number, hostAddress: bigint, dirty?: SharedArrayBuffer): MemoryRegion {
  const bytes = new Uint8Array(sys.view(hostAddress, size));
  return {
    guestBase, size, hostAddress, bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
    ...(dirty ? { dirty: new Uint8Array(dirty) } : {}),
  };
}

function dirtyMap(size: number, track: boolean | undefined): SharedArrayBuffer | undefined {
  return track ? new SharedArrayBuffer(Math.ceil(size / DIRTY_PAGE_SIZE)) : undefined;
}

/**
 * Marks the pages of [off, off+length) of `r` dirty. Bytes, not bits: a
 * byte store cannot lose a neighbour's mark to another thread's store, so
 * no atomics are needed; the map is read and cleared only while the VM is
 * paused (every device quiesced).
 */
function markDirty(r: MemoryRegion, off: number, length: number): void {
  const d = r.dirty;
  if (d === undefined || length === 0) return;
  const first = Math.floor(off / DIRTY_PAGE_SIZE);
  const last = Math.floor((off + length - 1) / DIRTY_PAGE_SIZE);
  if (first === last) d[first] = 1;
  else d.fill(1, first, last + 1);
}

/** Guest physical memory made of one or more regions. */
export class GuestMemory {
  readonly regions: readonly MemoryRegion[];
  /** MemoryOptions.externallyPopulated: an untouched page may hold data (a snapshot reads every page). */
  readonly externallyPopulated: boolean;
  private readonly owned: boolean;
  private disposed = false;
  /** Made by reserve() and not yet handed over: disposed for every accessor, but dispose() still unmaps it. */
  private reservation = false;

  private constructor(regions: MemoryRegion[], owned: boolean, externallyPopulated = false) {
    this.regions = regions.sort((a, b) => a.guestBase - b.guestBase);
    this.owned = owned;
    this.externallyPopulated = externallyPopulated;
  }

  /** Maps fresh zeroed anonymous memory for each {guestBase, size} range. */
  static create(ranges: { guestBase: number; size: number }[], options: MemoryOptions = {}): GuestMemory {
    return GuestMemory.map(ranges, options, (r) => {
      const host = mmap(r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
      try {
        if (options.hugePages) madvise(host, r.size, MADV_HUGEPAGE);
      } catch (e) {
        munmap(host, r.size);
        throw e;
      }
      return host;
    });
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
    for (const r of ranges) {
      if (r.fileOffset % 4096 !== 0) {
        throw new MemoryError("EMEMCONFIG", `Cannot map guest memory: region 0x${r.guestBase.toString(16)} at file offset ${r.fileOffset} is not page-aligned`);
      }
    }
    return GuestMemory.map(ranges, options, (r) => mmap(r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, r.fileOffset));
  }

  /**
   * Reserves host address space for each range: mapped PROT_NONE, nothing
   * committed, its views made. Such memory can be registered with KVM
   * ahead of time (a warm VM, src/vm/warm-vms.ts) and given a snapshot's
   * contents later by mapFileOver, which then costs one mmap per region.
   * Its accessors throw EDISPOSED (the pages would fault): only mapFileOver
   * and dispose() use it.
   */
  static reserve(ranges: { guestBase: number; size: number }[]): GuestMemory {
    const m = GuestMemory.map(ranges, {}, (r) => mmap(r.size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE));
    m.disposed = true;
    m.reservation = true;
    return m;
  }

  /**
   * mapFile into `reserved` (made by reserve() for exactly these ranges),
   * which this takes over: the same host addresses, now the file's pages
   * copy-on-write, and the views made at reserve() time (so this makes no
   * external ArrayBuffer, whose size V8 would count towards a GC). `reserved`
   * must not be used afterwards; if this throws, it is released.
   */
  static mapFileOver(
    reserved: GuestMemory, ranges: { guestBase: number; size: number; fileOffset: number }[], fd: number, options: Omit<MemoryOptions, "trackDirty" | "hugePages"> = {},
  ): GuestMemory {
    const sorted = [...ranges].sort((a, b) => a.guestBase - b.guestBase);
    if (!sorted.every((r) => r.fileOffset % 4096 === 0)) {
      reserved.dispose();
      throw new MemoryError("EMEMCONFIG", "Cannot map guest memory: a region's file offset is not page-aligned");
    }
    return GuestMemory.takeOver(reserved, sorted, "the snapshot's", options, (host, r) =>
      mmapOver(host, r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, r.fileOffset));
  }

  /**
   * create() into `reserved` (made by reserve() for `ranges`), which this
   * takes over: fresh zeroed anonymous memory at the reservation's host
   * addresses, so a VM made ahead (its memory registered with KVM) can be
   * given to a new guest as well as to a restore. `reserved` must not be used
   * afterwards; if this throws, it is released.
   */
  static createOver(reserved: GuestMemory, ranges: { guestBase: number; size: number }[], options: Omit<MemoryOptions, "trackDirty" | "hugePages" | "externallyPopulated"> = {}): GuestMemory {
    const sorted = [...ranges].sort((a, b) => a.guestBase - b.guestBase);
    return GuestMemory.takeOver(reserved, sorted, "the guest's", options, (host, r) =>
      mmapOver(host, r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE));
  }

  /** Maps `sorted` (reserved's layout, else refused) over `reserved`'s regions with `mapOne`; the new owner of its mappings. */
  private static takeOver<R extends { guestBase: number; size: number }>(
    reserved: GuestMemory, sorted: R[], whose: string, options: { mergeable?: boolean }, mapOne: (host: bigint, r: R) => void,
  ): GuestMemory {
    const fits = reserved.reservation && sorted.length === reserved.regions.length &&
      sorted.every((r, i) => r.guestBase === reserved.regions[i]!.guestBase && r.size === reserved.regions[i]!.size);
    if (!fits) {
      reserved.dispose();
      throw new MemoryError("EMEMCONFIG", `Cannot map guest memory: the reserved memory does not have ${whose} layout`);
    }
    reserved.reservation = false; // handed over: only the new object unmaps
    try {
      sorted.forEach((r, i) => {
        const host = reserved.regions[i]!.hostAddress;
        mapOne(host, r);
        if (options.mergeable) madvise(host, r.size, MADV_MERGEABLE);
      });
    } catch (e) {
      for (const r of reserved.regions) munmap(r.hostAddress, r.size);
      throw e;
    }
    return new GuestMemory([...reserved.regions], true);
  }

  /** One mapping per range (made by `mapOne`), checked, advised and owned; all unmapped again if one fails. */
  private static map<R extends { guestBase: number; size: number }>(ranges: R[], options: MemoryOptions, mapOne: (r: R) => bigint): GuestMemory {
    const regions: MemoryRegion[] = [];
    try {
      for (const r of ranges) {
        if (r.size <= 0 || r.size % 4096 !== 0 || r.guestBase % 4096 !== 0) {
          throw new MemoryError("EMEMCONFIG", `Cannot map guest memory: region 0x${r.guestBase.toString(16)}+0x${r.size.toString(16)} is not page-aligned`);
        }
        const host = mapOne(r);
        regions.push(makeRegion(r.guestBase, r.size, host, dirtyMap(r.size, options.trackDirty)));
        if (options.mergeable) madvise(host, r.size, MADV_MERGEABLE);
      }
    } catch (e) {
      for (const r of regions) munmap(r.hostAddress, r.size);
      throw e;
    }
    const m = new GuestMemory(regions, true, options.externallyPopulated ?? false);
    m.checkOverlaps();
    return m;
  }

  /** Views memory described by another thread (does not own the mappings). */
  static attach(desc: MemoryDescriptor): GuestMemory {
    return new GuestMemory(desc.regions.map((r) => makeRegion(r.guestBase, r.size, r.hostAddress, r.dirty)), false);
  }

  /** A description that can be posted to a worker and passed to `attach` (the dirty maps are shared, not copied). */
  describe(): MemoryDescriptor {
    return {
      regions: this.regions.map((r) => ({
        guestBase: r.guestBase, size: r.size, hostAddress: r.hostAddress,
        ...(r.dirty ? { dirty: r.dirty.buffer as SharedArrayBuffer } : {}),
      })),
    };
  }

  /** Whether flint's own writes are tracked (MemoryOptions.trackDirty). */
  get tracksDirty(): boolean {
    return this.regions.some((r) => r.dirty !== undefined);
  }

  /** Forgets every mark of flint's own writes (after a snapshot; the VM paused). */
  clearDirty(): void {
    for (const r of this.regions) r.dirty?.fill(0);
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

  /** The region for a write of [address, address+length), its pages marked dirty. */
  private writable(address: number, length: number): MemoryRegion {
    const r = this.region(address, length);
    if (r.dirty !== undefined) markDirty(r, address - r.guestBase, length);
    return r;
  }

  /**
   * A live view (no copy) of guest bytes [address, address+length). The
   * caller may write through it, so with dirty tracking its pages are
   * marked dirty (a reader that only reads costs a larger Diff, never a
   * lost page).
   */
  slice(address: GuestAddress, length: number): Uint8Array {
    const r = this.writable(address, length);
    const off = address - r.guestBase;
    return r.bytes.subarray(off, off + length);
  }

  /**
   * A live view (no copy) of guest bytes [address, address+length) for
   * reading only: it marks nothing dirty, so the caller must not write
   * through it (slice is the view to write through).
   */
  readView(address: GuestAddress, length: number): Uint8Array {
    const r = this.region(address, length);
    const off = address - r.guestBase;
    return r.bytes.subarray(off, off + length);
  }

  /**
   * The index in `regions` of the region that holds guest bytes [address,
   * address+length) (their offset in its `bytes` is address - guestBase), or
   * -1, for a system call that reads or writes them in place: readv and writev
   * name them by (buffer, offset, length) and the addon checks the range, so no
   * host address leaves this module. It marks nothing dirty: a caller whose
   * call writes them (readv) marks what was written with markWritten.
   */
  indexOfRegion(address: GuestAddress, length: number): number {
    const r = this.findRegion(address, length);
    return r === undefined ? -1 : this.regions.indexOf(r);
  }

  /** Marks guest bytes [address, address+length), written in place by a system call, dirty. Throws MemoryError like the accessors. */
  markWritten(address: GuestAddress, length: number): void {
    this.writable(address, length);
  }

  /**
   * For a caller that keeps a live view (slice) and writes through it
   * later, as a virtqueue does its used ring: a function that marks
   * [address, address+length) dirty again, to call at each write; undefined
   * without dirty tracking. The marks a slice() makes are cleared by each
   * snapshot, so a view kept across one must mark its writes itself.
   */
  writeMarker(address: GuestAddress, length: number): (() => void) | undefined {
    const r = this.region(address, length);
    if (r.dirty === undefined) return undefined;
    const off = address - r.guestBase;
    return () => markDirty(r, off, length);
  }

  /** Copies `data` into guest memory at `address`. */
  write(address: GuestAddress, data: Uint8Array): void {
    this.slice(address, data.length).set(data);
  }

  /** Copies `length` guest bytes out of guest memory. */
  read(address: GuestAddress, length: number): Uint8Array {
    const r = this.region(address, length);
    const off = address - r.guestBase;
    return r.bytes.slice(off, off + length);
  }

  /** Sets `length` bytes at `address` to `value`. */
  fill(address: GuestAddress, length: number, value = 0): void {
    this.slice(address, length).fill(value);
  }

  readU8(a: GuestAddress): number { const r = this.region(a, 1); return r.view.getUint8(a - r.guestBase); }
  readU16(a: GuestAddress): number { const r = this.region(a, 2); return r.view.getUint16(a - r.guestBase, true); }
  readU32(a: GuestAddress): number { const r = this.region(a, 4); return r.view.getUint32(a - r.guestBase, true); }
  readU64(a: GuestAddress): bigint { const r = this.region(a, 8); return r.view.getBigUint64(a - r.guestBase, true); }
  writeU8(a: GuestAddress, x: number): void { const r = this.writable(a, 1); r.view.setUint8(a - r.guestBase, x); }
  writeU16(a: GuestAddress, x: number): void { const r = this.writable(a, 2); r.view.setUint16(a - r.guestBase, x, true); }
  writeU32(a: GuestAddress, x: number): void { const r = this.writable(a, 4); r.view.setUint32(a - r.guestBase, x >>> 0, true); }
  writeU64(a: GuestAddress, x: bigint | number): void { const r = this.writable(a, 8); r.view.setBigUint64(a - r.guestBase, BigInt(x), true); }

  /**
   * Gives pages back to the host (MADV_DONTNEED): they read as zero
   * afterwards, or, in memory mapped from a snapshot's file (mapFile), as
   * the file's pages again. With dirty tracking they are marked dirty: their
   * content changed, and KVM's log does not see it.
   */
  discard(address: GuestAddress, length: number): void {
    const r = this.writable(address, length);
    if ((address - r.guestBase) % 4096 !== 0 || length % 4096 !== 0) {
      throw new MemoryError("EGUESTRANGE", "discard range must be page-aligned");
    }
    madvise(r.hostAddress + BigInt(address - r.guestBase), length, MADV_DONTNEED);
  }

  /** Unmaps owned memory. Views must not be used afterwards. */
  dispose(): void {
    if (this.reservation) {
      this.reservation = false;
      for (const r of this.regions) munmap(r.hostAddress, r.size);
      return;
    }
    if (this.disposed || !this.owned) return;
    this.disposed = true;
    for (const r of this.regions) munmap(r.hostAddress, r.size);
  }
}
