/** Why a KVM operation failed. `code` is stable; messages say what to do. */
export class KvmError extends Error {
  readonly code: "ENOKVM" | "EKVMACCESS" | "EKVMVERSION" | "EKVMCAP" | "EKVMIOCTL";
  /** The errno name behind an ioctl failure, when there is one. */
  readonly errno?: string;
  constructor(code: KvmError["code"], message: string, errno?: string) {
    super(message);
    this.name = "KvmError";
    this.code = code;
    this.errno = errno;
  }
}
