/**
 * JavaScript shared by the clients that nested end-to-end tests run inside
 * the outer VM (pasted into their script text, which Node runs as a module):
 * `say(key, value)` appends a `flint-e2e:` report line to `report`,
 * `sleep(ms)`, `call(sock, method, path, body)` makes one HTTP request over
 * flint's API socket and resolves with its status and text, and `must(...)`
 * does the same and throws unless the status is the one expected (204 by
 * default). The script must import `request` (node:http) and
 * `appendFileSync` (node:fs) and define `report` before it.
 */
export const API_CLIENT_JS = `const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const call = (sock, method, path, body) => new Promise((resolve, reject) => {
  const text = body === undefined ? undefined : JSON.stringify(body);
  const req = request({ socketPath: sock, method, path, headers: text ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) } : {} }, (res) => {
    let out = ""; res.on("data", (c) => (out += c)); res.on("end", () => resolve({ status: res.statusCode, text: out }));
  });
  req.on("error", reject);
  if (text) req.write(text);
  req.end();
});
const must = async (sock, method, path, body, status = 204) => {
  const r = await call(sock, method, path, body);
  if (r.status !== status) throw new Error(method + " " + path + " answered " + r.status + " " + r.text);
  return r;
};`;
