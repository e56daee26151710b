/* lua_drive.c: the Driver, a closed-model load's requests run in C. See
 * lua_drive.h for what it is for.
 *
 * core.driver(request, opts): opts are
 *   slots            requests at a time (the load's concurrency)
 *   total            requests to start in all; nil for no limit
 *   ends             no request starts at or after this time (core.now's
 *                    clock); nil for none
 *   claim            a function that returns nil once the load's requests
 *                    are all claimed (a worker thread's share); nil for none
 *   started          the recorder's start, which the seconds count from
 *   check            the load's check (any value but nil: Lua calls it on
 *                    "check" events), or nil
 *   codes            {status = true}: check a response by its status alone,
 *                    without calling `check`
 *   stands           {status = boolean}: whether a first response of that
 *                    status stands (the policy's answer); one that does not
 *                    is retried while attempts are left. A status not in
 *                    it goes to Lua, which tells the driver (d:learn)
 *   waits            {w1, ..., w(n-1)}: the policy's waits before attempts 2
 *                    to n, when they depend on nothing but the attempt's
 *                    number (n at most MAX_ATTEMPTS): the driver then makes
 *                    the retries of a status the policy retries itself;
 *                    nil, and Lua makes every retry
 *   latency, attempt_latency, second_latency: the recorder's histograms
 *
 * d:next() returns one of:
 *   "tally", t
 *       what ended since the last tally, all in the second t.at falls in:
 *       t.requests ended in a response that stood (t.responses of them,
 *       t.failed with a status >= 400, t.statuses = {status = count},
 *       t.attempts = {attempts = count}), checked by codes (t.checks,
 *       t.checks_failed); t.sent attempts ended (t.resent of them sent
 *       twice by libcurl, t.retries of them retries); t.started requests
 *       and t.attempts_started attempts began (t.retried of them
 *       retries); t.next_at (or nil): the next ones end in the second of
 *       next_at, which the recorder must open before the driver records
 *       their latencies
 *   "slow", slot, started, elapsed, n, history, previous_wait, outcome...
 *       attempt n of a request, which Lua goes on with: outcome is what
 *       core.result gives (a Response, or nil, kind, message, curl code,
 *       resent, finished_at); history the records of attempts 1 to n - 1
 *       (nil for n = 1), previous_wait the last wait; the slot is lent
 *       until d:free(slot)
 *   "check", slot, response
 *       a request that ended in a standing response, counted in the
 *       tally, for the Lua check (opts.check, unless opts.codes) to see;
 *       the slot is lent until d:free(slot)
 *   "cut", n, at, in_flight, resent, retries, attempts
 *       n requests were cut by a cancel: in_flight of them with an attempt
 *       whose request had gone out (resent of those sent twice by
 *       libcurl, retries of them a retry), attempts = {attempts = count},
 *       counting only attempts that went out
 *   nil               every request has ended, and no slot is lent
 */
#include "lua_drive.h"

#include <lauxlib.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lua_histogram.h"
#include "op.h"
#include "response.h"
#include "udata.h"

#define DRIVE_MT "retry.Driver"
/* Its address keys the Driver metatable (udata.h). */
static const char drive_key = 'd';

/* Statuses below this are looked up in the driver's tables; others (libcurl
 * reads three digits, so none) go to Lua. */
#define STATUS_LIMIT 1000

/* The most attempts a request whose retries the driver makes may have: a
 * slot keeps the records of a retried request's attempts. */
#define MAX_ATTEMPTS 64

/* A tally goes to the recorder at least this often (seconds), so that the
 * progress line and a worker thread's published counts stay current. */
#define TALLY_EVERY 0.05

/* How long the owner may go on handling events in one resume before it
 * yields (ns). The scheduler fires the deadlines that came meanwhile only
 * between resumes: a turn through 64 responses and their next transfers
 * would make every sleep of the process that much late. Measured with
 * scripts/bench_timers.lua at 64 connections: no limit, p99 2.3 to 2.7
 * ms; 100 us, 2.2 to 2.4 ms; 20 us, 0.76 to 0.78 ms (and a task per
 * request before the driver, 1.5 ms), at the same load rate. */
#define TURN_NS 20000

/* The driver's user values. */
enum { KEEP_CLAIM = 1, KEEP_OPTS, KEEP_TASK, KEEP_COUNT = 3 };

enum slot_state {
  SLOT_IDLE,    /* its requests are over */
  SLOT_BUSY,    /* an attempt in flight */
  SLOT_WAITING, /* the wait before its request's next attempt */
  SLOT_ENDED,   /* in the ended queue, for the owner's next turn */
  SLOT_LENT     /* Lua has its request (a "slow" or "check" event) */
};

