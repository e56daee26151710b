/*
 * The state every port shares: its lock, the shutdown flag and the
 * descriptor that wakes sleepers, and connection ids.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

int state_init(struct server_state *st) {
  memset(st, 0, sizeof *st);
  if (pthread_mutex_init(&st->lock, NULL) != 0)
    return -1;
  st->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (st->stop_fd < 0) {
    pthread_mutex_destroy(&st->lock);
    return -1;
  }
  return 0;
}

/* Only once every port is stopped: no other thread may be left. */
void state_destroy(struct server_state *st) {
  counters_clear_all_locked(st);
  close(st->stop_fd);
  pthread_mutex_destroy(&st->lock);
}

/* Wake every sleeper and tell the fault port's loops to give up. Nothing
 * ever reads stop_fd, so it stays readable: a sleep that starts after
 * this returns at once too. */
void state_stop(struct server_state *st) {
  pthread_mutex_lock(&st->lock);
  st->stopping = true;
  pthread_mutex_unlock(&st->lock);
  eventfd_write(st->stop_fd, 1);
}
bool state_stopping(struct server_state *st) {
  bool stopping;

  pthread_mutex_lock(&st->lock);
  stopping = st->stopping;
  pthread_mutex_unlock(&st->lock);
  return stopping;
}

/* Ids start at 1 and are never reused, so a key's connection set counts
 * distinct connections even when the kernel reuses descriptors or ports. */
uint64_t state_next_conn_id(struct server_state *st) {
  uint64_t id;

  pthread_mutex_lock(&st->lock);
  id = ++st->next_conn_id;
  pthread_mutex_unlock(&st->lock);
  return id;
}

/* Milliseconds from now until deadline (CLOCK_MONOTONIC), rounded up so a
 * poll() never wakes just before it; 0 once it has passed. Capped at
 * INT_MAX, poll()'s limit: the caller polls again until the deadline. */
static int ms_until(const struct timespec *deadline) {
  struct timespec now;
  long long ns;

  clock_gettime(CLOCK_MONOTONIC, &now);
  ns = (long long)(deadline->tv_sec - now.tv_sec) * 1000000000LL +
       (deadline->tv_nsec - now.tv_nsec);
  if (ns <= 0)
    return 0;
  ns = (ns + 999999) / 1000000;
  return ns < INT_MAX ? (int)ns : INT_MAX;
}

/* Wait up to ms milliseconds, returning early if the server is shutting
 * down: tests often abandon slow requests and then stop the server, and
 * MHD_stop_daemon() joins every connection thread. With peer_fd >= 0 (a
 * connected socket) it also returns early, with true, as soon as the peer
 * closes or resets the connection, so /delay can tell the tests at once
 * that a client gave up. It asks for POLLRDHUP (the peer's FIN) and not
 * POLLIN: a request pipelined behind this one is readable data that must
 * neither end the sleep nor make poll() spin; a reset shows as POLLERR or
 * POLLHUP, which poll() always reports. A client that half-closes and then
 * still waits for the reply would count as gone; HTTP clients do not.
 * Monotonic, so immune to wall-clock jumps. */
bool sleep_watching_peer(struct server_state *st, int peer_fd,
                         unsigned long ms) {
  struct timespec deadline;
  struct pollfd pfd[2];

  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += (time_t)(ms / 1000);
  deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pfd[0] = (struct pollfd){.fd = st->stop_fd, .events = POLLIN};
  /* poll() skips a negative fd, so -1 is a plain interruptible sleep. */
  pfd[1] = (struct pollfd){.fd = peer_fd, .events = POLLRDHUP};
  for (;;) {
    int left = ms_until(&deadline);
    int n = poll(pfd, 2, left);

    if (n < 0) {
      if (errno == EINTR)
        continue;
      return false; /* ENOMEM: give up on sleeping rather than spin */
    }
    if (pfd[1].revents & (POLLRDHUP | POLLHUP | POLLERR))
      return true;
    if (pfd[1].revents & POLLNVAL)
      pfd[1].fd = -1; /* not a descriptor: stop watching, keep sleeping */
    if (pfd[0].revents != 0 || (n == 0 && left == 0))
      return false;
  }
}

void interruptible_sleep(struct server_state *st, unsigned long ms) {
  (void)sleep_watching_peer(st, -1, ms);
}
