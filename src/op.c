/* op.c: operations (transfers and timers) that tasks start, wait on and
 * cancel. See op.h for the contract.
 *
 * An operation holding handles is linked into its owner task (task.h's
 * rt_task_link_t), so the task stops it when cancelled or ended; the
 * userdata's user value keeps the owner's handle, so the owner outlives
 * every operation that names it. Completion runs inside libcurl or libuv
 * callbacks: it only records the state and wakes the owner when the owner
 * waits on this operation. Lua runs later, in the wait's continuation.
 */
#include "op.h"

#include <lauxlib.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "response.h"
#include "udata.h"

#define OP_MT "retry.Operation"
/* Its address keys the Operation metatable (udata.h). */
static const char op_key = 'o';

enum op_type { OP_XFER, OP_TIMER, OP_SIGNAL };

enum op_state {
  OP_RUNNING,
  OP_DONE,      /* finished; a transfer's result not taken yet */
  OP_CANCELLED, /* stopped before it finished */
  OP_TAKEN,     /* a transfer's result went to Lua */
  OP_LOST       /* finished, but its task ended before taking the result */
};

struct rt_op_s {
  rt_task_link_t link; /* first: the task's list hands it back */
  rt_task_t *owner;    /* NULL once unlinked */
  enum op_type type;
  enum op_state state;
  int waited;              /* the owner is parked waiting on it */
  int went_out;            /* its transfer sent a request (kept past release) */
  int resent;              /* and libcurl sent it again (kept past release) */
  rt_xfer_t *xfer;         /* owned until released */
  rt_deadline_t deadline;  /* a timer's; armed only while owned */
  uv_signal_t *signals[2]; /* an interrupt's: SIGINT and SIGTERM */
  int signum;              /* the one that came */
};

static const int interrupt_signals[2] = {SIGINT, SIGTERM};

static void free_on_close(uv_handle_t *handle) {
  free(handle);
}

/* Release whatever handles op holds and unlink it from its task. */
static void release(rt_op_t *op) {
  if (op->xfer != NULL) {
    op->went_out = op->xfer->went_out;
    op->resent = op->xfer->result.resent;
    rt_xfer_release(op->xfer);
    op->xfer = NULL;
  }
  for (int i = 0; i < 2; i++) {
    /* Closing the last watcher gives the signal its default action back. */
    if (op->signals[i] != NULL) {
      uv_close((uv_handle_t *)op->signals[i], free_on_close);
      op->signals[i] = NULL;
    }
  }
  if (op->owner != NULL) {
    rt_clock_disarm(&op->owner->sched->clock, &op->deadline);
    rt_task_disown(op->owner, &op->link);
    op->owner = NULL;
  }
}

/* The task stops it: cancelled, or ended. No wake: the task is being
 * cancelled or is gone. */
static void stop_linked(rt_task_link_t *link) {
  rt_op_t *op = (rt_op_t *)link;

  if (op->state == OP_RUNNING)
    op->state = OP_CANCELLED;
  else if (op->state == OP_DONE)
    op->state = OP_LOST;
  op->waited = 0;
  release(op);
}

/* op stopped running: wake its owner if the owner waits on it. Takes the
 * owner as it was before op was released (which unlinks it). */
static void finished(rt_op_t *op, rt_task_t *owner, int waited,
                     enum op_state state) {
  op->state = state;
  op->waited = 0;
  if (!waited || owner == NULL || owner->state != RT_TASK_PARKED)
    return;
  if (op->type == OP_TIMER && state == OP_DONE)
    rt_task_wake_timed(owner);
  else
    rt_task_wake(owner, 0);
}

static void on_xfer_done(rt_xfer_t *xfer, void *arg) {
  rt_op_t *op = arg;

  (void)xfer;
  finished(op, op->owner, op->waited, OP_DONE);
}

static void on_deadline(rt_deadline_t *d) {
  rt_op_t *op = (rt_op_t *)((char *)d - offsetof(rt_op_t, deadline));
  rt_task_t *owner = op->owner;
  int waited = op->waited;

  /* A timer has nothing to hand over: done is its whole result. */
  release(op);
  finished(op, owner, waited, OP_DONE);
}

static void on_signal(uv_signal_t *handle, int signum) {
  rt_op_t *op = handle->data;
  rt_task_t *owner = op->owner;
  int waited = op->waited;

  op->signum = signum;
  release(op);
  finished(op, owner, waited, OP_DONE);
}

static int op_gc(lua_State *L) {
  /* A script can reach this through getmetatable(op).__gc(anything). */
  rt_op_t *op = rt_udata_test(L, 1, &op_key);

  if (op == NULL)
    return 0;
  /* Nobody can see it any more: whatever it holds goes. */
  if (op->state == OP_RUNNING)
    op->state = OP_CANCELLED;
  release(op);
  return 0;
}