/* What a stands[] entry says about a response of that status, as Lua
 * learned it from the policy (d:learn). */
enum { STATUS_UNKNOWN, STATUS_STANDS, STATUS_RETRIED };

/* What the driver does with an attempt that ended. */
enum verdict { TO_LUA, STANDS, RETRY };

typedef struct rt_drive_s rt_drive_t;

typedef struct slot_s {
  rt_drive_t *drive;
  rt_xfer_t *xfer;        /* owned while busy or ended */
  double started;         /* core.now when its request started */
  double attempt_started; /* and its current attempt */
  int attempt;            /* attempts started for its request */
  int start_error;        /* the attempt could not start (a UV_E* code) */
  int retry_due;          /* ended: its wait is over, not its attempt */
  enum slot_state state;
  rt_attempt_t *history; /* owned: attempts 1.. of a retried request,
                            until its Response takes them */
  rt_deadline_t wait;    /* the wait before the next attempt */
  struct slot_s *next_ended;
} slot_t;

/* Counts not yet given to the recorder. */
typedef struct tally_s {
  lua_Integer requests, responses, failed, checks, checks_failed, sent, resent,
      retries, retried, started, attempts_started;
  double at; /* when the last of them ended */
} tally_t;

struct rt_drive_s {
  rt_task_link_t link; /* first: the owner's list hands it back */
  rt_task_t *owner;    /* borrowed (KEEP_TASK keeps its handle) */
  int linked;          /* owned by it: cleared when it is cancelled or
                          ends, and then nothing starts */
  rt_loop_t *loop;     /* borrowed */
  rt_clock_t *clock;   /* borrowed: the owner's scheduler's */
  const int *sealed;   /* borrowed: the state's core.seal flag */
  rt_request_t req;    /* its strings and header lines in `copy` */
  char *copy;          /* owned */
  slot_t *slots;       /* owned */
  long slot_count;
  long fresh;         /* slots never started are slots[fresh..] */
  slot_t *ended_head; /* finished attempts and waits, oldest first */
  slot_t *ended_tail;
  long busy; /* slots busy, waiting or ended */
  long lent;
  lua_Integer total; /* < 0: no limit */
  lua_Integer started;
  double ends; /* 0: none */
  double load_started;
  int max_attempts; /* 0: the driver makes no retries */
  double waits[MAX_ATTEMPTS];
  int has_claim;
  int stopped;
  int cancelled;
  int parked;    /* the owner waits in d:next */
  int has_check; /* a Lua check, which "check" events are for */
  int has_codes; /* a check by status codes */
  lua_Integer cut, cut_in_flight, cut_resent, cut_retries;
  lua_Integer cut_attempts[MAX_ATTEMPTS + 1];
  double cut_at;
  long open_second; /* the recorder's open second, as last told */
  double last_tally;
  uint64_t turn_started; /* uv_hrtime when the owner's resume began */
  rt_histogram_t *latency;
  rt_histogram_t *attempt_latency;
  rt_histogram_t *second_latency;
  tally_t tally;
  lua_Integer by_attempts[MAX_ATTEMPTS + 1];
  int touched_count; /* statuses with counts, in touched[] */
  short touched[STATUS_LIMIT];
  lua_Integer by_status[STATUS_LIMIT];
  unsigned char stands[STATUS_LIMIT];
  unsigned char expected[STATUS_LIMIT];
};

static rt_drive_t *check_drive(lua_State *L, const char *method) {
  rt_drive_t *d = rt_udata_test(L, 1, &drive_key);

  if (d == NULL)
    rt_error_invalid(L, "driver:%s: expected a Driver as self, got %s", method,
                     rt_error_typename(L, 1));
  return d;
}

/* ------------------------------------------------------------------ */
/* Slots                                                               */
/* ------------------------------------------------------------------ */

static void wake_owner(rt_drive_t *d) {
  if (d->parked) {
    d->parked = 0;
    rt_task_wake(d->owner, 0);
  }
}

/* The owner's d:next has something to return, or every request is over. */
static void poke(rt_drive_t *d) {
  if (d->ended_head != NULL || d->cut > 0 || (d->busy == 0 && d->lent == 0))
    wake_owner(d);
}

static void enqueue(rt_drive_t *d, slot_t *s) {
  s->state = SLOT_ENDED;
  s->next_ended = NULL;
  if (d->ended_tail != NULL)
    d->ended_tail->next_ended = s;
  else
    d->ended_head = s;
  d->ended_tail = s;
}

