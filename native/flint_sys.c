// flint_sys: the thinnest possible syscall boundary for flint.
//
// Every function here is one system call (or one pointer conversion) with no
// policy. Errors are returned as negative errno values instead of exceptions,
// so that hot paths (KVM_RUN returning EINTR, EAGAIN on a non-blocking fd) stay
// cheap; the TypeScript layer (src/sys/native.ts) turns them into errors.
//
// Pointers cross the boundary as BigInt (uint64) and memory as external
// ArrayBuffers that alias a mapping; the mapping's lifetime is owned by the
// TypeScript side, which must not touch a view after unmapping it.
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <node_api.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/uio.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CHECK(call)                                                            \
  do {                                                                         \
    if ((call) != napi_ok) {                                                   \
      napi_throw_error(env, "EFLINTSYS", "flint_sys: N-API call failed: " #call); \
      return NULL;                                                             \
    }                                                                          \
  } while (0)

static napi_value make_i64(napi_env env, int64_t v) {
  napi_value r;
  if (napi_create_int64(env, v, &r) != napi_ok) return NULL;
  return r;
}

static napi_value make_u64(napi_env env, uint64_t v) {
  napi_value r;
  if (napi_create_bigint_uint64(env, v, &r) != napi_ok) return NULL;
  return r;
}

// Reads a JS number or BigInt as an unsigned 64-bit integer.
static int get_u64(napi_env env, napi_value v, uint64_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return 0;
  if (t == napi_bigint) {
    bool lossless;
    return napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok && lossless;
  }
  if (t == napi_number) {
    int64_t i;
    if (napi_get_value_int64(env, v, &i) != napi_ok) return 0;
    *out = (uint64_t)i;
    return 1;
  }
  return 0;
}

// Resolves an ioctl/syscall argument: undefined -> 0, number/BigInt -> value,
// TypedArray/DataView/ArrayBuffer -> pointer to its first byte.
static int get_arg(napi_env env, napi_value v, uint64_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return 0;
  if (t == napi_undefined || t == napi_null) { *out = 0; return 1; }
  if (t == napi_number || t == napi_bigint) return get_u64(env, v, out);
  bool is;
  void *data = NULL;
  size_t len = 0;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type tt;
    napi_value ab;
    size_t off;
    if (napi_get_typedarray_info(env, v, &tt, &len, &data, &ab, &off) != napi_ok) return 0;
    *out = (uint64_t)(uintptr_t)data;
    return 1;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    napi_value ab;
    size_t off;
    if (napi_get_dataview_info(env, v, &len, &data, &ab, &off) != napi_ok) return 0;
    *out = (uint64_t)(uintptr_t)data;
    return 1;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    if (napi_get_arraybuffer_info(env, v, &data, &len) != napi_ok) return 0;
    *out = (uint64_t)(uintptr_t)data;
    return 1;
  }
  return 0;
}

#define ARGS(n)                                                                \
  size_t argc = n;                                                             \
  napi_value argv[n];                                                          \
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));

#define ARG_U64(i, name)                                                       \
  uint64_t name;                                                               \
  if (i >= argc || !get_arg(env, argv[i], &name)) {                            \
    napi_throw_type_error(env, "EFLINTSYS", "flint_sys: bad argument " #name); \
    return NULL;                                                               \
  }

// ioctl(fd, request, arg?) -> result >= 0, or -errno.
static napi_value js_ioctl(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_U64(0, fd);
  ARG_U64(1, req);
  uint64_t arg = 0;
  if (argc > 2 && !get_arg(env, argv[2], &arg)) {
    napi_throw_type_error(env, "EFLINTSYS", "flint_sys: bad ioctl argument");
    return NULL;
  }
  int r = ioctl((int)fd, (unsigned long)req, (unsigned long)arg);
  return make_i64(env, r < 0 ? -errno : r);
}

// ioctlValue(fd, request, value) -> result >= 0, or -errno. The fast path for
// ioctls whose argument is a plain integer (KVM_RUN, KVM_CHECK_EXTENSION...):
// three number reads and no type dispatch.
static napi_value js_ioctl_value(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd = -1;
  int64_t req = 0, arg = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &req) != napi_ok ||
      (argc > 2 && napi_get_value_int64(env, argv[2], &arg) != napi_ok)) {
    napi_throw_type_error(env, "EFLINTSYS", "flint_sys: ioctlValue(fd, request, value) takes numbers");
    return NULL;
  }
  int r = ioctl(fd, (unsigned long)req, (unsigned long)arg);
  napi_value out;
  napi_create_int32(env, r < 0 ? -errno : r, &out);
  return out;
}

