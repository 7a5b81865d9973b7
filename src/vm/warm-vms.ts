/**
 * Warm VMs: KVM VMs made ahead of time for restores and new VMs, so that a
 * clone's restore, or a library user's next VM, does not wait for the slow
 * part of making a VM. Measured on this
 * project's machine (npm run bench:snapshot, 64 MiB guest): KVM_CREATE_VM
 * with its irqchip and PIT took 8.6 ms of a 36.5 ms clone, registering its
 * memory 5.5 ms (KVM waits for an SRCU grace period on each slot change),
 * and making the external ArrayBuffer over guest RAM cost a V8 GC of ~4 ms.
 * A warm VM holds all of that done: the VM with its irqchip and PIT, its
 * vCPUs created, and guest memory reserved (GuestMemory.reserve: address
 * space, PROT_NONE, its views made) and registered with KVM. A restore that
 * takes one only maps the memory file over the reservation (one mmap per
 * region; KVM follows the change through its MMU notifier) and sets state;
 * Machine.create maps fresh anonymous memory there instead.
 *
 * The pool keeps `count` of one shape (vCPUs, memory size) per process,
 * made on the main thread (KVM objects are process-wide, but their ioctls
 * are synchronous) one at a time, REFILL_DELAY_MS after one is taken, so
 * that making the next does not hold up the clone that just took one.
 * Making one is Machine's job (it owns how a VM is set up); this module
 * only keeps them.
 */
import type { Kvm } from "../kvm/kvm.js";
import type { VcpuFd } from "../kvm/vcpu.js";
import type { VmFd } from "../kvm/vm.js";
import type { GuestMemory } from "../memory/guest-memory.js";

/** What a warm VM is made for: VMs (new or restored) with this many vCPUs and this much memory. */
export interface WarmVmShape {
  cpus: number;
  memoryMib: number;
}

/** A VM made ahead, not yet taken. */
export interface WarmVm {
  readonly shape: WarmVmShape;
  readonly kvm: Kvm;
  readonly vm: VmFd;
  /** Created, in id order, with no state set. */
  readonly vcpus: VcpuFd[];
  /** Reserved (GuestMemory.reserve) and registered with KVM, slot i for region i, without dirty logging. */
  readonly memory: GuestMemory;
}

/** How long after a warm VM is taken the next one is made. */
export const WARM_VM_REFILL_DELAY_MS = 50;

/** Most warm VMs a process keeps (each holds a few fds and its memory's address space, not its memory). */
export const MAX_WARM_VMS = 64;

/** Releases a warm VM that will not be used. */
export function disposeWarmVm(w: WarmVm): void {
  for (const v of w.vcpus) v.close();
  w.memory.dispose();
  w.vm.close();
  w.kvm.close();
}

export class WarmVms {
  private readonly idle: WarmVm[] = [];
  private shape: WarmVmShape | undefined;
  private count = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Why the last refill failed, if it did (then the pool stops refilling until keep() is called again). */
  lastError: Error | undefined;

  constructor(private readonly make: (shape: WarmVmShape) => WarmVm) {}

  /**
   * Keeps `count` (0..MAX_WARM_VMS) VMs of `shape` made; 0 releases the idle
   * ones. The first is made now (a bad shape throws here, from make()), the
   * rest in the background.
   */
  keep(shape: WarmVmShape, count: number): void {
    if (!Number.isInteger(count) || count < 0 || count > MAX_WARM_VMS) throw new RangeError(`Cannot keep ${count} warm VMs: 0 to ${MAX_WARM_VMS}`);
    const same = this.shape !== undefined && this.shape.cpus === shape.cpus && this.shape.memoryMib === shape.memoryMib;
    while (this.idle.length > (same ? count : 0)) disposeWarmVm(this.idle.pop()!);
    this.shape = { ...shape };
    this.count = count;
    this.lastError = undefined;
    if (count > 0 && this.idle.length === 0) this.idle.push(this.make(this.shape));
    this.schedule();
  }

  /** VMs made and waiting. */
  get idleCount(): number {
    return this.idle.length;
  }

  /**
   * A warm VM for a VM with `cpus` vCPUs and memory `regions`, if one
   * of that layout is waiting (the next is then made later), else undefined.
   */
  take(cpus: number, regions: readonly { guestBase: number; size: number }[]): WarmVm | undefined {
    const i = this.idle.findIndex((w) => w.vcpus.length === cpus && w.memory.regions.length === regions.length &&
      [...regions].sort((a, b) => a.guestBase - b.guestBase).every((r, j) => r.guestBase === w.memory.regions[j]!.guestBase && r.size === w.memory.regions[j]!.size));
    if (i < 0) return undefined;
    const [w] = this.idle.splice(i, 1);
    this.schedule();
    return w;
  }

  private schedule(): void {
    if (this.timer !== undefined || this.shape === undefined || this.idle.length >= this.count || this.lastError) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.shape === undefined || this.idle.length >= this.count) return;
      try {
        this.idle.push(this.make(this.shape));
      } catch (e) {
        this.lastError = e as Error; // e.g. out of fds: restores just make their own VMs meanwhile
        return;
      }
      this.schedule();
    }, WARM_VM_REFILL_DELAY_MS);
    this.timer.unref();
  }
}
