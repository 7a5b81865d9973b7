import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { before, describe, it } from "node:test";
import { XEN_ELFNOTE_PHYS32_ENTRY } from "../linux/abi.generated.js";
import {
  buildKernel, KERNEL_CONFIG_FRAGMENT, KERNEL_NOACPI_CONFIG_FRAGMENT, kernelCacheKey, kernelConfigFragments, missingConfigSettings,
  parseKernelConfig,
} from "./kernel-build.js";

describe("parseKernelConfig", () => {
  it("reads =y, =m, numbers, strings and 'is not set' lines and ignores comments", () => {
    const config = parseKernelConfig(
      ['# comment', 'CONFIG_A=y', 'CONFIG_B=m', 'CONFIG_NR_CPUS=64', 'CONFIG_S="x y"', "# CONFIG_C is not set", ""].join("\n"),
    );
    assert.deepEqual(Object.fromEntries(config), { CONFIG_A: "y", CONFIG_B: "m", CONFIG_NR_CPUS: "64", CONFIG_S: '"x y"', CONFIG_C: "n" });
  });
});

describe("missingConfigSettings", () => {
  it("names settings that olddefconfig dropped or changed, and accepts a matching config", () => {
    const fragment = "CONFIG_A=y\nCONFIG_N=8\n# CONFIG_M is not set\n";
    assert.deepEqual(missingConfigSettings(fragment, "CONFIG_A=y\nCONFIG_N=8\n"), []);
    assert.deepEqual(missingConfigSettings(fragment, "CONFIG_N=4\nCONFIG_M=y\n"), [
      "CONFIG_A=y (got not set)",
      "CONFIG_N=8 (got 4)",
      "CONFIG_M=n (got y)",
    ]);
  });
});

describe("the microVM kernel config fragment", () => {
  it("asks for every feature flint's guests rely on", () => {
    const fragment = parseKernelConfig(readFileSync(KERNEL_CONFIG_FRAGMENT, "utf8"));
    const required = [
      "64BIT", "SMP", "PRINTK", "TTY", "SERIAL_8250", "SERIAL_8250_CONSOLE", "BLK_DEV_INITRD", "RD_GZIP",
      "BINFMT_ELF", "BINFMT_SCRIPT", "DEVTMPFS", "DEVTMPFS_MOUNT", "PROC_FS", "SYSFS", "HYPERVISOR_GUEST",
      "PARAVIRT", "KVM_GUEST", "PVH", "ACPI", "X86_MPPARSE", "X86_LOCAL_APIC", "X86_IO_APIC", "DEVMEM",
      "VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_CONSOLE",
      "HW_RANDOM_VIRTIO", "VIRTIO_BALLOON", "VIRTIO_VSOCKETS", "EXT4_FS", "NET", "INET", "UNIX", "PACKET",
    ];
    assert.deepEqual(required.filter((symbol) => fragment.get(`CONFIG_${symbol}`) !== "y"), []);
    assert.ok(Number(fragment.get("CONFIG_NR_CPUS")) >= 8);
    assert.equal(fragment.get("CONFIG_MODULES"), "n");
  });
});

describe("the no-acpi kernel variant", () => {
  it("is the committed fragment with ACPI (and the PCI it needed) turned off, merged last", () => {
    assert.deepEqual(kernelConfigFragments("no-acpi"), [KERNEL_CONFIG_FRAGMENT, KERNEL_NOACPI_CONFIG_FRAGMENT]);
    assert.deepEqual(kernelConfigFragments(), [KERNEL_CONFIG_FRAGMENT]);
    const merged = parseKernelConfig(kernelConfigFragments("no-acpi").map((f) => readFileSync(f, "utf8")).join("\n"));
    assert.equal(merged.get("CONFIG_ACPI"), "n");
    assert.equal(merged.get("CONFIG_PCI"), "n");
    assert.equal(merged.get("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"), "y", "its devices come from the command line");
    assert.equal(merged.get("CONFIG_X86_MPPARSE"), "y", "its CPUs and IOAPIC come from the MP table");
  });

  it("has its own cache key, and the default kernel keeps the key of its single fragment", () => {
    const base = readFileSync(KERNEL_CONFIG_FRAGMENT, "utf8");
    const overlay = readFileSync(KERNEL_NOACPI_CONFIG_FRAGMENT, "utf8");
    assert.equal(kernelCacheKey([base]), kernelCacheKey(base));
    assert.notEqual(kernelCacheKey([base, overlay]), kernelCacheKey(base));
  });
});

describe("the built microVM kernel", () => {
  // scripts/run-tests.mjs builds (or finds cached) the kernel before tests run.
  let kernel: Awaited<ReturnType<typeof buildKernel>> | undefined;
  before(async () => {
    kernel = await buildKernel();
  });

  it("is an x86-64 ELF vmlinux with a PVH entry note", () => {
    const header = execFileSync("readelf", ["-h", kernel!.vmlinux], { encoding: "utf8" });
    assert.match(header, /Class:\s+ELF64/);
    assert.match(header, /Machine:\s+Advanced Micro Devices X86-64/);
    const notes = execFileSync("readelf", ["-n", kernel!.vmlinux], { encoding: "utf8" });
    const typeHex = XEN_ELFNOTE_PHYS32_ENTRY.toString(16).padStart(8, "0");
    assert.match(notes, new RegExp(`Xen\\s+0x[0-9a-f]+\\s+Unknown note type: \\(0x${typeHex}\\)`));
  });

  it("has a bzImage in the x86 boot protocol format", () => {
    const image = readFileSync(kernel!.bzImage);
    // Documentation/x86/boot.rst: boot_flag 0xAA55 at 0x1FE, header magic "HdrS" at 0x202.
    assert.equal(image.readUInt16LE(0x1fe), 0xaa55);
    assert.equal(image.toString("latin1", 0x202, 0x206), "HdrS");
  });

  it("was configured with every setting of the fragment", () => {
    const missing = missingConfigSettings(readFileSync(KERNEL_CONFIG_FRAGMENT, "utf8"), readFileSync(kernel!.config, "utf8"));
    assert.deepEqual(missing, []);
  });

  it("has a no-acpi sibling built without ACPI, with every other setting of the fragment", async () => {
    // Also prepared by scripts/run-tests.mjs.
    const noAcpi = await buildKernel({ variant: "no-acpi" });
    assert.notEqual(noAcpi.cacheKey, kernel!.cacheKey);
    const config = readFileSync(noAcpi.config, "utf8");
    assert.equal(parseKernelConfig(config).get("CONFIG_ACPI") ?? "n", "n");
    const fragments = kernelConfigFragments("no-acpi").map((f) => readFileSync(f, "utf8")).join("\n");
    assert.deepEqual(missingConfigSettings(fragments, config), []);
  });
});
