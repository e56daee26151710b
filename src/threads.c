/* threads.c: retry.load's worker threads. See threads.h.
 *
 * A group is one malloc'd block shared by the main state's userdata, the
 * worker threads and any task waiting on one of its wakeups; it is freed
 * when the last of them lets go (refs). Each worker thread runs the host's
 * run_worker, which builds, runs and closes a Lua state of its own; then
 * it records that it ended and fires the group's `done` wakeup. Only the
 * main thread joins, and every path joins: group:join, or the userdata's
 * collection (which stops the workers' loads first), at the latest when
 * the main state closes.
 */
#include "threads.h"

#include <lauxlib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "error.h"
#include "task.h"
#include "wakeup.h"

#define GROUP_MT "retry.ThreadGroup"
#define MAX_THREADS 1024

typedef struct rt_group_s rt_group_t;

struct rt_worker_s {
  rt_group_t *group;
  int index; /* 1-based */
  pthread_t thread;
  int joinable;     /* started and not joined yet; main thread only */
  char *share;      /* what the main state asked it to run; owned */
  rt_wakeup_t stop; /* main -> worker: stop the load */
  char *result;     /* under group->mu: the result's JSON, owned */
  int failed;       /* under group->mu: it ended without a result */
  char *error;      /* under group->mu: why, owned (NULL: no memory to say) */
  int ended;        /* under group->mu: its state is closed */
  int at_start;     /* under group->mu: at the start line, or ended */
  atomic_llong requests, errors, retries, started; /* published progress */
};

struct rt_group_s {
  pthread_mutex_t mu;
  int refs; /* under mu: the userdata, and waiters on its wakeups */
  int count;
  long long requests;   /* what the workers claim from, or -1 */
  atomic_llong claimed; /* requests claimed so far */
  const rt_threads_host_t *host;
  rt_wakeup_t done; /* worker -> main: fired as each ends */
  /* The common start (w.start): under mu. Every thread's load counts its
   * duration, schedule and timeline from the moment the last one was
   * ready, so that a slow start (more threads than cores) neither
   * stretches the load past its duration nor inflates its rate. */
  pthread_cond_t start_cv;
  int at_start;      /* workers at the start line or ended */
  int stopping;      /* group:stop() came */
  int stop_signal;   /* the signal that stopped it (0: none) */
  uint64_t start_ns; /* uv_hrtime() of the start, 0 until then */
  rt_worker_t workers[];
};

typedef struct {
  rt_group_t *g; /* NULL once collected */
} group_ud;

static void group_free(rt_group_t *g) {
  int i;

  for (i = 0; i < g->count; i++) {
    rt_worker_t *w = &g->workers[i];

    free(w->share);
    free(w->result);
    free(w->error);
    rt_wakeup_destroy(&w->stop);
  }
  rt_wakeup_destroy(&g->done);
  pthread_cond_destroy(&g->start_cv);
  pthread_mutex_destroy(&g->mu);
  free(g);
}

static void group_hold(void *owner, int delta) {
  rt_group_t *g = owner;
  int refs;

  pthread_mutex_lock(&g->mu);
  refs = g->refs += delta;
  pthread_mutex_unlock(&g->mu);
  if (refs == 0)
    group_free(g);
}

static void set_error(rt_worker_t *w, const char *message) {
  rt_group_t *g = w->group;

  pthread_mutex_lock(&g->mu);
  /* The first reason stands, even when there was no memory to copy it:
   * a later one (the script ended, once the state had freed its memory)
   * would hide it. */
  if (!w->failed && w->result == NULL) {
    w->failed = 1;
    w->error = strdup(message);
  }
  pthread_mutex_unlock(&g->mu);
}

/* Under g->mu: w is at the start line (ready, or ended without getting
 * there); the last of them starts the load for every thread. */
static void reach_start(rt_worker_t *w) {
  rt_group_t *g = w->group;

  if (w->at_start)
    return;
  w->at_start = 1;
  if (++g->at_start == g->count && g->start_ns == 0) {
    g->start_ns = uv_hrtime();
    pthread_cond_broadcast(&g->start_cv);
  }
}

static void *worker_main(void *arg) {
  rt_worker_t *w = arg;
  rt_group_t *g = w->group;

  g->host->run_worker(w, g->host->arg);
  set_error(w, "its script ended before handing over its share of the "
               "load: every thread runs the script from the start and must "
               "reach the same retry.load and run it to its end");
  pthread_mutex_lock(&g->mu);
  w->ended = 1;
  reach_start(w);
  pthread_mutex_unlock(&g->mu);
  /* The userdata's reference holds the group until this thread is joined. */
  rt_wakeup_fire(&g->done);
  return NULL;
}

