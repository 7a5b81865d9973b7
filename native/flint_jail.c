// flint_jail: the few system calls of `flint jail` that a multi-threaded Node
// process cannot make for itself (unshare(CLONE_NEWNS) and setuid() apply to
// one thread, pivot_root to the mount namespace of the caller), made by a
// small single-threaded program that flint execs into.
//
// It has no policy. TypeScript (src/jail/) decides every path, device, limit
// and cgroup and hands over an ordered plan on the command line:
//
//   flint_jail [--check] --uid U --gid G STEP [ARG...] ... exec PATH [ARG...]
//
// The whole plan is checked before the first system call (`--check` stops
// there): each step's argument count and values, and the order. Everything
// that creates device nodes or changes an owner or a mode runs only after
// `pivot`, and each such step checks again, at the moment it runs, that "/" is
// still the jail root recorded before the pivot (same device and inode). So a
// plan built wrongly can never chown or mknod on the host's own file system.
//
// Steps, in the only order accepted:
//   before the pivot:  setns-net PATH | rlimit nofile|fsize N | cgroup-join PATH/cgroup.procs
//                      unshare-mount, then bind-root ROOT, then bind-ro SRC TARGET (TARGET inside ROOT)
//   pivot              pivot_root into ROOT, old root detached; "/" verified to be ROOT
//   after the pivot:   dir PATH MODE | dev PATH RDEV MODE | symlink TARGET PATH
//                      daemonize (before the pid step) | new-pid-ns PIDFILE or pid-file PIDFILE
//                      mount-proc PATH (only after new-pid-ns)
//   drop               setgroups([]), setgid, setuid, verified; PR_SET_NO_NEW_PRIVS
//   exec PATH ARG...   the last step, with an empty environment
//
// Exit status: 2 for a refused plan (nothing was done), 1 for a failed step,
// and otherwise whatever the exec'd program returns.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sched.h>
#include <unistd.h>

#define OLD_ROOT "flint-old-root"

enum phase { PRE, PIVOT, POST, DROP, EXEC };

struct step {
  const char *name;
  int nargs; // -1: the rest of the command line (exec)
  enum phase phase;
};

static const struct step STEPS[] = {
    {"setns-net", 1, PRE},   {"rlimit", 2, PRE},     {"cgroup-join", 1, PRE}, {"unshare-mount", 0, PRE},
    {"bind-root", 1, PRE},   {"bind-ro", 2, PRE},    {"pivot", 0, PIVOT},     {"dir", 2, POST},
    {"dev", 3, POST},        {"symlink", 2, POST},   {"daemonize", 0, POST},  {"new-pid-ns", 1, POST},
    {"pid-file", 1, POST},   {"mount-proc", 1, POST}, {"drop", 0, DROP},      {"exec", -1, EXEC},
};

static void die(int status, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "flint: jail: %s\n", msg);
  exit(status);
}

#define REFUSE(...) die(2, "refused: " __VA_ARGS__)
#define FAILED(...) die(1, __VA_ARGS__)

static const struct step *find_step(const char *name) {
  for (size_t i = 0; i < sizeof STEPS / sizeof STEPS[0]; i++) {
    if (strcmp(STEPS[i].name, name) == 0) return &STEPS[i];
  }
  return NULL;
}

// A whole decimal number in [0, max]; no sign, no spaces, no leading zeros.
static int parse_u64(const char *s, unsigned long long max, unsigned long long *out) {
  if (s[0] == '\0' || strlen(s) > 20 || (s[0] == '0' && s[1] != '\0')) return 0;
  unsigned long long v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return 0;
    unsigned d = (unsigned)(*p - '0');
    if (v > (max - d) / 10) return 0;
    v = v * 10 + d;
  }
  *out = v;
  return 1;
}

// A permission mode as four octal digits ("0700"): no type bits, no setuid/setgid/sticky.
static int parse_mode(const char *s, mode_t *out) {
  if (strlen(s) != 4 || s[0] != '0') return 0;
  mode_t m = 0;
  for (int i = 1; i < 4; i++) {
    if (s[i] < '0' || s[i] > '7') return 0;
    m = (mode_t)(m * 8 + (mode_t)(s[i] - '0'));
  }
  *out = m;
  return 1;
}

