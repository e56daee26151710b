/* task.c: coroutines as tasks: spawn, park, wake, cancel, and the run loop.
 *
 * Owns the task handles' C state, the ready queue and the registry anchors
 * of live tasks. Knows nothing about transfers: an operation is a pointer and
 * an abandon hook.
 */
#include "task.h"

#include <lauxlib.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define TASK_MT "retry.TaskHandle"

/* Registry key of the table that anchors live tasks: anchors[t] = handle. */
static const char anchors_key = 'a';

static void push_anchors(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &anchors_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &anchors_key);
  }
}

static void push_handle(lua_State *L, rt_task_t *t) {
  push_anchors(L);
  lua_rawgetp(L, -1, t);
  lua_remove(L, -2);
}

void rt_task_push_handle(lua_State *L, rt_task_t *t) {
  push_handle(L, t);
}

static void on_idle(uv_idle_t *idle);

static void ready_push(rt_sched_t *s, rt_task_t *t) {
  t->state = RT_TASK_READY;
  if (t->in_ready)
    return;
  t->in_ready = 1;
  t->ready_next = NULL;
  if (s->ready_tail != NULL)
    s->ready_tail->ready_next = t;
  else
    s->ready_head = t;
  s->ready_tail = t;
  s->ready_count++;
  /* An active idle handle makes the loop poll without blocking. */
  if (s->ready_count == 1)
    uv_idle_start(&s->idle, on_idle);
}

/* A task its timer woke goes ahead of those I/O woke, behind the ones
 * other timers woke since the last drain; drain resumes all of those
 * first, so a backoff sleep is not late by a long queue, and then at
 * least one of the others, so no stream of timers can hold them up. */
static void ready_push_timed(rt_sched_t *s, rt_task_t *t) {
  t->state = RT_TASK_READY;
  if (t->in_ready)
    return;
  t->in_ready = 1;
  t->ready_next =
      s->timed_tail != NULL ? s->timed_tail->ready_next : s->ready_head;
  if (s->timed_tail != NULL)
    s->timed_tail->ready_next = t;
  else
    s->ready_head = t;
  if (t->ready_next == NULL)
    s->ready_tail = t;
  s->timed_tail = t;
  s->ready_count++;
  if (s->ready_count == 1)
    uv_idle_start(&s->idle, on_idle);
}

static rt_task_t *ready_pop(rt_sched_t *s) {
  rt_task_t *t = s->ready_head;

  s->ready_head = t->ready_next;
  if (s->ready_head == NULL)
    s->ready_tail = NULL;
  if (s->timed_tail == t)
    s->timed_tail = NULL;
  s->ready_count--;
  t->in_ready = 0;
  t->ready_next = NULL;
  return t;
}

static void release_op(rt_task_t *t) {
  void *op = t->op;
  rt_task_abandon_fn abandon = t->abandon;

  t->op = NULL;
  t->abandon = NULL;
  if (op != NULL && abandon != NULL)
    abandon(op);
}

static void stop_owned(rt_task_t *t) {
  while (t->owned != NULL) {
    rt_task_link_t *link = t->owned;

    link->stop(link);
    /* stop unlinks it; should it not, unlink here rather than loop. */
    if (t->owned == link)
      rt_task_disown(t, link);
  }
}

void rt_task_own(rt_task_t *t, rt_task_link_t *link) {
  link->prev = NULL;
  link->next = t->owned;
  if (t->owned != NULL)
    t->owned->prev = link;
  t->owned = link;
}

void rt_task_disown(rt_task_t *t, rt_task_link_t *link) {
  if (link->prev != NULL)
    link->prev->next = link->next;
  else if (t->owned == link)
    t->owned = link->next;
  if (link->next != NULL)
    link->next->prev = link->prev;
  link->prev = link->next = NULL;
}

static void finish(rt_sched_t *s, rt_task_t *t) {
  lua_State *L = s->L;

  release_op(t);
  stop_owned(t);
  t->state = RT_TASK_DONE;
  rt_clock_disarm(&s->clock, &t->deadline);
  if (t->live_prev != NULL)
    t->live_prev->live_next = t->live_next;
  else
    s->live = t->live_next;
  if (t->live_next != NULL)
    t->live_next->live_prev = t->live_prev;
  s->live_count--;
  lua_settop(t->co, 0);
  push_anchors(L);
  /* The thread goes with the task: a Task a script keeps to read its
   * results must not keep its stack. */
  if (lua_rawgetp(L, -1, t) == LUA_TUSERDATA) {
    lua_pushnil(L);
    lua_setiuservalue(L, -2, 1);
  }
  lua_pop(L, 1);
  t->co = NULL;
  lua_pushnil(L);
  lua_rawsetp(L, -2, t);
  lua_pop(L, 1);
}

