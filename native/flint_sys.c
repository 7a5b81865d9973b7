// flint_sys: the thinnest possible syscall boundary for flint.
//
// Every function here is one system call (or one pointer conversion) with no
// policy. Errors are returned as negative errno values instead of exceptions,
// so that hot paths (KVM_RUN returning EINTR, EAGAIN on a non-blocking fd) stay
// cheap; the TypeScript layer (src/sys/native.ts) turns them into errors.
//
// What this file does check is memory safety, because TypeScript cannot: a
// length, count or range handed to the kernel must lie inside the buffer it
// names, memory crosses as TypedArray/DataView/ArrayBuffer (never as a number
// that C would trust as a pointer), and raw addresses are only accepted inside
// mappings this addon made with mmap and has not unmapped. A caller's mistake
// throws a TypeError (wrong type) or RangeError (wrong value) whose `code` is
// "EFLINTSYS" and whose message names the function and the argument; it never
// reaches the kernel.
//
// Memory crosses as external ArrayBuffers that alias a mapping (view); the
// mapping's lifetime is owned by the TypeScript side, which must not touch a
// view after unmapping it (V8 cannot detach an external buffer from C here).
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <node_api.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <net/if.h>
#include <sys/uio.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <cpuid.h>
#include <linux/if_tun.h>
#include <linux/kvm.h>
#include <linux/userfaultfd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

// Integers up to 2^53 are exact in a JS number.
#define MAX_SAFE 9007199254740992.0

#define CHECK(call)                                                            \
  do {                                                                         \
    if ((call) != napi_ok) {                                                   \
      napi_throw_error(env, "EFLINTSYS", "flint_sys: N-API call failed: " #call); \
      return NULL;                                                             \
    }                                                                          \
  } while (0)

#define ARGS(n)                                                                \
  size_t argc = n;                                                             \
  napi_value argv[n];                                                          \
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));

// Throws "flint_sys: <fn>: <what>" as a TypeError (range == 0) or RangeError,
// with code EFLINTSYS.
static void fail(napi_env env, int range, const char *fmt, ...) {
  char msg[320];
  int n = snprintf(msg, sizeof msg, "flint_sys: ");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
  va_end(ap);
  if (range) napi_throw_range_error(env, "EFLINTSYS", msg);
  else napi_throw_type_error(env, "EFLINTSYS", msg);
}

// fail(), as an expression worth 0: argument readers `return FAIL(...)`.
#define FAIL(...) (fail(__VA_ARGS__), 0)

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

// --- Argument readers: each returns 1, or throws and returns 0. ------------

// A JS number that is a whole number in [min, max] (no BigInt, no NaN, no fraction).
static int get_int(napi_env env, napi_value v, const char *fn, const char *name, double min, double max, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return FAIL(env, 0, "%s: %s must be a number", fn, name);
  if (!(d >= min && d <= max) || d != (double)(int64_t)d) {
    return FAIL(env, 1, "%s: %s %.17g is not a whole number from %.0f to %.0f", fn, name, d, min, max);
  }
  *out = (int64_t)d;
  return 1;
}

static int get_i32(napi_env env, napi_value v, const char *fn, const char *name, int32_t *out) {
  int64_t x = 0;
  if (!get_int(env, v, fn, name, INT32_MIN, INT32_MAX, &x)) return 0;
  *out = (int32_t)x;
  return 1;
}

// A file offset or length: a whole number or a BigInt in [0, 2^63).
static int get_off(napi_env env, napi_value v, const char *fn, const char *name, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) == napi_ok) {
    if (!(d >= 0 && d <= MAX_SAFE) || d != (double)(int64_t)d) {
      return FAIL(env, 1, "%s: %s %.17g is not a whole number from 0 to 2^53", fn, name, d);
    }
    *out = (int64_t)d;
    return 1;
  }
  uint64_t u;
  bool lossless;
  if (napi_get_value_bigint_uint64(env, v, &u, &lossless) != napi_ok) {
    return FAIL(env, 0, "%s: %s must be a number or a BigInt", fn, name);
  }
  if (!lossless || u > (uint64_t)INT64_MAX) return FAIL(env, 1, "%s: %s is not a BigInt from 0 to 2^63-1", fn, name);
  *out = (int64_t)u;
  return 1;
}

// A host address: a BigInt in [0, 2^64).
static int get_address(napi_env env, napi_value v, const char *fn, uintptr_t *out) {
  uint64_t u;
  bool lossless;
  if (napi_get_value_bigint_uint64(env, v, &u, &lossless) != napi_ok) return FAIL(env, 0, "%s: address must be a BigInt", fn);
  if (!lossless) return FAIL(env, 1, "%s: address is not a BigInt from 0 to 2^64-1", fn);
  *out = (uintptr_t)u;
  return 1;
}

static size_t element_size(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array: case napi_uint8_array: case napi_uint8_clamped_array: return 1;
    case napi_int16_array: case napi_uint16_array: return 2;
    case napi_int32_array: case napi_uint32_array: case napi_float32_array: return 4;
    case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: return 8;
    default: return 0;  // a kind this file does not know: refused rather than guessed
  }
}

// Memory: a TypedArray or DataView (its own window: byteOffset and byteLength
// are honoured) or an ArrayBuffer. Never a number: C cannot check a pointer.
// Returns 0 without throwing when `v` is not memory.
static int buffer_of(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is = false;
  void *d = NULL;
  size_t n = 0;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type t;
    if (napi_get_typedarray_info(env, v, &t, &n, &d, NULL, NULL) != napi_ok || element_size(t) == 0) return 0;
    *data = d;
    *len = n * element_size(t);
    return 1;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    if (napi_get_dataview_info(env, v, &n, &d, NULL, NULL) != napi_ok) return 0;
    *data = d;
    *len = n;
    return 1;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    if (napi_get_arraybuffer_info(env, v, &d, &n) != napi_ok) return 0;
    *data = d;
    *len = n;
    return 1;
  }
  return 0;
}

#define NOT_A_BUFFER "must be a TypedArray, DataView or ArrayBuffer"

// buffer_of, throwing "<fn>: <name> must be a TypedArray..." when `v` is not memory.
static int get_buffer(napi_env env, napi_value v, const char *fn, const char *name, uint8_t **data, size_t *len) {
  return buffer_of(env, v, data, len) || FAIL(env, 0, "%s: %s " NOT_A_BUFFER, fn, name);
}

// A byte count inside a buffer of `cap` bytes: a whole number in [0, cap].
static int get_len(napi_env env, napi_value v, const char *fn, const char *name, size_t cap, size_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return FAIL(env, 0, "%s: %s must be a number", fn, name);
  if (!(d >= 0 && d <= MAX_SAFE) || d != (double)(int64_t)d) return FAIL(env, 1, "%s: %s %.17g is not a whole number of bytes", fn, name, d);
  if (d > (double)cap) return FAIL(env, 1, "%s: %s %.0f exceeds the buffer's %zu bytes", fn, name, d, cap);
  *out = (size_t)d;
  return 1;
}

// A path for open/bind/connect: a string without NUL that fits `size` bytes with its terminator.
static int get_path(napi_env env, napi_value v, const char *fn, char *buf, size_t size, size_t *out) {
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, buf, size, &n) != napi_ok) return FAIL(env, 0, "%s: path must be a string", fn);
  if (n >= size - 1) return FAIL(env, 1, "%s: path is longer than %zu bytes", fn, size - 2);
  if (strlen(buf) != n) return FAIL(env, 1, "%s: path contains a NUL character", fn);
  *out = n;
  return 1;
}