static slot_t *dequeue(rt_drive_t *d) {
  slot_t *s = d->ended_head;

  d->ended_head = s->next_ended;
  if (d->ended_head == NULL)
    d->ended_tail = NULL;
  s->next_ended = NULL;
  return s;
}

/* Runs inside libcurl's processing: no Lua, only the queue. */
static void on_done(rt_xfer_t *xfer, void *arg) {
  slot_t *s = arg;
  rt_drive_t *d = s->drive;

  (void)xfer;
  enqueue(d, s);
  wake_owner(d);
}

/* A slot's wait is over (the clock's callback: no Lua). */
static void on_wait_over(rt_deadline_t *wait) {
  slot_t *s = (slot_t *)((char *)wait - offsetof(slot_t, wait));

  s->retry_due = 1;
  enqueue(s->drive, s);
  wake_owner(s->drive);
}

/* Start the next attempt of slot s's request. An attempt that cannot start
 * is queued, for Lua to report as core.start's refusal would be. */
static void start_attempt(rt_drive_t *d, slot_t *s) {
  int rc = UV_ECANCELED; /* the state is closing (core.seal) */

  s->attempt++;
  s->attempt_started = rt_clock_now();
  s->start_error = 0;
  if (!*d->sealed)
    rc = rt_xfer_start(d->loop, &d->req, on_done, s, &s->xfer);
  if (rc != 0) {
    s->xfer = NULL;
    s->start_error = rc;
    enqueue(d, s);
    return;
  }
  d->tally.attempts_started++;
  /* A retry counts once its attempt starts, as the retry loop counts it: a
   * cancel during the wait makes none. */
  if (s->attempt > 1)
    d->tally.retried++;
  s->state = SLOT_BUSY;
}

/* Whether another request may start: asks the claim function last, as it
 * hands out a request number for good. The driver is at driver_idx. */
static int may_start(lua_State *L, rt_drive_t *d, int driver_idx) {
  int more;

  if (d->stopped || d->cancelled || !d->linked || *d->sealed)
    return 0;
  if (d->total >= 0 && d->started >= d->total)
    return 0;
  if (d->ends > 0 && rt_clock_now() >= d->ends)
    return 0;
  if (!d->has_claim)
    return 1;
  lua_getiuservalue(L, driver_idx, KEEP_CLAIM);
  lua_call(L, 0, 1);
  more = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (!more)
    d->stopped = 1; /* a claim refused once is refused for good */
  return more;
}

/* Start slot s's next request, or leave it idle when the load has no more.
 */
static void start_slot(lua_State *L, rt_drive_t *d, int driver_idx, slot_t *s) {
  if (!may_start(L, d, driver_idx)) {
    s->state = SLOT_IDLE;
    return;
  }
  d->started++;
  d->tally.started++;
  d->busy++;
  s->started = rt_clock_now();
  s->attempt = 0;
  start_attempt(d, s);
}

/* Cut every request in flight or waiting and start none again. Runs no
 * Lua: the owner's cancel or end (as its link), d:cancel, or the
 * collector. */
static void cancel_all(rt_drive_t *d) {
  long i;

  d->cancelled = 1;
  for (i = 0; i < d->slot_count; i++) {
    slot_t *s = &d->slots[i];
    int done = s->attempt; /* attempts its request made, as a load counts */

    if (s->state == SLOT_WAITING) {
      rt_clock_disarm(d->clock, &s->wait);
    } else if (s->state == SLOT_BUSY ||
               (s->state == SLOT_ENDED && s->xfer != NULL)) {
      /* An attempt out, or ended and not yet seen: cut in flight. It
       * counts, as the retry loop counts one, only if its request went
       * out on a connection. */
      if (s->xfer->went_out) {
        d->cut_in_flight++;
        if (s->xfer->result.resent)
          d->cut_resent++;
        if (s->attempt > 1)
          d->cut_retries++;
      } else {
        done--;
      }
      rt_xfer_release(s->xfer);
      s->xfer = NULL;
    } else if (s->state == SLOT_ENDED) {
      if (s->start_error != 0)
        done--; /* an attempt that never started */
    } else {
      continue;
    }
    s->state = SLOT_IDLE;
    s->retry_due = 0;
    d->cut_attempts[done < 0 ? 0 : done]++;
    d->cut++;
  }
  if (d->cut > 0)
    d->cut_at = rt_clock_now();
  d->ended_head = d->ended_tail = NULL;
  d->busy = 0;
}

