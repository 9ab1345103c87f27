/* meshcc-reap: run a command as a child subreaper and wait for every process it leaves;
 * optionally build the jail a builder's sandbox runs in first.
 *
 * bwrap with a PID namespace (every sandboxed job) leaves its namespace's init behind when it
 * exits: that init, and with it the whole compile, is reaped by the machine's PID 1, so its CPU
 * time never reaches the daemon that ran the job (nor `ps`'s view of who runs what). Started
 * through this, such orphans are reparented here instead, reaped here, and their CPU counts in
 * the daemon's children like any other child's.
 *
 * Usage: meshcc-reap <command> [args...]
 *        meshcc-reap --jail disk=B uid=N gid=N [cpu=S] [fsize=B] [as=B] [nproc=N] [src=DIR...]
 *                    [cgroup=DIR...] -- <command> [args...]
 * Exits like the command: its exit status, or killed by the same signal.
 *
 * --jail (src/sandbox/bwrap.ts explains the layout): in a mount namespace of its own, a tmpfs
 * over /tmp holds /tmp/in/0, /tmp/in/1 … (the src directories bound there, so that the job's
 * uid reaches them wherever the daemon keeps them) and /tmp/out, a tmpfs of `disk` bytes with
 * cwd/ and tmp/ in it: the only space the job can write, mounted nosuid,nodev. When the daemon
 * runs as root, this process then becomes uid/gid (an unprivileged user: bwrap and the job run
 * as that user, never as root); in every case it enters a user namespace of its own, so that
 * RLIMIT_NPROC counts this job's processes only. It stays in that namespace after the command
 * has exited, so /tmp/out is still there: once everything is reaped it writes one byte to fd 4
 * and waits until the daemon has read the job's output through /proc/<this pid>/root and
 * closes fd 4 (or writes to it); only then does the tmpfs go away with this process. The
 * command gets the resource limits (cpu seconds: SIGXCPU at the limit, SIGKILL a second later;
 * fsize, as: bytes; nproc: processes; no core files); this process keeps the daemon's.
 *
 * cgroup=DIR (src/sandbox/cgroup.ts made it, with the job's memory and pids limits): this
 * process moves itself into each DIR first of all, while it still has the daemon's user, so
 * that everything it starts (bwrap, the job, the job's tmpfs pages) is in it from the first
 * instruction: no window in which a job process runs outside its limits. When it cannot, it
 * fails before starting anything.
 *
 * When the daemon dies (SIGKILL, a crash), the command and everything it left are killed: the
 * job's wall-clock limit was the daemon's to enforce, and nobody reads its output any more.
 * bwrap's --die-with-parent ties bwrap to this process, not to the daemon, and bwrap's
 * namespace init does not always follow bwrap (killed while it starts, it waits for bwrap for
 * ever); killing that init ends its whole PID namespace. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOLD_FD 4
#define MAX_CGROUPS 4
/* bwrap and the job never see these: they are only the jail's bind sources */
#define STAGE "/tmp"
#define OUT STAGE "/out"

/* the command, then 0 once it is reaped */
static volatile pid_t job = 0;
static volatile sig_atomic_t orphaned = 0;

/* SIGKILL to the command and to every child this process has now (orphans reparented here,
 * bwrap's namespace init among them); only async-signal-safe calls: it runs in a handler too */
static void kill_children(void) {
  char buf[4096];
  if (job > 0) kill(job, SIGKILL);
  int fd = open("/proc/thread-self/children", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  long pid = 0;
  for (ssize_t i = 0; i < n; i++) {
    if (buf[i] >= '0' && buf[i] <= '9') pid = pid * 10 + (buf[i] - '0');
    else { if (pid > 0) kill((pid_t)pid, SIGKILL); pid = 0; }
  }
  if (pid > 0) kill((pid_t)pid, SIGKILL);
}

/* PR_SET_PDEATHSIG: the daemon that started this process is gone */
static void on_daemon_death(int sig) {
  (void)sig;
  int saved = errno;
  orphaned = 1;
  kill_children();
  errno = saved;
}

static void die(const char *what) {
  fprintf(stderr, "meshcc-reap: %s: %s\n", what, strerror(errno));
  exit(127);
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) die(path);
  close(fd);
}

/* A tmpfs over /tmp with each source bound at /tmp/in/N and an empty /tmp/out. The sources are
 * opened before /tmp is covered (they may live under it) and after the mount namespace exists
 * (a bind from a descriptor of another namespace is refused), and bound without what is
 * mounted below them: they are plain directories of the daemon's. */
