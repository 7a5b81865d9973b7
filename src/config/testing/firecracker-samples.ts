/**
 * Firecracker's own sample config files (tests/framework/vm_config.json and
 * vm_config_network.json in its tree), as data: the same keys and values,
 * with the kernel and rootfs paths replaced by placeholders a test fills in.
 */

/** vm_config.json: one root drive, 2 vCPUs, 1 GiB, every other resource null or empty. */
export function vmConfigJson(kernel: string, rootfs: string): string {
  return JSON.stringify({
    "boot-source": { kernel_image_path: kernel, boot_args: "console=ttyS0 reboot=k panic=1", initrd_path: null },
    "drives": [{
      drive_id: "rootfs", partuuid: null, is_root_device: true, cache_type: "Unsafe", is_read_only: false,
      path_on_host: rootfs, io_engine: "Sync", rate_limiter: null, socket: null,
    }],
    "machine-config": { vcpu_count: 2, mem_size_mib: 1024, smt: false, track_dirty_pages: false, huge_pages: "None" },
    "cpu-config": null,
    "balloon": null,
    "network-interfaces": [],
    "vsock": null,
    "logger": null,
    "metrics": null,
    "mmds-config": null,
    "entropy": null,
    "pmem": [],
    "memory-hotplug": null,
  });
}

/** vm_config_network.json: as above (no huge_pages, pmem, memory-hotplug) plus one interface on tap0. */
export function vmConfigNetworkJson(kernel: string, rootfs: string): string {
  return JSON.stringify({
    "boot-source": { kernel_image_path: kernel, boot_args: "console=ttyS0 reboot=k panic=1", initrd_path: null },
    "drives": [{
      drive_id: "rootfs", path_on_host: rootfs, is_root_device: true, partuuid: null, is_read_only: false,
      cache_type: "Unsafe", io_engine: "Sync", rate_limiter: null,
    }],
    "machine-config": { vcpu_count: 2, mem_size_mib: 1024, smt: false, track_dirty_pages: false },
    "cpu-config": null,
    "balloon": null,
    "network-interfaces": [{ iface_id: "eth0", host_dev_name: "tap0", guest_mac: "06:00:c0:a8:00:02", rx_rate_limiter: null, tx_rate_limiter: null }],
    "vsock": null,
    "logger": null,
    "metrics": null,
    "mmds-config": null,
    "entropy": null,
  });
}
