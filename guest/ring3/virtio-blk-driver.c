/*
 * virtio-blk-driver: a polled virtio-blk driver over virtio-mmio (modern,
 * Version 2) that runs in ring 3 of a PVH guest (virtio-blk-entry.S), for
 * flint's direct-KVM device test and its device-path benchmark. The same
 * ELF runs under flint and under QEMU -M microvm.
 *
 * Spec references are to virtio 1.2's section numbers: §2.4 device reset,
 * §2.5 configuration space, §2.7 split virtqueues, §3.1 device
 * initialization, §4.2 virtio over MMIO, §5.2 block device.
 * Register offsets, feature bits, request types and ring structures come
 * from the Linux UAPI headers under their own names; the guest's protocol
 * with the monitor (cmdline words, ports, result keys, end codes) is defined
 * once, in src/guest/programs/virtio-blk-driver.ts, which writes
 * vblk-protocol.h.
 *
 * Environment: 32-bit protected mode, CPL 3, flat 4 GiB segments, paging
 * off, IOPL 3, IF 0. Linear addresses are guest-physical addresses, so a
 * pointer is what goes into a descriptor, and the register window is a
 * pointer too. No interrupts: the driver sets VRING_AVAIL_F_NO_INTERRUPT
 * and polls used->idx. Kicks are 4-byte writes to QueueNotify, which a
 * monitor with ioeventfds serves in the kernel (no exit to user space).
 *
 * Command line (hvm_start_info.cmdline_paddr), words separated by spaces,
 * numbers decimal or 0x-hex, unknown words ignored (flint appends its own
 * virtio_mmio.device= word):
 *   blk=ADDR            the device's register window (required)
 *   mode=test|bench     what to run (required)
 *   seed=N              non-zero; test: the write pattern; bench: offsets
 *   qd1=N qd32=N seq=N  bench: request counts of the three phases
 *   features=min        accept VIRTIO_F_VERSION_1 only (default: also FLUSH
 *                       and RO when offered)
 *
 * Output: lines `vblk KEY=VALUE` on the COM1 UART (values 0x-hex, or hex
 * bytes for `.data` keys), then the end code on VBLK_END_PORT. The keys are
 * listed in src/guest/programs/virtio-blk-driver.ts.
 */
#include <stddef.h>
#include <stdint.h>
#include <linux/serial_reg.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_ring.h>
#include "flint-abi.h"		/* hvm_start_info_* offsets, XEN_HVM_START_MAGIC_VALUE */
#include "vblk-protocol.h"	/* VBLK_* */

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

/* MagicValue "virt" (§4.2.2) and the modern interface's Version. */
#define VIRTIO_MMIO_MAGIC	0x74726976u
#define VIRTIO_MMIO_VERSION_2	2u

/* virtio-blk counts in 512-byte sectors whatever the block size (§5.2.4). */
#define SECTOR_BYTES		512u
/* Descriptors per request in the benchmark: header, data, status (§5.2.6). */
#define DESCS_PER_REQUEST	3u

#define BIT64(n)		((u64)1 << (n))

/* ------------------------------------------------------------------ */
/* Small helpers: barriers, ports, time, memory                        */
/* ------------------------------------------------------------------ */

/* Keeps the compiler from moving memory accesses across it (x86 is TSO). */
#define barrier()		__asm__ __volatile__("" ::: "memory")
/* A full fence, for store-then-load ordering (§2.7.10: avail idx before reading used flags). */
static inline void full_fence(void) { __asm__ __volatile__("lock; orl $0, (%%esp)" ::: "memory", "cc"); }
static inline void cpu_pause(void) { __asm__ __volatile__("pause"); }

