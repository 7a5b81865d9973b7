import assert from "node:assert/strict";
import { test } from "node:test";
import type { Kvm } from "../kvm/kvm.js";
import type { VcpuFd } from "../kvm/vcpu.js";
import type { VmFd } from "../kvm/vm.js";
import type { GuestMemory } from "../memory/guest-memory.js";
import { MAX_WARM_VMS, WarmVms, type WarmVm, type WarmVmShape } from "./warm-vms.js";

/** A stand-in warm VM: counts closes, holds the regions a shape's memory would have (1 region of memoryMib). */
function fakeMaker(log: string[], failAfter = Infinity) {
  let made = 0;
  return (shape: WarmVmShape): WarmVm => {
    if (made >= failAfter) throw new Error("out of fds");
    const id = made++;
    log.push(`make ${id}`);
    const closer = (what: string) => ({ close: () => log.push(`close ${what} ${id}`), dispose: () => log.push(`dispose ${what} ${id}`) });
    return {
      shape, kvm: closer("kvm") as unknown as Kvm, vm: closer("vm") as unknown as VmFd,
      vcpus: Array.from({ length: shape.cpus }, () => closer("vcpu") as unknown as VcpuFd),
      memory: { ...closer("memory"), regions: [{ guestBase: 0, size: shape.memoryMib << 20 }] } as unknown as GuestMemory,
    };
  };
}

const until = async (fn: () => boolean) => {
  for (let i = 0; i < 500 && !fn(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(fn(), "the pool reached the state in time");
};

test("a pool keeps its count of one shape, hands out only a VM of the asked layout, and refills later", async () => {
  const log: string[] = [];
  const pool = new WarmVms(fakeMaker(log));
  pool.keep({ cpus: 2, memoryMib: 64 }, 2);
  assert.equal(pool.idleCount, 1, "the first is made at once (a bad shape throws from keep)");
  await until(() => pool.idleCount === 2);
  assert.equal(pool.take(1, [{ guestBase: 0, size: 64 << 20 }]), undefined, "another vCPU count");
  assert.equal(pool.take(2, [{ guestBase: 0, size: 128 << 20 }]), undefined, "another memory layout");
  const w = pool.take(2, [{ guestBase: 0, size: 64 << 20 }]);
  assert.ok(w);
  assert.equal(pool.idleCount, 1, "not replaced while the restore that took it runs");
  await until(() => pool.idleCount === 2);
  pool.keep({ cpus: 1, memoryMib: 64 }, 1);
  assert.equal(pool.idleCount, 1, "another shape releases the idle ones and makes its own");
  assert.equal(log.filter((l) => l.startsWith("close kvm")).length, 2, "both VMs of the old shape were released");
  pool.keep({ cpus: 1, memoryMib: 64 }, 0);
  assert.equal(pool.idleCount, 0);
  assert.throws(() => pool.keep({ cpus: 1, memoryMib: 64 }, MAX_WARM_VMS + 1), RangeError);
  assert.throws(() => pool.keep({ cpus: 1, memoryMib: 64 }, 1.5), RangeError);
});

test("a refill that fails stops refilling; restores just make their own VMs", async () => {
  const log: string[] = [];
  const pool = new WarmVms(fakeMaker(log, 1));
  pool.keep({ cpus: 1, memoryMib: 64 }, 3);
  await until(() => pool.lastError !== undefined);
  assert.equal(pool.idleCount, 1);
  assert.match(pool.lastError!.message, /out of fds/);
  assert.ok(pool.take(1, [{ guestBase: 0, size: 64 << 20 }]));
  assert.equal(pool.take(1, [{ guestBase: 0, size: 64 << 20 }]), undefined);
});
