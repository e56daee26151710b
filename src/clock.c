/* clock.c: deadlines on a min-heap, fired by a timerfd (see clock.h). */
#include "clock.h"

#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/timerfd.h>
#include <time.h>
#endif

/* Beyond this a deadline in nanoseconds would pass UINT64_MAX: such a wait
 * lasts until UINT64_MAX, some 580 years, which is as good as forever and
 * never early. */
#define MAX_SECONDS 1.8e10

uint64_t rt_clock_after(uint64_t now_ns, double seconds) {
  if (seconds >= MAX_SECONDS)
    return UINT64_MAX;
  return now_ns + (uint64_t)ceil(seconds * 1e9);
}

/* The delay for uv_timer_start (the stand-in) so that it does not fire
 * before at_ns: from the loop's clock (whole milliseconds, rounded down)
 * to the first whole millisecond at or after the deadline. */
static uint64_t timeout_ms(uv_loop_t *uv, uint64_t at_ns) {
  uint64_t due_ms = at_ns / 1000000 + (at_ns % 1000000 != 0);
  uint64_t now_ms = uv_now(uv);

  return due_ms > now_ms ? due_ms - now_ms : 0;
}

static void place(rt_clock_t *c, size_t i, rt_deadline_t *d) {
  c->heap[i] = d;
  d->slot = i + 1;
}

static void sift_up(rt_clock_t *c, size_t i) {
  rt_deadline_t *d = c->heap[i];

  while (i > 0) {
    size_t parent = (i - 1) / 2;

    if (c->heap[parent]->at_ns <= d->at_ns)
      break;
    place(c, i, c->heap[parent]);
    i = parent;
  }
  place(c, i, d);
}

static void sift_down(rt_clock_t *c, size_t i) {
  rt_deadline_t *d = c->heap[i];

  for (;;) {
    size_t child = 2 * i + 1;

    if (child >= c->len)
      break;
    if (child + 1 < c->len && c->heap[child + 1]->at_ns < c->heap[child]->at_ns)
      child++;
    if (d->at_ns <= c->heap[child]->at_ns)
      break;
    place(c, i, c->heap[child]);
    i = child;
  }
  place(c, i, d);
}

static void remove_at(rt_clock_t *c, size_t i) {
  rt_deadline_t *last = c->heap[--c->len];

  c->heap[i]->slot = 0;
  if (i == c->len)
    return;
  place(c, i, last);
  if (i > 0 && c->heap[(i - 1) / 2]->at_ns > last->at_ns)
    sift_up(c, i);
  else
    sift_down(c, i);
}

static void on_timer(uv_timer_t *timer);

/* Point the timerfd (or the uv timer) at the earliest deadline, and keep
 * the loop alive exactly while one waits. */
static void set_wakeup(rt_clock_t *c) {
  uint64_t at = c->len > 0 ? c->heap[0]->at_ns : 0;

  if (c->fd < 0) {
    if (c->len == 0) {
      uv_timer_stop(&c->timer);
      return;
    }
    uv_update_time(c->timer.loop);
    uv_timer_start(&c->timer, on_timer, timeout_ms(c->timer.loop, at), 0);
    return;
  }
#ifdef __linux__
  if (at != c->set_ns) {
    struct itimerspec when = {{0, 0}, {0, 0}};

    /* 0 disarms a timerfd: a deadline at 0 is long past, 1 ns will do. */
    if (c->len > 0) {
      uint64_t ns = at != 0 ? at : 1;

      when.it_value.tv_sec = (time_t)(ns / 1000000000u);
      when.it_value.tv_nsec = (long)(ns % 1000000000u);
    }
    timerfd_settime(c->fd, TFD_TIMER_ABSTIME, &when, NULL);
    c->set_ns = at;
  }
#endif
  if (c->len > 0)
    uv_ref((uv_handle_t *)&c->poll);
  else
    uv_unref((uv_handle_t *)&c->poll);
}

/* After a burst of deadlines, give the heap's memory back: halved until
 * it is at least a quarter full (never below its first size). */
