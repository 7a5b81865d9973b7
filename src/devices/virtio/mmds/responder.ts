/**
 * MMDS's answers to a guest's HTTP requests (Firecracker's MMDS user guide and
 * its mmds module; facts read from its source, behaviour rewritten here):
 *
 * - GET of a path reads the data as a JSON pointer ("//" collapsed, a trailing
 *   '/' ignored): plain text by default (an object's keys one per line, '/'
 *   after an object's key; a string's value; other types 501), JSON with
 *   `Accept: application/json`. With imds_compat the Accept header is ignored:
 *   always plain text, as EC2's IMDS.
 * - PUT /latest/api/token with X-metadata-token-ttl-seconds (or EC2's
 *   X-aws-ec2-metadata-token-ttl-seconds) of 1..21600 issues a session token
 *   (200, text/plain, the header echoed); any other path 404; no lifetime,
 *   an unparsable or out-of-range one, or an X-Forwarded-For header 400.
 *   Tokens are issued under V1 too.
 * - V2: a GET without X-metadata-token (or X-aws-ec2-metadata-token) is 401,
 *   so is one whose token is forged or expired. V1 answers GETs whatever
 *   token they carry (Firecracker only counts missing and invalid ones).
 * - Every other known method is 405 with `Allow: GET, PUT`; a missing path 400;
 *   a path that is not in the data 404.
 * Both header spellings are accepted whether or not imds_compat is set, as
 * Firecracker does; imds_compat changes only the response format.
 */
import { formatImds, type Json, lookup } from "./data.js";
import type { HttpRequest, HttpResponse } from "./http.js";
import { MMDS_TOKEN_TTL_MAX_SECONDS, MMDS_TOKEN_TTL_MIN_SECONDS, type TokenAuthority } from "./token.js";

/** The MMDS version a guest speaks (Firecracker's /mmds/config "version"). */
export type MmdsVersion = "V1" | "V2";

/** The path of the token resource. */
export const MMDS_TOKEN_PATH = "/latest/api/token";
const TOKEN_HEADERS = ["x-metadata-token", "x-aws-ec2-metadata-token"] as const;
const TTL_HEADERS = ["x-metadata-token-ttl-seconds", "x-aws-ec2-metadata-token-ttl-seconds"] as const;

/** What a response depends on besides the request. */
export interface MmdsState {
  data: Json;
  version: MmdsVersion;
  imdsCompat: boolean;
  tokens: TokenAuthority;
}

/** Counters of what guests asked (Firecracker's mmds metrics, the ones that concern HTTP). */
export interface MmdsHttpCounters {
  /** GETs without a token. */
  noToken: number;
  /** GETs with a forged or expired token. */
  invalidToken: number;
  /** Tokens issued. */
  tokensIssued: number;
}

const text = (status: number, body: string, headers?: HttpResponse["headers"]): HttpResponse => ({ status, contentType: "text/plain", body, headers });

/** The first of `names` the request carries, with its value. */
function header(request: HttpRequest, names: readonly string[]): [string, string] | undefined {
  for (const name of names) {
    const value = request.headers.get(name);
    if (value !== undefined) return [name, value];
  }
  return undefined;
}

/**
 * The path of a request target: origin-form as is, absolute-form without scheme and
 * authority; the query is dropped and repeated slashes collapsed. Empty when there is none.
 */
export function targetPath(target: string): string {
  let path = target;
  const absolute = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/]*/.exec(path);
  if (absolute) path = path.slice(absolute[0].length);
  const q = path.search(/[?#]/);
  if (q >= 0) path = path.slice(0, q);
  return path.replace(/\/{2,}/g, "/");
}

/** The response to `request`. */
export function respond(request: HttpRequest, state: MmdsState, counters: MmdsHttpCounters): HttpResponse {
  const path = targetPath(request.target);
  if (path === "" || !path.startsWith("/")) return text(400, "Cannot answer: the request has no path.");
  switch (request.method) {
    case "GET": return get(request, path, state, counters);
    case "PUT": return put(request, path, state, counters);
    default: return text(405, `Cannot answer: MMDS takes GET and PUT, not ${request.method}.`, [["Allow", "GET, PUT"]]);
  }
}

function get(request: HttpRequest, path: string, state: MmdsState, counters: MmdsHttpCounters): HttpResponse {
  const token = header(request, TOKEN_HEADERS);
  if (!token) counters.noToken++;
  else if (!state.tokens.isValid(token[1])) {
    counters.invalidToken++;
    if (state.version === "V2") return text(401, "Cannot read MMDS: the session token is not valid or has expired.");
  }
  if (!token && state.version === "V2") {
    return text(401, "Cannot read MMDS: no session token (send it in X-metadata-token or X-aws-ec2-metadata-token).");
  }
  const value = lookup(state.data, path);
  if (value === undefined) return text(404, `Cannot read MMDS: '${path}' is not in the data.`);
  const json = !state.imdsCompat && /(^|[\s,;])application\/json\b/i.test(request.headers.get("accept") ?? "");
  if (json) return { status: 200, contentType: "application/json", body: JSON.stringify(value) };
  const body = formatImds(value);
  if (body === undefined) return text(501, "Cannot read MMDS as text: only objects and strings have a plain-text form (ask for application/json).");
  return text(200, body);
}

function put(request: HttpRequest, path: string, state: MmdsState, counters: MmdsHttpCounters): HttpResponse {
  // A forwarded request came through a proxy in the guest; tokens are for the guest itself.
  if (request.headers.has("x-forwarded-for")) return text(400, "Cannot issue a token: the request carries X-Forwarded-For.");
  if (path !== MMDS_TOKEN_PATH) return text(404, `Cannot answer: PUT is only for ${MMDS_TOKEN_PATH}, not '${path}'.`);
  const ttl = header(request, TTL_HEADERS);
  if (!ttl) {
    return text(400, "Cannot issue a token: no lifetime (send it in X-metadata-token-ttl-seconds or X-aws-ec2-metadata-token-ttl-seconds).");
  }
  const [name, value] = ttl;
  if (!/^\d{1,10}$/.test(value) || Number(value) > 0xffffffff) return text(400, `Cannot issue a token: ${name} '${value.slice(0, 32)}' is not a whole number of seconds.`);
  const seconds = Number(value);
  if (seconds < MMDS_TOKEN_TTL_MIN_SECONDS || seconds > MMDS_TOKEN_TTL_MAX_SECONDS) {
    return text(400, `Cannot issue a token: a lifetime of ${seconds} s is not from ${MMDS_TOKEN_TTL_MIN_SECONDS} to ${MMDS_TOKEN_TTL_MAX_SECONDS} s.`);
  }
  counters.tokensIssued++;
  return text(200, state.tokens.issue(seconds), [[name === TTL_HEADERS[0] ? "X-metadata-token-ttl-seconds" : "X-aws-ec2-metadata-token-ttl-seconds", String(seconds)]]);
}
