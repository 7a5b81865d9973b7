/**
 * firecracker-go-sdk's Machine, replayed (machine.go, handlers.go,
 * command_builder.go, drives.go; facts only): NewMachine + Start with the
 * default handler list, and StopVMM. Shared by the client-flow test on
 * /dev/kvm and the nested end-to-end test with real Linux.
 */
import assert from "node:assert/strict";
import { existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { ClientSession, pollUntil, startVmm, waitExit, type VmmProcess } from "./client-flows.js";

/** What a go-sdk user puts in firecracker.Config (the parts these flows use). */
export interface GoSdkConfig {
  /** Config.VMID (the SDK makes a UUID when empty). */
  vmid: string;
  kernelImagePath: string;
  kernelArgs: string;
  vcpuCount: number;
  memSizeMib: number;
  /** DrivesBuilder: extra drives first ("0", "1", ...), the root drive ("root_drive") last. */
  extraDrives: { path: string; readOnly: boolean }[];
  rootDrive: string;
  vsock?: { id: string; path: string; cid: number };
  /** Hang catcher for waitForSocket (the SDK's default init timeout is 3 s; here generous). */
  startLimitMs: number;
}

/** A started Machine: its process and its API session. */
export interface GoSdkMachine {
  vmm: VmmProcess;
  s: ClientSession;
  sock: string;
}

/** NewMachine + Start: exec `bin --api-sock <work>/firecracker.sock --id VMID --no-seccomp`, then the default handlers and InstanceStart. */
export async function goSdkStart(bin: string, work: string, cfg: GoSdkConfig): Promise<GoSdkMachine> {
  const sock = join(work, "firecracker.sock");
  // StartVMM: the default command builder; Seccomp.Enabled is false unless set, hence --no-seccomp.
  const vmm = startVmm(bin, ["--api-sock", sock, "--id", cfg.vmid, "--no-seccomp"], { stdout: "pipe", stderr: "pipe" });
  const s = new ClientSession(sock, "go-swagger");
  // waitForSocket: every 10 ms, the socket file, then GET /machine-config must succeed (a 200 with its model).
  const up = await pollUntil(vmm, 10, cfg.startLimitMs, async () => existsSync(sock) && (await s.probe("GET", "/machine-config")).status === 200);
  assert.ok(up, `go-sdk's waitForSocket: the socket and GET /machine-config 200; stderr: ${vmm.stderr()}`);
  // CreateLogFilesHandler and BootstrapLoggingHandler: nothing without a log or metrics path.
  // CreateMachineHandler: PUT (the model omits an empty cpu_template and unset track_dirty_pages), then refreshMachineConfiguration's GET.
  await s.call("PUT", "/machine-config", { mem_size_mib: cfg.memSizeMib, smt: false, vcpu_count: cfg.vcpuCount });
  await s.call("GET", "/machine-config");
  // CreateBootSourceHandler (an empty initrd_path is omitted by the model).
  await s.call("PUT", "/boot-source", { boot_args: cfg.kernelArgs, kernel_image_path: cfg.kernelImagePath });
  // AttachDrivesHandler, in DrivesBuilder.Build() order.
  const drives = [
    ...cfg.extraDrives.map((d, i) => ({ drive_id: String(i), is_read_only: d.readOnly, is_root_device: false, path_on_host: d.path })),
    { drive_id: "root_drive", is_read_only: false, is_root_device: true, path_on_host: cfg.rootDrive },
  ];
  for (const d of drives) await s.call("PUT", `/drives/${d.drive_id}`, d);
  // CreateNetworkInterfacesHandler: none. AddVsocksHandler (the model still carries the deprecated vsock_id).
  if (cfg.vsock) await s.call("PUT", "/vsock", { guest_cid: cfg.vsock.cid, uds_path: cfg.vsock.path, vsock_id: cfg.vsock.id });
  // ConfigMmdsHandler: nothing without an interface that allows MMDS. Then startInstance.
  await s.call("PUT", "/actions", { action_type: "InstanceStart" });
  return { vmm, s, sock };
}

/** StopVMM: SIGTERM, then wait for the process (hang catcher `limitMs`); the SDK's cleanup removes the socket. */
export async function goSdkStopVmm(m: GoSdkMachine, limitMs: number): Promise<void> {
  m.vmm.child.kill("SIGTERM");
  const end = await waitExit(m.vmm, limitMs);
  assert.ok(end, "the process ended after StopVMM's SIGTERM");
  rmSync(m.sock, { force: true });
}

/** The SDK's deadline for a call (firecracker.go: 500 ms, half for PUT /drives, none for actions), for reporting latencies. */
export function goSdkDeadlineMs(method: string, path: string): number | undefined {
  if (path === "/actions") return undefined;
  if (method === "PUT" && path.startsWith("/drives/")) return 250;
  return 500;
}
