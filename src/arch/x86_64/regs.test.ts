import assert from "node:assert/strict";
import { test } from "node:test";
import { EFER_LMA, EFER_LME, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE } from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { BOOT_CS_SELECTOR, BOOT_DS_SELECTOR } from "./gdt.js";
import { BOOT_STACK_POINTER, MiB, PML4_START, PVH_INFO_START, ZERO_PAGE_START } from "./layout.js";
import { translate } from "./testing/page-walk.js";
import { setupLinux64Entry, setupPvhEntry } from "./regs.js";

function withMemory(fn: (mem: GuestMemory) => void): void {
  const mem = GuestMemory.create([{ guestBase: 0, size: 2 * MiB }]);
  try { fn(mem); } finally { mem.dispose(); }
}

test("the 64-bit Linux entry is long mode with paging, RSI at the zero page and IF clear", () => {
  withMemory((mem) => {
    const { regs, sregs } = setupLinux64Entry(mem, 0x1000000);
    assert.equal(regs.rip, 0x1000000n);
    assert.equal(regs.rsi, BigInt(ZERO_PAGE_START));
    assert.equal(regs.rsp, BigInt(BOOT_STACK_POINTER));
    assert.equal(regs.rbp, BigInt(BOOT_STACK_POINTER));
    assert.equal(regs.rflags, 2n);
    assert.ok(sregs.cr0! & BigInt(X86_CR0_PE) && sregs.cr0! & BigInt(X86_CR0_PG));
    assert.equal(sregs.cr4! & BigInt(X86_CR4_PAE), BigInt(X86_CR4_PAE));
    assert.equal(sregs.efer, BigInt(EFER_LME | EFER_LMA));
    assert.equal(sregs.cr3, BigInt(PML4_START));
    assert.equal(sregs.cs!.selector, BOOT_CS_SELECTOR);
    assert.equal(sregs.cs!.l, 1);
    for (const s of [sregs.ds!, sregs.es!, sregs.ss!, sregs.fs!, sregs.gs!]) assert.equal(s.selector, BOOT_DS_SELECTOR);
    assert.equal(translate(mem, sregs.cr3!, regs.rip), regs.rip);
  });
});

test("the PVH entry is 32-bit protected mode without paging and EBX at the start info", () => {
  withMemory((mem) => {
    const { regs, sregs } = setupPvhEntry(mem, 0x1000abc);
    assert.equal(regs.rip, 0x1000abcn);
    assert.equal(regs.rbx, BigInt(PVH_INFO_START));
    assert.equal(regs.rflags, 2n);
    assert.equal(sregs.cr0, BigInt(X86_CR0_PE));
    assert.equal(sregs.cr4, 0n);
    assert.equal(sregs.efer, 0n);
    assert.equal(sregs.cs!.db, 1);
    assert.equal(sregs.cs!.l, 0);
    assert.equal(sregs.ss!.db, 1);
    assert.equal(sregs.tr!.type, 0xb);
  });
});
