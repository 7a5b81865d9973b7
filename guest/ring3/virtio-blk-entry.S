/*
 * virtio-blk-entry: the PVH entry of the ring-3 virtio-blk driver guest
 * (virtio-blk-driver.c). It does in ring 0 only what ring 3 cannot — load a
 * GDT and a TSS, set IOPL = 3 — and drops to ring 3, where the C driver runs
 * with flat 4 GiB DPL-3 segments and paging off: linear = guest-physical, so
 * the driver's ring and buffer addresses are the addresses the device sees,
 * and the virtio-mmio registers are plain loads and stores.
 *
 * Boot: the PVH direct boot ABI (xen/interface/hvm/start_info.h): the ELF
 * note XEN_ELFNOTE_PHYS32_ENTRY holds the 32-bit entry; the monitor enters
 * in 32-bit protected mode, paging off, interrupts off, EBX = physical
 * address of struct hvm_start_info. flint (`--boot pvh`) and QEMU
 * (`-M microvm -kernel`) boot it the same way.
 *
 * Ring 0 is a dozen instructions for the same reason as in exit-loop.S: on
 * some hosts guest ring 0 is emulated thousands of times slower than ring 3
 * runs, and the emulator lacks iret to an outer ring; sysexit works.
 *
 * In ring 3: vblk_main(start_info) runs the driver and returns the end code
 * (VBLK_END_*, src/guest/programs/virtio-blk-driver.ts), which goes to the
 * end-marker port VBLK_END_PORT (QEMU's isa-debug-exit, flint's
 * --debug-exit); then a `pause` loop, as `hlt` faults at CPL 3.
 */
#include <asm/processor-flags.h>
#include "flint-abi.h"		/* MSR_IA32_SYSENTER_CS, XEN_ELFNOTE_PHYS32_ENTRY */
#include "vblk-protocol.h"	/* VBLK_END_PORT, VBLK_STACK_BYTES */

#include "pvh-ring3.h"		/* selectors, GDT, TSS, the way down to ring 3 */

	.code32
	.section .text.entry, "ax"

/* PVH entry, ring 0 (pvh-ring3.h); EBX = struct hvm_start_info, passed on to ring 3. */
	pvh_enter_ring3 ring3_entry, vblk_stack_top

/* Ring 3 from here on. */
ring3_entry:
	movw $USER_DS, %ax		/* sysexit loaded CS and SS only */
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %fs
	movw %ax, %gs
	cld
	subl $12, %esp			/* the i386 psABI: ESP 16-aligned at the call */
	pushl %ebx
	call vblk_main
	outb %al, $VBLK_END_PORT
1:	pause
	jmp 1b

	.data
	pvh_ring3_data vblk_tss

	/* The C driver's stack (zeroed bss). */
	.bss
	.balign 16
	.fill VBLK_STACK_BYTES, 1, 0
vblk_stack_top:

	pvh_entry_note

	.section .note.GNU-stack, "", @progbits	/* no executable stack wanted */
