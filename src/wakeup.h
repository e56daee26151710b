/* wakeup.h: a counter other threads bump that wakes a task parked on it.
 *
 * The one way lretry's threads talk to a loop that is not their own: the
 * main thread stops each worker's load (Ctrl-C), and each worker tells the
 * main thread it has ended. Firing takes a mutex and, when a task waits,
 * sends a uv_async to that task's loop; the task is resumed there by its
 * own scheduler, never from the firing thread. A wakeup has at most one
 * waiter at a time. The uv_async exists only while a task waits, so an
 * idle wakeup holds no handle on any loop.
 */
#ifndef RT_WAKEUP_H
#define RT_WAKEUP_H

#include <lua.h>
#include <pthread.h>

#include "task.h"

typedef struct rt_wakeup_waiter_s rt_wakeup_waiter_t;

typedef struct rt_wakeup_s {
  pthread_mutex_t mu;
  unsigned long count;        /* times fired */
  rt_wakeup_waiter_t *waiter; /* the task parked on it, or NULL */
  /* Called with +1 when a waiter attaches and -1 when it detaches (on the
   * waiting thread, outside the mutex): the owner of this struct must
   * outlive every waiter, which may detach as late as its loop closes. */
  void (*hold)(void *owner, int delta);
  void *owner;
} rt_wakeup_t;

/* hold may be NULL when the wakeup outlives every loop that waits on it. */
void rt_wakeup_init(rt_wakeup_t *w, void (*hold)(void *, int), void *owner);
void rt_wakeup_destroy(rt_wakeup_t *w);

/* Any thread: count one more and wake the waiter, if any. */
void rt_wakeup_fire(rt_wakeup_t *w);

/* How many times it has fired. */
unsigned long rt_wakeup_count(rt_wakeup_t *w);

/* Park the running task t until the count differs from seen, then push
 * the count. Returns at once (pushing it) when it already differs. A
 * cancel ends the wait with the cancel's error, as any park. Use as a
 * return expression. */
int rt_wakeup_wait(lua_State *L, rt_task_t *t, rt_wakeup_t *w,
                   unsigned long seen);

#endif
