/**
 * The native boundary checks what TypeScript cannot: every length, count and
 * range it is given against the buffer it names, and every argument's type.
 * Each test hands the addon what an arithmetic or typing bug in TypeScript
 * would (a length past the buffer, negative, NaN or fractional numbers, a view
 * whose length fits its ArrayBuffer but not its own window, a number or BigInt
 * where memory belongs) and asserts an EFLINTSYS exception, and that the guard
 * bytes around the buffer were never written. Sources of data are bounded so
 * that a boundary that did not check would overwrite the guards, never memory
 * outside the test's own ArrayBuffer.
 */
import assert from "node:assert/strict";
import { closeSync, fstatSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { constants, PerformanceObserver } from "node:perf_hooks";
import {
  AF_UNIX, EFD_CLOEXEC, EFD_NONBLOCK, ENAMETOOLONG, FIONREAD, KVM_CHECK_EXTENSION, KVM_CREATE_VCPU, KVM_CREATE_VM,
  KVM_GET_DIRTY_LOG, KVM_GET_MSR_INDEX_LIST, KVM_GET_REGS, KVM_GET_SUPPORTED_CPUID, KVM_GET_XSAVE, KVM_GET_XSAVE2,
  KVM_MEM_LOG_DIRTY_PAGES, KVM_SET_MSRS, KVM_SET_USER_MEMORY_REGION, KVM_SET_XSAVE, MADV_NORMAL, MAP_ANONYMOUS, MAP_FIXED, MAP_NORESERVE, MAP_PRIVATE, PROT_NONE, O_CLOEXEC, O_RDWR, POLLIN,
  ENOENT, ENXIO, SEEK_DATA, SEEK_HOLE,
  PROT_READ, PROT_WRITE, SOCK_CLOEXEC, SOCK_STREAM, TUNSETIFF, kvm_cpuid2, kvm_cpuid_entry2, kvm_msr_list, kvm_msrs,
  kvm_regs, kvm_userspace_memory_region, kvm_xsave, pollfd,
  EEXIST, EPIPE, O_NONBLOCK, UFFD_API, UFFDIO_API, UFFDIO_COPY, UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_MISSING, UFFDIO_UNREGISTER,
  uffdio_api, uffdio_copy, uffdio_range, uffdio_register, BPF_MAXINSNS, sock_filter, ENODEV, SIOCGIFINDEX, SOCK_DGRAM, ifreq,
} from "../linux/abi.generated.js";
import { PAGE_SIZE, sys } from "./native.js";

const dir = mkdtempSync(join(tmpdir(), "flint-native-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Asserts that `fn` throws the addon's error for `fn`'s argument `arg`: one line, code EFLINTSYS. */
function rejects(fn: () => unknown, name: string, arg: string, why: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof TypeError || e instanceof RangeError, `${why}: ${String(e)}`);
    assert.equal((e as { code?: unknown }).code, "EFLINTSYS", why);
    assert.match(e.message, new RegExp(`^flint_sys: ${name}: .*${arg}`), why);
    assert.ok(!e.message.includes("\n"), why);
    return true;
  }, why);
}

const FILL = 0xee;

/**
 * `n` bytes (a Uint8Array at byteOffset `before`) inside a larger ArrayBuffer
 * whose other bytes are guards, and a check that no guard changed.
 */
function guarded(n: number, before = 16, afterBytes = 16) {
  const ab = new ArrayBuffer(before + n + afterBytes);
  const all = new Uint8Array(ab).fill(FILL);
  const view = new Uint8Array(ab, before, n);
  const intact = () => all.subarray(0, before).every((b) => b === FILL) && all.subarray(before + n).every((b) => b === FILL);
  return { ab, all, view, intact };
}

/** Lengths that must be refused for a view of `n` bytes made by guarded(n) (16 guard bytes each side). */
function badLengths(n: number): [unknown, string][] {
  return [
    [n + 1, "one byte past the view"],
    [n + 16, "fits the ArrayBuffer from the view's offset, not the view"],
    [n + 32, "fits the ArrayBuffer's byteLength, not the view"],
    [-1, "negative"], [Number.NaN, "NaN"], [1.5, "fractional"], [Number.POSITIVE_INFINITY, "infinite"],
    [2 ** 53 + 2, "beyond 2^53"], [BigInt(n), "a BigInt"], ["8", "a string"], [undefined, "missing"],
  ];
}

/** Things that are not memory, where a buffer belongs. */
const notBuffers: [unknown, string][] = [
  [0, "the number 0"], [0x1000, "a number that looks like an address"], [8n, "a BigInt"], ["abcdefgh", "a string"],
  [{ length: 8 }, "a plain object"], [[1, 2, 3, 4, 5, 6, 7, 8], "an array"], [undefined, "missing"], [null, "null"],
];

/** Non-numbers and out-of-range numbers where an fd (a C int) belongs. */
const badFds: [unknown, string][] = [
  ["3", "a string"], [3n, "a BigInt"], [1.5, "fractional"], [Number.NaN, "NaN"], [2 ** 31, "past INT_MAX"], [{}, "an object"],
];

/** A file holding `n` bytes of 0x11: a read source that cannot fill more than that. */
function source(n: number): string {
  const path = join(dir, `src-${n}`);
  writeFileSync(path, new Uint8Array(n).fill(0x11));
  return path;
}

test("read: a length past the buffer's own window throws and the bytes after it stay untouched", () => {
  const n = 24;
  const path = source(n + 16);
  for (const [len, why] of badLengths(n)) {
    const g = guarded(n);
    const fd = openSync(path, "r");
    try {
      rejects(() => sys.read(fd, g.view, len as number), "read", "length", `read length ${why}`);
    } finally {
      closeSync(fd);
    }
    assert.ok(g.intact(), `guards intact after read length ${why}`);
    assert.ok(g.view.every((b) => b === FILL), `nothing read after read length ${why}`);
  }
  const g = guarded(n);
  const fd = openSync(path, "r");
  try {
    assert.equal(sys.read(fd, g.view, n), n, "the whole view can be read into");
  } finally {
    closeSync(fd);
  }
  assert.ok(g.view.every((b) => b === 0x11) && g.intact());
});

