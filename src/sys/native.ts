/**
 * The syscall boundary: a typed face over the flint_sys N-API addon
 * (native/flint_sys.c). Each function is one system call. Calls that can fail
 * return a negative errno from the addon; `check` turns that into a SysError
 * with the errno's name as its `code`, so callers choose where an error is
 * normal (EINTR from KVM_RUN) and where it is fatal.
 *
 * A caller's mistake is not an errno: the addon checks every length, count and
 * range against the buffer it names, and never takes a number as a pointer, so
 * an arithmetic or typing bug here throws (TypeError/RangeError, code
 * "EFLINTSYS") instead of corrupting host memory. See `Addon` for each rule.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { constants as osConstants } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Memory the addon may hand to the kernel: a TypedArray or DataView (its own
 * window, byteOffset..byteOffset+byteLength) or a whole ArrayBuffer. Never a
 * number: the addon does not take pointers from JavaScript.
 */
export type SysBuffer = ArrayBufferView | ArrayBuffer;

/**
 * The addon's functions. Each is one system call and returns a negative errno
 * on failure. The addon checks what TypeScript cannot make safe: a length,
 * count or range given with a buffer must lie inside that buffer's byteLength,
 * memory is passed as a SysBuffer, and a raw address must lie inside a mapping
 * made by `mmap` and not yet unmapped. A caller's mistake (wrong type, a length
 * past the buffer, a negative, fractional or NaN number) throws a TypeError or
 * RangeError with `code` "EFLINTSYS" and a message naming the function and the
 * argument; it never reaches the kernel. Numbers that are not lengths (fds,
 * flags) must be whole numbers in the C type's range.
 */