static void stop_linked(rt_task_link_t *link) {
  rt_drive_t *d = (rt_drive_t *)link;

  cancel_all(d);
  if (d->linked) {
    rt_task_disown(d->owner, &d->link);
    d->linked = 0;
  }
}

/* ------------------------------------------------------------------ */
/* Events                                                              */
/* ------------------------------------------------------------------ */

/* The load's second that `at` falls in, 1 for the first (as result.lua's
 * entry_at counts). */
static long second_of(const rt_drive_t *d, double at) {
  double k = floor(at - d->load_started) + 1;

  return k < 1 ? 1 : (long)k;
}

static void set_integer(lua_State *L, const char *name, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, name);
}

/* Push {k = counts[k]} for the nonzero counts[0..n], and zero them. */
static void push_counts(lua_State *L, lua_Integer *counts, int n) {
  int k;

  lua_newtable(L);
  for (k = 0; k <= n; k++) {
    if (counts[k] != 0) {
      lua_pushinteger(L, counts[k]);
      lua_rawseti(L, -2, k);
      counts[k] = 0;
    }
  }
}

/* Push the tally as a "tally" event and start a new one. */
static int push_tally(lua_State *L, rt_drive_t *d, double next_at) {
  tally_t *t = &d->tally;
  int i;

  lua_pushliteral(L, "tally");
  lua_createtable(L, 0, 16);
  lua_pushnumber(L, t->at);
  lua_setfield(L, -2, "at");
  set_integer(L, "requests", t->requests);
  set_integer(L, "responses", t->responses);
  set_integer(L, "failed", t->failed);
  set_integer(L, "checks", t->checks);
  set_integer(L, "checks_failed", t->checks_failed);
  set_integer(L, "sent", t->sent);
  set_integer(L, "resent", t->resent);
  set_integer(L, "retries", t->retries);
  set_integer(L, "retried", t->retried);
  set_integer(L, "started", t->started);
  set_integer(L, "attempts_started", t->attempts_started);
  lua_createtable(L, 0, d->touched_count);
  for (i = 0; i < d->touched_count; i++) {
    int status = d->touched[i];

    lua_pushinteger(L, d->by_status[status]);
    lua_rawseti(L, -2, status);
    d->by_status[status] = 0;
  }
  d->touched_count = 0;
  lua_setfield(L, -2, "statuses");
  push_counts(L, d->by_attempts, MAX_ATTEMPTS);
  lua_setfield(L, -2, "attempts");
  if (next_at > 0) {
    lua_pushnumber(L, next_at);
    lua_setfield(L, -2, "next_at");
    d->open_second = second_of(d, next_at);
  }
  memset(t, 0, sizeof(*t));
  d->last_tally = rt_clock_now();
  return 2;
}

/* The Response of slot s's transfer, given the trail of its request's
 * attempts, which tells it what the retry loop tells the one it returns
 * (core.conclude): its attempts, their records, the request's elapsed. A
 * retried request's records go with it: the slot makes new ones when it
 * next retries. */
static void push_concluded(lua_State *L, slot_t *s) {
  const rt_xfer_result_t *res = &s->xfer->result;
  rt_attempt_t one, *trail = s->attempt > 1 ? s->history : &one;
  rt_attempt_t *last = &trail[s->attempt - 1];

  rt_xfer_push_outcome(L, s->xfer);
  last->elapsed = res->timings.finished_at - s->attempt_started;
  last->wait = 0;
  last->status = (int)res->status;
  last->resent = res->resent;
  rt_response_set_trail(lua_touserdata(L, -1), trail, s->attempt,
                        rt_clock_now() - s->started);
  if (trail == s->history)
    s->history = NULL;
}

/* Slot s's attempt goes to Lua: push the "slow" event and lend it. */
static int push_slow(lua_State *L, rt_drive_t *d, slot_t *s) {
  int n = s->attempt, outcome;

  lua_pushliteral(L, "slow");
  lua_pushinteger(L, (lua_Integer)(s - d->slots) + 1);
  lua_pushnumber(L, s->started);
  lua_pushnumber(L, rt_clock_now() - s->attempt_started);
  lua_pushinteger(L, n);
  if (n > 1) {
    rt_response_push_history(L, s->history, n - 1, 0);
    lua_pushnumber(L, s->history[n - 2].wait);
  } else {
    lua_pushnil(L);
    lua_pushnil(L);
  }
  if (s->start_error != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "invalid");
    lua_pushfstring(L, "could not start the transfer (%s)",
                    uv_strerror(s->start_error));
    outcome = 3;
  } else {
    outcome = rt_xfer_push_outcome(L, s->xfer);
    rt_xfer_release(s->xfer);
    s->xfer = NULL;
  }
  d->busy--;
  d->lent++;
  s->state = SLOT_LENT;
  return 7 + outcome;
}

