/* lua_run.c: one RetryClient request's attempts and fixed waits, run in C.
 * See lua_run.h for what it is for and the Lua side.
 *
 * The request's state is a run record, a userdata at stack slot RUN marked
 * to be closed: when an error (a cancel of the task) unwinds core.request, its
 * __close gives back what the request held (a connection slot, its place
 * in the slot queue, its entry in client.ops) and names the request and
 * the attempt in an error of lretry's, as the Lua loop does (attempt.lua's
 * fail). A run that returns has given everything back first.
 */
#include "lua_run.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "op.h"
#include "udata.h"

#define RUN_MT "retry.Run"
/* Its address keys the Run metatable (udata.h). */
static const char run_key = 'r';
/* Registry keys: the helpers table, and the thread they run on. */
static const char helpers_key = 'h';
static const char helper_thread_key = 't';

/* helpers.judge's verdicts: the response stands, is retried, or the
 * request goes on in the Lua loop (its client's settings changed since it
 * began, or its strategy now allows more attempts than this run has room
 * for). */
enum { JUDGED_STANDS = 0, JUDGED_RETRIED = 1, JUDGED_TO_LUA = 2 };

/* The helpers, by their place in the registry's helpers array. */
enum {
  H_PLAN = 1,
  H_JUDGE,
  H_WAIT,
  H_STILL,
  H_ENQUEUE,
  H_RELEASE,
  H_ABANDON,
  H_AFTER
};
static const char *const helper_names[] = {NULL,      "plan",    "judge",
                                           "wait",    "still",   "enqueue",
                                           "release", "abandon", "after"};
#define HELPER_COUNT 8

/* core.request's stack slots: its arguments (client, method, url, opts),
 * then what the plan helper returned (spec, attempts, options, list, call,
 * specs), the spec copied to 1 for read_request and the client to 2. */
enum {
  SPEC = 1,
  CLIENT = 2,
  PLANNED = 5,
  ATTEMPTS = 6,
  OPTIONS = 7,
  LIST = 8,
  CALL = 9,
  SPECS = 10,
  RUN = 11
};

/* The run record's user values. */
enum { UV_OP = 1, UV_ENTRY, UV_CLIENT, UV_SPEC, UV_COUNT = 4 };

/* The most attempts a run makes (loop.lua's MAX_DRIVEN_ATTEMPTS). */
#define MAX_RUN_ATTEMPTS 64

typedef struct run_record_s {
  double elapsed; /* in flight */
  double queued;  /* waiting for a slot; 0 for none */
  double wait;    /* the wait after it */
  int status;
  unsigned char resent;
  unsigned char wait_int; /* the strategy gave the wait as an integer */
} run_record_t;

typedef struct rt_run_s {
  rt_task_t *task;          /* borrowed: the caller */
  const rt_run_env_t *env;  /* borrowed: the state's */
  double started;           /* the request's start */
  double since;             /* when the current attempt began to wait for
                               a slot, then when it started */
  double queued;            /* the current attempt's wait for a slot */
  int n;                    /* the current attempt */
  int attempts;             /* the strategy's */
  unsigned char held;       /* holds a slot of the client */
  unsigned char waiting;    /* in backoff, listed in client.ops */
  unsigned char closed;     /* client:close ended the backoff */
  unsigned char in_attempt; /* waiting for its slot or its transfer: an
                               error then names the request and attempt */
  unsigned char live;       /* not returned yet: __close gives back */
  run_record_t records[];   /* attempts 1 .. attempts - 1 */
} rt_run_t;

static rt_run_t *run_at(lua_State *L) {
  return lua_touserdata(L, RUN);
}

/* ------------------------------------------------------------------ */
/* Lua's answers, on a thread of their own                             */
/* ------------------------------------------------------------------ */

/* Call helper `id` with the nargs values on top of L, on the helper
 * thread: a Lua function called on the task's own stack, deep under the
 * script's frames, would make Lua double that stack for the request's
 * life. Leaves nres results on L; an error is raised on L. */
static void call_helper(lua_State *L, int id, int nargs, int nres) {
  lua_State *H;

  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &helper_thread_key) != LUA_TTHREAD) {
    lua_pop(L, 1);
    H = lua_newthread(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &helper_thread_key);
  } else {
    H = lua_tothread(L, -1);
    lua_pop(L, 1);
  }
  if (lua_rawgetp(H, LUA_REGISTRYINDEX, &helpers_key) != LUA_TTABLE) {
    lua_settop(H, 0);
    rt_error_invalid(L, "core.request: core.run_helpers was not called");
  }
  lua_rawgeti(H, -1, id);
  lua_remove(H, -2);
  lua_xmove(L, H, nargs);
  if (lua_pcall(H, nargs, nres, 0) != LUA_OK) {
    lua_xmove(H, L, 1);
    lua_settop(H, 0);
    lua_error(L);
  }
  lua_xmove(H, L, nres);
}

