/**
 * The states `Machine.stop()` must end a VM from, each as a small ring-3
 * guest on this host's /dev/kvm, for the stop tests (machine-stop.test.ts)
 * and the stop-latency benchmark (src/bench/stop-latency.ts):
 *
 *   ring3-loop       a vCPU in a tight ring-3 loop (inside KVM_RUN)
 *   mmio-spin        a vCPU writing unbacked MMIO as fast as it can (exit after exit)
 *   stalled-console  a vCPU blocked on a full serial ring whose output never completes a write
 *   device-io        a virtio device thread blocked in a host syscall (stall-backend.ts)
 *
 * `enter()` builds the VM, starts run() and resolves once the VM is in the
 * state; `release()` undoes whatever the scenario holds on the host (the
 * blocked syscall) so the process can exit.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, openSync, rmSync, writeSync, closeSync, constants } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { RING3_LAYOUT } from "../../arch/x86_64/ring3.js";
import { virtioSlot, type VirtioDeviceConfig } from "../../devices/virtio/virtio-set.js";
import { assemble } from "../../kvm/testing/assemble.js";
import {
  VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_F_VERSION_1, VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_QUEUE_NOTIFY,
  VIRTIO_MMIO_STATUS,
} from "../../linux/abi.generated.js";
import { SERIAL_TX_RING_BYTES } from "../../devices/legacy/serial-state.js";
import { Machine, type MachineConfig, type MachineResult } from "../machine.js";

/** A VM caught in one state. */
export interface StopScenarioRun {
  machine: Machine;
  running: Promise<MachineResult>;
  /** Lets go of what keeps the scenario's host side blocked (safe to call twice). */
  release(): Promise<void>;
}

/** One state to stop from. */
export interface StopScenario {
  name: "ring3-loop" | "mmio-spin" | "stalled-console" | "device-io";
  describe: string;
  enter(): Promise<StopScenarioRun>;
}

const COUNTER = RING3_LAYOUT.data;
/** Outside guest RAM and every device window: each write is a KVM_EXIT_MMIO nobody claims. */
const UNBACKED_MMIO = 0xe000_0000;

function ring3(source: string): Uint8Array {
  return assemble(source, RING3_LAYOUT.code);
}