test("read: the limit is byteLength for every kind of view, not the element count or the ArrayBuffer", () => {
  const path = source(64);
  const ab = new ArrayBuffer(64);
  const views: [ArrayBufferView | ArrayBuffer, number, string][] = [
    [new Uint32Array(ab, 16, 2), 8, "Uint32Array of 2 elements"],
    [new Float64Array(ab, 8, 1), 8, "Float64Array of 1 element"],
    [new DataView(ab, 20, 8), 8, "DataView at offset 20"],
    [new ArrayBuffer(8), 8, "ArrayBuffer"],
  ];
  for (const [v, bytes, why] of views) {
    const fd = openSync(path, "r");
    try {
      rejects(() => sys.read(fd, v, bytes + 1), "read", "length", why);
      assert.equal(sys.read(fd, v, bytes), bytes, why);
    } finally {
      closeSync(fd);
    }
  }
});

test("read and write: numbers, BigInts and other non-buffers are refused, and so are bad fds", () => {
  const efd = sys.eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
  try {
    for (const [b, why] of notBuffers) {
      rejects(() => sys.read(efd, b as Uint8Array, 8), "read", "buffer", `read into ${why}`);
      rejects(() => sys.write(efd, b as Uint8Array, 8), "write", "buffer", `write from ${why}`);
    }
    for (const [fd, why] of badFds) {
      rejects(() => sys.read(fd as number, new Uint8Array(8), 8), "read", "fd", `read fd ${why}`);
      rejects(() => sys.write(fd as number, new Uint8Array(8), 8), "write", "fd", `write fd ${why}`);
    }
  } finally {
    sys.close(efd);
  }
});

test("write: a length past the buffer throws and nothing reaches the file", () => {
  const n = 24;
  const path = join(dir, "write");
  writeFileSync(path, "");
  const fd = openSync(path, "r+");
  try {
    for (const [len, why] of badLengths(n)) {
      rejects(() => sys.write(fd, guarded(n).view, len as number), "write", "length", `write length ${why}`);
    }
    assert.equal(fstatSync(fd).size, 0, "no byte was written");
    assert.equal(sys.write(fd, guarded(n).view, n), n);
    assert.deepEqual(new Uint8Array(readFileSync(path)), new Uint8Array(n).fill(FILL), "exactly the view was written");
  } finally {
    closeSync(fd);
  }
});

test("pread: a length past the buffer throws and the guard bytes stay untouched; offsets are checked", () => {
  const n = 24;
  const fd = openSync(source(n + 16), "r");
  try {
    for (const [len, why] of badLengths(n)) {
      const g = guarded(n);
      rejects(() => sys.pread(fd, g.view, len as number, 0), "pread", "length", `pread length ${why}`);
      assert.ok(g.intact() && g.view.every((b) => b === FILL), `nothing read after pread length ${why}`);
    }
    for (const [b, why] of notBuffers) rejects(() => sys.pread(fd, b as Uint8Array, 8, 0), "pread", "buffer", `pread into ${why}`);
    for (const [off, why] of [[-1, "negative"], [0.5, "fractional"], [Number.NaN, "NaN"], [-1n, "a negative BigInt"], [2n ** 63n, "a BigInt past 2^63-1"], ["0", "a string"]] as const) {
      rejects(() => sys.pread(fd, new Uint8Array(8), 8, off as number), "pread", "offset", `pread offset ${why}`);
    }
    const g = guarded(n);
    assert.equal(sys.pread(fd, g.view, n, 0n), n, "a BigInt offset is fine");
    assert.ok(g.intact());
  } finally {
    closeSync(fd);
  }
});

test("pwrite: a length past the buffer throws and nothing reaches the file", () => {
  const n = 24;
  const path = join(dir, "pwrite");
  writeFileSync(path, "");
  const fd = openSync(path, "r+");
  try {
    for (const [len, why] of badLengths(n)) {
      rejects(() => sys.pwrite(fd, guarded(n).view, len as number, 0), "pwrite", "length", `pwrite length ${why}`);
    }
    for (const [b, why] of notBuffers) rejects(() => sys.pwrite(fd, b as Uint8Array, 8, 0), "pwrite", "buffer", `pwrite from ${why}`);
    rejects(() => sys.pwrite(fd, new Uint8Array(8), 8, -1), "pwrite", "offset", "negative offset");
    assert.equal(fstatSync(fd).size, 0, "no byte was written");
    assert.equal(sys.pwrite(fd, guarded(n).view, n, 4), n);
    assert.equal(fstatSync(fd).size, n + 4);
  } finally {
    closeSync(fd);
  }
});

test("poll: nfds past the buffer throws and the kernel writes no revents past it", () => {
  const efd = sys.eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
  try {
    const cases: [unknown, string][] = [
      [2, "two pollfds in a buffer of one"], [-1, "negative"], [Number.NaN, "NaN"], [1.5, "fractional"], [1n, "a BigInt"], ["1", "a string"],
    ];
    for (const [nfds, why] of cases) {
      const g = guarded(pollfd.SIZE, 16, pollfd.SIZE * 4);
      const v = new DataView(g.ab, 16, pollfd.SIZE);
      v.setInt32(pollfd.fd, efd, true);
      v.setInt16(pollfd.events, POLLIN, true);
      v.setInt16(pollfd.revents, 0, true);
      rejects(() => sys.poll(g.view, nfds as number, 0), "poll", "nfds", `poll nfds ${why}`);
      assert.ok(g.intact(), `guards intact after poll nfds ${why}`);
    }
    for (const [b, why] of notBuffers) rejects(() => sys.poll(b as Uint8Array, 1, 0), "poll", "pollfds", `poll over ${why}`);
    const g = guarded(pollfd.SIZE);
    const v = new DataView(g.ab, 16, pollfd.SIZE);
    v.setInt32(pollfd.fd, efd, true);
    v.setInt16(pollfd.events, POLLIN, true);
    v.setInt16(pollfd.revents, 0, true);
    assert.equal(sys.poll(g.view, 1, 0), 1, "one pollfd in a buffer of one is fine");
    assert.ok(g.intact());
  } finally {
    sys.close(efd);
  }
});

