#!/usr/bin/env node
/**
 * flint's executable (dist/bundle/main.js): starts the worker threads
 * `flint run` or the API will need first (early-threads.ts), then loads the command line (main.ts, bundled as
 * dist/bundle/cli.js). Loading the command line's bundle (reading and
 * compiling it and its dependencies) takes tens of milliseconds on the main
 * thread, and a worker isolate about as long to boot on another core; started
 * here, the threads boot while the rest loads, and the CLI's Machine.prestart
 * adopts them (worker-pool.ts, startEarlyWorkers). This file stays small: it
 * is all that runs before they start.
 */
import { basename } from "node:path";
import { startEarlyWorkers } from "../sys/worker-pool.js";
import { earlyThreadsFor } from "./early-threads.js";

// Both from dist/cli/ (tsc's output) and from dist/bundle/ (this file bundled), these name the bundles.
const bundle = (name: string) => new URL(`../bundle/${name}`, import.meta.url);
const early = earlyThreadsFor(process.argv.slice(2), basename(process.argv[1] ?? "flint"));
startEarlyWorkers(bundle("vcpu-thread.js"), early.vcpuThreads);
startEarlyWorkers(bundle("device-thread-worker.js"), early.deviceThreads);
await import(bundle("cli.js").href);