static rt_group_t *check_group(lua_State *L) {
  group_ud *ud = luaL_checkudata(L, 1, GROUP_MT);

  if (ud->g == NULL)
    rt_error_invalid(L, "the thread group was closed");
  return ud->g;
}

static void stop_all(rt_group_t *g) {
  int i;

  pthread_mutex_lock(&g->mu);
  g->stopping = 1;
  pthread_cond_broadcast(&g->start_cv);
  pthread_mutex_unlock(&g->mu);
  for (i = 0; i < g->count; i++)
    rt_wakeup_fire(&g->workers[i].stop);
}

static void join_all(rt_group_t *g) {
  int i;

  for (i = 0; i < g->count; i++) {
    if (g->workers[i].joinable) {
      pthread_join(g->workers[i].thread, NULL);
      g->workers[i].joinable = 0;
    }
  }
}

static int all_ended(rt_group_t *g) {
  int i, ended = 1;

  pthread_mutex_lock(&g->mu);
  for (i = 0; i < g->count; i++)
    ended = ended && g->workers[i].ended;
  pthread_mutex_unlock(&g->mu);
  return ended;
}

/* Collected (at the latest when the main state closes): no thread may
 * outlive it, so the loads are stopped and every thread joined. */
static int group_gc(lua_State *L) {
  group_ud *ud = luaL_checkudata(L, 1, GROUP_MT);
  rt_group_t *g = ud->g;

  if (g == NULL)
    return 0;
  ud->g = NULL;
  if (!all_ended(g))
    stop_all(g);
  join_all(g);
  group_hold(g, -1);
  return 0;
}

/* threads.start({share, ...}, requests) -> group; with requests, the
 * workers claim the requests they run one by one from that many. */
static int l_start(lua_State *L) {
  const rt_threads_host_t *host = lua_touserdata(L, lua_upvalueindex(1));
  lua_Integer requests = luaL_optinteger(L, 2, -1);
  lua_Integer n, i;
  group_ud *ud;
  rt_group_t *g;
  sigset_t block, old;

  luaL_checktype(L, 1, LUA_TTABLE);
  n = luaL_len(L, 1);
  if (n < 1 || n > MAX_THREADS)
    return rt_error_invalid(L,
                            "threads.start: between 1 and %d threads, "
                            "got %d",
                            MAX_THREADS, (int)n);
  for (i = 1; i <= n; i++) {
    if (lua_geti(L, 1, i) != LUA_TSTRING)
      return rt_error_invalid(L, "threads.start: share %d is not a string",
                              (int)i);
    lua_pop(L, 1);
  }
  ud = lua_newuserdatauv(L, sizeof(*ud), 0);
  ud->g = NULL;
  luaL_setmetatable(L, GROUP_MT);
  g = calloc(1, sizeof(*g) + (size_t)n * sizeof(rt_worker_t));
  if (g == NULL)
    return luaL_error(L, "threads.start: out of memory");
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->start_cv, NULL);
  g->refs = 1;
  g->count = (int)n;
  g->requests = requests;
  atomic_init(&g->claimed, 0);
  g->host = host;
  rt_wakeup_init(&g->done, group_hold, g);
  for (i = 0; i < n; i++) {
    rt_worker_t *w = &g->workers[i];

    w->group = g;
    w->index = (int)i + 1;
    rt_wakeup_init(&w->stop, group_hold, g);
    atomic_init(&w->requests, 0);
    atomic_init(&w->errors, 0);
    atomic_init(&w->retries, 0);
    atomic_init(&w->started, 0);
  }
  ud->g = g; /* from here on, the userdata frees it */
  for (i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    g->workers[i].share = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (g->workers[i].share == NULL)
      return luaL_error(L, "threads.start: out of memory");
  }
  /* SIGINT and SIGTERM go to the main thread, whose load stops the
   * workers' loads: the threads start with them blocked. */
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  for (i = 0; i < n; i++) {
    rt_worker_t *w = &g->workers[i];
    int rc = pthread_create(&w->thread, NULL, worker_main, w);

    if (rc == 0) {
      w->joinable = 1;
      continue;
    }
    set_error(w, "the thread could not be started");
    pthread_mutex_lock(&g->mu);
    w->ended = 1;
    reach_start(w);
    pthread_mutex_unlock(&g->mu);
    rt_wakeup_fire(&g->done);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return 1;
}

/* The running task behind the handle at idx. */
static rt_task_t *running_task(lua_State *L, int idx, const char *what) {
  rt_task_t *t = rt_task_from(L, idx);

  if (t->state != RT_TASK_RUNNING || rt_task_check(L, t->sched, what) != t)
    rt_error_invalid(L, "%s: expected the running task's handle", what);
  return t;
}

