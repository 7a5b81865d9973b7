/**
 * A page-fault handler for the Uffd memory backend (`flint uffd-handler`):
 * the other end of src/snapshot/uffd.ts's handshake, and of Firecracker's
 * (it serves Firecracker 1.7 and later as well as flint). It listens on a
 * Unix socket, takes one VMM's connection, reads the region mappings and the
 * userfaultfd (SCM_RIGHTS), and serves every missing-page fault with
 * UFFDIO_COPY of that page from the memory file (mapped read-only here), or,
 * for a page the VMM gave back (UFFD_EVENT_REMOVE: the balloon's
 * MADV_DONTNEED), with UFFDIO_ZEROPAGE, as Firecracker's handling-page-faults
 * document says a handler must. It ends when the VMM closes the connection
 * (flint does when the VM ends; so does the VMM's exit) or when the VMM's
 * memory is gone (ESRCH).
 *
 * The VMM is trusted no more than it must be: the handshake is checked
 * (every region inside the memory file, aligned), and every fault address
 * must lie in a region it announced; anything else ends the handler with
 * one line (a VMM whose faults cannot be served cannot go on anyway).
 */
import { closeSync, fstatSync, openSync, rmSync } from "node:fs";
import {
  AF_UNIX, EAGAIN, EEXIST, EINTR, ENOENT, ESRCH, MAP_NORESERVE, MAP_PRIVATE, POLLHUP, POLLIN, POLLRDHUP, pollfd, PROT_READ,
  SOCK_CLOEXEC, SOCK_STREAM, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMOVE, UFFDIO_ZEROPAGE, uffd_msg, uffdio_zeropage,
} from "../linux/abi.generated.js";
import { errnoName, mmap, munmap, sys } from "../sys/native.js";
import { parseUffdMappings, UFFD_HANDSHAKE_MAX_BYTES, type UffdRegionMapping } from "./uffd.js";
import { SnapshotError } from "./state-file.js";

/** What the handler did (printed as JSON by `flint uffd-handler` when it ends). */
export interface UffdHandlerStats {
  /** Missing-page faults read from the userfaultfd. */
  faults: number;
  /** Pages filled from the memory file (UFFDIO_COPY). */
  pagesCopied: number;
  /** Pages filled with zeros (UFFDIO_ZEROPAGE) because the VMM had given them back. */
  pagesZeroed: number;
  /** Faults on pages already there (another fault filled them first: EEXIST). */
  pagesAlreadyThere: number;
  /** UFFD_EVENT_REMOVE events. */
  removeEvents: number;
  /** Why it ended: "closed" (the VMM closed the connection), "exited" (the VMM's memory is gone). */
  end: "closed" | "exited";
}

/** How to run the handler. */
export interface UffdHandlerOptions {
  /** The socket to listen on (created; an existing file there is an error). Removed when the handler ends. */
  socketPath: string;
  /** The snapshot's memory file. */
  memFilePath: string;
  /** Called once the socket listens (a VMM may connect from then on). */
  onListening?: () => void;
}

const PAGE_EVENTS_PER_READ = 64;

function fail(message: string): never {
  throw new SnapshotError("ESNAPUFFD", message);
}

/**
 * Runs the handler to its end (synchronously: it blocks this thread in
 * accept and poll, so run it in a process or thread of its own). Throws
 * SnapshotError ESNAPUFFD with one line on a bad memory file, socket or
 * handshake, or a fault it cannot serve.
 */
