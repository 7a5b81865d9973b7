/**
 * MMDS V2 tokens: valid until their lifetime ends, unforgeable, bound to the
 * authority (device) that issued them.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { TokenAuthority } from "./token.js";

test("a token is valid until its lifetime ends, and only for the authority that issued it", () => {
  let now = 5000;
  const a = new TokenAuthority(() => now), b = new TokenAuthority(() => now);
  const t = a.issue(10);
  assert.equal(a.isValid(t), true);
  assert.equal(b.isValid(t), false, "another device's key");
  now += 9999;
  assert.equal(a.isValid(t), true);
  now += 2;
  assert.equal(a.isValid(t), false, "expired");
});

test("changed, truncated, padded or odd tokens are invalid", () => {
  const a = new TokenAuthority(() => 0);
  const t = a.issue(60);
  const flip = (i: number) => t.slice(0, i) + (t[i] === "A" ? "B" : "A") + t.slice(i + 1);
  for (let i = 0; i < t.length; i++) assert.equal(a.isValid(flip(i)), false, `character ${i} changed`);
  for (const bad of [t.slice(1), `${t}A`, "", "x".repeat(10_000), `${t.slice(0, -1)}=`, t.replace(/./, "+")]) assert.equal(a.isValid(bad), false);
});
