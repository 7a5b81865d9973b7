/**
 * Restoring with the Uffd memory backend on the real /dev/kvm: a ring-3
 * guest that counts is snapshotted while running, `flint uffd-handler` (the
 * CLI users run) serves its memory file from a child process, and the
 * restored guest goes on from its saved count, every page it touches having
 * been copied by the handler. Then a snapshot of that VM (whose untouched
 * pages are not in memory yet) still holds every page, and the refusals: no
 * handler at the socket, a handler that closed the connection before the VM
 * started, and one that closes it while the VM runs.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, describe, it } from "node:test";
import { SnapshotError } from "../snapshot/state-file.js";
import { Machine } from "./machine.js";
import { until } from "./testing/pause-guest.js";
import { count, exited, MARKER_ADDRESS, snapshotCountingGuest, startClosingHandler, startUffdHandler } from "./testing/uffd-guest.js";

// Unix sockets need a local file system (tmpfs), not the harness's 9p share.
const dir = mkdtempSync(join(tmpdir(), "flint-uffd-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const MARKER = 0x5eed_f00d_cafe_beefn;

function uffdRefusal(why: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof SnapshotError, String(e));
    assert.equal(e.code, "ESNAPUFFD");
    assert.match(e.message, why);
    assert.ok(!e.message.includes("\n"), "one line");
    return true;
  };
}

describe("Machine.restore with the Uffd memory backend (ring-3 guest on /dev/kvm)", () => {
  it("the handler serves the memory file: the guest goes on from its saved count, and a snapshot of it holds every page", async () => {
    const snap = await snapshotCountingGuest(dir, "a", MARKER);
    const sock = join(dir, "a-handler.sock");
    const handler = await startUffdHandler(sock, snap.memoryPath);
    const console = new PassThrough();
    let text = "";
    console.on("data", (b: Buffer) => (text += b.toString("latin1")));
    const r = Machine.restore({ statePath: snap.statePath, uffdSocketPath: sock, consoleOutput: console });
    // This thread's read faults; the handler (another process) fills the page from the file.
    assert.equal(count(r), snap.at, "the count of the moment of the snapshot, read through the handler");
    const run = r.run();
    run.catch(() => undefined);
    await until("the restored guest to count on", () => count(r) > snap.at + 3_000_000n);
    await until("a console byte from the restored guest", () => text.includes("."));

    // A snapshot of it reads every page, including the ones nothing touched since the restore (the marker's).
    await r.pause();
    const again = { statePath: join(dir, "a2.snap"), memoryPath: join(dir, "a2.mem") };
    await r.snapshot(again);
    const at2 = count(r);
    r.stop();
    const result = await run;
    assert.equal(result.reason.kind, "poweroff");

    // The VM ended: flint closed the connection and the handler ended too, having copied what was touched.
    const stats = await handler.done;
    assert.equal(stats.end, "closed");
    // The second snapshot read every page through the handler: each was copied from the file once.
    assert.equal(stats.pagesCopied, (64 << 20) / 4096, JSON.stringify(stats));
    assert.equal(stats.faults, stats.pagesCopied + stats.pagesAlreadyThere, JSON.stringify(stats));
    assert.equal(stats.pagesZeroed, 0);

    const r2 = Machine.restore(again);
    assert.equal(r2.memory.readU64(MARKER_ADDRESS), MARKER, "the page nobody touched after the Uffd restore is in the second snapshot");
    assert.equal(count(r2), at2);
    const run2 = r2.run();
    run2.catch(() => undefined);
    await until("the twice-restored guest to count on", () => count(r2) > at2);
    r2.stop();
    await run2;
  });

  it("a page flint gives back (MADV_DONTNEED, as the balloon does) reaches the handler as a remove event and reads as zeros after", async () => {
    const snap = await snapshotCountingGuest(dir, "e", MARKER);
    const sock = join(dir, "e-handler.sock");
    const handler = await startUffdHandler(sock, snap.memoryPath);
    const r = Machine.restore({ statePath: snap.statePath, uffdSocketPath: sock, paused: true });
    const run = r.run();
    run.catch(() => undefined);
    await until("the VM to start paused", () => r.state === "paused");
    assert.equal(r.memory.readU64(MARKER_ADDRESS), MARKER, "the file's page, copied by the handler");
    r.memory.discard(MARKER_ADDRESS, 4096);
    assert.equal(r.memory.readU64(MARKER_ADDRESS), 0n, "given back: the handler serves zeros, not the file's page");
    r.stop();
    await run;
    const stats = await handler.done;
    assert.equal(stats.removeEvents, 1, JSON.stringify(stats));
    assert.equal(stats.pagesZeroed, 1, JSON.stringify(stats));
  });

  it("refuses with one line when no handler listens at the socket, and nothing is created", async () => {
    const snap = await snapshotCountingGuest(dir, "b", MARKER);
    const sock = join(dir, "nobody.sock");
    assert.throws(() => Machine.restore({ statePath: snap.statePath, uffdSocketPath: sock }),
      uffdRefusal(new RegExp(`^Cannot connect to the page-fault handler at '${sock}': no such socket \\(ENOENT\\)$`)));
    assert.throws(() => Machine.restore({ statePath: snap.statePath }), (e: unknown) => e instanceof SnapshotError && e.code === "ESNAPSTATE" && /either a memory file/.test(e.message));
    assert.throws(() => Machine.restore({ statePath: snap.statePath, memoryPath: snap.memoryPath, uffdSocketPath: sock }), (e: unknown) => e instanceof SnapshotError && e.code === "ESNAPSTATE");
  });

  it("a handler that closed the connection after the handshake: run() refuses before any vCPU runs", async () => {
    const snap = await snapshotCountingGuest(dir, "c", MARKER);
    const sock = join(dir, "closing.sock");
    const handler = await startClosingHandler(sock, "after-handshake");
    const r = Machine.restore({ statePath: snap.statePath, uffdSocketPath: sock });
    await exited(handler);
    await assert.rejects(r.run(), uffdRefusal(new RegExp(`^Cannot restore: the page-fault handler at '${sock}' closed the connection$`)));
    assert.equal(r.state, "ended");
  });

  it("a handler that closes the connection while the VM runs ends the VM with one line (threads waiting for pages are let go)", async () => {
    const snap = await snapshotCountingGuest(dir, "d", MARKER);
    const sock = join(dir, "dying.sock");
    const handler = await startClosingHandler(sock, "on-stdin-end");
    const r = Machine.restore({ statePath: snap.statePath, uffdSocketPath: sock });
    const run = r.run();
    run.catch(() => undefined);
    await until("the VM to start", () => r.state !== "not-started");
    // This handler never serves a page: the vCPU waits in its first fault until the handler goes.
    handler.stdin!.end();
    await exited(handler);
    const result = await run;
    assert.equal(result.reason.kind, "error");
    assert.match((result.reason as { message: string }).message, new RegExp(`^the page-fault handler at '${sock}' closed the connection: guest memory can no longer be served$`));
  });
});
