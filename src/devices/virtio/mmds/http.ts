/**
 * The HTTP/1.x that MMDS speaks on a guest's TCP connection (RFC 9112): finding
 * one request in the bytes received so far, parsing its request line and
 * header fields, and writing a response. The input is the guest's and is
 * bounded by the caller's receive buffer; nothing here throws for it.
 */

/** A parsed request. Header names are lower-cased; a repeated field keeps its first value. */
export interface HttpRequest {
  method: string;
  /** The request target as sent (origin-form "/a/b" or absolute-form "http://host/a/b"). */
  target: string;
  /** "HTTP/1.0" or "HTTP/1.1". */
  version: string;
  headers: ReadonlyMap<string, string>;
}

/** What findRequest saw at the start of the buffer. */
export type RequestScan =
  | { kind: "incomplete" }
  /** A request, and the bytes it took (head and body). */
  | { kind: "request"; request: HttpRequest; consumed: number }
  /** Bytes that are not a request: answer `status` with `message`, then close. */
  | { kind: "bad"; status: number; message: string; consumed: number };

/** RFC 9110 §9: the methods a server knows; others are 501, as for Firecracker's parser. */
const KNOWN_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]);
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const LF = 0x0a;

/**
 * Index just past the end of the head (an empty line: LF LF or LF CR LF, as RFC 9112
 * §2.2 lets a recipient accept a bare LF), or -1 when it has not all arrived.
 */
function headEnd(bytes: Uint8Array): number {
  for (let i = 0; i + 1 < bytes.length; i++) {
    if (bytes[i] !== LF) continue;
    if (bytes[i + 1] === LF) return i + 2;
    if (bytes[i + 1] === 0x0d && bytes[i + 2] === LF) return i + 3;
  }
  return -1;
}

/**
 * Looks for one complete request at the start of `bytes`. A body (Content-Length) is
 * waited for and skipped: MMDS's requests carry none that matter. Transfer-Encoding
 * is refused (411 would need chunk parsing MMDS has no use for).
 */
export function findRequest(bytes: Uint8Array): RequestScan {
  const end = headEnd(bytes);
  if (end < 0) return { kind: "incomplete" };
  const bad = (status: number, message: string): RequestScan => ({ kind: "bad", status, message, consumed: end });
  const lines = new TextDecoder("latin1").decode(bytes.subarray(0, end)).split("\n").map((l) => l.replace(/\r$/, ""));
  // RFC 9112 §2.2: a server should ignore empty lines before the request line.
  while (lines.length > 0 && lines[0] === "") lines.shift();
  const parts = (lines.shift() ?? "").split(" ");
  if (parts.length !== 3 || !TOKEN.test(parts[0]!) || parts[1] === "") return bad(400, "Cannot answer: the request line is not METHOD TARGET VERSION.");
  const [method, target, version] = parts as [string, string, string];
  if (version !== "HTTP/1.0" && version !== "HTTP/1.1") return bad(501, `Cannot answer: HTTP version '${version.slice(0, 16)}' is not 1.0 or 1.1.`);
  if (!KNOWN_METHODS.has(method)) return bad(501, `Cannot answer: '${method.slice(0, 16)}' is not an HTTP method.`);
  const headers = new Map<string, string>();
  for (const line of lines) {
    if (line === "") continue;
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    if (!TOKEN.test(name)) return bad(400, "Cannot answer: a header line is not NAME: VALUE.");
    const key = name.toLowerCase();
    if (!headers.has(key)) headers.set(key, line.slice(colon + 1).trim());
  }
  if (headers.has("transfer-encoding")) return bad(501, "Cannot answer: Transfer-Encoding is not supported.");
  const length = headers.get("content-length");
  let body = 0;
  if (length !== undefined) {
    if (!/^\d{1,9}$/.test(length)) return bad(400, "Cannot answer: Content-Length is not a number.");
    body = Number(length);
  }
  if (end + body > bytes.length) return { kind: "incomplete" };
  return { kind: "request", request: { method, target, version, headers }, consumed: end + body };
}

/** A response MMDS sends. */
export interface HttpResponse {
  status: number;
  /** Content-Type of the body. */
  contentType: "text/plain" | "application/json";
  body: string;
  /** Further header fields (name, value). */
  headers?: readonly (readonly [string, string])[];
}

const REASONS: Readonly<Record<number, string>> = {
  200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
  413: "Payload Too Large", 501: "Not Implemented",
};

/** The bytes of `response` in HTTP `version`; `close` says the connection ends after it. */
export function writeResponse(response: HttpResponse, version: string, close: boolean): Uint8Array {
  const body = new TextEncoder().encode(response.body);
  let head = `${version} ${response.status} ${REASONS[response.status] ?? "Unknown"}\r\n` +
    `Server: flint MMDS\r\nConnection: ${close ? "close" : "keep-alive"}\r\n` +
    `Content-Type: ${response.contentType}\r\nContent-Length: ${body.length}\r\n`;
  for (const [name, value] of response.headers ?? []) head += `${name}: ${value}\r\n`;
  const headBytes = new TextEncoder().encode(`${head}\r\n`);
  const out = new Uint8Array(headBytes.length + body.length);
  out.set(headBytes);
  out.set(body, headBytes.length);
  return out;
}

/** RFC 9112 §9.3: does the connection close after this request's response? */
export function closesAfter(request: HttpRequest): boolean {
  const connection = (request.headers.get("connection") ?? "").toLowerCase().split(",").map((t) => t.trim());
  if (connection.includes("close")) return true;
  return request.version === "HTTP/1.0" && !connection.includes("keep-alive");
}