/* group:wait(task_handle, seen) -> how many workers have ended */
static int l_wait(lua_State *L) {
  rt_group_t *g = check_group(L);
  rt_task_t *t = running_task(L, 2, "group:wait");
  lua_Integer seen = luaL_checkinteger(L, 3);

  lua_settop(L, 0);
  return rt_wakeup_wait(L, t, &g->done, (unsigned long)seen);
}

/* group:failed() -> whether a worker has ended without a result */
static int l_failed(lua_State *L) {
  rt_group_t *g = check_group(L);
  int i, failed = 0;

  pthread_mutex_lock(&g->mu);
  for (i = 0; i < g->count; i++)
    failed = failed || g->workers[i].failed;
  pthread_mutex_unlock(&g->mu);
  lua_pushboolean(L, failed);
  return 1;
}

/* group:stop([signum]): stop every worker's load; signum, the signal that
 * interrupted the main thread's, is what w.stop_signal() then reads. */
static int l_stop(lua_State *L) {
  rt_group_t *g = check_group(L);
  int signum = (int)luaL_optinteger(L, 2, 0);

  pthread_mutex_lock(&g->mu);
  if (g->stop_signal == 0)
    g->stop_signal = signum;
  pthread_mutex_unlock(&g->mu);
  stop_all(g);
  return 0;
}

/* group:start_time() -> the loads' common start (w.start) in core.now()
 * seconds, or nil before it */
static int l_start_time(lua_State *L) {
  rt_group_t *g = check_group(L);
  uint64_t start;

  pthread_mutex_lock(&g->mu);
  start = g->start_ns;
  pthread_mutex_unlock(&g->mu);
  if (start == 0)
    lua_pushnil(L);
  else
    lua_pushnumber(L, (lua_Number)start / 1e9);
  return 1;
}

/* group:progress() -> the workers' published counters, added up */
static int l_progress(lua_State *L) {
  rt_group_t *g = check_group(L);
  long long requests = 0, errors = 0, retries = 0, started = 0;
  int i;

  for (i = 0; i < g->count; i++) {
    rt_worker_t *w = &g->workers[i];

    requests += atomic_load(&w->requests);
    errors += atomic_load(&w->errors);
    retries += atomic_load(&w->retries);
    started += atomic_load(&w->started);
  }
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, errors);
  lua_setfield(L, -2, "errors");
  lua_pushinteger(L, retries);
  lua_setfield(L, -2, "retries");
  lua_pushinteger(L, started);
  lua_setfield(L, -2, "started");
  return 1;
}

