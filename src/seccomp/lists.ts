/**
 * The system calls each kind of flint thread may make, as data. Found by
 * tracing real runs (`strace -f` of the CLI and API tests, the client flows
 * and the direct-KVM suites with the filters in audit mode, replayed through
 * the filters by testing/strace-check.ts) and checked by the nested
 * end-to-end tests with the filters on, not guessed; FLINT_SECCOMP_AUDIT=1
 * logs (instead of killing) a call a list misses, for a user who finds a gap.
 *
 * Filters stack: the process-wide list (installed with TSYNC on the main
 * thread) applies to every thread, Node's own (libuv's pool, V8's platform
 * threads) included; a vCPU or device thread then adds its own narrower
 * list, so a call there must be in both. Order matters only for speed: the
 * compiled program tests the calls in list order, the hot ones first.
 *
 * Left out on purpose, everywhere: starting programs (execve, execveat),
 * making processes (fork, vfork, clone without CLONE_THREAD), device nodes
 * (mknod), ptrace, mount and namespaces, kernel modules, BPF, keyrings,
 * reboot. vCPU and device threads start no threads either (Node's threads
 * are started from the main thread).
 */
import {
  AF_UNIX, BLKGETSIZE64, SECCOMP_SET_MODE_FILTER, CLONE_THREAD, ENOSYS, FIONREAD, KVM_GET_REGS, KVM_GET_SREGS, KVM_IRQ_LINE, KVM_KVMCLOCK_CTRL, KVM_RUN,
  TUNSETOFFLOAD,
} from "../linux/abi.generated.js";
import type { AllowRule, SyscallName } from "./bpf.js";

/** The kinds of flint thread that get a filter of their own. */
export type ThreadKind = "process" | "vcpu" | "device";

/** The rules of `parts` in order, each call once (its first rule wins). */
function merge(...parts: readonly (readonly AllowRule[])[]): AllowRule[] {
  const seen = new Set<SyscallName>();
  return parts.flat().filter((r) => {
    const name = typeof r === "string" ? r : r.name;
    if (seen.has(name)) return false;
    seen.add(name);
    return true;
  });
}

/**
 * The vDSO's calls. On most hosts they never reach the kernel, so a trace
 * does not show them; where the clock source cannot be read from user space
 * (an unstable TSC, as in the nested harness's VM) every Date.now() and
 * performance.now() becomes a real gettimeofday or clock_gettime, and a
 * filter without them kills flint there (seen: gettimeofday on a device
 * thread). Every list has them.
 */
const VDSO: readonly SyscallName[] = ["clock_gettime", "gettimeofday", "time", "clock_getres", "getcpu"];

/** A V8 isolate on a worker thread (memory, its libuv loop, its message port, signals, thread exit). */
const WORKER_RUNTIME: readonly SyscallName[] = [
  "futex", "epoll_wait", "epoll_pwait", "epoll_ctl", "read", "write", "mmap", "munmap", "mprotect", "madvise",
  "mremap", "brk", "rt_sigprocmask", "rt_sigreturn", "rt_sigaction", "sigaltstack", ...VDSO, "clock_nanosleep",
  "nanosleep", "sched_yield", "getpid", "gettid", "tgkill", "getrandom", "close", "exit", "exit_group", "sched_getaffinity",
];

/** Pthreads only (CLONE_THREAD); clone3 gets ENOSYS so that glibc falls back to clone, whose flags BPF can read. */
const THREADS: readonly AllowRule[] = [
  { name: "clone", filter: { arg: 0, allBitsSet: CLONE_THREAD } },
  { name: "clone3", errno: ENOSYS },
  "set_robust_list", "rseq", "prctl",
];

/**
 * The main thread and Node's threads: the API (a Unix socket), the config
 * file and drives opened when asked, log and metrics files and FIFOs,
 * snapshot files, KVM's set-up ioctls, worker threads, timers and signals.
 * Modules Node loads late (pino on the first PUT /logger) read files too.
 */
