/*
 * pause: the placeholder process of kata-ts's local test image registry.k8s.io/pause:kata-ts.
 *
 * It holds a pod sandbox's namespaces open and does nothing else:
 *   - sleeps until a signal arrives (no busy loop, no timers);
 *   - reaps every child it inherits (as PID 1 of a pod's PID namespace, orphans are re-parented to it);
 *   - exits 0 on SIGINT or SIGTERM.
 * Signals are blocked outside sigsuspend(), so a signal that arrives between two checks is never lost.
 *
 * Build: gcc -static -Os -s -o pause pause.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAUSE_VERSION "kata-ts pause 1.0"

static volatile sig_atomic_t stop_signal;

static void note_stop(int sig) { stop_signal = sig; }

/* Only there so that SIGCHLD interrupts sigsuspend(); the reaping happens in main(). */
static void note_child(int sig) { (void)sig; }

static void reap_children(void) {
  for (;;) {
    pid_t pid = waitpid(-1, NULL, WNOHANG);
    if (pid > 0) continue;
    if (pid < 0 && errno == EINTR) continue;
    return; /* 0: children left but none exited; -1/ECHILD: no children at all */
  }
}

static int install(int sig, void (*handler)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
  return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
  if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
    puts(PAUSE_VERSION);
    return 0;
  }
  if (getpid() != 1) fputs("pause: warning: not running as PID 1, orphans are not reaped here\n", stderr);

  sigset_t watched, during_wait;
  sigemptyset(&watched);
  sigaddset(&watched, SIGINT);
  sigaddset(&watched, SIGTERM);
  sigaddset(&watched, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &watched, &during_wait) != 0) {
    perror("pause: sigprocmask");
    return 1;
  }
  sigdelset(&during_wait, SIGINT);
  sigdelset(&during_wait, SIGTERM);
  sigdelset(&during_wait, SIGCHLD);

  if (install(SIGINT, note_stop) != 0 || install(SIGTERM, note_stop) != 0 || install(SIGCHLD, note_child) != 0) {
    perror("pause: sigaction");
    return 1;
  }

  reap_children(); /* children inherited before the handler existed */
  while (stop_signal == 0) {
    sigsuspend(&during_wait); /* always returns -1/EINTR after a handled signal */
    reap_children();
  }
  fprintf(stderr, "pause: got %s, exiting\n", strsignal(stop_signal));
  return 0;
}
