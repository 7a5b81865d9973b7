/**
 * Identity page tables for the 64-bit entry. boot.rst "64-bit Boot Protocol"
 * requires the kernel (setup_header.init_size from its load address), the
 * zero page and the command line to be identity mapped; flint maps the whole
 * first 4 GiB with 2 MiB pages (supported by every x86-64 CPU, unlike 1 GiB
 * pages), which covers all of them wherever they are below 4 GiB.
 *
 *   PML4_START   PML4: entry 0 -> PDPT
 *   PDPTE_START  PDPT: entries 0..3 -> the four page directories
 *   PDE_START    4 page directories, 512 entries each, 2 MiB pages
 *
 * Entry format: Intel SDM vol. 3, §4.5 "4-Level Paging", Tables 4-15..4-18.
 */
import type { GuestMemory } from "../../memory/guest-memory.js";
import { GiB, MiB, PDE_START, PDPTE_START, PML4_START } from "./layout.js";

/** Page-table entry bit: present (SDM vol. 3, Table 4-15 ff.). */
export const PTE_PRESENT = 1n << 0n;
/** Page-table entry bit: writable. */
export const PTE_RW = 1n << 1n;
/** In a page-directory entry: maps a 2 MiB page instead of pointing to a page table. */
export const PTE_PS = 1n << 7n;

/** Bytes in one page-table page. */
export const PAGE_TABLE_BYTES = 4096;
/** Entries in one page-table page (8 bytes each). */
export const PAGE_TABLE_ENTRIES = 512;
/** Size of a page mapped by one page-directory entry. */
export const LARGE_PAGE_BYTES = 2 * MiB;
/** How much of guest-physical space the boot page tables identity-map. */
export const IDENTITY_MAPPED_BYTES = 4 * GiB;

/** Number of page directories needed (one per GiB). */
const PD_COUNT = IDENTITY_MAPPED_BYTES / GiB;

/** The first byte after the boot page tables. */
export const PAGE_TABLES_END = PDE_START + PD_COUNT * PAGE_TABLE_BYTES;

/**
 * Writes the identity page tables for [0, IDENTITY_MAPPED_BYTES) and returns
 * the CR3 value that selects them.
 */
export function writeIdentityPageTables(mem: GuestMemory): { cr3: bigint } {
  mem.fill(PML4_START, PAGE_TABLE_BYTES, 0);
  mem.fill(PDPTE_START, PAGE_TABLE_BYTES, 0);
  mem.writeU64(PML4_START, BigInt(PDPTE_START) | PTE_PRESENT | PTE_RW);
  for (let pd = 0; pd < PD_COUNT; pd++) {
    const pdAddress = PDE_START + pd * PAGE_TABLE_BYTES;
    mem.writeU64(PDPTE_START + pd * 8, BigInt(pdAddress) | PTE_PRESENT | PTE_RW);
    for (let i = 0; i < PAGE_TABLE_ENTRIES; i++) {
      const physical = BigInt(pd * PAGE_TABLE_ENTRIES + i) * BigInt(LARGE_PAGE_BYTES);
      mem.writeU64(pdAddress + i * 8, physical | PTE_PRESENT | PTE_RW | PTE_PS);
    }
  }
  return { cr3: BigInt(PML4_START) };
}