// The kick signal must be a real-time signal: any other number would change
// how the process handles a signal it relies on (SIGSEGV, SIGCHLD...) or end it.
static int get_rt_signal(napi_env env, napi_value v, const char *fn, int *out) {
  int64_t s = 0;
  if (!get_int(env, v, fn, "signo", SIGRTMIN, SIGRTMAX, &s)) return 0;
  *out = (int)s;
  return 1;
}

// --- Mappings made by mmap: the only places a raw address may point. -------

struct mapping {
  uintptr_t start;
  size_t len;
};

static pthread_mutex_t maps_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mapping *maps;
static size_t maps_count, maps_cap;

// Index of the mapping that holds all of [a, a+len), or -1. Caller holds maps_lock.
static ptrdiff_t maps_find(uintptr_t a, size_t len) {
  for (size_t i = 0; i < maps_count; i++) {
    const struct mapping *m = &maps[i];
    if (a >= m->start && a - m->start <= m->len && len <= m->len - (a - m->start)) return (ptrdiff_t)i;
  }
  return -1;
}

static int maps_contain(uintptr_t a, size_t len) {
  pthread_mutex_lock(&maps_lock);
  int ok = maps_find(a, len) >= 0;
  pthread_mutex_unlock(&maps_lock);
  return ok;
}

// --- ioctl ------------------------------------------------------------------

// The size of each memory slot registered through this addon, by (VM fd,
// slot), so that KVM_GET_DIRTY_LOG's bitmap (one bit per page of the slot,
// api.rst 4.8) can be checked against the buffer it is written to. A slot
// re-registered (or an fd number reused by another VM, which registers its
// own slots through here too) overwrites the record; a slot KVM does not
// have, or one without KVM_MEM_LOG_DIRTY_PAGES, makes KVM fail with ENOENT
// before it writes anything. Caller holds maps_lock.
struct slot_size { int fd; uint32_t slot; uint64_t size; };
static struct slot_size *slots;
static size_t slots_count, slots_cap;

static void slot_record(int fd, uint32_t slot, uint64_t size) {
  for (size_t i = 0; i < slots_count; i++) {
    if (slots[i].fd == fd && slots[i].slot == slot) { slots[i].size = size; return; }
  }
  if (slots_count == slots_cap) {
    size_t cap = slots_cap ? slots_cap * 2 : 16;
    struct slot_size *n = realloc(slots, cap * sizeof *n);
    if (!n) return;  // unrecorded: getDirtyLog refuses the slot
    slots = n;
    slots_cap = cap;
  }
  slots[slots_count++] = (struct slot_size){fd, slot, size};
}

static int slot_size_of(int fd, uint32_t slot, uint64_t *size) {
  for (size_t i = 0; i < slots_count; i++) {
    if (slots[i].fd == fd && slots[i].slot == slot) { *size = slots[i].size; return 1; }
  }
  return 0;
}

// Requests whose argument is a value, not memory: KVM's _IO requests
// (KVM_RUN, KVM_CREATE_VCPU, KVM_SET_TSS_ADDR...), and TUNSETOFFLOAD, declared
// _IOW but taking its flags as the value (drivers/net/tun.c). Other requests
// with no direction are the old, unencoded ones (FIONREAD, TCGETS, SIOC*),
// many of which take a pointer of a size C cannot know: they are refused, but
// for SIOCGIFINDEX, whose struct ifreq ioctl_buffer names.
// USERFAULTFD_IOC_NEW (on /dev/userfaultfd) takes the new userfaultfd's flags
// as its value (Documentation/admin-guide/mm/userfaultfd.rst).
static int takes_value(unsigned int cmd) {
  return (_IOC_DIR(cmd) == _IOC_NONE && _IOC_TYPE(cmd) == KVMIO) || cmd == TUNSETOFFLOAD
#ifdef USERFAULTFD_IOC_NEW
         || cmd == USERFAULTFD_IOC_NEW
#endif
      ;
}

// Requests whose kernel-side argument holds a pointer or a size the checks
// below do not understand: refused, so that every ioctl that passes stays
// within its buffer. Give one a rule in ioctl_buffer() before using it.
static int unchecked_request(unsigned int cmd) {
  switch (cmd) {
    case KVM_GET_DIRTY_LOG: case KVM_CLEAR_DIRTY_LOG: case KVM_SET_GSI_ROUTING: case KVM_SET_PMU_EVENT_FILTER:
    case KVM_SET_SIGNAL_MASK: case KVM_GET_ONE_REG: case KVM_SET_ONE_REG: case KVM_GET_REG_LIST:
    case KVM_GET_NESTED_STATE: case KVM_SET_NESTED_STATE: case KVM_X86_SET_MSR_FILTER:
    case KVM_SET_DEVICE_ATTR: case KVM_GET_DEVICE_ATTR: case KVM_HAS_DEVICE_ATTR: case KVM_MEMORY_ENCRYPT_OP:
#ifdef KVM_SET_USER_MEMORY_REGION2
    case KVM_SET_USER_MEMORY_REGION2:
#endif
    case TUNSETTXFILTER: case TUNATTACHFILTER: case TUNGETFILTER:
    // Its src is a pointer into this process: uffdCopy() builds the struct from a checked buffer.
    case UFFDIO_COPY:
      return 1;
    default:
      return 0;
  }
}

// A request whose struct ends in `count` entries of `entry` bytes after a
// `header` (api.rst: KVM_SET_CPUID2's nent, KVM_SET_MSRS's nmsrs...): the
// count is read once, checked against the buffer, and the kernel works on a
// private copy, so a count changed under us (a SharedArrayBuffer) cannot
// make it read or write past what was checked.
static int ioctl_counted(napi_env env, int fd, unsigned int cmd, uint8_t *buf, size_t cap,
                         size_t header, size_t count_at, size_t entry, int *result) {
  if (cap < header) return FAIL(env, 1, "ioctl: request 0x%x needs at least %zu bytes, the buffer holds %zu", cmd, header, cap);
  uint32_t count;
  memcpy(&count, buf + count_at, sizeof count);
  size_t need = header + (size_t)count * entry;
  if (need > cap) return FAIL(env, 1, "ioctl: request 0x%x: count %u needs %zu bytes, the buffer holds %zu", cmd, count, need, cap);
  uint8_t *copy = malloc(need);
  if (!copy) { *result = -ENOMEM; return 1; }
  memcpy(copy, buf, need);
  int r = ioctl(fd, cmd, copy);
  int e = errno;
  if (_IOC_DIR(cmd) & _IOC_READ) memcpy(buf, copy, need);
  free(copy);
  *result = r < 0 ? -e : r;
  return 1;
}

// The largest XSAVE area this CPU can need: CPUID.(EAX=0DH,ECX=0):ECX, "the
// size required by all supported features in XCR0" (Intel SDM vol. 1 §13.2),
// and never less than struct kvm_xsave. The kernel's own sizes derive from the
// same leaf, so no vCPU's XSAVE state is larger.
static size_t xsave_max_size(void) {
  static size_t size;  // a benign race: every thread computes the same value
  if (size == 0) {
    unsigned int a, b, c, d;
    size_t s = sizeof(struct kvm_xsave);
    if (__get_cpuid_count(0xd, 0, &a, &b, &c, &d) && c > s) s = c;
    size = s;
  }
  return size;
}

