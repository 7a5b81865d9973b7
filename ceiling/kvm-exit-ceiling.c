/*
 * kvm-exit-ceiling: the fastest a monitor can handle the exits of
 * guest/ring3/exit-loop.S, as a reference for flint's own exit path.
 *
 *   kvm-exit-ceiling GUEST_ELF pio|mmio COUNT [hello]
 *
 * One VM, one vCPU, no irqchip, no devices: load the ELF's PT_LOAD
 * segments, write a struct hvm_start_info and the command line
 * `mode=M count=N`, enter at the PVH entry point in 32-bit protected mode
 * (Xen's docs/misc/pvh.pandoc: flat CS/DS, CR0.PE, paging off, EBX = start
 * info), and run KVM_RUN in a loop that does nothing but count. Prints one
 * JSON line timed from the guest's start marker to its end marker:
 *   {"mode":..., "count":N, "exits":n, "seconds":t, "exitsPerSecond":r,
 *    "bootSeconds":b, "otherExits":o}
 * bootSeconds is from the first KVM_RUN to the start marker (ring-0 setup).
 * With `hello`, the command line gets the word `hello` too; bytes the guest
 * writes to COM1's transmit register (EXIT_LOOP_HELLO_PORT) go straight to
 * stdout as they come, ahead of the JSON line, like a serial console.
 * Exit status 0 on success, 1 on any failure (message on stderr).
 *
 * Built and run by src/bench/c-ceiling.ts, which generates the two headers
 * below from src/linux/abi.generated.ts and src/guest/programs/exit-loop.ts.
 */
#include <asm/processor-flags.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* XEN_*, MSR_* and hvm_start_info_<field> offsets, from flint's ABI file. */
#include "flint-abi.h"
/* EXIT_LOOP_* ports, address and end-marker values of the guest protocol. */
#include "exit-loop-protocol.h"

/* Guest physical layout: everything below the image at 1 MiB. */
#define GUEST_MEM_SIZE	(4u << 20)
#define BOOT_GDT_ADDR	0x500	/* boot GDT matching the sregs below */
#define START_INFO_ADDR	0x6000	/* struct hvm_start_info */
#define CMDLINE_ADDR	0x7000	/* NUL-terminated command line */
#define CMDLINE_MAX	0x1000

/* Boot GDT selectors, as Firecracker and QEMU's pvh.bin use them. */
#define BOOT_CS		0x08
#define BOOT_DS		0x10
#define BOOT_TSS	0x18

/* kvm_segment.type values (SDM vol. 3A, tables 3-1 and 3-2). */
#define SEG_TYPE_CODE_XRA	0xb	/* execute/read, accessed */
#define SEG_TYPE_DATA_RWA	0x3	/* read/write, accessed */
#define SEG_TYPE_TSS32_BUSY	0xb	/* system segment */

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("kvm-exit-ceiling: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static int xioctl(int fd, unsigned long request, void *arg, const char *what)
{
	int r = ioctl(fd, request, arg);
	if (r < 0)
		die("%s failed: %s", what, strerror(errno));
	return r;
}

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }	/* x86: little-endian */
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* A GDT entry in the layout of SDM vol. 3A, figure 3-8. */
static uint64_t gdt_entry(uint16_t flags, uint32_t base, uint32_t limit)
{
	return ((uint64_t)(base & 0xff000000u) << 32) | ((uint64_t)(base & 0x00ffffffu) << 16) |
	       ((uint64_t)(limit & 0x000f0000u) << 32) | (uint64_t)(limit & 0x0000ffffu) |
	       ((uint64_t)(flags & 0xf0ffu) << 40);
}

static struct kvm_segment segment(uint16_t selector, uint8_t type, uint8_t s, uint32_t limit, uint8_t g)
{
	struct kvm_segment seg = {
		.base = 0, .limit = limit, .selector = selector, .type = type, .present = 1,
		.dpl = 0, .db = s, .s = s, .l = 0, .g = g, .avl = 0, .unusable = 0,
	};
	return seg;
}

static uint8_t *read_file(const char *path, size_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		die("cannot read %s: %s", path, strerror(errno));
	uint8_t *buf = malloc(st.st_size ? st.st_size : 1);
	if (!buf)
		die("out of memory");
	size_t done = 0;
	while (done < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + done, st.st_size - done);
		if (n <= 0)
			die("cannot read %s: %s", path, n < 0 ? strerror(errno) : "short read");
		done += n;
	}
	close(fd);
	*size = done;
	return buf;
}

