/**
 * MMDS's HTTP/1.x: finding a request in received bytes (bare LF or CRLF,
 * split arrivals, bodies skipped), refusing what is not a request with the
 * right status, and the bytes of a response.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { closesAfter, findRequest, writeResponse } from "./http.js";

const bytes = (s: string) => new TextEncoder().encode(s);

test("a request is found once its head is complete, with CRLF or bare LF, and its header names lower-cased", () => {
  const text = "GET /latest/meta-data HTTP/1.1\r\nHost: x\r\nX-Metadata-Token: abc\r\n\r\nGET /next";
  for (let cut = 0; cut < text.indexOf("\r\n\r\n") + 3; cut++) assert.equal(findRequest(bytes(text.slice(0, cut))).kind, "incomplete", `cut at ${cut}`);
  const r = findRequest(bytes(text));
  assert.ok(r.kind === "request");
  assert.equal(r.request.method, "GET");
  assert.equal(r.request.target, "/latest/meta-data");
  assert.equal(r.request.headers.get("x-metadata-token"), "abc");
  assert.equal(r.consumed, text.indexOf("GET /next"));
  const lf = findRequest(bytes("GET / HTTP/1.0\nAccept: application/json\n\n"));
  assert.ok(lf.kind === "request" && lf.request.headers.get("accept") === "application/json");
});

test("a body named by Content-Length is waited for and skipped", () => {
  const head = "PUT /latest/api/token HTTP/1.1\r\nContent-Length: 4\r\n\r\n";
  assert.equal(findRequest(bytes(`${head}ab`)).kind, "incomplete");
  const r = findRequest(bytes(`${head}abcdGET`));
  assert.ok(r.kind === "request" && r.consumed === head.length + 4);
});

test("what is not a request is answered 400 or 501 and consumed", () => {
  const status = (s: string) => { const r = findRequest(bytes(s)); return r.kind === "bad" ? r.status : r.kind; };
  assert.equal(status("GET\r\n\r\n"), 400);
  assert.equal(status("GET  / HTTP/1.1\r\n\r\n"), 400);
  assert.equal(status("GET / HTTP/2.0\r\n\r\n"), 501);
  assert.equal(status("FETCH / HTTP/1.1\r\n\r\n"), 501);
  assert.equal(status("GET / HTTP/1.1\r\nno colon here\r\n\r\n"), 400);
  assert.equal(status("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
  assert.equal(status("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 501);
});

test("responses carry status, type, length and extra headers; Connection says whether it closes", () => {
  const text = new TextDecoder().decode(writeResponse({ status: 200, contentType: "text/plain", body: "tök", headers: [["X-metadata-token-ttl-seconds", "5"]] }, "HTTP/1.1", true));
  assert.match(text, /^HTTP\/1\.1 200 OK\r\n/);
  assert.match(text, /\r\nContent-Length: 4\r\n/);
  assert.match(text, /\r\nConnection: close\r\n/);
  assert.match(text, /\r\nX-metadata-token-ttl-seconds: 5\r\n\r\ntök$/);
  const req = (s: string) => { const r = findRequest(bytes(s)); assert.ok(r.kind === "request"); return r.request; };
  assert.equal(closesAfter(req("GET / HTTP/1.1\r\n\r\n")), false);
  assert.equal(closesAfter(req("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")), true);
  assert.equal(closesAfter(req("GET / HTTP/1.0\r\n\r\n")), true);
  assert.equal(closesAfter(req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")), false);
});

test("property: any bytes give a defined answer that consumes no more than it was given", () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.string({ maxLength: 200 }), (raw, s) => {
    for (const b of [raw, bytes(s), bytes(`${s}\r\n\r\n`)]) {
      const r = findRequest(b);
      if (r.kind !== "incomplete") assert.ok(r.consumed > 0 && r.consumed <= b.length);
    }
  }), { numRuns: 2000 });
});
