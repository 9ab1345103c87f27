/*
 * meshcc native launcher: the per-compile fast path of `meshcc <compiler> args...` and of
 * masquerade links.
 *
 * A build calls the launcher once per translation unit, so its start-up is paid thousands of
 * times: Node.js needs about 0.1 s of CPU to start, this program about 1 ms. It does only the
 * common case: find the compiler, find the daemon's socket, send one COMPILE frame
 * (src/daemon/launcher-protocol.ts), replay the reply. When no daemon listens yet, one
 * launcher of the burst starts it and all of them wait (a cold `make -j200` must not start
 * 200 Node processes). Everything else (admin commands, a daemon that cannot be reached,
 * MESHCC_DISABLE, a config file it does not fully understand) is handed to the Node CLI with
 * exec, so every behaviour and message lives in one place and this file stays small.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <regex.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MESHCC_NODE
#define MESHCC_NODE "node"
#endif

#define MAX_REPLY (256u * 1024u * 1024u) /* MAX_FRAME_BYTES in src/daemon/launcher-protocol.ts */
#define MAX_REQUEST (16u * 1024u * 1024u) /* MAX_REQUEST_BYTES there: what the daemon reads */
#define DAEMON_NODE_FLAG "--max-semi-space-size=4" /* DAEMON_NODE_FLAGS in src/launcher/client.ts */

enum { COMPILE = 0x01, RESULT = 0x81, PASSTHROUGH = 0x82, FALLBACK = 0x83 };

extern char **environ;

static int g_argc;
static char **g_argv;
static int g_masquerade; /* invoked through a link named like a compiler */
static char g_self[PATH_MAX];      /* realpath of this executable */
static char g_main_js[PATH_MAX];   /* the Node CLI beside it: ../cli/main.js */

static const char *base_name(const char *p) {
  const char *s = strrchr(p, '/');
  return s ? s + 1 : p;
}

/* ---- handing over to the Node CLI ------------------------------------------------------ */

/* Run the Node CLI with our arguments. `reason` (may be NULL) tells it the daemon already
 * failed this request, so it compiles locally and records why instead of asking again. */
static void exec_node(const char *reason) {
  if (reason) setenv("MESHCC_LAUNCHER_FALLBACK", reason, 1);
  char **av = calloc((size_t)g_argc + 4, sizeof(char *));
  if (!av) _exit(127);
  int n = 0;
  av[n++] = (char *)"node";
  if (!g_masquerade && g_argc > 1 && strcmp(g_argv[1], "daemon") == 0) av[n++] = (char *)DAEMON_NODE_FLAG;
  av[n++] = g_main_js;
  /* a masquerade call becomes the explicit form `main.js <compiler> args` */
  if (g_masquerade) av[n++] = (char *)base_name(g_argv[0]);
  for (int i = 1; i < g_argc; i++) av[n++] = g_argv[i];
  av[n] = NULL;
  if (strchr(MESHCC_NODE, '/')) execv(MESHCC_NODE, av);
  execvp("node", av);
  fprintf(stderr, "meshcc: cannot run node for %s: %s\n", g_main_js, strerror(errno));
  _exit(127);
}

/* ---- small helpers ----------------------------------------------------------------------- */

static int is_compiler_name(const char *name) {
  /* the same pattern as COMPILER_NAME in src/launcher/launcher.ts */
  regex_t re;
  if (regcomp(&re, "^([[:alnum:]_.]+-)*(cc|c\\+\\+|gcc|g\\+\\+|clang|clang\\+\\+|rustc)(-[0-9]+(\\.[0-9]+)*)?$", REG_EXTENDED | REG_NOSUB) != 0) return 0;
  int match = regexec(&re, name, 0, NULL, 0) == 0;
  regfree(&re);
  return match;
}

static int is_admin_command(const char *a) {
  static const char *cmds[] = {"daemon", "status", "stats", "mesh", "jobs", "help", "version"};
  for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
    if (strcmp(a, cmds[i]) == 0) return 1;
  return 0;
}

