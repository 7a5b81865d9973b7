/**
 * Entry point of a vCPU worker thread. It attaches to the VM's fds
 * (process-wide), builds its own device objects over shared state,
 * reports its pthread id so the main thread can kick it out of KVM_RUN, and
 * runs the vCPU loop until the VM stops.
 */
import { parentPort } from "node:worker_threads";
import type { DeviceContext, VmExitReason } from "../devices/bus.js";
import { GuestFaultLog } from "../devices/fault-log.js";
import { VcpuFd } from "../kvm/vcpu.js";
import { sys } from "../sys/native.js";
import { workerInit } from "../sys/worker-pool.js";
import { installThreadSeccomp } from "../seccomp/index.js";
import { claimExit } from "./control.js";
import { buildBuses } from "./device-set.js";
import type { VcpuThreadInit, VcpuThreadMessage } from "./messages.js";
import { irqLineContext } from "./irq.js";
import { readStats, runVcpu } from "./vcpu-loop.js";

const port = parentPort!;
// The main thread posts "start" right behind the init (they may arrive in one turn): listen from the first line.
const startSignal = new Promise<void>((resolve) => port.on("message", (m) => {
  if (m === "start") resolve();
}));
// workerData, or the first message when this thread was booted ahead as a spare (worker-pool.ts).
const init = await workerInit<VcpuThreadInit>();
const post = (m: VcpuThreadMessage) => port.postMessage(m);

const vcpu = VcpuFd.attach(init.vcpu);

function end(reason: VmExitReason): void {
  if (claimExit(init.control)) post({ type: "exit", reason });
}

// A guest can fault on every exit: post the first few per device, then summaries
// (fault-log.ts), so the main thread's message queue stays bounded.
const faults = new GuestFaultLog((r) => post({ type: "fault", device: r.device, message: r.message, count: r.count }));
const ctx: DeviceContext = {
  ...irqLineContext(init.vmFd, (m) => faults.fault("irqchip", m)),
  requestExit: end,
  guestFault: (device, message) => faults.fault(device, message),
};

sys.unblockSignal(init.kickSignal);
post({ type: "ready", thread: sys.threadSelf() });

void startSignal.then(() => {
  let reason: VmExitReason | undefined;
  try {
    // Guest work starts here: the vCPU's own filter first (stacked on the process-wide one).
    if (init.seccomp) installThreadSeccomp("vcpu", init.seccomp);
    const { pio, mmio } = buildBuses(init.devices, ctx);
    reason = runVcpu(vcpu, pio, mmio, init.control, init.stats);
  } catch (e) {
    reason = { kind: "error", message: `vCPU ${init.vcpu.id} failed: ${(e as Error).stack ?? e}` };
  }
  if (reason) end(reason);
  faults.flush();
  post({ type: "done", stats: readStats(init.stats) });
  port.close();
});