static void stage(char **srcs, int n) {
  int fds[64];
  char path[64];
  if (n > 64) { errno = E2BIG; die("--jail sources"); }
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) die("make / private");
  for (int i = 0; i < n; i++) {
    fds[i] = open(srcs[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fds[i] < 0) die(srcs[i]);
  }
  /* 1777: bwrap, as the job's user, makes its own /tmp/.bubblewrap-UID here */
  if (mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=1777")) die("mount tmpfs on " STAGE);
  if (mkdir(STAGE "/in", 0755) || mkdir(OUT, 0755)) die("mkdir in " STAGE);
  for (int i = 0; i < n; i++) {
    snprintf(path, sizeof path, STAGE "/in/%d", i);
    char fdpath[64];
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fds[i]);
    if (mkdir(path, 0755) || mount(fdpath, path, NULL, MS_BIND, NULL)) die(srcs[i]);
    close(fds[i]);
  }
}

static void jail(unsigned long long disk, uid_t uid, gid_t gid, char **srcs, int n) {
  char buf[128];
  int root = geteuid() == 0;
  if (root) {
    /* as root: bind the sources (under root's own cache, out of the job user's reach) … */
    if (unshare(CLONE_NEWNS)) die("unshare mount namespace");
    stage(srcs, n);
    /* … then be the job's user for good */
    if (setgroups(0, NULL) || setresgid(gid, gid, gid) || setresuid(uid, uid, uid)) die("switch to the job user");
    /* changing uid cleared it; /proc/self/uid_map below must stay ours to write */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
  }
  uid_t u = getuid();
  gid_t g = getgid();
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS)) die("unshare user namespace");
  write_file("/proc/self/setgroups", "deny");
  snprintf(buf, sizeof buf, "%u %u 1\n", (unsigned)u, (unsigned)u);
  write_file("/proc/self/uid_map", buf);
  snprintf(buf, sizeof buf, "%u %u 1\n", (unsigned)g, (unsigned)g);
  write_file("/proc/self/gid_map", buf);
  if (!root) stage(srcs, n);
  /* inodes are capped too: their memory does not count in size= */
  snprintf(buf, sizeof buf, "size=%llu,nr_inodes=32768,mode=0755", disk);
  if (mount("tmpfs", OUT, "tmpfs", MS_NOSUID | MS_NODEV, buf)) die("mount the job's tmpfs");
  if (mkdir(OUT "/cwd", 0755) || mkdir(OUT "/tmp", 0700)) die("mkdir in " OUT);
}

struct jail_args {
  unsigned long long disk, cpu, fsize, as, nproc;
  uid_t uid;
  gid_t gid;
  char *srcs[64];
  int nsrc;
  char *cgroups[MAX_CGROUPS];
  int ncgroup;
};

/* key=value arguments up to "--"; returns the index of the command */
static int parse_jail(int argc, char **argv, struct jail_args *j) {
  int i = 2, have = 0;
  memset(j, 0, sizeof *j);
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    char *eq = strchr(argv[i], '=');
    if (!eq) break;
    *eq = 0;
    const char *k = argv[i], *v = eq + 1;
    unsigned long long n = strtoull(v, NULL, 10);
    if (strcmp(k, "src") == 0 && j->nsrc < 64) j->srcs[j->nsrc++] = eq + 1;
    else if (strcmp(k, "cgroup") == 0 && j->ncgroup < MAX_CGROUPS) j->cgroups[j->ncgroup++] = eq + 1;
    else if (strcmp(k, "disk") == 0) { j->disk = n; have |= 1; }
    else if (strcmp(k, "uid") == 0) { j->uid = (uid_t)n; have |= 2; }
    else if (strcmp(k, "gid") == 0) { j->gid = (gid_t)n; have |= 4; }
    else if (strcmp(k, "cpu") == 0) j->cpu = n;
    else if (strcmp(k, "fsize") == 0) j->fsize = n;
    else if (strcmp(k, "as") == 0) j->as = n;
    else if (strcmp(k, "nproc") == 0) j->nproc = n;
    else break;
  }
  if (i >= argc - 1 || strcmp(argv[i], "--") != 0 || have != 7) {
    fputs("usage: meshcc-reap --jail disk=B uid=N gid=N [cpu=S] [fsize=B] [as=B] [nproc=N] [src=DIR...] [cgroup=DIR...] -- <command> [args...]\n", stderr);
    exit(127);
  }
  return i + 1;
}

/* never above a hard limit the daemon already has (raising it is not ours to do) */
static void limit(int resource, unsigned long long soft, unsigned long long hard, const char *what) {
  struct rlimit cur, r;
  if (getrlimit(resource, &cur) != 0) die(what);
  r.rlim_max = cur.rlim_max != RLIM_INFINITY && cur.rlim_max < hard ? cur.rlim_max : (rlim_t)hard;
  r.rlim_cur = soft < r.rlim_max ? (rlim_t)soft : r.rlim_max;
  if (setrlimit(resource, &r) != 0) die(what);
}

