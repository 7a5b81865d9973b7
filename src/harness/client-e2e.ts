/**
 * The shape shared by nested end-to-end tests whose work is done by a Node
 * client inside the outer VM that drives flint processes over their API
 * sockets (see api-client-script.ts): a guest program compiled here and put
 * in an initramfs, the client written to the share, one nested run (retried
 * as runNested does, the client's report and consoles removed first), then
 * the report and each flint's console read back.
 */
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildInitramfs } from "../guest/initramfs.js";
import { readTextIfAny } from "./e2e-report.js";
import { compileGuestProgram } from "./guest-program.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "./nested.js";

export interface ClientE2eOptions {
  /** The host directory shared with the outer VM (the report, consoles and files go here). */
  share: string;
  /** flint's CLI entry (dist/bundle/main.js). */
  cli: string;
  /** The guest kernel (vmlinux). */
  kernel: string;
  /** The guest's /init. */
  init: string;
  /** A C program compiled statically into the guest as /bin/<name>. */
  program: { name: string; source: string };
  /** The client's module text; it is run as `node client cli kernel initrd workDir report consolesBase`. */
  client: string;
  /** The client's working directory inside the outer VM (on its tmpfs: sockets and mapped memory files). */
  workDir: string;
  /** The flint processes the client writes a console for (`<consolesBase>.<name>`). */
  names: readonly string[];
  /** The client's own limit inside, in seconds (shorter than timeoutMs: a hang of the client is told from a frozen outer VM). */
  clientTimeoutS: number;
  timeoutMs: number;
  memoryMib: number;
}

export interface ClientE2eResult {
  nested: NestedResult;
  /** The client's report (its `flint-e2e:` lines and anything it printed). */
  report: string;
  /** Each flint's console, by name ("" when the client wrote none). */
  consoles: Record<string, string>;
}

export async function runClientE2e(o: ClientE2eOptions): Promise<ClientE2eResult> {
  const initrd = join(o.share, "initramfs.cpio.gz");
  const program = compileGuestProgram(o.share, o.program.name, o.program.source);
  writeFileSync(initrd, buildInitramfs({ init: o.init, files: [{ path: `/bin/${o.program.name}`, hostPath: program, mode: 0o755 }] }));
  const client = join(o.share, "client.mjs");
  writeFileSync(client, o.client);
  const reportFile = join(o.share, "report.txt"), consoleBase = join(o.share, "console");
  const command = `mkdir -p ${q(o.workDir)} && timeout ${o.clientTimeoutS} ${q(process.execPath)} ${q(client)} ${q(o.cli)} ${q(o.kernel)} ${q(initrd)} ${q(o.workDir)} ${q(reportFile)} ${q(consoleBase)} </dev/null >>${q(reportFile)} 2>&1`;
  const files = [reportFile, ...o.names.map((n) => `${consoleBase}.${n}`)];
  const retryAfterTimeout = () => { for (const f of files) rmSync(f, { force: true }); };
  const nested = await runNested({ command, timeoutMs: o.timeoutMs, shareDir: o.share, memoryMib: o.memoryMib, retryAfterTimeout, retryOnGuestCrash: files });
  const consoles: Record<string, string> = {};
  for (const n of o.names) consoles[n] = readTextIfAny(`${consoleBase}.${n}`);
  return { nested, report: readTextIfAny(reportFile), consoles };
}

/** A failure message: how the nested run ended, the client's report, each console's tail and the outer VM's. */
export function explainClientE2e(r: Partial<ClientE2eResult>): string {
  return `${describeNestedRun(r.nested)}\n--- client report ---\n${r.report ?? ""}\n` +
    Object.entries(r.consoles ?? {}).map(([n, c]) => `--- console ${n} ---\n${c.slice(-1500)}`).join("\n") + `\n--- outer serial tail ---\n${r.nested?.serial.slice(-1500)}`;
}
