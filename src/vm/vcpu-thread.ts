/**
 * Entry point of a vCPU worker thread. It attaches to the VM's fds
 * (process-wide), builds its own device objects over shared state,
 * reports its pthread id so the main thread can kick it out of KVM_RUN, and
 * runs the vCPU loop until the VM stops.
 */
import { parentPort, workerData } from "node:worker_threads";
import type { DeviceContext, VmExitReason } from "../devices/bus.js";
import { VcpuFd } from "../kvm/vcpu.js";
import { sys } from "../sys/native.js";
import { claimExit } from "./control.js";
import { buildBuses } from "./device-set.js";
import type { VcpuThreadInit, VcpuThreadMessage } from "./messages.js";
import { irqLineContext } from "./irq.js";
import { newStats, runVcpu } from "./vcpu-loop.js";

const init = workerData as VcpuThreadInit;
const port = parentPort!;
const post = (m: VcpuThreadMessage) => port.postMessage(m);

const vcpu = VcpuFd.attach(init.vcpu);
const stats = newStats();

function end(reason: VmExitReason): void {
  if (claimExit(init.control)) post({ type: "exit", reason });
}

const ctx: DeviceContext = {
  ...irqLineContext(init.vmFd, (m) => post({ type: "fault", device: "irqchip", message: m })),
  requestExit: end,
  guestFault: (device, message) => post({ type: "fault", device, message }),
};

sys.unblockSignal(init.kickSignal);
post({ type: "ready", thread: sys.threadSelf() });

port.once("message", () => {
  let reason: VmExitReason | undefined;
  try {
    const { pio, mmio } = buildBuses(init.devices, ctx);
    reason = runVcpu(vcpu, pio, mmio, init.control, stats);
  } catch (e) {
    reason = { kind: "error", message: `vCPU ${init.vcpu.id} failed: ${(e as Error).stack ?? e}` };
  }
  if (reason) end(reason);
  post({ type: "done", stats });
  port.close();
});
