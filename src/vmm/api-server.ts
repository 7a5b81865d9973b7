/**
 * Firecracker's REST API over a Unix socket (its swagger file,
 * src/firecracker/swagger/firecracker.yaml, and its request parsers in
 * src/firecracker/src/api_server/): HTTP/1.1, JSON bodies validated by the
 * schemas in src/config/schema.ts (unknown fields refused), 204 for a
 * change, 200 with JSON for a read, 400 with {"fault_message": ...} for
 * anything refused (413 when the MMDS store would pass its limit). Each
 * operation is a thin call into the Vm (vm.ts); requests are served one at a
 * time, in the order they arrived, as Firecracker does.
 *
 * Node's own HTTP server parses the protocol (keep-alive, pipelining, header
 * limits, timeouts for stalled clients): it is the well-kept server made for
 * this, adds nothing to start-up, and flint only routes.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { renameSync, rmSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type * as z from "zod/mini";
import {
  ActionSchema, BalloonHintingStartSchema, BalloonSchema, BalloonStatsUpdateSchema, BalloonUpdateSchema, BootSourceSchema, ConfigError,
  DriveSchema, EntropySchema, LoggerSchema, MachineConfigSchema, MachineConfigUpdateSchema, MemoryHotplugSchema,
  MemoryHotplugSizeUpdateSchema, MetricsSchema, MmdsConfigSchema, NetworkInterfaceSchema, PartialDriveSchema,
  PartialNetworkInterfaceSchema, PmemSchema, SerialSchema, SnapshotCreateSchema, SnapshotLoadSchema, validate, VmStateSchema, VsockSchema,
} from "../config/schema.js";
import { LoggerError } from "./logger.js";
import { MetricsError } from "./metrics.js";
import { MAX_UDS_PATH_BYTES } from "./host-checks.js";
import { MmdsError } from "./mmds-store.js";
import { VmError, type Vm } from "./vm.js";

/** Firecracker's default limit on a request body (vmm/src/lib.rs HTTP_MAX_PAYLOAD_SIZE). */
export const HTTP_MAX_PAYLOAD_SIZE = 51200;

/** Options of an API server. */
export interface ApiServerOptions {
  /** Largest request body accepted (Firecracker's --http-api-max-payload-size). */
  maxPayloadBytes?: number;
  /** Called with one line per request refused or failed (Firecracker logs them). */
  onError?: (line: string) => void;
}

/** A response: status and an optional JSON body. */
interface Reply {
  status: 200 | 204 | 400 | 413;
  body?: unknown;
  /** Firecracker sets a Deprecation header when a request used a deprecated field. */
  deprecated?: boolean;
}

/** A refusal with Firecracker's 400 (or 413). */
class ApiFault extends Error {
  constructor(message: string, readonly status: 400 | 413 = 400) {
    super(message);
  }
}

const ok = (body?: unknown): Reply => (body === undefined ? { status: 204 } : { status: 200, body });

/** Firecracker's checked_id: not empty; letters, digits and '_' only. */
function checkId(id: string | undefined): string {
  if (!id) throw new ApiFault("The ID cannot be empty.");
  if (!/^[\p{L}\p{N}_]+$/u.test(id)) throw new ApiFault("API Resource IDs can only contain alphanumeric characters and underscores.");
  return id;
}

function body<S extends z.ZodMiniType>(schema: S, value: unknown, what: string): z.infer<S> {
  return validate(schema, value, what);
}

/** What flint does not have, refused precisely (README lists these). */
function notSupported(what: string): never {
  throw new ApiFault(`The requested operation is not supported: ${what}`);
}

/**
 * The router: (method, path tokens, parsed body or undefined) to a Vm call.
 * Mirrors Firecracker's parsed_request.rs: a GET with a body, or a
 * PUT/PATCH without one, is refused before the path is looked at.
 */