for (const call of ["writev", "readv"] as const) {
  const gathers = call === "writev" ? "gathers" : "scatters into";
  test(`${call}: ${gathers} checked (buffer, offset, length) triples and refuses every one outside its buffer`, () => {
    const path = join(dir, call);
    // readv has bytes to read, so a missed check would write them past a buffer (into a guard).
    writeFileSync(path, call === "readv" ? Uint8Array.from({ length: 64 }, (_, i) => 100 + i) : new Uint8Array(0));
    const fd = openSync(path, "r+");
    const a = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
    const big = guarded(8);
    big.view.set([9, 10, 11, 12, 13, 14, 15, 16]);
    const buffers = [a, big.view];
    const iov = (...xs: number[]) => Float64Array.from(xs);
    try {
      const cases: [unknown, unknown, readonly unknown[], string, string][] = [
        [iov(0, 4, 5), 1, buffers, "iov entry 0", "runs one byte off buffer 0"],
        [iov(1, 0, 9), 1, buffers, "iov entry 0", "one byte past a view (into its guard)"],
        [iov(1, 0, 24), 1, buffers, "iov entry 0", "fits the view's ArrayBuffer from its offset"],
        [iov(1, 9, 0), 1, buffers, "iov entry 0", "an empty piece that starts past the end"],
        [iov(0, 0, 8, 2, 0, 1), 2, buffers, "iov entry 1", "a buffer index past the buffers"],
        [iov(0, 0, 8, -1, 0, 1), 2, buffers, "iov entry 1", "a negative buffer index"],
        [iov(0, 0, 1), 1, [], "iov entry 0", "no buffers at all"],
        [iov(0.5, 0, 1), 1, buffers, "iov entry 0", "a fractional buffer index"],
        [iov(0, -1, 2), 1, buffers, "iov entry 0", "a negative offset"],
        [iov(0, 0, -1), 1, buffers, "iov entry 0", "a negative length"],
        [iov(0, Number.NaN, 1), 1, buffers, "iov entry 0", "a NaN offset"],
        [iov(0, 0, Number.NaN), 1, buffers, "iov entry 0", "a NaN length"],
        [iov(0, 1.5, 1), 1, buffers, "iov entry 0", "a fractional offset"],
        [iov(0, 2 ** 60, 2 ** 60), 1, buffers, "iov entry 0", "huge offset and length"],
        [iov(0, 0, 1), 2, buffers, "count", "count needs more triples than iov holds"],
        [new Float64Array(3 * 2000), 1025, buffers, "count", "count past IOV_MAX"],
        [iov(0, 0, 1), -1, buffers, "count", "a negative count"],
        [iov(0, 0, 1), 1.5, buffers, "count", "a fractional count"],
        [iov(0, 0, 1), 1n, buffers, "count", "a BigInt count"],
        [Uint32Array.from([0, 0, 1]), 1, buffers, "iov", "iov that is not a Float64Array"],
        [new ArrayBuffer(24), 1, buffers, "iov", "iov that is an ArrayBuffer"],
        [[0, 0, 1], 1, buffers, "iov", "iov that is an array"],
        [iov(0, 0, 1), 1, [a, 0x1000], "buffers\\[1\\]", "a number among the buffers"],
        [iov(0, 0, 1), 1, [a, 8n], "buffers\\[1\\]", "a BigInt among the buffers"],
        [iov(0, 0, 1), 1, [buffers], "buffers\\[0\\]", "an array of buffers instead of buffers"],
        [iov(0, 0, 1), 1, Array.from({ length: 17 }, () => a), "buffers", "17 buffers"],
        [iov(0, 0, 1), 1, Array.from({ length: 40 }, () => a), "buffers", "40 buffers"],
      ];
      for (const [v, count, bufs, arg, why] of cases) {
        rejects(() => sys[call](fd, v as Float64Array, count as number, ...(bufs as Uint8Array[])), call, arg, why);
      }
      assert.ok(big.intact());
      assert.deepEqual([...a, ...big.view], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], "no byte was read");
      const pieces = iov(1, 6, 2, 0, 0, 3, 1, 0, 0, 0, 7, 1);
      if (call === "writev") {
        assert.equal(fstatSync(fd).size, 0, "no byte was written");
        assert.equal(sys.writev(fd, pieces, 4, ...buffers), 6);
        assert.deepEqual([...readFileSync(path)], [15, 16, 1, 2, 3, 8], "the pieces, in order");
      } else {
        assert.equal(sys.readv(fd, pieces, 4, ...buffers), 6, "the refused calls read nothing: the file is read from its start");
        assert.deepEqual([...a, ...big.view], [102, 103, 104, 4, 5, 6, 7, 105, 9, 10, 11, 12, 13, 14, 100, 101], "the pieces, in order");
        assert.ok(big.intact());
      }
      assert.equal(sys[call](fd, new Float64Array(0), 0), 0, `nothing to ${call === "writev" ? "write" : "read"} is fine`);
    } finally {
      closeSync(fd);
    }
  });
}

test("view, madvise and munmap only work inside mappings made by mmap", () => {
  const size = 4 * PAGE_SIZE;
  const addr = sys.mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert.equal(typeof addr, "bigint");
  const base = addr as bigint;
  const page = BigInt(PAGE_SIZE);
  try {
    const outside: [bigint, number, string][] = [
      [base, size + 1, "one byte past the mapping"],
      [base + 1n, size, "shifted one byte"],
      [base - page, PAGE_SIZE, "the page before"],
      [base + BigInt(size), 1, "the byte after"],
      [base + 2n * page, 2 ** 52, "a huge length"],
      [0x1000n, PAGE_SIZE, "an address flint never mapped"],
      [2n ** 64n - 1n, 2, "a range that wraps around"],
    ];
    for (const [a, len, why] of outside) {
      rejects(() => sys.view(a, len), "view", "not inside a mapping", `view ${why}`);
      rejects(() => sys.madvise(a, len, MADV_NORMAL), "madvise", "not inside a mapping", `madvise ${why}`);
    }
    for (const [a, why] of [[Number(base), "a number"], ["0", "a string"], [-1n, "a negative BigInt"], [2n ** 64n, "a BigInt past 64 bits"]] as const) {
      rejects(() => sys.view(a as bigint, 8), "view", "address", `view address ${why}`);
      rejects(() => sys.madvise(a as bigint, 8, MADV_NORMAL), "madvise", "address", `madvise address ${why}`);
      rejects(() => sys.munmap(a as bigint, size), "munmap", "address", `munmap address ${why}`);
    }
    for (const [len, why] of [[-1, "negative"], [Number.NaN, "NaN"], [0.5, "fractional"], [8n, "a BigInt"]] as const) {
      rejects(() => sys.view(base, len as number), "view", "length", `view length ${why}`);
    }
    // Only a whole mapping can be unmapped: part of one would leave a view over nothing.
    rejects(() => sys.munmap(base, PAGE_SIZE), "munmap", "not a mapping", "munmap of the first page only");
    rejects(() => sys.munmap(base + page, size - PAGE_SIZE), "munmap", "not a mapping", "munmap of the tail only");
    const v = new Uint8Array(sys.view(base + page, PAGE_SIZE));
    v[0] = 7;
    assert.equal(new Uint8Array(sys.view(base, size))[PAGE_SIZE], 7, "views inside the mapping alias it");
    assert.equal(sys.madvise(base, size, MADV_NORMAL), 0);
  } finally {
    assert.equal(sys.munmap(base, size), 0);
  }
  rejects(() => sys.view(base, PAGE_SIZE), "view", "not inside a mapping", "view after munmap");
  rejects(() => sys.munmap(base, size), "munmap", "not a mapping", "a second munmap");
});

