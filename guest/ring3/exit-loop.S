/*
 * exit-loop: a minimal PVH "kernel" that makes a given number of VM exits
 * from ring 3, for benchmarking a monitor's exit handling.
 *
 * Boot: the PVH direct boot ABI (xen/interface/hvm/start_info.h and Xen's
 * docs/misc/pvh.pandoc). The ELF note `Xen`/XEN_ELFNOTE_PHYS32_ENTRY holds
 * the 32-bit entry point (8 bytes, as in Linux's vmlinux); the single
 * PT_LOAD segment sits at physical 1 MiB. The monitor enters in 32-bit
 * protected mode with flat CS/DS/SS, paging off, interrupts off, and
 * EBX = physical address of struct hvm_start_info.
 *
 * Command line (hvm_start_info.cmdline_paddr): `mode=pio|mmio count=N
 * [hello] [halt]`, N decimal, 0 <= N < 2^31; other words are ignored.
 *
 * Protocol, all from ring 3 (CPL 3, EFLAGS.IOPL = 3, IF = 0, paging off):
 *   0. with `hello`: one byte written to COM1's transmit register (port
 *      0x3f8), the guest's first output, right after the command line is
 *      parsed (before it is checked): a monitor with a serial console shows
 *      it, so process start to this byte is start to first guest
 *      instruction, observed the same way under every monitor
 *   1. one byte written to port 0xf0                     start marker
 *   2. N exits:
 *        mode=pio:  `outb` to port 0x80
 *        mode=mmio: a 4-byte write to physical 0xd0000800 (must be
 *                   outside guest RAM, so each write is a KVM_EXIT_MMIO)
 *   3. one byte written to port 0xf4                     end marker
 *      value 0 = done; 1 = bad start info magic; 2 = bad command line
 *      (then without a start marker). Port 0xf4 is where QEMU's
 *      isa-debug-exit is put: value v makes QEMU exit with status 2v+1.
 *   4. a `pause` loop forever (`hlt` would fault at CPL 3); with the word
 *      `halt`, a `sysenter` back to ring 0 and `hlt` there with IF = 0
 *      instead, so that a guest kept running (memory and multi-VM
 *      benchmarks) sleeps in the host kernel rather than spinning a core.
 * A monitor times the run from the start marker to the end marker. The
 * numbers above are defined once, in src/guest/programs/exit-loop.ts.
 *
 * Ring 0 is kept to a dozen instructions (GDT, TSS, IOPL, sysexit) because
 * on some hosts guest ring-0 code is emulated thousands of times slower
 * than ring-3 code runs; everything else, including the command line
 * parsing, runs in ring 3, where flat DPL-3 segments with paging off still
 * reach all of physical memory.
 */
#include <asm/processor-flags.h>
/*
 * Constants from kernel-internal headers (xen/interface/elfnote.h,
 * xen/interface/hvm/start_info.h, asm/msr-index.h), which no package
 * installs: src/guest/programs/c-header.ts writes them from flint's
 * generated ABI file (src/linux/abi.generated.ts) under their Linux names,
 * and struct offsets as hvm_start_info_<field>.
 */
#include "flint-abi.h"
/*
 * The ports, address and end-marker values of the protocol above, as
 * EXIT_LOOP_*: defined once, in src/guest/programs/exit-loop.ts.
 */
#include "exit-loop-protocol.h"

/* Modes, as parsed into %ebp. */
#define MODE_NONE		0
#define MODE_PIO		1
#define MODE_MMIO		2

#include "pvh-ring3.h"		/* selectors, GDT, TSS, the way down to ring 3 */

	.code32
	.text

/* PVH entry, ring 0 (pvh-ring3.h). EBX = struct hvm_start_info, which ring 3 reads. */
	pvh_enter_ring3 ring3_main, user_stack_top, ring0_halt

/* Ring 0 again, after the end marker with `halt` (sysenter): sleep for good. */
ring0_halt:
	hlt
	jmp ring0_halt

/* Ring 3 from here on. */
ring3_main:
	movw $USER_DS, %ax		/* DS/ES still hold ring-0 selectors */
	movw %ax, %ds
	movw %ax, %es

	cmpl $XEN_HVM_START_MAGIC_VALUE, hvm_start_info_magic(%ebx)
	jne bad_magic
	movl hvm_start_info_cmdline_paddr(%ebx), %esi
	cmpl $0, hvm_start_info_cmdline_paddr + 4(%ebx)
	jne bad_cmdline			/* above 4 GiB: unreachable here */
	testl %esi, %esi
	jz bad_cmdline

	/* Parse: %ebp = mode, %ecx = count, %ebx = 1 once count= was seen; hello_flag, halt_flag = 1 once those words were. */
	movl $MODE_NONE, %ebp
	xorl %ecx, %ecx
	xorl %ebx, %ebx
