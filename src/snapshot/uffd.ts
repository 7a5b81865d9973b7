/**
 * The Uffd memory backend of a snapshot restore (Firecracker's `mem_backend`
 * `{"backend_type": "Uffd"}`): guest memory is fresh private anonymous
 * memory registered with a userfaultfd (userfaultfd(2),
 * Documentation/admin-guide/mm/userfaultfd.rst) in UFFDIO_REGISTER_MODE_MISSING,
 * and that userfaultfd is handed to a page-fault handler, another process
 * listening on a Unix socket, which fills each page on its first touch
 * (UFFDIO_COPY from the memory file, or UFFDIO_ZEROPAGE). flint never opens
 * the memory file then.
 *
 * The handshake is Firecracker's (src/vmm/src/persist.rs,
 * guest_memory_from_uffd and send_uffd_handshake), so its handlers work
 * unchanged: flint connects to the socket and sends, in one sendmsg(2), a
 * JSON array with one object per region, in guest-address order —
 * `base_host_virt_addr` (where the region is mapped in flint),
 * `size` (bytes), `offset` (where its bytes start in the memory file),
 * `page_size` (bytes; Firecracker 1.12 on) and `page_size_kib` (the same
 * value in bytes despite its name; Firecracker 1.7 to 1.11 send only this
 * one) — with the userfaultfd attached as SCM_RIGHTS (unix(7)). The
 * userfaultfd is made as Firecracker makes it: O_CLOEXEC | O_NONBLOCK (the
 * handler shares the open file, and Firecracker's handlers read it until
 * EAGAIN), not UFFD_USER_MODE_ONLY (KVM touches guest memory from the
 * kernel), with UFFD_FEATURE_EVENT_REMOVE required (the balloon's
 * MADV_DONTNEED then reaches the handler as UFFD_EVENT_REMOVE, after which
 * the handler serves zeros there).
 *
 * flint keeps its end of the connection (and its copy of the userfaultfd)
 * open for the VM's life, as Firecracker does, and closes both when the VM
 * ends: that is how a handler knows to exit. flint also reads the
 * connection's closing the other way: a handler that closed its end can no
 * longer be relied on to serve faults, so the VM is refused before it starts,
 * or ended with one line if it was running (Machine), instead of freezing
 * on its next fault as Firecracker does.
 */
import { Socket } from "node:net";
import {
  AF_UNIX, ECONNREFUSED, ENOENT, EPERM, O_CLOEXEC, O_NONBLOCK, O_RDWR, POLLERR, POLLHUP, POLLRDHUP, pollfd,
  SOCK_CLOEXEC, SOCK_STREAM, UFFD_API, UFFD_FEATURE_EVENT_REMOVE, UFFDIO_API, UFFDIO_REGISTER,
  UFFDIO_REGISTER_MODE_MISSING, UFFDIO_UNREGISTER, USERFAULTFD_IOC_NEW, uffdio_api, uffdio_register, uffdio_range,
} from "../linux/abi.generated.js";
import type { GuestMemory } from "../memory/guest-memory.js";
import { errnoName, PAGE_SIZE, sys } from "../sys/native.js";
import { SnapshotError } from "./state-file.js";

/** One region of guest memory as the handshake describes it (Firecracker's GuestRegionUffdMapping). */
export interface UffdRegionMapping {
  /** Where the region is mapped in the VMM's process. */
  base_host_virt_addr: number;
  /** Bytes. */
  size: number;
  /** Offset of the region's first byte in the memory file. */
  offset: number;
  /** Page size in bytes (Firecracker 1.12 on). */
  page_size: number;
  /** The same, in bytes despite the name (Firecracker 1.7 to 1.11; deprecated by Firecracker). */
  page_size_kib: number;
}

/** The largest handshake flint reads or writes (Firecracker's example handler reads 1024 bytes; a few regions take ~120 each). */
export const UFFD_HANDSHAKE_MAX_BYTES = 64 * 1024;

/** The handshake's JSON for `memory`, whose regions sit in the memory file at `fileOffsets` (same order). */
export function uffdMappings(memory: GuestMemory, fileOffsets: readonly number[]): UffdRegionMapping[] {
  if (fileOffsets.length !== memory.regions.length) {
    throw new SnapshotError("ESNAPUFFD", `Cannot describe guest memory to the page-fault handler: ${memory.regions.length} regions, ${fileOffsets.length} file offsets`);
  }
  return memory.regions.map((r, i) => ({
    base_host_virt_addr: Number(r.hostAddress), size: r.size, offset: fileOffsets[i]!, page_size: PAGE_SIZE, page_size_kib: PAGE_SIZE,
  }));
}

