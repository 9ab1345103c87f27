/* meshcc-reap: run a command as a child subreaper and wait for every process it leaves.
 *
 * bwrap with a PID namespace (every sandboxed job) leaves its namespace's init behind when it
 * exits: that init, and with it the whole compile, is reaped by the machine's PID 1, so its CPU
 * time never reaches the daemon that ran the job (nor `ps`'s view of who runs what). Started
 * through this, such orphans are reparented here instead, reaped here, and their CPU counts in
 * the daemon's children like any other child's.
 *
 * Usage: meshcc-reap <command> [args...]. Exits like the command: its exit status, or killed by
 * the same signal. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs("usage: meshcc-reap <command> [args...]\n", stderr);
    return 127;
  }
  /* without it (very old kernels) orphans go to PID 1 as before: nothing else changes */
  prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  pid_t child = fork();
  if (child < 0) {
    fprintf(stderr, "meshcc-reap: fork: %s\n", strerror(errno));
    return 127;
  }
  if (child == 0) {
    execvp(argv[1], argv + 1);
    fprintf(stderr, "meshcc-reap: %s: %s\n", argv[1], strerror(errno));
    _exit(127);
  }
  /* the caller reads the command's pipes to their end: hold none of them open while waiting
   * for stragglers */
  /* one close_range (Linux 5.9) instead of a close per possible descriptor: with a limit of
   * 20000 open files the loop cost more CPU than the rest of a sandbox start */
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 0U, ~0U, 0U) != 0)
#endif
  {
    long maxfd = sysconf(_SC_OPEN_MAX);
    if (maxfd < 0 || maxfd > 65536) maxfd = 65536;
    for (int fd = 0; fd < maxfd; fd++) close(fd);
  }
  int status = 0, have = 0;
  for (;;) {
    int st;
    pid_t p = waitpid(-1, &st, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      break; /* ECHILD: everything reaped */
    }
    if (p == child) { status = st; have = 1; }
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