// An absolute path with no empty, "." or ".." component and no trailing '/', shorter than PATH_MAX.
static int clean_abs_path(const char *p) {
  size_t n = strlen(p);
  if (n < 1 || n >= PATH_MAX || p[0] != '/') return 0;
  if (n == 1) return 1;
  if (p[n - 1] == '/') return 0;
  for (const char *c = p; *c; c++) {
    if (*c != '/') continue;
    const char *next = c + 1;
    size_t len = strcspn(next, "/");
    if (len == 0) return 0;
    if (len == 1 && next[0] == '.') return 0;
    if (len == 2 && next[0] == '.' && next[1] == '.') return 0;
  }
  return 1;
}

static int has_suffix(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

// --- State shared by the checking pass and the run -------------------------

static uid_t g_uid;
static gid_t g_gid;
static const char *g_root;     // ROOT of bind-root (a host path)
static dev_t g_root_dev;       // ROOT's device and inode, recorded before the pivot
static ino_t g_root_ino;
static int g_pivoted;          // set only after pivot_root succeeded and "/" was verified
static int g_dropped;

// Before any step that changes owners, modes or creates nodes: "/" must be the jail.
static void require_jail_root(const char *what) {
  struct stat st;
  if (!g_pivoted) die(2, "refused: %s before the pivot into the jail", what);
  if (stat("/", &st) != 0 || st.st_dev != g_root_dev || st.st_ino != g_root_ino) {
    die(2, "refused: %s: \"/\" is not the jail root %s", what, g_root);
  }
}

// Checks the whole plan (argv[i..argc)) without a system call; refuses with exit status 2.
static void check_plan(int argc, char **argv, int i) {
  int unshared = 0, rooted = 0, pivoted = 0, pid_done = 0, new_pid_ns = 0, daemonized = 0, dropped = 0;
  const char *root = NULL;
  int index = 0;
  if (i >= argc) REFUSE("the plan is empty");
  while (i < argc) {
    index++;
    const char *name = argv[i];
    const struct step *s = find_step(name);
    if (!s) REFUSE("step %d: unknown step '%s'", index, name);
    int left = argc - i - 1;
    if (s->nargs >= 0 && left < s->nargs) REFUSE("step %d '%s' needs %d argument(s)", index, name, s->nargs);
    if (s->nargs < 0 && left < 1) REFUSE("step %d 'exec' needs a program", index);
    char **a = argv + i + 1;
    if (dropped && s->phase != EXEC) REFUSE("step %d '%s' after 'drop' (only 'exec' may follow it)", index, name);
    switch (s->phase) {
      case PRE:
        if (pivoted) REFUSE("step %d '%s' must come before 'pivot'", index, name);
        break;
      case PIVOT:
        if (!rooted) REFUSE("step %d 'pivot' needs 'bind-root' first", index);
        if (pivoted) REFUSE("step %d: a second 'pivot'", index);
        break;
      case POST:
        if (!pivoted) REFUSE("step %d '%s' must come after 'pivot' (it runs inside the jail only)", index, name);
        break;
      case DROP:
        if (!pivoted) REFUSE("step %d 'drop' must come after 'pivot'", index);
        if (!pid_done) REFUSE("step %d 'drop' needs 'new-pid-ns' or 'pid-file' first", index);
        break;
      case EXEC:
        if (!dropped) REFUSE("step %d 'exec' needs 'drop' first", index);
        break;
    }
    unsigned long long v;
    mode_t mode;
    if (strcmp(name, "setns-net") == 0 || strcmp(name, "cgroup-join") == 0) {
      if (!clean_abs_path(a[0])) REFUSE("step %d '%s': '%s' is not a clean absolute path", index, name, a[0]);
      if (strcmp(name, "cgroup-join") == 0 && !has_suffix(a[0], "/cgroup.procs")) {
        REFUSE("step %d 'cgroup-join': '%s' is not a cgroup.procs file", index, a[0]);
      }
      if (rooted) REFUSE("step %d '%s' must come before 'bind-root'", index, name);
    } else if (strcmp(name, "rlimit") == 0) {
      if (strcmp(a[0], "nofile") != 0 && strcmp(a[0], "fsize") != 0) REFUSE("step %d 'rlimit': unknown resource '%s'", index, a[0]);
      if (!parse_u64(a[1], ~0ULL, &v)) REFUSE("step %d 'rlimit': '%s' is not a whole number", index, a[1]);
    } else if (strcmp(name, "unshare-mount") == 0) {
      if (unshared) REFUSE("step %d: a second 'unshare-mount'", index);
      unshared = 1;
    } else if (strcmp(name, "bind-root") == 0) {
      if (!unshared) REFUSE("step %d 'bind-root' needs 'unshare-mount' first", index);
      if (rooted) REFUSE("step %d: a second 'bind-root'", index);
      if (!clean_abs_path(a[0]) || strcmp(a[0], "/") == 0) REFUSE("step %d 'bind-root': '%s' is not a clean absolute path other than /", index, a[0]);
      root = a[0];
      rooted = 1;
    } else if (strcmp(name, "bind-ro") == 0) {
      if (!rooted) REFUSE("step %d 'bind-ro' needs 'bind-root' first", index);
      if (!clean_abs_path(a[0]) || !clean_abs_path(a[1])) REFUSE("step %d 'bind-ro': paths must be clean and absolute", index);
      size_t n = strlen(root);
      if (strncmp(a[1], root, n) != 0 || a[1][n] != '/') REFUSE("step %d 'bind-ro': target '%s' is not inside the jail root %s", index, a[1], root);
    } else if (strcmp(name, "pivot") == 0) {
      pivoted = 1;
    } else if (strcmp(name, "dir") == 0 || strcmp(name, "dev") == 0 || strcmp(name, "symlink") == 0 ||
               strcmp(name, "pid-file") == 0 || strcmp(name, "new-pid-ns") == 0 || strcmp(name, "mount-proc") == 0) {
      const char *path = strcmp(name, "symlink") == 0 ? a[1] : a[0];
      if (!clean_abs_path(path)) REFUSE("step %d '%s': '%s' is not a clean absolute path", index, name, path);
      if (strcmp(name, "dir") == 0 && !parse_mode(a[1], &mode)) REFUSE("step %d 'dir': mode '%s' is not 0NNN", index, a[1]);
      if (strcmp(name, "dev") == 0) {
        if (strcmp(path, "/") == 0) REFUSE("step %d 'dev': path is /", index);
        if (!parse_u64(a[1], ~0ULL, &v) || v == 0) REFUSE("step %d 'dev': '%s' is not a device number", index, a[1]);
        if (!parse_mode(a[2], &mode)) REFUSE("step %d 'dev': mode '%s' is not 0NNN", index, a[2]);
      }
      if (strcmp(name, "symlink") == 0 && (a[0][0] == '\0' || strlen(a[0]) >= PATH_MAX)) REFUSE("step %d 'symlink': bad target", index);
      if (strcmp(name, "pid-file") == 0 || strcmp(name, "new-pid-ns") == 0) {
        if (pid_done) REFUSE("step %d '%s': the pid step was already planned", index, name);
        pid_done = 1;
        new_pid_ns = strcmp(name, "new-pid-ns") == 0;
      }
      if (strcmp(name, "mount-proc") == 0 && !new_pid_ns) REFUSE("step %d 'mount-proc' needs 'new-pid-ns' first", index);
    } else if (strcmp(name, "daemonize") == 0) {
      if (daemonized) REFUSE("step %d: a second 'daemonize'", index);
      if (pid_done) REFUSE("step %d 'daemonize' must come before the pid step", index);
      daemonized = 1;
    } else if (strcmp(name, "drop") == 0) {
      dropped = 1;
    } else if (strcmp(name, "exec") == 0) {
      if (!clean_abs_path(a[0])) REFUSE("step %d 'exec': '%s' is not a clean absolute path", index, a[0]);
      return; // the rest of the command line is the program's
    }
    i += 1 + s->nargs;
  }
  REFUSE("the plan does not end with 'exec'");
}

// --- The steps ---------------------------------------------------------------

static void step_setns_net(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) FAILED("cannot open network namespace %s: %s", path, strerror(errno));
  if (setns(fd, CLONE_NEWNET) != 0) FAILED("cannot join network namespace %s: %s", path, strerror(errno));
  close(fd);
}