// mmap(length, prot, flags, fd, offset) -> address (BigInt), or -errno (number).
static napi_value js_mmap(napi_env env, napi_callback_info info) {
  ARGS(5);
  ARG_U64(0, len);
  ARG_U64(1, prot);
  ARG_U64(2, flags);
  ARG_U64(3, fd);
  ARG_U64(4, off);
  void *p = mmap(NULL, (size_t)len, (int)prot, (int)flags, (int)(int64_t)fd, (off_t)off);
  if (p == MAP_FAILED) return make_i64(env, -errno);
  return make_u64(env, (uint64_t)(uintptr_t)p);
}

// munmap(address, length) -> 0 or -errno.
static napi_value js_munmap(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_U64(0, addr);
  ARG_U64(1, len);
  int r = munmap((void *)(uintptr_t)addr, (size_t)len);
  return make_i64(env, r < 0 ? -errno : 0);
}

// madvise(address, length, advice) -> 0 or -errno.
static napi_value js_madvise(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_U64(0, addr);
  ARG_U64(1, len);
  ARG_U64(2, advice);
  int r = madvise((void *)(uintptr_t)addr, (size_t)len, (int)advice);
  return make_i64(env, r < 0 ? -errno : 0);
}

// view(address, length) -> ArrayBuffer aliasing [address, address+length).
// No finalizer: the mapping is owned and unmapped by the caller.
static napi_value js_view(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_U64(0, addr);
  ARG_U64(1, len);
  napi_value ab;
  CHECK(napi_create_external_arraybuffer(env, (void *)(uintptr_t)addr, (size_t)len, NULL, NULL, &ab));
  return ab;
}

// addressOf(typedArray | ArrayBuffer | DataView) -> BigInt address of byte 0.
static napi_value js_address_of(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_U64(0, addr);
  return make_u64(env, addr);
}

// eventfd(initval, flags) -> fd or -errno.
static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_U64(0, initval);
  ARG_U64(1, flags);
  int r = eventfd((unsigned int)initval, (int)flags);
  return make_i64(env, r < 0 ? -errno : r);
}

// read(fd, buffer, length) / write(fd, buffer, length) without libuv: for
// eventfds and TAP-like descriptors used from vCPU worker threads.
static napi_value js_read(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_U64(0, fd);
  ARG_U64(1, buf);
  ARG_U64(2, len);
  ssize_t r = read((int)fd, (void *)(uintptr_t)buf, (size_t)len);
  return make_i64(env, r < 0 ? -errno : r);
}

static napi_value js_write(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_U64(0, fd);
  ARG_U64(1, buf);
  ARG_U64(2, len);
  ssize_t r = write((int)fd, (const void *)(uintptr_t)buf, (size_t)len);
  return make_i64(env, r < 0 ? -errno : r);
}

// writev(fd, iov, count) -> bytes, or -errno. `iov` is a buffer of `count`
// struct iovec the caller laid out (frames gathered straight from guest memory).
static napi_value js_writev(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_U64(0, fd);
  ARG_U64(1, iov);
  ARG_U64(2, count);
  ssize_t r = writev((int)fd, (const struct iovec *)(uintptr_t)iov, (int)count);
  return make_i64(env, r < 0 ? -errno : r);
}

// poll(pollfds, nfds, timeoutMs) -> ready count, or -errno. `pollfds` is a
// buffer of struct pollfd that the kernel fills in (revents).
static napi_value js_poll(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_U64(0, fds);
  ARG_U64(1, nfds);
  ARG_U64(2, timeout);
  int r = poll((struct pollfd *)(uintptr_t)fds, (nfds_t)nfds, (int)(int64_t)timeout);
  return make_i64(env, r < 0 ? -errno : r);
}