/* core.run_helpers{plan =, judge =, wait =, still =, enqueue =, release =,
 * abandon =, after =}: kept as an array, for call_helper to find by
 * number. */
int rt_run_set_helpers(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_createtable(L, HELPER_COUNT, 0);
  for (int id = 1; id <= HELPER_COUNT; id++) {
    if (lua_getfield(L, 1, helper_names[id]) != LUA_TFUNCTION)
      return rt_error_invalid(L, "core.run_helpers: %s must be a function",
                              helper_names[id]);
    lua_rawseti(L, 2, id);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &helpers_key);
  return 0;
}

/* client[field], raw: a client is a table with methods in its metatable. */
static int push_client_field(lua_State *L, int client, const char *field) {
  lua_pushstring(L, field);
  return lua_rawget(L, client);
}

/* client.ops[op] = value (true, or nil) for the operation at op_idx. */
static void set_active(lua_State *L, int client, int op_idx, int value) {
  op_idx = lua_absindex(L, op_idx);
  if (push_client_field(L, client, "ops") == LUA_TTABLE) {
    lua_pushvalue(L, op_idx);
    if (value)
      lua_pushboolean(L, 1);
    else
      lua_pushnil(L);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
}

/* counters[field] += 1 in the table at idx. */
static void count(lua_State *L, int idx, const char *field) {
  idx = lua_absindex(L, idx);
  lua_getfield(L, idx, field);
  lua_pushinteger(L, lua_tointeger(L, -1) + 1);
  lua_setfield(L, idx, field);
  lua_pop(L, 1);
}

/* The fields of a Slots table (slots.lua) the two fast paths below read
 * and write; slots.lua does the rest. */
static lua_Number slots_number(lua_State *L, int slots, const char *field) {
  lua_Number v;

  lua_getfield(L, slots, field);
  v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static void slots_add_used(lua_State *L, int slots, int delta) {
  lua_getfield(L, slots, "used");
  lua_pushinteger(L, lua_tointeger(L, -1) + delta);
  lua_setfield(L, slots, "used");
  lua_pop(L, 1);
}

/* Slots:try_take: a slot is free and nobody waits for one. */
static int slots_try_take(lua_State *L, int slots) {
  lua_Number limit = slots_number(L, slots, "limit");

  if (limit != 0 &&
      (slots_number(L, slots, "used") >= limit ||
       slots_number(L, slots, "head") <= slots_number(L, slots, "tail")))
    return 0;
  slots_add_used(L, slots, 1);
  return 1;
}

/* Give the client's slot back, if the run holds one: to the pool, or,
 * when tasks wait for one, through Slots:release. */
static void give_slot(lua_State *L, rt_run_t *r, int client) {
  int slots;

  if (!r->held)
    return;
  r->held = 0;
  push_client_field(L, client, "slots");
  slots = lua_gettop(L);
  if (slots_number(L, slots, "head") > slots_number(L, slots, "tail")) {
    slots_add_used(L, slots, -1);
    lua_pop(L, 1);
    return;
  }
  call_helper(L, H_RELEASE, 1, 0);
}

/* ------------------------------------------------------------------ */
/* The run                                                             */
/* ------------------------------------------------------------------ */

static int run_attempt(lua_State *L, rt_run_t *r);
static int after_slot(lua_State *L, int status, lua_KContext ctx);
static int after_transfer(lua_State *L, int status, lua_KContext ctx);
static int after_wait(lua_State *L, int status, lua_KContext ctx);

static int client_closed(lua_State *L) {
  int closed;

  push_client_field(L, CLIENT, "closed");
  closed = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return closed;
}

static int returned_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return lua_gettop(L) - (int)ctx;
}

/* Push helper `id` onto L, for a call on the task's own stack. */
static void push_helper(lua_State *L, int id) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &helpers_key);
  lua_rawgeti(L, -1, id);
  lua_remove(L, -2);
}

/* A record's wait as the strategy gave it, integer or float. */
static void push_wait(lua_State *L, const run_record_t *rec) {
  if (rec->wait_int)
    lua_pushinteger(L, (lua_Integer)rec->wait);
  else
    lua_pushnumber(L, rec->wait);
}