static void step_rlimit(const char *what, const char *value) {
  unsigned long long v = 0;
  parse_u64(value, ~0ULL, &v);
  struct rlimit r = {.rlim_cur = (rlim_t)v, .rlim_max = (rlim_t)v};
  int resource = strcmp(what, "nofile") == 0 ? RLIMIT_NOFILE : RLIMIT_FSIZE;
  if (setrlimit(resource, &r) != 0) FAILED("cannot set the %s limit to %s: %s", what, value, strerror(errno));
}

static void step_cgroup_join(const char *procs) {
  int fd = open(procs, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) FAILED("cannot open %s: %s", procs, strerror(errno));
  char pid[32];
  int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
  if (write(fd, pid, (size_t)n) != n) FAILED("cannot move into the cgroup (%s): %s", procs, strerror(errno));
  close(fd);
}

static void step_unshare_mount(void) {
  if (unshare(CLONE_NEWNS) != 0) FAILED("cannot make a new mount namespace: %s", strerror(errno));
  // Nothing mounted from here on propagates back to the host's namespace.
  if (mount(NULL, "/", NULL, MS_SLAVE | MS_REC, NULL) != 0) FAILED("cannot make the mounts slaves: %s", strerror(errno));
}

static void step_bind_root(const char *root) {
  char real[PATH_MAX];
  if (!realpath(root, real)) FAILED("cannot resolve the jail root %s: %s", root, strerror(errno));
  if (strcmp(real, root) != 0) FAILED("the jail root %s resolves to %s (a symbolic link on the way)", root, real);
  // A mount point of its own, as pivot_root wants one.
  if (mount(root, root, NULL, MS_BIND | MS_REC, NULL) != 0) FAILED("cannot bind-mount the jail root %s: %s", root, strerror(errno));
  struct stat st;
  if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode)) FAILED("the jail root %s is not a directory", root);
  g_root = root;
  g_root_dev = st.st_dev;
  g_root_ino = st.st_ino;
}

