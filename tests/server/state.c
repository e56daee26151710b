/*
 * The state every port shares: its lock, the shutdown flag that sleepers
 * wait on, and connection ids.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "server.h"

int state_init(struct server_state *st) {
  pthread_condattr_t attr;

  memset(st, 0, sizeof *st);
  if (pthread_mutex_init(&st->lock, NULL) != 0)
    return -1;
  /* Monotonic so /delay is immune to wall-clock jumps. */
  if (pthread_condattr_init(&attr) != 0) {
    pthread_mutex_destroy(&st->lock);
    return -1;
  }
  if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
      pthread_cond_init(&st->stop_cond, &attr) != 0) {
    pthread_condattr_destroy(&attr);
    pthread_mutex_destroy(&st->lock);
    return -1;
  }
  pthread_condattr_destroy(&attr);
  return 0;
}

/* Only once every port is stopped: no other thread may be left. */
void state_destroy(struct server_state *st) {
  counters_clear_all_locked(st);
  pthread_cond_destroy(&st->stop_cond);
  pthread_mutex_destroy(&st->lock);
}

/* Wake every sleeper and tell the fault port's loops to give up. */
void state_stop(struct server_state *st) {
  pthread_mutex_lock(&st->lock);
  st->stopping = true;
  pthread_cond_broadcast(&st->stop_cond);
  pthread_mutex_unlock(&st->lock);
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

/* Wait up to ms milliseconds, returning early if the server is shutting
 * down. A condition variable on CLOCK_MONOTONIC instead of nanosleep():
 * tests often abandon slow requests (client timeouts) and then stop the
 * server, and MHD_stop_daemon() joins every connection thread. */
void interruptible_sleep(struct server_state *st, unsigned long ms) {
  struct timespec deadline;

  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += (time_t)(ms / 1000);
  deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&st->lock);
  while (!st->stopping) {
    if (pthread_cond_timedwait(&st->stop_cond, &st->lock, &deadline) ==
        ETIMEDOUT)
      break;
  }
  pthread_mutex_unlock(&st->lock);
}
