/* meshcc-spawn: start processes for the daemon, so that the daemon never forks itself.
 *
 * Node starts a child with fork(): the kernel copies the daemon's page tables (a hundred MiB
 * and more of heap) and write-protects every page, and until the child has exec'd, each page
 * the daemon writes takes a fault. On this project's VMs that cost the client daemon about
 * 10 ms of CPU per preprocessor run (one per remote job), several times the run's own start.
 * This process is small: its fork costs next to nothing, and the daemon's pages stay its own.
 *
 * Protocol (src/util/run-process.ts is the other side), all integers little-endian u32:
 *   daemon → stdin:  'S' len id flags cwd\0 argc argv\0... envc env\0...   start (len: bytes after len)
 *                    'R' id                  the daemon has opened the child's pipes: close ours
 *                    'K' id signal           signal the child (its group when started in one), unless reaped
 *   stdout → daemon: 17-byte records: type id a b c
 *                    's' id pid outfd errfd  started; the daemon opens /proc/<this pid>/fd/<fd> (-1: none)
 *                    'f' id errno 0 0        could not start (chdir, exec, pipe, fork)
 *                    'x' id status 0 0       exited; status as waitpid gives it
 * flags: 1 keep stdout, 2 keep stderr, 4 own process group (setsid). A stream not kept is
 * /dev/null; stdin is always /dev/null. EOF on stdin: the daemon is gone, and so is this.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_MSG (64u * 1024 * 1024)
#define MAX_CHILDREN 4096

extern char **environ;

struct child { uint32_t id; pid_t pid; int out, err; int group; int reaped; };
static struct child kids[MAX_CHILDREN];

static void put32(unsigned char *p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }
static uint32_t get32(const unsigned char *p) { return p[0] | p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static void reply(char type, uint32_t id, int32_t a, int32_t b, int32_t c) {
  unsigned char r[17];
  r[0] = (unsigned char)type;
  put32(r + 1, id); put32(r + 5, (uint32_t)a); put32(r + 9, (uint32_t)b); put32(r + 13, (uint32_t)c);
  size_t off = 0;
  while (off < sizeof r) {
    ssize_t n = write(1, r + off, sizeof r - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) _exit(1); /* the daemon is gone */
    off += (size_t)n;
  }
}

static struct child *slot_of(uint32_t id) {
  for (int i = 0; i < MAX_CHILDREN; i++) if (kids[i].pid > 0 && kids[i].id == id) return &kids[i];
  return NULL;
}

static void close_pipes(struct child *k) {
  if (k->out >= 0) close(k->out);
  if (k->err >= 0) close(k->err);
  k->out = k->err = -1;
}

static void release(struct child *k) {
  close_pipes(k);
  if (k->reaped) k->pid = 0;
}

/* Parse a list of n NUL-terminated strings from p..end into a NULL-terminated array. */
static char **strings(unsigned char **p, unsigned char *end) {
  if (end - *p < 4) return NULL;
  uint32_t n = get32(*p);
  *p += 4;
  if (n > (uint32_t)(end - *p)) return NULL;
  char **v = calloc((size_t)n + 1, sizeof *v);
  if (!v) return NULL;
  for (uint32_t i = 0; i < n; i++) {
    unsigned char *z = memchr(*p, 0, (size_t)(end - *p));
    if (!z) { free(v); return NULL; }
    v[i] = (char *)*p;
    *p = z + 1;
  }
  return v;
}