static void maybe_shrink(rt_clock_t *c) {
  size_t cap = c->cap;
  rt_deadline_t **smaller;

  while (cap > 64 && c->len < cap / 4)
    cap /= 2;
  if (cap == c->cap)
    return;
  smaller = realloc(c->heap, cap * sizeof(*smaller));
  if (smaller != NULL) {
    c->heap = smaller;
    c->cap = cap;
  }
}

/* Fire what is due at now_ns, then point the wake at what is left: the
 * timerfd's and the uv timer's callbacks come here even when nothing is
 * due (a wake set for a deadline since disarmed, or libuv's millisecond
 * clock firing early). */
static void fire_and_rearm(rt_clock_t *c, uint64_t now_ns) {
  /* fire may arm or disarm others: the heap is read afresh each time. */
  while (rt_clock_due(c, now_ns)) {
    rt_deadline_t *d = c->heap[0];

    remove_at(c, 0);
    d->fire(d);
  }
  maybe_shrink(c);
  set_wakeup(c);
}

void rt_clock_fire_due(rt_clock_t *c, uint64_t now_ns) {
  if (rt_clock_due(c, now_ns))
    fire_and_rearm(c, now_ns);
}

static void on_timer(uv_timer_t *timer) {
  fire_and_rearm(timer->data, uv_hrtime());
}

#ifdef __linux__
static void on_readable(uv_poll_t *poll, int status, int events) {
  rt_clock_t *c = poll->data;
  uint64_t expirations;

  (void)status;
  (void)events;
  /* Reading clears the readiness; there is nothing to read when the
   * deadline it was set for was moved meanwhile. */
  if (read(c->fd, &expirations, sizeof(expirations)) < 0) {
    /* EAGAIN: what is due is found below all the same. */
  }
  c->set_ns = 0; /* it fired: set it again even for the same deadline */
  fire_and_rearm(c, uv_hrtime());
}
#endif

void rt_clock_init(rt_clock_t *c, uv_loop_t *uv, int precise) {
  c->heap = NULL;
  c->len = c->cap = 0;
  c->set_ns = 0;
  c->fd = -1;
  uv_timer_init(uv, &c->timer);
  c->timer.data = c;
  (void)precise;
#ifdef __linux__
  if (precise)
    c->fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (c->fd >= 0 && uv_poll_init(uv, &c->poll, c->fd) != 0) {
    close(c->fd);
    c->fd = -1;
  }
  if (c->fd >= 0) {
    c->poll.data = c;
    uv_poll_start(&c->poll, UV_READABLE, on_readable);
    uv_unref((uv_handle_t *)&c->poll);
  }
#endif
}

void rt_clock_close(rt_clock_t *c) {
  size_t i;

  for (i = 0; i < c->len; i++)
    c->heap[i]->slot = 0;
  free(c->heap);
  c->heap = NULL;
  c->len = c->cap = 0;
  uv_close((uv_handle_t *)&c->timer, NULL);
  if (c->fd >= 0) {
    /* uv_close stops the watch (epoll_ctl DEL) before it returns. */
    uv_close((uv_handle_t *)&c->poll, NULL);
    close(c->fd);
    c->fd = -1;
  }
}

int rt_clock_arm(rt_clock_t *c, rt_deadline_t *d) {
  if (d->slot != 0) {
    remove_at(c, d->slot - 1);
  } else if (c->len == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 64;
    rt_deadline_t **grown = realloc(c->heap, cap * sizeof(*grown));

    if (grown == NULL)
      return UV_ENOMEM;
    c->heap = grown;
    c->cap = cap;
  }
  c->len++;
  place(c, c->len - 1, d);
  sift_up(c, c->len - 1);
  if (c->heap[0] == d)
    set_wakeup(c);
  return 0;
}

void rt_clock_disarm(rt_clock_t *c, rt_deadline_t *d) {
  if (d->slot == 0)
    return;
  remove_at(c, d->slot - 1);
  maybe_shrink(c);
  /* The wake set for d, when it came first, is early for the rest and so
   * harmless (fire_due finds nothing and sets the next): it is only
   * cleared when no deadline is left to keep the loop alive. */
  if (c->len == 0)
    set_wakeup(c);
}
