/* The lab's stand-in for the pod sandbox's pause process, PID 1 of a pod with shareProcessNamespace: true.
 *
 * Written to behave as Kubernetes' own build/pause/linux/pause.c (checked against v1.36.3): SIGINT and
 * SIGTERM end it (exit 0), which ends every process of the pod's PID namespace with it; SIGCHLD reaps every
 * child that has exited (processes of any container are re-parented to it); every other signal keeps its
 * default disposition, so, as PID 1, it ignores SIGQUIT and SIGWINCH sent from inside the namespace (the
 * kernel drops signals to a namespace's init that it has no handler for). It sleeps in pause() forever.
 * The real one also prints the signal it got and answers -v with its version; nothing here needs that.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void sigdown(int signo) {
  (void)signo;
  exit(0);
}

static void sigreap(int signo) {
  (void)signo;
  while (waitpid(-1, NULL, WNOHANG) > 0)
    ;
}

int main(void) {
  if (sigaction(SIGINT, &(struct sigaction){.sa_handler = sigdown}, NULL) < 0)
    return 1;
  if (sigaction(SIGTERM, &(struct sigaction){.sa_handler = sigdown}, NULL) < 0)
    return 2;
  if (sigaction(SIGCHLD, &(struct sigaction){.sa_handler = sigreap, .sa_flags = SA_NOCLDSTOP}, NULL) < 0)
    return 3;
  for (;;)
    pause();
  return 42;
}