// KVM_GET_XSAVE2 and KVM_SET_XSAVE copy the vCPU's uabi_size bytes
// (arch/x86/kvm/x86.c; api.rst 4.43, 4.134: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)
// bytes), which exceed the 4096 of _IOC_SIZE once the process enabled a dynamic
// XSAVE feature (AMX) with arch_prctl. The kernel works on a private buffer of
// the largest XSAVE size; the caller's buffer (at least struct kvm_xsave) gives
// or takes as many of its bytes as it holds, and a short one reads as zeros.
static int ioctl_xsave(napi_env env, int fd, unsigned int cmd, uint8_t *buf, size_t cap, int *result) {
  if (cap < sizeof(struct kvm_xsave)) {
    return FAIL(env, 1, "ioctl: request 0x%x reads or writes %zu bytes, the buffer holds %zu", cmd, sizeof(struct kvm_xsave), cap);
  }
  size_t max = xsave_max_size();
  size_t n = cap < max ? cap : max;
  uint8_t *copy = calloc(1, max);
  if (!copy) { *result = -ENOMEM; return 1; }
  if (_IOC_DIR(cmd) & _IOC_WRITE) memcpy(copy, buf, n);
  int r = ioctl(fd, cmd, copy);
  int e = errno;
  if (r >= 0 && (_IOC_DIR(cmd) & _IOC_READ)) memcpy(buf, copy, n);
  free(copy);
  *result = r < 0 ? -e : r;
  return 1;
}

// ioctl with a buffer argument: the kernel reads or writes at most the size
// checked here.
static int ioctl_buffer(napi_env env, int fd, unsigned int cmd, uint8_t *buf, size_t cap, int *result) {
  size_t need = _IOC_SIZE(cmd);
  switch (cmd) {
    case KVM_GET_SUPPORTED_CPUID: case KVM_GET_EMULATED_CPUID: case KVM_SET_CPUID2: case KVM_GET_CPUID2:
      return ioctl_counted(env, fd, cmd, buf, cap, sizeof(struct kvm_cpuid2), offsetof(struct kvm_cpuid2, nent),
                           sizeof(struct kvm_cpuid_entry2), result);
    case KVM_SET_CPUID:
      return ioctl_counted(env, fd, cmd, buf, cap, sizeof(struct kvm_cpuid), offsetof(struct kvm_cpuid, nent),
                           sizeof(struct kvm_cpuid_entry), result);
    case KVM_GET_MSRS: case KVM_SET_MSRS:
      return ioctl_counted(env, fd, cmd, buf, cap, sizeof(struct kvm_msrs), offsetof(struct kvm_msrs, nmsrs),
                           sizeof(struct kvm_msr_entry), result);
    case KVM_GET_MSR_INDEX_LIST: case KVM_GET_MSR_FEATURE_INDEX_LIST:
      return ioctl_counted(env, fd, cmd, buf, cap, sizeof(struct kvm_msr_list), offsetof(struct kvm_msr_list, nmsrs),
                           sizeof(__u32), result);
#ifdef KVM_GET_XSAVE2
    case KVM_GET_XSAVE2:
#endif
    case KVM_SET_XSAVE:
      return ioctl_xsave(env, fd, cmd, buf, cap, result);
    case TUNSETIFF: case TUNGETIFF:
      // Declared with an int, but the kernel reads and writes a whole struct ifreq (drivers/net/tun.c).
    case SIOCGIFINDEX:
      // Unencoded (sockios.h); the kernel reads ifr_name and writes ifr_ifindex of a struct ifreq (net/core/dev_ioctl.c).
      need = sizeof(struct ifreq);
      break;
    case KVM_SET_USER_MEMORY_REGION: {
      // The struct names host memory KVM will let the guest read and write:
      // it must be memory this addon mapped (deleting a slot names none).
      struct kvm_userspace_memory_region m;
      if (cap < sizeof m) return FAIL(env, 1, "ioctl: request 0x%x reads %zu bytes, the buffer holds %zu", cmd, sizeof m, cap);
      memcpy(&m, buf, sizeof m);
      pthread_mutex_lock(&maps_lock);
      if (m.memory_size != 0 && (m.userspace_addr > UINTPTR_MAX || m.memory_size > SIZE_MAX ||
                                 maps_find((uintptr_t)m.userspace_addr, (size_t)m.memory_size) < 0)) {
        pthread_mutex_unlock(&maps_lock);
        return FAIL(env, 1, "ioctl: KVM_SET_USER_MEMORY_REGION: userspace_addr 0x%llx+%llu is not inside a mapping made by mmap",
                    (unsigned long long)m.userspace_addr, (unsigned long long)m.memory_size);
      }
      int r = ioctl(fd, cmd, &m);
      int e = errno;
      if (r == 0) slot_record(fd, m.slot, m.memory_size);
      pthread_mutex_unlock(&maps_lock);
      *result = r < 0 ? -e : r;
      return 1;
    }
    case UFFDIO_REGISTER: case UFFDIO_UNREGISTER: {
      // Registering makes every later touch of the range wait for whoever
      // holds the userfaultfd: only memory this addon mapped (guest memory)
      // may be registered or unregistered here. (UFFDIO_WAKE and
      // UFFDIO_ZEROPAGE name ranges of the userfaultfd's own process, which
      // may be another one's: the kernel checks them against what that
      // process registered.)
      struct uffdio_range range;
      size_t size = cmd == UFFDIO_REGISTER ? sizeof(struct uffdio_register) : sizeof(struct uffdio_range);
      if (cap < size) return FAIL(env, 1, "ioctl: request 0x%x reads or writes %zu bytes, the buffer holds %zu", cmd, size, cap);
      memcpy(&range, buf, sizeof range);  // struct uffdio_register starts with its range
      uint8_t copy[sizeof(struct uffdio_register)];
      memcpy(copy, buf, size);
      pthread_mutex_lock(&maps_lock);
      if (range.start > UINTPTR_MAX || range.len > SIZE_MAX || range.len == 0 ||
          maps_find((uintptr_t)range.start, (size_t)range.len) < 0) {
        pthread_mutex_unlock(&maps_lock);
        return FAIL(env, 1, "ioctl: %s: range 0x%llx+%llu is not inside a mapping made by mmap",
                    cmd == UFFDIO_REGISTER ? "UFFDIO_REGISTER" : "UFFDIO_UNREGISTER",
                    (unsigned long long)range.start, (unsigned long long)range.len);
      }
      int r = ioctl(fd, cmd, copy);  // a private copy: the checked range is the one registered
      int e = errno;
      pthread_mutex_unlock(&maps_lock);
      if (_IOC_DIR(cmd) & _IOC_READ) memcpy(buf, copy, size);
      *result = r < 0 ? -e : r;
      return 1;
    }
    default:
      if (unchecked_request(cmd)) {
        return FAIL(env, 0, "ioctl: request 0x%x carries pointers or sizes flint_sys does not check", cmd);
      }
  }
  if (need > cap) return FAIL(env, 1, "ioctl: request 0x%x reads or writes %zu bytes, the buffer holds %zu", cmd, need, cap);
  int r = ioctl(fd, cmd, buf);
  *result = r < 0 ? -errno : r;
  return 1;
}