static void step_bind_ro(const char *src, const char *target) {
  char real[PATH_MAX];
  if (!realpath(target, real)) FAILED("cannot resolve %s: %s", target, strerror(errno));
  size_t n = strlen(g_root);
  if (strcmp(real, target) != 0 || strncmp(real, g_root, n) != 0 || real[n] != '/') {
    FAILED("mount point %s resolves to %s, outside the jail root or through a symbolic link", target, real);
  }
  if (mount(src, target, NULL, MS_BIND, NULL) != 0) FAILED("cannot bind-mount %s at %s: %s", src, target, strerror(errno));
  if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0) {
    FAILED("cannot make %s read-only: %s", target, strerror(errno));
  }
}

static void step_pivot(void) {
  if (chdir(g_root) != 0) FAILED("cannot enter the jail root %s: %s", g_root, strerror(errno));
  if (mkdir(OLD_ROOT, 0700) != 0) FAILED("cannot make %s/%s: %s", g_root, OLD_ROOT, strerror(errno));
  if (syscall(SYS_pivot_root, ".", OLD_ROOT) != 0) FAILED("cannot pivot_root into %s: %s", g_root, strerror(errno));
  if (chdir("/") != 0) FAILED("cannot chdir to the new root: %s", strerror(errno));
  if (umount2(OLD_ROOT, MNT_DETACH) != 0) FAILED("cannot detach the old root: %s", strerror(errno));
  if (rmdir(OLD_ROOT) != 0) FAILED("cannot remove /%s: %s", OLD_ROOT, strerror(errno));
  struct stat st;
  if (stat("/", &st) != 0 || st.st_dev != g_root_dev || st.st_ino != g_root_ino) {
    FAILED("after pivot_root, \"/\" is not the jail root %s", g_root);
  }
  g_pivoted = 1;
}