/* Hand the request back to Lua's loop, on the task's stack now that the
 * run waits no more: helpers.after(client, list, options, call, specs,
 * op, n, elapsed, queued, history, previous_wait, started, how), whose
 * results core.request returns. */
static int finish(lua_State *L, rt_run_t *r, const char *how, double elapsed) {
  int i;

  r->live = 0;
  r->in_attempt = 0;
  lua_settop(L, RUN);
  luaL_checkstack(L, 16, "a request's outcome");
  push_helper(L, H_AFTER);
  lua_pushvalue(L, CLIENT);
  lua_pushvalue(L, LIST);
  lua_pushvalue(L, OPTIONS);
  lua_pushvalue(L, CALL);
  lua_pushvalue(L, SPECS);
  lua_getiuservalue(L, RUN, UV_OP);
  lua_pushnil(L);
  lua_setiuservalue(L, RUN, UV_OP);
  lua_pushinteger(L, r->n);
  lua_pushnumber(L, elapsed);
  lua_pushnumber(L, r->queued);
  lua_createtable(L, r->n - 1, 0);
  for (i = 1; i < r->n; i++) {
    const run_record_t *rec = &r->records[i - 1];

    lua_createtable(L, 0, 7);
    lua_pushinteger(L, i);
    lua_setfield(L, -2, "attempt");
    lua_pushnumber(L, rec->elapsed);
    lua_setfield(L, -2, "elapsed");
    lua_pushinteger(L, rec->status);
    lua_setfield(L, -2, "status");
    if (rec->resent) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "resent");
    }
    lua_pushliteral(L, "status");
    lua_setfield(L, -2, "reason");
    push_wait(L, rec);
    lua_setfield(L, -2, "wait");
    if (rec->queued > 0) {
      lua_pushnumber(L, rec->queued);
      lua_setfield(L, -2, "queued");
    }
    lua_rawseti(L, -2, i);
  }
  if (r->n > 1)
    push_wait(L, &r->records[r->n - 2]);
  else
    lua_pushnil(L);
  lua_pushnumber(L, r->started);
  lua_pushstring(L, how);
  lua_callk(L, 13, LUA_MULTRET, RUN, returned_k);
  return returned_k(L, LUA_OK, RUN);
}