/* What to do with slot s's attempt, which ended with result res. */
static enum verdict verdict_of(rt_drive_t *d, slot_t *s,
                               const rt_xfer_result_t *res) {
  if (res->kind != NULL || res->status < 0 || res->status >= STATUS_LIMIT)
    return TO_LUA;
  switch (d->stands[res->status]) {
  case STATUS_STANDS:
    return STANDS;
  case STATUS_RETRIED:
    if (d->max_attempts == 0)
      return TO_LUA;
    if (s->attempt >= d->max_attempts)
      return STANDS; /* no attempt left: the retry loop returns it */
    /* Retry-After, which may lengthen the wait or end the retries, and a
     * history the slot has no room for are the retry loop's. */
    if (res->retry_after > 0)
      return TO_LUA;
    if (s->history == NULL) {
      s->history = malloc((size_t)d->max_attempts * sizeof(*s->history));
      if (s->history == NULL)
        return TO_LUA;
    }
    return RETRY;
  default:
    return TO_LUA;
  }
}

/* Count the attempt of slot s that ended with res, in the tally. */
static void count_attempt(rt_drive_t *d, slot_t *s,
                          const rt_xfer_result_t *res) {
  tally_t *t = &d->tally;

  (void)rt_hist_record(d->attempt_latency, rt_histogram_ns(res->timings.total));
  t->sent++;
  if (res->resent)
    t->resent++;
  if (s->attempt > 1)
    t->retries++;
  t->at = res->timings.finished_at;
}

/* Slot s's attempt (just dequeued) ended in a status the policy retries,
 * with attempts left: record it and wait before the next. */
static void retry(lua_State *L, rt_drive_t *d, slot_t *s) {
  const rt_xfer_result_t *res = &s->xfer->result;
  rt_attempt_t *r = &s->history[s->attempt - 1];
  double wait = d->waits[s->attempt - 1];

  count_attempt(d, s, res);
  r->elapsed = res->timings.finished_at - s->attempt_started;
  r->wait = wait;
  r->status = (int)res->status;
  r->resent = res->resent;
  rt_xfer_release(s->xfer);
  s->xfer = NULL;
  if (wait <= 0) {
    start_attempt(d, s);
    return;
  }
  s->state = SLOT_WAITING;
  s->wait.at_ns = rt_clock_after(uv_hrtime(), wait);
  s->wait.fire = on_wait_over;
  if (rt_clock_arm(d->clock, &s->wait) != 0)
    luaL_error(L, "retry: out of memory for a timer");
}

/* The request of slot s (just dequeued) ended in a standing response:
 * count it, record its latencies, check it by its status, start the
 * slot's next request. With a Lua check, lend the slot instead and return
 * the values of a "check" event; else 0. */
static int settle(lua_State *L, rt_drive_t *d, int driver_idx, slot_t *s) {
  const rt_xfer_result_t *res = &s->xfer->result;
  long status = res->status;
  uint64_t latency = rt_histogram_ns(res->timings.finished_at - s->started);
  tally_t *t = &d->tally;

  (void)rt_hist_record(d->latency, latency);
  (void)rt_hist_record(d->second_latency, latency);
  count_attempt(d, s, res);
  t->requests++;
  t->responses++;
  d->by_attempts[s->attempt]++;
  if (status >= 400)
    t->failed++;
  if (d->by_status[status]++ == 0)
    d->touched[d->touched_count++] = (short)status;
  d->busy--;
  if (d->has_check) {
    /* Lua calls it, in a task that may wait as a request's check can; the
     * slot starts again at d:free. */
    lua_pushliteral(L, "check");
    lua_pushinteger(L, (lua_Integer)(s - d->slots) + 1);
    push_concluded(L, s);
    rt_xfer_release(s->xfer);
    s->xfer = NULL;
    d->lent++;
    s->state = SLOT_LENT;
    return 3;
  }
  if (d->has_codes) {
    t->checks++;
    if (!d->expected[status])
      t->checks_failed++;
  }
  rt_xfer_release(s->xfer);
  s->xfer = NULL;
  start_slot(L, d, driver_idx, s);
  return 0;
}