static int executable_file(const char *p) {
  struct stat st;
  return access(p, X_OK) == 0 && stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* dir + "/" + name into out; 0 when it does not fit */
static int join_path(char *out, size_t cap, const char *dir, const char *name) {
  int n = snprintf(out, cap, "%s%s%s", dir, dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", name);
  return n > 0 && (size_t)n < cap;
}

/* meshcc itself: this launcher, the Node CLI, or anything installed under meshcc's name */
static int is_self(const char *real) {
  return strcmp(real, g_self) == 0 || strcmp(real, g_main_js) == 0 || strcmp(base_name(real), "meshcc") == 0;
}

/* The real compiler: a path as given, or the first match on PATH that is not meshcc itself
 * (a masquerade directory is usually first on PATH). A path that is meshcc (a masquerade
 * link wrapped again) is looked up by its name instead: run as the compiler, meshcc would
 * wait for a daemon slot inside a compile that holds one. Mirrors resolveCompiler(). */
static int resolve_compiler(const char *name, const char *cwd, char *out, size_t cap) {
  if (strchr(name, '/')) {
    if (name[0] == '/') {
      if (strlen(name) >= cap) return 0;
      strcpy(out, name);
    } else if (!join_path(out, cap, cwd, name)) {
      return 0;
    }
    if (!executable_file(out)) return 0;
    char real[PATH_MAX];
    if (!realpath(out, real) || !is_self(real)) return 1;
    name = base_name(name);
  }
  const char *path = getenv("PATH");
  if (!path) return 0;
  char *copy = strdup(path);
  if (!copy) return 0;
  int found = 0;
  for (char *save = NULL, *dir = strtok_r(copy, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
    char cand[PATH_MAX], absdir[PATH_MAX], real[PATH_MAX];
    if (dir[0] != '/') {
      if (!join_path(absdir, sizeof absdir, cwd, dir)) continue;
      dir = absdir;
    }
    if (!join_path(cand, sizeof cand, dir, name) || !executable_file(cand)) continue;
    const char *r = realpath(cand, real) ? real : cand;
    if (is_self(r)) continue;
    if (strlen(cand) >= cap) continue;
    strcpy(out, cand);
    found = 1;
  }
  free(copy);
  return found;
}

static const char *home_dir(void) {
  const char *h = getenv("HOME");
  if (h && *h) return h;
  struct passwd *pw = getpwuid(getuid());
  return pw ? pw->pw_dir : "/";
}

/* expandHome(): "~" and "~/..." only */
static int expand_home(const char *p, char *out, size_t cap) {
  int n;
  if (strcmp(p, "~") == 0) n = snprintf(out, cap, "%s", home_dir());
  else if (strncmp(p, "~/", 2) == 0) n = snprintf(out, cap, "%s/%s", home_dir(), p + 2);
  else n = snprintf(out, cap, "%s", p);
  return n > 0 && (size_t)n < cap;
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  char *e = s + strlen(s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) *--e = 0;
  return s;
}

/* [daemon] socket from the TOML config, for the one simple form `socket = "..."` (or '...').
 * Returns 1 found, 0 not set, -1 something this parser must not guess at (Node decides). */
static int config_socket(const char *file, char *out, size_t cap) {
  FILE *f = fopen(file, "r");
  if (!f) return errno == ENOENT ? 0 : -1;
  char line[4096];
  int in_daemon = 0, found = 0, result = 0;
  while (fgets(line, sizeof line, f)) {
    if (strlen(line) == sizeof line - 1 && line[sizeof line - 2] != '\n') { result = -1; break; }
    char *s = trim(line);
    if (*s == '#' || *s == 0) continue;
    if (*s == '[') {
      char *close = strchr(s, ']');
      if (!close || s[1] == '[') { in_daemon = 0; continue; }
      *close = 0;
      in_daemon = strcmp(trim(s + 1), "daemon") == 0;
      continue;
    }
    if (!strstr(s, "socket")) continue;
    /* anything mentioning socket outside the simple form: dotted keys, inline tables... */
    if (!in_daemon || strncmp(s, "socket", 6) != 0) { result = -1; break; }
    char *v = trim(s + 6);
    if (*v != '=') { result = -1; break; }
    v = trim(v + 1);
    char q = *v;
    if (q != '"' && q != '\'') { result = -1; break; }
    char *endq = strchr(v + 1, q);
    if (!endq || endq == v + 1 || memchr(v + 1, '\\', (size_t)(endq - v - 1)) || q == endq[1]) { result = -1; break; }
    *endq = 0;
    char *rest = trim(endq + 1);
    if (*rest && *rest != '#') { result = -1; break; }
    if (found || !expand_home(v + 1, out, cap)) { result = -1; break; }
    found = 1;
    result = 1;
  }
  if (ferror(f)) result = -1;
  fclose(f);
  return result;
}

/* Where the daemon listens, as loadConfig() computes it; 0 when Node must decide. */
static int socket_path(const char *cwd, char *out, size_t cap) {
  char tmp[PATH_MAX];
  const char *env = getenv("MESHCC_SOCKET");
  if (env && *env) {
    if (!expand_home(env, tmp, sizeof tmp)) return 0;
    if (tmp[0] == '/') return snprintf(out, cap, "%s", tmp) < (int)cap;
    return join_path(out, cap, cwd, tmp);
  }
  char file[PATH_MAX];
  const char *conf = getenv("MESHCC_CONF");
  if (conf && *conf) {
    if (!expand_home(conf, tmp, sizeof tmp)) return 0;
    if (tmp[0] == '/') snprintf(file, sizeof file, "%s", tmp);
    else if (!join_path(file, sizeof file, cwd, tmp)) return 0;
    if (access(file, R_OK) != 0) return 0; /* Node reports a missing explicit config */
  } else {
    const char *xdg = getenv("XDG_CONFIG_HOME");
    if (xdg && *xdg) snprintf(file, sizeof file, "%s/meshcc/config.toml", xdg);
    else snprintf(file, sizeof file, "%s/.config/meshcc/config.toml", home_dir());
  }
  int r = config_socket(file, out, cap);
  if (r < 0) return 0;
  if (r == 1) return 1;
  const char *run = getenv("XDG_RUNTIME_DIR");
  if (run && *run) return snprintf(out, cap, "%s/meshcc/daemon.sock", run) < (int)cap;
  return snprintf(out, cap, "/tmp/meshcc-%u/daemon.sock", (unsigned)getuid()) < (int)cap;
}

/* ---- the frame protocol ----------------------------------------------------------------- */

struct buf { unsigned char *p; size_t len, cap; };

static int buf_put(struct buf *b, const void *data, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p) return 0;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
  return 1;
}

static int put_u32(struct buf *b, uint32_t v) {
  unsigned char be[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v};
  return buf_put(b, be, 4);
}

static int put_field(struct buf *b, const char *s) {
  size_t n = strlen(s);
  return put_u32(b, (uint32_t)n) && buf_put(b, s, n);
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int write_all(int fd, const void *data, size_t n, int sock) {
  const char *p = data;
  while (n > 0) {
    ssize_t w = sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { usleep(1000); continue; } /* a non-blocking pipe from the build */
      return 0;
    }
    p += w;
    n -= (size_t)w;
  }
  return 1;
}

static int read_all(int fd, void *data, size_t n) {
  char *p = data;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    p += r;
    n -= (size_t)r;
  }
  return 1;
}

/* ---- starting the daemon ------------------------------------------------------------------ */

/* The same protocol as spawnDaemon() and startAndConnect() in src/launcher/client.ts:
 * <socket>.starting (created with O_EXCL) says a launcher is starting the daemon, and
 * <socket>.pid names the daemon once it runs. */
#define SOFT_START_MS 10000 /* give up unless a daemon is visibly alive and starting */
#define HARD_START_MS 60000 /* a burst of compilers can starve the daemon's start this long */
#define MARKER_FRESH_MS 10000

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int marker_fresh(const char *marker) {
  struct stat st;
  if (stat(marker, &st) != 0) return 0;
  return (time(NULL) - st.st_mtime) * 1000 < MARKER_FRESH_MS;
}

/* The start of a small file as a string (at most size - 1 bytes); 0 when it cannot be read or is empty. */
static int read_head(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  return 1;
}

/* A zombie is no daemon: one killed by SIGKILL stays a zombie until its parent reaps it (init's
 * periodic sweep in many containers and VMs, never under a parent that does not wait), and
 * kill(pid, 0) succeeds on it. processAlive() in src/util/pid-lock.ts does the same. */
static int is_zombie(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  if (!read_head(path, buf, sizeof buf)) return 0;
  char *paren = strrchr(buf, ')'); /* "pid (comm) state ...": comm may hold ')' */
  return paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
}

/* the daemon holding <socket>.pid is alive */
static int lock_holder_alive(const char *sock_path) {
  char lock[PATH_MAX], text[32];
  if (snprintf(lock, sizeof lock, "%s.pid", sock_path) >= (int)sizeof lock) return 0;
  if (!read_head(lock, text, sizeof text)) return 0;
  char *end;
  long pid = strtol(text, &end, 10);
  if (pid <= 0 || (*end && *end != '\n')) return 0;
  if (kill((pid_t)pid, 0) != 0 && errno != EPERM) return 0;
  return !is_zombie((pid_t)pid);
}

static int mkdirs(const char *dir) {
  char p[PATH_MAX];
  if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return 0;
  for (char *s = p + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(p, 0700) != 0 && errno != EEXIST) return 0;
    *s = '/';
  }
  return mkdir(p, 0700) == 0 || errno == EEXIST;
}

