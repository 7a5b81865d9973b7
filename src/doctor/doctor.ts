/**
 * `flint doctor`: can this host run microVMs, and how well? Checks /dev/kvm,
 * the API version and every capability flint needs, then measures how fast
 * the host runs guest code in ring 3 and in ring 0. Some nested hosts run
 * guest ring 3 natively but emulate guest ring 0 (kernel code) thousands of
 * times slower; Linux cannot boot at usable speed there, and doctor says so.
 */
import {
  KVM_CAP_EXT_CPUID, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_IOEVENTFD, KVM_CAP_IRQCHIP, KVM_CAP_IRQFD, KVM_CAP_MP_STATE,
  KVM_CAP_NR_MEMSLOTS, KVM_CAP_PIT2, KVM_CAP_SET_TSS_ADDR, KVM_CAP_USER_MEMORY, KVM_EXIT_IO, KVM_CAP_TSC_DEADLINE_TIMER,
  KVM_CAP_KVMCLOCK_CTRL, KVM_API_VERSION,
} from "../linux/abi.generated.js";
import { KvmError } from "../kvm/errors.js";
import { Kvm } from "../kvm/kvm.js";
import { RING3_LAYOUT, startInRing0, startInRing3 } from "../arch/x86_64/ring3.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { sys } from "../sys/native.js";
import { maxVcpus } from "../vm/machine.js";

/** One line of the report. */
export interface DoctorCheck {
  name: string;
  ok: boolean;
  detail: string;
  /** A required check failing means flint cannot run VMs here. */
  required: boolean;
}

export interface DoctorReport {
  checks: DoctorCheck[];
  /** Can flint create and run VMs at all? */
  usable: boolean;
  /** Guest instructions per second in ring 3 and ring 0 (undefined if not measured). */
  ring3InstrPerSecond?: number;
  ring0InstrPerSecond?: number;
  /** True when guest kernel code runs far slower than user code (emulated ring 0). */
  kernelModeEmulated?: boolean;
  verdict: string;
}

/**
 * The probe program (hand-encoded so doctor needs no assembler; a unit test
 * checks these bytes against binutils):
 *   mov rcx, imm32 ; 1: dec rcx ; jnz 1b ; out 0x80, al ; 2: jmp 2b
 */
export function loopProgram(iterations: number): Uint8Array {
  const p = new Uint8Array([0x48, 0xc7, 0xc1, 0, 0, 0, 0, 0x48, 0xff, 0xc9, 0x75, 0xfb, 0xe6, 0x80, 0xeb, 0xfe]);
  new DataView(p.buffer).setUint32(3, iterations, true);
  return p;
}

/** Runs the loop in the given ring and returns guest instructions per second. */
export function measureRing(kvm: Kvm, ring: 0 | 3, iterations: number): number {
  const vm = kvm.createVm();
  const size = 8 << 20;
  const mem = GuestMemory.create([{ guestBase: 0, size }]);
  try {
    vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: size, userspaceAddr: mem.regions[0]!.hostAddress });
    const vcpu = vm.createVcpu(0);
    try {
      vcpu.setCpuid2(kvm.getSupportedCpuid());
      mem.write(RING3_LAYOUT.code, loopProgram(iterations));
      (ring === 3 ? startInRing3 : startInRing0)(vcpu, mem, RING3_LAYOUT.code);
      const t0 = sys.monotonicNs();
      const r = vcpu.runOnce();
      const ns = Number(sys.monotonicNs() - t0);
      if (r !== KVM_EXIT_IO) throw new KvmError("EKVMIOCTL", `probe guest stopped with exit ${r} instead of port I/O`);
      return (2 * iterations) / (ns / 1e9);
    } finally {
      vcpu.close();
    }
  } finally {
    vm.close();
    mem.dispose();
  }
}