static inline void outb(u16 port, u8 v) { __asm__ __volatile__("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

#define VOL8(x)		(*(volatile u8 *)&(x))
#define VOL16(x)	(*(volatile u16 *)&(x))
#define VOL32(x)	(*(volatile u32 *)&(x))

/* gcc may emit calls to these even in freestanding code. */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n)
{
	u8 *d = dst;
	while (n--) *d++ = (u8)c;
	return dst;
}
void *memcpy(void *dst, const void *src, size_t n)
{
	u8 *d = dst;
	const u8 *s = src;
	while (n--) *d++ = *s++;
	return dst;
}

/* Marsaglia's xorshift32; src/guest/programs/virtio-blk-driver.ts has it too. */
static u32 xorshift32(u32 x)
{
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return x;
}

/* FNV-1a, 32-bit; also in src/guest/programs/virtio-blk-driver.ts. */
static u32 fnv1a32(const u8 *p, u32 n)
{
	u32 h = 0x811c9dc5u;
	for (u32 i = 0; i < n; i++) h = (h ^ p[i]) * 0x01000193u;
	return h;
}

/* ------------------------------------------------------------------ */
/* Output on the COM1 UART (polled; the monitors never drop a byte)    */
/* ------------------------------------------------------------------ */

static void put_char(char c)
{
	for (u32 i = 0; i < VBLK_SERIAL_SPIN_LIMIT; i++) {
		if (inb(VBLK_SERIAL_PORT + UART_LSR) & UART_LSR_THRE) break;
		cpu_pause();
	}
	outb(VBLK_SERIAL_PORT + UART_TX, (u8)c);
}

static void put_str(const char *s)
{
	while (*s) put_char(*s++);
}

static void put_hex(u64 v)
{
	static const char digits[] = "0123456789abcdef";
	int shift = 60;
	put_str("0x");
	while (shift > 0 && ((v >> shift) & 0xf) == 0) shift -= 4;
	for (; shift >= 0; shift -= 4) put_char(digits[(v >> shift) & 0xf]);
}

/* `vblk KEY=0xVALUE\n` */
static void report(const char *key, u64 value)
{
	put_str("vblk ");
	put_str(key);
	put_char('=');
	put_hex(value);
	put_char('\n');
}

/* `vblk PREFIX.FIELD=0xVALUE\n` */
static void report2(const char *prefix, const char *field, u64 value)
{
	put_str("vblk ");
	put_str(prefix);
	put_char('.');
	put_str(field);
	put_char('=');
	put_hex(value);
	put_char('\n');
}

/* `vblk KEY=hexbytes\n` */
static void report_bytes(const char *key, const u8 *p, u32 n)
{
	static const char digits[] = "0123456789abcdef";
	put_str("vblk ");
	put_str(key);
	put_char('=');
	for (u32 i = 0; i < n; i++) {
		put_char(digits[p[i] >> 4]);
		put_char(digits[p[i] & 0xf]);
	}
	put_char('\n');
}

/* `vblk error=TEXT\n`: why the driver gave up. */
static void report_error(const char *why)
{
	put_str("vblk error=");
	put_str(why);
	put_char('\n');
}

/* ------------------------------------------------------------------ */
/* The command line                                                    */
/* ------------------------------------------------------------------ */

enum run_mode { MODE_NONE, MODE_TEST, MODE_BENCH };

struct args {
	u32 blk;
	enum run_mode mode;
	u32 seed;
	u32 qd1, qd32, seq;
	int min_features;
};

/* If `s` starts with `word`, returns what follows it; else 0. */
static const char *after_prefix(const char *s, const char *word)
{
	while (*word)
		if (*s++ != *word++) return 0;
	return s;
}

/* Parses a decimal or 0x-hex u32 ending at a space or NUL; returns 0 on error. */
static const char *parse_u32(const char *s, u32 *out)
{
	u32 v = 0, base = 10;
	int digits = 0;
	if (s[0] == '0' && s[1] == 'x') {
		base = 16;
		s += 2;
	}
	for (;; s++, digits++) {
		u32 d;
		char c = *s;
		if (c >= '0' && c <= '9') d = (u32)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f') d = (u32)(c - 'a' + 10);
		else break;
		if (v > (0xffffffffu - d) / base) return 0;
		v = v * base + d;
	}
	if (digits == 0 || (*s != ' ' && *s != '\0')) return 0;
	*out = v;
	return s;
}

static int parse_args(const char *s, struct args *a)
{
	*a = (struct args){ .seed = 1 };
	while (*s) {
		const char *v;
		if (*s == ' ') { s++; continue; }
		if ((v = after_prefix(s, "blk="))) s = parse_u32(v, &a->blk);
		else if ((v = after_prefix(s, "seed="))) s = parse_u32(v, &a->seed);
		else if ((v = after_prefix(s, "qd1="))) s = parse_u32(v, &a->qd1);
		else if ((v = after_prefix(s, "qd32="))) s = parse_u32(v, &a->qd32);
		else if ((v = after_prefix(s, "seq="))) s = parse_u32(v, &a->seq);
		else if ((v = after_prefix(s, "mode=test")) && (*v == ' ' || !*v)) { a->mode = MODE_TEST; s = v; }
		else if ((v = after_prefix(s, "mode=bench")) && (*v == ' ' || !*v)) { a->mode = MODE_BENCH; s = v; }
		else if ((v = after_prefix(s, "features=min")) && (*v == ' ' || !*v)) { a->min_features = 1; s = v; }
		else while (*s && *s != ' ') s++;	/* someone else's word */
		if (!s) return -1;
	}
	return a->blk != 0 && a->mode != MODE_NONE && a->seed != 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* The device: registers (§4.2.2) and one split virtqueue (§2.7)       */
/* ------------------------------------------------------------------ */

static volatile u8 *regs;

static inline u32 reg_read(u32 offset) { return *(volatile u32 *)(regs + offset); }
static inline void reg_write(u32 offset, u32 v) { *(volatile u32 *)(regs + offset) = v; }

/*
 * The queue, in the driver's own memory, at the spec's minimum alignments
 * (§2.7: descriptor table 16, available ring 2, used ring 4), all zeroed
 * (bss) before the device sees them.
 */
static struct vring_desc ring_desc[VBLK_QUEUE_SIZE] __attribute__((aligned(16)));
static struct {
	u16 flags;
	u16 idx;
	u16 ring[VBLK_QUEUE_SIZE];
	u16 used_event;			/* only with VIRTIO_RING_F_EVENT_IDX */
} ring_avail __attribute__((aligned(2)));
static struct {
	u16 flags;
	u16 idx;
	struct vring_used_elem ring[VBLK_QUEUE_SIZE];
	u16 avail_event;		/* only with VIRTIO_RING_F_EVENT_IDX */
} ring_used __attribute__((aligned(4)));

/* Per in-flight request: its header, its status byte and a data buffer. */
static struct virtio_blk_outhdr req_header[VBLK_MAX_DEPTH] __attribute__((aligned(16)));
static u8 req_status[VBLK_MAX_DEPTH];
static u8 req_data[VBLK_MAX_DEPTH][VBLK_SEQ_BYTES] __attribute__((aligned(4096)));

/* Test-mode buffers. */
static u8 test_id[VIRTIO_BLK_ID_BYTES];
static u8 test_write[VBLK_TEST_WRITE_BYTES] __attribute__((aligned(4096)));
static u8 test_read[VBLK_TEST_WRITE_BYTES] __attribute__((aligned(4096)));
static u8 test_host[VBLK_TEST_HOST_BYTES] __attribute__((aligned(4096)));

static u16 avail_shadow;		/* next avail idx to publish */
static u16 used_seen;			/* used idx consumed so far */
static u64 capacity_sectors;
static u32 kicks, kicks_suppressed;
static int timed_out;

/* Makes every request added so far visible, and kicks unless the device said not to. */
static void publish(void)
{
	barrier();				/* descriptors and ring entries before idx (§2.7.13) */
	VOL16(ring_avail.idx) = avail_shadow;
	full_fence();				/* idx before reading used->flags (§2.7.10) */
	if (VOL16(ring_used.flags) & VRING_USED_F_NO_NOTIFY) {
		kicks_suppressed++;
		return;
	}
	reg_write(VIRTIO_MMIO_QUEUE_NOTIFY, 0);	/* queue 0 (§4.2.3.3) */
	kicks++;
}

/* Puts descriptor chain `head` in the available ring (not yet published). */
static void add_avail(u16 head)
{
	ring_avail.ring[avail_shadow % VBLK_QUEUE_SIZE] = head;
	avail_shadow++;
}

/* Waits until used->idx moves past used_seen; returns the new idx (used_seen if timed out). */
static u16 wait_used(void)
{
	for (u32 spins = 0; spins < VBLK_POLL_SPIN_LIMIT; spins++) {
		u16 idx = VOL16(ring_used.idx);
		if (idx != used_seen) {
			barrier();			/* idx before the elements it covers */
			return idx;
		}
		cpu_pause();
	}
	timed_out = 1;
	return used_seen;
}

static void set_desc(u16 i, const void *addr, u32 len, u16 flags, u16 next)
{
	ring_desc[i].addr = (u32)(uintptr_t)addr;
	ring_desc[i].len = len;
	ring_desc[i].flags = flags;
	ring_desc[i].next = next;
}

/* §3.1.1 / §4.2.3.1: reset, negotiate, set up queue 0, DRIVER_OK. Returns 0 or -1. */
static int device_init(u32 base, int min_features)
{
	regs = (volatile u8 *)(uintptr_t)base;
	u32 magic = reg_read(VIRTIO_MMIO_MAGIC_VALUE);
	u32 version = reg_read(VIRTIO_MMIO_VERSION);
	u32 device_id = reg_read(VIRTIO_MMIO_DEVICE_ID);
	report("magic", magic);
	report("version", version);
	report("device_id", device_id);
	report("vendor_id", reg_read(VIRTIO_MMIO_VENDOR_ID));
	if (magic != VIRTIO_MMIO_MAGIC) { report_error("bad MagicValue"); return -1; }
	if (version != VIRTIO_MMIO_VERSION_2) { report_error("not a Version 2 (modern) virtio-mmio device"); return -1; }
	if (device_id != VIRTIO_ID_BLOCK) { report_error("not a block device"); return -1; }

	/* Reset, and wait until it is done: Status reads back 0 (§2.4). */
	reg_write(VIRTIO_MMIO_STATUS, 0);
	for (u32 i = 0; reg_read(VIRTIO_MMIO_STATUS) != 0; i++) {
		if (i == VBLK_POLL_SPIN_LIMIT) { report_error("reset did not complete"); return -1; }
		cpu_pause();
	}
	reg_write(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	reg_write(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);

	/* Features (§2.2, §6): two 32-bit words through the select registers. */
	reg_write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	u64 offered = reg_read(VIRTIO_MMIO_DEVICE_FEATURES);
	reg_write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	offered |= (u64)reg_read(VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	report("device_features", offered);
	if (!(offered & BIT64(VIRTIO_F_VERSION_1))) { report_error("VIRTIO_F_VERSION_1 not offered"); return -1; }
	/*
	 * VERSION_1 (the modern interface, §6.1), and unless features=min also
	 * when offered: FLUSH, which makes the device's cache write-back (without
	 * it, a device that offers FLUSH must complete writes only once they are
	 * stable, §5.2.6.2), and RO, which a driver SHOULD accept (§5.2.6.1).
	 * No ring features (no EVENT_IDX, no INDIRECT_DESC): the plainest split
	 * virtqueue protocol.
	 */
	u64 accepted = BIT64(VIRTIO_F_VERSION_1);
	if (!min_features) accepted |= offered & (BIT64(VIRTIO_BLK_F_FLUSH) | BIT64(VIRTIO_BLK_F_RO));
	reg_write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	reg_write(VIRTIO_MMIO_DRIVER_FEATURES, (u32)accepted);
	reg_write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	reg_write(VIRTIO_MMIO_DRIVER_FEATURES, (u32)(accepted >> 32));
	report("driver_features", accepted);
	reg_write(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
	if (!(reg_read(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK)) {
		reg_write(VIRTIO_MMIO_STATUS, reg_read(VIRTIO_MMIO_STATUS) | VIRTIO_CONFIG_S_FAILED);
		report_error("the device refused FEATURES_OK");
		return -1;
	}

	/* Queue 0 (§4.2.3.2). */
	reg_write(VIRTIO_MMIO_QUEUE_SEL, 0);
	if (reg_read(VIRTIO_MMIO_QUEUE_READY) != 0) { report_error("queue 0 already ready after reset"); return -1; }
	u32 num_max = reg_read(VIRTIO_MMIO_QUEUE_NUM_MAX);
	report("queue_num_max", num_max);
	if (num_max < VBLK_QUEUE_SIZE) { report_error("queue 0 is smaller than the driver needs"); return -1; }
	reg_write(VIRTIO_MMIO_QUEUE_NUM, VBLK_QUEUE_SIZE);
	reg_write(VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)(uintptr_t)ring_desc);
	reg_write(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	reg_write(VIRTIO_MMIO_QUEUE_AVAIL_LOW, (u32)(uintptr_t)&ring_avail);
	reg_write(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
	reg_write(VIRTIO_MMIO_QUEUE_USED_LOW, (u32)(uintptr_t)&ring_used);
	reg_write(VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
	/* Polling only: ask the device not to interrupt (§2.7.7). */
	ring_avail.flags = VRING_AVAIL_F_NO_INTERRUPT;
	reg_write(VIRTIO_MMIO_QUEUE_READY, 1);
	report("queue_size", VBLK_QUEUE_SIZE);

	/* capacity, a 64-bit field read as two words under ConfigGeneration (§2.5, §4.2.2). */
	u32 gen, lo, hi;
	do {
		gen = reg_read(VIRTIO_MMIO_CONFIG_GENERATION);
		lo = reg_read(VIRTIO_MMIO_CONFIG + offsetof(struct virtio_blk_config, capacity));
		hi = reg_read(VIRTIO_MMIO_CONFIG + offsetof(struct virtio_blk_config, capacity) + 4);
	} while (gen != reg_read(VIRTIO_MMIO_CONFIG_GENERATION));
	capacity_sectors = ((u64)hi << 32) | lo;
	report("capacity", capacity_sectors);

	reg_write(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
		  VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
	u32 status = reg_read(VIRTIO_MMIO_STATUS);
	report("status", status);
	if (!(status & VIRTIO_CONFIG_S_DRIVER_OK) || (status & VIRTIO_CONFIG_S_NEEDS_RESET)) {
		report_error("the device is not live after DRIVER_OK");
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Test mode: one request at a time                                    */
/* ------------------------------------------------------------------ */

/* One data buffer of a request. */
struct seg {
	void *addr;
	u32 len;
	int device_writes;		/* 1: device-writable (IN, GET_ID) */
};

/*
 * One request (§5.2.6): header, the data segments, the status byte, each its
 * own descriptor (descriptors 0..n+1), then waits for it. Reports
 * NAME.status and NAME.used_len; returns the status, or -1 if timed out.
 */
static int request(const char *name, u32 type, u64 sector, const struct seg *segs, u32 n)
{
	u16 d = 0;
	req_header[0].type = type;
	req_header[0].ioprio = 0;
	req_header[0].sector = sector;
	VOL8(req_status[0]) = 0xff;	/* not a status: shows an unwritten byte */
	set_desc(d, &req_header[0], sizeof req_header[0], VRING_DESC_F_NEXT, (u16)(d + 1));
	d++;
	for (u32 i = 0; i < n; i++, d++)
		set_desc(d, segs[i].addr, segs[i].len,
			 VRING_DESC_F_NEXT | (segs[i].device_writes ? VRING_DESC_F_WRITE : 0), (u16)(d + 1));
	set_desc(d, &req_status[0], 1, VRING_DESC_F_WRITE, 0);
	add_avail(0);
	publish();
	u16 idx = wait_used();
	if (timed_out) {
		report_error("a request was not completed");
		return -1;
	}
	struct vring_used_elem *e = &ring_used.ring[used_seen % VBLK_QUEUE_SIZE];
	u32 id = VOL32(e->id), len = VOL32(e->len);
	used_seen++;
	if (id != 0 || idx != used_seen) {
		report_error("the used ring returned an unknown chain");
		return -1;
	}
	u8 status = VOL8(req_status[0]);
	report2(name, "status", status);
	report2(name, "used_len", len);
	return status;
}

static int run_tests(const struct args *a)
{
	struct seg segs[2];

	/* GET_ID (§5.2.6): 20 bytes of serial, NUL-padded. */
	segs[0] = (struct seg){ test_id, sizeof test_id, 1 };
	if (request("get_id", VIRTIO_BLK_T_GET_ID, 0, segs, 1) < 0) return -1;
	report_bytes("get_id.data", test_id, sizeof test_id);

	/* A write of the seeded pattern, split over two descriptors (§2.6.4 framing). */
	u32 x = a->seed;
	for (u32 i = 0; i < VBLK_TEST_WRITE_BYTES; i += 4) {
		x = xorshift32(x);
		test_write[i] = (u8)x;
		test_write[i + 1] = (u8)(x >> 8);
		test_write[i + 2] = (u8)(x >> 16);
		test_write[i + 3] = (u8)(x >> 24);
	}
	segs[0] = (struct seg){ test_write, VBLK_TEST_WRITE_BYTES / 2, 0 };
	segs[1] = (struct seg){ test_write + VBLK_TEST_WRITE_BYTES / 2, VBLK_TEST_WRITE_BYTES / 2, 0 };
	if (request("write", VIRTIO_BLK_T_OUT, VBLK_TEST_WRITE_SECTOR, segs, 2) < 0) return -1;

	/* Read it back in one descriptor and compare. */
	memset(test_read, 0x5a, sizeof test_read);
	segs[0] = (struct seg){ test_read, VBLK_TEST_WRITE_BYTES, 1 };
	if (request("readback", VIRTIO_BLK_T_IN, VBLK_TEST_WRITE_SECTOR, segs, 1) < 0) return -1;
	u32 same = 1;
	for (u32 i = 0; i < VBLK_TEST_WRITE_BYTES; i++) same &= test_read[i] == test_write[i];
	report("readback.match", same);

	/* The host's pattern: hashed, and the first bytes shown. */
	memset(test_host, 0x5a, sizeof test_host);
	segs[0] = (struct seg){ test_host, VBLK_TEST_HOST_BYTES, 1 };
	if (request("host_read", VIRTIO_BLK_T_IN, VBLK_TEST_HOST_SECTOR, segs, 1) < 0) return -1;
	report("host_read.fnv1a", fnv1a32(test_host, VBLK_TEST_HOST_BYTES));
	report_bytes("host_read.data", test_host, 16);

	/* FLUSH: no data, sector 0 (§5.2.6.1). */
	if (request("flush", VIRTIO_BLK_T_FLUSH, 0, segs, 0) < 0) return -1;

	/* Reads at and across the end of the disk, which a driver MUST NOT send (§5.2.6.1): flint and QEMU fail them with IOERR. */
	segs[0] = (struct seg){ test_read, SECTOR_BYTES, 1 };
	if (request("read_end", VIRTIO_BLK_T_IN, capacity_sectors, segs, 1) < 0) return -1;
	segs[0] = (struct seg){ test_read, 2 * SECTOR_BYTES, 1 };
	if (request("read_across_end", VIRTIO_BLK_T_IN, capacity_sectors - 1, segs, 1) < 0) return -1;

	report("kicks", kicks);
	report("kicks_suppressed", kicks_suppressed);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Bench mode: N reads with `depth` chains in flight                   */
/* ------------------------------------------------------------------ */

/* Chain of slot s: descriptors 3s (header) -> 3s+1 (data) -> 3s+2 (status). */
static void bench_setup_slots(u32 bytes)
{
	for (u16 s = 0; s < VBLK_MAX_DEPTH; s++) {
		u16 d = (u16)(s * DESCS_PER_REQUEST);
		req_header[s].type = VIRTIO_BLK_T_IN;
		req_header[s].ioprio = 0;
		set_desc(d, &req_header[s], sizeof req_header[s], VRING_DESC_F_NEXT, (u16)(d + 1));
		set_desc((u16)(d + 1), req_data[s], bytes, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, (u16)(d + 2));
		set_desc((u16)(d + 2), &req_status[s], 1, VRING_DESC_F_WRITE, 0);
	}
}

/* The stamp the host put at the start of every sector: its number (u64 LE). */
static u64 stamp_at(const u8 *p)
{
	return *(const volatile u64 *)p;
}

struct phase_result {
	u32 requests, errors, bad_len, bad_data;
	u32 kicks, kicks_suppressed;
	u64 ticks;
};

/*
 * Reads `count` blocks of `bytes` with `depth` requests in flight: random
 * block-aligned offsets (xorshift32 from `seed`) or sequential ones, every
 * completed request checked (status, used length, the host's sector stamps
 * at the first and last sector), its slot refilled at once, the refills of
 * one pass over the used ring published with one kick.
 */
static struct phase_result bench_phase(u32 count, u32 bytes, u32 depth, int random, u32 seed)
{
	struct phase_result r = { 0 };
	u32 sectors_per_block = bytes / SECTOR_BYTES;
	u32 block_shift = 0;			/* bytes is a power of two: no 64-bit division (no libgcc) */
	while ((1u << block_shift) < sectors_per_block) block_shift++;
	u64 blocks = capacity_sectors >> block_shift;
	u32 block_mask = 1;			/* random offsets: a power of two of blocks */
	while ((u64)block_mask * 2 <= blocks && block_mask < 0x80000000u) block_mask *= 2;
	block_mask -= 1;
	u32 x = seed, next_seq = 0, issued = 0, completed = 0;
	u32 kicks0 = kicks, suppressed0 = kicks_suppressed;

	if (count == 0) return r;
	bench_setup_slots(bytes);
	u64 t0 = rdtsc();
	for (u32 s = 0; s < depth && issued < count; s++, issued++) {
		u32 block;
		if (random) { x = xorshift32(x); block = x & block_mask; }
		else { block = next_seq++; if (next_seq == blocks) next_seq = 0; }
		req_header[s].sector = (u64)block * sectors_per_block;
		*(volatile u64 *)req_data[s] = ~(u64)0;
		VOL8(req_status[s]) = 0xff;
		add_avail((u16)(s * DESCS_PER_REQUEST));
	}
	publish();
	while (completed < count) {
		u16 idx = wait_used();
		if (timed_out) break;
		int refilled = 0;
		while (used_seen != idx) {
			struct vring_used_elem *e = &ring_used.ring[used_seen % VBLK_QUEUE_SIZE];
			u32 id = VOL32(e->id), len = VOL32(e->len);
			used_seen++;
			completed++;
			u32 s = id / DESCS_PER_REQUEST;
			if (id % DESCS_PER_REQUEST != 0 || s >= depth) { r.errors++; continue; }
			u64 sector = req_header[s].sector;
			if (VOL8(req_status[s]) != VIRTIO_BLK_S_OK) r.errors++;
			if (len != bytes + 1) r.bad_len++;
			if (stamp_at(req_data[s]) != sector ||
			    stamp_at(req_data[s] + bytes - SECTOR_BYTES) != sector + sectors_per_block - 1)
				r.bad_data++;
			if (issued < count) {
				u32 block;
				if (random) { x = xorshift32(x); block = x & block_mask; }
				else { block = next_seq++; if (next_seq == blocks) next_seq = 0; }
				req_header[s].sector = (u64)block * sectors_per_block;
				*(volatile u64 *)req_data[s] = ~(u64)0;
				VOL8(req_status[s]) = 0xff;
				add_avail((u16)id);
				issued++;
				refilled = 1;
			}
		}
		if (refilled) publish();
	}
	r.ticks = rdtsc() - t0;
	r.requests = completed;
	r.kicks = kicks - kicks0;
	r.kicks_suppressed = kicks_suppressed - suppressed0;
	return r;
}

static void report_phase(const char *name, u32 bytes, u32 depth, const struct phase_result *r)
{
	report2(name, "bytes_per_request", bytes);
	report2(name, "depth", depth);
	report2(name, "requests", r->requests);
	report2(name, "ticks", r->ticks);
	report2(name, "errors", r->errors);
	report2(name, "bad_len", r->bad_len);
	report2(name, "bad_data", r->bad_data);
	report2(name, "kicks", r->kicks);
	report2(name, "kicks_suppressed", r->kicks_suppressed);
}

static int run_bench(const struct args *a)
{
	if (capacity_sectors < (u64)VBLK_SEQ_BYTES / SECTOR_BYTES * VBLK_MAX_DEPTH) {
		report_error("the disk is too small for the benchmark");
		return -1;
	}
	/*
	 * The calibration window: TSC read, then one line printed, then the
	 * mark port; the same at the end (line, then the end port), so both
	 * host timestamps lag their TSC reading by the same amount.
	 */
	report("tsc.mark", rdtsc());
	outb(VBLK_MARK_PORT, 0);
	struct phase_result qd1 = bench_phase(a->qd1, VBLK_RANDOM_BYTES, 1, 1, a->seed);
	if (timed_out) { report_error("a request was not completed (qd1)"); return -1; }
	struct phase_result qd32 = bench_phase(a->qd32, VBLK_RANDOM_BYTES, VBLK_MAX_DEPTH, 1, xorshift32(a->seed ^ 0x9e3779b9u));
	if (timed_out) { report_error("a request was not completed (qd32)"); return -1; }
	struct phase_result seq = bench_phase(a->seq, VBLK_SEQ_BYTES, 1, 0, 0);
	if (timed_out) { report_error("a request was not completed (seq)"); return -1; }
	report_phase("qd1", VBLK_RANDOM_BYTES, 1, &qd1);
	report_phase("qd32", VBLK_RANDOM_BYTES, VBLK_MAX_DEPTH, &qd32);
	report_phase("seq", VBLK_SEQ_BYTES, 1, &seq);
	report("tsc.end", rdtsc());
	return 0;
}

/* ------------------------------------------------------------------ */

/* Called in ring 3 by virtio-blk-entry.S; returns the end code (VBLK_END_*). */
u32 vblk_main(u32 start_info);
u32 vblk_main(u32 start_info)
{
	const u8 *si = (const u8 *)(uintptr_t)start_info;
	if (*(const u32 *)(si + hvm_start_info_magic) != XEN_HVM_START_MAGIC_VALUE) {
		report_error("bad hvm_start_info magic");
		return VBLK_END_BAD_MAGIC;
	}
	u32 cmdline_lo = *(const u32 *)(si + hvm_start_info_cmdline_paddr);
	u32 cmdline_hi = *(const u32 *)(si + hvm_start_info_cmdline_paddr + 4);
	struct args a;
	if (cmdline_lo == 0 || cmdline_hi != 0 || parse_args((const char *)(uintptr_t)cmdline_lo, &a) < 0) {
		report_error("bad command line");
		return VBLK_END_BAD_CMDLINE;
	}
	if (device_init(a.blk, a.min_features) < 0) return VBLK_END_DEVICE;
	if ((a.mode == MODE_TEST ? run_tests(&a) : run_bench(&a)) < 0)
		return timed_out ? VBLK_END_TIMEOUT : VBLK_END_DEVICE;
	report("done", 1);
	return VBLK_END_OK;
}
