/**
 * The Uffd backend's handshake, without a VM: the JSON flint sends
 * (Firecracker's field names, one object per region), what a handler
 * accepts (flint's and every Firecracker version's message, nothing
 * malformed), and the message itself on a real socket: the JSON and the
 * userfaultfd (SCM_RIGHTS) as a handler receives them.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { AF_UNIX, SOCK_CLOEXEC, SOCK_STREAM } from "../linux/abi.generated.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { PAGE_SIZE, sys } from "../sys/native.js";
import { SnapshotError } from "./state-file.js";
import { encodeUffdMappings, parseUffdMappings, UFFD_HANDSHAKE_MAX_BYTES, UffdBackend, uffdMappings } from "./uffd.js";

const dir = mkdtempSync(join(tmpdir(), "flint-uffd-unit-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const text = (s: string) => new TextEncoder().encode(s);
const bad = (why: RegExp) => (e: unknown) => e instanceof SnapshotError && e.code === "ESNAPUFFD" && why.test(e.message) && !e.message.includes("\n");

describe("the handshake's JSON", () => {
  it("has Firecracker's fields, one object per region in guest-address order, page sizes in bytes under both names", () => {
    const memory = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }, { guestBase: 4 * 2 ** 30, size: 2 << 20 }]);
    try {
      const m = uffdMappings(memory, [0, 1 << 20]);
      assert.deepEqual(m, [
        { base_host_virt_addr: Number(memory.regions[0]!.hostAddress), size: 1 << 20, offset: 0, page_size: PAGE_SIZE, page_size_kib: PAGE_SIZE },
        { base_host_virt_addr: Number(memory.regions[1]!.hostAddress), size: 2 << 20, offset: 1 << 20, page_size: PAGE_SIZE, page_size_kib: PAGE_SIZE },
      ]);
      const json = new TextDecoder().decode(encodeUffdMappings(m));
      assert.match(json, /^\[\{"base_host_virt_addr":\d+,"size":1048576,"offset":0,"page_size":4096,"page_size_kib":4096\},/);
      assert.deepEqual(parseUffdMappings(encodeUffdMappings(m)), m, "round trip");
      assert.throws(() => uffdMappings(memory, [0]), bad(/2 regions, 1 file offsets/));
    } finally {
      memory.dispose();
    }
  });

  it("a handler reads every Firecracker version's message: page_size (1.12+), page_size_kib only (1.7-1.11), neither (before 1.7)", () => {
    const v112 = parseUffdMappings(text('[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"page_size_kib":4096}]'));
    const v17 = parseUffdMappings(text('[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}]'));
    const v16 = parseUffdMappings(text('[{"base_host_virt_addr":4096,"size":8192,"offset":0}]'));
    for (const m of [v112, v17, v16]) assert.deepEqual(m, [{ base_host_virt_addr: 4096, size: 8192, offset: 0, page_size: 4096, page_size_kib: 4096 }]);
    const huge = parseUffdMappings(text('[{"base_host_virt_addr":2097152,"size":2097152,"offset":2097152,"page_size":2097152}]'));
    assert.equal(huge[0]!.page_size, 2 << 20);
  });

  it("a handler refuses what it cannot serve, naming the field", () => {
    for (const [json, why] of [
      ["", /not JSON/], ["{", /not JSON/], ["{}", /non-empty array/], ["[]", /non-empty array/], ["[1]", /\[0\] is not an object/],
      ['[{"size":4096,"offset":0}]', /\[0\]\.base_host_virt_addr is not a whole number/],
      ['[{"base_host_virt_addr":4096,"size":0,"offset":0}]', /\[0\]\.size is not a whole number from 1/],
      ['[{"base_host_virt_addr":4096,"size":4096,"offset":-4096}]', /\[0\]\.offset/],
      ['[{"base_host_virt_addr":4096,"size":4096,"offset":"0"}]', /\[0\]\.offset/],
      ['[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":3000}]', /not a power of two/],
      ['[{"base_host_virt_addr":4097,"size":4096,"offset":0}]', /not aligned/],
      ['[{"base_host_virt_addr":4096,"size":4096,"offset":0},{"base_host_virt_addr":8192,"size":100,"offset":4096}]', /\[1\] is not aligned/],
    ] as const) {
      assert.throws(() => parseUffdMappings(text(json)), bad(why), json);
    }
    assert.throws(() => parseUffdMappings(new Uint8Array([0x5b, 0xff, 0x5d])), bad(/not JSON/), "not UTF-8");
  });
});

describe("the handshake on a socket", () => {
  it("one message: the JSON, with the registered userfaultfd attached; the connection stays open until close()", () => {
    const path = join(dir, "h.sock");
    const listener = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert.equal(sys.bindUnix(listener, path), 0);
    assert.equal(sys.listen(listener, 1), 0);
    // Guest memory this test never touches: a touch would wait for a handler that is this very thread.
    const memory = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }, { guestBase: 1 << 30, size: 1 << 20 }], { externallyPopulated: true });
    let conn = -1, uffd = -1;
    let backend: UffdBackend | undefined;
    try {
      backend = UffdBackend.connect(memory, [0, 1 << 20], path);
      conn = sys.accept4(listener, SOCK_CLOEXEC);
      assert.ok(conn >= 0);
      const buf = new Uint8Array(UFFD_HANDSHAKE_MAX_BYTES);
      const fds = new Int32Array(2);
      const n = sys.recvFd(conn, buf, buf.length, fds);
      assert.ok(n > 0);
      uffd = fds[0]!;
      assert.equal(fds[1], -1, "exactly one descriptor");
      assert.equal(readlinkSync(`/proc/self/fd/${uffd}`), "anon_inode:[userfaultfd]");
      assert.deepEqual(parseUffdMappings(buf.subarray(0, n)), uffdMappings(memory, [0, 1 << 20]));
      assert.equal(backend.handlerClosed(), false, "both ends open");
      backend.close();
      assert.equal(sys.recvFd(conn, buf, buf.length, fds), 0, "flint's close() ends the connection: the handler's cue to exit");
    } finally {
      backend?.close();
      memory.dispose();
      for (const fd of [conn, uffd, listener]) if (fd >= 0) sys.close(fd);
    }
  });

  it("handlerClosed() sees the handler's end closed; connect refuses a path where nothing listens", () => {
    const path = join(dir, "h2.sock");
    const listener = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert.equal(sys.bindUnix(listener, path), 0);
    const memory = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }], { externallyPopulated: true });
    try {
      assert.throws(() => UffdBackend.connect(memory, [0], path), bad(new RegExp(`^Cannot connect to the page-fault handler at '${path}': nothing listens there \\(ECONNREFUSED\\)$`)));
      assert.equal(sys.listen(listener, 1), 0);
      const backend = UffdBackend.connect(memory, [0], path);
      const conn = sys.accept4(listener, SOCK_CLOEXEC);
      sys.close(conn);
      assert.equal(backend.handlerClosed(), true);
      backend.close();
    } finally {
      memory.dispose();
      sys.close(listener);
    }
  });
});