static void own(const char *path) {
  require_jail_root("chown");
  if (fchownat(AT_FDCWD, path, g_uid, g_gid, AT_SYMLINK_NOFOLLOW) != 0) FAILED("cannot chown %s: %s", path, strerror(errno));
}

static void step_dir(const char *path, const char *mode_text) {
  mode_t mode = 0;
  parse_mode(mode_text, &mode);
  require_jail_root("dir");
  if (mkdir(path, mode) != 0 && errno != EEXIST) FAILED("cannot make %s: %s", path, strerror(errno));
  struct stat st;
  if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode)) FAILED("%s in the jail is not a directory", path);
  if (fchmodat(AT_FDCWD, path, mode, 0) != 0) FAILED("cannot chmod %s: %s", path, strerror(errno));
  own(path);
}

static void step_dev(const char *path, const char *rdev_text, const char *mode_text) {
  unsigned long long rdev = 0;
  mode_t mode = 0;
  parse_u64(rdev_text, ~0ULL, &rdev);
  parse_mode(mode_text, &mode);
  require_jail_root("dev");
  if (mknod(path, S_IFCHR | mode, (dev_t)rdev) != 0) FAILED("cannot make device %s: %s", path, strerror(errno));
  own(path);
}

static void step_symlink(const char *target, const char *path) {
  require_jail_root("symlink");
  if (symlink(target, path) != 0) FAILED("cannot make link %s: %s", path, strerror(errno));
}

static void write_pid_file(const char *path, pid_t pid) {
  require_jail_root("pid-file");
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) FAILED("cannot create %s: %s", path, strerror(errno));
  char text[32];
  int n = snprintf(text, sizeof text, "%d", (int)pid);
  if (write(fd, text, (size_t)n) != n) FAILED("cannot write %s: %s", path, strerror(errno));
  close(fd);
}

static void step_daemonize(void) {
  require_jail_root("daemonize");
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) FAILED("cannot open /dev/null in the jail: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) FAILED("cannot fork: %s", strerror(errno));
  if (pid > 0) _exit(0);
  if (setsid() < 0) FAILED("setsid: %s", strerror(errno));
  pid = fork();
  if (pid < 0) FAILED("cannot fork: %s", strerror(errno));
  if (pid > 0) _exit(0);
  for (int fd = 0; fd <= 2; fd++) {
    if (dup2(null, fd) < 0) FAILED("dup2: %s", strerror(errno));
  }
  close(null);
}

static void step_new_pid_ns(const char *pid_file) {
  int session_leader = getsid(0) == getpid();
  if (unshare(CLONE_NEWPID) != 0) FAILED("cannot make a new pid namespace: %s", strerror(errno));
  pid_t pid = fork(); // the child is pid 1 of the new namespace
  if (pid < 0) FAILED("cannot fork into the new pid namespace: %s", strerror(errno));
  if (pid > 0) {
    write_pid_file(pid_file, pid);
    _exit(0);
  }
  if (session_leader && setsid() < 0) FAILED("setsid: %s", strerror(errno));
}

static void step_mount_proc(const char *path) {
  require_jail_root("mount-proc");
  if (mkdir(path, 0555) != 0 && errno != EEXIST) FAILED("cannot make %s: %s", path, strerror(errno));
  if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) FAILED("cannot mount proc at %s: %s", path, strerror(errno));
}