/* Returns the note's descriptor value if it is Xen's PHYS32_ENTRY, else 0. */
static uint64_t find_pvh_entry(const uint8_t *seg, uint64_t size, uint64_t align)
{
	uint64_t off = 0;
	if (align < 4)
		align = 4;
	while (off + sizeof(Elf64_Nhdr) <= size) {
		Elf64_Nhdr nh;
		memcpy(&nh, seg + off, sizeof nh);
		uint64_t name = off + sizeof nh;
		uint64_t desc = name + ((nh.n_namesz + align - 1) & ~(align - 1));
		uint64_t next = desc + ((nh.n_descsz + align - 1) & ~(align - 1));
		if (next > size || desc + nh.n_descsz > size)
			break;
		if (nh.n_type == XEN_ELFNOTE_PHYS32_ENTRY && nh.n_namesz == 4 && memcmp(seg + name, "Xen", 4) == 0) {
			if (nh.n_descsz == 4) {
				uint32_t v;
				memcpy(&v, seg + desc, 4);
				return v;
			}
			if (nh.n_descsz == 8) {
				uint64_t v;
				memcpy(&v, seg + desc, 8);
				return v;
			}
		}
		off = next;
	}
	return 0;
}

/* Copies the PT_LOAD segments into guest memory; returns the PVH entry. */
static uint32_t load_pvh_elf(const char *path, uint8_t *mem)
{
	size_t size;
	uint8_t *elf = read_file(path, &size);
	Elf64_Ehdr eh;
	if (size < sizeof eh)
		die("%s: not an ELF file", path);
	memcpy(&eh, elf, sizeof eh);
	if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh.e_machine != EM_X86_64 || eh.e_phentsize != sizeof(Elf64_Phdr))
		die("%s: not an x86-64 ELF64 file", path);
	if (eh.e_phoff > size || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > size - eh.e_phoff)
		die("%s: program headers out of bounds", path);
	uint64_t entry = 0;
	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;
		memcpy(&ph, elf + eh.e_phoff + i * sizeof ph, sizeof ph);
		if (ph.p_offset > size || ph.p_filesz > size - ph.p_offset)
			die("%s: segment %u out of file bounds", path, i);
		if (ph.p_type == PT_LOAD) {
			if (ph.p_filesz > ph.p_memsz || ph.p_paddr > GUEST_MEM_SIZE ||
			    ph.p_memsz > GUEST_MEM_SIZE - ph.p_paddr)
				die("%s: segment %u does not fit in guest memory", path, i);
			memcpy(mem + ph.p_paddr, elf + ph.p_offset, ph.p_filesz);
			memset(mem + ph.p_paddr + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
		} else if (ph.p_type == PT_NOTE && !entry) {
			entry = find_pvh_entry(elf + ph.p_offset, ph.p_filesz, ph.p_align);
		}
	}
	free(elf);
	if (!entry || entry >= GUEST_MEM_SIZE)
		die("%s: no usable Xen PHYS32_ENTRY note (not a PVH kernel)", path);
	return (uint32_t)entry;
}

/* Start info, command line and boot GDT (Xen's pvh.pandoc, "Boot protocol"). */
static void write_boot_info(uint8_t *mem, const char *cmdline)
{
	size_t len = strlen(cmdline);
	if (len >= CMDLINE_MAX)
		die("command line too long");
	memcpy(mem + CMDLINE_ADDR, cmdline, len + 1);

	uint8_t *si = mem + START_INFO_ADDR;
	memset(si, 0, hvm_start_info_SIZE);
	put_u32(si + hvm_start_info_magic, XEN_HVM_START_MAGIC_VALUE);
	put_u32(si + hvm_start_info_version, 1);
	put_u64(si + hvm_start_info_cmdline_paddr, CMDLINE_ADDR);

	uint8_t *gdt = mem + BOOT_GDT_ADDR;
	put_u64(gdt + 0, 0);
	put_u64(gdt + BOOT_CS, gdt_entry(0xc09b, 0, 0xfffff));
	put_u64(gdt + BOOT_DS, gdt_entry(0xc093, 0, 0xfffff));
	put_u64(gdt + BOOT_TSS, gdt_entry(0x008b, 0, 0x67));
}