test("a view is a SharedArrayBuffer: viewing large mappings over and over starts no full collection for external memory", async () => {
  // An external ArrayBuffer's length counts as external memory of the isolate, and V8 answers a
  // view of a VM's RAM with a mark-compact ("external memory pressure"); a shared one is not counted.
  const size = 256 * 1024 * 1024;
  const addr = sys.mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  assert.equal(typeof addr, "bigint");
  const majors: number[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (((e as { detail?: { kind?: number } }).detail)?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) majors.push(e.startTime);
  });
  observer.observe({ entryTypes: ["gc"] });
  try {
    const views: Uint8Array[] = [];
    for (let i = 0; i < 32; i++) {
      const ab = sys.view(addr as bigint, size);
      assert.ok(ab instanceof SharedArrayBuffer);
      views.push(new Uint8Array(ab));
      // Let V8 run the collection it scheduled, if it did (as a VM's start does between its steps).
      await new Promise((r) => setImmediate(r));
    }
    views[31]![size - 1] = 9;
    assert.equal(views[0]![size - 1], 9, "the views alias one mapping");
    await new Promise((r) => setTimeout(r, 50));
  } finally {
    observer.disconnect();
    assert.equal(sys.munmap(addr as bigint, size), 0);
  }
  // 32 views of 256 MiB as external ArrayBuffers gave 5 full collections here.
  assert.ok(majors.length <= 2, `${majors.length} full collections while viewing 8 GiB`);
});

