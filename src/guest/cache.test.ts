import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CacheError, cachedDirectory, cacheDir, cacheKey, cachePath } from "./cache.js";

describe("the artifact cache", () => {
  let root = "";
  let saved: string | undefined;
  before(() => {
    saved = process.env.FLINT_CACHE_DIR;
    root = mkdtempSync(join(tmpdir(), "flint-cache-test-"));
    process.env.FLINT_CACHE_DIR = root;
  });
  after(() => {
    if (saved === undefined) delete process.env.FLINT_CACHE_DIR;
    else process.env.FLINT_CACHE_DIR = saved;
    rmSync(root, { recursive: true, force: true });
  });

  it("lives in FLINT_CACHE_DIR", () => {
    assert.equal(cacheDir(), root);
    assert.equal(cachePath("x"), join(root, "x"));
  });

  it("keys depend on every part and on where parts split", () => {
    assert.match(cacheKey(["a"]), /^[0-9a-f]{16}$/);
    assert.equal(cacheKey(["a", "b"]), cacheKey(["a", "b"]));
    assert.notEqual(cacheKey(["ab", "c"]), cacheKey(["a", "bc"]));
    assert.equal(cacheKey([Buffer.from("x")]), cacheKey(["x"]));
  });

  it("fills an entry once and serves it afterwards", async () => {
    let fills = 0;
    const fill = async (tmp: string) => {
      fills += 1;
      writeFileSync(join(tmp, "artifact"), "built");
    };
    const first = await cachedDirectory("once", fill);
    const second = await cachedDirectory("once", fill);
    assert.equal(first, second);
    assert.equal(fills, 1);
    assert.equal(readFileSync(join(first, "artifact"), "utf8"), "built");
  });

  it("leaves nothing that looks cached when a fill fails", async () => {
    await assert.rejects(
      cachedDirectory("broken", async (tmp) => {
        writeFileSync(join(tmp, "half"), "");
        throw new Error("interrupted");
      }),
      /interrupted/,
    );
    assert.equal(existsSync(cachePath("broken")), false);
    assert.deepEqual(readdirSync(root).filter((name) => name.startsWith("broken")), []);
  });

  it("lets concurrent callers share one fill", async () => {
    let fills = 0;
    let waits = 0;
    const fill = async (tmp: string) => {
      fills += 1;
      await new Promise((resolve) => setTimeout(resolve, 200));
      writeFileSync(join(tmp, "artifact"), "x");
    };
    const results = await Promise.all([
      cachedDirectory("shared", fill, () => (waits += 1)),
      cachedDirectory("shared", fill, () => (waits += 1)),
    ]);
    assert.equal(results[0], results[1]);
    assert.equal(fills, 1);
    assert.equal(waits, 1);
  });

  it("breaks a lock left behind by a process that died", async () => {
    const dead = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
    const lock = `${cachePath("stale")}.lock`;
    mkdirSync(lock);
    writeFileSync(join(lock, "pid"), dead.stdout);
    const dir = await cachedDirectory("stale", async (tmp) => writeFileSync(join(tmp, "ok"), ""));
    assert.ok(existsSync(join(dir, "ok")));
    assert.equal(existsSync(lock), false);
  });

  it("refuses entry names that are not single visible path components", () => {
    for (const name of ["", "a/b", ".hidden"]) {
      assert.throws(() => cachePath(name), (error: unknown) => error instanceof CacheError && error.code === "ECACHENAME");
    }
  });
});