async function route(vm: Vm, method: string, path: string, json: unknown, hasBody: boolean): Promise<Reply> {
  const tokens = path.replace(/^\/+/, "").split("/");
  if (tokens.length > 0 && tokens[tokens.length - 1] === "") tokens.pop();
  const [head = "", second, third] = tokens;
  if (method === "GET" && hasBody) throw new ApiFault("GET request cannot have a body.");
  const unknown = () => new ApiFault(`Invalid request method and/or path: ${method} ${head}.`);
  switch (method) {
    case "GET":
      switch (head) {
        case "": return ok(vm.info());
        case "version": return ok({ firecracker_version: vm.version });
        case "machine-config": return ok(vm.config()["machine-config"]);
        case "mmds": return ok(vm.mmds.get());
        case "vm": if (second === "config") return ok(vm.config()); break;
        case "balloon":
          if (second === undefined) return ok(await vm.balloon());
          if (second === "statistics") return ok(await vm.balloonStatistics());
          if (second === "hinting") notSupported("flint's balloon has no free page hinting");
          throw new ApiFault(`Unrecognized GET request path \`${second}\`.`);
        case "hotplug": if (second === "memory") notSupported("flint has no virtio-mem device (memory hot-plug)"); break;
      }
      throw unknown();
    case "PUT": {
      if (!hasBody) {
        if (["actions", "balloon", "boot-source", "cpu-config", "drives", "pmem", "logger", "serial", "machine-config", "metrics", "mmds",
          "network-interfaces", "snapshot", "vsock", "entropy", "hotplug"].includes(head)) throw new ApiFault("Empty PUT request.");
        throw unknown();
      }
      switch (head) {
        case "actions": {
          const a = body(ActionSchema, json, "actions request");
          if (a.action_type === "InstanceStart") { await vm.start(); return ok(); }
          if (a.action_type === "SendCtrlAltDel") { await vm.sendCtrlAltDel(); return ok(); }
          vm.flushMetrics();
          return ok();
        }
        case "boot-source": vm.requireNotStarted(); vm.resources.putBootSource(body(BootSourceSchema, json, "boot-source request")); return ok();
        case "machine-config": vm.requireNotStarted(); vm.resources.putMachineConfig(body(MachineConfigSchema, json, "machine-config request")); return ok();
        case "drives": {
          const id = checkId(second);
          const d = body(DriveSchema, json, "drive request");
          if (d.drive_id !== id) throw new ApiFault("The id from the path does not match the id from the body!");
          vm.requireNotStarted();
          vm.resources.putDrive(d);
          return ok();
        }
        case "network-interfaces": {
          const id = checkId(second);
          const n = body(NetworkInterfaceSchema, json, "network-interface request");
          if (n.iface_id !== id) throw new ApiFault(`The id from the path [${id}] does not match the id from the body [${n.iface_id}]!`);
          vm.requireNotStarted();
          vm.resources.putNetworkInterface(n);
          return ok();
        }
        case "vsock": {
          const v = body(VsockSchema, json, "vsock request");
          vm.requireNotStarted();
          vm.resources.putVsock(v);
          return { status: 204, deprecated: v.vsock_id != null };
        }
        case "balloon": vm.requireNotStarted(); vm.resources.putBalloon(body(BalloonSchema, json, "balloon request")); return ok();
        case "entropy": vm.requireNotStarted(); vm.resources.putEntropy(body(EntropySchema, json, "entropy request")); return ok();
        case "mmds":
          if (second === "config") {
            const c = body(MmdsConfigSchema, json, "mmds-config request");
            vm.requireNotStarted();
            vm.resources.putMmdsConfig(c);
            return ok();
          }
          if (second !== undefined) throw unknown();
          await vm.putMmds(json);
          return ok();
        case "logger": await vm.setLogger(body(LoggerSchema, json, "logger request")); return ok();
        case "metrics": vm.setMetrics(body(MetricsSchema, json, "metrics request")); return ok();
        case "serial": { const c = body(SerialSchema, json, "serial request"); vm.requireNotStarted(); vm.resources.putSerial(c); return ok(); }
        case "cpu-config": vm.requireNotStarted(); notSupported("custom CPU templates");
        case "pmem": checkId(second); body(PmemSchema, json, "pmem request"); notSupported("flint has no virtio-pmem device");
        case "hotplug":
          if (second === "memory") { body(MemoryHotplugSchema, json, "memory hot-plug request"); notSupported("flint has no virtio-mem device (memory hot-plug)"); }
          throw unknown();
        case "snapshot":
          if (second === "create") { await vm.createSnapshot(body(SnapshotCreateSchema, json, "snapshot create request")); return ok(); }
          if (second === "load") {
            const l = body(SnapshotLoadSchema, json, "snapshot load request");
            if (l.mem_backend != null && l.mem_file_path != null) throw new ApiFault("An error occurred when deserializing the json body of a request: too many fields: either `mem_backend` or `mem_file_path` exclusively is required.");
            if (l.mem_backend == null && l.mem_file_path == null) throw new ApiFault("An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required.");
            await vm.loadSnapshot(l);
            return ok();
          }
          if (second === undefined) throw new ApiFault("Missing snapshot operation type.");
          throw new ApiFault(`Invalid request method and/or path: PUT /snapshot/${second}.`);
      }
      throw unknown();
    }
    case "PATCH": {
      if (head === "balloon" && second === "hinting") {
        if (third === "start") { if (hasBody) body(BalloonHintingStartSchema, json, "hinting request"); notSupported("flint's balloon has no free page hinting"); }
        if (third === "stop") notSupported("flint's balloon has no free page hinting");
        throw new ApiFault(`Unrecognized PATCH request path \`/hinting/${third ?? ""}\`.`);
      }
      if (!hasBody) {
        if (["balloon", "drives", "machine-config", "mmds", "network-interfaces", "pmem", "vm", "hotplug"].includes(head)) throw new ApiFault("Empty PATCH request.");
        throw unknown();
      }
      switch (head) {
        case "vm": {
          const s = body(VmStateSchema, json, "vm request");
          if (s.state === "Paused") await vm.pause();
          else await vm.resume();
          return ok();
        }
        case "machine-config": {
          const m = body(MachineConfigUpdateSchema, json, "machine-config request");
          if (Object.keys(m).length === 0) throw new ApiFault("Empty PATCH request.");
          vm.requireNotStarted();
          vm.resources.patchMachineConfig(m);
          return ok();
        }
        case "balloon":
          if (second === "statistics") { vm.setBalloonStatsInterval(body(BalloonStatsUpdateSchema, json, "balloon statistics request").stats_polling_interval_s); return ok(); }
          await vm.setBalloonTarget(body(BalloonUpdateSchema, json, "balloon request").amount_mib);
          return ok();
        case "mmds": await vm.patchMmds(json); return ok();
        case "drives": {
          const id = checkId(second);
          const d = body(PartialDriveSchema, json, "drive request");
          if (d.drive_id !== id) throw new ApiFault("The id from the path does not match the id from the body!");
          await vm.updateDrive(d);
          return ok();
        }
        case "network-interfaces": {
          const id = checkId(second);
          const n = body(PartialNetworkInterfaceSchema, json, "network-interface request");
          if (n.iface_id !== id) throw new ApiFault(`The id from the path [${id}] does not match the id from the body [${n.iface_id}]!`);
          await vm.updateNetworkInterface(n);
          return ok();
        }
        case "pmem": checkId(second); notSupported("flint has no virtio-pmem device");
        case "hotplug":
          if (second === "memory") { body(MemoryHotplugSizeUpdateSchema, json, "memory hot-plug request"); notSupported("flint has no virtio-mem device (memory hot-plug)"); }
          throw unknown();
      }
      throw unknown();
    }
    case "DELETE":
      if (hasBody) throw new ApiFault("Empty Delete request.");
      if (head === "drives" || head === "network-interfaces" || head === "pmem") {
        checkId(second);
        notSupported("removing a device (flint has no PCI hot-plug)");
      }
      throw unknown();
  }
  throw unknown();
}