const PROCESS: readonly AllowRule[] = merge([
  "futex", "epoll_wait", "epoll_pwait", "read", "write", "ioctl", "epoll_ctl", "writev", "readv", "pread64", "pwrite64",
  "preadv", "pwritev", "mmap", "munmap", "mprotect", "madvise", "mremap", "brk", "poll", "ppoll",
  ], WORKER_RUNTIME, [
  "openat", "open", "close", "fstat", "newfstatat", "stat", "lstat", "statx", "lseek", "fcntl", "dup", "dup2", "dup3",
  "getdents64", "readlink", "readlinkat", "getcwd", "access", "faccessat", "faccessat2", "fstatfs", "statfs",
  "unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "ftruncate",
  "fallocate", "fsync", "fdatasync", "fchmod", "copy_file_range", "sendfile",
  "eventfd2", "pipe2", "epoll_create1",
  { name: "socket", filter: { arg: 0, values: [AF_UNIX] } },
  "socketpair", "bind", "listen", "accept4", "connect", "shutdown", "getsockname", "getpeername", "getsockopt",
  "setsockopt", "sendmsg", "recvmsg", "sendto", "recvfrom",
  ], THREADS, [
  "getuid", "geteuid", "getgid", "getegid", "getppid", "uname", "sysinfo", "getrusage", "prlimit64",
  "membarrier", "mincore",
  // A restore with the Uffd memory backend makes the userfaultfd it hands to the handler.
  "userfaultfd",
  // Node reads its capabilities before it trusts NODE_* variables (a worker's start-up does).
  "capget",
  // Worker threads stack their own filter (index.ts); nothing else of seccomp(2).
  { name: "seccomp", filter: { arg: 0, values: [SECCOMP_SET_MODE_FILTER] } },
]);

/**
 * A vCPU thread: KVM_RUN and what its exits need (KVM_IRQ_LINE for the
 * serial and keyboard interrupts, KVM_KVMCLOCK_CTRL when parked, the
 * registers for an error report), eventfd writes, and its isolate's runtime.
 */
const VCPU: readonly AllowRule[] = merge([
  { name: "ioctl", filter: { arg: 1, values: [KVM_RUN, KVM_IRQ_LINE, KVM_KVMCLOCK_CTRL, KVM_GET_REGS, KVM_GET_SREGS] } },
], WORKER_RUNTIME, [
  // Seen once, in the nested runtime-rs flow (six drives, a vsock, PATCH /drives): a vCPU thread
  // opened a file (not yet known which; glibc reads /sys/devices/system/cpu/online when malloc
  // makes a new arena). Opening and reading, nothing that makes, removes or writes directories.
  "openat", "fstat", "newfstatat", "lseek",
]);

/**
 * A device thread: its poll loop, eventfds, block I/O (and a backing file
 * swapped by PATCH /drives), TAP reads and writes, vsock's Unix sockets, the
 * entropy source.
 */
const DEVICE: readonly AllowRule[] = merge([
  "ppoll", "poll", "read", "write", "writev", "readv", "pread64", "pwrite64", "preadv", "pwritev",
  { name: "ioctl", filter: { arg: 1, values: [TUNSETOFFLOAD, BLKGETSIZE64, FIONREAD] } },
  ], WORKER_RUNTIME, [
  "openat", "fstat", "newfstatat", "statx", "lseek", "fcntl", "fallocate", "fdatasync", "fsync", "eventfd2",
  // vsock: a listener's socket file removed when the device stops.
  "unlink", "unlinkat",
  { name: "socket", filter: { arg: 0, values: [AF_UNIX] } },
  "connect", "accept4", "bind", "listen", "shutdown", "getsockopt", "setsockopt", "sendmsg", "recvmsg", "sendto", "recvfrom",
  ]);

/** Each thread kind's list. */
export const ALLOW_LISTS: Record<ThreadKind, readonly AllowRule[]> = { process: PROCESS, vcpu: VCPU, device: DEVICE };
