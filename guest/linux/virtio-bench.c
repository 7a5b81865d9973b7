/*
 * virtio-bench: the load generator of the virtio benchmark in the nested
 * harness (src/bench/virtio-nested.ts). One static binary, three roles:
 *
 *   virtio-bench blk DEVICE rand|seq BLOCK_BYTES THREADS WARMUP_MS RUN_MS
 *       (in the guest) reads DEVICE with O_DIRECT, so every read is one
 *       virtio-blk request and the guest's page cache never answers. THREADS
 *       threads each keep one pread(2) in flight: the queue depth. `rand`
 *       reads BLOCK_BYTES-aligned blocks at uniformly random offsets, `seq`
 *       reads the device front to back (one region per thread), wrapping.
 *       Counts only the reads completed in the RUN_MS after WARMUP_MS.
 *   virtio-bench send ADDRESS PORT DURATION_MS
 *       (in the guest) connects over TCP, writes for DURATION_MS, half-closes
 *       and waits for the receiver to close, so the time covers delivery.
 *   virtio-bench recv ADDRESS PORT DURATION_MS
 *       (in the guest) connects over TCP, asks the source for DURATION_MS of
 *       data and reads to end of stream, timed from its first byte to its end.
 *   virtio-bench sink PORT
 *       (in the outer VM) accepts connections one after another, reads each
 *       to end of stream and reports it, timed from its first byte to its
 *       end; runs until killed. A child process serves PORT + 1 as the
 *       source for `recv`: per connection it reads the duration asked for,
 *       writes for that long, half-closes, waits for the guest's close and
 *       reports what it sent.
 *
 * The minimal guest kernel (guest/kernel/microvm-x86_64.config on tinyconfig)
 * has neither CONFIG_AIO nor CONFIG_IO_URING, so queue depth comes from
 * threads blocked in pread(2), as fio's psync engine with numjobs does.
 *
 * Every result is one line on stdout, "virtio-bench: " then key=value pairs
 * (parsed by parseVirtioBenchLines in src/bench/virtio-nested.ts); a failure is
 * "virtio-bench: error=<what> errno=<name>" and exit status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REPORT "virtio-bench: "
/* O_DIRECT needs buffers aligned to the logical block size; a page covers every case. */
#define BUFFER_ALIGN 4096
#define MAX_THREADS 256
/* Bytes per write(2) of the TCP senders and read(2) of the receivers. */
#define NET_CHUNK_BYTES (256 * 1024)

__attribute__((noreturn)) static void fail(const char *what)
{
	printf(REPORT "error=%s errno=%s\n", what, strerrorname_np(errno) ? strerrorname_np(errno) : "0");
	fflush(stdout);
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
	struct timespec t = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&t, &t) != 0 && errno == EINTR)
		;
}

static long parse_number(const char *text, const char *what)
{
	char *end;
	errno = 0;
	long v = strtol(text, &end, 10);
	if (errno != 0 || *end != '\0' || v < 0) {
		errno = EINVAL;
		fail(what);
	}
	return v;
}

/* --- blk ---------------------------------------------------------------- */

/* One reader; padded so that the counters of two threads never share a cache line. */
struct reader {
	pthread_t thread;
	int fd;
	int random;
	uint64_t block_bytes;
	uint64_t blocks;	/* device size in blocks */
	uint64_t next_block;	/* seq: the next block to read */
	uint64_t rng;		/* rand: xorshift64 state */
	unsigned char *buffer;
	uint64_t completed;	/* reads done, read by the main thread */
	int error;		/* errno of a failed read, 0 if none */
} __attribute__((aligned(128)));

static volatile int stop_readers;