/* group:results() -> {{result = json} or {error = message}, ...} */
static int l_results(lua_State *L) {
  rt_group_t *g = check_group(L);
  int i;

  if (!all_ended(g))
    return rt_error_invalid(L, "group:results: the threads have not all "
                               "ended");
  /* Ended workers change nothing more: read without the mutex (all_ended
   * took it after their last write). */
  lua_createtable(L, g->count, 0);
  for (i = 0; i < g->count; i++) {
    rt_worker_t *w = &g->workers[i];

    lua_createtable(L, 0, 1);
    if (w->result != NULL) {
      lua_pushstring(L, w->result);
      lua_setfield(L, -2, "result");
    } else {
      lua_pushstring(L, w->error != NULL ? w->error : "not enough memory");
      lua_setfield(L, -2, "error");
    }
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* group:join(): wait for every thread to end (the caller stops them
 * first unless they have ended). */
static int l_join(lua_State *L) {
  join_all(check_group(L));
  return 0;
}

/* ------------------------------------------------------------------ */
/* The worker's side                                                   */
/* ------------------------------------------------------------------ */

static rt_worker_t *worker_of(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

/* w.hand_over(json): the share's result, for the main thread to merge. */
static int w_hand_over(lua_State *L) {
  rt_worker_t *w = worker_of(L);
  const char *text = luaL_checkstring(L, 1);
  char *copy = strdup(text);
  int taken = 0;

  if (copy == NULL)
    return luaL_error(L, "hand_over: out of memory");
  pthread_mutex_lock(&w->group->mu);
  if (w->result == NULL) {
    w->result = copy;
    taken = 1;
  }
  pthread_mutex_unlock(&w->group->mu);
  if (!taken)
    free(copy);
  return 0;
}

/* w.wait_stop(task_handle): park until the main thread stops the load
 * (at once if it already has). */
static int w_wait_stop(lua_State *L) {
  rt_worker_t *w = worker_of(L);
  rt_task_t *t = running_task(L, 1, "wait_stop");

  lua_settop(L, 0);
  return rt_wakeup_wait(L, t, &w->stop, 0);
}

/* w.start() -> the load's start in core.now() seconds, the same in every
 * thread: the moment the last worker was ready to start its share (or had
 * ended without reaching it). Blocks this thread until then, before its
 * load has begun: nothing of its own waits meanwhile. A stop (Ctrl-C, a
 * failed thread) releases it at once, with the time of the release. */
static int w_start(lua_State *L) {
  rt_worker_t *w = worker_of(L);
  rt_group_t *g = w->group;
  uint64_t start;

  pthread_mutex_lock(&g->mu);
  reach_start(w);
  while (g->start_ns == 0 && !g->stopping)
    pthread_cond_wait(&g->start_cv, &g->mu);
  start = g->start_ns != 0 ? g->start_ns : uv_hrtime();
  pthread_mutex_unlock(&g->mu);
  lua_pushnumber(L, (lua_Number)start / 1e9);
  return 1;
}

/* w.stop_signal() -> the signal that stopped the load (0: none, or not a
 * signal): a worker names it in its requests' cancel. */
static int w_stop_signal(lua_State *L) {
  rt_group_t *g = worker_of(L)->group;
  int signum;

  pthread_mutex_lock(&g->mu);
  signum = g->stop_signal;
  pthread_mutex_unlock(&g->mu);
  lua_pushinteger(L, signum);
  return 1;
}

/* w.claim() -> the number of the next request of the load to start
 * (1-based, across all threads), or nil when `requests` have all been
 * claimed: the threads of a closed model share the count out as they go,
 * so a thread that gets less CPU runs fewer, and none idles while another
 * still has a fixed share left. */
static int w_claim(lua_State *L) {
  rt_group_t *g = worker_of(L)->group;
  long long i = atomic_fetch_add(&g->claimed, 1);

  if (g->requests >= 0 && i >= g->requests)
    lua_pushnil(L);
  else
    lua_pushinteger(L, (lua_Integer)i + 1);
  return 1;
}

/* w.publish(requests, errors, retries, started): for the progress line. */
static int w_publish(lua_State *L) {
  rt_worker_t *w = worker_of(L);

  atomic_store(&w->requests, (long long)luaL_checkinteger(L, 1));
  atomic_store(&w->errors, (long long)luaL_checkinteger(L, 2));
  atomic_store(&w->retries, (long long)luaL_checkinteger(L, 3));
  atomic_store(&w->started, (long long)luaL_checkinteger(L, 4));
  return 0;
}

static int enter_worker(lua_State *L) {
  rt_worker_t *w = lua_touserdata(L, 1);
  static const luaL_Reg fns[] = {{"hand_over", w_hand_over},
                                 {"wait_stop", w_wait_stop},
                                 {"publish", w_publish},
                                 {"claim", w_claim},
                                 {"start", w_start},
                                 {"stop_signal", w_stop_signal},
                                 {NULL, NULL}};

  lua_getglobal(L, "require");
  lua_pushliteral(L, "retry.load");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "become_worker");
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, w->index);
  lua_setfield(L, -2, "index");
  lua_pushinteger(L, w->group->count);
  lua_setfield(L, -2, "count");
  lua_pushstring(L, w->share);
  lua_setfield(L, -2, "share");
  lua_pushlightuserdata(L, w);
  luaL_setfuncs(L, fns, 1);
  lua_call(L, 1, 0);
  return 0;
}

int rt_threads_enter_worker(lua_State *L, rt_worker_t *w) {
  lua_pushcfunction(L, enter_worker);
  lua_pushlightuserdata(L, w);
  return lua_pcall(L, 1, 0, 0);
}

int rt_threads_handed_over(rt_worker_t *w) {
  int done;

  pthread_mutex_lock(&w->group->mu);
  done = w->result != NULL;
  pthread_mutex_unlock(&w->group->mu);
  return done;
}

void rt_threads_worker_failed(rt_worker_t *w, const char *message) {
  set_error(w, message);
}

/* ------------------------------------------------------------------ */
/* The module                                                          */
/* ------------------------------------------------------------------ */

static int luaopen_threads(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"wait", l_wait},         {"failed", l_failed},
      {"stop", l_stop},         {"start_time", l_start_time},
      {"progress", l_progress}, {"results", l_results},
      {"join", l_join},         {NULL, NULL}};

  if (luaL_newmetatable(L, GROUP_MT)) {
    lua_pushcfunction(L, group_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_start, 1);
  lua_setfield(L, -2, "start");
  return 1;
}

void rt_threads_preload(lua_State *L, const rt_threads_host_t *host) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushlightuserdata(L, (void *)host);
  lua_pushcclosure(L, luaopen_threads, 1);
  lua_setfield(L, -2, "retry.threads");
  lua_pop(L, 1);
}
