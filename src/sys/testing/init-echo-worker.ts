/**
 * A worker for worker-pool tests: posts back the init it got (workerData or a
 * spare's first message), with any MessagePort in it transferred back too.
 */
import { MessagePort, parentPort } from "node:worker_threads";
import { workerInit } from "../worker-pool.js";

const init = await workerInit<Record<string, unknown>>();
const ports = Object.values(init).filter((v): v is MessagePort => v instanceof MessagePort);
parentPort!.postMessage({ init }, ports);