const KNOWN_RESOURCES = new Set(["actions", "balloon", "boot-source", "cpu-config", "pmem", "logger", "metrics", "mmds", "entropy", "serial", "hotplug", "vsock"]);

/** The resource's name in Firecracker's API request metrics (its metrics.rs field names, without _count). */
function metricName(head: string, path: string): string {
  switch (head) {
    case "": return "instance_info";
    case "machine-config": return "machine_cfg";
    case "drives": return "drive";
    case "network-interfaces": return "network";
    case "version": return "vmm_version";
    case "snapshot": return path.includes("load") ? "load_snapshot" : "create_snapshot";
    case "vm": return path.includes("config") ? "vm_config" : "vm";
    // A fixed set of names: a client cannot grow the metrics with made-up paths.
    default: return KNOWN_RESOURCES.has(head) ? head.replace(/-/g, "_") : "other";
  }
}

/** An error as Firecracker's reply: refusals and flint's typed errors are 400 (413 for the MMDS limit). */
function faultReply(e: unknown): Reply {
  if (e instanceof ApiFault) return { status: e.status, body: { fault_message: e.message } };
  if (e instanceof MmdsError) return { status: e.code === "EMMDSLIMIT" ? 413 : 400, body: { fault_message: e.message } };
  const message = e instanceof Error ? e.message.split("\n")[0]! : String(e);
  return { status: 400, body: { fault_message: message } };
}

/** The API of one Vm on a Unix socket. */
export class ApiServer {
  private readonly server: Server;
  private readonly maxPayload: number;

  private constructor(private readonly vm: Vm, private readonly options: ApiServerOptions) {
    this.maxPayload = options.maxPayloadBytes ?? HTTP_MAX_PAYLOAD_SIZE;
    this.server = createServer({ keepAlive: true, requestTimeout: 60_000, headersTimeout: 30_000, maxHeaderSize: 16 * 1024 }, (req, res) => this.serve(req, res));
    // A client that sends garbage gets 400 from Node's parser and its socket closed; nothing else changes.
    this.server.on("clientError", (_e, socket) => {
      if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      else socket.destroy();
    });
  }