static void setup_vcpu(int vcpu, uint32_t entry)
{
	struct kvm_sregs sregs;
	xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
	sregs.cs = segment(BOOT_CS, SEG_TYPE_CODE_XRA, 1, 0xffffffff, 1);
	sregs.ds = segment(BOOT_DS, SEG_TYPE_DATA_RWA, 1, 0xffffffff, 1);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.tr = segment(BOOT_TSS, SEG_TYPE_TSS32_BUSY, 0, 0x67, 0);
	sregs.gdt.base = BOOT_GDT_ADDR;
	sregs.gdt.limit = BOOT_TSS + 7;
	sregs.cr0 = X86_CR0_PE;
	sregs.cr4 = 0;
	sregs.efer = 0;
	xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");

	struct kvm_regs regs;
	memset(&regs, 0, sizeof regs);
	regs.rflags = X86_EFLAGS_FIXED;	/* IF = 0 */
	regs.rip = entry;
	regs.rbx = START_INFO_ADDR;
	xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

int main(int argc, char **argv)
{
	if (argc < 4 || argc > 5 || (strcmp(argv[2], "pio") != 0 && strcmp(argv[2], "mmio") != 0) ||
	    (argc == 5 && strcmp(argv[4], "hello") != 0))
		die("usage: kvm-exit-ceiling GUEST_ELF pio|mmio COUNT [hello]");
	const char *mode = argv[2];
	char *end;
	errno = 0;
	unsigned long count = strtoul(argv[3], &end, 10);
	if (errno || *end || end == argv[3] || count > 0x7fffffffUL)
		die("COUNT must be a decimal number below 2^31");
	int mmio_mode = strcmp(mode, "mmio") == 0;
	char cmdline[64];
	snprintf(cmdline, sizeof cmdline, "mode=%s count=%lu%s", mode, count, argc == 5 ? " hello" : "");

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("cannot open /dev/kvm: %s", strerror(errno));
	if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		die("unexpected KVM API version");
	int vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");

	uint8_t *mem = mmap(NULL, GUEST_MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		die("cannot allocate guest memory: %s", strerror(errno));
	struct kvm_userspace_memory_region region = {
		.slot = 0, .flags = 0, .guest_phys_addr = 0,
		.memory_size = GUEST_MEM_SIZE, .userspace_addr = (uintptr_t)mem,
	};
	xioctl(vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");

	uint32_t entry = load_pvh_elf(argv[1], mem);
	write_boot_info(mem, cmdline);

	int vcpu = xioctl(vm, KVM_CREATE_VCPU, (void *)0, "KVM_CREATE_VCPU");
	int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("cannot map kvm_run: %s", strerror(errno));
	setup_vcpu(vcpu, entry);

	uint64_t loop_exits = 0, other_exits = 0;
	int started = 0;
	double t_boot = now_seconds(), t_start = 0, t_end = 0;
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN failed: %s", strerror(errno));
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			if (!mmio_mode && run->io.direction == KVM_EXIT_IO_OUT && run->io.port == EXIT_LOOP_PIO_EXIT_PORT) {
				loop_exits++;
			} else if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == EXIT_LOOP_HELLO_PORT) {
				/* A serial console: out as it comes, unbuffered. */
				size_t n = (size_t)run->io.size * run->io.count;
				if (run->io.data_offset > (uint64_t)run_size || n > (uint64_t)run_size - run->io.data_offset)
					die("serial output outside kvm_run");
				if (write(STDOUT_FILENO, (uint8_t *)run + run->io.data_offset, n) != (ssize_t)n)
					die("cannot write the guest's serial output: %s", strerror(errno));
			} else if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == EXIT_LOOP_START_MARKER_PORT) {
				t_start = now_seconds();
				started = 1;
				loop_exits = other_exits = 0;
			} else if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == EXIT_LOOP_END_MARKER_PORT) {
				t_end = now_seconds();
				uint8_t value = ((uint8_t *)run)[run->io.data_offset];
				if (value != EXIT_LOOP_END_OK)
					die("guest ended with code %u (1: bad start info magic, 2: bad command line '%s')",
					    value, cmdline);
				goto finished;
			} else {
				other_exits++;	/* an `in` reads whatever is in the buffer */
			}
			break;
		case KVM_EXIT_MMIO:
			if (mmio_mode && run->mmio.is_write && run->mmio.phys_addr == EXIT_LOOP_MMIO_EXIT_ADDR)
				loop_exits++;
			else
				other_exits++;	/* reads return whatever is in data[] */
			break;
		case KVM_EXIT_INTR:
			other_exits++;
			break;
		case KVM_EXIT_FAIL_ENTRY:
			die("KVM_EXIT_FAIL_ENTRY, hardware reason 0x%" PRIx64,
			    (uint64_t)run->fail_entry.hardware_entry_failure_reason);
		case KVM_EXIT_INTERNAL_ERROR:
			die("KVM_EXIT_INTERNAL_ERROR, suberror %u", run->internal.suberror);
		case KVM_EXIT_SHUTDOWN:
			die("KVM_EXIT_SHUTDOWN (triple fault?)");
		case KVM_EXIT_HLT:
			die("KVM_EXIT_HLT before the end marker");
		default:
			die("unexpected exit reason %u", run->exit_reason);
		}
	}
finished:
	if (!started)
		die("guest ended without a start marker");
	double seconds = t_end - t_start;
	if (loop_exits != count)
		die("expected %lu %s exits, saw %" PRIu64, count, mode, loop_exits);
	printf("{\"mode\":\"%s\",\"count\":%lu,\"exits\":%" PRIu64 ",\"seconds\":%.9f,"
	       "\"exitsPerSecond\":%.1f,\"bootSeconds\":%.9f,\"otherExits\":%" PRIu64 "}\n",
	       mode, count, loop_exits, seconds, seconds > 0 ? (double)loop_exits / seconds : 0.0,
	       t_start - t_boot, other_exits);
	return 0;
}
