/*
 * What a hostile mesh member runs inside a builder's sandbox (npm run chaos, hostile-jobs row):
 * it tries to read the host files named in CHAOS_READ, to write the host paths in CHAOS_WRITE,
 * to connect to the TCP addresses in CHAOS_CONNECT and the unix sockets in CHAOS_UNIX (all
 * colon- or comma-separated), and reports what it managed, bytes read included, so that the
 * harness can look for the host's bytes in what comes back. It also says which user it runs as
 * and how its working directory is mounted.
 *
 *   chaos-evil all OUT       as a job's "compiler": the report to OUT (the object) and stderr
 *   chaos-evil alloc N OUT   a memory bomb: N bytes allocated and touched; the report to OUT
 *   chaos-evil forkbomb      every process forks for ever (until the sandbox's limits stop it)
 *   chaos-evil wrap …        as gcc's -wrapper: the report to stderr, exit 1
 *   …/cc1 …                  as a cc1 found through gcc's -B: the same
 *   chaos-evil.so            as a gcc plugin (-fplugin): a constructor runs it when cc1 loads it
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void each(const char *list, const char *seps, void (*fn)(FILE *, const char *), FILE *out) {
  if (!list) return;
  char *copy = strdup(list);
  for (char *save = NULL, *item = strtok_r(copy, seps, &save); item; item = strtok_r(NULL, seps, &save)) fn(out, item);
  free(copy);
}

static void try_read(FILE *out, const char *path) {
  int fd = open(path, O_RDONLY | O_NONBLOCK);
  if (fd < 0) { fprintf(out, "read %s: %s\n", path, strerror(errno)); return; }
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n < 0) { fprintf(out, "read %s: %s\n", path, strerror(errno)); return; }
  fprintf(out, "read %s: GOT %zd bytes: ", path, n);
  fwrite(buf, 1, (size_t)n, out);
  fputc('\n', out);
}

static void try_write(FILE *out, const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) { fprintf(out, "write %s: %s\n", path, strerror(errno)); return; }
  ssize_t n = write(fd, "written by a job\n", 17);
  close(fd);
  fprintf(out, "write %s: WROTE %zd bytes\n", path, n);
}

static void try_connect(FILE *out, const char *addr) {
  char host[64];
  const char *colon = strrchr(addr, ':');
  if (!colon || (size_t)(colon - addr) >= sizeof host) { fprintf(out, "connect %s: bad address\n", addr); return; }
  memcpy(host, addr, (size_t)(colon - addr));
  host[colon - addr] = 0;
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1)) };
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(out, "connect %s: bad address\n", addr); return; }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) { fprintf(out, "connect %s: socket: %s\n", addr, strerror(errno)); return; }
  int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  if (rc < 0 && errno == EINPROGRESS) {
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    int err = ETIMEDOUT;
    socklen_t len = sizeof err;
    if (poll(&p, 1, 2000) == 1) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    rc = err == 0 ? 0 : -1;
    errno = err;
  }
  if (rc == 0) { (void)!write(fd, "job was here\n", 13); fprintf(out, "connect %s: CONNECTED\n", addr); }
  else fprintf(out, "connect %s: %s\n", addr, strerror(errno));
  close(fd);
}

static void try_unix(FILE *out, const char *path) {
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) { fprintf(out, "unix %s: socket: %s\n", path, strerror(errno)); return; }
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) fprintf(out, "unix %s: CONNECTED\n", path);
  else fprintf(out, "unix %s: %s\n", path, strerror(errno));
  close(fd);
}

/* the mount line of the working directory, for its nosuid/nodev flags */
static void cwd_mount(FILE *out) {
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) return;
  FILE *m = fopen("/proc/self/mountinfo", "r");
  if (!m) { fprintf(out, "mountinfo: %s\n", strerror(errno)); return; }
  char line[8192];
  while (fgets(line, sizeof line, m)) {
    char point[4096], opts[1024];
    if (sscanf(line, "%*s %*s %*s %*s %4095s %1023s", point, opts) == 2 && strcmp(point, cwd) == 0) fprintf(out, "cwd mount %s %s\n", point, opts);
  }
  fclose(m);
}

static void evil(FILE *out) {
  fprintf(out, "chaos-evil ran as uid %d euid %d gid %d\n", (int)getuid(), (int)geteuid(), (int)getgid());
  cwd_mount(out);
  each(getenv("CHAOS_READ"), ":", try_read, out);
  each(getenv("CHAOS_WRITE"), ":", try_write, out);
  each(getenv("CHAOS_CONNECT"), ",", try_connect, out);
  each(getenv("CHAOS_UNIX"), ":", try_unix, out);
  fflush(out);
}

#ifdef PLUGIN
__attribute__((constructor)) static void on_load(void) {
  evil(stderr);
}
#else
int main(int argc, char **argv) {
  const char *self = strrchr(argv[0], '/');
  self = self ? self + 1 : argv[0];
  if (strcmp(self, "cc1") == 0 || (argc > 1 && strcmp(argv[1], "wrap") == 0)) {
    evil(stderr);
    return 1;
  }
  if (argc > 3 && strcmp(argv[1], "alloc") == 0) {
    size_t n = (size_t)strtoull(argv[2], NULL, 10);
    char *p = malloc(n);
    int err = errno;
    if (p) memset(p, 1, n);
    FILE *obj = fopen(argv[3], "w");
    if (!obj) return 1;
    if (p) fprintf(obj, "alloc %zu: GOT it\n", n);
    else fprintf(obj, "alloc %zu: %s\n", n, strerror(err));
    fclose(obj);
    return p ? 0 : 1;
  }
  if (argc > 1 && strcmp(argv[1], "forkbomb") == 0) {
    /* a minute of forking and spinning; the job's limits (processes, CPU, wall clock) end it */
    time_t end = time(NULL) + 60;
    while (time(NULL) < end) (void)fork();
    return 0;
  }
  if (argc > 2 && strcmp(argv[1], "all") == 0) {
    FILE *obj = fopen(argv[2], "w");
    if (obj) { evil(obj); fclose(obj); }
    evil(stderr);
    return 0;
  }
  fprintf(stderr, "usage: chaos-evil all OUT | wrap ...\n");
  return 2;
}
#endif