/* xorshift64 (Marsaglia 2003): cheap, and plenty for choosing blocks. */
static uint64_t xorshift64(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	while (!__atomic_load_n(&stop_readers, __ATOMIC_RELAXED)) {
		uint64_t block;
		if (r->random) {
			block = xorshift64(&r->rng) % r->blocks;
		} else {
			block = r->next_block;
			r->next_block = (r->next_block + 1) % r->blocks;
		}
		ssize_t n = pread(r->fd, r->buffer, r->block_bytes, (off_t)(block * r->block_bytes));
		if (n != (ssize_t)r->block_bytes) {
			r->error = n < 0 ? errno : EIO;
			break;
		}
		__atomic_store_n(&r->completed, r->completed + 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static uint64_t completed_reads(struct reader *readers, int count)
{
	uint64_t sum = 0;
	for (int i = 0; i < count; i++)
		sum += __atomic_load_n(&readers[i].completed, __ATOMIC_RELAXED);
	return sum;
}

static int blk_main(int argc, char **argv)
{
	if (argc != 8) {
		errno = EINVAL;
		fail("usage:blk-DEVICE-rand|seq-BLOCK_BYTES-THREADS-WARMUP_MS-RUN_MS");
	}
	const char *device = argv[2];
	int random = strcmp(argv[3], "rand") == 0;
	if (!random && strcmp(argv[3], "seq") != 0) {
		errno = EINVAL;
		fail("mode-not-rand-or-seq");
	}
	uint64_t block_bytes = (uint64_t)parse_number(argv[4], "bad-block-bytes");
	int threads = (int)parse_number(argv[5], "bad-threads");
	unsigned warmup_ms = (unsigned)parse_number(argv[6], "bad-warmup-ms");
	unsigned run_ms = (unsigned)parse_number(argv[7], "bad-run-ms");
	if (block_bytes == 0 || block_bytes % 512 != 0 || threads < 1 || threads > MAX_THREADS || run_ms == 0) {
		errno = EINVAL;
		fail("bad-arguments");
	}

	int fd = open(device, O_RDONLY | O_DIRECT);
	if (fd < 0)
		fail("open-device");
	/* SEEK_END gives a block device's size (as BLKGETSIZE64 does) and a file's. */
	off_t end = lseek(fd, 0, SEEK_END);
	if (end < 0)
		fail("lseek");
	uint64_t device_bytes = (uint64_t)end;
	uint64_t blocks = device_bytes / block_bytes;
	if (blocks < (uint64_t)threads) {
		errno = ENOSPC;
		fail("device-too-small");
	}

	static struct reader readers[MAX_THREADS];
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	for (int i = 0; i < threads; i++) {
		struct reader *r = &readers[i];
		r->fd = fd;
		r->random = random;
		r->block_bytes = block_bytes;
		r->blocks = blocks;
		r->next_block = blocks / (uint64_t)threads * (uint64_t)i;
		r->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
		if (posix_memalign((void **)&r->buffer, BUFFER_ALIGN, block_bytes) != 0)
			fail("posix_memalign");
		errno = pthread_create(&r->thread, &attr, reader_main, r);
		if (errno != 0)
			fail("pthread_create");
	}

	sleep_ms(warmup_ms);
	uint64_t start_reads = completed_reads(readers, threads), start_ns = now_ns();
	sleep_ms(run_ms);
	uint64_t end_reads = completed_reads(readers, threads), end_ns = now_ns();
	__atomic_store_n(&stop_readers, 1, __ATOMIC_RELAXED);
	for (int i = 0; i < threads; i++) {
		pthread_join(readers[i].thread, NULL);
		if (readers[i].error != 0) {
			errno = readers[i].error;
			fail("pread");
		}
	}
	close(fd);

	uint64_t ops = end_reads - start_reads;
	printf(REPORT "test=blk mode=%s block_bytes=%llu threads=%d ops=%llu bytes=%llu ns=%llu\n", random ? "rand" : "seq",
	       (unsigned long long)block_bytes, threads, (unsigned long long)ops, (unsigned long long)(ops * block_bytes),
	       (unsigned long long)(end_ns - start_ns));
	return 0;
}

/* --- net ---------------------------------------------------------------- */

/* The bytes a TCP stream carries (send and source alike). */
static void fill_pattern(unsigned char *chunk, size_t n)
{
	for (size_t i = 0; i < n; i++)
		chunk[i] = (unsigned char)(i * 131u + 7u);
}

/* The next connection on listener `l` (an interrupted or aborted accept is retried). */
static int accept_one(int l)
{
	for (;;) {
		int s = accept(l, NULL, NULL);
		if (s >= 0)
			return s;
		if (errno != EINTR && errno != ECONNABORTED)
			fail("accept");
	}
}

/* A TCP connection to ADDRESS:PORT; the peer may still be starting, so refusals are retried for a while. */
static int connect_to(const char *address, const char *port)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)parse_number(port, "bad-port")) };
	if (inet_pton(AF_INET, address, &to.sin_addr) != 1) {
		errno = EINVAL;
		fail("bad-address");
	}
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		fail("socket");
	for (int tries = 0; connect(s, (struct sockaddr *)&to, sizeof to) != 0; tries++) {
		if (tries >= 50 || (errno != ECONNREFUSED && errno != ETIMEDOUT && errno != EHOSTUNREACH))
			fail("connect");
		sleep_ms(200);
	}
	return s;
}

