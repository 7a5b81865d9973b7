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
import { closeSync, fstatSync, ftruncateSync, openSync, readFileSync, readSync, writeSync } from "node:fs";
import type { GuestMemory, MemoryRegion } from "../memory/guest-memory.js";
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
  const regions = memoryFileLayout(memory);
  const totalBytes = regions.reduce((s, r) => s + r.size, 0);
  let fd: number | undefined;
  let dataBytes = 0;
  try {
    fd = openSync(path, "w", 0o600);
    ftruncateSync(fd, totalBytes);
    memory.regions.forEach((r, i) => {
      const base = regions[i]!.fileOffset;
      let runStart = -1; // start of the current run of pages to write, in the region
      const flush = (end: number) => {
        if (runStart < 0) return;
        dataBytes += writeAll(fd!, r.bytes.subarray(runStart, end), base + runStart);
        runStart = -1;
      };
      const mayHoldData = anonymousPagesInUse(r);
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
  } catch (e) {
    if (e instanceof SnapshotError) throw e;
    throw new SnapshotError("ESNAPIO", `Cannot write memory file '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return { regions, totalBytes, dataBytes };
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
