/**
 * A snapshot's memory file: guest RAM, region after region in guest-address
 * order, each at a page-aligned offset, so that a restore maps each region
 * straight from the file (GuestMemory.mapFile: copy-on-write, nothing read
 * up front). The file is sparse: pages that are all zero are left as holes
 * (never touched by the guest, or given back by the balloon), so a 1 GiB
 * guest that used 40 MiB writes and stores about 40 MiB, and a hole costs no
 * page cache when a clone reads it.
 *
 * Firecracker's memory file is the same plain image of guest RAM, regions
 * back to back (its `mem_file_path`), which is what lets other tools (a
 * userfaultfd page server) serve it by offset.
 */
import { closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, readFileSync, readSync, writeSync } from "node:fs";
import { ENXIO, SEEK_DATA, SEEK_HOLE } from "../linux/abi.generated.js";
import type { GuestMemory, MemoryRegion } from "../memory/guest-memory.js";
import { errnoName, sys, SysError } from "../sys/native.js";
import { SnapshotError } from "./state-file.js";

/** Where one guest memory region lives in the memory file. */
export interface MemoryFileRegion {
  /** First guest-physical address. */
  guestBase: number;
  /** Bytes (a multiple of the page size). */
  size: number;
  /** Offset of its first byte in the memory file (page-aligned). */
  fileOffset: number;
}

const PAGE = 4096;
/** Zero checks go a chunk at a time (one memcmp), then page by page in a chunk that is not all zero. */
const CHUNK = 64 * 1024;
const ZERO_CHUNK = Buffer.alloc(CHUNK);

/** What writeMemoryFile wrote. */
export interface MemoryFileWritten {
  regions: MemoryFileRegion[];
  /** The file's size (the sum of the regions). */
  totalBytes: number;
  /** Bytes actually written: the pages that are not all zero. */
  dataBytes: number;
}

/** The file layout for `memory`: regions back to back in guest-address order. */
export function memoryFileLayout(memory: GuestMemory): MemoryFileRegion[] {
  let offset = 0;
  return memory.regions.map((r) => {
    const region = { guestBase: r.guestBase, size: r.size, fileOffset: offset };
    offset += r.size;
    return region;
  });
}

/**
 * Writes every region of `memory` to a new file at `path` (created or
 * truncated, mode 0600: it holds everything the guest had in memory),
 * leaving all-zero pages as holes. The VM must be paused (nothing writes
 * guest memory meanwhile). Throws SnapshotError ESNAPIO.
 */
export function writeMemoryFile(memory: GuestMemory, path: string): MemoryFileWritten {
  return writeImage(memory, path, (r, _i, write) => {
    // Memory a page-fault handler fills on first touch (the Uffd backend) holds data in its untouched pages too.
    const mayHoldData = memory.externallyPopulated ? undefined : anonymousPagesInUse(r);
    let runStart = -1; // start of the current run of pages to write, in the region
    const flush = (end: number) => {
      if (runStart < 0) return;
      write(runStart, end);
      runStart = -1;
    };
    for (let c = 0; c < r.size; c += CHUNK) {
      const chunkEnd = Math.min(c + CHUNK, r.size);
      const inUse = mayHoldData?.(c, chunkEnd);
      const chunk = Buffer.from(r.bytes.buffer, r.bytes.byteOffset + c, chunkEnd - c);
      if (inUse === false || (inUse === undefined && chunk.length === CHUNK && chunk.equals(ZERO_CHUNK))) {
        flush(c);
        continue;
      }
      for (let p = c; p < chunkEnd; p += PAGE) {
        const end = Math.min(p + PAGE, chunkEnd);
        const page = Buffer.from(r.bytes.buffer, r.bytes.byteOffset + p, end - p);
        if (mayHoldData?.(p, end) === false || page.equals(ZERO_CHUNK.subarray(0, page.length))) flush(p);
        else if (runStart < 0) runStart = p;
      }
    }
    flush(r.size);
  });
}

/**
 * Creates (or truncates) `path`, mode 0600, the size of `memory`'s layout,
 * and lets `pick` write ranges of each region (`write(from, to)`, offsets
 * in the region) at their place; the rest stays holes. Throws SnapshotError
 * ESNAPIO.
 */