// ioctl(fd, request, arg?) -> result >= 0, or -errno. `arg` is a whole number
// (or nothing: 0) for a request that takes a value (takes_value), and a buffer
// when the request's direction (_IOC_DIR) says the kernel reads or writes memory.
static napi_value js_ioctl(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd;
  int64_t req;
  if (!get_i32(env, argv[0], "ioctl", "fd", &fd) || !get_int(env, argv[1], "ioctl", "request", 0, UINT32_MAX, &req)) return NULL;
  unsigned int cmd = (unsigned int)req;  // the kernel's cmd is an unsigned int
  int r;
  if (takes_value(cmd)) {
    napi_valuetype t;
    CHECK(napi_typeof(env, argv[2], &t));
    int64_t value = 0;
    if (t == napi_object) {
      fail(env, 0, "ioctl: request 0x%x takes a value, not a buffer", cmd);
      return NULL;
    }
    if (t != napi_undefined && !get_int(env, argv[2], "ioctl", "arg", -MAX_SAFE, MAX_SAFE, &value)) return NULL;
    r = ioctl(fd, cmd, (unsigned long)value);
    return make_i64(env, r < 0 ? -errno : r);
  }
  if (_IOC_DIR(cmd) == _IOC_NONE && cmd != SIOCGIFINDEX) {
    fail(env, 0, "ioctl: request 0x%x has no _IOC direction and size, so flint_sys cannot check its argument", cmd);
    return NULL;
  }
  uint8_t *buf;
  size_t cap;
  if (!buffer_of(env, argv[2], &buf, &cap)) {
    fail(env, 0, "ioctl: arg of request 0x%x " NOT_A_BUFFER, cmd);
    return NULL;
  }
  if (!ioctl_buffer(env, fd, cmd, buf, cap, &r)) return NULL;
  return make_i64(env, r);
}

// ioctlValue(fd, request, value) -> result >= 0, or -errno. The fast path for
// ioctls whose argument is a plain integer (KVM_RUN, KVM_CHECK_EXTENSION...):
// three number reads, a range check and no type dispatch. It takes only the
// requests ioctl() would take a value for, so it is no way around the checks.
static napi_value js_ioctl_value(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd = -1;
  int64_t req = 0, arg = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &req) != napi_ok ||
      (argc > 2 && napi_get_value_int64(env, argv[2], &arg) != napi_ok)) {
    fail(env, 0, "ioctlValue: fd, request and value must be numbers");
    return NULL;
  }
  if (req < 0 || req > UINT32_MAX || !takes_value((unsigned int)req)) {
    fail(env, 1, "ioctlValue: request 0x%llx does not take a value (pass a buffer to ioctl)", (unsigned long long)req);
    return NULL;
  }
  int r = ioctl(fd, (unsigned int)req, (unsigned long)arg);
  napi_value out;
  napi_create_int32(env, r < 0 ? -errno : r, &out);
  return out;
}

// --- Memory mappings ----------------------------------------------------------

// mmap(length, prot, flags, fd, offset) -> address (BigInt), or -errno (number).
// The kernel chooses the address (no MAP_FIXED: that would replace memory the
// process already uses); the mapping is recorded so view/madvise/munmap and
// KVM_SET_USER_MEMORY_REGION can check addresses against it.
static napi_value js_mmap(napi_env env, napi_callback_info info) {
  ARGS(5);
  int64_t len, off;
  int32_t prot, flags, fd;
  if (!get_int(env, argv[0], "mmap", "length", 1, MAX_SAFE, &len) || !get_i32(env, argv[1], "mmap", "prot", &prot) ||
      !get_i32(env, argv[2], "mmap", "flags", &flags) || !get_i32(env, argv[3], "mmap", "fd", &fd) ||
      !get_off(env, argv[4], "mmap", "offset", &off)) {
    return NULL;
  }
  if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
    fail(env, 1, "mmap: flags 0x%x ask for a fixed address, which flint_sys does not map", (unsigned)flags);
    return NULL;
  }
  pthread_mutex_lock(&maps_lock);
  void *p = mmap(NULL, (size_t)len, prot, flags, fd, (off_t)off);
  int e = errno;
  if (p != MAP_FAILED && maps_count == maps_cap) {
    size_t cap = maps_cap ? 2 * maps_cap : 16;
    struct mapping *grown = realloc(maps, cap * sizeof *grown);
    if (grown) { maps = grown; maps_cap = cap; }
  }
  if (p != MAP_FAILED && maps_count == maps_cap) {
    munmap(p, (size_t)len);
    p = MAP_FAILED;
    e = ENOMEM;
  }
  if (p != MAP_FAILED) maps[maps_count++] = (struct mapping){(uintptr_t)p, (size_t)len};
  pthread_mutex_unlock(&maps_lock);
  if (p == MAP_FAILED) return make_i64(env, -e);
  return make_u64(env, (uint64_t)(uintptr_t)p);
}

// mmapOver(address, length, prot, flags, fd, offset) -> 0 or -errno: maps
// anew, MAP_FIXED, over exactly one whole mapping made by mmap (same address
// and length), which keeps its record: the way to give memory reserved ahead
// (and registered with KVM ahead) its contents later. Anything else throws.
// Should the kernel refuse, the range is reserved again (PROT_NONE,
// anonymous), so that it is never left unmapped while recorded.
static napi_value js_mmap_over(napi_env env, napi_callback_info info) {
  ARGS(6);
  uintptr_t addr;
  int64_t len, off;
  int32_t prot, flags, fd;
  if (!get_address(env, argv[0], "mmapOver", &addr) || !get_int(env, argv[1], "mmapOver", "length", 1, MAX_SAFE, &len) ||
      !get_i32(env, argv[2], "mmapOver", "prot", &prot) || !get_i32(env, argv[3], "mmapOver", "flags", &flags) ||
      !get_i32(env, argv[4], "mmapOver", "fd", &fd) || !get_off(env, argv[5], "mmapOver", "offset", &off)) {
    return NULL;
  }
  if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
    fail(env, 1, "mmapOver: flags 0x%x already ask for a fixed address; the address given is the one used", (unsigned)flags);
    return NULL;
  }
  pthread_mutex_lock(&maps_lock);
  size_t i = 0;
  while (i < maps_count && !(maps[i].start == addr && maps[i].len == (size_t)len)) i++;
  if (i == maps_count) {
    pthread_mutex_unlock(&maps_lock);
    fail(env, 1, "mmapOver: 0x%llx+%lld is not a mapping made by mmap", (unsigned long long)addr, (long long)len);
    return NULL;
  }
  void *p = mmap((void *)addr, (size_t)len, prot, flags | MAP_FIXED, fd, (off_t)off);
  int e = errno;
  if (p == MAP_FAILED && mmap((void *)addr, (size_t)len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED) {
    maps[i] = maps[--maps_count];  // nothing is mapped there any more: forget it
  }
  pthread_mutex_unlock(&maps_lock);
  return make_i64(env, p == MAP_FAILED ? -e : 0);
}

// munmap(address, length) -> 0 or -errno. Only a whole mapping made by mmap
// (same address and length): a part would leave the table and the kernel
// disagreeing about what is mapped.
static napi_value js_munmap(napi_env env, napi_callback_info info) {
  ARGS(2);
  uintptr_t addr;
  int64_t len;
  if (!get_address(env, argv[0], "munmap", &addr) || !get_int(env, argv[1], "munmap", "length", 0, MAX_SAFE, &len)) return NULL;
  pthread_mutex_lock(&maps_lock);
  size_t i = 0;
  while (i < maps_count && !(maps[i].start == addr && maps[i].len == (size_t)len)) i++;
  if (i == maps_count) {
    pthread_mutex_unlock(&maps_lock);
    fail(env, 1, "munmap: 0x%llx+%lld is not a mapping made by mmap", (unsigned long long)addr, (long long)len);
    return NULL;
  }
  int r = munmap((void *)addr, (size_t)len);
  int e = errno;
  if (r == 0) maps[i] = maps[--maps_count];
  pthread_mutex_unlock(&maps_lock);
  return make_i64(env, r < 0 ? -e : 0);
}