test("mmap refuses fixed addresses and lengths that are not whole positive numbers", () => {
  rejects(() => sys.mmap(PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0), "mmap", "fixed address", "MAP_FIXED");
  for (const [len, why] of [[0, "zero"], [-1, "negative"], [Number.NaN, "NaN"], [1.5, "fractional"], [4096n, "a BigInt"], ["4096", "a string"]] as const) {
    rejects(() => sys.mmap(len as number, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "mmap", "length", `mmap length ${why}`);
  }
  rejects(() => sys.mmap(PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, -1), "mmap", "offset", "negative offset");
});

test("ioctl SIOCGIFINDEX (unencoded): takes a whole struct ifreq, refuses less, and answers an interface's index", () => {
  const fd = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  assert.ok(fd >= 0);
  try {
    rejects(() => sys.ioctl(fd, SIOCGIFINDEX, new Uint8Array(ifreq.SIZE - 1)), "ioctl", `reads or writes ${ifreq.SIZE} bytes`, "a short buffer");
    rejects(() => sys.ioctl(fd, SIOCGIFINDEX, 0), "ioctl", "arg of request 0x8933", "a number");
    const ifr = new Uint8Array(ifreq.SIZE);
    ifr.set(new TextEncoder().encode("lo"), ifreq.ifr_name);
    assert.equal(sys.ioctl(fd, SIOCGIFINDEX, ifr), 0);
    // ifr_ifindex shares the union at ifr_flags' offset.
    assert.equal(new DataView(ifr.buffer).getInt32(ifreq.ifr_flags, true), Number(readFileSync("/sys/class/net/lo/ifindex", "utf8")));
    ifr.fill(0).set(new TextEncoder().encode("flintnope0"), ifreq.ifr_name);
    assert.equal(sys.ioctl(fd, SIOCGIFINDEX, ifr), -ENODEV);
  } finally {
    sys.close(fd);
  }
});

test("ioctl: a request that takes a value refuses buffers, and one that reads or writes memory refuses numbers", () => {
  const efd = sys.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  try {
    // FIONREAD is not _IOC-encoded: the addon cannot know its size, so neither form is taken.
    for (const [arg, why] of [[0, "a number"], [new Uint8Array(4), "a buffer"]] as const) {
      rejects(() => sys.ioctl(efd, FIONREAD, arg), "ioctl", "request 0x541b", `FIONREAD with ${why}`);
    }
    for (const [arg, why] of notBuffers.filter(([a]) => a !== undefined)) {
      rejects(() => sys.ioctl(efd, TUNSETIFF, arg as Uint8Array), "ioctl", "arg of request 0x400454ca", `TUNSETIFF with ${why}`);
    }
    rejects(() => sys.ioctl(efd, TUNSETIFF), "ioctl", "arg of request", "TUNSETIFF with no argument");
    for (const [req, why] of [[TUNSETIFF + 2 ** 32, "past 32 bits (the kernel would see TUNSETIFF)"], [-1, "negative"], [1.5, "fractional"], [BigInt(TUNSETIFF), "a BigInt"]] as const) {
      rejects(() => sys.ioctl(efd, req as number, new Uint8Array(40)), "ioctl", "request", `request ${why}`);
      rejects(() => sys.ioctlValue(efd, req as number, 0), "ioctlValue", "request", `ioctlValue request ${why}`);
    }
    // TUNSETIFF is declared with an int, but the kernel reads and writes a struct ifreq.
    const g = guarded(4, 16, 64);
    rejects(() => sys.ioctl(efd, TUNSETIFF, g.view), "ioctl", "request 0x400454ca .* 40 bytes", "TUNSETIFF with 4 bytes");
    assert.ok(g.intact());
    for (const [fd, why] of badFds) rejects(() => sys.ioctl(fd as number, TUNSETIFF, new Uint8Array(40)), "ioctl", "fd", `ioctl fd ${why}`);
  } finally {
    sys.close(efd);
  }
});

/** Opens /dev/kvm, a VM and vCPU 0 with the raw addon; closes them after `fn`. */
function withKvm(fn: (k: { kvm: number; vm: number; vcpu: number }) => void): void {
  const kvm = openSync("/dev/kvm", O_RDWR | O_CLOEXEC);
  const vm = sys.ioctlValue(kvm, KVM_CREATE_VM, 0);
  assert.ok(vm >= 0, `KVM_CREATE_VM: ${vm}`);
  const vcpu = sys.ioctl(vm, KVM_CREATE_VCPU, 0);
  assert.ok(vcpu >= 0, `KVM_CREATE_VCPU: ${vcpu}`);
  try {
    fn({ kvm, vm, vcpu });
  } finally {
    closeSync(vcpu);
    closeSync(vm);
    closeSync(kvm);
  }
}

test("ioctl on KVM: a buffer smaller than the request's struct throws before the kernel writes past it", () => {
  withKvm(({ kvm, vcpu }) => {
    for (const n of [0, 16, kvm_regs.SIZE - 1]) {
      const g = guarded(n, 16, kvm_regs.SIZE + 16);
      rejects(() => sys.ioctl(vcpu, KVM_GET_REGS, g.view), "ioctl", `${kvm_regs.SIZE} bytes`, `KVM_GET_REGS into ${n} bytes`);
      assert.ok(g.intact(), `guards intact after KVM_GET_REGS into ${n} bytes`);
    }
    // The struct fits between the view's byteOffset and the end of its ArrayBuffer, not in the view.
    const dv = new DataView(new ArrayBuffer(64 + kvm_regs.SIZE), 64, kvm_regs.SIZE - 8);
    rejects(() => sys.ioctl(vcpu, KVM_GET_REGS, dv), "ioctl", `${kvm_regs.SIZE} bytes`, "a DataView shorter than the rest of its buffer");
    for (const [arg, why] of notBuffers) {
      rejects(() => sys.ioctl(vcpu, KVM_GET_REGS, arg as Uint8Array), "ioctl", "arg", `KVM_GET_REGS with ${why}`);
    }
    rejects(() => sys.ioctlValue(vcpu, KVM_GET_REGS, 0), "ioctlValue", "does not take a value", "ioctlValue is no way around");
    rejects(() => sys.ioctl(kvm, KVM_CHECK_EXTENSION, new Uint8Array(8)), "ioctl", "takes a value", "a buffer where a value belongs");
    rejects(() => sys.ioctl(kvm, KVM_CHECK_EXTENSION, 1n as unknown as number), "ioctl", "arg", "a BigInt value");
    const g = guarded(kvm_regs.SIZE);
    assert.equal(sys.ioctl(vcpu, KVM_GET_REGS, g.view), 0, "a buffer of exactly the struct is fine");
    assert.ok(g.intact());
  });
});

test("ioctl on KVM: entry counts in cpuid2 and msr structs are checked against the buffer", () => {
  withKvm(({ kvm, vm, vcpu }) => {
    // KVM_GET_SUPPORTED_CPUID with nent = 200 in a buffer of 2 entries: the kernel would write them all.
    const cpuidBytes = kvm_cpuid2.SIZE + 2 * kvm_cpuid_entry2.SIZE;
    const c = guarded(cpuidBytes, 16, 200 * kvm_cpuid_entry2.SIZE);
    new DataView(c.ab, 16).setUint32(kvm_cpuid2.nent, 200, true);
    rejects(() => sys.ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c.view), "ioctl", "count 200 needs", "KVM_GET_SUPPORTED_CPUID nent past the buffer");
    assert.ok(c.intact(), "guards intact after KVM_GET_SUPPORTED_CPUID");
    rejects(() => sys.ioctl(kvm, KVM_GET_SUPPORTED_CPUID, new Uint8Array(4)), "ioctl", "at least 8 bytes", "no room for the header");
    // KVM_GET_MSR_INDEX_LIST with nmsrs = 1024 in a buffer of 2.
    const m = guarded(kvm_msr_list.SIZE + 8, 16, 4 * 1024);
    new DataView(m.ab, 16).setUint32(kvm_msr_list.nmsrs, 1024, true);
    rejects(() => sys.ioctl(kvm, KVM_GET_MSR_INDEX_LIST, m.view), "ioctl", "count 1024 needs", "KVM_GET_MSR_INDEX_LIST nmsrs past the buffer");
    assert.ok(m.intact(), "guards intact after KVM_GET_MSR_INDEX_LIST");
    const s = new Uint8Array(kvm_msrs.SIZE + 16);
    new DataView(s.buffer).setUint32(kvm_msrs.nmsrs, 2, true);
    rejects(() => sys.ioctl(vcpu, KVM_SET_MSRS, s), "ioctl", "count 2 needs", "KVM_SET_MSRS nmsrs past the buffer");
    // A count that fits works, and the kernel's answer comes back.
    const ok = new Uint8Array(kvm_cpuid2.SIZE + 256 * kvm_cpuid_entry2.SIZE);
    new DataView(ok.buffer).setUint32(kvm_cpuid2.nent, 256, true);
    assert.equal(sys.ioctl(kvm, KVM_GET_SUPPORTED_CPUID, ok), 0);
    const nent = new DataView(ok.buffer).getUint32(kvm_cpuid2.nent, true);
    assert.ok(nent > 0 && nent <= 256, `nent ${nent} written back`);
    // Requests whose structs hold pointers the addon does not check are refused whole.
    rejects(() => sys.ioctl(vm, KVM_GET_DIRTY_LOG, new Uint8Array(64)), "ioctl", "does not check", "KVM_GET_DIRTY_LOG");
  });
});

test("ioctl on KVM: KVM_GET_XSAVE2 and KVM_SET_XSAVE work on a private copy of the largest XSAVE area", () => {
  withKvm(({ vcpu }) => {
    // The kernel copies the vCPU's XSAVE size, which can exceed _IOC_SIZE (4096) once AMX is
    // enabled: the addon gives it a buffer of the CPU's largest XSAVE area, and the caller's
    // buffer gives or takes as many bytes as it holds.
    const g = guarded(kvm_xsave.SIZE);
    assert.equal(sys.ioctl(vcpu, KVM_GET_XSAVE2, g.view), 0);
    assert.ok(g.intact(), "guards intact after KVM_GET_XSAVE2");
    const old = new Uint8Array(kvm_xsave.SIZE);
    assert.equal(sys.ioctl(vcpu, KVM_GET_XSAVE, old), 0);
    assert.deepEqual(g.view, old, "KVM_GET_XSAVE2 returns what KVM_GET_XSAVE does while the state fits 4096 bytes");
    assert.equal(sys.ioctl(vcpu, KVM_SET_XSAVE, g.view), 0, "the state goes back");
    for (const n of [0, 64, kvm_xsave.SIZE - 1]) {
      const s = guarded(n, 16, kvm_xsave.SIZE + 16);
      rejects(() => sys.ioctl(vcpu, KVM_GET_XSAVE2, s.view), "ioctl", `${kvm_xsave.SIZE} bytes`, `KVM_GET_XSAVE2 into ${n} bytes`);
      rejects(() => sys.ioctl(vcpu, KVM_SET_XSAVE, s.view), "ioctl", `${kvm_xsave.SIZE} bytes`, `KVM_SET_XSAVE from ${n} bytes`);
      assert.ok(s.intact(), `guards intact after ${n} bytes`);
    }
  });
});