function writeImage(memory: GuestMemory, path: string, pick: (r: MemoryRegion, i: number, write: (from: number, to: number) => void) => void): MemoryFileWritten {
  const regions = memoryFileLayout(memory);
  const totalBytes = regions.reduce((s, r) => s + r.size, 0);
  let fd: number | undefined;
  let dataBytes = 0;
  try {
    fd = openSync(path, "w", 0o600);
    ftruncateSync(fd, totalBytes);
    memory.regions.forEach((r, i) => pick(r, i, (from, to) => {
      dataBytes += writeAll(fd!, r.bytes.subarray(from, to), regions[i]!.fileOffset + from);
    }));
  } catch (e) {
    if (e instanceof SnapshotError) throw e;
    throw new SnapshotError("ESNAPIO", `Cannot write memory file '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return { regions, totalBytes, dataBytes };
}

/**
 * Writes a Diff snapshot's memory file at `path` (created or truncated,
 * mode 0600): the same layout and size as a full one (memoryFileLayout),
 * but only the pages marked in `dirty` (per region, one byte per 4 KiB
 * page, non-zero = dirty) are written, every one of them, zeros included,
 * so that each is data in the file; the rest are holes. The holes do not
 * mean zero here: they mean "as in the base", which is why a Diff is
 * restored only after rebaseMemoryFile copied it onto its base (as
 * Firecracker's diff memory file and its rebase-snap tool). The VM must be
 * paused. Throws SnapshotError ESNAPIO.
 */
export function writeDiffMemoryFile(memory: GuestMemory, path: string, dirty: readonly Uint8Array[]): MemoryFileWritten {
  return writeImage(memory, path, (r, i, write) => {
    const map = dirty[i]!;
    for (let p = 0; p < map.length;) {
      if (map[p] === 0) { p++; continue; }
      let end = p;
      while (end < map.length && map[end] !== 0) end++;
      write(p * PAGE, Math.min(end * PAGE, r.size));
      p = end;
    }
  });
}

/** What rebaseMemoryFile copied. */
export interface MemoryFileRebased {
  /** Bytes of the diff's data copied onto the base. */
  copiedBytes: number;
  /** Runs of data (SEEK_DATA to SEEK_HOLE) found in the diff. */
  runs: number;
}

/**
 * Merges a Diff snapshot's memory file onto its base (Firecracker's
 * rebase-snap, snapshot-editor's `edit-memory rebase`): every range that is
 * data in `diffPath` (found with lseek SEEK_DATA/SEEK_HOLE) is copied to the
 * same offset of `basePath`, which then is the memory file of the moment
 * the Diff was taken, to be restored with the Diff's state file. Diffs are
 * merged in the order they were taken. The two files must be the same size.
 * The holes must survive from writer to here: a file system without
 * SEEK_DATA (where the whole file reads as data), or a copy that filled the
 * holes (`cp --sparse=never`), would overwrite the base with zeros, as with
 * Firecracker's tool. Throws SnapshotError ESNAPIO or ESNAPMEMORY.
 */
export function rebaseMemoryFile(basePath: string, diffPath: string): MemoryFileRebased {
  let base: number | undefined, diff: number | undefined;
  const io = (what: string, e: unknown) =>
    new SnapshotError("ESNAPIO", `Cannot rebase '${diffPath}' onto '${basePath}': ${what}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  try {
    try {
      diff = openSync(diffPath, "r");
      base = openSync(basePath, "r+");
    } catch (e) {
      throw io("open", e);
    }
    const size = fstatSync(diff).size, baseSize = fstatSync(base).size;
    if (size !== baseSize) {
      throw new SnapshotError("ESNAPMEMORY", `Cannot rebase '${diffPath}' onto '${basePath}': the diff is ${size} bytes, the base ${baseSize}: not the same VM's memory`);
    }
    const buf = Buffer.alloc(1 << 20);
    let copiedBytes = 0, runs = 0;
    for (let at = 0; at < size;) {
      const start = sys.lseek(diff, at, SEEK_DATA);
      if (start === -ENXIO) break; // no data past `at`
      if (start < 0) throw io("lseek(SEEK_DATA)", new SysError(errnoName(-start), errnoName(-start)));
      const end = sys.lseek(diff, start, SEEK_HOLE);
      if (end < 0) throw io("lseek(SEEK_HOLE)", new SysError(errnoName(-end), errnoName(-end)));
      for (let p = start; p < end;) {
        const n = readSync(diff, buf, 0, Math.min(buf.length, end - p), p);
        if (n === 0) break;
        writeAll(base, buf.subarray(0, n), p);
        p += n;
        copiedBytes += n;
      }
      runs++;
      at = end;
    }
    fsyncSync(base);
    return { copiedBytes, runs };
  } catch (e) {
    if (e instanceof SnapshotError) throw e;
    throw io("copy", e);
  } finally {
    if (diff !== undefined) closeSync(diff);
    if (base !== undefined) closeSync(base);
  }
}

function writeAll(fd: number, bytes: Uint8Array, position: number): number {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
  return done;
}

/**
 * Opens a memory file for mapping and checks that it holds every region of
 * `regions` (a file shorter than the state says would map pages past its
 * end, which fault with SIGBUS when touched). Returns the fd (read-only);
 * the caller closes it once mapped. Throws SnapshotError ESNAPIO or
 * ESNAPMEMORY.
 */
export function openMemoryFile(path: string, regions: readonly MemoryFileRegion[]): number {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new SnapshotError("ESNAPIO", `Cannot open memory file '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new SnapshotError("ESNAPMEMORY", `Cannot load memory file '${path}': not a regular file`);
    const needed = regions.reduce((m, r) => Math.max(m, r.fileOffset + r.size), 0);
    if (st.size < needed) {
      throw new SnapshotError("ESNAPMEMORY", `Cannot load memory file '${path}': ${st.size} bytes, the snapshot's guest memory needs ${needed}`);
    }
    return fd;
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/*
 * Skipping untouched memory. A page of a private anonymous mapping that is
 * neither present nor swapped out has never been written since it was mapped
 * or discarded (MADV_DONTNEED), so it reads as zeros; reading it to find that
 * out would fault each one in (the shared zero page: no memory, but one fault
 * per 4 KiB), which was most of the time a Full snapshot of a large, mostly
 * unused guest took (1 GiB guest, 32 MiB written: ~575 ms against ~60 ms).
 * /proc/self/pagemap says which pages are present or swapped without
 * touching them (Documentation/admin-guide/mm/pagemap.rst: one 64-bit entry
 * per page, bit 63 present, bit 62 swapped; a migration entry also shows as
 * swapped). Memory mapped from a file (a restored VM's memory file) is not
 * skipped this way: its pages not yet faulted in hold the file's data.
 */
const PAGEMAP_ENTRY_BYTES = 8;
/** Pagemap entries read at a time: 2 MiB of them cover 1 GiB of memory. */
const PAGEMAP_READ_ENTRIES = 256 * 1024;

/**
 * For a region backed only by private anonymous memory (every mapping over
 * it in /proc/self/maps has inode 0 and is private): a function telling
 * whether any page in [start, end) of the region (byte offsets) is present
 * or swapped, i.e. may hold data. Undefined when the region is not all
 * anonymous or /proc cannot be read: then every page is read.
 */
function anonymousPagesInUse(r: MemoryRegion): ((start: number, end: number) => boolean) | undefined {
  const base = r.hostAddress, limit = r.hostAddress + BigInt(r.size);
  let maps: string;
  try {
    maps = readFileSync("/proc/self/maps", "latin1");
  } catch {
    return undefined;
  }
  let covered = base;
  for (const line of maps.split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S{3}(\S) \S+ \S+ (\d+)/.exec(line);
    if (!m) continue;
    const from = BigInt(`0x${m[1]}`), to = BigInt(`0x${m[2]}`);
    if (to <= base || from >= limit) continue;
    if (m[3] !== "p" || m[4] !== "0" || from > covered) return undefined;
    if (to > covered) covered = to;
  }
  if (covered < limit) return undefined;

  const pages = r.size / PAGE;
  const inUse = new Uint8Array(pages);
  let fd: number | undefined;
  try {
    fd = openSync("/proc/self/pagemap", "r");
    const buf = Buffer.alloc(Math.min(pages, PAGEMAP_READ_ENTRIES) * PAGEMAP_ENTRY_BYTES);
    const high = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
    const first = Number(base / BigInt(PAGE));
    for (let done = 0; done < pages;) {
      const want = Math.min(pages - done, PAGEMAP_READ_ENTRIES) * PAGEMAP_ENTRY_BYTES;
      let got = 0;
      while (got < want) {
        const n = readSync(fd, buf, got, want - got, (first + done) * PAGEMAP_ENTRY_BYTES + got);
        if (n === 0) return undefined;
        got += n;
      }
      // Bits 63 (present) and 62 (swapped) are the top two bits of each entry's high (second, little-endian) word.
      for (let i = 0; i < want / PAGEMAP_ENTRY_BYTES; i++) if (high[2 * i + 1]! >>> 30 !== 0) inUse[done + i] = 1;
      done += want / PAGEMAP_ENTRY_BYTES;
    }
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return (start, end) => {
    for (let p = start / PAGE; p < end / PAGE; p++) if (inUse[p]) return true;
    return false;
  };
}