// madvise(address, length, advice) -> 0 or -errno, within a mapping made by mmap.
static napi_value js_madvise(napi_env env, napi_callback_info info) {
  ARGS(3);
  uintptr_t addr;
  int64_t len;
  int32_t advice;
  if (!get_address(env, argv[0], "madvise", &addr) || !get_int(env, argv[1], "madvise", "length", 0, MAX_SAFE, &len) ||
      !get_i32(env, argv[2], "madvise", "advice", &advice)) {
    return NULL;
  }
  // The lock is held across the call so that the range cannot be unmapped in between.
  pthread_mutex_lock(&maps_lock);
  if (maps_find(addr, (size_t)len) < 0) {
    pthread_mutex_unlock(&maps_lock);
    fail(env, 1, "madvise: 0x%llx+%lld is not inside a mapping made by mmap", (unsigned long long)addr, (long long)len);
    return NULL;
  }
  int r = madvise((void *)addr, (size_t)len, advice);
  int e = errno;
  pthread_mutex_unlock(&maps_lock);
  return make_i64(env, r < 0 ? -e : 0);
}

// flint_shared_view.cc: a SharedArrayBuffer over [addr, addr+len).
napi_value flint_shared_view(void *addr, size_t len);

// view(address, length) -> SharedArrayBuffer aliasing [address, address+length),
// which must lie inside a mapping made by mmap (from any thread: mappings are
// process-wide). No finalizer: the mapping is owned and unmapped by the caller.
// Shared, not an external ArrayBuffer: V8 counts an external ArrayBuffer's
// length against its isolate and collects (a full mark-compact) each time a
// VM's guest RAM is viewed (see flint_shared_view.cc).
static napi_value js_view(napi_env env, napi_callback_info info) {
  ARGS(2);
  uintptr_t addr;
  int64_t len;
  if (!get_address(env, argv[0], "view", &addr) || !get_int(env, argv[1], "view", "length", 0, MAX_SAFE, &len)) return NULL;
  if (!maps_contain(addr, (size_t)len)) {
    fail(env, 1, "view: 0x%llx+%lld is not inside a mapping made by mmap", (unsigned long long)addr, (long long)len);
    return NULL;
  }
  return flint_shared_view((void *)addr, (size_t)len);
}

// --- File descriptors ---------------------------------------------------------

// eventfd(initval, flags) -> fd or -errno.
static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  ARGS(2);
  int64_t initval;
  int32_t flags;
  if (!get_int(env, argv[0], "eventfd", "initval", 0, UINT32_MAX, &initval) || !get_i32(env, argv[1], "eventfd", "flags", &flags)) return NULL;
  int r = eventfd((unsigned int)initval, flags);
  return make_i64(env, r < 0 ? -errno : r);
}

// read(fd, buffer, length) / write(fd, buffer, length) without libuv: for
// eventfds and TAP-like descriptors used from device and vCPU threads.
// `length` is at most the buffer's byteLength (a view's own window).
static napi_value js_read(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd;
  uint8_t *buf;
  size_t cap, len;
  if (!get_i32(env, argv[0], "read", "fd", &fd) || !get_buffer(env, argv[1], "read", "buffer", &buf, &cap) ||
      !get_len(env, argv[2], "read", "length", cap, &len)) {
    return NULL;
  }
  ssize_t r = read(fd, buf, len);
  return make_i64(env, r < 0 ? -errno : r);
}

static napi_value js_write(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd;
  uint8_t *buf;
  size_t cap, len;
  if (!get_i32(env, argv[0], "write", "fd", &fd) || !get_buffer(env, argv[1], "write", "buffer", &buf, &cap) ||
      !get_len(env, argv[2], "write", "length", cap, &len)) {
    return NULL;
  }
  ssize_t r = write(fd, buf, len);
  return make_i64(env, r < 0 ? -errno : r);
}

// The most buffers one readv/writev may name (a packet's head, guest RAM regions).
#define IOV_MAX_BUFFERS 16

// writev(fd, iov, count, ...buffers) and readv(fd, iov, count, ...buffers) ->
// bytes, or -errno. `iov` is a Float64Array of `count` (buffer index, offset,
// length) triples, each naming bytes inside one of the up to 16 trailing
// buffer arguments. C checks every triple and builds the struct iovec array
// itself, so no raw address crosses the boundary, and a frame is gathered
// from (writev) or scattered into (readv) guest memory in place, with no copy
// in user space. Buffers are arguments rather than an array: reading an
// array's elements through N-API costs more than the checks.
static napi_value io_vector(napi_env env, napi_callback_info info, const char *name, bool read_into) {
  size_t argc = 3 + IOV_MAX_BUFFERS + 1;
  napi_value argv[3 + IOV_MAX_BUFFERS + 1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int64_t count;
  if (!get_i32(env, argv[0], name, "fd", &fd)) return NULL;
  uint32_t nbuf = argc > 3 ? (uint32_t)(argc - 3) : 0;
  if (nbuf > IOV_MAX_BUFFERS) {
    fail(env, 1, "%s: buffers: more than %d", name, IOV_MAX_BUFFERS);
    return NULL;
  }
  uint8_t *base[IOV_MAX_BUFFERS];
  size_t size[IOV_MAX_BUFFERS];
  for (uint32_t i = 0; i < nbuf; i++) {
    if (!buffer_of(env, argv[3 + i], &base[i], &size[i])) {
      fail(env, 0, "%s: buffers[%u] " NOT_A_BUFFER, name, i);
      return NULL;
    }
  }
  bool is = false;
  napi_typedarray_type t;
  size_t n = 0;
  void *data = NULL;
  if (napi_is_typedarray(env, argv[1], &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, argv[1], &t, &n, &data, NULL, NULL) != napi_ok || t != napi_float64_array) {
    fail(env, 0, "%s: iov must be a Float64Array", name);
    return NULL;
  }
  if (!get_int(env, argv[2], name, "count", 0, IOV_MAX, &count)) return NULL;
  if ((size_t)count * 3 > n) {
    fail(env, 1, "%s: count %lld needs %lld iov numbers, iov holds %zu", name, (long long)count, (long long)count * 3, n);
    return NULL;
  }
  struct iovec iov[IOV_MAX];
  const double *triples = data;
  for (int64_t i = 0; i < count; i++) {
    double b = triples[3 * i], o = triples[3 * i + 1], l = triples[3 * i + 2];
    // Every test is written so that NaN fails it.
    if (!(b >= 0 && b < nbuf && b == (double)(uint32_t)b && o >= 0 && o <= MAX_SAFE && o == (double)(int64_t)o &&
          l >= 0 && l <= MAX_SAFE && l == (double)(int64_t)l && o <= (double)size[(uint32_t)b] &&
          l <= (double)size[(uint32_t)b] - o)) {
      fail(env, 1, "%s: iov entry %lld (buffer %.17g, offset %.17g, length %.17g) is not inside one of the %u buffers",
           name, (long long)i, b, o, l, nbuf);
      return NULL;
    }
    iov[i].iov_base = base[(uint32_t)b] + (size_t)o;
    iov[i].iov_len = (size_t)l;
  }
  ssize_t r = read_into ? readv(fd, iov, (int)count) : writev(fd, iov, (int)count);
  return make_i64(env, r < 0 ? -errno : r);
}

static napi_value js_writev(napi_env env, napi_callback_info info) { return io_vector(env, info, "writev", false); }
static napi_value js_readv(napi_env env, napi_callback_info info) { return io_vector(env, info, "readv", true); }

// poll(pollfds, nfds, timeoutMs) -> ready count, or -errno. `pollfds` is a
// buffer holding at least `nfds` struct pollfd, which the kernel fills in (revents).
static napi_value js_poll(napi_env env, napi_callback_info info) {
  ARGS(3);
  uint8_t *buf;
  size_t cap;
  int64_t nfds;
  int32_t timeout;
  if (!get_buffer(env, argv[0], "poll", "pollfds", &buf, &cap) || !get_int(env, argv[1], "poll", "nfds", 0, UINT32_MAX, &nfds) ||
      !get_i32(env, argv[2], "poll", "timeoutMs", &timeout)) {
    return NULL;
  }
  if ((uint64_t)nfds * sizeof(struct pollfd) > cap) {
    fail(env, 1, "poll: nfds %lld needs %llu bytes, the buffer holds %zu", (long long)nfds,
         (unsigned long long)nfds * sizeof(struct pollfd), cap);
    return NULL;
  }
  int r = poll((struct pollfd *)buf, (nfds_t)nfds, timeout);
  return make_i64(env, r < 0 ? -errno : r);
}

// pread/pwrite(fd, buffer, length, offset) -> bytes, or -errno.
static napi_value js_pread(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fd;
  uint8_t *buf;
  size_t cap, len;
  int64_t off;
  if (!get_i32(env, argv[0], "pread", "fd", &fd) || !get_buffer(env, argv[1], "pread", "buffer", &buf, &cap) ||
      !get_len(env, argv[2], "pread", "length", cap, &len) || !get_off(env, argv[3], "pread", "offset", &off)) {
    return NULL;
  }
  ssize_t r = pread(fd, buf, len, (off_t)off);
  return make_i64(env, r < 0 ? -errno : r);
}

static napi_value js_pwrite(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fd;
  uint8_t *buf;
  size_t cap, len;
  int64_t off;
  if (!get_i32(env, argv[0], "pwrite", "fd", &fd) || !get_buffer(env, argv[1], "pwrite", "buffer", &buf, &cap) ||
      !get_len(env, argv[2], "pwrite", "length", cap, &len) || !get_off(env, argv[3], "pwrite", "offset", &off)) {
    return NULL;
  }
  ssize_t r = pwrite(fd, buf, len, (off_t)off);
  return make_i64(env, r < 0 ? -errno : r);
}

// fallocate(fd, mode, offset, length) -> 0 or -errno (DISCARD, WRITE_ZEROES).
static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fd, mode;
  int64_t off, len;
  if (!get_i32(env, argv[0], "fallocate", "fd", &fd) || !get_i32(env, argv[1], "fallocate", "mode", &mode) ||
      !get_off(env, argv[2], "fallocate", "offset", &off) || !get_off(env, argv[3], "fallocate", "length", &len)) {
    return NULL;
  }
  int r = fallocate(fd, mode, (off_t)off, (off_t)len);
  return make_i64(env, r < 0 ? -errno : 0);
}