static void resume(rt_sched_t *s, rt_task_t *t) {
  int nres = 0;
  int nargs = t->nargs;
  int status;

  /* A task suspended by a plain coroutine.yield() can be resumed by a
   * script holding its thread, and run to its end there (its wrapper has
   * then finished it in Lua). Resuming it again would start it anew. */
  if (t->started && lua_status(t->co) != LUA_YIELD) {
    /* Closed by coroutine.close instead, before its wrapper could end it:
     * its waiters would wait forever, so the run fails with an error that
     * says why. */
    if (!t->ended && s->fatal_ref == LUA_NOREF) {
      rt_error_push(s->L, "invalid",
                    "a task's coroutine was closed with coroutine.close: "
                    "the task cannot end");
      s->fatal_ref = luaL_ref(s->L, LUA_REGISTRYINDEX);
    }
    finish(s, t);
    return;
  }
  t->nargs = 0;
  t->state = RT_TASK_RUNNING;
  t->started = 1;
  t->via_park = 0;
  t->lua_parked = 0;
  s->current = t;
  status = lua_resume(t->co, s->L, nargs, &nres);
  s->current = NULL;
  if (status == LUA_YIELD) {
    lua_pop(t->co, nres);
    /* A plain coroutine.yield() from task code: let others run, then go
     * on. Parks through rt_task_park have already set the state. */
    if (t->state == RT_TASK_RUNNING)
      ready_push(s, t);
    return;
  }
  if (status != LUA_OK) {
    /* The Lua task wrapper catches errors, so this is one it could not
     * (an error in its handler, out of memory). Keep the first. */
    if (s->fatal_ref == LUA_NOREF) {
      lua_xmove(t->co, s->L, 1);
      s->fatal_ref = luaL_ref(s->L, LUA_REGISTRYINDEX);
    }
  }
  /* Ended either way: its stack goes now rather than when the collector
   * gets to the thread, so that tasks ending in a burst do not pile up
   * their stacks as garbage. */
  lua_resetthread(t->co);
  finish(s, t);
  /* The rest of it (the thread, its call records, some 700 bytes) goes
   * only when the collector sweeps it, and the collector counts work by
   * what is allocated, not by what dies: pay for it now. */
  lua_gc(s->L, LUA_GCSTEP, 2);
}

/* How long one drain may resume tasks before the loop turns. The I/O of
 * the loop waits for the drain, and so may a deadline that comes during
 * it: a turn spent resuming 64 tasks that each start their next request
 * (several milliseconds) would make both that late. The tasks left over
 * keep the idle handle on, so the loop polls without blocking and comes
 * straight back to them. Not less: at 0.1 ms (with libuv's timers) sleeps
 * were less late, but tasks holding a response waited so long to send
 * again that the transfers in flight dipped, the connection cache
 * followed them down, and a 64-connection load opened 84 connections. */
#define DRAIN_BUDGET_NS 300000

/* Resume the tasks timers woke since the last drain; returns how many. */
static unsigned resume_timed(rt_sched_t *s) {
  unsigned n = 0;

  while (s->timed_tail != NULL) {
    resume(s, ready_pop(s));
    n++;
  }
  return n;
}

/* Fire the deadlines due at now and resume their tasks, as long as timers
 * have had less than half a drain's budget since the last drain began:
 * enough for a backoff to end on time under a full load, never a stream
 * of short sleeps crowding the rest (tasks I/O woke, the I/O) out. */
static void resume_due(rt_sched_t *s, uint64_t now) {
  if (s->timed_ns >= DRAIN_BUDGET_NS / 2 || !rt_clock_due(&s->clock, now))
    return;
  rt_clock_fire_due(&s->clock, now);
  resume_timed(s);
  s->timed_ns += uv_hrtime() - now;
}