static const char *const state_names[] = {"running", "done", "cancelled",
                                          "done", "lost"};
static const char *const type_names[] = {"transfer", "timer", "interrupt"};

static int op_tostring(lua_State *L) {
  rt_op_t *op = rt_op_check(L, 1, "tostring");

  lua_pushfstring(L, "retry.Operation (%s, %s)", type_names[op->type],
                  state_names[op->state]);
  return 1;
}

void rt_op_open(lua_State *L) {
  if (luaL_newmetatable(L, OP_MT)) {
    lua_pushcfunction(L, op_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, op_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, OP_MT);
    lua_setfield(L, -2, "__name");
  }
  rt_udata_keep_metatable(L, &op_key);
  lua_pop(L, 1);
}

static rt_op_t *push_op(lua_State *L, rt_task_t *t, enum op_type type) {
  rt_op_t *op = lua_newuserdatauv(L, sizeof(*op), 1);

  memset(op, 0, sizeof(*op));
  op->type = type;
  op->state = OP_CANCELLED; /* until it holds something */
  op->link.stop = stop_linked;
  rt_udata_setmetatable(L, &op_key);
  rt_task_push_handle(L, t);
  lua_setiuservalue(L, -2, 1);
  return op;
}

/* op holds its handles and runs: t owns it from now on. */
static void adopt(rt_op_t *op, rt_task_t *t) {
  op->state = OP_RUNNING;
  op->owner = t;
  rt_task_own(t, &op->link);
}

int rt_op_start_xfer(lua_State *L, rt_task_t *t, rt_loop_t *loop,
                     const rt_request_t *req) {
  rt_op_t *op = push_op(L, t, OP_XFER);
  int rc = rt_xfer_start(loop, req, on_xfer_done, op, &op->xfer);

  if (rc != 0) {
    op->xfer = NULL;
    lua_pop(L, 1);
    return rc;
  }
  adopt(op, t);
  return 0;
}

void rt_op_start_timer(lua_State *L, rt_task_t *t, double seconds) {
  rt_op_t *op = push_op(L, t, OP_TIMER);

  op->deadline.at_ns = rt_clock_after(uv_hrtime(), seconds);
  op->deadline.fire = on_deadline;
  if (rt_clock_arm(&t->sched->clock, &op->deadline) != 0)
    luaL_error(L, "retry: out of memory for a timer");
  adopt(op, t);
}

int rt_op_start_interrupt(lua_State *L, rt_task_t *t) {
  rt_op_t *op = push_op(L, t, OP_SIGNAL);
  int i, rc = 0;

  for (i = 0; i < 2 && rc == 0; i++) {
    uv_signal_t *watcher = malloc(sizeof(*watcher));

    if (watcher == NULL) {
      release(op);
      luaL_error(L, "retry: out of memory for a signal watcher");
    }
    uv_signal_init(t->sched->uv, watcher);
    watcher->data = op;
    op->signals[i] = watcher;
    /* One shot: the handler goes back to the default before ours runs, so
     * a second Ctrl-C ends the process at once even while Lua is busy. */
    rc = uv_signal_start_oneshot(watcher, on_signal, interrupt_signals[i]);
  }
  if (rc != 0) {
    release(op);
    lua_pop(L, 1);
    return rc;
  }
  adopt(op, t);
  return 0;
}

rt_op_t *rt_op_check(lua_State *L, int idx, const char *what) {
  rt_op_t *op = rt_udata_test(L, idx, &op_key);

  if (op == NULL)
    rt_error_invalid(L, "%s: expected an operation, got %s", what,
                     rt_error_typename(L, idx));
  return op;
}

int rt_op_went_out(const rt_op_t *op) {
  return op->xfer != NULL ? op->xfer->went_out : op->went_out;
}

int rt_op_resent(const rt_op_t *op) {
  return op->xfer != NULL ? op->xfer->result.resent : op->resent;
}

int rt_op_cancel(rt_op_t *op) {
  rt_task_t *owner = op->owner;
  int waited = op->waited;

  if (op->state != OP_RUNNING)
    return 0;
  release(op);
  finished(op, owner, waited, OP_CANCELLED);
  return 1;
}

/* The task stopped waiting (the wait ended or was cancelled): no
 * operation may wake it for this wait any more. */
static void unmark(rt_task_t *t) {
  rt_task_link_t *link;

  for (link = t->owned; link != NULL; link = link->next)
    if (link->stop == stop_linked)
      ((rt_op_t *)link)->waited = 0;
}