interface Addon {
  /**
   * ioctl(2). When the request's direction (_IOC_DIR) is _IOC_NONE, or it is
   * TUNSETOFFLOAD (declared _IOW but takes its flags as the value), `arg` is a
   * whole number (undefined: 0) and a buffer throws. For every other request
   * `arg` must be a buffer of at least _IOC_SIZE(request) bytes, and a number
   * throws. Requests whose kernel-side size differs are checked by their own
   * rule: TUNSETIFF/TUNGETIFF read and write a struct ifreq; KVM_SET_CPUID2,
   * KVM_GET_SUPPORTED_CPUID (and the other cpuid2 calls), KVM_GET_MSRS,
   * KVM_SET_MSRS and KVM_GET_MSR_INDEX_LIST check their entry count against
   * the buffer (the kernel works on a private copy); KVM_GET_XSAVE2 and
   * KVM_SET_XSAVE take a buffer of at least struct kvm_xsave and the kernel
   * works on a private copy the size of the CPU's largest XSAVE area, of which
   * the buffer gives or takes what it holds; KVM_SET_USER_MEMORY_REGION's
   * userspace_addr range must lie in a mapping made by `mmap`. Requests whose
   * arguments hold pointers or sizes the addon does not understand
   * (KVM_GET_DIRTY_LOG, KVM_SET_GSI_ROUTING, KVM_GET_ONE_REG...) throw.
   */
  ioctl(fd: number, request: number, arg?: number | SysBuffer): number;
  /**
   * ioctl whose argument is an integer (fast path: KVM_RUN). Takes only the
   * requests `ioctl` takes a value for; any other request throws, so it is no
   * way around the buffer checks.
   */
  ioctlValue(fd: number, request: number, value?: number): number;
  /** Maps memory where the kernel chooses (MAP_FIXED throws) and records the mapping for view/madvise/munmap. */
  mmap(length: number, prot: number, flags: number, fd: number, offset: number): bigint | number;
  /** Unmaps exactly one whole mapping made by `mmap` (same address and length); anything else throws. */
  munmap(address: bigint, length: number): number;
  /**
   * Maps anew (MAP_FIXED) over exactly one whole mapping made by `mmap` (same
   * address and length), which stays recorded; anything else throws, as do
   * flags that already ask for a fixed address. On failure the range is
   * reserved again (PROT_NONE), never left unmapped while recorded.
   */
  mmapOver(address: bigint, length: number, prot: number, flags: number, fd: number, offset: number): number;
  /** madvise(2) on a range inside a mapping made by `mmap`; anything else throws. */
  madvise(address: bigint, length: number, advice: number): number;
  /**
   * A SharedArrayBuffer aliasing [address, address+length), which must lie
   * inside a mapping made by `mmap` (any thread's: mappings are
   * process-wide). It must not be used after that mapping is unmapped.
   * Shared rather than an external ArrayBuffer, which V8 counts against the
   * isolate and answers with a full collection per view of a VM's RAM.
   */
  view(address: bigint, length: number): SharedArrayBuffer;
  eventfd(initval: number, flags: number): number;
  /** read(2) of `length` bytes, at most the buffer's byteLength, into its start. */
  read(fd: number, buffer: SysBuffer, length: number): number;
  /** write(2) of `length` bytes, at most the buffer's byteLength, from its start. */
  write(fd: number, buffer: SysBuffer, length: number): number;
  /**
   * writev(2) gathering `count` (at most IOV_MAX) pieces, each named in `iov` by a
   * (buffer index, offset, length) triple into the trailing `buffers` (at most 16):
   * C checks each lies inside its buffer and builds the struct iovec array itself,
   * so guest memory is sent in place without any raw address crossing the boundary.
   */
  writev(fd: number, iov: Float64Array, count: number, ...buffers: SysBuffer[]): number;
  /** readv(2) scattering into `count` pieces named as for writev (the pieces are written in place). */
  readv(fd: number, iov: Float64Array, count: number, ...buffers: SysBuffer[]): number;
  close(fd: number): number;
  /** poll(2) over `nfds` struct pollfd (layout: `pollfd` in the generated ABI); the buffer must hold them all. */
  poll(pollfds: SysBuffer, nfds: number, timeoutMs: number): number;
  /** pread(2) of `length` bytes, at most the buffer's byteLength. */
  pread(fd: number, buffer: SysBuffer, length: number, offset: number | bigint): number;
  /** pwrite(2) of `length` bytes, at most the buffer's byteLength. */
  pwrite(fd: number, buffer: SysBuffer, length: number, offset: number | bigint): number;
  fallocate(fd: number, mode: number, offset: number | bigint, length: number | bigint): number;
  fdatasync(fd: number): number;
  socket(domain: number, type: number, protocol: number): number;
  /** bind(2) to a Unix path; -ENAMETOOLONG when it does not fit sun_path; a non-string or a NUL inside throws. */
  bindUnix(fd: number, path: string): number;
  /** connect(2) to a Unix path; as bindUnix. */
  connectUnix(fd: number, path: string): number;
  listen(fd: number, backlog: number): number;
  accept4(fd: number, flags: number): number;
  shutdown(fd: number, how: number): number;
  open(path: string, flags: number, mode: number): number;
  /** Installs a do-nothing handler (no SA_RESTART) for a real-time signal; other signals throw. */
  installKickSignal(signo: number): number;
  /** Unblocks a real-time signal in the calling thread. */
  unblockSignal(signo: number): number;
  /** The calling thread's kernel thread id (gettid), for signalThread. */
  threadSelf(): bigint;
  /** Sends a real-time signal to a thread of this process (tgkill); -ESRCH once it has exited. */
  signalThread(thread: bigint, signo: number): number;
  sigrtmin(): number;
  monotonicNs(): bigint;
  pageSize(): number;
  /**
   * KVM_GET_DIRTY_LOG (api.rst 4.8) of memory slot `slot` of the VM `vmFd`
   * into `bitmap` (bit i of 64-bit word w: page 64w+i of the slot was
   * written since the last call), which KVM clears as it copies it. The slot
   * must have been registered through `ioctl` (KVM_SET_USER_MEMORY_REGION),
   * whose size says how long the bitmap is: a shorter buffer throws.
   */
  getDirtyLog(vmFd: number, slot: number, bitmap: SysBuffer): number;
  /** lseek(2): the new offset, or -errno (SEEK_DATA, SEEK_HOLE: -ENXIO past the last data or hole). */
  lseek(fd: number, offset: number, whence: number): number;
  /** userfaultfd(2) with `flags` (O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY): the new fd, or -errno. */
  userfaultfd(flags: number): number;
  /**
   * UFFDIO_COPY of src[srcOffset, srcOffset+length) (which must lie in the
   * buffer) to `dst`, an address in the userfaultfd's process (possibly
   * another one: the kernel copies only into ranges it registered). Returns
   * the bytes copied or -errno (EEXIST: already there, EAGAIN: retry after
   * reading pending events, ESRCH: that process has exited).
   */
  uffdCopy(uffd: number, dst: bigint, src: SysBuffer, srcOffset: number, length: number, mode: number): number;
  /** sendmsg(2) of buffer[0, length) with `fd` attached (SCM_RIGHTS), MSG_NOSIGNAL: bytes sent or -errno. */
  sendFd(sock: number, buffer: SysBuffer, length: number, fd: number): number;
  /**
   * recvmsg(2) into buffer[0, length) (MSG_CMSG_CLOEXEC): bytes received
   * (0: the peer closed) or -errno. Descriptors that came with it are put in
   * `fds` (at most 8 entries; unused ones are -1); any more are closed.
   */
  recvFd(sock: number, buffer: SysBuffer, length: number, fds: Int32Array): number;
  /**
   * execve(2): replaces this process (every thread) with `path`; returns only
   * on failure, with -errno. Strings are checked (no NUL inside, bounded).
   */
  execve(path: string, argv: string[], envp: string[]): number;
  /**
   * Sets no_new_privs, then seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)
   * with the `count` (1..BPF_MAXINSNS) struct sock_filter at the start of
   * `program` (the count must fit in the buffer). `flags`: only
   * SECCOMP_FILTER_FLAG_TSYNC and SECCOMP_FILTER_FLAG_LOG. Returns 0, -errno,
   * or with TSYNC the id of a thread that could not be synchronized.
   */
  installSeccompFilter(program: SysBuffer, count: number, flags: number): number;
}