/* What d:next returns now without waiting; 0 when it must wait, -1 when
 * its turn is over (TURN_NS). */
static int next_event(lua_State *L, rt_drive_t *d, int driver_idx) {
  /* A turn at a time, as the ended ones: ten thousand slots started in
   * one go would hold up the loop (and every timer) for as long. */
  while (d->fresh < d->slot_count) {
    if (uv_hrtime() - d->turn_started >= TURN_NS)
      return -1;
    start_slot(L, d, driver_idx, &d->slots[d->fresh++]);
  }
  while (d->ended_head != NULL) {
    slot_t *s = d->ended_head;
    const rt_xfer_result_t *res;
    enum verdict verdict;
    int n;

    if (uv_hrtime() - d->turn_started >= TURN_NS)
      return -1;
    if (s->retry_due) {
      dequeue(d);
      s->retry_due = 0;
      start_attempt(d, s);
      continue;
    }
    if (s->start_error != 0) {
      dequeue(d);
      return push_slow(L, d, s);
    }
    res = &s->xfer->result;
    verdict = verdict_of(d, s, res);
    if (verdict == TO_LUA) {
      dequeue(d);
      return push_slow(L, d, s);
    }
    /* Its figures go into the open second: the recorder opens a new
     * second when told, the tally of the last one first. */
    if (second_of(d, res->timings.finished_at) != d->open_second)
      return push_tally(L, d, res->timings.finished_at);
    dequeue(d);
    if (verdict == RETRY) {
      retry(L, d, s);
      continue;
    }
    n = settle(L, d, driver_idx, s);
    if (n > 0)
      return n;
  }
  if (d->tally.sent > 0 || d->tally.started > 0 ||
      d->tally.attempts_started > 0) {
    int idle = d->busy == 0 && d->lent == 0;

    if (idle || d->cancelled || rt_clock_now() - d->last_tally >= TALLY_EVERY)
      return push_tally(L, d, 0);
  }
  if (d->cut > 0) {
    lua_pushliteral(L, "cut");
    lua_pushinteger(L, d->cut);
    lua_pushnumber(L, d->cut_at);
    lua_pushinteger(L, d->cut_in_flight);
    lua_pushinteger(L, d->cut_resent);
    lua_pushinteger(L, d->cut_retries);
    push_counts(L, d->cut_attempts, MAX_ATTEMPTS);
    d->cut = d->cut_in_flight = d->cut_resent = d->cut_retries = 0;
    return 7;
  }
  if (d->busy == 0 && d->lent == 0) {
    lua_pushnil(L);
    return 1;
  }
  return 0;
}

static void abandon_park(void *arg) {
  ((rt_drive_t *)arg)->parked = 0;
}

static int next_k(lua_State *L, int status, lua_KContext ctx);

static int next_or_park(lua_State *L, rt_drive_t *d, rt_task_t *t) {
  int n;

  lua_settop(L, 1);
  n = next_event(L, d, 1);
  if (n > 0)
    return n;
  if (n < 0) /* a yield: to the back of the ready queue, not parked */
    return rt_task_park_timed(L, t, 0, NULL, NULL, next_k);
  d->parked = 1;
  return rt_task_park(L, t, d, abandon_park, next_k);
}

static int next_k(lua_State *L, int status, lua_KContext ctx) {
  rt_task_t *t = (rt_task_t *)ctx;
  rt_drive_t *d = lua_touserdata(L, 1);

  (void)status;
  rt_task_take_op(t);
  d->turn_started = uv_hrtime();
  return next_or_park(L, d, t);
}

/* ------------------------------------------------------------------ */
/* Methods                                                             */
/* ------------------------------------------------------------------ */

/* d:next() -> event, ... (see the top of this file) */
static int d_next(lua_State *L) {
  rt_drive_t *d = check_drive(L, "next");
  rt_task_t *t = rt_task_check(L, d->owner->sched, "driver:next");

  if (t != d->owner)
    return rt_error_invalid(L, "driver:next: only the task that made the "
                               "driver can wait on it");
  if (d->turn_started == 0)
    d->turn_started = uv_hrtime();
  return next_or_park(L, d, t);
}

/* d:stop(): start no more requests; those in flight go on, retries too. */
static int d_stop(lua_State *L) {
  rt_drive_t *d = check_drive(L, "stop");

  d->stopped = 1;
  poke(d);
  return 0;
}

/* d:cancel(): start no more, and cut the requests in flight or waiting (a
 * "cut" event counts them). Lent slots are Lua's to cancel. */
