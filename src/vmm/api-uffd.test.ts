/**
 * PUT /snapshot/load with Firecracker's Uffd memory backend, over the API
 * socket as a client sends it: `flint uffd-handler` serves the memory file
 * from a child process, the restored ring-3 guest prints on its console
 * again, only the pages it touched were served, and the handler ends when
 * the VM does. A load whose handler is missing is refused with a 400 and
 * changes nothing.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, it } from "node:test";
import { until } from "../vm/testing/pause-guest.js";
import { snapshotCountingGuest, startUffdHandler } from "../vm/testing/uffd-guest.js";
import { ApiServer } from "./api-server.js";
import { api } from "./testing/api-client.js";
import { Vm } from "./vm.js";

const dir = mkdtempSync(join(tmpdir(), "flint-api-uffd-"));
after(() => rmSync(dir, { recursive: true, force: true }));

it("PUT /snapshot/load with mem_backend Uffd: refused with one line without a handler, then restores through the handler", async () => {
  const snap = await snapshotCountingGuest(dir, "vm", 1n);
  const console = new PassThrough();
  let text = "";
  console.on("data", (b: Buffer) => (text += b.toString("latin1")));
  const vm = new Vm({ id: "uffd", consoleOutput: console });
  const sock = join(dir, "api.sock");
  const server = await ApiServer.listen(vm, sock);
  try {
    const handlerSock = join(dir, "handler.sock");
    const body = { snapshot_path: snap.statePath, mem_backend: { backend_type: "Uffd", backend_path: handlerSock }, resume_vm: true };
    const refused = await api(sock, "PUT", "/snapshot/load", body);
    assert.equal(refused.status, 400, refused.text);
    assert.equal((refused.json as { fault_message: string }).fault_message,
      `Load snapshot error: Cannot connect to the page-fault handler at '${handlerSock}': no such socket (ENOENT)`);
    assert.equal(((await api(sock, "GET", "/")).json as { state: string }).state, "Not started");

    const handler = await startUffdHandler(handlerSock, snap.memoryPath);
    const loaded = await api(sock, "PUT", "/snapshot/load", body);
    assert.equal(loaded.status, 204, loaded.text);
    assert.equal(((await api(sock, "GET", "/")).json as { state: string }).state, "Running");
    const before = text.length;
    await until("the restored guest's console output", () => text.length > before + 2);
    await vm.kill();
    const stats = await handler.done;
    assert.equal(stats.end, "closed", "the handler ended with the VM");
    assert.ok(stats.pagesCopied > 0, JSON.stringify(stats));
    assert.ok(stats.pagesCopied < (64 << 20) / 4096 / 2, `only the pages the guest touched were served: ${JSON.stringify(stats)}`);
  } finally {
    await vm.kill();
    await server.close();
  }
});