// fdatasync(fd) -> 0 or -errno, without libuv (device threads).
static napi_value js_fdatasync(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  if (!get_i32(env, argv[0], "fdatasync", "fd", &fd)) return NULL;
  int r = fdatasync(fd);
  return make_i64(env, r < 0 ? -errno : 0);
}

// socket(domain, type, protocol) -> fd or -errno.
static napi_value js_socket(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t domain, type, proto;
  if (!get_i32(env, argv[0], "socket", "domain", &domain) || !get_i32(env, argv[1], "socket", "type", &type) ||
      !get_i32(env, argv[2], "socket", "protocol", &proto)) {
    return NULL;
  }
  int r = socket(domain, type, proto);
  return make_i64(env, r < 0 ? -errno : r);
}

// Fills a sockaddr_un from a JS string path; returns its length, 0 after
// throwing (not a string, a NUL inside), or -ENAMETOOLONG.
static int unix_addr(napi_env env, napi_value v, const char *fn, struct sockaddr_un *sa) {
  size_t n = 0;
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) return FAIL(env, 0, "%s: path must be a string", fn);
  if (napi_get_value_string_utf8(env, v, sa->sun_path, sizeof sa->sun_path, &n) != napi_ok) return FAIL(env, 0, "%s: path must be a string", fn);
  if (n >= sizeof sa->sun_path - 1) return -ENAMETOOLONG;
  if (strlen(sa->sun_path) != n) return FAIL(env, 1, "%s: path contains a NUL character", fn);
  return (int)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

// bindUnix(fd, path) / connectUnix(fd, path) -> 0 or -errno (-ENAMETOOLONG for a long path).
static napi_value js_bind_unix(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  if (!get_i32(env, argv[0], "bindUnix", "fd", &fd)) return NULL;
  struct sockaddr_un sa;
  int len = unix_addr(env, argv[1], "bindUnix", &sa);
  if (len == 0) return NULL;
  if (len < 0) return make_i64(env, len);
  int r = bind(fd, (struct sockaddr *)&sa, (socklen_t)len);
  return make_i64(env, r < 0 ? -errno : 0);
}

static napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  if (!get_i32(env, argv[0], "connectUnix", "fd", &fd)) return NULL;
  struct sockaddr_un sa;
  int len = unix_addr(env, argv[1], "connectUnix", &sa);
  if (len == 0) return NULL;
  if (len < 0) return make_i64(env, len);
  int r = connect(fd, (struct sockaddr *)&sa, (socklen_t)len);
  return make_i64(env, r < 0 ? -errno : 0);
}

// listen(fd, backlog) -> 0 or -errno.
static napi_value js_listen(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd, backlog;
  if (!get_i32(env, argv[0], "listen", "fd", &fd) || !get_i32(env, argv[1], "listen", "backlog", &backlog)) return NULL;
  int r = listen(fd, backlog);
  return make_i64(env, r < 0 ? -errno : 0);
}

// accept4(fd, flags) -> new fd or -errno.
static napi_value js_accept4(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd, flags;
  if (!get_i32(env, argv[0], "accept4", "fd", &fd) || !get_i32(env, argv[1], "accept4", "flags", &flags)) return NULL;
  int r = accept4(fd, NULL, NULL, flags);
  return make_i64(env, r < 0 ? -errno : r);
}

// shutdown(fd, how) -> 0 or -errno.
static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd, how;
  if (!get_i32(env, argv[0], "shutdown", "fd", &fd) || !get_i32(env, argv[1], "shutdown", "how", &how)) return NULL;
  int r = shutdown(fd, how);
  return make_i64(env, r < 0 ? -errno : 0);
}

// open(path, flags, mode) -> fd or -errno (for /dev/net/tun from device threads).
static napi_value js_open(napi_env env, napi_callback_info info) {
  ARGS(3);
  char path[4096];
  size_t n = 0;
  int32_t flags, mode;
  if (!get_path(env, argv[0], "open", path, sizeof path, &n) || !get_i32(env, argv[1], "open", "flags", &flags) ||
      !get_i32(env, argv[2], "open", "mode", &mode)) {
    return NULL;
  }
  int r = open(path, flags, (mode_t)mode);
  return make_i64(env, r < 0 ? -errno : r);
}

// close(fd) -> 0 or -errno.
static napi_value js_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  if (!get_i32(env, argv[0], "close", "fd", &fd)) return NULL;
  int r = close(fd);
  return make_i64(env, r < 0 ? -errno : 0);
}

// --- Threads and signals -------------------------------------------------------

// Interrupting a vCPU thread blocked in KVM_RUN: flint installs a handler
// that does nothing for one real-time signal, without SA_RESTART, so that a
// signal to the thread makes KVM_RUN return -EINTR (Documentation/virt/kvm/api.rst,
// "immediate_exit" and KVM_RUN's EINTR).
static void noop_handler(int sig) { (void)sig; }

// installKickSignal(signo) -> 0 or -errno. signo is a real-time signal.
static napi_value js_install_kick_signal(napi_env env, napi_callback_info info) {
  ARGS(1);
  int signo;
  if (!get_rt_signal(env, argv[0], "installKickSignal", &signo)) return NULL;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = noop_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: the blocked ioctl must return EINTR
  int r = sigaction(signo, &sa, NULL);
  if (r == 0) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  }
  return make_i64(env, r < 0 ? -errno : 0);
}