static void drain(rt_sched_t *s) {
  uint64_t start, now, until;
  unsigned n, timed;

  if (s->L == NULL)
    return;
  /* The deadlines that came since the last drain, whether or not the loop
   * has polled their timerfd yet: their tasks go first, all of them. */
  start = uv_hrtime();
  rt_clock_fire_due(&s->clock, start);
  n = s->ready_count;
  timed = resume_timed(s);
  n = timed < n ? n - timed : 0;
  now = uv_hrtime();
  s->timed_ns = now - start;
  /* Then the others for the budget (at least one), but only those queued
   * before this call: tasks they wake wait for the next loop iteration, so
   * a chain of wakes cannot starve I/O. The budget starts after the timed
   * ones: tasks that sleep less than a drain lasts would otherwise leave
   * the rest one task a drain. */
  until = now + DRAIN_BUDGET_NS;
  while (n-- > 0 && s->ready_head != NULL) {
    resume(s, ready_pop(s));
    now = uv_hrtime();
    if (now >= until)
      break;
    /* A deadline that comes meanwhile goes ahead too, at once. */
    resume_due(s, now);
  }
  if (s->ready_head == NULL)
    uv_idle_stop(&s->idle);
}

/* Between the socket events of an I/O phase, which at 64 connections can
 * last a millisecond and more: a deadline due meanwhile wakes its task at
 * once, within the share of the drain that began last. */
void rt_sched_resume_due(void *data) {
  rt_sched_t *s = data;

  if (s->L != NULL && s->current == NULL)
    resume_due(s, uv_hrtime());
}

static void on_check(uv_check_t *check) {
  drain(check->data);
}

static void on_idle(uv_idle_t *idle) {
  drain(idle->data);
}

void rt_sched_init(rt_sched_t *s, uv_loop_t *uv) {
  memset(s, 0, sizeof(*s));
  s->uv = uv;
  s->fatal_ref = LUA_NOREF;
  rt_clock_init(&s->clock, uv, 1);
  uv_check_init(uv, &s->check);
  uv_idle_init(uv, &s->idle);
  s->check.data = s;
  s->idle.data = s;
  uv_check_start(&s->check, on_check);
  /* The check handle alone must not keep the loop alive, or a deadlock
   * between tasks would block forever instead of being reported. */
  uv_unref((uv_handle_t *)&s->check);
}

void rt_sched_close(rt_sched_t *s) {
  rt_task_t *t;

  for (t = s->live; t != NULL; t = t->live_next) {
    release_op(t);
    stop_owned(t);
  }
  rt_clock_close(&s->clock);
  uv_close((uv_handle_t *)&s->check, NULL);
  uv_close((uv_handle_t *)&s->idle, NULL);
}

rt_task_t *rt_task_spawn(lua_State *L, rt_sched_t *s, int nargs) {
  rt_task_t *t;
  lua_State *co;

  t = lua_newuserdatauv(L, sizeof(*t), 2);
  memset(t, 0, sizeof(*t));
  t->state = RT_TASK_DONE; /* until fully set up */
  if (luaL_newmetatable(L, TASK_MT)) {
    lua_pushliteral(L, TASK_MT);
    lua_setfield(L, -2, "__name");
  }
  lua_setmetatable(L, -2);
  co = lua_newthread(L);
  lua_setiuservalue(L, -2, 1);
  if (!lua_checkstack(co, nargs + 2))
    rt_error_invalid(L, "retry.spawn: too many arguments (%d)", nargs);
  push_anchors(L);
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -2, t);
  lua_pop(L, 1);
  /* Stack: fn args... handle. The thread gets handle fn args...: the
   * handle stays at the bottom of its stack, below the function, until
   * the task ends (finish empties the stack), so a continuation that runs
   * on it never finds its task freed. */
  lua_insert(L, -(nargs + 2));
  lua_pushvalue(L, -(nargs + 2));
  lua_insert(L, -(nargs + 3));
  lua_xmove(L, co, nargs + 2);
  t->co = co;
  t->sched = s;
  t->nargs = nargs;
  t->live_next = s->live;
  if (s->live != NULL)
    s->live->live_prev = t;
  s->live = t;
  s->live_count++;
  ready_push(s, t);
  return t;
}

void *rt_task_take_op(rt_task_t *t) {
  void *op = t->op;

  t->op = NULL;
  t->abandon = NULL;
  return op;
}

rt_task_t *rt_task_from(lua_State *L, int idx) {
  rt_task_t *t = luaL_testudata(L, idx, TASK_MT);

  if (t == NULL)
    rt_error_invalid(L, "expected a task handle, got %s",
                     luaL_typename(L, idx));
  return t;
}

