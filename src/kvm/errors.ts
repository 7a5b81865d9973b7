/**
 * Why a KVM operation failed. `code` is stable; messages say what to do.
 * EKVMSTATE: saved state does not fit what KVM takes here (a blob of the wrong
 * size, another vCPU's or chip's state, an unknown version); nothing of it
 * reached KVM.
 */
export class KvmError extends Error {
  readonly code: "ENOKVM" | "EKVMACCESS" | "EKVMVERSION" | "EKVMCAP" | "EKVMIOCTL" | "EKVMSTATE";
  /** The errno name behind an ioctl failure, when there is one. */
  readonly errno?: string;
  constructor(code: KvmError["code"], message: string, errno?: string) {
    super(message);
    this.name = "KvmError";
    this.code = code;
    this.errno = errno;
  }
}
