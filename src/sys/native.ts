/**
 * The syscall boundary: a typed face over the flint_sys N-API addon
 * (native/flint_sys.c). Each function is one system call. Calls that can fail
 * return a negative errno from the addon; `check` turns that into a SysError
 * with the errno's name as its `code`, so callers choose where an error is
 * normal (EINTR from KVM_RUN) and where it is fatal.
 */
import { createRequire } from "node:module";
import { constants as osConstants } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** Anything the addon accepts as a pointer-sized argument. */
export type SysArg = number | bigint | ArrayBufferView | ArrayBuffer | undefined;

interface Addon {
  ioctl(fd: number, request: number, arg?: SysArg): number;
  /** ioctl whose argument is an integer (fast path: KVM_RUN, KVM_IRQ_LINE-free calls). */
  ioctlValue(fd: number, request: number, value?: number): number;
  mmap(length: number, prot: number, flags: number, fd: number, offset: number): bigint | number;
  munmap(address: bigint, length: number): number;
  madvise(address: bigint, length: number, advice: number): number;
  view(address: bigint, length: number): ArrayBuffer;
  addressOf(buffer: ArrayBufferView | ArrayBuffer): bigint;
  eventfd(initval: number, flags: number): number;
  read(fd: number, buffer: SysArg, length: number): number;
  write(fd: number, buffer: SysArg, length: number): number;
  /** writev(2) over a buffer of `count` struct iovec (layout: `iovec` in the generated ABI). */
  writev(fd: number, iov: SysArg, count: number): number;
  close(fd: number): number;
  /** poll(2) over a buffer of struct pollfd (layout: `pollfd` in the generated ABI). */
  poll(pollfds: SysArg, nfds: number, timeoutMs: number): number;
  pread(fd: number, buffer: SysArg, length: number, offset: number | bigint): number;
  pwrite(fd: number, buffer: SysArg, length: number, offset: number | bigint): number;
  fallocate(fd: number, mode: number, offset: number | bigint, length: number | bigint): number;
  fdatasync(fd: number): number;
  socket(domain: number, type: number, protocol: number): number;
  bindUnix(fd: number, path: string): number;
  connectUnix(fd: number, path: string): number;
  listen(fd: number, backlog: number): number;
  accept4(fd: number, flags: number): number;
  shutdown(fd: number, how: number): number;
  open(path: string, flags: number, mode: number): number;
  installKickSignal(signo: number): number;
  unblockSignal(signo: number): number;
  threadSelf(): bigint;
  signalThread(thread: bigint, signo: number): number;
  sigrtmin(): number;
  monotonicNs(): bigint;
  pageSize(): number;
}

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

function load(): Addon {
  // dist/sys/native.js -> <package>/build/Release/flint_sys.node
  const path = join(here, "..", "..", "build", "Release", "flint_sys.node");
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