// threadSelf() -> BigInt kernel thread id (gettid) of the calling thread. A
// thread id, not a pthread_t: signalThread can then never dereference a stale
// or made-up handle, and a thread that has exited gives ESRCH.
static napi_value js_thread_self(napi_env env, napi_callback_info info) {
  (void)info;
  return make_u64(env, (uint64_t)syscall(SYS_gettid));
}

// unblockSignal(signo): lets this thread receive the kick signal.
static napi_value js_unblock_signal(napi_env env, napi_callback_info info) {
  ARGS(1);
  int signo;
  if (!get_rt_signal(env, argv[0], "unblockSignal", &signo)) return NULL;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signo);
  int r = pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  return make_i64(env, r == 0 ? 0 : -r);
}

// signalThread(thread, signo) -> 0 or -errno: tgkill to a thread of this process.
static napi_value js_signal_thread(napi_env env, napi_callback_info info) {
  ARGS(2);
  int64_t tid;
  int signo;
  if (!get_off(env, argv[0], "signalThread", "thread", &tid)) return NULL;
  if (tid < 1 || tid > INT32_MAX) {
    fail(env, 1, "signalThread: thread %lld is not a thread id", (long long)tid);
    return NULL;
  }
  if (!get_rt_signal(env, argv[1], "signalThread", &signo)) return NULL;
  long r = syscall(SYS_tgkill, (long)getpid(), (long)tid, (long)signo);
  return make_i64(env, r < 0 ? -errno : 0);
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

// getDirtyLog(vmFd, slot, bitmap) -> 0 or -errno: KVM_GET_DIRTY_LOG (api.rst
// 4.8) into `bitmap`, which must hold the slot's whole bitmap: one bit per
// 4 KiB page of the slot as registered through this addon, in 64-bit words.
// KVM clears the slot's log as it copies it out (without
// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled, which flint does not enable).
static napi_value js_get_dirty_log(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd;
  int64_t slot;
  uint8_t *buf;
  size_t cap;
  if (!get_i32(env, argv[0], "getDirtyLog", "vmFd", &fd) || !get_int(env, argv[1], "getDirtyLog", "slot", 0, UINT32_MAX, &slot) ||
      !get_buffer(env, argv[2], "getDirtyLog", "bitmap", &buf, &cap)) {
    return NULL;
  }
  pthread_mutex_lock(&maps_lock);
  uint64_t size;
  if (!slot_size_of(fd, (uint32_t)slot, &size) || size == 0) {
    pthread_mutex_unlock(&maps_lock);
    fail(env, 1, "getDirtyLog: slot %lld of fd %d was not registered through KVM_SET_USER_MEMORY_REGION", (long long)slot, fd);
    return NULL;
  }
  uint64_t pages = size / 4096;
  uint64_t need = (pages + 63) / 64 * 8;
  if (need > cap) {
    pthread_mutex_unlock(&maps_lock);
    fail(env, 1, "getDirtyLog: slot %lld needs a %llu-byte bitmap, the buffer holds %zu", (long long)slot, (unsigned long long)need, cap);
    return NULL;
  }
  struct kvm_dirty_log log;
  memset(&log, 0, sizeof log);
  log.slot = (uint32_t)slot;
  log.dirty_bitmap = buf;
  int r = ioctl(fd, KVM_GET_DIRTY_LOG, &log);
  int e = errno;
  pthread_mutex_unlock(&maps_lock);
  return make_i64(env, r < 0 ? -e : r);
}

// lseek(fd, offset, whence) -> the new offset, or -errno (SEEK_DATA and
// SEEK_HOLE find a sparse file's data, lseek(2)).
static napi_value js_lseek(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd, whence;
  int64_t off;
  if (!get_i32(env, argv[0], "lseek", "fd", &fd) || !get_off(env, argv[1], "lseek", "offset", &off) ||
      !get_i32(env, argv[2], "lseek", "whence", &whence)) {
    return NULL;
  }
  off_t r = lseek(fd, (off_t)off, whence);
  return make_i64(env, r < 0 ? -errno : (int64_t)r);
}

// --- userfaultfd and SCM_RIGHTS --------------------------------------------------

// userfaultfd(flags) -> fd or -errno (userfaultfd(2): O_CLOEXEC, O_NONBLOCK,
// UFFD_USER_MODE_ONLY). Where the system call is not allowed, /dev/userfaultfd
// with USERFAULTFD_IOC_NEW (through ioctlValue) gives the same object.
static napi_value js_userfaultfd(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t flags;
  if (!get_i32(env, argv[0], "userfaultfd", "flags", &flags)) return NULL;
  long r = syscall(SYS_userfaultfd, flags);
  return make_i64(env, r < 0 ? -errno : r);
}

// uffdCopy(uffd, dst, src, srcOffset, length, mode) -> bytes copied, or -errno.
// UFFDIO_COPY of src[srcOffset, srcOffset+length) to `dst` (a BigInt address in
// the userfaultfd's process, which may be another one: the kernel copies only
// into ranges that process registered, and fails otherwise). The source is a
// checked buffer of this process, never a number. When the ioctl fails after
// copying part (EAGAIN), the part copied is lost to the caller, who retries.
static napi_value js_uffd_copy(napi_env env, napi_callback_info info) {
  ARGS(6);
  int32_t fd;
  uintptr_t dst;
  uint8_t *src;
  size_t cap, off, len;
  int64_t mode;
  if (!get_i32(env, argv[0], "uffdCopy", "uffd", &fd) || !get_address(env, argv[1], "uffdCopy", &dst) ||
      !get_buffer(env, argv[2], "uffdCopy", "src", &src, &cap) ||
      !get_len(env, argv[3], "uffdCopy", "srcOffset", cap, &off) ||
      !get_len(env, argv[4], "uffdCopy", "length", cap - off, &len) ||
      !get_int(env, argv[5], "uffdCopy", "mode", 0, UINT32_MAX, &mode)) {
    return NULL;
  }
  struct uffdio_copy c = {.dst = dst, .src = (uintptr_t)(src + off), .len = len, .mode = (uint64_t)mode, .copy = 0};
  int r = ioctl(fd, UFFDIO_COPY, &c);
  if (r < 0) return make_i64(env, -errno);
  return make_i64(env, c.copy);
}

// The most descriptors one recvFd takes; more in one message are closed.
#define MAX_RECV_FDS 8

// sendFd(sock, buffer, length, fd) -> bytes sent, or -errno: one sendmsg(2) of
// buffer[0, length) with `fd` attached as SCM_RIGHTS (unix(7)), MSG_NOSIGNAL
// (a closed peer is -EPIPE, not a signal).
static napi_value js_send_fd(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t sock, passed;
  uint8_t *buf;
  size_t cap, len;
  if (!get_i32(env, argv[0], "sendFd", "sock", &sock) || !get_buffer(env, argv[1], "sendFd", "buffer", &buf, &cap) ||
      !get_len(env, argv[2], "sendFd", "length", cap, &len) || !get_i32(env, argv[3], "sendFd", "fd", &passed)) {
    return NULL;
  }
  if (passed < 0) { fail(env, 1, "sendFd: fd %d is not a file descriptor", passed); return NULL; }
  union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int))]; } control;
  memset(&control, 0, sizeof control);
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space};
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &passed, sizeof passed);
  ssize_t r = sendmsg(sock, &msg, MSG_NOSIGNAL);
  return make_i64(env, r < 0 ? -errno : r);
}