parse_word:
	movb (%esi), %al
	testb %al, %al
	jz parse_done
	cmpb $' ', %al
	jne 1f
	incl %esi
	jmp parse_word
1:	movl $word_mode, %edi
	call skip_prefix
	jz 2f
	movl $word_pio, %edi
	call skip_prefix
	jz 1f
	movl $MODE_PIO, %ebp
	jmp end_of_word
1:	movl $word_mmio, %edi
	call skip_prefix
	jz bad_cmdline
	movl $MODE_MMIO, %ebp
	jmp end_of_word
2:	movl $word_count, %edi
	call skip_prefix
	jnz 4f
	movl $word_hello, %edi
	call skip_prefix
	jz 5f
	movl $1, hello_flag
	jmp end_of_word
5:	movl $word_halt, %edi
	call skip_prefix
	jz skip_word
	movl $1, halt_flag
	jmp end_of_word
4:	movl $1, %ebx
	movzbl (%esi), %eax		/* at least one digit */
	subl $'0', %eax
	cmpl $9, %eax
	ja bad_cmdline
3:	movzbl (%esi), %eax
	subl $'0', %eax
	cmpl $9, %eax
	ja end_of_word
	imull $10, %ecx, %ecx
	jo bad_cmdline
	addl %eax, %ecx
	jo bad_cmdline
	incl %esi
	jmp 3b
end_of_word:				/* a value must end at a space or NUL */
	movb (%esi), %al
	testb %al, %al
	jz parse_done
	cmpb $' ', %al
	jne bad_cmdline
	jmp parse_word
skip_word:				/* ignore words we do not know */
	movb (%esi), %al
	testb %al, %al
	jz parse_done
	cmpb $' ', %al
	je parse_word
	incl %esi
	jmp skip_word
parse_done:
	cmpl $0, hello_flag
	je 1f
	movw $EXIT_LOOP_HELLO_PORT, %dx
	movb $EXIT_LOOP_HELLO_BYTE, %al
	outb %al, %dx
1:	testl %ebx, %ebx
	jz bad_cmdline
	cmpl $MODE_PIO, %ebp
	je pio_loop
	cmpl $MODE_MMIO, %ebp
	je mmio_loop
	jmp bad_cmdline

pio_loop:
	outb %al, $EXIT_LOOP_START_MARKER_PORT
	testl %ecx, %ecx
	jz done
1:	outb %al, $EXIT_LOOP_PIO_EXIT_PORT
	decl %ecx
	jnz 1b
	jmp done

mmio_loop:
	movl $EXIT_LOOP_MMIO_EXIT_ADDR, %edi
	outb %al, $EXIT_LOOP_START_MARKER_PORT
	testl %ecx, %ecx
	jz done
1:	movl %ecx, (%edi)
	decl %ecx
	jnz 1b

done:
	movb $EXIT_LOOP_END_OK, %al
	jmp end
bad_magic:
	movb $EXIT_LOOP_END_BAD_MAGIC, %al
	jmp end
bad_cmdline:
	movb $EXIT_LOOP_END_BAD_CMDLINE, %al
end:
	outb %al, $EXIT_LOOP_END_MARKER_PORT
	cmpl $0, halt_flag
	je 1f
	sysenter			/* to ring0_halt */
1:	pause
	jmp 1b

/*
 * skip_prefix: if the string at %esi starts with the NUL-terminated word at
 * %edi, moves %esi past it and returns ZF=0; otherwise returns ZF=1 with %esi
 * unchanged. Clobbers %eax, %edx, %edi.
 */
skip_prefix:
	movl %esi, %edx
1:	movb (%edi), %al
	testb %al, %al
	jz 2f
	cmpb (%edx), %al
	jne 3f
	incl %edx
	incl %edi
	jmp 1b
2:	movl %edx, %esi
	orl $1, %eax			/* ZF = 0: matched */
	ret
3:	xorl %eax, %eax			/* ZF = 1: no match */
	ret

	.data
	pvh_ring3_data exit_loop_tss

	/* The ring-3 stack: skip_prefix's return addresses. */
	.balign 16
	.fill 64, 1, 0
user_stack_top:

word_mode:	.asciz "mode="
word_count:	.asciz "count="
word_pio:	.asciz "pio"
word_mmio:	.asciz "mmio"
word_hello:	.asciz "hello"
word_halt:	.asciz "halt"

	.balign 4
hello_flag:	.long 0
halt_flag:	.long 0

	pvh_entry_note
