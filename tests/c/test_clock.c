/* test_clock.c: the deadline heap (clock.c) alone, on a real libuv loop,
 * with the timerfd and with the uv timer that stands in without one.
 *
 * Prints one TAP-style line per case and mode and, last, "N passed, M
 * failed". Every case ends by closing its loop, which must report every
 * handle closed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "clock.h"

/* A deadline and what happened to it. */
struct probe {
  rt_deadline_t d;
  int fired;
  int order;           /* 1 + its place among the fired */
  uint64_t fired_ns;   /* uv_hrtime() when it fired */
  struct probe *arm;   /* armed by this one's fire, at its own at_ns */
  struct probe *block; /* disarmed by this one's fire */
};

static rt_clock_t *clock_now;
static int fired_count;

static void on_fire(rt_deadline_t *d) {
  struct probe *p = (struct probe *)d;

  p->fired++;
  p->order = ++fired_count;
  p->fired_ns = uv_hrtime();
  if (p->arm != NULL)
    CHECK(rt_clock_arm(clock_now, &p->arm->d) == 0);
  if (p->block != NULL)
    rt_clock_disarm(clock_now, &p->block->d);
}

static void probe_at(struct probe *p, uint64_t at_ns) {
  memset(p, 0, sizeof(*p));
  p->d.at_ns = at_ns;
  p->d.fire = on_fire;
}

/* A fixed pseudo-random sequence, so a failure can be run again. */
static unsigned next_random(unsigned *state) {
  *state = *state * 1103515245u + 12345u;
  return (*state >> 16) & 0x7fff;
}

static void test_order_never_early(uv_loop_t *uv, rt_clock_t *c) {
  enum { count = 300 };
  static struct probe p[count];
  uint64_t now = uv_hrtime();
  unsigned seed = 7;
  int i;

  /* Deadlines up to 20 ms away, many equal, armed in no order. */
  for (i = 0; i < count; i++) {
    probe_at(&p[i], now + (uint64_t)(next_random(&seed) % 40) * 500000u);
    CHECK(rt_clock_arm(c, &p[i].d) == 0);
  }
  uv_run(uv, UV_RUN_DEFAULT);
  for (i = 0; i < count; i++) {
    int j;

    CHECK(p[i].fired == 1);
    CHECK(p[i].fired_ns >= p[i].d.at_ns);
    CHECK(p[i].d.slot == 0);
    for (j = 0; j < count; j++)
      if (p[j].d.at_ns < p[i].d.at_ns)
        CHECK(p[j].order < p[i].order);
  }
}

static void test_disarm_and_move(uv_loop_t *uv, rt_clock_t *c) {
  enum { count = 90 };
  static struct probe p[count];
  uint64_t now = uv_hrtime();
  int i;

  for (i = 0; i < count; i++) {
    probe_at(&p[i], now + (uint64_t)(count - i) * 20000u);
    CHECK(rt_clock_arm(c, &p[i].d) == 0);
  }
  /* Every third goes; the next of each three moves to after the rest. */
  for (i = 0; i < count; i += 3)
    rt_clock_disarm(c, &p[i].d);
  for (i = 1; i < count; i += 3) {
    p[i].d.at_ns = now + 5000000u + (uint64_t)i * 1000u;
    CHECK(rt_clock_arm(c, &p[i].d) == 0);
  }
  rt_clock_disarm(c, &p[0].d); /* again: nothing */
  uv_run(uv, UV_RUN_DEFAULT);
  for (i = 0; i < count; i++) {
    if (i % 3 == 0) {
      CHECK(p[i].fired == 0);
      continue;
    }
    CHECK(p[i].fired == 1);
    CHECK(p[i].fired_ns >= p[i].d.at_ns);
    if (i % 3 == 1)
      CHECK(p[i].order > count / 3);
  }
}

static void test_fire_arms_and_disarms(uv_loop_t *uv, rt_clock_t *c) {
  struct probe first, chained, blocked;
  uint64_t now = uv_hrtime();

  probe_at(&first, now + 1000000u);
  probe_at(&chained, now + 3000000u);
  probe_at(&blocked, now + 1000000u);
  first.arm = &chained;
  first.block = &blocked;
  CHECK(rt_clock_arm(c, &first.d) == 0);
  /* Due with first: fire_due must read the heap afresh after each fire. */
  blocked.d.at_ns = first.d.at_ns + 1;
  CHECK(rt_clock_arm(c, &blocked.d) == 0);
  uv_run(uv, UV_RUN_DEFAULT);
  CHECK(first.fired == 1);
  CHECK(chained.fired == 1);
  CHECK(chained.fired_ns >= chained.d.at_ns);
  CHECK(blocked.fired == 0);
}

