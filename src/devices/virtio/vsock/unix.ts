/**
 * The host side of virtio-vsock on Unix sockets, in the convention microVM
 * users know from Firecracker: flint listens on `uds` for host-initiated
 * connections ("CONNECT <port>\n"), and a guest connection to port P goes to
 * the Unix socket "<uds>_<P>". Every socket here is non-blocking.
 */
import { lstatSync, unlinkSync } from "node:fs";
import { AF_UNIX, EAGAIN, ECONNREFUSED, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM } from "../../../linux/abi.generated.js";
import { errnoName, sys } from "../../../sys/native.js";
import { VsockError } from "./config.js";

/** Backlog of the listener: host clients beyond it wait in connect(2) or get EAGAIN. */
const LISTEN_BACKLOG = 64;

/** A non-blocking listening Unix socket at `path`; a stale socket file (nobody listening) is replaced. */
export function listenUnix(path: string): number {
  const fail = (why: string): never => { throw new VsockError("EVSOCKBIND", `Cannot attach vsock: socket '${path}' ${why}`); };
  const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail(`cannot be created (${errnoName(-fd)})`);
  let r = sys.bindUnix(fd, path);
  if (r < 0 && isSocketFile(path) && probeUnix(path) === "stale") {
    try { unlinkSync(path); } catch { /* raced away */ }
    r = sys.bindUnix(fd, path);
  }
  if (r >= 0) r = sys.listen(fd, LISTEN_BACKLOG);
  if (r < 0) {
    sys.close(fd);
    const name = errnoName(-r);
    fail(name === "EADDRINUSE" ? (isSocketFile(path) ? "is in use by a listening socket" : "exists and is not a socket")
      : name === "ENOENT" ? "cannot be created: its directory does not exist"
      : name === "ENAMETOOLONG" ? "is too long for a Unix socket address" : `cannot be bound (${name})`);
  }
  return fd;
}

/**
 * A non-blocking connection to the host service for guest port `port`
 * (`${uds}_${port}`), or a negative errno: refused, missing, or a full
 * backlog (-EAGAIN) all become OP_RST for the guest.
 */
export function connectService(uds: string, port: number): number {
  const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fd;
  const r = sys.connectUnix(fd, `${uds}_${port}`);
  if (r < 0) {
    sys.close(fd);
    return r;
  }
  return fd;
}

/** True when `path` is a socket file (never replace anything else). */
function isSocketFile(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

/** Whether something listens at `path`: "listening", "stale" (a socket file nobody listens on) or "none". */
export function probeUnix(path: string): "listening" | "stale" | "none" {
  const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return "none";
  const r = sys.connectUnix(fd, path);
  sys.close(fd);
  if (r === 0 || r === -EAGAIN) return "listening";
  return r === -ECONNREFUSED ? "stale" : "none";
}
