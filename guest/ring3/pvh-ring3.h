/*
 * pvh-ring3.h: what the PVH guest programs (exit-loop.S, virtio-blk-entry.S)
 * share to go from the PVH entry in ring 0 down to ring 3 with as few ring-0
 * instructions as possible — on some hosts guest ring 0 is emulated
 * thousands of times slower than ring 3 runs.
 *
 * The way down is sysexit, not iret: KVM's instruction emulator
 * (arch/x86/kvm/emulate.c, em_iret) implements iret in real mode only, and
 * far returns to an outer privilege level not at all, so on a host that
 * emulates guest ring 0 both stop with an emulation failure. em_sysexit is
 * implemented (and sysexit is valid in 32-bit protected mode on Intel and
 * AMD alike). It takes CS = SYSENTER_CS + 16 and SS = SYSENTER_CS + 24 (SDM
 * vol. 2B, SYSEXIT), so the GDT is laid out around KERNEL_CS, and it leaves
 * EFLAGS alone, so popfl sets IOPL = 3 first.
 *
 * Ring 3 keeps flat 4 GiB DPL-3 segments with paging off: linear addresses
 * are guest-physical ones. The including file needs <asm/processor-flags.h>
 * and flint-abi.h (MSR_IA32_SYSENTER_*, XEN_ELFNOTE_PHYS32_ENTRY) first,
 * and its linker script must split the TSS address into
 * <tss>_base_15_0, _23_16 and _31_24 (gas cannot split a relocatable
 * address).
 */

/* Selectors (index << 3 | RPL) into the GDT below; sysexit takes the user ones at KERNEL_CS + 16 and + 24. */
#define KERNEL_CS		0x08
#define KERNEL_DS		0x10
#define USER_CS			((KERNEL_CS + 16) | 3)
#define USER_DS			((KERNEL_CS + 24) | 3)
#define TSS_SEL			0x28

/*
 * Descriptor access bytes (Intel SDM vol. 3A, 3.4.5 and 7.2.2):
 * present 0x80 | DPL << 5 | S (code/data) 0x10 | type.
 */
#define ACCESS_CODE(dpl)	(0x80 | ((dpl) << 5) | 0x10 | 0xa)	/* execute/read */
#define ACCESS_DATA(dpl)	(0x80 | ((dpl) << 5) | 0x10 | 0x2)	/* read/write */
#define ACCESS_TSS32		(0x80 | 0x9)				/* available 32-bit TSS */
/* Flags nibble: G (4 KiB granularity) 0x8 | D/B (32-bit) 0x4. */
#define FLAGS_FLAT32		0xc

/* 32-bit TSS (SDM vol. 3A, 7.2.1): ESP0 at 4, SS0 at 8, I/O map base at 102. */
#define TSS32_SIZE		104
#define TSS32_ESP0		4
#define TSS32_SS0		8
#define TSS32_IOMAP_BASE	102

/* A flat 4 GiB segment descriptor. */
.macro flat_descriptor access
	.word 0xffff			/* limit 15:0 */
	.word 0				/* base 15:0 */
	.byte 0				/* base 23:16 */
	.byte \access
	.byte (FLAGS_FLAT32 << 4) | 0xf	/* flags, limit 19:16 */
	.byte 0				/* base 31:24 */
.endm

/*
 * The PVH entry, ring 0, as the global symbol pvh_start: loads the GDT and
 * TSS below, sets IOPL = 3 (IF = 0) and sysexits to `entry` in ring 3 with
 * ESP = `stack`. EBX (struct hvm_start_info) is left for ring 3. With
 * `sysenter_entry`, a `sysenter` from ring 3 comes back to ring 0 there, on
 * the ring-0 stack (SDM vol. 2B, SYSENTER: EIP and ESP from their MSRs).
 */
.macro pvh_enter_ring3 entry, stack, sysenter_entry
	.globl pvh_start
pvh_start:
	lgdt gdt_pointer
	movw $TSS_SEL, %ax
	ltr %ax
	movl $MSR_IA32_SYSENTER_CS, %ecx
	movl $KERNEL_CS, %eax
	xorl %edx, %edx
	wrmsr
.ifnb \sysenter_entry
	movl $MSR_IA32_SYSENTER_EIP, %ecx
	movl $\sysenter_entry, %eax
	wrmsr
	movl $MSR_IA32_SYSENTER_ESP, %ecx
	movl $kernel_stack_top, %eax
	wrmsr
.endif
	movl $ring0_eflags, %esp
	popfl				/* IOPL = 3, IF = 0 */
	movl $\entry, %edx		/* EIP */
	movl $\stack, %ecx		/* ESP */
	sysexit
.endm

/*
 * Data for pvh_enter_ring3: the GDT (null, kernel code/data, user code/data,
 * the TSS `tss`), its pointer, a small ring-0 stack (only an exception taken
 * in ring 3 would use it), the EFLAGS image, and the TSS itself with no I/O
 * bitmap (its base past the limit: IOPL rules).
 */
.macro pvh_ring3_data tss
	.balign 8
gdt:
	.quad 0				/* null */
	flat_descriptor ACCESS_CODE(0)	/* KERNEL_CS */
	flat_descriptor ACCESS_DATA(0)	/* KERNEL_DS */
	flat_descriptor ACCESS_CODE(3)	/* USER_CS */
	flat_descriptor ACCESS_DATA(3)	/* USER_DS */
	.word TSS32_SIZE - 1		/* TSS_SEL: limit 15:0 */
	.word \tss\()_base_15_0
	.byte \tss\()_base_23_16
	.byte ACCESS_TSS32
	.byte 0				/* byte granularity, limit 19:16 = 0 */
	.byte \tss\()_base_31_24
gdt_end:

	.balign 4
	.word 0				/* align the base below to 4 */
gdt_pointer:
	.word gdt_end - gdt - 1
	.long gdt

	.balign 16
	.fill 64, 1, 0
kernel_stack_top:

	.balign 4
ring0_eflags:
	.long X86_EFLAGS_FIXED | X86_EFLAGS_IOPL	/* IF = 0 */

	.balign 4
	.globl \tss
\tss:					/* .org pads with zeros */
	.org \tss + TSS32_ESP0
	.long kernel_stack_top
	.org \tss + TSS32_SS0
	.long KERNEL_DS
	.org \tss + TSS32_IOMAP_BASE
	.word TSS32_SIZE
.endm

/*
 * The PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): 8 bytes, as Linux's
 * vmlinux gives it, written as two words so that ELF32 objects need no
 * 64-bit relocation; 4-aligned, as QEMU finds the descriptor by aligning
 * the name size to the segment's p_align.
 */
.macro pvh_entry_note
	.pushsection .note.Xen, "a", @note
	.balign 4
	.long 2f - 1f			/* n_namesz */
	.long 4f - 3f			/* n_descsz */
	.long XEN_ELFNOTE_PHYS32_ENTRY	/* n_type */
1:	.asciz "Xen"
2:	.balign 4
3:	.long pvh_start
	.long 0
4:
	.popsection
.endm