/** Polls `fn` every 5 ms until it is true; throws after `limitMs` (a scenario that never gets there). */
async function until(what: string, fn: () => boolean, limitMs = 20_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`stop scenario: timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** A console that counts the bytes it got. */
function countingConsole(): { stream: Writable; bytes(): number } {
  let n = 0;
  return { stream: new Writable({ write(chunk: Buffer, _e, cb) { n += chunk.length; cb(); } }), bytes: () => n };
}

const noRelease = async (): Promise<void> => undefined;

/** Runs a 1-vCPU ring-3 `program` that prints a byte before its loop, until that byte is seen. */
async function runUntilItPrints(program: Uint8Array): Promise<StopScenarioRun> {
  const out = countingConsole();
  const machine = Machine.create({ cpus: 1, memoryMib: 64, consoleOutput: out.stream, boot: { kind: "ring3", program } });
  const running = machine.run();
  await until("the guest to start its loop", () => out.bytes() > 0);
  return { machine, running, release: noRelease };
}

const ring3Loop: StopScenario = {
  name: "ring3-loop",
  describe: "vCPU in a tight ring-3 loop",
  enter: () => runUntilItPrints(ring3("mov dx, 0x3f8\n mov al, 'r'\n out dx, al\n 1: jmp 1b")),
};

const mmioSpin: StopScenario = {
  name: "mmio-spin",
  describe: "vCPU spinning on MMIO exits",
  enter: () => runUntilItPrints(ring3(`
       mov dx, 0x3f8
       mov al, 'm'
       out dx, al
       mov eax, ${UNBACKED_MMIO}
    1: mov dword ptr [rax], ecx
       inc ecx
       jmp 1b`)),
};

const stalledConsole: StopScenario = {
  name: "stalled-console",
  describe: "vCPU blocked on a full serial ring, console stalled",
  async enter() {
    // A console reader that stopped reading: the first write never completes.
    const stalled = new Writable({ highWaterMark: 1, write() { /* never calls back */ } });
    const machine = Machine.create({
      cpus: 1, memoryMib: 64, consoleOutput: stalled,
      boot: {
        kind: "ring3",
        // rep outsb: one KVM_EXIT_IO carries up to a page of bytes, so the ring fills in a few exits.
        program: ring3(`
             mov dx, 0x3f8
          1: mov rsi, ${RING3_LAYOUT.code}
             mov ecx, 4096
             rep outsb
             add dword ptr [${COUNTER}], 4096
             jmp 1b`),
      },
    });
    const running = machine.run();
    // The guest counts its THR writes; it is blocked once the count stops moving past a full ring.
    let last = -1;
    await until("the serial ring to fill and the vCPU to block", () => {
      const n = machine.memory.readU32(COUNTER);
      const blocked = n === last && n >= SERIAL_TX_RING_BYTES;
      last = n;
      return blocked;
    });
    return { machine, running, release: noRelease };
  },
};

const deviceIo: StopScenario = {
  name: "device-io",
  describe: "device thread blocked in a host syscall",
  enter: () => enterDeviceIo(),
};

/**
 * The "device-io" state: device 0's backend (stall-backend.ts) blocks its
 * device thread in a read(2); `alongside` are more devices after it, on the
 * same thread unless their config places them elsewhere.
 */
export async function enterDeviceIo(
  alongside: VirtioDeviceConfig[] = [],
  options: Pick<MachineConfig, "endTimeoutMs" | "onSlowEnd" | "slowEndReportMs" | "pauseTimeoutMs" | "deviceThread"> = {},
): Promise<StopScenarioRun> {
  const dir = mkdtempSync(join(tmpdir(), "flint-stall-"));
  const fifoPath = join(dir, "disk");
  const markerPath = join(dir, "blocked");
  execFileSync("mkfifo", [fifoPath]);
  const { mmioBase } = virtioSlot(0);
  const status = (bits: number) => `mov dword ptr [rbx + ${VIRTIO_MMIO_STATUS}], ${bits}`;
  const machine = Machine.create({
    cpus: 1, memoryMib: 64, ...options,
    virtioDevices: [{
      kind: "block", options: { fifoPath, markerPath },
      backendModule: new URL("./stall-backend.js", import.meta.url),
    }, ...alongside],
    // A minimal driver (virtio 1.x §3.1.1): accept VERSION_1, DRIVER_OK, then kick queue 0;
    // then wait, and power off (ACPI S5) once a byte arrives on the console.
    boot: {
      kind: "ring3",
      program: ring3(`
           mov ebx, ${mmioBase}
           ${status(VIRTIO_CONFIG_S_ACKNOWLEDGE)}
           ${status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)}
           mov dword ptr [rbx + ${VIRTIO_MMIO_DRIVER_FEATURES_SEL}], ${VIRTIO_F_VERSION_1 >> 5}
           mov dword ptr [rbx + ${VIRTIO_MMIO_DRIVER_FEATURES}], ${1 << (VIRTIO_F_VERSION_1 & 31)}
           ${status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK)}
           ${status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)}
           mov dword ptr [rbx + ${VIRTIO_MMIO_QUEUE_NOTIFY}], 0
        1: pause
           mov dx, 0x3fd
           in al, dx
           test al, 1
           jz 1b
           mov dx, 0x600
           mov al, 0x34
           out dx, al
        2: jmp 2b`),
    },
  });
  const running = machine.run();
  let released = false;
  const release = async (): Promise<void> => {
    if (released) return;
    released = true;
    // The "disk" answers: the device thread's read returns and the thread ends.
    const fd = openSync(fifoPath, constants.O_RDWR | constants.O_NONBLOCK);
    writeSync(fd, Uint8Array.of(1));
    closeSync(fd);
    // The given-up worker is unref'd: hold the event loop open until its exit is seen.
    const hold = setInterval(() => undefined, 1000);
    try {
      await machine.deviceThreadsExited();
    } finally {
      clearInterval(hold);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await until("the device thread to block", () => existsSync(markerPath));
  } catch (e) {
    machine.stop();
    await release();
    throw e;
  }
  return { machine, running, release };
}

/**
 * A guest that ends the VM itself (i8042 reset on vCPU 0) while vCPU 1 is
 * blocked on a full serial ring whose console stopped reading: nothing will
 * ever make room, so run() must not wait for that vCPU or that output.
 * Resolves with the run once vCPU 1 has filled the ring.
 */
export async function enterGuestEndsWithStalledConsole(options: Pick<MachineConfig, "endTimeoutMs"> = {}): Promise<StopScenarioRun> {
  const stalled = new Writable({ highWaterMark: 1, write() { /* never calls back */ } });
  const machine = Machine.create({
    cpus: 2, memoryMib: 64, consoleOutput: stalled, ...options,
    boot: {
      kind: "ring3",
      // RDI is the vCPU's id. vCPU 1 floods the console (as stalled-console does); vCPU 0
      // waits until a good part of a ring went out, then pulses the i8042 reset line.
      program: ring3(`
           test rdi, rdi
           jnz 2f
        1: pause
           cmp dword ptr [${COUNTER}], ${SERIAL_TX_RING_BYTES / 4}
           jb 1b
           mov al, 0xfe
           out 0x64, al
        3: jmp 3b
        2: mov dx, 0x3f8
        4: mov rsi, ${RING3_LAYOUT.code}
           mov ecx, 4096
           rep outsb
           lock add dword ptr [${COUNTER}], 4096
           jmp 4b`),
    },
  });
  return { machine, running: machine.run(), release: noRelease };
}

/** Every state, in report order. */
export const STOP_SCENARIOS: readonly StopScenario[] = [ring3Loop, mmioSpin, stalledConsole, deviceIo];