static void step_drop(void) {
  require_jail_root("drop");
  if (setgroups(0, NULL) != 0) FAILED("setgroups: %s", strerror(errno));
  if (setresgid(g_gid, g_gid, g_gid) != 0) FAILED("cannot set gid %u: %s", (unsigned)g_gid, strerror(errno));
  if (setresuid(g_uid, g_uid, g_uid) != 0) FAILED("cannot set uid %u: %s", (unsigned)g_uid, strerror(errno));
  uid_t r, e, s;
  gid_t gr, ge, gs;
  if (getresuid(&r, &e, &s) != 0 || r != g_uid || e != g_uid || s != g_uid) FAILED("the uid did not change to %u", (unsigned)g_uid);
  if (getresgid(&gr, &ge, &gs) != 0 || gr != g_gid || ge != g_gid || gs != g_gid) FAILED("the gid did not change to %u", (unsigned)g_gid);
  if (getgroups(0, NULL) != 0) FAILED("supplementary groups are left");
  if (g_uid != 0 && setuid(0) == 0) FAILED("uid 0 could be regained after the drop");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) FAILED("PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
  g_dropped = 1;
}

static void step_exec(char **argv) {
  require_jail_root("exec");
  if (!g_dropped) die(2, "refused: exec before drop");
  char *env[] = {NULL};
  execve(argv[0], argv, env);
  FAILED("cannot exec %s in the jail: %s", argv[0], strerror(errno));
}

// Signals as a fresh program has them: the exec'ing Node process ignored some
// (SIGPIPE), and ignored signals stay ignored across execve.
static void reset_signals(void) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  for (int s = 1; s < NSIG; s++) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    signal(s, SIG_DFL);
  }
}

// Only stdin, stdout and stderr go into the jail.
static void close_inherited_fds(void) {
  if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0) return;
  long max = sysconf(_SC_OPEN_MAX);
  for (long fd = 3; fd < (max > 0 ? max : 1024); fd++) close((int)fd);
}

int main(int argc, char **argv) {
  int i = 1, check_only = 0, have_uid = 0, have_gid = 0;
  unsigned long long v;
  if (i < argc && strcmp(argv[i], "--check") == 0) {
    check_only = 1;
    i++;
  }
  for (; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--uid") == 0) {
      if (!parse_u64(argv[i + 1], 0xfffffffeULL, &v)) REFUSE("--uid '%s' is not a uid", argv[i + 1]);
      g_uid = (uid_t)v;
      have_uid = 1;
    } else if (strcmp(argv[i], "--gid") == 0) {
      if (!parse_u64(argv[i + 1], 0xfffffffeULL, &v)) REFUSE("--gid '%s' is not a gid", argv[i + 1]);
      g_gid = (gid_t)v;
      have_gid = 1;
    } else {
      break;
    }
  }
  if (!have_uid || !have_gid) REFUSE("--uid and --gid are required before the steps");
  check_plan(argc, argv, i);
  if (check_only) {
    puts("ok");
    return 0;
  }
  reset_signals();
  close_inherited_fds();
  while (i < argc) {
    const char *name = argv[i];
    const struct step *s = find_step(name);
    char **a = argv + i + 1;
    if (strcmp(name, "setns-net") == 0) step_setns_net(a[0]);
    else if (strcmp(name, "rlimit") == 0) step_rlimit(a[0], a[1]);
    else if (strcmp(name, "cgroup-join") == 0) step_cgroup_join(a[0]);
    else if (strcmp(name, "unshare-mount") == 0) step_unshare_mount();
    else if (strcmp(name, "bind-root") == 0) step_bind_root(a[0]);
    else if (strcmp(name, "bind-ro") == 0) step_bind_ro(a[0], a[1]);
    else if (strcmp(name, "pivot") == 0) step_pivot();
    else if (strcmp(name, "dir") == 0) step_dir(a[0], a[1]);
    else if (strcmp(name, "dev") == 0) step_dev(a[0], a[1], a[2]);
    else if (strcmp(name, "symlink") == 0) step_symlink(a[0], a[1]);
    else if (strcmp(name, "daemonize") == 0) step_daemonize();
    else if (strcmp(name, "new-pid-ns") == 0) step_new_pid_ns(a[0]);
    else if (strcmp(name, "pid-file") == 0) write_pid_file(a[0], getpid());
    else if (strcmp(name, "mount-proc") == 0) step_mount_proc(a[0]);
    else if (strcmp(name, "drop") == 0) step_drop();
    else if (strcmp(name, "exec") == 0) step_exec(a);
    i += 1 + s->nargs;
  }
  die(1, "the plan ended without exec");
}
