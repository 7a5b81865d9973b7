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

/**
 * After API_CLIENT_JS, for clients that keep their flint processes in `vms`
 * (by name; each { name, sock, fc, console, stderr }): `socketUp(vm)` waits
 * for its socket to answer, and `endFlints()` kills every one (SIGKILL),
 * writes each console to `<consoles>.<name>` and reports each one's stderr
 * tail. Needs `existsSync` and `writeFileSync` (node:fs), `sleep`, `say` and
 * `consoles` in scope.
 */
export const FLINT_PROCESS_HELPERS_JS = `async function socketUp(vm) {
  for (let i = 0; i < 600 && !existsSync(vm.sock); i++) await sleep(100);
  await must(vm.sock, "GET", "/", undefined, 200);
}
function endFlints() {
  for (const vm of Object.values(vms)) {
    vm.fc.kill("SIGKILL");
    writeFileSync(consoles + "." + vm.name, vm.console);
    say("stderr_" + vm.name, JSON.stringify(vm.stderr.trim().slice(-600)));
  }
}`;

/**
 * After API_CLIENT_JS, for clients that run flint processes with an API
 * socket each: `vms` (by name), `startFlint(name)` spawns `cli --api-sock
 * <work>/<name>.sock --id <idPrefix><name>`, collecting its console and
 * stderr (`exited` resolves once it ended and both were read), and
 * FLINT_PROCESS_HELPERS_JS. Needs `spawn` (node:child_process), what those
 * helpers need, and `cli` and `work` in scope.
 */
export function flintProcessesJs(idPrefix: string): string {
  return `const vms = {};
function startFlint(name) {
  const sock = work + "/" + name + ".sock";
  const fc = spawn(process.execPath, [cli, "--api-sock", sock, "--id", ${JSON.stringify(idPrefix)} + name], { stdio: ["pipe", "pipe", "pipe"] });
  const vm = { name, sock, fc, console: "", stderr: "" };
  fc.stdout.on("data", (b) => { vm.console += b; });
  fc.stderr.on("data", (b) => { vm.stderr += b; });
  // "close": the process ended and its output was all read.
  vm.exited = new Promise((resolve) => fc.on("close", (code, signal) => resolve(code ?? signal)));
  vms[name] = vm;
  return vm;
}
${FLINT_PROCESS_HELPERS_JS}`;
}