static int d_cancel(lua_State *L) {
  rt_drive_t *d = check_drive(L, "cancel");

  cancel_all(d);
  poke(d);
  return 0;
}

/* d:free(slot): the request of a lent slot has ended; the slot starts the
 * next one (on the calling task's stack: a claim function runs here). */
static int d_free(lua_State *L) {
  rt_drive_t *d = check_drive(L, "free");
  lua_Integer i = luaL_checkinteger(L, 2);
  slot_t *s;

  if (i < 1 || i > d->slot_count || d->slots[i - 1].state != SLOT_LENT)
    return rt_error_invalid(L, "driver:free: slot %d is not lent", (int)i);
  s = &d->slots[i - 1];
  d->lent--;
  lua_settop(L, 1);
  start_slot(L, d, 1, s);
  poke(d);
  return 0;
}

/* d:learn(status, stands): whether a response of status ends its request
 * at the first attempt, the policy's answer (Lua caches it too); one that
 * does not is retried, while attempts are left. */
static int d_learn(lua_State *L) {
  rt_drive_t *d = check_drive(L, "learn");
  lua_Integer status = luaL_checkinteger(L, 2);

  if (status >= 0 && status < STATUS_LIMIT)
    d->stands[status] = lua_toboolean(L, 3) ? STATUS_STANDS : STATUS_RETRIED;
  return 0;
}

/* __gc: whatever it still holds. Its owner has ended by now (its stack
 * held the driver), which unlinked it. */
static int d_gc(lua_State *L) {
  rt_drive_t *d = rt_udata_test(L, 1, &drive_key);
  long i;

  if (d == NULL)
    return 0;
  stop_linked(&d->link);
  for (i = 0; i < d->slot_count; i++)
    free(d->slots[i].history);
  free(d->slots);
  d->slots = NULL;
  d->slot_count = 0;
  free(d->copy);
  d->copy = NULL;
  return 0;
}

void rt_drive_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"next", d_next},     {"stop", d_stop},
                                     {"cancel", d_cancel}, {"free", d_free},
                                     {"learn", d_learn},   {NULL, NULL}};

  if (luaL_newmetatable(L, DRIVE_MT)) {
    lua_pushcfunction(L, d_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, DRIVE_MT);
    lua_setfield(L, -2, "__name");
  }
  rt_udata_keep_metatable(L, &drive_key);
  lua_pop(L, 1);
}

/* ------------------------------------------------------------------ */
/* Making one                                                          */
/* ------------------------------------------------------------------ */

/* Copy req's strings and header lines into one block that d owns. */
static int copy_request(rt_drive_t *d, const rt_request_t *req) {
  size_t method = strlen(req->method) + 1, url = strlen(req->url) + 1;
  size_t ca = req->ca_file != NULL ? strlen(req->ca_file) + 1 : 0;
  size_t lines = req->header_count * sizeof(char *), text = 0, i;
  char *p;

  for (i = 0; i < req->header_count; i++)
    text += strlen(req->headers[i]) + 1;
  p = malloc(lines + method + url + ca + text + req->body_len + 1);
  if (p == NULL)
    return -1;
  d->copy = p;
  d->req = *req;
  d->req.headers = (const char *const *)p;
  p += lines;
  for (i = 0; i < req->header_count; i++) {
    size_t n = strlen(req->headers[i]) + 1;

    memcpy(p, req->headers[i], n);
    ((const char **)d->copy)[i] = p;
    p += n;
  }
  memcpy(p, req->method, method);
  d->req.method = p;
  p += method;
  memcpy(p, req->url, url);
  d->req.url = p;
  p += url;
  if (ca > 0) {
    memcpy(p, req->ca_file, ca);
    d->req.ca_file = p;
    p += ca;
  }
  if (req->body != NULL) {
    memcpy(p, req->body, req->body_len);
    d->req.body = p;
  }
  return 0;
}

static rt_histogram_t *opt_histogram(lua_State *L, int opts, const char *name) {
  rt_histogram_t *h;

  lua_getfield(L, opts, name);
  h = rt_histogram_test(L, -1);
  if (h == NULL)
    rt_error_invalid(L, "core.driver: opts.%s must be a histogram", name);
  lua_pop(L, 1);
  return h;
}

