import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { describe, it } from "node:test";
import { DebianKernelError, debianKernel, moduleClosure, newestKernelPackage } from "./debian-kernel.js";

/** A fake /lib/modules/<version> with the given modules.dep and modules.builtin. */
function fakeModulesDir(dep: string, builtin = ""): string {
  const dir = mkdtempSync(join(tmpdir(), "flint-modules-"));
  mkdirSync(join(dir, "kernel"), { recursive: true });
  writeFileSync(join(dir, "modules.dep"), dep);
  writeFileSync(join(dir, "modules.builtin"), builtin);
  return dir;
}

describe("newestKernelPackage", () => {
  it("picks the highest ABI number of the generic amd64 flavour only", () => {
    const search = [
      "linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)",
      "linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)",
      "linux-image-6.1.0-47-amd64 - Linux 6.1 for 64-bit PCs (signed)",
      "linux-image-6.1.0-52-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)",
    ].join("\n");
    assert.deepEqual(newestKernelPackage(search), { packageName: "linux-image-6.1.0-47-amd64", release: "6.1.0-47-amd64" });
    assert.equal(newestKernelPackage(""), undefined);
  });
});

describe("moduleClosure", () => {
  const dep = [
    "kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko",
    "kernel/arch/x86/kvm/kvm-amd.ko.xz: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko",
    "kernel/drivers/crypto/ccp/ccp.ko:",
    "kernel/virt/lib/irqbypass.ko:",
    "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko",
    "kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko",
    "kernel/fs/netfs/netfs.ko:",
    "kernel/net/9p/9pnet.ko:",
    "kernel/a.ko: kernel/b.ko",
    "kernel/b.ko: kernel/a.ko",
    "",
  ].join("\n");

  it("puts every dependency before its user, each module once", () => {
    const dir = fakeModulesDir(dep);
    try {
      const order = moduleClosure(dir, ["9p", "kvm-amd"]).map((path) => basename(path));
      assert.deepEqual(order, ["9pnet.ko", "netfs.ko", "fscache.ko", "9p.ko", "ccp.ko", "irqbypass.ko", "kvm.ko", "kvm-amd.ko.xz"]);
      for (const [i, path] of moduleClosure(dir, ["kvm_amd"]).entries()) {
        assert.ok(path.startsWith(`${dir}/kernel/`), `absolute path #${i}`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("skips built-in modules and rejects unknown ones and cycles", () => {
    const dir = fakeModulesDir(dep, "kernel/drivers/virtio/virtio_ring.ko\n");
    try {
      assert.deepEqual(moduleClosure(dir, ["virtio-ring"]), []);
      assert.throws(
        () => moduleClosure(dir, ["nonexistent"]),
        (error: unknown) => error instanceof DebianKernelError && error.code === "EMODULENOTFOUND",
      );
      assert.throws(
        () => moduleClosure(dir, ["a"]),
        (error: unknown) => error instanceof DebianKernelError && error.code === "EMODULEDEP",
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("debianKernel", () => {
  it("provides Debian's kernel image and a modules tree whose kvm-amd closure loads in order", async () => {
    const kernel = await debianKernel();
    assert.match(kernel.version, /^6\.1\.0-\d+-amd64$/);
    assert.ok(existsSync(kernel.vmlinuz), kernel.vmlinuz);
    assert.ok(existsSync(join(kernel.modulesDir, "modules.dep")));
    const order = moduleClosure(kernel.modulesDir, ["kvm-amd"]).map((path) => basename(path).replace(/\.ko.*$/, ""));
    assert.deepEqual(order.slice(-1), ["kvm-amd"]);
    assert.ok(order.indexOf("kvm") < order.indexOf("kvm-amd") && order.includes("irqbypass") && order.includes("ccp"));
    // A second call is served from the cache: same paths.
    assert.deepEqual(await debianKernel(), kernel);
  });
});
