/**
 * How a virtio-vsock device is attached, and why attaching can fail. Kept
 * apart from the device so that the CLI (and the listener in unix.ts) can use
 * it without loading the device.
 */

/** Smallest and largest guest CID (0-2 are reserved, 0xffffffff is VMADDR_CID_ANY). */
export const VSOCK_MIN_GUEST_CID = 3;
export const VSOCK_MAX_GUEST_CID = 0xffff_fffe;

/** How to attach a vsock device (JSON-serialisable: it is posted to the device thread). */
export interface VsockOptions {
  /** The guest's context id (3 .. 2^32-2). */
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

/** Throws VsockError "EVSOCKCONFIG" unless `cid` is a usable guest CID. */
export function checkGuestCid(cid: number): void {
  if (!Number.isInteger(cid) || cid < VSOCK_MIN_GUEST_CID || cid > VSOCK_MAX_GUEST_CID) {
    throw new VsockError("EVSOCKCONFIG", `Cannot attach vsock: cid ${cid} is outside ${VSOCK_MIN_GUEST_CID}..${VSOCK_MAX_GUEST_CID}`);
  }
}
