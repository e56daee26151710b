/* op.h: operations, the things a task starts and waits on.
 *
 * An operation is a transfer, a timer or an interrupt watch, a Lua userdata
 * ("retry.Operation") owned by the task that started it. The task may start
 * several, wait for the first of a set to finish (with a time limit), and
 * cancel any one; each releases its libcurl or libuv handles exactly once, on
 * whichever path comes first: its result is taken, it is cancelled, its task is
 * cancelled or ends, the Lua state closes, or it is collected. A finished
 * transfer's result is turned into a Response or an error here, from the
 * plain record transfer.c hands over.
 */
#ifndef RT_OP_H
#define RT_OP_H

#include <lua.h>

#include "task.h"
#include "transfer.h"

typedef struct rt_op_s rt_op_t;

/* Register the metatable. */
void rt_op_open(lua_State *L);

/* Start a transfer owned by t and push its operation. Returns 0, or a
 * negative UV_E* code (nothing pushed, nothing started). */
int rt_op_start_xfer(lua_State *L, rt_task_t *t, rt_loop_t *loop,
                     const rt_request_t *req);

/* Start a timer owned by t that finishes after seconds, and push it. */
void rt_op_start_timer(lua_State *L, rt_task_t *t, double seconds);

/* Start an operation owned by t that finishes when SIGINT or SIGTERM
 * arrives (its result: the signal's number), and push it. While it runs,
 * neither ends the process; once it has fired (or is released) both have
 * their default action again. Returns 0, or a negative UV_E* code
 * (nothing pushed). */
int rt_op_start_interrupt(lua_State *L, rt_task_t *t);

/* The operation at idx, or an `invalid` error naming `what`. */
rt_op_t *rt_op_check(lua_State *L, int idx, const char *what);

/* Whether op's transfer sent its request on a connection (libcurl called
 * the pre-request callback), before it ended or was cancelled: whether the
 * server may have seen it. 0 for timers and signals. */
int rt_op_went_out(const rt_op_t *op);

/* Whether libcurl sent op's request a second time, on a new connection,
 * because its kept-alive one had died (see on_prereq in transfer.c). */
int rt_op_resent(const rt_op_t *op);

/* Stop a running operation; it finishes as cancelled and a wait on it
 * returns. Returns 0 when it had already finished. */
int rt_op_cancel(rt_op_t *op);

/* Park t until one of the n operations at stack slots first.. has
 * finished, or seconds pass (< 0: no limit). Resumes with the 1-based
 * position of the first finished one in the set, or nil when the time ran
 * out. Each must be owned by t. Use as a return expression. */
int rt_op_wait(lua_State *L, rt_task_t *t, int first, int n, double seconds);

/* Park t until op, owned by t, has finished, then run k (ctx: t), which
 * must first call rt_op_wait_over. A cancel of t raises instead, and k
 * does not run. For C code that waits on one operation and goes on in C.
 * Use as a return expression. */
int rt_op_wait_one(lua_State *L, rt_task_t *t, rt_op_t *op, lua_KFunction k);

/* In the continuation of rt_op_wait_one: the wait is over. */
void rt_op_wait_over(rt_task_t *t);

/* The result of a finished transfer not taken yet, or NULL (a timer, a
 * cancelled or running operation, a result taken). */
const rt_xfer_result_t *rt_op_xfer_result(const rt_op_t *op);

/* Let go of a finished transfer's result unread: its handles go back at
 * once, and it counts as taken. */
void rt_op_discard(rt_op_t *op);

/* Whether op was stopped before it finished. */
int rt_op_cancelled(const rt_op_t *op);

/* Push the outcome of a finished operation: for a transfer a Response, or
 * nil, kind, message, curl code, resent, finished_at; for a timer or an
 * interrupt true; for a cancelled one nil, "cancelled", message. A
 * transfer's result can be taken once. */
int rt_op_push_result(lua_State *L, rt_op_t *op);

/* Push a finished transfer's outcome as rt_op_push_result does (a
 * Response, taking its body and headers, or the six values of an error).
 * Returns how many values it pushed. */
int rt_xfer_push_outcome(lua_State *L, rt_xfer_t *xfer);

#endif
