/* clock.h: deadlines on uv_hrtime's clock, fired to the microsecond.
 *
 * libuv's timers count whole milliseconds from a clock read once per loop
 * turn, so a timer that must never fire early fires up to two milliseconds
 * late (one on average). Sleeps and backoff waits use this instead: one
 * min-heap of deadlines per loop, and one Linux timerfd set to the earliest
 * (absolute, CLOCK_MONOTONIC, which is uv_hrtime's clock) and watched by a
 * uv_poll. Where timerfd is missing, one uv_timer stands in, with libuv's
 * millisecond lateness.
 *
 * A deadline is embedded in its owner and fired at most once per arming;
 * fire runs inside a libuv callback and must not call Lua.
 */
#ifndef RT_CLOCK_H
#define RT_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct rt_deadline_s rt_deadline_t;

struct rt_deadline_s {
  uint64_t at_ns; /* on uv_hrtime's clock */
  size_t slot;    /* 1 + its index in the heap; 0 while not armed */
  void (*fire)(rt_deadline_t *d);
};

typedef struct rt_clock_s {
  rt_deadline_t **heap; /* owned; heap[0] is the earliest */
  size_t len;
  size_t cap;
  uint64_t set_ns; /* what the timerfd is set for; 0 when unset */
  int fd;          /* the timerfd, or -1 when the uv timer stands in */
  uv_poll_t poll;  /* watches fd; referenced only while deadlines wait */
  uv_timer_t timer;
} rt_clock_t;

/* uv_hrtime after seconds (>= 0); beyond some 570 years, UINT64_MAX. */
uint64_t rt_clock_after(uint64_t now_ns, double seconds);

/* uv_hrtime's clock in seconds: core.now's, the clock of every start,
 * elapsed and finished_at Lua sees. */
static inline double rt_clock_now(void) {
  return (double)uv_hrtime() / 1e9;
}

/* Never fails: without a timerfd (or with precise 0, for the tests) the
 * uv timer stands in. */
void rt_clock_init(rt_clock_t *c, uv_loop_t *uv, int precise);

/* Close its handles (the loop must then run to finish closing them) and
 * forget every armed deadline without firing it. */
void rt_clock_close(rt_clock_t *c);

/* Fire d once at d->at_ns or soon after, never before (d->at_ns and
 * d->fire set by the caller). Re-arming an armed deadline moves it.
 * Returns 0, or UV_ENOMEM (d is then not armed). */
int rt_clock_arm(rt_clock_t *c, rt_deadline_t *d);

/* Fire every deadline due at now_ns (uv_hrtime), earliest first. The
 * timerfd fires them too, but only once the loop polls again: the
 * scheduler also calls this between the tasks it resumes. */
void rt_clock_fire_due(rt_clock_t *c, uint64_t now_ns);

static inline int rt_clock_due(const rt_clock_t *c, uint64_t now_ns) {
  return c->len > 0 && c->heap[0]->at_ns <= now_ns;
}

/* d will not fire; nothing when it is not armed. */
void rt_clock_disarm(rt_clock_t *c, rt_deadline_t *d);

#endif