  /**
   * Listens on `socketPath` (a stale socket file is replaced); resolves once
   * it does. The file appears only once flint listens: the socket is bound
   * under a temporary name beside it and renamed into place, so a client that
   * waits for the file and connects at once is never refused (bind and listen
   * are two calls, and a client could land between them).
   */
  static async listen(vm: Vm, socketPath: string, options: ApiServerOptions = {}): Promise<ApiServer> {
    const api = new ApiServer(vm, options);
    rmSync(socketPath, { force: true });
    const temporary = join(dirname(socketPath), `.${basename(socketPath)}.${process.pid}`);
    // A temporary name longer than a socket address holds: bind the path itself (the gap is back, nothing else changes).
    const bindPath = Buffer.byteLength(temporary) <= MAX_UDS_PATH_BYTES ? temporary : socketPath;
    rmSync(bindPath, { force: true });
    await new Promise<void>((resolve, reject) => {
      api.server.once("error", reject);
      api.server.listen(bindPath, () => {
        api.server.off("error", reject);
        resolve();
      });
    });
    if (bindPath !== socketPath) {
      try {
        renameSync(bindPath, socketPath);
      } catch (e) {
        await new Promise<void>((resolve) => api.server.close(() => resolve()));
        rmSync(bindPath, { force: true });
        throw e;
      }
    }
    api.socketPath = socketPath;
    return api;
  }

  private socketPath = "";


  /** Stops listening and closes every connection; removes the socket file. */
  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.socketPath, { force: true });
  }

  private serve(req: IncomingMessage, res: ServerResponse): void {
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > this.maxPayload) {
      this.reply(res, req, { status: 400, body: { fault_message: `Request payload with size ${declared} is larger than the limit of ${this.maxPayload} allowed by server.` } }, true);
      req.resume();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on("data", (chunk: Buffer) => {
      if (refused) return;
      size += chunk.length;
      if (size > this.maxPayload) {
        refused = true;
        this.reply(res, req, { status: 400, body: { fault_message: `Request payload with size ${size} is larger than the limit of ${this.maxPayload} allowed by server.` } }, true);
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      if (refused) return;
      const text = Buffer.concat(chunks).toString("utf8");
      const url = req.url ?? "/";
      const path = url.split("?")[0]!;
      const method = req.method ?? "GET";
      const head = path.replace(/^\/+/, "").split("/")[0] ?? "";
      void this.vm.serialize(async () => {
        // Firecracker logs every request, with its body unless it is MMDS data (which may be secret).
        this.vm.log("info", "api_server", `The API server received a ${method} request on ${JSON.stringify(path)}${text && head !== "mmds" ? ` with body ${JSON.stringify(text)}` : ""}.`);
        const hasBody = text.length > 0;
        let json: unknown;
        if (hasBody) {
          try {
            json = JSON.parse(text);
          } catch (e) {
            return faultReply(new ApiFault(`An error occurred when deserializing the json body of a request: ${(e as Error).message}.`));
          }
        }
        try {
          return await route(this.vm, method, path, json, hasBody);
        } catch (e) {
          if (!(e instanceof ApiFault || e instanceof ConfigError || e instanceof VmError || e instanceof MmdsError || e instanceof LoggerError || e instanceof MetricsError)) {
            this.options.onError?.(`API ${method} ${path}: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
          }
          return faultReply(e);
        }
      }).then((r) => {
        if (method === "GET" || method === "PUT" || method === "PATCH") this.vm.metrics.apiRequest(method, metricName(head, path), r.status >= 400);
        if (r.status >= 400) this.vm.log("error", "api_server", `Received Error. Status code: ${r.status}. Message: ${(r.body as { fault_message?: string })?.fault_message ?? ""}`);
        else this.vm.log("info", "api_server", `The request was executed successfully. Status code: ${r.status}.`);
        this.reply(res, req, r);
        // A pre-boot change: boot the threads the VM will need while the client goes on configuring it.
        if ((method === "PUT" || method === "PATCH") && r.status < 400 && this.vm.state === "Not started") this.vm.warmUp();
      });
    });
  }

  private reply(res: ServerResponse, req: IncomingMessage, r: Reply, close = false): void {
    if (res.headersSent || res.destroyed) return;
    if (r.status >= 400) this.options.onError?.(`API ${req.method} ${req.url}: ${r.status} ${(r.body as { fault_message?: string })?.fault_message ?? ""}`);
    const headers: Record<string, string | number> = { "Server": "Firecracker API" };
    if (r.deprecated) headers["Deprecation"] = "true";
    if (close) headers["Connection"] = "close";
    if (r.body === undefined) {
      res.writeHead(r.status, headers).end();
      return;
    }
    const text = JSON.stringify(r.body);
    res.writeHead(r.status, { ...headers, "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) }).end(text);
  }
}
