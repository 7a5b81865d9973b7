import assert from "node:assert/strict";
import { test } from "node:test";
import { GuestMemory } from "../../memory/guest-memory.js";
import { CMDLINE_START, GiB, MiB, PML4_START } from "./layout.js";
import { PAGE_TABLES_END, writeIdentityPageTables } from "./paging.js";
import { translate } from "./testing/page-walk.js";

test("the boot page tables identity-map the first 4 GiB", () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 * MiB }]);
  try {
    const { cr3 } = writeIdentityPageTables(mem);
    assert.equal(cr3, BigInt(PML4_START));
    for (const a of [0n, 0x7000n, 0x1000000n, 0x12345678n, BigInt(3 * GiB + 5), BigInt(4 * GiB - 1)]) {
      assert.equal(translate(mem, cr3, a), a, `0x${a.toString(16)}`);
    }
    assert.equal(translate(mem, cr3, BigInt(4 * GiB)), undefined);
  } finally {
    mem.dispose();
  }
});

test("the page tables end below the command line", () => {
  assert.ok(PAGE_TABLES_END <= CMDLINE_START);
});
