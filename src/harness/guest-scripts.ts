/**
 * Pieces of guest programs the end-to-end tests (src/e2e/) share: the start
 * of every guest /init and the AF_VSOCK client some guests run. Each test
 * still writes its own script around them; these only keep the common lines
 * in one place.
 */

/**
 * The addresses of the every-device scenario that more than one e2e test runs
 * (a guest on a TAP pinging the host, and a vsock echo through a host listener):
 * the host side (the TAP's address, the listener) and the guest's /init must agree.
 */
export const E2E_GUEST_NET = {
  mac: "06:00:ac:10:00:02",
  cid: 3,
  hostPort: 5678,
  hostIp: "172.16.0.1",
  guestIp: "172.16.0.2",
} as const;

/** PATH for guests whose initramfs has the usual bin and sbin folders. */
export const GUEST_PATH_FULL = "/bin:/sbin:/usr/bin:/usr/sbin";

/**
 * The first lines of a guest /init (a busybox shell script): the shebang, PATH,
 * and /proc, /sys and /dev mounted. Ends with a newline; the caller goes on
 * with its own lines (usually `echo "flint-guest: booted"`, which
 * parseGuestReport looks for).
 */
export function initPrologue(path: string = GUEST_PATH_FULL): string {
  return `#!/bin/sh
export PATH=${path}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
`;
}

/**
 * /init lines that report the hardware RNG: which one backs /dev/hwrng
 * (`rng-current`) and 32 bytes read from it in hex (`hwrng`).
 */
export const HWRNG_REPORT_SH = `# virtio-rng
echo "flint-e2e: rng-current=$(cat /sys/class/misc/hw_random/rng_current)"
echo "flint-e2e: hwrng=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
`;

/** /init lines that bring lo and eth0 up, give eth0 `guestIp`/24 and report its MAC (`mac`). */
export function ethUpSh(guestIp: string): string {
  return `ip link set lo up
ip link set eth0 up
ip addr add ${guestIp}/24 dev eth0
echo "flint-e2e: mac=$(cat /sys/class/net/eth0/address)"
`;
}

/** What the guest's `vsock-connect` program does besides connecting and echoing. */
export interface VsockConnectOptions {
  /**
   * Before connecting, print the guest's own CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID
   * on /dev/vsock) as `flint-e2e: vsock-local-cid=N`.
   */
  reportLocalCid?: boolean;
  /** Print a usage line on a wrong argument count, and say which of socket() and connect() failed (else one perror("vsock")). */
  detailedErrors?: boolean;
}

/**
 * C source of `vsock-connect CID PORT MESSAGE`: connects over AF_VSOCK,
 * sends MESSAGE as a line and prints the line that comes back as
 * `flint-e2e: vsock-got=LINE` (compile with gcc -static).
 */
export function vsockConnectC(o: VsockConnectOptions = {}): string {
  const headers = [
    "stdio.h", "stdlib.h", ...(o.detailedErrors ? ["string.h"] : []), "unistd.h",
    ...(o.reportLocalCid ? ["fcntl.h", "sys/ioctl.h"] : []), "sys/socket.h", "linux/vm_sockets.h",
  ];
  const usage = o.detailedErrors ? `{ fprintf(stderr, "usage: vsock-connect CID PORT MESSAGE\\n"); return 2; }` : "return 2;";
  const localCid = o.reportLocalCid
    ? `  unsigned int cid = 0;
  int dev = open("/dev/vsock", O_RDONLY);
  if (dev >= 0 && ioctl(dev, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) == 0) printf("flint-e2e: vsock-local-cid=%u\\n", cid);
  fflush(stdout);
`
    : "";
  const connect = o.detailedErrors
    ? `  if (fd < 0) { perror("socket"); return 1; }
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("connect"); return 1; }`
    : `  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("vsock"); return 1; }`;
  return `
${headers.map((h) => `#include <${h}>`).join("\n")}

int main(int argc, char **argv) {
  if (argc != 4) ${usage}
${localCid}  struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = atoi(argv[1]), .svm_port = atoi(argv[2]) };
  int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
${connect}
  char out[300], line[300];
  int n = snprintf(out, sizeof out, "%s\\n", argv[3]);
  if (write(fd, out, n) != n) { perror("write"); return 1; }
  n = 0;
  while (n < (int)sizeof line - 1 && read(fd, line + n, 1) == 1 && line[n] != '\\n') n++;
  line[n] = 0;
  printf("flint-e2e: vsock-got=%s\\n", line);
  return 0;
}
`;
}

/**
 * /init lines that report how the root is mounted (`root_mount`: device,
 * mount point, type and options), how many virtio disks the guest has
 * (`disks`) and how many devices the virtio vsock driver drives
 * (`vsock_driver`: 1 for a VM with a vsock).
 */
export const ROOT_DISKS_VSOCK_REPORT_SH = `echo "flint-e2e: root_mount=$(grep ' / ' /proc/mounts | grep -v rootfs | tail -n 1 | cut -d ' ' -f 1-4)"
n=0; for b in /sys/block/vd*; do n=$((n + 1)); done
echo "flint-e2e: disks=$n"
echo "flint-e2e: vsock_driver=$(ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport 2>/dev/null | grep -c '^virtio')"
`;

/**
 * /init lines that wait (90 s at the most, a hang catcher) until /dev/`dev`
 * is no longer `sectors` long, as when its drive is given another backing
 * file (PATCH /drives: a config-change interrupt brings the new size), then
 * report its first `bytes` bytes, read past the page cache, as `key`.
 */
export function awaitDiskChangeSh(dev: string, sectors: number, key: string, bytes: number): string {
  return `i=0
while [ $i -lt 900 ] && [ "$(cat /sys/block/${dev}/size)" = "${sectors}" ]; do sleep 0.1; i=$((i + 1)); done
echo "flint-e2e: ${key}=$(dd if=/dev/${dev} bs=512 count=1 iflag=direct 2>/dev/null | head -c ${bytes})"
`;
}

/**
 * /sbin/init of the Kata end-to-end guests (a rootfs image with busybox and
 * no agent): reports its root, its disks and vsock driver and the size of
 * the first placeholder drive (vdb, `placeholder_size`), says `ready=1` (as
 * Kata's agent would say it is up), then waits for a container disk on vdb
 * and reports its first `markerBytes` bytes (`container_disk`), and idles.
 */
export function kataGuestInit(markerBytes: number): string {
  return `${initPrologue("/bin")}${ROOT_DISKS_VSOCK_REPORT_SH}echo "flint-e2e: placeholder_size=$(cat /sys/block/vdb/size)"
echo "flint-e2e: ready=1"
${awaitDiskChangeSh("vdb", 0, "container_disk", markerBytes)}while :; do sleep 1; done
`;
}
