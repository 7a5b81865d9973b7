/**
 * Chooses flint's native boundary with numbers: the same ioctls through the
 * flint_sys N-API addon and through koffi (a well-kept FFI library), for
 * (1) a cheap system ioctl (binding overhead + syscall) and (2) full VM exit
 * round trips of a ring-3 guest doing `out` in a loop.
 */
import { createRequire } from "node:module";
import { KVM_CAP_IRQCHIP, KVM_CHECK_EXTENSION, KVM_EXIT_IO, KVM_RUN, kvm_run } from "../linux/abi.generated.js";
import { Kvm } from "../kvm/kvm.js";
import { assemble } from "../kvm/testing/assemble.js";
import { RING3_LAYOUT, startInRing3 } from "../arch/x86_64/ring3.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { sys } from "../sys/native.js";

type IoctlFn = (fd: number, req: number, arg: number) => number;

function koffiIoctl(): IoctlFn {
  const require = createRequire(import.meta.url);
  const koffi = require("koffi") as { load(n: string): { func(sig: string): IoctlFn } };
  return koffi.load("libc.so.6").func("int ioctl(int, unsigned long, unsigned long)");
}

function timeCalls(fn: () => void, n: number): number {
  for (let i = 0; i < 10000; i++) fn();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn();
  return Number(process.hrtime.bigint() - t0) / n;
}

/** Exits per second for `count` port-I/O exits driven through `ioctl`. */
function exitRate(kvm: Kvm, ioctl: IoctlFn, count: number): number {
  const vm = kvm.createVm();
  const mem = GuestMemory.create([{ guestBase: 0, size: 8 << 20 }]);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 8 << 20, userspaceAddr: mem.regions[0]!.hostAddress });
  const vcpu = vm.createVcpu(0);
  vcpu.setCpuid2(kvm.getSupportedCpuid());
  mem.write(RING3_LAYOUT.code, assemble(`
    mov rcx, ${count}
  1: out 0x80, al
    dec rcx
    jnz 1b
    out 0x81, al
  2: jmp 2b`, RING3_LAYOUT.code));
  startInRing3(vcpu, mem, RING3_LAYOUT.code);
  let t0 = 0n;
  let exits = 0;
  for (;;) {
    const r = ioctl(vcpu.fd, KVM_RUN, 0);
    if (r < 0) throw new Error("KVM_RUN failed");
    const reason = vcpu.runView.getUint32(kvm_run.exit_reason, true);
    if (reason !== KVM_EXIT_IO) throw new Error(`unexpected exit ${reason}`);
    if (exits === 0) t0 = process.hrtime.bigint();
    exits++;
    if (vcpu.runView.getUint16(kvm_run.io_port, true) === 0x81) break;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  vcpu.close();
  vm.close();
  mem.dispose();
  return (exits - 1) / seconds;
}

export interface BoundaryResult {
  addonNsPerIoctl: number;
  koffiNsPerIoctl: number;
  addonExitsPerSecond: number;
  koffiExitsPerSecond: number;
}

/** Measures both candidates in the same run. */
export function measureNativeBoundary(exitCount = 50_000, callCount = 1_000_000): BoundaryResult {
  const kvm = Kvm.open();
  const kf = koffiIoctl();
  const addon: IoctlFn = (fd, req, arg) => sys.ioctlValue(fd, req, arg);
  const median = (xs: number[]) => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  // Interleave rounds so both candidates share any drift in host speed.
  const ac: number[] = [], kc: number[] = [], a: number[] = [], k: number[] = [];
  for (let i = 0; i < 5; i++) {
    ac.push(timeCalls(() => addon(kvm.fd, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP), callCount / 5));
    kc.push(timeCalls(() => kf(kvm.fd, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP), callCount / 5));
  }
  for (let i = 0; i < 3; i++) {
    a.push(exitRate(kvm, addon, exitCount));
    k.push(exitRate(kvm, kf, exitCount));
  }
  const res: BoundaryResult = {
    addonNsPerIoctl: median(ac),
    koffiNsPerIoctl: median(kc),
    addonExitsPerSecond: median(a),
    koffiExitsPerSecond: median(k),
  };
  kvm.close();
  return res;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(JSON.stringify(measureNativeBoundary(), null, 2));
}
