import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cachedArtifact, gcc, packagePath } from "./build-cache.js";
import { GuestProgramError } from "./program-error.js";

const isBuildError = (e: unknown): boolean => e instanceof GuestProgramError && e.code === "EPROGBUILD";

describe("packagePath", () => {
  it("resolves the guest program sources from the package root", () => {
    assert.ok(existsSync(packagePath("guest/ring3/exit-loop.S")), packagePath("guest/ring3/exit-loop.S"));
    assert.ok(existsSync(packagePath("ceiling/kvm-exit-ceiling.c")));
  });
});

describe("cachedArtifact", () => {
  const saved = process.env.FLINT_CACHE_DIR;
  const dir = mkdtempSync(join(tmpdir(), "flint-build-cache-"));
  before(() => { process.env.FLINT_CACHE_DIR = dir; });
  after(() => {
    if (saved === undefined) delete process.env.FLINT_CACHE_DIR;
    else process.env.FLINT_CACHE_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  });

  it("builds once, then returns the cached file without building again", () => {
    let builds = 0;
    const recipe = { name: "once", keyParts: ["a"], fileName: "out", build(d: string) { builds++; writeFileSync(join(d, "out"), "x"); } };
    const first = cachedArtifact(recipe);
    assert.equal(cachedArtifact(recipe), first);
    assert.equal(builds, 1);
  });

  it("throws EPROGBUILD when the build makes no file, and leaves no entry behind", () => {
    assert.throws(() => cachedArtifact({ name: "empty", keyParts: ["b"], fileName: "out", build() {} }), isBuildError);
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith("empty")), []);
  });
});

describe("gcc", () => {
  it("throws EPROGBUILD with the compiler's message when the build fails", () => {
    const src = join(mkdtempSync(join(tmpdir(), "flint-gcc-")), "bad.c");
    writeFileSync(src, "this is not C;\n");
    try {
      assert.throws(() => gcc(["-c", src, "-o", `${src}.o`], "a broken program"),
        (e: unknown) => isBuildError(e) && /^Cannot build a broken program: /.test((e as Error).message) && /error/.test((e as Error).message));
    } finally {
      rmSync(join(src, ".."), { recursive: true, force: true });
    }
  });
});