static int start_transfer(lua_State *L, rt_run_t *r) {
  int top = lua_gettop(L);
  rt_request_t req;
  const char *bad;
  rt_op_t *op;

  /* A sealed state (a worker thread's share of a load is done) or a
   * request unfit to send: Lua's loop makes the attempt, and says so. */
  bad = *r->env->sealed ? "sealed" : r->env->read(L, &req);
  if (bad == NULL && rt_op_start_xfer(L, r->task, r->env->loop, &req) != 0)
    bad = "refused";
  if (bad != NULL) {
    lua_settop(L, top);
    give_slot(L, r, CLIENT);
    return finish(L, r, "before", 0);
  }
  op = lua_touserdata(L, -1);
  lua_setiuservalue(L, RUN, UV_OP);
  lua_settop(L, top);
  r->since = rt_clock_now();
  push_client_field(L, CLIENT, "counters");
  count(L, -1, "attempts");
  if (r->n > 1) {
    count(L, -1, "retries");
    lua_getfield(L, -1, "retries_by_reason");
    count(L, -1, "status");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_getiuservalue(L, RUN, UV_OP);
  set_active(L, CLIENT, -1, 1);
  lua_pop(L, 1);
  return rt_op_wait_one(L, r->task, op, after_transfer);
}

/* Attempt r->n: a connection slot, then its transfer. */
static int run_attempt(lua_State *L, rt_run_t *r) {
  r->queued = 0;
  if (r->n > 1) {
    if (client_closed(L))
      return finish(L, r, "closed", 0);
    /* Settings changed during the wait (a limit per host, hooks): the Lua
     * loop makes this attempt and the rest. */
    lua_pushvalue(L, CLIENT);
    lua_pushvalue(L, OPTIONS);
    call_helper(L, H_STILL, 2, 1);
    if (!lua_toboolean(L, -1))
      return finish(L, r, "before", 0);
    lua_pop(L, 1);
  }
  r->in_attempt = 1;
  if (push_client_field(L, CLIENT, "slots") != LUA_TNIL) {
    if (!slots_try_take(L, lua_gettop(L))) {
      rt_task_push_handle(L, r->task);
      call_helper(L, H_ENQUEUE, 2, 1);
      lua_setiuservalue(L, RUN, UV_ENTRY);
      r->since = rt_clock_now();
      return rt_task_park_lua_k(L, r->task, after_slot);
    }
    r->held = 1;
  }
  lua_pop(L, 1);
  return start_transfer(L, r);
}

/* Woken by the slot queue: true with a slot, false when the client was
 * closed (the queue sent every waiter away). */
static int after_slot(lua_State *L, int status, lua_KContext ctx) {
  rt_run_t *r = run_at(L);
  int granted = lua_gettop(L) <= RUN || lua_toboolean(L, RUN + 1) ||
                !lua_isboolean(L, RUN + 1);

  (void)status;
  (void)ctx;
  lua_settop(L, RUN);
  lua_pushnil(L);
  lua_setiuservalue(L, RUN, UV_ENTRY);
  r->queued = rt_clock_now() - r->since;
  if (!granted)
    return finish(L, r, "slot_closed", 0);
  r->held = 1;
  /* Closed after the slot came to it, before it ran: nothing goes out. */
  if (client_closed(L)) {
    give_slot(L, r, CLIENT);
    return finish(L, r, "closed_attempt", 0);
  }
  return start_transfer(L, r);
}

static int after_transfer(lua_State *L, int status, lua_KContext ctx) {
  rt_run_t *r = run_at(L);
  const rt_xfer_result_t *res;
  run_record_t *rec;
  double elapsed = rt_clock_now() - r->since;
  rt_op_t *op;
  int verdict;

  (void)status;
  (void)ctx;
  rt_op_wait_over(r->task);
  r->in_attempt = 0;
  lua_settop(L, RUN);
  lua_getiuservalue(L, RUN, UV_OP);
  op = lua_touserdata(L, -1);
  set_active(L, CLIENT, -1, 0);
  lua_pop(L, 1);
  give_slot(L, r, CLIENT);
  res = rt_op_xfer_result(op);
  /* What Lua's loop decides: an error (a cancel by client:close too), a
   * Retry-After with attempts left. */
  if (res == NULL || res->kind != NULL || res->retry_after > 0)
    return finish(L, r, "done", elapsed);
  /* Lua's verdict, with the client's settings and the strategy's
   * attempts read again, as the Lua loop reads them at every attempt. */
  lua_pushvalue(L, CLIENT);
  lua_pushvalue(L, OPTIONS);
  lua_pushvalue(L, SPEC);
  lua_pushinteger(L, res->status);
  lua_pushinteger(L, r->n);
  lua_pushinteger(L, r->attempts);
  call_helper(L, H_JUDGE, 6, 1);
  verdict = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (verdict == JUDGED_STANDS)
    return finish(L, r, "stands", elapsed);
  if (verdict != JUDGED_RETRIED)
    return finish(L, r, "done", elapsed);
  rec = &r->records[r->n - 1];
  rec->elapsed = elapsed;
  rec->queued = r->queued;
  rec->status = (int)res->status;
  rec->resent = res->resent;
  lua_pushvalue(L, OPTIONS);
  lua_pushinteger(L, r->n);
  call_helper(L, H_WAIT, 2, 1);
  rec->wait = lua_tonumber(L, -1);
  rec->wait_int = (unsigned char)lua_isinteger(L, -1);
  lua_pop(L, 1);
  rt_op_discard(op);
  lua_pushnil(L);
  lua_setiuservalue(L, RUN, UV_OP);
  /* The operation is garbage now: the collector, which paces itself by
   * what is allocated, is told of it. */
  lua_gc(L, LUA_GCSTEP, 1);
  r->n++;
  if (!(rec->wait > 0))
    return run_attempt(L, r);
  /* The wait is the task's own timed park: no timer to allocate. The run
   * record stands in client.ops for it, for client:close to end
   * (rt_run_cancel). */
  set_active(L, CLIENT, RUN, 1);
  r->waiting = 1;
  return rt_task_park_timed(L, r->task, rec->wait, NULL, NULL, after_wait);
}

static int after_wait(lua_State *L, int status, lua_KContext ctx) {
  rt_run_t *r = run_at(L);

  (void)status;
  (void)ctx;
  lua_settop(L, RUN);
  r->waiting = 0;
  set_active(L, CLIENT, RUN, 0);
  if (r->closed)
    return finish(L, r, "closed", 0);
  return run_attempt(L, r);
}

int rt_run_cancel(lua_State *L, int idx) {
  rt_run_t *r = rt_udata_test(L, idx, &run_key);

  if (r == NULL)
    return -1;
  if (!r->live || !r->waiting || r->closed)
    return 0;
  r->closed = 1;
  rt_task_wake(r->task, 0);
  return 1;
}

/* __close(run, err): the run ended by an error (a cancel of its task):
 * give back what it holds, and name the request and attempt in the error
 * if it is one of lretry's and does not yet. */
static int run_close(lua_State *L) {
  rt_run_t *r = rt_udata_test(L, 1, &run_key);
  int client;

  if (r == NULL || !r->live)
    return 0;
  r->live = 0;
  lua_settop(L, 2);
  lua_getiuservalue(L, 1, UV_CLIENT);
  client = lua_gettop(L);
  if (lua_getiuservalue(L, 1, UV_OP) != LUA_TNIL) {
    set_active(L, client, -1, 0);
    rt_op_discard(lua_touserdata(L, -1));
  }
  lua_pop(L, 1);
  if (r->waiting) {
    r->waiting = 0;
    set_active(L, client, 1, 0);
  }
  if (lua_getiuservalue(L, 1, UV_ENTRY) != LUA_TNIL) {
    push_client_field(L, client, "slots");
    lua_insert(L, -2);
    call_helper(L, H_ABANDON, 2, 0);
  } else {
    lua_pop(L, 1);
  }
  give_slot(L, r, client);
  /* As attempt.lua's fail: an error of the slot wait or the transfer. */
  if (!r->in_attempt)
    return 0;
  rt_error_push_metatable(L);
  if (lua_istable(L, 2) && lua_getmetatable(L, 2) && lua_rawequal(L, -1, -2)) {
    lua_getiuservalue(L, 1, UV_SPEC);
    if (lua_getfield(L, 2, "url") == LUA_TNIL) {
      lua_getfield(L, -2, "method");
      lua_setfield(L, 2, "method");
      lua_getfield(L, -2, "url");
      lua_setfield(L, 2, "url");
    }
    if (lua_getfield(L, 2, "attempt") == LUA_TNIL) {
      lua_pushinteger(L, r->n);
      lua_setfield(L, 2, "attempt");
    }
  }
  return 0;
}

void rt_run_open(lua_State *L) {
  if (luaL_newmetatable(L, RUN_MT)) {
    lua_pushcfunction(L, run_close);
    lua_setfield(L, -2, "__close");
    lua_pushliteral(L, RUN_MT);
    lua_setfield(L, -2, "__name");
  }
  rt_udata_keep_metatable(L, &run_key);
  lua_pop(L, 1);
}

int rt_run_request(lua_State *L, const rt_run_env_t *env) {
  lua_Integer attempts;
  rt_run_t *r;

  lua_settop(L, 4);
  for (int i = 1; i <= 4; i++)
    lua_pushvalue(L, i);
  call_helper(L, H_PLAN, 4, 6);
  if (lua_isnil(L, PLANNED)) {
    /* Lua's loop makes the request, called by the caller (client.lua)
     * rather than from here: a C frame under it would deepen every wait
     * of the Lua loop. */
    lua_pushboolean(L, 0);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, LIST);
    lua_pushvalue(L, OPTIONS);
    lua_pushvalue(L, CALL);
    lua_pushvalue(L, SPECS);
    return 6;
  }
  lua_copy(L, 1, CLIENT);
  lua_copy(L, PLANNED, SPEC);
  attempts = lua_tointeger(L, ATTEMPTS);
  if (attempts < 2 || attempts > MAX_RUN_ATTEMPTS)
    return rt_error_invalid(L, "core.request: from 2 to %d attempts",
                            MAX_RUN_ATTEMPTS);
  push_client_field(L, CLIENT, "counters");
  count(L, -1, "requests");
  lua_pop(L, 1);
  r = lua_newuserdatauv(
      L, sizeof(*r) + (size_t)(attempts - 1) * sizeof(run_record_t), UV_COUNT);
  memset(r, 0, sizeof(*r));
  rt_udata_setmetatable(L, &run_key);
  lua_pushvalue(L, CLIENT);
  lua_setiuservalue(L, RUN, UV_CLIENT);
  lua_pushvalue(L, SPEC);
  lua_setiuservalue(L, RUN, UV_SPEC);
  r->env = env;
  r->attempts = (int)attempts;
  r->n = 1;
  r->live = 1;
  r->in_attempt = 1;
  lua_toclose(L, RUN);
  /* Counted and marked first: a request made where no task can wait fails
   * as the Lua loop's first attempt does, counted and named. */
  r->task = rt_task_check(L, env->sched, "a request");
  r->started = rt_clock_now();
  return run_attempt(L, r);
}
