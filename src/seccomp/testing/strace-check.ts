/**
 * Finds the gaps of flint's allow-lists in a real run: reads a `strace -f`
 * log of flint (run with FLINT_SECCOMP_AUDIT=1 so nothing is killed, and
 * `-e raw=ioctl,socket,clone` so the filtered arguments are numbers), follows
 * which filters each thread has (the TSYNC process-wide install, each
 * worker's own install, inherited by the threads and processes it creates;
 * a worker that makes any KVM ioctl is a vCPU thread, any other a device
 * thread). flint makes no processes: what a filtered process forks (a test
 * harness building a guest program) is left out, and its fork is reported.
 * and runs every traced call through the same compiled programs. Prints each
 * call a filter would not allow, by thread kind, with counts.
 *
 *   strace -f -qq -e raw=ioctl,socket,clone -o /tmp/t.log <command>
 *   node dist/seccomp/testing/strace-check.js /tmp/t.log [--unused]
 *
 * --unused also prints, per kind, the listed calls the log never made (what
 * a list could lose, if other runs do not need them either).
 */
import { readFileSync } from "node:fs";
import { KVM_RUN, SECCOMP_RET_ACTION_FULL, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SYSCALLS_X86_64 } from "../../linux/abi.generated.js";
import { compileInsns, type Insn, type SyscallName } from "../bpf.js";
import { ALLOW_LISTS, type ThreadKind } from "../lists.js";
import { runFilter } from "./bpf-interpreter.js";

const programs = Object.fromEntries(
  (Object.keys(ALLOW_LISTS) as ThreadKind[]).map((k) => [k, compileInsns(ALLOW_LISTS[k], "kill")]),
) as Record<ThreadKind, Insn[]>;

/** Symbolic first arguments strace prints for calls it decodes. */
const SYMBOLS: Record<string, bigint> = { SECCOMP_SET_MODE_FILTER: 1n, SECCOMP_SET_MODE_STRICT: 0n };

function parseArg(s: string | undefined): bigint {
  if (s === undefined) return 0n;
  const t = s.trim();
  if (/^-?(0x[0-9a-f]+|\d+)$/i.test(t)) return BigInt.asUintN(64, BigInt(t));
  return SYMBOLS[t] ?? 0n;
}

interface Call { tid: number; name: string; args: string; ret?: string }

function parse(text: string): Call[] {
  const calls: Call[] = [];
  const pending = new Map<number, Call>();
  for (const line of text.split("\n")) {
    const m = /^(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const tid = Number(m[1]);
    const rest = m[2]!;
    const resumed = /^<\.\.\. (\w+) resumed>(.*?)(?:= (.*))?$/.exec(rest);
    if (resumed) {
      const c = pending.get(tid);
      if (c) { c.args += resumed[2]; c.ret = resumed[3]; pending.delete(tid); }
      continue;
    }
    const call = /^(\w+)\((.*?)(?:\s+<unfinished \.\.\.>|\)\s+= (.*))$/.exec(rest);
    if (!call) continue;
    const c: Call = { tid, name: call[1]!, args: call[2]!, ret: call[3] };
    calls.push(c);
    if (rest.endsWith("<unfinished ...>")) pending.set(tid, c);
  }
  return calls;
}

const text = readFileSync(process.argv[2]!, "utf8");
const calls = parse(text);
// Pass 1: who made whom (clone's return value), and whether as a thread.
const parent = new Map<number, { tid: number; thread: boolean }>();
for (const c of calls) {
  if ((c.name === "clone" || c.name === "clone3" || c.name === "fork" || c.name === "vfork") && c.ret && /^\d+/.test(c.ret) && Number.parseInt(c.ret) > 0) {
    const flags = c.name === "clone" ? parseArg(c.args.split(",")[0]) : 0n;
    const thread = c.name === "clone3" ? /CLONE_THREAD/.test(c.args) : (flags & 0x10000n) !== 0n;
    parent.set(Number.parseInt(c.ret), { tid: c.tid, thread });
  }
}
const isKvmIoctl = (c: Call) => c.name === "ioctl" && ((parseArg(c.args.split(",")[1]) >> 8n) & 0xffn) === BigInt((KVM_RUN >> 8) & 0xff);
const vcpuThreads = new Set(calls.filter(isKvmIoctl).map((c) => c.tid));
// Pass 2: each thread's filter stack, in log order.
const stack = new Map<number, ThreadKind[]>();
const proc = new Map<number, number>();
function procOf(tid: number): number {
  let p = proc.get(tid);
  if (p === undefined) {
    const par = parent.get(tid);
    p = par?.thread ? procOf(par.tid) : tid;
    proc.set(tid, p);
  }
  return p;
}
function stackOf(tid: number): ThreadKind[] {
  let s = stack.get(tid);
  if (!s) {
    const par = parent.get(tid);
    s = par ? [...stackOf(par.tid)] : [];
    stack.set(tid, s);
  }
  return s;
}
const gaps = new Map<string, number>();
const used: Record<ThreadKind, Set<string>> = { process: new Set(), vcpu: new Set(), device: new Set() };
let installs = 0, ignored = 0;
/** Is `tid` in a process forked from a filtered one (not flint's own)? */
function forkedFromFiltered(tid: number): boolean {
  const p = procOf(tid), par = parent.get(p);
  return par !== undefined && !par.thread && stackOf(par.tid).length > 0;
}
for (const c of calls) {
  const s = stackOf(c.tid);
  if (forkedFromFiltered(c.tid)) { ignored++; continue; }
  const nr = (SYSCALLS_X86_64 as Record<string, number>)[c.name];
  if (nr === undefined) { gaps.set(`? unknown call ${c.name}`, (gaps.get(`? unknown call ${c.name}`) ?? 0) + 1); continue; }
  const args = c.args.split(/,\s*/).slice(0, 6).map(parseArg);
  for (const kind of new Set(s)) {
    used[kind].add(c.name);
    const r = runFilter(programs[kind], { nr, args });
    const action = (r & SECCOMP_RET_ACTION_FULL) >>> 0;
    if (action === SECCOMP_RET_ALLOW || action === SECCOMP_RET_ERRNO) continue;
    const filtered = ["ioctl", "socket", "clone", "seccomp"].includes(c.name) ? ` ${c.args.split(/,\s*/).slice(0, 2).join(", ")}` : "";
    const key = `${kind}: ${c.name as SyscallName}${filtered}`;
    gaps.set(key, (gaps.get(key) ?? 0) + 1);
  }
  if (c.name === "seccomp" && c.ret?.trim() === "0") {
    installs++;
    const tsync = /TSYNC/.test(c.args);
    const kind: ThreadKind = tsync ? "process" : vcpuThreads.has(c.tid) ? "vcpu" : "device";
    if (tsync) {
      const p = procOf(c.tid);
      for (const [tid] of stack) if (procOf(tid) === p) stack.set(tid, [...s, kind]);
    } else {
      s.push(kind);
    }
  }
}
console.log(`${calls.length} calls, ${installs} filter installs, ${ignored} calls of forked children left out, ${gaps.size} gaps`);
for (const [k, n] of [...gaps].sort()) console.log(`${String(n).padStart(7)}  ${k}`);
if (process.argv.includes("--unused")) {
  for (const kind of Object.keys(ALLOW_LISTS) as ThreadKind[]) {
    const unused = ALLOW_LISTS[kind].map((r) => (typeof r === "string" ? r : r.name)).filter((n) => !used[kind].has(n));
    console.log(`${kind}: listed, never made here: ${unused.join(" ")}`);
  }
}