rt_task_t *rt_task_check(lua_State *L, rt_sched_t *s, const char *what) {
  rt_task_t *t = s->current;

  if (t == NULL || !s->running)
    rt_error_invalid(L,
                     "%s must be called inside a task: wrap the code in "
                     "retry.run(function() ... end)",
                     what);
  if (t->co != L)
    rt_error_invalid(L,
                     "%s cannot be called from a coroutine made inside a "
                     "task: call it from the task itself or use retry.spawn",
                     what);
  /* lua_yieldk would raise "attempt to yield across a C-call boundary"
   * only after the operation had started, leaving it running unowned. */
  if (!lua_isyieldable(L))
    rt_error_invalid(L,
                     "%s cannot be called where the task cannot wait: "
                     "inside a function that C calls (a table.sort "
                     "comparator, a string.gsub replacement, a metamethod "
                     "called from C) or while a module loads (require)",
                     what);
  return t;
}

/* The continuation of every park. Only the scheduler may resume a parked
 * task, and it marks the task running first. A script can get hold of a
 * task's thread (coroutine.running) and call coroutine.resume on it from
 * another task: that resume finds the task still parked, drops the values
 * it brought and yields straight back, so it changes nothing (the resumer
 * gets true) instead of ending a wait early with whatever it passed. */
static int parked_k(lua_State *L, int status, lua_KContext ctx) {
  rt_task_t *t = (rt_task_t *)ctx;

  if (t->state == RT_TASK_DONE)
    return rt_error_invalid(L, "this task has ended: its run is over");
  if (t->state != RT_TASK_RUNNING) {
    lua_settop(L, t->base + (t->state == RT_TASK_READY ? t->nargs : 0));
    return lua_yieldk(L, 0, ctx, parked_k);
  }
  rt_clock_disarm(&t->sched->clock, &t->deadline);
  if (t->raise) {
    t->raise = 0;
    return lua_error(L);
  }
  return t->k(L, status, ctx);
}

/* requeue: the task goes straight back to the ready queue (a yield). */
static int park(lua_State *L, rt_task_t *t, void *op,
                rt_task_abandon_fn abandon, lua_KFunction k, int requeue) {
  if (t->cancel_pending) {
    t->cancel_pending = 0;
    if (op != NULL && abandon != NULL)
      abandon(op);
    push_handle(L, t);
    lua_getiuservalue(L, -1, 2);
    return lua_error(L);
  }
  /* An operation left by a continuation that raised before taking it (out
   * of memory) is released here rather than lost. */
  release_op(t);
  t->op = op;
  t->abandon = abandon;
  t->state = RT_TASK_PARKED;
  t->via_park = 1;
  t->base = lua_gettop(L);
  t->k = k;
  if (requeue)
    rt_task_wake(t, 0);
  return lua_yieldk(L, 0, (lua_KContext)t, parked_k);
}

int rt_task_park(lua_State *L, rt_task_t *t, void *op,
                 rt_task_abandon_fn abandon, lua_KFunction k) {
  return park(L, t, op, abandon, k, 0);
}

void rt_task_wake(rt_task_t *t, int nargs) {
  t->nargs = nargs;
  ready_push(t->sched, t);
}

void rt_task_wake_timed(rt_task_t *t) {
  t->nargs = 0;
  ready_push_timed(t->sched, t);
}

static int park_lua_k(lua_State *L, int status, lua_KContext ctx) {
  rt_task_t *t = (rt_task_t *)ctx;

  (void)status;
  return lua_gettop(L) - t->base;
}

int rt_task_park_lua_k(lua_State *L, rt_task_t *t, lua_KFunction k) {
  /* Only a park that happens may be woken by core.wake: a pending cancel
   * raises in rt_task_park instead, and the flag must not outlive it. */
  if (!t->cancel_pending)
    t->lua_parked = 1;
  return rt_task_park(L, t, NULL, NULL, k);
}

int rt_task_park_lua(lua_State *L, rt_task_t *t) {
  return rt_task_park_lua_k(L, t, park_lua_k);
}

int rt_task_wake_lua(lua_State *L, rt_task_t *t, int n) {
  if (t->state != RT_TASK_PARKED || !t->lua_parked)
    return 0;
  if (!lua_checkstack(t->co, n))
    return rt_error_invalid(L, "core.wake: too many values (%d)", n);
  t->lua_parked = 0;
  lua_xmove(L, t->co, n);
  rt_task_wake(t, n);
  return 1;
}