test("ioctl on KVM: KVM_SET_USER_MEMORY_REGION takes only memory the addon mapped", () => {
  withKvm(({ vm }) => {
    const size = 4 * PAGE_SIZE;
    const base = sys.mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) as bigint;
    const region = (addr: bigint, bytes: number) => {
      const b = new Uint8Array(kvm_userspace_memory_region.SIZE);
      const v = new DataView(b.buffer);
      v.setUint32(kvm_userspace_memory_region.slot, 0, true);
      v.setBigUint64(kvm_userspace_memory_region.guest_phys_addr, 0n, true);
      v.setBigUint64(kvm_userspace_memory_region.memory_size, BigInt(bytes), true);
      v.setBigUint64(kvm_userspace_memory_region.userspace_addr, addr, true);
      return b;
    };
    try {
      for (const [addr, bytes, why] of [[base, size + PAGE_SIZE, "one page too long"], [0x10000n, PAGE_SIZE, "memory flint never mapped"], [base + BigInt(size), PAGE_SIZE, "the page after"]] as const) {
        rejects(() => sys.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region(addr, bytes)), "ioctl", "not inside a mapping", why);
      }
      assert.equal(sys.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region(base, size)), 0, "the whole mapping is fine");
      assert.equal(sys.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region(0n, 0)), 0, "deleting the slot names no memory");
    } finally {
      sys.munmap(base, size);
    }
  });
});

test("getDirtyLog: only slots registered through the addon, into a buffer that holds the slot's whole bitmap", () => {
  withKvm(({ vm }) => {
    const size = 200 * PAGE_SIZE; // 200 pages: a bitmap of four 64-bit words
    const base = sys.mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) as bigint;
    const b = new Uint8Array(kvm_userspace_memory_region.SIZE);
    const v = new DataView(b.buffer);
    v.setUint32(kvm_userspace_memory_region.slot, 3, true);
    v.setUint32(kvm_userspace_memory_region.flags, KVM_MEM_LOG_DIRTY_PAGES, true);
    v.setBigUint64(kvm_userspace_memory_region.memory_size, BigInt(size), true);
    v.setBigUint64(kvm_userspace_memory_region.userspace_addr, base, true);
    try {
      rejects(() => sys.getDirtyLog(vm, 3, new Uint8Array(32)), "getDirtyLog", "not registered", "a slot never registered");
      assert.equal(sys.ioctl(vm, KVM_SET_USER_MEMORY_REGION, b), 0);
      const guard = new Uint8Array(40).fill(0xee);
      rejects(() => sys.getDirtyLog(vm, 3, guard.subarray(0, 24)), "getDirtyLog", "32-byte bitmap", "three words for four");
      assert.ok(guard.every((x) => x === 0xee), "nothing written");
      assert.equal(sys.getDirtyLog(vm, 3, guard.subarray(0, 32)), 0);
      assert.ok(guard.subarray(0, 32).every((x) => x === 0), "nothing written by the guest yet");
      assert.ok(guard.subarray(32).every((x) => x === 0xee), "nothing past the bitmap");
      rejects(() => sys.getDirtyLog(vm, 3, 32 as unknown as Uint8Array), "getDirtyLog", "bitmap", "a number");
      v.setBigUint64(kvm_userspace_memory_region.memory_size, 0n, true);
      assert.equal(sys.ioctl(vm, KVM_SET_USER_MEMORY_REGION, b), 0, "the slot deleted");
      rejects(() => sys.getDirtyLog(vm, 3, new Uint8Array(32)), "getDirtyLog", "not registered", "a deleted slot");
    } finally {
      sys.munmap(base, size);
    }
  });
});

test("lseek: SEEK_DATA and SEEK_HOLE find a sparse file's data", () => {
  const path = join(dir, "sparse");
  writeFileSync(path, "");
  const fd = openSync(path, "r+");
  try {
    ftruncateSync(fd, 64 * 4096);
    writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 16 * 4096);
    assert.equal(sys.lseek(fd, 0, SEEK_DATA), 16 * 4096);
    assert.equal(sys.lseek(fd, 16 * 4096, SEEK_HOLE), 17 * 4096);
    assert.equal(sys.lseek(fd, 17 * 4096, SEEK_DATA), -ENXIO);
    rejects(() => sys.lseek(fd, -1, SEEK_DATA), "lseek", "offset", "a negative offset");
  } finally {
    closeSync(fd);
  }
});

test("paths: open, bindUnix and connectUnix refuse non-strings and NUL characters; a long Unix path is ENAMETOOLONG", () => {
  const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  try {
    for (const [p, why] of [[42, "a number"], [undefined, "missing"], [{}, "an object"], [new Uint8Array(4), "a buffer"], [8n, "a BigInt"]] as const) {
      rejects(() => sys.open(p as unknown as string, O_RDWR, 0), "open", "path", `open ${why}`);
      rejects(() => sys.bindUnix(fd, p as unknown as string), "bindUnix", "path", `bindUnix ${why}`);
      rejects(() => sys.connectUnix(fd, p as unknown as string), "connectUnix", "path", `connectUnix ${why}`);
    }
    rejects(() => sys.open(`${dir}/a\0b`, O_RDWR, 0), "open", "NUL", "open with a NUL inside");
    rejects(() => sys.bindUnix(fd, `${dir}/a\0b`), "bindUnix", "NUL", "bindUnix with a NUL inside");
    rejects(() => sys.open("x".repeat(5000), O_RDWR, 0), "open", "longer", "open with a path longer than PATH_MAX");
    assert.equal(sys.bindUnix(fd, `${dir}/${"x".repeat(200)}`), -ENAMETOOLONG);
    assert.equal(sys.connectUnix(fd, `${dir}/${"x".repeat(200)}`), -ENAMETOOLONG);
  } finally {
    sys.close(fd);
  }
});

