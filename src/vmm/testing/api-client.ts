/**
 * A minimal client for Firecracker's API on a Unix socket, as its clients
 * use it (one JSON request, one response), for tests.
 */
import { request } from "node:http";
import { createConnection } from "node:net";

/** One response: status, parsed JSON body (undefined when empty), raw text and headers. */
export interface ApiResponse {
  status: number;
  json: unknown;
  text: string;
  headers: Record<string, string | string[] | undefined>;
}

/** Sends one request; `body` is sent as given when a string, as JSON otherwise. */
export function api(socketPath: string, method: string, path: string, body?: unknown): Promise<ApiResponse> {
  const text = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request({
      socketPath, method, path, agent: false,
      headers: { "Accept": "application/json", ...(text !== undefined ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) } : {}) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const t = Buffer.concat(chunks).toString("utf8");
        let json: unknown;
        try { json = t ? JSON.parse(t) : undefined; } catch { json = undefined; }
        resolve({ status: res.statusCode ?? 0, json, text: t, headers: res.headers });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    if (text !== undefined) req.write(text);
    req.end();
  });
}

/** Writes raw bytes to the socket and collects what comes back until the server closes or `waitMs` passes. */
export function rawExchange(socketPath: string, bytes: string | Buffer, waitMs = 500): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = createConnection(socketPath);
    let out = "";
    const done = () => { clearTimeout(timer); s.destroy(); resolve(out); };
    const timer = setTimeout(done, waitMs);
    s.on("data", (d: Buffer) => { out += d.toString("latin1"); });
    s.on("end", done);
    s.on("error", (e) => { clearTimeout(timer); reject(e); });
    s.write(bytes);
  });
}