// pread/pwrite(fd, buffer, length, offset) -> bytes, or -errno.
static napi_value js_pread(napi_env env, napi_callback_info info) {
  ARGS(4);
  ARG_U64(0, fd);
  ARG_U64(1, buf);
  ARG_U64(2, len);
  ARG_U64(3, off);
  ssize_t r = pread((int)fd, (void *)(uintptr_t)buf, (size_t)len, (off_t)off);
  return make_i64(env, r < 0 ? -errno : r);
}

static napi_value js_pwrite(napi_env env, napi_callback_info info) {
  ARGS(4);
  ARG_U64(0, fd);
  ARG_U64(1, buf);
  ARG_U64(2, len);
  ARG_U64(3, off);
  ssize_t r = pwrite((int)fd, (const void *)(uintptr_t)buf, (size_t)len, (off_t)off);
  return make_i64(env, r < 0 ? -errno : r);
}

// fallocate(fd, mode, offset, length) -> 0 or -errno (DISCARD, WRITE_ZEROES).
static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  ARGS(4);
  ARG_U64(0, fd);
  ARG_U64(1, mode);
  ARG_U64(2, off);
  ARG_U64(3, len);
  int r = fallocate((int)fd, (int)mode, (off_t)off, (off_t)len);
  return make_i64(env, r < 0 ? -errno : 0);
}

// fdatasync(fd) / fsync(fd) -> 0 or -errno, without libuv (device threads).
static napi_value js_fdatasync(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_U64(0, fd);
  int r = fdatasync((int)fd);
  return make_i64(env, r < 0 ? -errno : 0);
}

// socket(domain, type, protocol) -> fd or -errno.
static napi_value js_socket(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_U64(0, domain);
  ARG_U64(1, type);
  ARG_U64(2, proto);
  int r = socket((int)domain, (int)type, (int)proto);
  return make_i64(env, r < 0 ? -errno : r);
}

// Fills a sockaddr_un from a JS string path; returns its length or -ENAMETOOLONG.
static int unix_addr(napi_env env, napi_value v, struct sockaddr_un *sa) {
  size_t n = 0;
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (napi_get_value_string_utf8(env, v, sa->sun_path, sizeof sa->sun_path, &n) != napi_ok) return -EINVAL;
  if (n >= sizeof sa->sun_path - 1) return -ENAMETOOLONG;
  return (int)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

// bindUnix(fd, path) / connectUnix(fd, path) -> 0 or -errno.
static napi_value js_bind_unix(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_U64(0, fd);
  struct sockaddr_un sa;
  int len = unix_addr(env, argv[1], &sa);
  if (len < 0) return make_i64(env, len);
  int r = bind((int)fd, (struct sockaddr *)&sa, (socklen_t)len);
  return make_i64(env, r < 0 ? -errno : 0);
}

static napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_U64(0, fd);
  struct sockaddr_un sa;
  int len = unix_addr(env, argv[1], &sa);
  if (len < 0) return make_i64(env, len);
  int r = connect((int)fd, (struct sockaddr *)&sa, (socklen_t)len);
  return make_i64(env, r < 0 ? -errno : 0);
}

// listen(fd, backlog) -> 0 or -errno.
static napi_value js_listen(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_U64(0, fd);
  ARG_U64(1, backlog);
  int r = listen((int)fd, (int)backlog);
  return make_i64(env, r < 0 ? -errno : 0);
}

// accept4(fd, flags) -> new fd or -errno.
static napi_value js_accept4(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_U64(0, fd);
  ARG_U64(1, flags);
  int r = accept4((int)fd, NULL, NULL, (int)flags);
  return make_i64(env, r < 0 ? -errno : r);
}

// shutdown(fd, how) -> 0 or -errno.
static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_U64(0, fd);
  ARG_U64(1, how);
  int r = shutdown((int)fd, (int)how);
  return make_i64(env, r < 0 ? -errno : 0);
}

