/**
 * The host side of MMDS's data: what can be sent (JSON within the device's
 * limit) and that every given device receives the same text.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { VirtioDeviceHandle } from "../device-thread.js";
import { MMDS_REQUEST_SET_DATA, mmdsDataText, setMmdsData } from "./control.js";
import { MMDS_DATA_MAX_BYTES } from "./data.js";

test("data that is not JSON or passes the device's limit is refused before anything is sent", async () => {
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  for (const bad of [cyclic, 1n, undefined, () => 1, { big: "x".repeat(MMDS_DATA_MAX_BYTES) }]) {
    assert.throws(() => mmdsDataText(bad), { code: "EMMDSDATA" });
  }
  const sent: unknown[] = [];
  const device = { request: async (op: string, args: unknown) => { sent.push([op, args]); return {}; } } as unknown as VirtioDeviceHandle;
  await assert.rejects(setMmdsData([device], { big: "x".repeat(MMDS_DATA_MAX_BYTES) }), { code: "EMMDSDATA" });
  assert.deepEqual(sent, []);
});

test("every device receives the same JSON text", async () => {
  const sent: unknown[] = [];
  const device = { request: async (op: string, args: unknown) => { sent.push([op, args]); return {}; } } as unknown as VirtioDeviceHandle;
  await setMmdsData([device, device], { a: { b: "c" } });
  assert.deepEqual(sent, [[MMDS_REQUEST_SET_DATA, { json: '{"a":{"b":"c"}}' }], [MMDS_REQUEST_SET_DATA, { json: '{"a":{"b":"c"}}' }]]);
  await setMmdsData([], {});
});