static double opt_number(lua_State *L, int opts, const char *name,
                         double none) {
  double v = none;

  lua_getfield(L, opts, name);
  if (!lua_isnil(L, -1)) {
    if (!lua_isnumber(L, -1))
      rt_error_invalid(L, "core.driver: opts.%s must be a number", name);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* opts.codes, the statuses a check by codes passes. */
static void read_codes(lua_State *L, rt_drive_t *d, int opts) {
  lua_getfield(L, opts, "codes");
  if (lua_istable(L, -1)) {
    d->has_codes = 1;
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
      lua_Integer status;
      int exact = 0;

      lua_pop(L, 1);
      status = lua_tointegerx(L, -1, &exact);
      if (exact && status >= 0 && status < STATUS_LIMIT)
        d->expected[status] = 1;
    }
  }
  lua_pop(L, 1);
}

/* opts.stands (see the top). */
static void read_stands(lua_State *L, rt_drive_t *d, int opts) {
  lua_getfield(L, opts, "stands");
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
      int exact = 0;
      lua_Integer status = lua_tointegerx(L, -2, &exact);

      if (exact && status >= 0 && status < STATUS_LIMIT)
        d->stands[status] =
            lua_toboolean(L, -1) ? STATUS_STANDS : STATUS_RETRIED;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

/* opts.waits, when the driver makes the retries (see the top). */
static void read_waits(lua_State *L, rt_drive_t *d, int opts) {
  lua_Integer n, i;

  lua_getfield(L, opts, "waits");
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1))
      rt_error_invalid(L, "core.driver: opts.waits must be a list");
    n = (lua_Integer)lua_rawlen(L, -1);
    if (n < 1 || n >= MAX_ATTEMPTS)
      rt_error_invalid(L, "core.driver: opts.waits must hold 1 to %d waits",
                       MAX_ATTEMPTS - 1);
    for (i = 1; i <= n; i++) {
      double w;

      lua_rawgeti(L, -1, i);
      w = lua_tonumber(L, -1);
      if (lua_type(L, -1) != LUA_TNUMBER || !(w >= 0) || isinf(w))
        rt_error_invalid(L,
                         "core.driver: opts.waits[%d] must be seconds "
                         ">= 0",
                         (int)i);
      d->waits[i - 1] = w;
      lua_pop(L, 1);
    }
    d->max_attempts = (int)n + 1;
  }
  lua_pop(L, 1);
}

void rt_drive_new(lua_State *L, const rt_request_t *req, int opts_idx,
                  rt_task_t *t, rt_loop_t *loop, const int *sealed) {
  int opts = lua_absindex(L, opts_idx);
  lua_Integer slots;
  double total;
  rt_drive_t *d;
  long i;

  lua_getfield(L, opts, "slots");
  slots = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (slots < 1 || slots > 1000000)
    rt_error_invalid(L, "core.driver: opts.slots must be 1 to 1000000");
  total = opt_number(L, opts, "total", -1);
  d = lua_newuserdatauv(L, sizeof(*d), KEEP_COUNT);
  memset(d, 0, sizeof(*d));
  rt_udata_setmetatable(L, &drive_key);
  d->link.stop = stop_linked;
  d->owner = t;
  d->loop = loop;
  d->clock = &t->sched->clock;
  d->sealed = sealed;
  d->total = total < 0 || total >= 9e18 ? -1 : (lua_Integer)total;
  d->ends = opt_number(L, opts, "ends", 0);
  d->load_started = opt_number(L, opts, "started", rt_clock_now());
  d->latency = opt_histogram(L, opts, "latency");
  d->attempt_latency = opt_histogram(L, opts, "attempt_latency");
  d->second_latency = opt_histogram(L, opts, "second_latency");
  read_codes(L, d, opts);
  read_stands(L, d, opts);
  read_waits(L, d, opts);
  lua_getfield(L, opts, "check");
  d->has_check = !d->has_codes && !lua_isnil(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, opts, "claim");
  d->has_claim = !lua_isnil(L, -1);
  lua_setiuservalue(L, -2, KEEP_CLAIM);
  lua_pushvalue(L, opts); /* keeps the histograms */
  lua_setiuservalue(L, -2, KEEP_OPTS);
  rt_task_push_handle(L, t);
  lua_setiuservalue(L, -2, KEEP_TASK);
  d->slots = calloc((size_t)slots, sizeof(*d->slots));
  if (d->slots == NULL || copy_request(d, req) != 0)
    luaL_error(L, "retry: out of memory for a load's %d slots", (int)slots);
  d->slot_count = (long)slots;
  for (i = 0; i < d->slot_count; i++)
    d->slots[i].drive = d;
  d->last_tally = rt_clock_now();
  d->linked = 1;
  rt_task_own(t, &d->link);
}
