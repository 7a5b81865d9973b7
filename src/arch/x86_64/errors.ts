/**
 * The error class of flint's x86-64 firmware and CPU-state builders (MP table,
 * ACPI tables, AML, page tables, e820): each failure carries a stable `code`.
 */

/** Why an x86-64 firmware table or boot structure could not be built. */
export class ArchError extends Error {
  /**
   * - ETOOMANYCPUS: the vCPU count is outside what the MP/ACPI tables can describe
   * - ENOTABLESPACE: the tables do not fit in their fixed guest area
   * - EAMLNAME: an invalid ACPI name segment or path was given to the AML encoder
   * - EAMLVALUE: a value does not fit its AML encoding (e.g. a resource field)
   * - EMEMLAYOUT: guest memory does not cover the fixed low-memory areas
   */
  readonly code: "ETOOMANYCPUS" | "ENOTABLESPACE" | "EAMLNAME" | "EAMLVALUE" | "EMEMLAYOUT";
  constructor(code: ArchError["code"], message: string) {
    super(message);
    this.name = "ArchError";
    this.code = code;
  }
}

/** Formats a guest address the way messages show it. */
export function hex(x: number | bigint): string {
  return `0x${x.toString(16)}`;
}