/** A failed system call. `code` is the errno name (EINTR, ENOMEM...). */
export class SysError extends Error {
  readonly code: string;
  readonly errno: number;
  constructor(code: string, message: string, errno = 0) {
    super(message);
    this.name = "SysError";
    this.code = code;
    this.errno = errno;
  }
}

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

/** The package root: the nearest directory above this module with a package.json (dist/sys/ or a bundle's folder). */
export function packageRoot(): string {
  for (let dir = here; ; dir = dirname(dir)) {
    if (existsSync(join(dir, "package.json"))) return dir;
    if (dirname(dir) === dir) return join(here, "..", "..");
  }
}

function load(): Addon {
  const path = join(packageRoot(), "build", "Release", "flint_sys.node");
  try {
    return require(path) as Addon;
  } catch (e) {
    throw new SysError("ENOADDON", `Cannot load flint's native addon at ${path}: run 'npm ci' (${(e as Error).message})`);
  }
}

/** The raw addon. Prefer the checked wrappers below outside hot paths. */
export const sys: Addon = load();

const errnoNames = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, value]) => [value as number, name]),
);

/** Name of an errno value, e.g. 4 -> "EINTR". */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** Throws a SysError when `result` is a negative errno; returns it otherwise. */
export function check(result: number, what: string): number {
  if (result < 0) {
    const name = errnoName(-result);
    throw new SysError(name, `${what} failed: ${name}`, -result);
  }
  return result;
}

/** mmap that throws on failure and returns the mapping's address. */
export function mmap(length: number, prot: number, flags: number, fd = -1, offset = 0): bigint {
  const r = sys.mmap(length, prot, flags, fd, offset);
  if (typeof r === "number") check(r, `mmap(${length} bytes)`);
  return r as bigint;
}

/** mmapOver that throws on failure. */
export function mmapOver(address: bigint, length: number, prot: number, flags: number, fd = -1, offset = 0): void {
  check(sys.mmapOver(address, length, prot, flags, fd, offset), `mmap over 0x${address.toString(16)} (${length} bytes)`);
}

/** munmap that throws on failure. */
export function munmap(address: bigint, length: number): void {
  check(sys.munmap(address, length), "munmap");
}

/** madvise that throws on failure. */
export function madvise(address: bigint, length: number, advice: number): void {
  check(sys.madvise(address, length, advice), "madvise");
}

/** An eventfd; throws on failure. */
export function eventfd(initval: number, flags: number): number {
  return check(sys.eventfd(initval, flags), "eventfd");
}

/** close(2) that throws on failure. */
export function close(fd: number): void {
  check(sys.close(fd), `close(${fd})`);
}

/** Host page size in bytes. */
export const PAGE_SIZE: number = sys.pageSize();