/* this process into DIR/cgroup.procs (its children follow it) */
static void join_cgroup(const char *dir) {
  char path[4096], pid[32];
  if (snprintf(path, sizeof path, "%s/cgroup.procs", dir) >= (int)sizeof path) { errno = ENAMETOOLONG; die(dir); }
  snprintf(pid, sizeof pid, "%d\n", (int)getpid());
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, pid, strlen(pid)) != (ssize_t)strlen(pid)) die("join the job's cgroup");
  close(fd);
}

int main(int argc, char **argv) {
  int cmd = 1, jailed = 0;
  struct jail_args j;
  pid_t daemon = getppid();
  if (argc > 1 && strcmp(argv[1], "--jail") == 0) {
    cmd = parse_jail(argc, argv, &j);
    for (int i = 0; i < j.ncgroup; i++) join_cgroup(j.cgroups[i]);
    jail(j.disk, j.uid, j.gid, j.srcs, j.nsrc);
    jailed = 1;
  }
  if (argc <= cmd) {
    fputs("usage: meshcc-reap <command> [args...]\n", stderr);
    return 127;
  }
  /* without it (very old kernels) orphans go to PID 1 as before: nothing else changes */
  prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  /* after the jail: a change of user clears the parent-death signal. Blocked until the command's
   * pid is known, so that the handler always has it to kill. */
  sigset_t hup, old;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  sigprocmask(SIG_BLOCK, &hup, &old);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_daemon_death;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGHUP, &sa, NULL);
  prctl(PR_SET_PDEATHSIG, SIGHUP, 0, 0, 0);
  if (getppid() != daemon) {
    fputs("meshcc-reap: the daemon that started it is gone\n", stderr);
    return 127;
  }
  /* the hold socket is this process's, never the sandbox's; without one (the daemon's
   * sandbox probe) there is nothing to hold */
  int hold = jailed && fcntl(HOLD_FD, F_SETFD, FD_CLOEXEC) == 0;
  pid_t child = fork();
  if (child < 0) {
    fprintf(stderr, "meshcc-reap: fork: %s\n", strerror(errno));
    return 127;
  }
  if (child == 0) {
    signal(SIGHUP, SIG_DFL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (jailed) {
      limit(RLIMIT_CORE, 0, 0, "RLIMIT_CORE");
      /* at the soft limit SIGXCPU says why the job died; with both equal the kernel sends a
       * bare SIGKILL */
      if (j.cpu) limit(RLIMIT_CPU, j.cpu, j.cpu + 1, "RLIMIT_CPU");
      if (j.fsize) limit(RLIMIT_FSIZE, j.fsize, j.fsize, "RLIMIT_FSIZE");
      if (j.as) limit(RLIMIT_AS, j.as, j.as, "RLIMIT_AS");
      if (j.nproc) limit(RLIMIT_NPROC, j.nproc, j.nproc, "RLIMIT_NPROC");
    }
    execvp(argv[cmd], argv + cmd);
    fprintf(stderr, "meshcc-reap: %s: %s\n", argv[cmd], strerror(errno));
    _exit(127);
  }
  job = child;
  sigprocmask(SIG_SETMASK, &old, NULL); /* a daemon that died meanwhile: the handler runs now */
  /* a daemon that closed the hold socket first must not turn the exit status into SIGPIPE's
   * (set here, not before the fork: the command keeps the default) */
  if (hold) signal(SIGPIPE, SIG_IGN);
  /* the caller reads the command's pipes to their end: hold none of them open while waiting
   * for stragglers */
  /* one close_range (Linux 5.9) instead of a close per possible descriptor: with a limit of
   * 20000 open files the loop cost more CPU than the rest of a sandbox start */
  unsigned first = hold ? HOLD_FD + 1 : 0;
  if (hold) for (int fd = 0; fd < HOLD_FD; fd++) close(fd);
#ifdef SYS_close_range
  if (syscall(SYS_close_range, first, ~0U, 0U) != 0)
#endif
  {
    long maxfd = sysconf(_SC_OPEN_MAX);
    if (maxfd < 0 || maxfd > 65536) maxfd = 65536;
    for (int fd = (int)first; fd < maxfd; fd++) close(fd);
  }
  int status = 0, have = 0;
  for (;;) {
    int st;
    pid_t p = waitpid(-1, &st, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      break; /* ECHILD: everything reaped */
    }
    if (p == child) { status = st; have = 1; job = 0; }
    /* what was reparented here since (bwrap's init, when bwrap went first) goes too */
    if (orphaned) kill_children();
  }
  if (hold) {
    char b = 'r';
    ssize_t n;
    do n = write(HOLD_FD, &b, 1); while (n < 0 && errno == EINTR);
    /* returns at the daemon's byte, or at EOF when it closes (or dies) */
    if (n == 1) do n = read(HOLD_FD, &b, 1); while (n < 0 && errno == EINTR);
  }
  if (!have) return 127;
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    signal(sig, SIG_DFL);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); /* no core file for a re-raised SIGSEGV or SIGXCPU */
    kill(getpid(), sig);
    return 128 + sig;
  }
  return WEXITSTATUS(status);
}
