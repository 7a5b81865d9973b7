/**
 * The device's copy of the MMDS data: the size and depth limits, JSON pointer
 * lookups from URI paths, and the IMDS plain-text form.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { formatImds, lookup, MMDS_DATA_MAX_BYTES, MMDS_DATA_MAX_DEPTH, parseMmdsData } from "./data.js";

test("data is parsed with sorted keys; too big, too deep or not JSON is refused", () => {
  assert.deepEqual(Object.keys(parseMmdsData('{"b":1,"a":{"d":1,"c":2}}') as object), ["a", "b"]);
  assert.throws(() => parseMmdsData(JSON.stringify("x".repeat(MMDS_DATA_MAX_BYTES))), { code: "EMMDSDATA" });
  assert.throws(() => parseMmdsData("[".repeat(MMDS_DATA_MAX_DEPTH + 2) + "]".repeat(MMDS_DATA_MAX_DEPTH + 2)), { code: "EMMDSDATA" });
  assert.doesNotThrow(() => parseMmdsData("[".repeat(MMDS_DATA_MAX_DEPTH) + "]".repeat(MMDS_DATA_MAX_DEPTH)));
  assert.throws(() => parseMmdsData("{x"), { code: "EMMDSDATA" });
});

test("paths are JSON pointers: root, nested keys, array indices, escapes, a trailing slash", () => {
  const data = parseMmdsData('{"a":{"b/c":"slash","t~":"tilde","list":["x","y"]},"s":"v"}');
  assert.equal(lookup(data, ""), data);
  assert.equal(lookup(data, "/"), data);
  assert.equal(lookup(data, "/s"), "v");
  assert.equal(lookup(data, "/a/b~1c"), "slash");
  assert.equal(lookup(data, "/a/t~0"), "tilde");
  assert.equal(lookup(data, "/a/list/1"), "y");
  assert.equal(lookup(data, "/a/list/01"), undefined);
  assert.equal(lookup(data, "/a/list/2"), undefined);
  assert.deepEqual(lookup(data, "/a/list/"), ["x", "y"]);
  assert.equal(lookup(data, "/s/x"), undefined);
  assert.equal(lookup(data, "/constructor"), undefined, "no inherited properties");
});

test("the plain-text form: keys (objects marked with '/') or a string; nothing for other types", () => {
  assert.equal(formatImds({ b: "1", a: { x: 1 } }), "b\na/");
  assert.equal(formatImds("text"), "text");
  for (const v of [1, true, null, ["a"]]) assert.equal(formatImds(v), undefined);
});
