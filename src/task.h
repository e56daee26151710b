/* task.h: Lua coroutines run as tasks on the loop.
 *
 * A task is a coroutine anchored in the registry from spawn until it ends.
 * It parks on an operation (a transfer, a sleep, or a wake from Lua), and the
 * scheduler resumes it from a uv check or idle callback: never inside a
 * libcurl callback, never while curl_multi_socket_action is on the stack.
 * This file is the only caller of lua_resume.
 */
#ifndef RT_TASK_H
#define RT_TASK_H

#include <lua.h>
#include <uv.h>

#include "clock.h"

typedef struct rt_sched_s rt_sched_t;
typedef struct rt_task_s rt_task_t;
typedef struct rt_task_link_s rt_task_link_t;

/* Something a task owns that holds libcurl or libuv handles (an operation,
 * see op.h). The task stops whatever is still linked when it is cancelled
 * or ends; stop must unlink it and never call Lua. */
struct rt_task_link_s {
  rt_task_link_t *prev;
  rt_task_link_t *next;
  void (*stop)(rt_task_link_t *link);
};

/* Stops and frees whatever a task is parked on; never calls Lua. */
typedef void (*rt_task_abandon_fn)(void *op);

enum rt_task_state {
  RT_TASK_READY,   /* queued to be resumed */
  RT_TASK_RUNNING, /* the current task */
  RT_TASK_PARKED,  /* waiting for its operation */
  RT_TASK_DONE
};

struct rt_task_s {
  lua_State *co;     /* borrowed: the handle's user value keeps it; NULL once
                      * the task is done */
  rt_sched_t *sched; /* borrowed */
  rt_task_t *ready_next;
  rt_task_t *live_prev;
  rt_task_t *live_next;
  enum rt_task_state state;
  int started;        /* resumed at least once */
  int in_ready;       /* linked in the ready queue */
  int nargs;          /* values on co's stack for the next resume */
  int base;           /* co's stack top when it parked */
  int raise;          /* the next resume raises the value on top */
  int via_park;       /* parked through rt_task_park (has a continuation) */
  int lua_parked;     /* parked by core.park, so core.wake may resume it */
  int cancel_pending; /* cancelled while running or before starting: the
                         error is raised at the next park */
  int cancelled;      /* cancel has been called on it (the one record of
                         cancellation; Lua asks for it) */
  int ended;          /* its Lua wrapper has recorded its outcome */
  lua_KFunction k;    /* continuation of the current park */
  void *op;           /* what it is parked on; released by abandon */
  rt_task_abandon_fn abandon;
  rt_task_link_t *owned;  /* operations it started that hold handles */
  rt_deadline_t deadline; /* of a timed park, on the scheduler's clock */
};

struct rt_sched_s {
  uv_loop_t *uv;    /* borrowed */
  lua_State *L;     /* the thread running retry.run; NULL outside it */
  uv_check_t check; /* resumes ready tasks after I/O callbacks */
  uv_idle_t idle;   /* keeps the poll from blocking while tasks wait */
  rt_clock_t clock; /* the deadlines of timed parks and timers */
  rt_task_t *ready_head;
  rt_task_t *ready_tail;
  rt_task_t *timed_tail; /* the last task a timer woke since the last drain */
  unsigned ready_count;
  rt_task_t *live; /* every task not yet done */
  unsigned live_count;
  rt_task_t *current;
  int running;       /* inside retry.run */
  int in_loop;       /* rt_sched_run is on the stack */
  int fatal_ref;     /* registry ref: an error no task wrapper caught */
  uint64_t timed_ns; /* spent resuming timer-woken tasks since the last
                        drain began */
};

void rt_sched_init(rt_sched_t *s, uv_loop_t *uv);

/* Abandon every live task's operation and close the scheduler's handles.
 * Runs no Lua; the caller then closes the loop. */
void rt_sched_close(rt_sched_t *s);

/* Resume the tasks whose deadlines have come, if timers have had less
 * than their share of this loop turn. For loop.c's `between` hook (data
 * is the scheduler): runs Lua. */
