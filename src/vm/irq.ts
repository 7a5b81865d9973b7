/**
 * Interrupt lines for devices: KVM_IRQ_LINE on the VM fd, usable from any
 * thread (the in-kernel irqchip serialises). Failures are reported, not thrown.
 */
import { VmFd } from "../kvm/vm.js";
import { errnoName } from "../sys/native.js";

/** A DeviceContext.setIrqLine bound to `vmFd`. */
export function irqLineContext(vmFd: number, onError: (message: string) => void): { setIrqLine(gsi: number, level: 0 | 1): void } {
  const vm = VmFd.attach(vmFd);
  return {
    setIrqLine(gsi: number, level: 0 | 1): void {
      const r = vm.irqLine(gsi, level);
      if (r < 0) onError(`KVM_IRQ_LINE(${gsi}, ${level}) failed: ${errnoName(-r)}`);
    },
  };
}