static void abandon_wait(void *arg) {
  unmark(arg);
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  rt_task_t *t = (rt_task_t *)ctx;
  int top = lua_gettop(L);
  int i;

  (void)status;
  rt_task_take_op(t);
  unmark(t);
  /* Slot 1 is the time limit; the operations follow. */
  for (i = 2; i <= top; i++) {
    rt_op_t *op = lua_touserdata(L, i);

    if (op->state != OP_RUNNING) {
      lua_pushinteger(L, i - 1);
      return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

int rt_op_wait(lua_State *L, rt_task_t *t, int first, int n, double seconds) {
  int i;

  for (i = 0; i < n; i++) {
    rt_op_t *op = rt_op_check(L, first + i, "core.wait");

    if (op->state != OP_RUNNING) {
      lua_pushinteger(L, i + 1);
      return 1;
    }
    if (op->owner != t)
      return rt_error_invalid(L, "core.wait: an operation can only be "
                                 "waited on by the task that started it");
  }
  if (n == 0 && seconds < 0)
    return rt_error_invalid(L, "core.wait: nothing to wait for");
  for (i = 0; i < n; i++)
    ((rt_op_t *)lua_touserdata(L, first + i))->waited = 1;
  return rt_task_park_timed(L, t, seconds, t, abandon_wait, wait_k);
}

int rt_op_wait_one(lua_State *L, rt_task_t *t, rt_op_t *op, lua_KFunction k) {
  if (op->state != OP_RUNNING)
    return k(L, LUA_OK, (lua_KContext)t);
  op->waited = 1;
  return rt_task_park(L, t, t, abandon_wait, k);
}

void rt_op_wait_over(rt_task_t *t) {
  rt_task_take_op(t);
  unmark(t);
}

const rt_xfer_result_t *rt_op_xfer_result(const rt_op_t *op) {
  if (op->type != OP_XFER || op->state != OP_DONE || op->xfer == NULL)
    return NULL;
  return &op->xfer->result;
}

void rt_op_discard(rt_op_t *op) {
  if (op->state == OP_DONE) {
    op->state = OP_TAKEN;
    release(op);
  }
}

int rt_op_cancelled(const rt_op_t *op) {
  return op->state == OP_CANCELLED || op->state == OP_LOST;
}

static int push_cancelled(lua_State *L, rt_op_t *op) {
  lua_pushnil(L);
  if (op->state == OP_LOST)
    return rt_error_invalid(L, "the operation's result was released when "
                               "the task that started it ended");
  lua_pushliteral(L, "cancelled");
  lua_pushliteral(L, "the operation was cancelled");
  return 3;
}

int rt_xfer_push_outcome(lua_State *L, rt_xfer_t *xfer) {
  const rt_xfer_result_t *res = &xfer->result;
  rt_response_t *r;

  if (res->kind != NULL) {
    lua_pushnil(L);
    lua_pushstring(L, res->kind);
    lua_pushstring(L, res->message);
    lua_pushinteger(L, (lua_Integer)res->code);
    lua_pushboolean(L, res->resent);
    lua_pushnumber(L, res->timings.finished_at);
    return 6;
  }
  r = rt_response_push(L);
  r->status = res->status;
  r->retry_after = res->retry_after;
  r->timings[0] = res->timings.dns;
  r->timings[1] = res->timings.connect;
  r->timings[2] = res->timings.tls;
  r->timings[3] = res->timings.first_byte;
  r->timings[4] = res->timings.total;
  r->finished_at = res->timings.finished_at;
  r->body = rt_buf_take(&xfer->body, &r->body_len);
  r->head = rt_buf_take(&xfer->head, &r->head_len);
  lua_pushstring(L, res->url);
  rt_response_setfield(L, "url");
  lua_pushstring(L, res->method);
  rt_response_setfield(L, "method");
  if (res->redirects > 0) {
    lua_pushinteger(L, res->redirects);
    rt_response_setfield(L, "redirects");
  }
  if (res->resent) {
    lua_pushboolean(L, 1);
    rt_response_setfield(L, "resent");
  }
  return 1;
}

static int push_xfer_result(lua_State *L, rt_op_t *op) {
  /* Until release below, an error raised here leaves the transfer with
   * the operation, which frees it when collected. */
  int n = rt_xfer_push_outcome(L, op->xfer);

  op->state = OP_TAKEN;
  release(op);
  return n;
}

int rt_op_push_result(lua_State *L, rt_op_t *op) {
  switch (op->state) {
  case OP_RUNNING:
    return rt_error_invalid(L, "core.result: the operation has not "
                               "finished: wait for it first");
  case OP_TAKEN:
    return rt_error_invalid(L, "core.result: the transfer's result was "
                               "already taken");
  case OP_CANCELLED:
  case OP_LOST:
    return push_cancelled(L, op);
  case OP_DONE:
    break;
  }
  if (op->type == OP_SIGNAL) {
    lua_pushinteger(L, op->signum);
    return 1;
  }
  if (op->type != OP_XFER) {
    lua_pushboolean(L, 1);
    return 1;
  }
  return push_xfer_result(L, op);
}