void rt_sched_resume_due(void *data);

/* Pops a function and nargs arguments from L, pushes a task handle and
 * queues the task to start on the next loop turn. */
rt_task_t *rt_task_spawn(lua_State *L, rt_sched_t *s, int nargs);

/* The task L is running as, or raises naming `what` and retry.run. */
rt_task_t *rt_task_check(lua_State *L, rt_sched_t *s, const char *what);

/* Detach the operation from a woken task (its continuation now owns it). */
void *rt_task_take_op(rt_task_t *t);

/* The task behind the handle at idx; raises an `invalid` error when it is
 * not a task handle. */
rt_task_t *rt_task_from(lua_State *L, int idx);

/* Park the running task on op and yield; k runs when the scheduler resumes
 * it, with the task as its context, unless a cancel was delivered (then
 * the cancel's error is raised instead and k does not run). A resume by
 * anything but the scheduler leaves the task parked. Use as
 * `return rt_task_park(...)`. */
int rt_task_park(lua_State *L, rt_task_t *t, void *op,
                 rt_task_abandon_fn abandon, lua_KFunction k);

/* The operation finished: queue the task to be resumed (with the nargs values
 * already pushed on its stack). The op stays until the continuation takes
 * it, so a cancel before then still releases it. */
void rt_task_wake(rt_task_t *t, int nargs);

/* The same for a task its timer woke (no values): see ready_push_timed. */
void rt_task_wake_timed(rt_task_t *t);

/* Park until rt_task_wake_lua; returns the values passed to it. */
int rt_task_park_lua(lua_State *L, rt_task_t *t);

/* rt_task_park_lua for C code that goes on in C: core.wake resumes the
 * task in k (ctx: t) with the values it was given on top of the stack. */
int rt_task_park_lua_k(lua_State *L, rt_task_t *t, lua_KFunction k);

/* Resume a task parked by rt_task_park_lua with the top n values of L.
 * Returns 0 when the task was not parked that way (nothing is moved). */
int rt_task_wake_lua(lua_State *L, rt_task_t *t, int n);

/* rt_task_park with a time limit: when seconds (>= 0) pass first, the task
 * is woken with nothing delivered (the continuation sees that no operation
 * finished). A negative seconds means no limit. */
int rt_task_park_timed(lua_State *L, rt_task_t *t, double seconds, void *op,
                       rt_task_abandon_fn abandon, lua_KFunction k);

/* Sleep the running task for seconds (>= 0). Use as a return expression. */
int rt_task_sleep(lua_State *L, rt_task_t *t, double seconds);

/* Link something the task now owns; it is stopped when the task is
 * cancelled or ends, unless unlinked first. */
void rt_task_own(rt_task_t *t, rt_task_link_t *link);
void rt_task_disown(rt_task_t *t, rt_task_link_t *link);

/* Push the task's handle (a full userdata), or nil once it has ended. */
void rt_task_push_handle(lua_State *L, rt_task_t *t);

/* Cancel: the error value at err_idx is raised in the task at its current
 * (or next) park, every time this is called while the task lives, and the
 * operations it owns are stopped at once. Returns 0 when the task has
 * already ended. */
int rt_task_cancel(lua_State *L, rt_task_t *t, int err_idx);

/* A cancel that has not been raised yet (the task was cancelled before it
 * started, or while running): push its error and forget it (returns 1), or
 * return 0. The task's wrapper uses it to end a task that never ran. */
int rt_task_take_cancel(lua_State *L, rt_task_t *t);

/* End every live task without resuming it: its operation is abandoned and
 * its anchor dropped. For a run that ends with tasks left (an error escaped
 * the loop). Runs no Lua. */
void rt_sched_abandon_all(rt_sched_t *s);

/* Run the loop until every task has ended (returns 1) or the live tasks all
 * wait on each other with nothing to wake them (returns 0). */
int rt_sched_run(rt_sched_t *s);

#endif
