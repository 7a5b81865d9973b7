/**
 * The error class of the ring-3 guest programs' builders and protocols
 * (exit-loop, serial-flood, virtio-blk driver guest). `code` is stable:
 *   EPROGARG    a run the guest would refuse (bad mode, count, address, seed)
 *   EPROGBUILD  gcc or objcopy failed or is missing
 *   EPROGRUN    the guest's report is missing a value or has a bad one
 */
export class GuestProgramError extends Error {
  readonly code: "EPROGARG" | "EPROGBUILD" | "EPROGRUN";
  constructor(code: GuestProgramError["code"], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "GuestProgramError";
    this.code = code;
  }
}
