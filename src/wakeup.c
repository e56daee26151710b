/* wakeup.c: a counter other threads bump that wakes a task parked on it.
 * See wakeup.h.
 *
 * The waiter (a uv_async on the waiting task's loop) is linked to the
 * wakeup under its mutex and unlinked under it before it is closed, so a
 * fire never sends to a handle being closed. The waiter is the task's
 * operation: the task's continuation, its cancel, its end and the loop's
 * close each release it once (detach, then uv_close).
 */
#include "wakeup.h"

#include <lauxlib.h>
#include <stdlib.h>

struct rt_wakeup_waiter_s {
  uv_async_t async;  /* first: the close callback frees the waiter */
  rt_wakeup_t *wake; /* NULL once detached */
  rt_task_t *task;
  unsigned long seen;
};

void rt_wakeup_init(rt_wakeup_t *w, void (*hold)(void *, int), void *owner) {
  pthread_mutex_init(&w->mu, NULL);
  w->count = 0;
  w->waiter = NULL;
  w->hold = hold;
  w->owner = owner;
}

void rt_wakeup_destroy(rt_wakeup_t *w) {
  pthread_mutex_destroy(&w->mu);
}

void rt_wakeup_fire(rt_wakeup_t *w) {
  pthread_mutex_lock(&w->mu);
  w->count++;
  if (w->waiter != NULL)
    uv_async_send(&w->waiter->async);
  pthread_mutex_unlock(&w->mu);
}

unsigned long rt_wakeup_count(rt_wakeup_t *w) {
  unsigned long n;

  pthread_mutex_lock(&w->mu);
  n = w->count;
  pthread_mutex_unlock(&w->mu);
  return n;
}

static void free_waiter(uv_handle_t *handle) {
  free(handle);
}

/* Unlink the waiter from its wakeup (no fire can reach it after this) and
 * close its handle. Returns the count as it was when unlinked. */
static unsigned long release(rt_wakeup_waiter_t *waiter) {
  rt_wakeup_t *w = waiter->wake;
  unsigned long n = 0;

  if (w != NULL) {
    pthread_mutex_lock(&w->mu);
    n = w->count;
    if (w->waiter == waiter)
      w->waiter = NULL;
    pthread_mutex_unlock(&w->mu);
    waiter->wake = NULL;
    uv_close((uv_handle_t *)&waiter->async, free_waiter);
    if (w->hold != NULL)
      w->hold(w->owner, -1);
  }
  return n;
}

static void abandon(void *op) {
  release(op);
}

static void on_async(uv_async_t *async) {
  rt_wakeup_waiter_t *waiter = (rt_wakeup_waiter_t *)async;
  rt_task_t *t = waiter->task;

  if (waiter->wake == NULL || rt_wakeup_count(waiter->wake) == waiter->seen)
    return;
  /* Sends coalesce, and one may arrive after the task was woken. */
  if (t->state == RT_TASK_PARKED && t->op == waiter)
    rt_task_wake(t, 0);
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  rt_task_t *t = (rt_task_t *)ctx;
  rt_wakeup_waiter_t *waiter = rt_task_take_op(t);

  (void)status;
  lua_pushinteger(L, (lua_Integer)release(waiter));
  return 1;
}

int rt_wakeup_wait(lua_State *L, rt_task_t *t, rt_wakeup_t *w,
                   unsigned long seen) {
  rt_wakeup_waiter_t *waiter;
  unsigned long n = rt_wakeup_count(w);
  int rc;

  if (n != seen) {
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
  }
  waiter = malloc(sizeof(*waiter));
  if (waiter == NULL)
    return luaL_error(L, "retry: out of memory for a wakeup");
  rc = uv_async_init(t->sched->uv, &waiter->async, on_async);
  if (rc != 0) {
    free(waiter);
    return luaL_error(L, "retry: cannot wait for another thread: %s",
                      uv_strerror(rc));
  }
  waiter->task = t;
  waiter->seen = seen;
  waiter->wake = NULL;
  pthread_mutex_lock(&w->mu);
  n = w->count;
  if (n == seen && w->waiter == NULL) {
    w->waiter = waiter;
    waiter->wake = w;
  }
  pthread_mutex_unlock(&w->mu);
  if (waiter->wake == NULL) {
    /* It fired meanwhile, or another task waits on it already. */
    uv_close((uv_handle_t *)&waiter->async, free_waiter);
    if (n == seen)
      return luaL_error(L, "retry: another task already waits on this");
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
  }
  if (w->hold != NULL)
    w->hold(w->owner, 1);
  return rt_task_park(L, t, waiter, abandon, wait_k);
}
