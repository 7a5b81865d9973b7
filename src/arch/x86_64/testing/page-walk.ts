/**
 * A software page walk over flint's boot page tables (paging.ts), for tests:
 * Intel SDM vol. 3, §4.5 "4-Level Paging", 2 MiB pages only.
 */
import type { GuestMemory } from "../../../memory/guest-memory.js";
import { LARGE_PAGE_BYTES, PTE_PRESENT, PTE_PS } from "../paging.js";

/**
 * Walks the tables the way the MMU does for a 2 MiB-page mapping and returns
 * the physical address `virtualAddress` translates to, or undefined when it
 * is not mapped. Tests use it to check the tables the boot paths write.
 */
export function translate(mem: GuestMemory, cr3: bigint, virtualAddress: bigint): bigint | undefined {
  const addrMask = 0x000f_ffff_ffff_f000n;
  const index = (shift: bigint): number => Number((virtualAddress >> shift) & 0x1ffn);
  const pml4e = mem.readU64(Number(cr3 & addrMask) + index(39n) * 8);
  if (!(pml4e & PTE_PRESENT)) return undefined;
  const pdpte = mem.readU64(Number(pml4e & addrMask) + index(30n) * 8);
  if (!(pdpte & PTE_PRESENT)) return undefined;
  const pde = mem.readU64(Number(pdpte & addrMask) + index(21n) * 8);
  if (!(pde & PTE_PRESENT) || !(pde & PTE_PS)) return undefined;
  return (pde & 0x000f_ffff_ffe0_0000n) | (virtualAddress & BigInt(LARGE_PAGE_BYTES - 1));
}