/* Start `node main.js daemon --background` unless another launcher is doing so. The daemon
 * gets its own session and none of our descriptors: make and ninja wait for their pipes to
 * close, so a daemon holding them would hang the build. Returns the child's pid, 0 when
 * another launcher is starting it, -1 when we could not. */
static pid_t spawn_daemon(const char *sock_path) {
  char marker[PATH_MAX], dir[PATH_MAX];
  if (snprintf(marker, sizeof marker, "%s.starting", sock_path) >= (int)sizeof marker) return -1;
  if (marker_fresh(marker)) return 0;
  unlink(marker); /* left by a launcher that died before the daemon listened */
  snprintf(dir, sizeof dir, "%s", sock_path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = 0;
    mkdirs(dir); /* when this fails, the daemon logs why it cannot use the directory */
  }
  int mfd = open(marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (mfd < 0 && errno == EEXIST) return 0;
  if (mfd >= 0) close(mfd);
  pid_t pid = fork();
  if (pid != 0) return pid;
  setsid();
  int devnull = open("/dev/null", O_RDWR);
  if (devnull >= 0) {
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
  }
  long maxfd = sysconf(_SC_OPEN_MAX);
  if (maxfd < 0 || maxfd > 65536) maxfd = 65536;
  for (int fd = 3; fd < maxfd; fd++) close(fd); /* the jobserver pipe of make, for one */
  setenv("MALLOC_ARENA_MAX", "2", 0); /* DAEMON_ENV in src/launcher/client.ts */
  char *av[] = {(char *)"node", (char *)DAEMON_NODE_FLAG, g_main_js, (char *)"daemon", (char *)"--background", NULL};
  if (strchr(MESHCC_NODE, '/')) execv(MESHCC_NODE, av);
  execvp("node", av);
  _exit(127);
}

/* Connect, starting the daemon when nobody listens. Returns the connected socket, or -1 when
 * the Node CLI should take over (it reports and counts why). */
static int connect_daemon(const struct sockaddr_un *addr, const char *sock_path, const char **why) {
  *why = NULL;
  for (int busy = 0;; busy++) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0) return fd;
    int err = errno;
    close(fd);
    if ((err == EAGAIN || err == EINTR) && busy < 3000) { sleep_ms(10); continue; } /* accept queue full */
    if (err != ENOENT && err != ECONNREFUSED) return -1;
    break;
  }
  pid_t child = spawn_daemon(sock_path);
  long long started = now_ms();
  long delay = 20;
  for (;;) {
    sleep_ms(delay);
    if (child > 0) {
      int status;
      pid_t r = waitpid(child, &status, WNOHANG);
      if (r == child) {
        child = 0;
        /* exit 0: another daemon won the race; anything else: it cannot start (Node says why) */
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
      }
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0) return fd;
    close(fd);
    long long waited = now_ms() - started;
    char marker[PATH_MAX];
    snprintf(marker, sizeof marker, "%s.starting", sock_path);
    int starting = lock_holder_alive(sock_path) || marker_fresh(marker);
    if (waited > HARD_START_MS || (waited > SOFT_START_MS && !lock_holder_alive(sock_path))) {
      *why = "daemon unreachable";
      return -1;
    }
    delay = delay * 2 > 250 ? 250 : delay * 2;
    if (!starting && child <= 0) child = spawn_daemon(sock_path);
  }
}

