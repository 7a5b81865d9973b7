/*
 * serial-flood: a minimal PVH "kernel" that writes to the COM1 UART's
 * transmit register from ring 3 forever, one byte per `outb`, without
 * polling LSR: a guest whose console output never ends, to test and time
 * how flint stops a VM whose console reader has stalled.
 *
 * Boot as exit-loop.S (PVH entry in 32-bit protected mode, then down to
 * ring 3 with pvh-ring3.h). The port comes from serial-flood-protocol.h,
 * written from src/guest/programs/testing/serial-flood.ts.
 */
#include <asm/processor-flags.h>
#include "flint-abi.h"
#include "serial-flood-protocol.h"
#include "pvh-ring3.h"

	.code32
	.text

	pvh_enter_ring3 ring3_main, user_stack_top

ring3_main:
	movw $SERIAL_FLOOD_PORT, %dx
	movb $'a', %al
1:	outb %al, %dx
	incb %al
	cmpb $'z' + 1, %al
	jne 1b
	movb $'\n', %al
	outb %al, %dx
	movb $'a', %al
	jmp 1b

	.data
	pvh_ring3_data serial_flood_tss

	.balign 16
	.fill 64, 1, 0
user_stack_top:

	pvh_entry_note