export function runUffdHandler(o: UffdHandlerOptions): UffdHandlerStats {
  let memFd: number;
  try {
    memFd = openSync(o.memFilePath, "r");
  } catch (e) {
    fail(`Cannot open memory file '${o.memFilePath}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let fileBytes: number;
  let file: { address: bigint; view: Uint8Array } | undefined;
  let listener = -1, conn = -1, uffd = -1;
  let bound = false;
  try {
    const st = fstatSync(memFd);
    if (!st.isFile() || st.size === 0) fail(`Cannot serve '${o.memFilePath}': not a regular file with data`);
    fileBytes = st.size;
    const address = mmap(fileBytes, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, memFd, 0);
    file = { address, view: new Uint8Array(sys.view(address, fileBytes)) };
    closeSync(memFd);
    memFd = -1;

    listener = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0) fail(`Cannot create a socket: ${errnoName(-listener)}`);
    const b = sys.bindUnix(listener, o.socketPath);
    if (b < 0) fail(`Cannot listen on '${o.socketPath}': ${errnoName(-b)}`);
    bound = true;
    const l = sys.listen(listener, 1);
    if (l < 0) fail(`Cannot listen on '${o.socketPath}': ${errnoName(-l)}`);
    o.onListening?.();
    do conn = sys.accept4(listener, SOCK_CLOEXEC); while (conn === -EINTR);
    if (conn < 0) fail(`Cannot accept a connection on '${o.socketPath}': ${errnoName(-conn)}`);

    // The handshake: one message, the userfaultfd attached.
    const buf = new Uint8Array(UFFD_HANDSHAKE_MAX_BYTES);
    const fds = new Int32Array(1);
    let n: number;
    do n = sys.recvFd(conn, buf, buf.length, fds); while (n === -EINTR);
    uffd = fds[0]!;
    if (n < 0) fail(`Cannot read the handshake: ${errnoName(-n)}`);
    if (n === 0) fail("The VMM closed the connection before the handshake");
    if (uffd < 0) fail("The handshake came without a userfaultfd (SCM_RIGHTS)");
    const regions = parseUffdMappings(buf.subarray(0, n));
    for (const [i, r] of regions.entries()) {
      if (r.offset + r.size > fileBytes) fail(`Bad userfaultfd handshake: [${i}] needs the memory file up to byte ${r.offset + r.size}; '${o.memFilePath}' has ${fileBytes}`);
    }
    return serve(conn, uffd, regions, file.view);
  } finally {
    if (uffd >= 0) sys.close(uffd);
    if (conn >= 0) sys.close(conn);
    if (listener >= 0) sys.close(listener);
    if (bound) rmSync(o.socketPath, { force: true });
    if (file) munmap(file.address, fileBytes!);
    if (memFd >= 0) closeSync(memFd);
  }
}

/** One region's pages given back by the VMM since (UFFD_EVENT_REMOVE): served as zeros. */
interface Served extends UffdRegionMapping {
  removed: Uint8Array;
}

function serve(conn: number, uffd: number, mappings: UffdRegionMapping[], file: Uint8Array): UffdHandlerStats {
  const stats: UffdHandlerStats = { faults: 0, pagesCopied: 0, pagesZeroed: 0, pagesAlreadyThere: 0, removeEvents: 0, end: "closed" };
  const regions: Served[] = mappings.map((m) => ({ ...m, removed: new Uint8Array(m.size / m.page_size) }));
  const find = (address: number) => regions.find((r) => address >= r.base_host_virt_addr && address < r.base_host_virt_addr + r.size);
  const polls = new DataView(new ArrayBuffer(2 * pollfd.SIZE));
  polls.setInt32(pollfd.fd, uffd, true);
  polls.setInt16(pollfd.events, POLLIN, true);
  polls.setInt32(pollfd.SIZE + pollfd.fd, conn, true);
  polls.setInt16(pollfd.SIZE + pollfd.events, POLLIN | POLLRDHUP, true);
  const msgs = new DataView(new ArrayBuffer(PAGE_EVENTS_PER_READ * uffd_msg.SIZE));
  const zero = new DataView(new ArrayBuffer(uffdio_zeropage.SIZE));
  const sink = new Uint8Array(256);
  const noFds = new Int32Array(1);
  // Faults that could not be served yet (EAGAIN: a remove event is pending), retried after the next read.
  let deferred: number[] = [];

  /** Fills the page at `address`; false to retry later (EAGAIN); ends the handler when the VMM's memory is gone. */
  const fill = (address: number): boolean | "gone" => {
    const r = find(address);
    if (!r) fail(`The VMM faulted at 0x${address.toString(16)}, outside every region it announced`);
    const page = Math.floor((address - r.base_host_virt_addr) / r.page_size);
    const dst = r.base_host_virt_addr + page * r.page_size;
    let res: number;
    if (r.removed[page]) {
      zero.setBigUint64(uffdio_zeropage.range, BigInt(dst), true);
      zero.setBigUint64(uffdio_zeropage.range + 8, BigInt(r.page_size), true);
      zero.setBigUint64(uffdio_zeropage.mode, 0n, true);
      res = sys.ioctl(uffd, UFFDIO_ZEROPAGE, zero);
      if (res >= 0) stats.pagesZeroed++;
    } else {
      res = sys.uffdCopy(uffd, BigInt(dst), file, r.offset + page * r.page_size, r.page_size, 0);
      if (res >= 0) stats.pagesCopied++;
    }
    if (res >= 0) return true;
    if (res === -EEXIST) { stats.pagesAlreadyThere++; return true; }
    if (res === -EAGAIN) return false;
    if (res === -ESRCH || res === -ENOENT) return "gone";
    fail(`Cannot fill the page at 0x${dst.toString(16)}: ${errnoName(-res)}`);
  };

  for (;;) {
    const p = sys.poll(polls, 2, -1);
    if (p === -EINTR) continue;
    if (p < 0) fail(`poll failed: ${errnoName(-p)}`);
    const connEvents = polls.getInt16(pollfd.SIZE + pollfd.revents, true);
    const pending: number[] = deferred;
    deferred = [];
    // Read every event there is: a pending remove event makes UFFDIO_COPY fail with EAGAIN until it is read.
    for (;;) {
      const n = sys.read(uffd, msgs, msgs.byteLength);
      if (n === -EAGAIN || n === 0) break;
      if (n === -EINTR) continue;
      if (n < 0) fail(`Cannot read the userfaultfd: ${errnoName(-n)}`);
      for (let at = 0; at + uffd_msg.SIZE <= n; at += uffd_msg.SIZE) {
        const event = msgs.getUint8(at + uffd_msg.event);
        if (event === UFFD_EVENT_PAGEFAULT) {
          stats.faults++;
          pending.push(Number(msgs.getBigUint64(at + uffd_msg.arg_pagefault_address, true)));
        } else if (event === UFFD_EVENT_REMOVE) {
          stats.removeEvents++;
          markRemoved(regions, Number(msgs.getBigUint64(at + uffd_msg.arg_remove_start, true)), Number(msgs.getBigUint64(at + uffd_msg.arg_remove_end, true)));
        }
        // Other events (fork, remap, unmap) were not asked for (no such UFFD_FEATURE_EVENT_*).
      }
      if (n < msgs.byteLength) break;
    }
    for (const address of pending) {
      const ok = fill(address);
      if (ok === "gone") return { ...stats, end: "exited" };
      if (!ok) deferred.push(address);
    }
    if (connEvents & (POLLIN | POLLRDHUP | POLLHUP)) {
      // The VMM never sends more than the handshake: anything readable is data to drop, or the end.
      const n = sys.recvFd(conn, sink, sink.length, noFds);
      if (noFds[0]! >= 0) sys.close(noFds[0]!);
      if (n === 0 || (n < 0 && n !== -EAGAIN && n !== -EINTR)) return stats;
    }
  }
}

/** Marks the pages of [start, end) given back by the VMM: later faults there are served zeros. */
function markRemoved(regions: Served[], start: number, end: number): void {
  for (const r of regions) {
    const from = Math.max(start, r.base_host_virt_addr), to = Math.min(end, r.base_host_virt_addr + r.size);
    if (from >= to) continue;
    const first = Math.floor((from - r.base_host_virt_addr) / r.page_size);
    const last = Math.ceil((to - r.base_host_virt_addr) / r.page_size);
    r.removed.fill(1, first, last);
  }
}
