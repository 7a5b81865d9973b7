/**
 * flint's version, from its package.json. This module sits two directory
 * levels under the package root (dist/sys/version.js; the bundles, which
 * inline it, sit at the same depth: scripts/bundle.mjs), so the relative
 * path is right from both.
 */
import { readFileSync } from "node:fs";

export const FLINT_VERSION: string = (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version;
