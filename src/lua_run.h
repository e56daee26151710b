/* lua_run.h: one RetryClient request's attempts and fixed waits, run in C
 * on the calling task (core.request).
 *
 * A request of a script's client whose policy reads a response's status
 * alone and whose strategy's waits depend on the attempt's number alone
 * (loop.lua's runs_in_c, strategies.fixed_attempts) needs Lua only to say
 * whether a status is retried and how long to wait. Run here, its retries hold
 * no Lua frame: while it waits in backoff its task's stack holds the script's
 * frames and this function's, at Lua's first size, and its state is a small
 * record. Lua is asked those, and for the client's connection slots when tasks
 * queue for them (slots.lua), on a thread of its own so that the task's
 * stack stays small. Anything else hands the request back to Lua's retry
 * loop (loop.lua) with the attempts made so far: an error, a Retry-After,
 * a status that stands, the last attempt, a request that cannot start.
 * README "Performance".
 *
 * core.request(client, method, url, opts) -> what client:request returns.
 * It asks helpers.plan(client, method, url, opts), on the helper thread,
 * for spec, attempts, options, list, call, specs: the checks and request
 * tables of the call (client.lua), and the strategy's attempts when the
 * request can run here (spec nil when it cannot). For a request that
 * cannot, it returns false, client, list, options, call, specs: the
 * caller has Lua's loop make it.
 * One that can runs its attempts here until one of them needs Lua, then
 * goes on in helpers.after(client, list, options, call, specs, op, n,
 * elapsed, queued, history, previous_wait, started, how), where how is:
 *   "done"        attempt n ended: op holds its outcome, not taken yet;
 *                 elapsed and queued are its time in flight and waiting
 *                 for a slot
 *   "stands"      the same, for a response that ends the request: no
 *                 attempt is left, or its status is not retried
 *   "before"      attempt n was not started: Lua makes it
 *   "closed"      the client was closed before attempt n or during the
 *                 wait before it
 *   "slot_closed" it was closed while attempt n waited for a slot
 *   "closed_attempt" it was closed once attempt n had its slot, before
 *                 the attempt started
 * history holds the records of attempts 1 to n - 1, previous_wait the
 * wait before attempt n, started the request's start (core.now's clock).
 * The helpers it calls:
 *   judge(client, options, spec, status, n, room): whether the response
 *     to attempt n stands, is retried, or goes to the Lua loop
 *     (lua_run.c's JUDGED_*)
 *   wait(options, n): the wait after attempt n (an error it raises ends
 *     the request, as plan_retry's would)
 *   still(client, options): whether the client's settings still let the
 *     next attempt run here
 *   enqueue, release, abandon(slots, ...): slots.lua's (a slot taken or
 *     given back with nobody waiting is counted here)
 * core.run_helpers sets them, once per state.
 */
#ifndef RT_LUA_RUN_H
#define RT_LUA_RUN_H

#include <lua.h>

#include "task.h"
#include "transfer.h"

/* Reads the request table at index 1 into req (lua_core.c's
 * read_request): NULL, or what makes it unfit to send. */
typedef const char *(*rt_read_request_fn)(lua_State *L, rt_request_t *req);

/* What core.request needs of its Lua state's context. */
typedef struct rt_run_env_s {
  rt_sched_t *sched;
  rt_loop_t *loop;
  const int *sealed; /* the state's core.seal flag */
  rt_read_request_fn read;
} rt_run_env_t;

/* Register the run record's metatable. */
void rt_run_open(lua_State *L);

/* core.request, its arguments at 1 to 4. */
int rt_run_request(lua_State *L, const rt_run_env_t *env);

/* client:close's core.cancel_op on the value at idx: -1 when it is not a
 * run record; else 1 when it ended the run's backoff (the run hands its
 * request back as "closed"), 0 when the run was not waiting. */
int rt_run_cancel(lua_State *L, int idx);

/* core.run_helpers(t) */
int rt_run_set_helpers(lua_State *L);

#endif
