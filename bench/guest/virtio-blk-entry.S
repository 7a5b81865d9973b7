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
 * (VBLK_END_*, src/bench/virtio-blk-guest.ts), which goes to the end-marker
 * port VBLK_END_PORT (QEMU's isa-debug-exit, flint's --debug-exit); then a
 * `pause` loop, as `hlt` faults at CPL 3.
 */
#include <asm/processor-flags.h>
#include "flint-abi.h"		/* MSR_IA32_SYSENTER_CS, XEN_ELFNOTE_PHYS32_ENTRY */
#include "vblk-protocol.h"	/* VBLK_END_PORT, VBLK_STACK_BYTES */

/* Selectors (index << 3 | RPL); sysexit takes the user ones at KERNEL_CS + 16 / + 24. */
#define KERNEL_CS		0x08
#define KERNEL_DS		0x10
#define USER_CS			((KERNEL_CS + 16) | 3)
#define USER_DS			((KERNEL_CS + 24) | 3)
#define TSS_SEL			0x28

/* Descriptor access bytes (Intel SDM vol. 3A, 3.4.5 and 7.2.2). */
#define ACCESS_CODE(dpl)	(0x80 | ((dpl) << 5) | 0x10 | 0xa)	/* execute/read */
#define ACCESS_DATA(dpl)	(0x80 | ((dpl) << 5) | 0x10 | 0x2)	/* read/write */
#define ACCESS_TSS32		(0x80 | 0x9)				/* available 32-bit TSS */
/* Flags nibble: G (4 KiB granularity) 0x8 | D/B (32-bit) 0x4. */
#define FLAGS_FLAT32		0xc

/* 32-bit TSS (SDM vol. 3A, 7.2.1). */
#define TSS32_SIZE		104
#define TSS32_ESP0		4
#define TSS32_SS0		8
#define TSS32_IOMAP_BASE	102

.macro flat_descriptor access
	.word 0xffff			/* limit 15:0 */
	.word 0				/* base 15:0 */
	.byte 0				/* base 23:16 */
	.byte \access
	.byte (FLAGS_FLAT32 << 4) | 0xf	/* flags, limit 19:16 */
	.byte 0				/* base 31:24 */
.endm

	.code32
	.section .text.entry, "ax"

/* PVH entry, ring 0; EBX = struct hvm_start_info, passed on to ring 3. */
	.globl pvh_start
pvh_start:
	lgdt gdt_pointer
	movw $TSS_SEL, %ax
	ltr %ax
	movl $MSR_IA32_SYSENTER_CS, %ecx
	movl $KERNEL_CS, %eax
	xorl %edx, %edx
	wrmsr
	movl $ring0_eflags, %esp
	popfl				/* IOPL = 3, IF = 0 */
	movl $ring3_entry, %edx		/* EIP */
	movl $vblk_stack_top, %ecx	/* ESP */
	sysexit

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
	.balign 8
gdt:
	.quad 0				/* null */
	flat_descriptor ACCESS_CODE(0)	/* KERNEL_CS */
	flat_descriptor ACCESS_DATA(0)	/* KERNEL_DS */
	flat_descriptor ACCESS_CODE(3)	/* USER_CS */
	flat_descriptor ACCESS_DATA(3)	/* USER_DS */
	/* TSS_SEL: the linker script splits the TSS address. */
	.word TSS32_SIZE - 1		/* limit 15:0 */
	.word vblk_tss_base_15_0
	.byte vblk_tss_base_23_16
	.byte ACCESS_TSS32
	.byte 0				/* byte granularity, limit 19:16 = 0 */
	.byte vblk_tss_base_31_24
gdt_end:

	.balign 4
	.word 0				/* align the base below to 4 */
gdt_pointer:
	.word gdt_end - gdt - 1
	.long gdt

	/* The ring-0 stack: only an exception taken in ring 3 would use it. */
	.balign 16
	.fill 64, 1, 0
kernel_stack_top:

	.balign 4
ring0_eflags:
	.long X86_EFLAGS_FIXED | X86_EFLAGS_IOPL	/* IF = 0 */

	.balign 4
	.globl vblk_tss
vblk_tss:
	.org vblk_tss + TSS32_ESP0
	.long kernel_stack_top
	.org vblk_tss + TSS32_SS0
	.long KERNEL_DS
	.org vblk_tss + TSS32_IOMAP_BASE
	.word TSS32_SIZE		/* past the limit: no I/O bitmap, IOPL rules */

	/* The C driver's stack (zeroed bss). */
	.bss
	.balign 16
	.fill VBLK_STACK_BYTES, 1, 0
vblk_stack_top:

/*
 * The PVH entry note: 8 bytes, as Linux's vmlinux gives it; 4-aligned, as
 * QEMU finds the descriptor by aligning to the segment's p_align.
 */
	.section .note.Xen, "a", @note
	.balign 4
	.long 2f - 1f			/* n_namesz */
	.long 4f - 3f			/* n_descsz */
	.long XEN_ELFNOTE_PHYS32_ENTRY	/* n_type */
1:	.asciz "Xen"
2:	.balign 4
3:	.long pvh_start			/* a .quad, written as two words: ELF32 has no 64-bit relocation */
	.long 0
4:

	.section .note.GNU-stack, "", @progbits	/* no executable stack wanted */