test("every other function refuses wrong types instead of passing them on", () => {
  const bad: [() => unknown, string, string][] = [
    [() => sys.eventfd(-1, 0), "eventfd", "initval"],
    [() => sys.eventfd(0, "x" as unknown as number), "eventfd", "flags"],
    [() => sys.close("3" as unknown as number), "close", "fd"],
    [() => sys.fdatasync(1.5), "fdatasync", "fd"],
    [() => sys.socket(AF_UNIX, Number.NaN, 0), "socket", "type"],
    [() => sys.listen(2 ** 40, 1), "listen", "fd"],
    [() => sys.accept4(0, {} as unknown as number), "accept4", "flags"],
    [() => sys.shutdown(0, 1n as unknown as number), "shutdown", "how"],
    [() => sys.fallocate(0, 0, -1, 1), "fallocate", "offset"],
    [() => sys.fallocate(0, 0, 0, Number.NaN), "fallocate", "length"],
    [() => sys.ioctlValue("3" as unknown as number, KVM_CHECK_EXTENSION, 0), "ioctlValue", "numbers"],
    [() => sys.installKickSignal(sys.sigrtmin() - 1), "installKickSignal", "signo"],
    [() => sys.installKickSignal(65), "installKickSignal", "signo"],
    [() => sys.unblockSignal(0), "unblockSignal", "signo"],
    [() => sys.signalThread(sys.threadSelf(), 0), "signalThread", "signo"],
    [() => sys.signalThread(0n, sys.sigrtmin()), "signalThread", "thread"],
    [() => sys.signalThread(2n ** 40n, sys.sigrtmin()), "signalThread", "thread"],
    [() => sys.signalThread("1" as unknown as bigint, sys.sigrtmin()), "signalThread", "thread"],
  ];
  for (const [fn, name, arg] of bad) rejects(fn, name, arg, `${name} ${arg}`);
});