const REQUIRED_CAPS: [number, string][] = [
  [KVM_CAP_IRQCHIP, "in-kernel irqchip (KVM_CAP_IRQCHIP)"],
  [KVM_CAP_USER_MEMORY, "user memory regions (KVM_CAP_USER_MEMORY)"],
  [KVM_CAP_SET_TSS_ADDR, "TSS address (KVM_CAP_SET_TSS_ADDR)"],
  [KVM_CAP_PIT2, "in-kernel PIT (KVM_CAP_PIT2)"],
  [KVM_CAP_EXT_CPUID, "CPUID control (KVM_CAP_EXT_CPUID)"],
  [KVM_CAP_IMMEDIATE_EXIT, "vCPU kick (KVM_CAP_IMMEDIATE_EXIT)"],
  [KVM_CAP_MP_STATE, "MP state (KVM_CAP_MP_STATE)"],
  [KVM_CAP_IOEVENTFD, "ioeventfd (KVM_CAP_IOEVENTFD)"],
  [KVM_CAP_IRQFD, "irqfd (KVM_CAP_IRQFD)"],
];
const OPTIONAL_CAPS: [number, string][] = [
  [KVM_CAP_TSC_DEADLINE_TIMER, "TSC deadline timer"],
  [KVM_CAP_KVMCLOCK_CTRL, "kvm-clock control"],
];

/** Ratio below which guest ring 0 counts as emulated rather than native. */
const EMULATED_RING0_RATIO = 0.05;

/** Runs every check. Never throws: problems become failed checks. */
export function runDoctor(opts: { probe?: boolean } = {}): DoctorReport {
  const checks: DoctorCheck[] = [];
  let kvm: Kvm;
  try {
    kvm = Kvm.open();
    checks.push({ name: "/dev/kvm", ok: true, detail: `opened, API version ${KVM_API_VERSION}`, required: true });
  } catch (e) {
    const msg = e instanceof KvmError ? e.message : String(e);
    checks.push({ name: "/dev/kvm", ok: false, detail: msg, required: true });
    return { checks, usable: false, verdict: `flint cannot run microVMs here: ${msg}` };
  }
  const report: DoctorReport = { checks, usable: true, verdict: "" };
  try {
    for (const [cap, name] of REQUIRED_CAPS) {
      const ok = kvm.checkExtension(cap) > 0;
      checks.push({ name, ok, detail: ok ? "present" : "missing", required: true });
    }
    for (const [cap, name] of OPTIONAL_CAPS) {
      const ok = kvm.checkExtension(cap) > 0;
      checks.push({ name, ok, detail: ok ? "present" : "missing (optional)", required: false });
    }
    checks.push({ name: "vCPUs per VM", ok: true, detail: `up to ${maxVcpus(kvm)}`, required: false });
    checks.push({ name: "memory slots", ok: true, detail: String(kvm.checkExtension(KVM_CAP_NR_MEMSLOTS)), required: false });
    report.usable = checks.every((c) => c.ok || !c.required);
    if (report.usable && opts.probe !== false) {
      try {
        report.ring3InstrPerSecond = measureRing(kvm, 3, 5_000_000);
        report.ring0InstrPerSecond = measureRing(kvm, 0, 20_000);
        report.kernelModeEmulated = report.ring0InstrPerSecond < EMULATED_RING0_RATIO * report.ring3InstrPerSecond;
        const fmt = (x: number) => `${(x / 1e6).toFixed(x < 1e7 ? 2 : 0)} M instr/s`;
        checks.push({ name: "guest user mode (ring 3)", ok: true, detail: fmt(report.ring3InstrPerSecond), required: false });
        checks.push({
          name: "guest kernel mode (ring 0)",
          ok: !report.kernelModeEmulated,
          detail: report.kernelModeEmulated
            ? `${fmt(report.ring0InstrPerSecond)}: EMULATED, ${Math.round(report.ring3InstrPerSecond / report.ring0InstrPerSecond)}x slower than user mode`
            : fmt(report.ring0InstrPerSecond),
          required: false,
        });
      } catch (e) {
        checks.push({ name: "guest speed probe", ok: false, detail: (e as Error).message, required: false });
      }
    }
  } finally {
    kvm.close();
  }
  const failed = checks.filter((c) => !c.ok && c.required).map((c) => c.name);
  report.verdict = !report.usable
    ? `flint cannot run microVMs here: missing ${failed.join(", ")}`
    : report.kernelModeEmulated
      ? "KVM works, but this host emulates guest kernel code (no hardware virtualization for nested guests): " +
        "Linux guests will not boot at usable speed here. Use a host with VT-x/AMD-V, or flint's nested harness (`flint demo` does this automatically)."
      : "This host runs microVMs at full speed.";
  return report;
}