static void test_alive_only_while_armed(uv_loop_t *uv, rt_clock_t *c) {
  struct probe far;

  /* Nothing armed: the clock alone does not keep the loop running. */
  CHECK(uv_run(uv, UV_RUN_NOWAIT) == 0);
  probe_at(&far, UINT64_MAX);
  CHECK(rt_clock_arm(c, &far.d) == 0);
  CHECK(uv_loop_alive(uv));
  rt_clock_disarm(c, &far.d);
  CHECK(uv_run(uv, UV_RUN_NOWAIT) == 0);
  CHECK(far.fired == 0);
}

static void test_fire_due_without_poll(uv_loop_t *uv, rt_clock_t *c) {
  struct probe due, later;
  uint64_t now = uv_hrtime();

  (void)uv;
  probe_at(&due, now);
  probe_at(&later, now + 60000000000u);
  CHECK(rt_clock_arm(c, &due.d) == 0);
  CHECK(rt_clock_arm(c, &later.d) == 0);
  CHECK(rt_clock_due(c, now));
  rt_clock_fire_due(c, uv_hrtime());
  CHECK(due.fired == 1);
  CHECK(later.fired == 0);
  CHECK(!rt_clock_due(c, uv_hrtime()));
  rt_clock_disarm(c, &later.d);
}

static void test_close_forgets_armed(uv_loop_t *uv, rt_clock_t *c) {
  struct probe p[10];
  int precise = c->fd >= 0;
  int i;

  for (i = 0; i < 10; i++) {
    probe_at(&p[i], uv_hrtime() + 1000000u);
    CHECK(rt_clock_arm(c, &p[i].d) == 0);
  }
  rt_clock_close(c);
  uv_run(uv, UV_RUN_DEFAULT);
  for (i = 0; i < 10; i++) {
    CHECK(p[i].fired == 0);
    CHECK(p[i].d.slot == 0);
    rt_clock_disarm(c, &p[i].d); /* after close: nothing */
  }
  /* A fresh one for run_case to close. */
  rt_clock_init(c, uv, precise);
}

static void test_gives_memory_back(uv_loop_t *uv, rt_clock_t *c) {
  enum { count = 5000 };
  static struct probe p[count];
  uint64_t now = uv_hrtime();
  int i;

  for (i = 0; i < count; i++) {
    probe_at(&p[i], now + 1000000u + (uint64_t)i);
    CHECK(rt_clock_arm(c, &p[i].d) == 0);
  }
  CHECK(c->cap >= count);
  /* Disarmed: most of them; fired: the rest, all in one go. */
  for (i = 0; i < count - 10; i++)
    rt_clock_disarm(c, &p[i].d);
  CHECK(c->cap <= 64);
  for (i = 0; i < count; i++) {
    p[i].d.at_ns = now + 1000000u;
    CHECK(rt_clock_arm(c, &p[i].d) == 0);
  }
  uv_run(uv, UV_RUN_DEFAULT);
  CHECK(fired_count == count);
  CHECK(c->len == 0 && c->cap == 64);
}

struct clock_case {
  const char *name;
  void (*fn)(uv_loop_t *uv, rt_clock_t *c);
};

static const struct clock_case cases[] = {
    {"fires in deadline order, never early", test_order_never_early},
    {"disarmed deadlines never fire, moved ones fire once, later",
     test_disarm_and_move},
    {"a fire may arm and disarm others", test_fire_arms_and_disarms},
    {"keeps the loop alive only while a deadline waits",
     test_alive_only_while_armed},
    {"fire_due fires what is due without the loop", test_fire_due_without_poll},
    {"closing with deadlines armed fires none and leaks nothing",
     test_close_forgets_armed},
    {"gives the memory of a burst of deadlines back", test_gives_memory_back},
};

static void run_case(const struct clock_case *k, int precise) {
  uv_loop_t uv;
  rt_clock_t c;
  const char *mode = precise ? "timerfd" : "uv timer";

  case_failed = 0;
  fired_count = 0;
  uv_loop_init(&uv);
  rt_clock_init(&c, &uv, precise);
  clock_now = &c;
  if (precise && c.fd < 0) {
    printf("#   no timerfd here\n");
    case_failed = 1;
  }
  k->fn(&uv, &c);
  rt_clock_close(&c);
  uv_run(&uv, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&uv) == 0);
  if (case_failed) {
    failed++;
    printf("not ok - %s (%s)\n", k->name, mode);
  } else {
    passed++;
    printf("ok - %s (%s)\n", k->name, mode);
  }
}

int main(void) {
  size_t i;
  int precise;

  for (precise = 1; precise >= 0; precise--)
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
      run_case(&cases[i], precise);
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