static void start(unsigned char *msg, uint32_t len, const sigset_t *oldmask) {
  unsigned char *p = msg, *end = msg + len;
  if (len < 5) _exit(2);
  uint32_t id = get32(p);
  unsigned flags = p[4];
  p += 5;
  unsigned char *z = memchr(p, 0, (size_t)(end - p));
  if (!z) _exit(2);
  const char *cwd = (const char *)p;
  p = z + 1;
  char **argv = strings(&p, end);
  char **envp = argv ? strings(&p, end) : NULL;
  if (!argv || !envp || !argv[0]) _exit(2);
  struct child *k = NULL;
  for (int i = 0; i < MAX_CHILDREN; i++) if (kids[i].pid == 0) { k = &kids[i]; break; }
  int out[2] = { -1, -1 }, err[2] = { -1, -1 }, report[2] = { -1, -1 };
  int e = 0;
  if (!k) e = EAGAIN;
  else if (((flags & 1) && pipe2(out, O_CLOEXEC) != 0) || ((flags & 2) && pipe2(err, O_CLOEXEC) != 0) || pipe2(report, O_CLOEXEC) != 0) e = errno;
  pid_t pid = -1;
  if (e == 0) {
    pid = fork();
    if (pid < 0) e = errno;
  }
  if (pid == 0) {
    /* the child: stdio, group, signals as node's spawn leaves them, then exec */
    int devnull = open("/dev/null", O_RDWR);
    if (devnull < 0) goto fail;
    if (dup2(devnull, 0) < 0 || dup2(out[1] >= 0 ? out[1] : devnull, 1) < 0 || dup2(err[1] >= 0 ? err[1] : devnull, 2) < 0) goto fail;
    if ((flags & 4) && setsid() < 0) goto fail;
    if (chdir(cwd) != 0) goto fail;
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    environ = envp;
    execvp(argv[0], argv);
  fail:;
    int x = errno;
    (void)!write(report[1], &x, sizeof x);
    _exit(127);
  }
  if (out[1] >= 0) close(out[1]);
  if (err[1] >= 0) close(err[1]);
  if (report[1] >= 0) close(report[1]);
  if (pid > 0) {
    /* the report pipe closes on exec (nothing read) or carries the errno */
    int x = 0;
    ssize_t n;
    do n = read(report[0], &x, sizeof x); while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof x) {
      e = x;
      while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
      pid = -1;
    }
  }
  if (report[0] >= 0) close(report[0]);
  free(argv);
  free(envp);
  if (pid < 0) {
    if (out[0] >= 0) close(out[0]);
    if (err[0] >= 0) close(err[0]);
    reply('f', id, e, 0, 0);
    return;
  }
  *k = (struct child){ .id = id, .pid = pid, .out = out[0], .err = err[0], .group = (flags & 4) != 0, .reaped = 0 };
  reply('s', id, pid, out[0], err[0]);
}

static void reap(void) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (int i = 0; i < MAX_CHILDREN; i++) {
      struct child *k = &kids[i];
      if (k->pid != pid || k->reaped) continue;
      k->reaped = 1;
      reply('x', k->id, status, 0, 0);
      if (k->out < 0 && k->err < 0) k->pid = 0;
      break;
    }
  }
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  sigset_t chld, oldmask;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, &oldmask);
  sigdelset(&oldmask, SIGCHLD);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) return 1;
  fcntl(0, F_SETFD, FD_CLOEXEC);
  fcntl(1, F_SETFD, FD_CLOEXEC);
  size_t cap = 64 * 1024, used = 0;
  unsigned char *buf = malloc(cap);
  if (!buf) return 1;
  for (;;) {
    struct pollfd fds[2] = { { .fd = 0, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (fds[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {}
      reap();
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    if (cap - used < 4096) {
      if (cap >= MAX_MSG + 16) return 2;
      cap *= 2;
      unsigned char *b = realloc(buf, cap);
      if (!b) return 1;
      buf = b;
    }
    ssize_t n = read(0, buf + used, cap - used);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return 0; /* the daemon closed our stdin */
    used += (size_t)n;
    size_t off = 0;
    for (;;) {
      size_t left = used - off;
      if (left < 1) break;
      unsigned char t = buf[off];
      if (t == 'S') {
        if (left < 5) break;
        uint32_t len = get32(buf + off + 1);
        if (len > MAX_MSG) return 2;
        if (left < 5 + (size_t)len) break;
        start(buf + off + 5, len, &oldmask);
        off += 5 + len;
      } else if (t == 'R') {
        if (left < 5) break;
        struct child *k = slot_of(get32(buf + off + 1));
        if (k) release(k);
        off += 5;
      } else if (t == 'K') {
        if (left < 9) break;
        struct child *k = slot_of(get32(buf + off + 1));
        int sig = (int)get32(buf + off + 5);
        if (k && !k->reaped) kill(k->group ? -k->pid : k->pid, sig);
        off += 9;
      } else {
        return 2;
      }
    }
    memmove(buf, buf + off, used - off);
    used -= off;
  }
}