/* ---- main ------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
  g_argc = argc;
  g_argv = argv;
  if (!realpath("/proc/self/exe", g_self)) g_self[0] = 0;
  {
    char dir[PATH_MAX - 32];
    snprintf(dir, sizeof dir, "%s", g_self);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    char js[PATH_MAX];
    snprintf(js, sizeof js, "%s/../cli/main.js", dir);
    if (!realpath(js, g_main_js)) snprintf(g_main_js, sizeof g_main_js, "%s", js);
  }

  const char *invoked = base_name(argv[0]);
  const char *compiler_name;
  int first_arg;
  if (strcmp(invoked, "meshcc") != 0 && is_compiler_name(invoked)) {
    g_masquerade = 1;
    compiler_name = invoked;
    first_arg = 1;
  } else {
    if (argc < 2 || argv[1][0] == '-' || is_admin_command(argv[1])) exec_node(NULL);
    compiler_name = argv[1];
    first_arg = 2;
    /* `meshcc meshcc gcc ...` (a wrapper wrapped again) is `meshcc gcc ...`: unwrapSelf() */
    while (first_arg < argc && (strcmp(compiler_name, "meshcc") == 0 || (strchr(compiler_name, '/') && strcmp(base_name(compiler_name), "meshcc") == 0))) {
      compiler_name = argv[first_arg++];
    }
    if (compiler_name[0] == '-' || strcmp(compiler_name, "meshcc") == 0) exec_node(NULL);
  }
  const char *disable = getenv("MESHCC_DISABLE");
  if (disable && *disable && strcmp(disable, "0") != 0) exec_node(NULL);

  char cwd[PATH_MAX], compiler[PATH_MAX], sock_path[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) exec_node(NULL);
  if (!resolve_compiler(compiler_name, cwd, compiler, sizeof compiler)) exec_node(NULL); /* Node says why */
  if (!socket_path(cwd, sock_path, sizeof sock_path)) exec_node(NULL);

  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (strlen(sock_path) >= sizeof addr.sun_path) exec_node(NULL);
  strcpy(addr.sun_path, sock_path);
  const char *why;
  int fd = connect_daemon(&addr, sock_path, &why);
  if (fd < 0) exec_node(why);

  /* COMPILE [version, cwd, compiler, argc, args..., env..., MESHCC_LAUNCHER_PID=pid] */
  struct buf b = {0};
  char count[16];
  snprintf(count, sizeof count, "%d", argc - first_arg);
  int ok = put_u32(&b, 0) && buf_put(&b, (unsigned char[]){COMPILE}, 1) && put_field(&b, "1") &&
           put_field(&b, cwd) && put_field(&b, compiler) && put_field(&b, count);
  for (int i = first_arg; ok && i < argc; i++) ok = put_field(&b, argv[i]);
  for (char **e = environ; ok && *e; e++) ok = put_field(&b, *e);
  /* LAUNCHER_PID_ENV in src/daemon/launcher-protocol.ts, last so that it wins over an inherited
   * one: this process holds the build's descriptors (a jobserver's) until the reply, and the
   * daemon's rustc may open them through /proc */
  char pid_entry[40];
  snprintf(pid_entry, sizeof pid_entry, "MESHCC_LAUNCHER_PID=%d", (int)getpid());
  ok = ok && put_field(&b, pid_entry);
  if (!ok) exec_node(NULL);
  if (b.len - 4 > MAX_REQUEST) exec_node("request too large");
  uint32_t body = (uint32_t)(b.len - 4);
  b.p[0] = (unsigned char)(body >> 24);
  b.p[1] = (unsigned char)(body >> 16);
  b.p[2] = (unsigned char)(body >> 8);
  b.p[3] = (unsigned char)body;
  if (!write_all(fd, b.p, b.len, 1)) exec_node("daemon connection lost");
  free(b.p);

  unsigned char head[4];
  if (!read_all(fd, head, 4)) exec_node("daemon connection lost");
  uint32_t len = get_u32(head);
  if (len < 1 || len > MAX_REPLY) exec_node("unexpected daemon reply");
  unsigned char *reply = malloc(len);
  if (!reply) exec_node("unexpected daemon reply");
  if (!read_all(fd, reply, len)) exec_node("daemon connection lost");
  close(fd);

  /* fields */
  const unsigned char *field[3] = {0};
  uint32_t flen[3] = {0};
  int nfields = 0;
  for (uint32_t off = 1; off < len;) {
    if (len - off < 4) exec_node("unexpected daemon reply");
    uint32_t n = get_u32(reply + off);
    off += 4;
    if (n > len - off) exec_node("unexpected daemon reply");
    if (nfields < 3) {
      field[nfields] = reply + off;
      flen[nfields] = n;
    }
    nfields++;
    off += n;
  }

  switch (reply[0]) {
    case RESULT: {
      if (nfields < 3 || flen[0] == 0 || flen[0] > 10) exec_node("unexpected daemon reply");
      char code[12];
      memcpy(code, field[0], flen[0]);
      code[flen[0]] = 0;
      char *end;
      long status = strtol(code, &end, 10);
      if (*end) exec_node("unexpected daemon reply");
      if (!write_all(1, field[1], flen[1], 0)) return 1;
      if (!write_all(2, field[2], flen[2], 0)) return 1;
      return (int)status;
    }
    case PASSTHROUGH:
    case FALLBACK: {
      /* a warning for the user (a bad config file, say), as the Node launcher prints it */
      if (nfields >= 2 && flen[1] > 0) {
        write_all(2, "meshcc: ", 8, 0);
        write_all(2, field[1], flen[1], 0);
        write_all(2, "\n", 1, 0);
      }
      /* the daemon counted it already: become the compiler, with the build's own stdio */
      char **av = calloc((size_t)(argc - first_arg) + 2, sizeof(char *));
      if (!av) return 127;
      av[0] = compiler;
      for (int i = first_arg; i < argc; i++) av[1 + i - first_arg] = argv[i];
      execv(compiler, av);
      fprintf(stderr, "meshcc: cannot run %s: %s\n", compiler, strerror(errno));
      return 127;
    }
    default:
      exec_node("unexpected daemon reply");
  }
  return 1;
}
