/**
 * How a virtio-vsock device is attached, and why attaching can fail. Kept
 * apart from the device so that the CLI (and the listener in unix.ts) can use
 * it without loading the device.
 */

/**
 * The guest CIDs flint's own CLI takes (0-2 are reserved, 0xffffffff is
 * VMADDR_CID_ANY). The device itself takes any 32-bit CID, as Firecracker
 * does: its API clients may set a reserved one (firecracker-containerd sends 0).
 */
export const VSOCK_MIN_GUEST_CID = 3;
export const VSOCK_MAX_GUEST_CID = 0xffff_fffe;

/** How to attach a vsock device (JSON-serialisable: it is posted to the device thread). */
export interface VsockOptions {
  /** The guest's context id (any 32-bit value; see VSOCK_MIN_GUEST_CID). */
  cid: number;
  /** Path of the Unix socket flint listens on; guest connections to port P go to `${uds}_${P}`. */
  uds: string;
}

/** Why a vsock device could not be attached. */
export class VsockError extends Error {
  readonly code: "EVSOCKCONFIG" | "EVSOCKBIND";
  constructor(code: VsockError["code"], message: string) {
    super(message);
    this.name = "VsockError";
    this.code = code;
  }
}

/** Throws VsockError "EVSOCKCONFIG" unless `cid` fits the device's 32-bit guest_cid. */
export function checkGuestCid(cid: number): void {
  if (!Number.isInteger(cid) || cid < 0 || cid > 0xffff_ffff) {
    throw new VsockError("EVSOCKCONFIG", `Cannot attach vsock: cid ${cid} is not a 32-bit unsigned integer`);
  }
}