/** The handshake's bytes. */
export function encodeUffdMappings(mappings: readonly UffdRegionMapping[]): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(mappings));
}

/**
 * Reads a handshake (flint's or Firecracker's: `page_size` or, without it,
 * `page_size_kib`, or neither, as before Firecracker 1.7: the host page
 * size), checking every field a handler relies on. Throws SnapshotError
 * ESNAPUFFD naming the first wrong field.
 */
export function parseUffdMappings(bytes: Uint8Array): UffdRegionMapping[] {
  const bad = (what: string) => new SnapshotError("ESNAPUFFD", `Bad userfaultfd handshake: ${what}`);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw bad(`not JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(value) || value.length === 0) throw bad("not a non-empty array of regions");
  const whole = (v: unknown, name: string, i: number, min: number): number => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) throw bad(`[${i}].${name} is not a whole number from ${min}`);
    return v;
  };
  return value.map((r: unknown, i) => {
    if (typeof r !== "object" || r === null) throw bad(`[${i}] is not an object`);
    const o = r as Record<string, unknown>;
    const base = whole(o.base_host_virt_addr, "base_host_virt_addr", i, 0);
    const size = whole(o.size, "size", i, 1);
    const offset = whole(o.offset, "offset", i, 0);
    const pageSize = o.page_size !== undefined ? whole(o.page_size, "page_size", i, 1)
      : o.page_size_kib !== undefined ? whole(o.page_size_kib, "page_size_kib", i, 1) : PAGE_SIZE;
    if ((pageSize & (pageSize - 1)) !== 0) throw bad(`[${i}].page_size ${pageSize} is not a power of two`);
    if (base % pageSize !== 0 || size % pageSize !== 0 || offset % pageSize !== 0) throw bad(`[${i}] is not aligned to its page size ${pageSize}`);
    return { base_host_virt_addr: base, size, offset, page_size: pageSize, page_size_kib: pageSize };
  });
}

/**
 * A userfaultfd as Firecracker makes one (see the top of this file), its API
 * handshake done with UFFD_FEATURE_EVENT_REMOVE required. The system call
 * first; where it is not allowed (vm.unprivileged_userfaultfd=0 without
 * CAP_SYS_PTRACE), /dev/userfaultfd. Throws SnapshotError ESNAPUFFD.
 */
export function createUserfaultfd(): number {
  const flags = O_CLOEXEC | O_NONBLOCK;
  let fd = sys.userfaultfd(flags);
  if (fd === -EPERM) {
    const dev = sys.open("/dev/userfaultfd", O_RDWR | O_CLOEXEC, 0);
    if (dev >= 0) {
      fd = sys.ioctlValue(dev, USERFAULTFD_IOC_NEW, flags);
      sys.close(dev);
    }
  }
  if (fd < 0) throw new SnapshotError("ESNAPUFFD", `Cannot create a userfaultfd: ${errnoName(-fd)}`);
  const api = new DataView(new ArrayBuffer(uffdio_api.SIZE));
  api.setBigUint64(uffdio_api.api, BigInt(UFFD_API), true);
  api.setBigUint64(uffdio_api.features, BigInt(UFFD_FEATURE_EVENT_REMOVE), true);
  const r = sys.ioctl(fd, UFFDIO_API, api);
  if (r < 0) {
    sys.close(fd);
    throw new SnapshotError("ESNAPUFFD", `Cannot set up the userfaultfd (UFFDIO_API with UFFD_FEATURE_EVENT_REMOVE): ${errnoName(-r)}`);
  }
  return fd;
}

/** UFFDIO_REGISTER or UFFDIO_UNREGISTER of one mapping made by the addon; the negative errno on failure. */
function registerRange(uffd: number, start: bigint, length: number, register: boolean): number {
  const b = new DataView(new ArrayBuffer(register ? uffdio_register.SIZE : uffdio_range.SIZE));
  b.setBigUint64(uffdio_range.start, start, true);
  b.setBigUint64(uffdio_range.len, BigInt(length), true);
  if (register) b.setBigUint64(uffdio_register.mode, BigInt(UFFDIO_REGISTER_MODE_MISSING), true);
  return sys.ioctl(uffd, register ? UFFDIO_REGISTER : UFFDIO_UNREGISTER, b);
}

/**
 * Guest memory's side of the Uffd backend: the userfaultfd that `memory`'s
 * regions are registered with, and the connection to the page-fault handler
 * that was handed it.
 */
export class UffdBackend {
  private closed = false;
  private watcher: Socket | undefined;

  private constructor(
    /** The userfaultfd (flint keeps its copy, as Firecracker does). */
    readonly uffd: number,
    /** The connected socket to the handler. */
    readonly socket: number,
    /** The handler's socket path (for messages). */
    readonly socketPath: string,
    private readonly memory: GuestMemory,
  ) {}

  /**
   * Registers every region of `memory` (fresh anonymous memory nothing has
   * touched: a page already present is never asked for) with a new
   * userfaultfd, connects to the handler at `socketPath` and sends it the
   * handshake for regions at `fileOffsets` in the memory file. Throws
   * SnapshotError ESNAPUFFD with one line (no handler at the path, refused,
   * closed before the handshake); nothing is left open then.
   */
  static connect(memory: GuestMemory, fileOffsets: readonly number[], socketPath: string): UffdBackend {
    const message = encodeUffdMappings(uffdMappings(memory, fileOffsets));
    const uffd = createUserfaultfd();
    let sock = -1;
    const fail = (what: string): never => {
      if (sock >= 0) sys.close(sock);
      sys.close(uffd);
      throw new SnapshotError("ESNAPUFFD", what);
    };
    for (const r of memory.regions) {
      const e = registerRange(uffd, r.hostAddress, r.size, true);
      if (e < 0) fail(`Cannot register guest memory with the userfaultfd (UFFDIO_REGISTER): ${errnoName(-e)}`);
    }
    sock = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) fail(`Cannot create a socket for the page-fault handler: ${errnoName(-sock)}`);
    const c = sys.connectUnix(sock, socketPath);
    if (c < 0) {
      const why = c === -ENOENT ? "no such socket" : c === -ECONNREFUSED ? "nothing listens there" : errnoName(-c);
      fail(`Cannot connect to the page-fault handler at '${socketPath}': ${why} (${errnoName(-c)})`);
    }
    const sent = sys.sendFd(sock, message, message.length, uffd);
    if (sent < 0) fail(`Cannot send the userfaultfd to the page-fault handler at '${socketPath}': ${errnoName(-sent)}`);
    if (sent !== message.length) fail(`Cannot send the userfaultfd to the page-fault handler at '${socketPath}': sent ${sent} of ${message.length} bytes`);
    return new UffdBackend(uffd, sock, socketPath, memory);
  }

  /** True when the handler has closed its end of the connection (poll: POLLHUP/POLLRDHUP, without waiting). */
  handlerClosed(): boolean {
    if (this.closed) return true;
    const p = new DataView(new ArrayBuffer(pollfd.SIZE));
    p.setInt32(pollfd.fd, this.socket, true);
    p.setInt16(pollfd.events, POLLRDHUP, true);
    if (sys.poll(p, 1, 0) <= 0) return false;
    return (p.getInt16(pollfd.revents, true) & (POLLRDHUP | POLLHUP | POLLERR)) !== 0;
  }

  /**
   * Calls `onClosed` (once) when the handler closes its end of the
   * connection while the VM lives. Does not keep the process alive.
   */
  watch(onClosed: () => void): void {
    if (this.closed || this.watcher) return;
    // libuv takes this fd over (no duplicate): from now on close() destroys the watcher, which closes the fd.
    const w = new Socket({ fd: this.socket, readable: true, writable: false });
    this.watcher = w;
    let fired = false;
    const fire = () => {
      if (fired || this.closed) return;
      fired = true;
      onClosed();
    };
    w.on("data", () => {}); // the handler has nothing to say; whatever it sends is dropped
    w.on("end", fire);
    w.on("error", fire);
    w.unref();
  }

  /**
   * Unregisters guest memory, so that a thread waiting for a page the
   * handler will never serve wakes up (and any later touch is ordinary
   * anonymous memory: zeros). For a VM that is ending because its handler
   * went away.
   */
  release(): void {
    if (this.closed) return;
    for (const r of this.memory.regions) registerRange(this.uffd, r.hostAddress, r.size, false);
  }

  /** Closes the connection and flint's copy of the userfaultfd: the handler sees the connection close. Call after guest memory is unmapped. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.watcher) this.watcher.destroy();
    else sys.close(this.socket);
    sys.close(this.uffd);
  }
}