test("mmapOver maps anew only over a whole mapping made by mmap, which stays recorded", () => {
  const size = 2 * PAGE_SIZE;
  const base = sys.mmap(size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) as bigint;
  const page = BigInt(PAGE_SIZE);
  try {
    rejects(() => sys.mmapOver(base, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "mmapOver", "not a mapping", "part of a mapping");
    rejects(() => sys.mmapOver(base + page, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "mmapOver", "not a mapping", "its tail");
    rejects(() => sys.mmapOver(0x1000n, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "mmapOver", "not a mapping", "an address flint never mapped");
    rejects(() => sys.mmapOver(base, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0), "mmapOver", "fixed address", "MAP_FIXED");
    rejects(() => sys.mmapOver(base, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "mmapOver", "length", "zero length");
    rejects(() => sys.mmapOver(base, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, -1), "mmapOver", "offset", "negative offset");
    assert.equal(sys.mmapOver(base, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), 0);
    const v = new Uint8Array(sys.view(base, size));
    v[size - 1] = 9;
    assert.equal(v[size - 1], 9, "the new mapping is readable and writable at the same address");
    // A refused mapping (a bad fd) leaves the range reserved and recorded: it can still be unmapped.
    assert.ok(sys.mmapOver(base, size, PROT_READ, MAP_PRIVATE, 1_000_000, 0) < 0);
  } finally {
    assert.equal(sys.munmap(base, size), 0);
  }
  rejects(() => sys.mmapOver(base, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "mmapOver", "not a mapping", "after munmap");
});

test("userfaultfd: UFFDIO_REGISTER/UNREGISTER only on memory the addon mapped; UFFDIO_COPY only through uffdCopy, whose source is a checked buffer", () => {
  const uffd = sys.userfaultfd(O_CLOEXEC | O_NONBLOCK);
  assert.ok(uffd >= 0, `userfaultfd: ${uffd}`);
  try {
    const api = new DataView(new ArrayBuffer(uffdio_api.SIZE));
    api.setBigUint64(uffdio_api.api, BigInt(UFFD_API), true);
    assert.equal(sys.ioctl(uffd, UFFDIO_API, api), 0);
    const reg = new DataView(new ArrayBuffer(uffdio_register.SIZE));
    reg.setBigUint64(uffdio_register.mode, BigInt(UFFDIO_REGISTER_MODE_MISSING), true);
    // Memory this process has that the addon did not map: a Node buffer.
    const foreign = sys.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) as bigint;
    sys.munmap(foreign, PAGE_SIZE);
    reg.setBigUint64(uffdio_range.start, foreign, true);
    reg.setBigUint64(uffdio_range.len, BigInt(PAGE_SIZE), true);
    rejects(() => sys.ioctl(uffd, UFFDIO_REGISTER, reg), "ioctl", "not inside a mapping made by mmap", "an address no longer mapped by the addon");
    rejects(() => sys.ioctl(uffd, UFFDIO_UNREGISTER, reg), "ioctl", "not inside a mapping made by mmap", "unregister outside the addon's mappings");
    rejects(() => sys.ioctl(uffd, UFFDIO_REGISTER, new Uint8Array(uffdio_register.SIZE - 1)), "ioctl", "buffer holds", "a short struct");
    const mine = sys.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) as bigint;
    try {
      reg.setBigUint64(uffdio_range.start, mine + BigInt(PAGE_SIZE), true);
      reg.setBigUint64(uffdio_range.len, BigInt(2 * PAGE_SIZE), true);
      rejects(() => sys.ioctl(uffd, UFFDIO_REGISTER, reg), "ioctl", "not inside a mapping made by mmap", "a range running past the mapping");
      reg.setBigUint64(uffdio_range.start, mine, true);
      assert.equal(sys.ioctl(uffd, UFFDIO_REGISTER, reg), 0, "a whole mapping of the addon's registers");
      rejects(() => sys.ioctl(uffd, UFFDIO_COPY, new Uint8Array(uffdio_copy.SIZE)), "ioctl", "carries pointers", "UFFDIO_COPY's src is a raw pointer");
      const src = guarded(PAGE_SIZE);
      for (const [off, len, why] of [[1, PAGE_SIZE, "one byte past the view"], [PAGE_SIZE + 1, 0, "offset past the view"], [-1, 1, "negative offset"], [0, 0.5, "fraction"]] as const) {
        rejects(() => sys.uffdCopy(uffd, mine, src.view, off, len, 0), "uffdCopy", off > PAGE_SIZE || off < 0 ? "srcOffset" : "length", why);
      }
      rejects(() => sys.uffdCopy(uffd, mine, 5 as unknown as Uint8Array, 0, 1, 0), "uffdCopy", "src", "a number as the source");
      src.view.fill(0x5a);
      assert.equal(sys.uffdCopy(uffd, mine, src.view, 0, PAGE_SIZE, 0), PAGE_SIZE, "a page copied into the registered mapping");
      assert.equal(new Uint8Array(sys.view(mine, 1))[0], 0x5a);
      assert.equal(sys.uffdCopy(uffd, mine, src.view, 0, PAGE_SIZE, 0), -EEXIST, "the page is there already");
      assert.ok(src.intact());
    } finally {
      sys.munmap(mine, 2 * PAGE_SIZE);
    }
  } finally {
    sys.close(uffd);
  }
});

test("sendFd and recvFd: lengths inside the buffer, an Int32Array of at most 8 fds; a descriptor crosses as SCM_RIGHTS", () => {
  const path = join(dir, "fdpass.sock");
  const listener = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert.equal(sys.bindUnix(listener, path), 0);
  assert.equal(sys.listen(listener, 1), 0);
  const a = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert.equal(sys.connectUnix(a, path), 0);
  const b = sys.accept4(listener, SOCK_CLOEXEC);
  const efd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  try {
    const msg = guarded(8);
    msg.view.set([1, 2, 3, 4, 5, 6, 7, 8]);
    rejects(() => sys.sendFd(a, msg.view, 9, efd), "sendFd", "length", "a length past the buffer");
    rejects(() => sys.sendFd(a, msg.view, 8, -1), "sendFd", "fd", "a negative fd");
    rejects(() => sys.sendFd(a, 8 as unknown as Uint8Array, 8, efd), "sendFd", "buffer", "a number as the buffer");
    assert.equal(sys.sendFd(a, msg.view, 8, efd), 8);
    const into = guarded(4);
    rejects(() => sys.recvFd(b, into.view, 5, new Int32Array(1)), "recvFd", "length", "a length past the buffer");
    rejects(() => sys.recvFd(b, into.view, 4, new Uint32Array(1) as unknown as Int32Array), "recvFd", "fds", "fds of the wrong type");
    rejects(() => sys.recvFd(b, into.view, 4, new Int32Array(9)), "recvFd", "fds", "more than 8 fds");
    const fds = new Int32Array(2).fill(7);
    assert.equal(sys.recvFd(b, into.view, 4, fds), 4, "the first four bytes");
    assert.deepEqual([...into.view], [1, 2, 3, 4]);
    assert.ok(into.intact(), "nothing written past the length");
    assert.ok(fds[0]! >= 0 && fds[0] !== efd, `a new descriptor: ${fds[0]}`);
    assert.equal(fds[1], -1, "unused entries are -1");
    // The received descriptor is the same eventfd: a count written to it is read from the original.
    const one = new BigUint64Array([1n]);
    assert.equal(sys.write(fds[0]!, one, 8), 8);
    const got = new BigUint64Array(1);
    assert.equal(sys.read(efd, got, 8), 8);
    assert.equal(got[0], 1n);
    sys.close(fds[0]!);
    const rest = new Uint8Array(8);
    const none = new Int32Array(1);
    assert.equal(sys.recvFd(b, rest, 8, none), 4, "the rest of the message, with no descriptor again");
    assert.equal(none[0], -1);
    sys.close(a);
    assert.equal(sys.recvFd(b, rest, 8, none), 0, "end of stream");
    assert.equal(sys.sendFd(b, msg.view, 8, efd), -EPIPE, "to a closed peer: EPIPE, no signal");
  } finally {
    sys.close(efd);
    sys.close(b);
    sys.close(listener);
  }
});

test("execve: every argument is checked before the call (strings only, no NUL, a program name); a missing file is -ENOENT and this process goes on", () => {
  const bad: [() => unknown, string][] = [
    [() => sys.execve(1 as unknown as string, ["x"], []), "path"],
    [() => sys.execve("/bin/true\0x", ["x"], []), "path"],
    [() => sys.execve("/bin/true", "x" as unknown as string[], []), "argv"],
    [() => sys.execve("/bin/true", [], []), "argv"],
    [() => sys.execve("/bin/true", ["a", 1 as unknown as string], []), "argv\\[1\\]"],
    [() => sys.execve("/bin/true", ["a\0b"], []), "argv\\[0\\] contains a NUL"],
    [() => sys.execve("/bin/true", ["a"], {} as unknown as string[]), "envp"],
    [() => sys.execve("/bin/true", ["a"], ["A=1", null as unknown as string]), "envp\\[1\\]"],
    [() => sys.execve("/bin/true", Array.from({ length: 5000 }, () => "a"), []), "more than"],
  ];
  for (const [fn, arg] of bad) rejects(fn, "execve", arg, `execve ${arg}`);
  assert.equal(sys.execve(join(dir, "no-such-program"), ["x"], []), -ENOENT);
});

test("installSeccompFilter: the instruction count must lie in 1..BPF_MAXINSNS and inside the buffer; flags only TSYNC and LOG", () => {
  // Every case throws before any system call: nothing is installed in the test's process.
  const eight = new Uint8Array(8 * sock_filter.SIZE);
  const bad: [() => unknown, string, string][] = [
    [() => sys.installSeccompFilter(eight, 9, 0), "installSeccompFilter", "count 9 instructions exceed the buffer's 64 bytes"],
    [() => sys.installSeccompFilter(eight.subarray(8), 8, 0), "installSeccompFilter", "count 8 instructions exceed the buffer's 56 bytes"],
    [() => sys.installSeccompFilter(eight, 0, 0), "installSeccompFilter", "count"],
    [() => sys.installSeccompFilter(new Uint8Array((BPF_MAXINSNS + 1) * sock_filter.SIZE), BPF_MAXINSNS + 1, 0), "installSeccompFilter", "count"],
    [() => sys.installSeccompFilter(eight, 1.5, 0), "installSeccompFilter", "count"],
    [() => sys.installSeccompFilter(eight, 1, 0x8), "installSeccompFilter", "flags 0x8 other than TSYNC and LOG"],
    [() => sys.installSeccompFilter(eight, 1, -1), "installSeccompFilter", "flags"],
    [() => sys.installSeccompFilter(0x1000 as unknown as Uint8Array, 1, 0), "installSeccompFilter", "program"],
  ];
  for (const [fn, name, arg] of bad) rejects(fn, name, arg, `${name} ${arg}`);
});
