#!/usr/bin/env node
// Bundles each kind of thread flint starts into one ES module file under dist/bundle/
// (run after tsc; `npm run build` does both). A Node worker that imports an unbundled
// module graph resolves, reads and compiles ~100 files before its first line runs; one
// file per thread kind cuts that out of every VM's start-up (README, "Design").
//
// The bundles sit two levels under the package root, like the tsc output they are made
// from (dist/<dir>/x.js), so the paths those modules compute from import.meta.url
// (the addon in build/Release, package.json, guest/kernel configs) and the workers'
// relative URLs (./vcpu-thread.js, ./device-thread-worker.js) stay right.
import { build } from "esbuild";
import { rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
const out = join(dist, "bundle");

/** Bundle file (without .js) → the tsc output it starts from. */
export const BUNDLE_ENTRIES = {
  main: "cli/entry.js", // flint's executable (package.json "bin", ./flint): starts `run`'s threads, then loads cli.js
  cli: "cli/main.js", // the command line
  index: "index.js", // the library (package.json "exports")
  "vcpu-thread": "vm/vcpu-thread.js",
  "device-thread-worker": "devices/virtio/device-thread-worker.js", // with every built-in backend (backends.ts)
};

rmSync(out, { recursive: true, force: true });
await build({
  entryPoints: Object.fromEntries(Object.entries(BUNDLE_ENTRIES).map(([name, from]) => [name, join(dist, from)])),
  outdir: out,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  // The CLI's dependencies are CommonJS: in an ES module they need a real require for Node's built-ins.
  banner: { js: 'import { createRequire as __flintCreateRequire } from "node:module"; const require = __flintCreateRequire(import.meta.url);' },
  // The addon is loaded at run time from build/Release (src/sys/native.ts), never bundled;
  // pino (the log file's writer) is loaded from node_modules only when a VM has a log file,
  // so the CLI's start-up does not parse it otherwise.
  external: ["*.node", "pino"],
  sourcemap: "linked",
  logLevel: "warning",
});