// recvFd(sock, buffer, length, fds) -> bytes received, or -errno: one
// recvmsg(2) into buffer[0, length), MSG_CMSG_CLOEXEC. The descriptors passed
// with it (SCM_RIGHTS) go into `fds` (an Int32Array of at most MAX_RECV_FDS;
// the rest of it -1); any that do not fit are closed.
static napi_value js_recv_fd(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t sock;
  uint8_t *buf;
  size_t cap, len;
  if (!get_i32(env, argv[0], "recvFd", "sock", &sock) || !get_buffer(env, argv[1], "recvFd", "buffer", &buf, &cap) ||
      !get_len(env, argv[2], "recvFd", "length", cap, &len)) {
    return NULL;
  }
  bool is = false;
  napi_typedarray_type t;
  size_t nfds = 0;
  void *fdsData = NULL;
  if (napi_is_typedarray(env, argv[3], &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, argv[3], &t, &nfds, &fdsData, NULL, NULL) != napi_ok || t != napi_int32_array) {
    fail(env, 0, "recvFd: fds must be an Int32Array");
    return NULL;
  }
  if (nfds > MAX_RECV_FDS) { fail(env, 1, "recvFd: fds holds %zu entries, at most %d", nfds, MAX_RECV_FDS); return NULL; }
  int32_t *fds = fdsData;
  for (size_t i = 0; i < nfds; i++) fds[i] = -1;
  union { struct cmsghdr h; char space[CMSG_SPACE(MAX_RECV_FDS * sizeof(int))]; } control;
  memset(&control, 0, sizeof control);
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space};
  ssize_t r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (r < 0) return make_i64(env, -errno);
  size_t got = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int f;
      memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      if (got < nfds) fds[got++] = f;
      else close(f);
    }
  }
  return make_i64(env, r);
}

// execve(path, argv, envp) -> -errno (it returns only on failure). For `flint
// jail`, which hands the process to native/flint_jail.c: every string is
// checked (a string, no NUL inside, bounded) and copied before the call, and
// stdin, stdout and stderr stay open across it.
#define EXECVE_MAX_STRINGS 4096
#define EXECVE_MAX_BYTES (1 << 20)
static char **get_string_array(napi_env env, napi_value v, const char *name, size_t *total) {
  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, v, &is_array) != napi_ok || !is_array) {
    fail(env, 0, "execve: %s must be an array of strings", name);
    return NULL;
  }
  if (napi_get_array_length(env, v, &n) != napi_ok || n > EXECVE_MAX_STRINGS) {
    fail(env, 1, "execve: %s has more than %d strings", name, EXECVE_MAX_STRINGS);
    return NULL;
  }
  char **out = calloc((size_t)n + 1, sizeof *out);
  if (!out) {
    fail(env, 1, "execve: out of memory");
    return NULL;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    size_t len = 0;
    napi_valuetype t;
    if (napi_get_element(env, v, i, &e) != napi_ok || napi_typeof(env, e, &t) != napi_ok || t != napi_string ||
        napi_get_value_string_utf8(env, e, NULL, 0, &len) != napi_ok) {
      fail(env, 0, "execve: %s[%u] must be a string", name, i);
      goto bad;
    }
    *total += len + 1;
    if (*total > EXECVE_MAX_BYTES) {
      fail(env, 1, "execve: the strings are longer than %d bytes", EXECVE_MAX_BYTES);
      goto bad;
    }
    out[i] = malloc(len + 1);
    if (!out[i] || napi_get_value_string_utf8(env, e, out[i], len + 1, &len) != napi_ok) {
      fail(env, 1, "execve: out of memory");
      goto bad;
    }
    if (strlen(out[i]) != len) {
      fail(env, 1, "execve: %s[%u] contains a NUL character", name, i);
      goto bad;
    }
  }
  return out;
bad:
  for (uint32_t i = 0; i < n; i++) free(out[i]);
  free(out);
  return NULL;
}

static void free_string_array(char **a) {
  for (size_t i = 0; a && a[i]; i++) free(a[i]);
  free(a);
}

static napi_value js_execve(napi_env env, napi_callback_info info) {
  ARGS(3);
  char path[4096];
  size_t n = 0, total = 0;
  if (!get_path(env, argv[0], "execve", path, sizeof path, &n)) return NULL;
  char **args = get_string_array(env, argv[1], "argv", &total);
  if (!args) return NULL;
  if (!args[0]) {
    free_string_array(args);
    fail(env, 1, "execve: argv is empty");
    return NULL;
  }
  char **envp = get_string_array(env, argv[2], "envp", &total);
  if (!envp) {
    free_string_array(args);
    return NULL;
  }
  // Node marks stdin, stdout and stderr close-on-exec; the new program gets them.
  for (int fd = 0; fd <= 2; fd++) {
    int flags = fcntl(fd, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC)) fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
  }
  execve(path, args, envp);
  int err = errno;
  free_string_array(args);
  free_string_array(envp);
  return make_i64(env, -err);
}

// --- seccomp -------------------------------------------------------------------

// installSeccompFilter(program, count, flags) -> 0, or -errno, or (with
// SECCOMP_FILTER_FLAG_TSYNC) the id of a thread that could not be
// synchronized. `program` holds `count` struct sock_filter (1..BPF_MAXINSNS,
// all inside the buffer); the kernel copies it. Sets no_new_privs first
// (seccomp(2): required without CAP_SYS_ADMIN, and flint wants it anyway),
// then stacks the filter on the calling thread (or, with TSYNC, every thread).
// Only TSYNC and LOG are taken as flags: the others change what the call
// returns or waits for (NEW_LISTENER, SPEC_ALLOW...) and flint uses none.
static napi_value js_install_seccomp_filter(napi_env env, napi_callback_info info) {
  ARGS(3);
  uint8_t *buf;
  size_t cap;
  int64_t count, flags;
  if (!get_buffer(env, argv[0], "installSeccompFilter", "program", &buf, &cap) ||
      !get_int(env, argv[1], "installSeccompFilter", "count", 1, BPF_MAXINSNS, &count) ||
      !get_int(env, argv[2], "installSeccompFilter", "flags", 0, UINT32_MAX, &flags)) {
    return NULL;
  }
  if ((size_t)count * sizeof(struct sock_filter) > cap) {
    fail(env, 1, "installSeccompFilter: count %lld instructions exceed the buffer's %zu bytes", (long long)count, cap);
    return NULL;
  }
  if (flags & ~(int64_t)(SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG)) {
    fail(env, 1, "installSeccompFilter: flags 0x%llx other than TSYNC and LOG", (unsigned long long)flags);
    return NULL;
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return make_i64(env, -errno);
  struct sock_fprog prog = {.len = (unsigned short)count, .filter = (struct sock_filter *)buf};
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, (unsigned int)flags, &prog);
  return make_i64(env, r < 0 ? -errno : r);
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
      {"mmapOver", js_mmap_over},
      {"madvise", js_madvise},
      {"view", js_view},
      {"eventfd", js_eventfd},
      {"read", js_read},
      {"write", js_write},
      {"writev", js_writev},
      {"readv", js_readv},
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
      {"getDirtyLog", js_get_dirty_log},
      {"lseek", js_lseek},
      {"userfaultfd", js_userfaultfd},
      {"uffdCopy", js_uffd_copy},
      {"sendFd", js_send_fd},
      {"recvFd", js_recv_fd},
      {"execve", js_execve},
      {"installSeccompFilter", js_install_seccomp_filter},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value fn;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].cb, NULL, &fn) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, fns[i].name, fn) != napi_ok) return NULL;
  }
  return exports;
}
