/*
 * The placement benchmark's stand-in compiler (bench:placement --daemons): it answers like gcc
 * where meshcc asks, so meshcc ships it as a toolchain and runs it in its sandboxes like a real
 * compiler, but a compile only sleeps for the time the source names and writes a small object.
 * That measures placement, not this machine's CPU.
 *
 *   gcc -E x.c            # 1 "x.c" and the source (the line marker makes x.c the input)
 *   gcc -c x.c -o x.o     sleeps "// sleep_ms N" (first line of x.c), writes x.o
 *   gcc -print-prog-name=cc1|as    <this dir>/cc1 or /as (links to this binary, made by the bench)
 *   gcc -print-file-name=F         F (none of its own)
 *
 * Built by the benchmark with the host's gcc; never installed.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what, const char *arg) {
  fprintf(stderr, "standin-cc: %s%s%s\n", what, arg ? ": " : "", arg ? arg : "");
  return 1;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  size_t r;
  while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
    n += r;
    if (n == cap) buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  *len = n;
  return buf;
}

int main(int argc, char **argv) {
  const char *input = NULL, *out = NULL;
  int pp = 0, compile = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--version")) { puts("gcc (meshcc placement stand-in) 12.2.0"); return 0; }
    if (!strncmp(a, "-print-prog-name=", 17)) {
      const char *name = a + 17;
      if (strcmp(name, "cc1") && strcmp(name, "as")) { puts(name); return 0; }
      char self[PATH_MAX];
      ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
      if (n < 0) return fail("cannot find itself", NULL);
      self[n] = 0;
      printf("%s/%s\n", dirname(self), name);
      return 0;
    }
    if (!strncmp(a, "-print-file-name=", 17)) { puts(a + 17); return 0; }
    if (!strcmp(a, "-E")) pp = 1;
    else if (!strcmp(a, "-c")) compile = 1;
    else if (!strcmp(a, "-o") && i + 1 < argc) out = argv[++i];
    else if (a[0] != '-') input = a;
  }
  if (!input) return fail("no input file", NULL);
  size_t len;
  char *src = slurp(input, &len);
  if (!src) return fail(strerror(errno), input);
  if (pp) {
    FILE *o = out ? fopen(out, "wb") : stdout;
    if (!o) return fail(strerror(errno), out);
    fprintf(o, "# 1 \"%s\"\n", input);
    fwrite(src, 1, len, o);
    return fclose(o) == 0 ? 0 : fail("write failed", out);
  }
  if (!compile || !out) return fail("expected -E, or -c with -o", NULL);
  long ms = 0;
  if (sscanf(src, "// sleep_ms %ld", &ms) != 1 || ms < 0) return fail("first line is not // sleep_ms N", input);
  struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
  FILE *o = fopen(out, "wb");
  if (!o) return fail(strerror(errno), out);
  fprintf(o, "stand-in object of %s after %ld ms\n", input, ms);
  return fclose(o) == 0 ? 0 : fail("write failed", out);
}