static void on_park_deadline(rt_deadline_t *d) {
  rt_task_t *t = (rt_task_t *)((char *)d - offsetof(rt_task_t, deadline));

  if (t->state == RT_TASK_PARKED)
    rt_task_wake_timed(t);
}

int rt_task_park_timed(lua_State *L, rt_task_t *t, double seconds, void *op,
                       rt_task_abandon_fn abandon, lua_KFunction k) {
  rt_sched_t *s = t->sched;

  /* A pending cancel raises in rt_task_park: no timer may be left armed
   * for a park that never happens. */
  if (seconds < 0 || t->cancel_pending)
    return rt_task_park(L, t, op, abandon, k);
  /* A wait of no time is a yield: behind every task ready now, where a
   * timer's task would go ahead of them. */
  if (seconds == 0)
    return park(L, t, op, abandon, k, 1);
  t->deadline.at_ns = rt_clock_after(uv_hrtime(), seconds);
  t->deadline.fire = on_park_deadline;
  if (rt_clock_arm(&s->clock, &t->deadline) != 0) {
    if (op != NULL && abandon != NULL)
      abandon(op);
    return luaL_error(L, "retry: out of memory for a timer");
  }
  return rt_task_park(L, t, op, abandon, k);
}

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 0;
}

int rt_task_sleep(lua_State *L, rt_task_t *t, double seconds) {
  return rt_task_park_timed(L, t, seconds, NULL, NULL, sleep_k);
}

int rt_task_cancel(lua_State *L, rt_task_t *t, int err_idx) {
  err_idx = lua_absindex(L, err_idx);
  if (t->state == RT_TASK_DONE)
    return 0;
  t->cancelled = 1;
  stop_owned(t);
  push_handle(L, t);
  lua_pushvalue(L, err_idx);
  lua_setiuservalue(L, -2, 2);
  lua_pop(L, 1);
  if (!t->started || t->state == RT_TASK_RUNNING ||
      (t->state == RT_TASK_READY && !t->via_park)) {
    t->cancel_pending = 1;
    return 1;
  }
  /* Parked, or woken and not yet resumed: drop the operation and whatever
   * it delivered, and make the resume raise the error instead. */
  if (!lua_checkstack(t->co, 1))
    return luaL_error(L, "core.cancel: out of memory");
  release_op(t);
  rt_clock_disarm(&t->sched->clock, &t->deadline);
  lua_settop(t->co, lua_gettop(t->co) - t->nargs);
  lua_pushvalue(L, err_idx);
  lua_xmove(L, t->co, 1);
  t->raise = 1;
  t->lua_parked = 0;
  rt_task_wake(t, 1);
  return 1;
}

int rt_task_take_cancel(lua_State *L, rt_task_t *t) {
  if (!t->cancel_pending || t->state == RT_TASK_DONE)
    return 0;
  t->cancel_pending = 0;
  push_handle(L, t);
  lua_getiuservalue(L, -1, 2);
  lua_remove(L, -2);
  return 1;
}

void rt_sched_abandon_all(rt_sched_t *s) {
  while (s->live != NULL) {
    rt_task_t *t = s->live;

    if (t->in_ready) {
      /* Unlink it from the ready queue: it must never be resumed. */
      rt_task_t **p = &s->ready_head;
      rt_task_t *before = NULL;

      while (*p != t) {
        before = *p;
        p = &(*p)->ready_next;
      }
      *p = t->ready_next;
      if (s->timed_tail == t)
        s->timed_tail = before;
      if (s->ready_tail == t) {
        rt_task_t *last = s->ready_head;

        while (last != NULL && last->ready_next != NULL)
          last = last->ready_next;
        s->ready_tail = last;
      }
      s->ready_count--;
      t->in_ready = 0;
    }
    finish(s, t);
  }
  if (s->ready_head == NULL)
    uv_idle_stop(&s->idle);
}

int rt_sched_run(rt_sched_t *s) {
  int finished = 1;

  s->in_loop = 1;
  while (s->live_count > 0) {
    int alive;

    drain(s);
    if (s->live_count == 0)
      break;
    alive = uv_run(s->uv, UV_RUN_ONCE);
    if (!alive && s->ready_head == NULL && s->live_count > 0) {
      finished = 0;
      break;
    }
  }
  s->in_loop = 0;
  return finished;
}
