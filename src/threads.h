/* threads.h: retry.load's worker threads (lretry load --threads N).
 *
 * The Lua module "retry.threads", which only the lretry host provides: the
 * main state starts a group of N OS threads, each of which builds a Lua
 * state of its own through the host (rt_threads_host_t), runs the same
 * script in it as worker k of N, and hands back its share's result as
 * JSON text. Nothing Lua crosses a thread: only strings and counters, under
 * the group's mutex or in atomics. See README "Load checks" and
 * lua/retry/load.lua for what the workers run.
 *
 * In the main state:
 *   threads.start({share, ...}, requests) -> group
 *                                        one thread per share text; with
 *                                        requests, w.claim shares them out
 *   group:wait(task_handle, seen) -> n   park until more than `seen`
 *                                        workers have ended; n ended
 *   group:failed() -> bool               a worker ended without a result
 *   group:stop([signum])                 stop every worker's load (Ctrl-C:
 *                                        2, SIGTERM: 15)
 *   group:start_time() -> seconds | nil  the workers' common start
 *   group:progress() -> {requests, errors, retries, started}
 *                                        the workers' published counters
 *   group:results() -> {{result = json} | {error = message}, ...}
 *                                        once all have ended
 *   group:join()                         wait for every thread to end
 *                                        (also on collection: stop, join)
 * In a worker's state, load.become_worker(w) gets w = {index, count, share,
 * hand_over(json), wait_stop(task_handle), publish(requests, errors,
 * retries, started), claim() -> the next request's number, or nil,
 * start() -> the load's start in core.now() seconds, common to all threads
 * (blocks until every worker is ready or has ended, or the load stopped),
 * stop_signal() -> the signal group:stop was given, or 0}.
 */
#ifndef RT_THREADS_H
#define RT_THREADS_H

#include <lua.h>

typedef struct rt_worker_s rt_worker_t;

/* How the host runs a worker: build a state as for the main script, call
 * rt_threads_enter_worker, run the script, and report with
 * rt_threads_worker_failed when it fails before handing over a result.
 * The state must be closed before it returns. */
typedef struct rt_threads_host_s {
  void (*run_worker)(rt_worker_t *w, void *arg);
  void *arg;
} rt_threads_host_t;

/* Register "retry.threads" in package.preload; host must outlive every
 * state and thread. */
void rt_threads_preload(lua_State *L, const rt_threads_host_t *host);

/* In a worker's state: require("retry.load").become_worker(w). Returns a
 * Lua status; on error the message is on the stack. */
int rt_threads_enter_worker(lua_State *L, rt_worker_t *w);

/* Whether the worker has handed over its result (its script may then end
 * with any error: the result is what counts). */
int rt_threads_handed_over(rt_worker_t *w);

/* The worker failed: message says why (copied). The first one is kept. */
void rt_threads_worker_failed(rt_worker_t *w, const char *message);

#endif