static int send_main(int argc, char **argv)
{
	if (argc != 5) {
		errno = EINVAL;
		fail("usage:send-ADDRESS-PORT-DURATION_MS");
	}
	uint64_t duration_ns = (uint64_t)parse_number(argv[4], "bad-duration-ms") * 1000000u;
	static unsigned char chunk[NET_CHUNK_BYTES];
	fill_pattern(chunk, sizeof chunk);

	int s = connect_to(argv[2], argv[3]);
	uint64_t start_ns = now_ns(), sent = 0;
	while (now_ns() - start_ns < duration_ns) {
		ssize_t n = write(s, chunk, sizeof chunk);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fail("write");
		}
		sent += (uint64_t)n;
	}
	/* Half-close, then wait for the receiver's close: everything has arrived. */
	if (shutdown(s, SHUT_WR) != 0)
		fail("shutdown");
	char byte;
	while (read(s, &byte, 1) > 0)
		;
	uint64_t end_ns = now_ns();
	close(s);
	printf(REPORT "test=send bytes=%llu ns=%llu\n", (unsigned long long)sent, (unsigned long long)(end_ns - start_ns));
	return 0;
}

static int recv_main(int argc, char **argv)
{
	if (argc != 5) {
		errno = EINVAL;
		fail("usage:recv-ADDRESS-PORT-DURATION_MS");
	}
	char request[32];
	int request_len = snprintf(request, sizeof request, "%ld\n", parse_number(argv[4], "bad-duration-ms"));
	int s = connect_to(argv[2], argv[3]);
	if (write(s, request, (size_t)request_len) != request_len)
		fail("write");
	static unsigned char chunk[NET_CHUNK_BYTES];
	uint64_t received = 0, first_ns = 0;
	for (;;) {
		ssize_t n = read(s, chunk, sizeof chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("read");
		if (n == 0)
			break;
		if (received == 0)
			first_ns = now_ns();
		received += (uint64_t)n;
	}
	uint64_t end_ns = now_ns();
	close(s);
	printf(REPORT "test=recv bytes=%llu ns=%llu\n", (unsigned long long)received,
	       (unsigned long long)(received ? end_ns - first_ns : 0));
	return 0;
}

/* A listening TCP socket on every address. */
static int listen_on(uint16_t port)
{
	struct sockaddr_in at = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY) };
	int l = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
		fail("socket");
	if (bind(l, (struct sockaddr *)&at, sizeof at) != 0 || listen(l, 4) != 0)
		fail("bind");
	return l;
}

/* The source for `recv`: one connection at a time, for as long as each asks; runs until killed. */
static __attribute__((noreturn)) void source_loop(int l)
{
	static unsigned char chunk[NET_CHUNK_BYTES];
	fill_pattern(chunk, sizeof chunk);
	for (;;) {
		int s = accept_one(l);
		/* The request: the duration in decimal, then a newline. */
		char request[32];
		size_t got = 0;
		while (got < sizeof request - 1 && (got == 0 || request[got - 1] != '\n')) {
			ssize_t n = read(s, request + got, sizeof request - 1 - got);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			got += (size_t)n;
		}
		request[got] = '\0';
		uint64_t duration_ns = (uint64_t)strtoul(request, NULL, 10) * 1000000u;
		uint64_t sent = 0, start_ns = now_ns();
		while (now_ns() - start_ns < duration_ns) {
			ssize_t n = write(s, chunk, sizeof chunk);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				break;
			sent += (uint64_t)n;
		}
		shutdown(s, SHUT_WR);
		char byte;
		while (read(s, &byte, 1) > 0)
			;
		uint64_t end_ns = now_ns();
		close(s);
		printf(REPORT "test=source bytes=%llu ns=%llu\n", (unsigned long long)sent, (unsigned long long)(end_ns - start_ns));
	}
}

static int sink_main(int argc, char **argv)
{
	if (argc != 3) {
		errno = EINVAL;
		fail("usage:sink-PORT");
	}
	uint16_t port = (uint16_t)parse_number(argv[2], "bad-port");
	int l = listen_on(port), source = listen_on((uint16_t)(port + 1));
	/* Both report on the same line-buffered stdout (a line is one write(2)); the child ends with its parent. */
	pid_t parent = getpid(), child = fork();
	if (child < 0)
		fail("fork");
	if (child == 0) {
		close(l);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
			_exit(1);
		source_loop(source);
	}
	close(source);
	printf(REPORT "test=listening port=%s\n", argv[2]);
	static unsigned char chunk[NET_CHUNK_BYTES];
	for (;;) {
		int s = accept_one(l);
		uint64_t received = 0, first_ns = 0, end_ns;
		for (;;) {
			ssize_t n = read(s, chunk, sizeof chunk);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			if (received == 0)
				first_ns = now_ns();
			received += (uint64_t)n;
		}
		end_ns = now_ns();
		close(s);
		printf(REPORT "test=sink bytes=%llu ns=%llu\n", (unsigned long long)received,
		       (unsigned long long)(received ? end_ns - first_ns : 0));
	}
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && strcmp(argv[1], "blk") == 0)
		return blk_main(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "send") == 0)
		return send_main(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "recv") == 0)
		return recv_main(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "sink") == 0)
		return sink_main(argc, argv);
	errno = EINVAL;
	fail("usage:blk|send|recv|sink");
}