// open(path, flags, mode) -> fd or -errno (for /dev/net/tun from device threads).
static napi_value js_open(napi_env env, napi_callback_info info) {
  ARGS(3);
  char path[4096];
  size_t n = 0;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], path, sizeof path, &n) != napi_ok || n >= sizeof path - 1) {
    napi_throw_type_error(env, "EFLINTSYS", "flint_sys: bad path");
    return NULL;
  }
  ARG_U64(1, flags);
  ARG_U64(2, mode);
  int r = open(path, (int)flags, (mode_t)mode);
  return make_i64(env, r < 0 ? -errno : r);
}

// close(fd) -> 0 or -errno.
static napi_value js_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_U64(0, fd);
  int r = close((int)fd);
  return make_i64(env, r < 0 ? -errno : 0);
}

// Interrupting a vCPU thread blocked in KVM_RUN: flint installs a handler
// that does nothing for one real-time signal, without SA_RESTART, so that a
// pthread_kill() makes KVM_RUN return -EINTR (Documentation/virt/kvm/api.rst,
// "immediate_exit" and KVM_RUN's EINTR).
static void noop_handler(int sig) { (void)sig; }

// installKickSignal(signo) -> 0 or -errno.
static napi_value js_install_kick_signal(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_U64(0, signo);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = noop_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: the blocked ioctl must return EINTR
  int r = sigaction((int)signo, &sa, NULL);
  if (r == 0) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, (int)signo);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  }
  return make_i64(env, r < 0 ? -errno : 0);
}

// threadSelf() -> BigInt pthread_t of the calling thread.
static napi_value js_thread_self(napi_env env, napi_callback_info info) {
  (void)info;
  return make_u64(env, (uint64_t)pthread_self());
}

// unblockSignal(signo): lets this thread receive the kick signal.
static napi_value js_unblock_signal(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_U64(0, signo);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, (int)signo);
  int r = pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  return make_i64(env, r == 0 ? 0 : -r);
}

// signalThread(pthread, signo) -> 0 or -errno.
static napi_value js_signal_thread(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_U64(0, thread);
  ARG_U64(1, signo);
  int r = pthread_kill((pthread_t)thread, (int)signo);
  return make_i64(env, r == 0 ? 0 : -r);
}

// sigrtmin() -> the first real-time signal number usable by applications.
static napi_value js_sigrtmin(napi_env env, napi_callback_info info) {
  (void)info;
  return make_i64(env, SIGRTMIN);
}

// monotonicNs() -> BigInt CLOCK_MONOTONIC in nanoseconds (for in-worker timing).
static napi_value js_monotonic_ns(napi_env env, napi_callback_info info) {
  (void)info;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return make_u64(env, (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec);
}

// pageSize() -> the host page size.
static napi_value js_page_size(napi_env env, napi_callback_info info) {
  (void)info;
  return make_i64(env, sysconf(_SC_PAGESIZE));
}

NAPI_MODULE_INIT() {
  static const struct {
    const char *name;
    napi_callback cb;
  } fns[] = {
      {"ioctl", js_ioctl},
      {"ioctlValue", js_ioctl_value},
      {"mmap", js_mmap},
      {"munmap", js_munmap},
      {"madvise", js_madvise},
      {"view", js_view},
      {"addressOf", js_address_of},
      {"eventfd", js_eventfd},
      {"read", js_read},
      {"write", js_write},
      {"writev", js_writev},
      {"close", js_close},
      {"poll", js_poll},
      {"pread", js_pread},
      {"pwrite", js_pwrite},
      {"fallocate", js_fallocate},
      {"fdatasync", js_fdatasync},
      {"socket", js_socket},
      {"bindUnix", js_bind_unix},
      {"connectUnix", js_connect_unix},
      {"listen", js_listen},
      {"accept4", js_accept4},
      {"shutdown", js_shutdown},
      {"open", js_open},
      {"installKickSignal", js_install_kick_signal},
      {"unblockSignal", js_unblock_signal},
      {"threadSelf", js_thread_self},
      {"signalThread", js_signal_thread},
      {"sigrtmin", js_sigrtmin},
      {"monotonicNs", js_monotonic_ns},
      {"pageSize", js_page_size},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value fn;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].cb, NULL, &fn) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, fns[i].name, fn) != napi_ok) return NULL;
  }
  return exports;
}
