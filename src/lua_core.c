/* lua_core.c: luaopen_retry_core, the small C API that lua/retry builds on.
 *
 * The one file that sees Lua, tasks and transfers together. Each Lua state
 * gets its own context (loop, multi handle, scheduler) kept in the registry
 * and closed by its __gc when the state closes: no mutable globals, so N
 * threads may each run their own state. See README "Architecture" for the
 * functions and their contracts. Every function here refuses, with an
 * `invalid` error object, a call that would otherwise crash.
 */
#include <dlfcn.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "error.h"
#include "lua_core.h"
#include "lua_drive.h"
#include "lua_run.h"
#include "lua_histogram.h"
#include "op.h"
#include "response.h"
#include "task.h"
#include "transfer.h"

#define CTX_MT "retry.Context"

/* Defaults of a request that does not say (README "Wire behaviour"). */
#define DEFAULT_MAX_REDIRECTS 10
#define DEFAULT_MAX_BODY_SIZE ((lua_Integer)64 * 1024 * 1024)

typedef struct rt_ctx_s {
  rt_loop_t loop;
  rt_sched_t sched;
  int run_ref; /* registry ref: the thread running retry.run (sched.L),
                  so it lives as long as the run; released in l_leave */
  int open;
  int sealed;           /* core.seal: no transfer starts any more */
  rt_run_env_t run_env; /* core.request's view of the above */
} rt_ctx_t;

static const char ctx_key = 'c';

static rt_ctx_t *ctx_of(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

static int ctx_gc(lua_State *L) {
  rt_ctx_t *ctx = luaL_checkudata(L, 1, CTX_MT);

  if (!ctx->open)
    return 0;
  ctx->open = 0;
  rt_sched_close(&ctx->sched);
  rt_xfer_pool_drain(&ctx->loop);
  rt_loop_close(&ctx->loop);
  curl_global_cleanup();
  return 0;
}

/* ------------------------------------------------------------------ */
/* The run: enter, loop, leave                                         */
/* ------------------------------------------------------------------ */

/* core.enter(): mark retry.run as running; raises if it already is. */
static int l_enter(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);

  /* A finalizer that runs after the module's own (stock lua5.4 closing a
   * state that made it before requiring retry) finds the loop gone. */
  if (!ctx->open)
    return rt_error_invalid(L, "retry.run: this Lua state is closing and "
                               "its loop is gone");
  if (ctx->sched.running)
    return rt_error_invalid(L, "retry.run cannot be nested outside a task: "
                               "a loop is already running");
  ctx->sched.running = 1;
  ctx->sched.L = L;
  lua_pushthread(L);
  ctx->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* core.loop() -> finished, fatal_error: runs until every task has ended
 * (true) or the live tasks are all stuck waiting (false). */
static int l_loop(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  int finished;

  if (!ctx->sched.running || ctx->sched.L != L || ctx->sched.in_loop)
    return rt_error_invalid(L, "core.loop: only the code that called "
                               "core.enter may run the loop, once at a time");
  finished = rt_sched_run(&ctx->sched);
  lua_pushboolean(L, finished);
  if (ctx->sched.fatal_ref == LUA_NOREF)
    return 1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->sched.fatal_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ctx->sched.fatal_ref);
  ctx->sched.fatal_ref = LUA_NOREF;
  return 2;
}

/* core.leave(): retry.run is over. Tasks still alive (an error escaped the
 * loop) are ended without running; idle connections and pooled handles are
 * closed, so none outlives the run. */
static int l_leave(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);

  if (ctx->sched.in_loop)
    return rt_error_invalid(L, "core.leave: the loop is running");
  if (!ctx->sched.running)
    return 0;
  rt_sched_abandon_all(&ctx->sched);
  rt_loop_reset(&ctx->loop);
  ctx->sched.running = 0;
  ctx->sched.L = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, ctx->run_ref);
  ctx->run_ref = LUA_NOREF;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Tasks                                                               */
/* ------------------------------------------------------------------ */

/* core.spawn(fn, ...) -> handle, thread */
static int l_spawn(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  rt_task_t *t;

  if (lua_type(L, 1) != LUA_TFUNCTION)
    return rt_error_invalid(L, "core.spawn: expected a function, got %s",
                            luaL_typename(L, 1));
  if (!ctx->sched.running)
    return rt_error_invalid(L, "retry.spawn must be called inside a task: "
                               "wrap the code in retry.run(function() ... "
                               "end)");
  t = rt_task_spawn(L, &ctx->sched, lua_gettop(L) - 1);
  lua_pushthread(t->co);
  lua_xmove(t->co, L, 1);
  return 2;
}

/* The rest of task_main once fn has returned or raised (status LUA_YIELD:
 * it returned after waiting). Stack: task, handler, fn's results or its
 * error. Calls finish(task, ok, ...). */
static int task_main_end(lua_State *L, int status, lua_KContext ctx) {
  int n = lua_gettop(L) - 2;

  (void)ctx;
  luaL_checkstack(L, 3, "task results");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushboolean(L, status == LUA_OK || status == LUA_YIELD);
  lua_rotate(L, 3, 3);
  lua_call(L, n + 2, 0);
  return 0;
}

/* Where every task's coroutine starts, with task, fn, args...: fn(args...)
 * under the message handler, then finish(task, ok, ...) (upvalues 1 and 2).
 * One C frame at the bottom of the task's stack; a Lua wrapper calling
 * xpcall was two, with a dozen more slots under every wait. It ends the
 * task also when a script resumed its plain coroutine.yield to the end. */
static int task_main(lua_State *L) {
  int nargs = lua_gettop(L) - 2;
  rt_task_t *t;

  if (nargs < 0 || lua_type(L, 1) != LUA_TTABLE)
    return rt_error_invalid(L, "a task starts with its Task and function");
  lua_getfield(L, 1, "handle");
  t = rt_task_from(L, -1);
  lua_pop(L, 1);
  if (t != NULL && rt_task_take_cancel(L, t) == 1) {
    /* Cancelled before it started: it never runs. */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -4);
    lua_call(L, 3, 0);
    return 0;
  }
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 2);
  return task_main_end(
      L, lua_pcallk(L, nargs, LUA_MULTRET, 2, 0, task_main_end), 0);
}

/* core.task_main(finish, handler) -> the function tasks start in (above) */
static int l_task_main(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_pushcclosure(L, task_main, 2);
  return 1;
}

/* core.park(what) -> values given to core.wake */
static int l_park(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  rt_task_t *t;

  if (lua_type(L, 1) != LUA_TSTRING)
    return rt_error_invalid(L, "core.park: expected what waits, a string");
  t = rt_task_check(L, &ctx->sched, lua_tostring(L, 1));
  lua_settop(L, 0);
  return rt_task_park_lua(L, t);
}

/* core.wake(handle, ...) -> true if the task was parked by core.park */
static int l_wake(lua_State *L) {
  rt_task_t *t = rt_task_from(L, 1);

  lua_pushboolean(L, rt_task_wake_lua(L, t, lua_gettop(L) - 1));
  return 1;
}

/* core.cancel(handle, err) -> false if the task had already ended */
static int l_cancel(lua_State *L) {
  rt_task_t *t = rt_task_from(L, 1);

  if (lua_isnoneornil(L, 2))
    return rt_error_invalid(L, "core.cancel: the error to raise is missing");
  lua_pushboolean(L, rt_task_cancel(L, t, 2));
  return 1;
}

/* core.take_cancel(handle) -> the error of a cancel not raised yet, or
 * nothing */
static int l_take_cancel(lua_State *L) {
  return rt_task_take_cancel(L, rt_task_from(L, 1));
}

/* core.ended(handle): the task's wrapper has recorded its outcome (a
 * thread that stops without this was closed from outside). */
static int l_ended(lua_State *L) {
  rt_task_from(L, 1)->ended = 1;
  return 0;
}

/* core.cancelled(handle) -> whether the task was ever cancelled */
static int l_cancelled(lua_State *L) {
  lua_pushboolean(L, rt_task_from(L, 1)->cancelled);
  return 1;
}

/* A number of seconds >= 0 at idx, named `what` in the error. Infinity is
 * allowed only where it means "no limit" (allow_huge). */
static double check_seconds(lua_State *L, int idx, const char *what,
                            int allow_huge) {
  int isnum;
  lua_Number s = lua_tonumberx(L, idx, &isnum);

  if (lua_type(L, idx) != LUA_TNUMBER || !isnum || !(s >= 0) ||
      (!allow_huge && isinf(s)))
    rt_error_invalid(L, "%s must be a %snumber of seconds >= 0, got %s", what,
                     allow_huge ? "" : "finite ",
                     lua_type(L, idx) != LUA_TNUMBER ? luaL_typename(L, idx)
                     : isnan(s) ? "nan" /* not "-nan", by its sign bit */
                                : lua_pushfstring(L, "%f", (double)s));
  return (double)s;
}

/* core.sleep(seconds) */
static int l_sleep(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  double seconds = check_seconds(L, 1, "retry.sleep: seconds", 0);
  rt_task_t *t = rt_task_check(L, &ctx->sched, "retry.sleep");

  return rt_task_sleep(L, t, seconds);
}

/* core.now() -> monotonic seconds */
static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)rt_clock_now());
  return 1;
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */
/* ------------------------------------------------------------------ */

/* A timeout field in ms for curl, 0 for none. curl holds at most UINT_MAX
 * ms (49 days); a longer limit, or infinity, is no limit, which never ends
 * an attempt early. */
static long opt_ms(lua_State *L, int spec, const char *name) {
  double seconds;
  double ms;

  if (lua_getfield(L, spec, name) == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  seconds = check_seconds(L, -1, name, 1);
  lua_pop(L, 1);
  ms = ceil(seconds * 1000);
  if (ms >= (double)UINT_MAX)
    return 0;
  return (long)ms;
}

/* An optional integer field >= 0; `huge` (or more) for infinity. */
static lua_Integer opt_count(lua_State *L, int spec, const char *name,
                             lua_Integer dflt, lua_Integer huge) {
  lua_Integer n;
  lua_Number f;

  if (lua_getfield(L, spec, name) == LUA_TNIL) {
    lua_pop(L, 1);
    return dflt;
  }
  if (lua_type(L, -1) != LUA_TNUMBER)
    rt_error_invalid(L, "%s must be an integer >= 0, got %s", name,
                     luaL_typename(L, -1));
  if (lua_isinteger(L, -1)) {
    n = lua_tointeger(L, -1);
    if (n < 0)
      rt_error_invalid(L, "%s must be an integer >= 0", name);
    lua_pop(L, 1);
    return n < huge ? n : huge;
  }
  f = lua_tonumber(L, -1);
  if (!(f >= 0) || (f < (lua_Number)huge && f != floor(f)))
    rt_error_invalid(L, "%s must be an integer >= 0", name);
  lua_pop(L, 1);
  return f >= (lua_Number)huge ? huge : (lua_Integer)f;
}

/* Push the text a finite float goes out as in a query or a header: a
 * whole one in full digits (lua-cjson decodes 2 as 2.0, which tostring
 * writes "2.0", and an id of 17 digits in e notation), another in the
 * fewest digits that read back as the same number (tostring keeps 14). */
static void push_float_text(lua_State *L, lua_Number f) {
  char text[64];
  lua_Integer i;
  int digits;

  if (f == floor(f) && lua_numbertointeger(f, &i)) {
    lua_pushinteger(L, i);
    lua_tostring(L, -1);
    return;
  }
  if (f == floor(f) && fabs(f) < 18446744073709551616.0) {
    snprintf(text, sizeof(text), "%.0f", (double)f);
  } else {
    /* 17 significant digits always read back the same double. */
    for (digits = 14; digits <= 17; digits++) {
      snprintf(text, sizeof(text), "%.*g", digits, (double)f);
      if (strtod(text, NULL) == f)
        break;
    }
  }
  lua_pushstring(L, text);
}

/* core.number_text(n) -> the text number n goes out as in a query or a
 * header (push_float_text for a float), or nil, "what is wrong" for NaN
 * and infinities. */
static int l_number_text(lua_State *L) {
  lua_Number f = luaL_checknumber(L, 1);

  if (lua_isinteger(L, 1)) {
    lua_settop(L, 1);
    lua_tostring(L, 1);
    return 1;
  }
  if (!isfinite(f)) {
    lua_pushnil(L);
    lua_pushliteral(L, "must be a finite number");
    return 2;
  }
  push_float_text(L, f);
  return 1;
}

/* The longest header name an error shows whole; a longer one is cut, as
 * values.describe cuts strings. */
#define SHOWN_NAME_MAX 40

/* What is wrong with the header whose name and value are on top of the
 * stack: `what`, after the name, with any byte that is not printable ASCII
 * (and '"' and '\\') shown as \ddd, three digits. Replaces the two with the
 * message, which stays alive on the stack for the caller to copy. */
static const char *header_problem(lua_State *L, const char *what) {
  luaL_Buffer b;
  size_t len, shown, i;
  const char *name = lua_tolstring(L, -2, &len);

  shown = len > SHOWN_NAME_MAX ? SHOWN_NAME_MAX - 3 : len;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "header \"");
  for (i = 0; i < shown; i++) {
    unsigned char c = (unsigned char)name[i];

    if (c >= ' ' && c < 0x7f && c != '"' && c != '\\') {
      luaL_addchar(&b, (char)c);
    } else {
      char esc[8];

      snprintf(esc, sizeof(esc), "\\%03u", c);
      luaL_addstring(&b, esc);
    }
  }
  if (shown < len)
    luaL_addstring(&b, "...");
  luaL_addstring(&b, "\": ");
  luaL_addstring(&b, what);
  luaL_pushresult(&b);
  lua_replace(L, -3);
  lua_pop(L, 1);
  return lua_tostring(L, -1);
}

/* Turn spec.headers into "Name: value" lines kept alive on the stack.
 * Returns the line array (a userdata on the stack) and sets *count, or sets
 * *bad to what is wrong with a header (naming it) and returns NULL. */
static const char **header_lines(lua_State *L, int spec, size_t *count,
                                 const char **bad) {
  const char **lines;
  size_t n = 0;
  int t;

  *count = 0;
  if (lua_getfield(L, spec, "headers") == LUA_TNIL) {
    lua_pop(L, 1);
    return NULL;
  }
  if (!lua_istable(L, -1))
    rt_error_invalid(L, "request: headers must be a table, got %s",
                     luaL_typename(L, -1));
  t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    n++;
    lua_pop(L, 1);
  }
  /* A client's headers are {} unless set: no lines to keep alive. */
  if (n == 0)
    return NULL;
  lines = lua_newuserdatauv(L, n * sizeof(*lines), 1);
  lua_createtable(L, (int)n, 0); /* keeps the line strings alive */
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    size_t klen, vlen;
    const char *k, *v;

    if (lua_type(L, -2) != LUA_TSTRING ||
        (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)) {
      *bad = "headers must map names (strings) to values (strings or "
             "numbers)";
      lua_pop(L, 2);
      return NULL;
    }
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number f = lua_tonumber(L, -1);

      if (!isfinite(f)) {
        *bad = header_problem(L, "header values must be finite numbers");
        return NULL;
      }
      push_float_text(L, f);
      lua_replace(L, -2);
    }
    k = lua_tolstring(L, -2, &klen);
    v = lua_tolstring(L, -1, &vlen);
    *bad = rt_request_check_header(k, klen, v, vlen);
    if (*bad != NULL) {
      *bad = header_problem(L, *bad);
      return NULL;
    }
    /* "Name;" is curl's way to send a header with an empty value. */
    if (vlen == 0)
      lua_pushfstring(L, "%s;", k);
    else
      lua_pushfstring(L, "%s: %s", k, v);
    lines[*count] = lua_tostring(L, -1);
    lua_rawseti(L, -4, (lua_Integer)++ * count);
    lua_pop(L, 1);
  }
  lua_setiuservalue(L, -2, 1);
  return lines;
}

/* A required string field, its length in *len. */
static const char *field_string(lua_State *L, int spec, const char *name,
                                size_t *len) {
  if (lua_getfield(L, spec, name) != LUA_TSTRING)
    rt_error_invalid(L, "request: %s must be a string, got %s", name,
                     luaL_typename(L, -1));
  return lua_tolstring(L, -1, len);
}

/* Read the spec at index 1 into req. Returns NULL, or what makes it unfit
 * to send. Strings stay on the stack for as long as req is used. */
static const char *read_spec(lua_State *L, rt_request_t *req) {
  size_t method_len, url_len;
  const char *bad = NULL;
  lua_Integer max_body;

  memset(req, 0, sizeof(*req));
  req->method = field_string(L, 1, "method", &method_len);
  req->url = field_string(L, 1, "url", &url_len);
  if (lua_getfield(L, 1, "body") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      rt_error_invalid(L, "request: body must be a string, got %s",
                       luaL_typename(L, -1));
    req->body = lua_tolstring(L, -1, &req->body_len);
  }
  req->timeout_ms = opt_ms(L, 1, "timeout");
  req->connect_timeout_ms = opt_ms(L, 1, "connect_timeout");
  req->max_redirects =
      (long)opt_count(L, 1, "max_redirects", DEFAULT_MAX_REDIRECTS, LONG_MAX);
  max_body =
      opt_count(L, 1, "max_body_size", DEFAULT_MAX_BODY_SIZE, LUA_MAXINTEGER);
  req->max_body_size = max_body == LUA_MAXINTEGER ? -1 : (curl_off_t)max_body;
  if (lua_getfield(L, 1, "ca_file") != LUA_TNIL) {
    size_t len;

    if (lua_type(L, -1) != LUA_TSTRING)
      rt_error_invalid(L, "request: ca_file must be a string, got %s",
                       luaL_typename(L, -1));
    req->ca_file = lua_tolstring(L, -1, &len);
    if (strlen(req->ca_file) != len)
      return "ca_file must not hold NUL";
  }
  lua_getfield(L, 1, "verify_tls");
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
    rt_error_invalid(L, "request: verify_tls must be a boolean, got %s",
                     luaL_typename(L, -1));
  req->verify_tls = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_getfield(L, 1, "fresh_connect");
  req->fresh_connect = lua_toboolean(L, -1);
  bad = rt_request_check_method(req->method, method_len);
  if (bad == NULL)
    bad = rt_request_check_url(req->url, url_len);
  if (bad == NULL)
    req->headers = header_lines(L, 1, &req->header_count, &bad);
  return bad;
}

/* Request tables lretry sends again and again (a plain call's, cached by
 * http.lua and client.lua) are read once. core.keep(spec) marks one in a
 * weak-keyed registry table; the first core.start that reads it whole
 * stores what it read there (an rt_request_t), and later starts take that
 * copy instead of a dozen field reads and checks. Only the headers are read
 * at every start: a client's request table holds the client's own headers
 * table, which a script may edit in place. A kept table must not change
 * otherwise (lretry never writes to a request table). */
static const char kept_key = 'k';

/* The strings req points into are the userdata's user values. */
enum { KEPT_METHOD = 1, KEPT_URL, KEPT_BODY, KEPT_CA_FILE, KEPT_VALUES = 4 };

static void keep_value(lua_State *L, int kept, const char *field, int slot) {
  lua_getfield(L, 1, field);
  lua_setiuservalue(L, kept, slot);
}

/* Store req, just read from the table at index 1, as its kept copy in the
 * kept table at index `kept_table`. */
static void store_kept(lua_State *L, int kept_table, const rt_request_t *req) {
  rt_request_t *k = lua_newuserdatauv(L, sizeof(*k), KEPT_VALUES);
  int kept = lua_gettop(L);

  *k = *req;
  k->headers = NULL; /* read at each start */
  k->header_count = 0;
  keep_value(L, kept, "method", KEPT_METHOD);
  keep_value(L, kept, "url", KEPT_URL);
  keep_value(L, kept, "body", KEPT_BODY);
  keep_value(L, kept, "ca_file", KEPT_CA_FILE);
  lua_pushvalue(L, 1);
  lua_insert(L, -2);
  lua_rawset(L, kept_table);
}

/* core.keep(spec): spec will be sent many times and never changed. */
static int l_keep(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kept_key);
  lua_pushvalue(L, 1);
  if (lua_rawget(L, 2) == LUA_TNIL) {
    lua_pushvalue(L, 1);
    lua_pushboolean(L, 1);
    lua_rawset(L, 2);
  }
  return 0;
}

/* Read the spec at index 1 into req, from its kept copy when it has one
 * (and making that copy when it is marked for one). Returns as read_spec
 * does. */
static const char *read_request(lua_State *L, rt_request_t *req) {
  int kept_table, marked;
  const char *bad = NULL;

  lua_rawgetp(L, LUA_REGISTRYINDEX, &kept_key);
  kept_table = lua_gettop(L);
  lua_pushvalue(L, 1);
  marked = lua_rawget(L, kept_table);
  if (marked == LUA_TUSERDATA) {
    *req = *(const rt_request_t *)lua_touserdata(L, -1);
    req->headers = header_lines(L, 1, &req->header_count, &bad);
    return bad;
  }
  bad = read_spec(L, req);
  if (bad == NULL && marked == LUA_TBOOLEAN)
    store_kept(L, kept_table, req);
  return bad;
}

/* core.check(spec) -> nil, or what makes the request unfit to send. The
 * same checks core.start makes, for code that wants them early. */
static int l_check(lua_State *L) {
  rt_request_t req;
  const char *bad;

  if (!lua_istable(L, 1))
    return rt_error_invalid(L, "core.check: expected a request table");
  lua_settop(L, 1);
  bad = read_spec(L, &req);
  if (bad == NULL) {
    /* What libcurl would refuse when the transfer starts (a port over
     * 65535, a broken IPv6 literal), found now. core.start leaves this
     * to libcurl: its URL_MALFORMAT comes before anything is sent. */
    CURLU *u = curl_url();
    CURLUcode rc = u != NULL ? curl_url_set(u, CURLUPART_URL, req.url, 0)
                             : CURLUE_OUT_OF_MEMORY;

    curl_url_cleanup(u);
    if (rc == CURLUE_OK)
      return 0;
    lua_pushfstring(L, "url is malformed (%s)", curl_url_strerror(rc));
    return 1;
  }
  lua_pushstring(L, bad);
  return 1;
}

/* core.start(spec) -> operation | nil, "invalid", message: start one
 * attempt (no retries) of the request table {method=, url=, headers=,
 * body=, timeout=, connect_timeout=, max_redirects=, max_body_size=,
 * ca_file=, verify_tls=, fresh_connect=}, owned by the calling task. A
 * request unfit to send is refused here, sent nowhere. */
static int l_start(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  rt_request_t req;
  rt_task_t *t;
  const char *bad;
  int rc;

  if (!lua_istable(L, 1))
    return rt_error_invalid(L,
                            "core.start: expected a request table, "
                            "got %s",
                            luaL_typename(L, 1));
  lua_settop(L, 1);
  t = rt_task_check(L, &ctx->sched, "a request");
  if (ctx->sealed) {
    lua_pushnil(L);
    lua_pushliteral(L, "cancelled");
    lua_pushliteral(L, "this worker thread's share of the load is done: it "
                       "sends no more requests");
    return 3;
  }
  bad = read_request(L, &req);
  if (bad == NULL) {
    rc = rt_op_start_xfer(L, t, &ctx->loop, &req);
    if (rc == 0)
      return 1;
    lua_pushfstring(L, "could not start the transfer (%s)", uv_strerror(rc));
    bad = lua_tostring(L, -1);
  }
  lua_pushnil(L);
  lua_pushliteral(L, "invalid");
  lua_pushstring(L, bad);
  return 3;
}

/* core.request(client, method, url, opts): a RetryClient request, its
 * attempts and fixed waits run in C when it can (lua_run.h). */
static int l_request(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);

  return rt_run_request(L, &ctx->run_env);
}

/* core.driver(spec, opts) -> driver: spec's requests, run by the calling
 * task's driver (lua_drive.h), `opts.slots` at a time. spec is read and
 * checked once, as core.start would. */
static int l_driver(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  rt_request_t req;
  rt_task_t *t;
  const char *bad;

  if (!lua_istable(L, 1) || !lua_istable(L, 2))
    return rt_error_invalid(L, "core.driver: expected a request table and "
                               "an options table");
  lua_settop(L, 2);
  t = rt_task_check(L, &ctx->sched, "a load's driver");
  bad = read_request(L, &req);
  if (bad != NULL)
    return rt_error_invalid(L, "core.driver: %s", bad);
  rt_drive_new(L, &req, 2, t, &ctx->loop, &ctx->sealed);
  return 1;
}

/* core.timer(seconds) -> operation: finishes after seconds, never
 * earlier. */
static int l_timer(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  double seconds = check_seconds(L, 1, "core.timer: seconds", 0);
  rt_task_t *t = rt_task_check(L, &ctx->sched, "a timer");

  rt_op_start_timer(L, t, seconds);
  return 1;
}

/* core.interrupt() -> operation: finishes on the first SIGINT (Ctrl-C) or
 * SIGTERM, its result the signal's number; until then neither ends the
 * process. */
static int l_interrupt(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  rt_task_t *t = rt_task_check(L, &ctx->sched, "core.interrupt");
  int rc = rt_op_start_interrupt(L, t);

  if (rc != 0)
    return luaL_error(L, "core.interrupt: %s", uv_strerror(rc));
  return 1;
}

/* core.isatty(fd) -> whether the descriptor is a terminal, and its width
 * in columns (nil when unknown): the live progress line is drawn only
 * there, and cut to fit, since a wrapped line cannot be erased. */
static int l_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  struct winsize ws;

  if (fd < 0 || fd > INT_MAX || !isatty((int)fd)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, 1);
  if (ioctl((int)fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    lua_pushinteger(L, ws.ws_col);
  else
    lua_pushnil(L);
  return 2;
}

/* core.wait(seconds | nil, op, ...) -> position of the first finished
 * operation, or nil when seconds passed first. */
static int l_wait(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  double seconds = -1;
  rt_task_t *t;

  if (!lua_isnil(L, 1))
    seconds = check_seconds(L, 1, "core.wait: seconds", 1);
  t = rt_task_check(L, &ctx->sched, "core.wait");
  return rt_op_wait(L, t, 2, lua_gettop(L) - 1, seconds);
}

/* core.cancel_op(op) -> whether it was still running; op may also be a run
 * record of core.request in backoff (client:close, lua_run.h) */
static int l_cancel_op(lua_State *L) {
  int ended = rt_run_cancel(L, 1);

  if (ended < 0)
    ended = rt_op_cancel(rt_op_check(L, 1, "core.cancel_op"));
  lua_pushboolean(L, ended);
  return 1;
}

/* core.result(op) -> see rt_op_push_result */
static int l_result(lua_State *L) {
  return rt_op_push_result(L, rt_op_check(L, 1, "core.result"));
}

/* core.seal(): from now on core.start starts nothing (a `cancelled`
 * outcome): a worker thread of retry.load{threads = N} seals its state
 * once its share is handed over, so a script that catches the error ending
 * it sends nothing more. */
static int l_seal(lua_State *L) {
  ctx_of(L)->sealed = 1;
  return 0;
}

/* core.went_out(op) -> whether its request went out on a connection (a
 * cancelled attempt the server may have seen), and whether libcurl sent it
 * a second time; see rt_op_went_out and rt_op_resent. */
static int l_went_out(lua_State *L) {
  rt_op_t *op = rt_op_check(L, 1, "core.went_out");

  lua_pushboolean(L, rt_op_went_out(op));
  lua_pushboolean(L, rt_op_resent(op));
  return 2;
}

static void count_handle(uv_handle_t *handle, void *arg) {
  (void)handle;
  (*(lua_Integer *)arg)++;
}

/* core.counts() -> {handles = libuv handles open on the loop, transfers =
 * easy handles in flight}: what tests compare before and after, to see
 * that every operation gave its handles back. */
static int l_counts(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  lua_Integer handles = 0;

  if (ctx->open) /* a finalizer may ask once the loop is closed */
    uv_walk(&ctx->loop.uv, count_handle, &handles);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, handles);
  lua_setfield(L, -2, "handles");
  lua_pushinteger(L, (lua_Integer)ctx->loop.in_flight);
  lua_setfield(L, -2, "transfers");
  return 1;
}

/* core.open_file_limit() -> the process's limit on open files (its soft
 * RLIMIT_NOFILE, which the host raises to the hard one at start), or nil
 * when there is none */
static int l_open_file_limit(lua_State *L) {
  struct rlimit lim;

  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY)
    return 0;
  lua_pushinteger(L, (lua_Integer)lim.rlim_cur);
  return 1;
}

/* core.is_response(v) -> whether v is a Response */
static int l_is_response(lua_State *L) {
  lua_pushboolean(L, rt_response_is(L, 1));
  return 1;
}

/* core.transfer_times(response) -> its transfer's total time and when it
 * ended (core.now's clock): what a load check records for every attempt,
 * read without building the timings table or going through __index. */
static int l_transfer_times(lua_State *L) {
  const rt_response_t *r;

  if (!rt_response_is(L, 1))
    return rt_error_invalid(L,
                            "core.transfer_times: expected a Response, "
                            "got %s",
                            luaL_typename(L, 1));
  r = lua_touserdata(L, 1);
  lua_pushnumber(L, r->timings[4]);
  lua_pushnumber(L, r->finished_at);
  return 2;
}

/* core.conclude(response, attempts, history, elapsed): what the retry
 * loop tells a Response about its request, set in one call rather than
 * three __newindex calls (some 700 instructions each). */
static int l_conclude(lua_State *L) {
  if (!rt_response_is(L, 1))
    return rt_error_invalid(L, "core.conclude: expected a Response, got %s",
                            rt_error_typename(L, 1));
  lua_settop(L, 4);
  rt_response_drop_trail(L, 1);
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 2);
  lua_setfield(L, 5, "attempts");
  lua_pushvalue(L, 3);
  lua_setfield(L, 5, "history");
  lua_pushvalue(L, 4);
  lua_setfield(L, 5, "elapsed");
  return 0;
}

static const luaL_Reg core_funcs[] = {{"cancel", l_cancel},
                                      {"cancel_op", l_cancel_op},
                                      {"cancelled", l_cancelled},
                                      {"check", l_check},
                                      {"conclude", l_conclude},
                                      {"counts", l_counts},
                                      {"driver", l_driver},
                                      {"ended", l_ended},
                                      {"enter", l_enter},
                                      {"is_response", l_is_response},
                                      {"keep", l_keep},
                                      {"leave", l_leave},
                                      {"loop", l_loop},
                                      {"now", l_now},
                                      {"number_text", l_number_text},
                                      {"open_file_limit", l_open_file_limit},
                                      {"park", l_park},
                                      {"result", l_result},
                                      {"request", l_request},
                                      {"run_helpers", rt_run_set_helpers},
                                      {"sleep", l_sleep},
                                      {"seal", l_seal},
                                      {"spawn", l_spawn},
                                      {"task_main", l_task_main},
                                      {"start", l_start},
                                      {"take_cancel", l_take_cancel},
                                      {"timer", l_timer},
                                      {"transfer_times", l_transfer_times},
                                      {"interrupt", l_interrupt},
                                      {"isatty", l_isatty},
                                      {"wait", l_wait},
                                      {"wake", l_wake},
                                      {"went_out", l_went_out},
                                      {NULL, NULL}};

/* The per-state context, made on first load and shared by later loads. */
static rt_ctx_t *push_ctx(lua_State *L) {
  rt_ctx_t *ctx;

  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ctx_key) == LUA_TUSERDATA)
    return lua_touserdata(L, -1);
  lua_pop(L, 1);
  ctx = lua_newuserdatauv(L, sizeof(*ctx), 0);
  memset(ctx, 0, sizeof(*ctx));
  ctx->run_ref = LUA_NOREF;
  if (luaL_newmetatable(L, CTX_MT)) {
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    luaL_error(L, "retry.core: curl_global_init failed");
  if (rt_loop_init(&ctx->loop) != 0) {
    curl_global_cleanup();
    luaL_error(L, "retry.core: could not create the event loop");
  }
  rt_sched_init(&ctx->sched, &ctx->loop.uv);
  ctx->run_env.sched = &ctx->sched;
  ctx->run_env.loop = &ctx->loop;
  ctx->run_env.sealed = &ctx->sealed;
  ctx->run_env.read = read_request;
  ctx->loop.between = rt_sched_resume_due;
  ctx->loop.between_data = &ctx->sched;
  ctx->open = 1;
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &ctx_key);
  return ctx;
}

/* Keep this module (and so libcurl, OpenSSL and libuv) loaded after
 * lua_close unloads C modules: curl_global_init's state is process-wide and
 * other Lua states, or threads, may still use it. It also leaves the code
 * mapped for LeakSanitizer's reports at exit. */
static void pin_module(void) {
  Dl_info info;

  if (dladdr((void *)luaopen_retry_core, &info) != 0 && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

int luaopen_retry_core(lua_State *L) {
  pin_module();
  luaL_newlibtable(L, core_funcs);
  push_ctx(L);
  luaL_setfuncs(L, core_funcs, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &kept_key) == LUA_TNIL) {
    lua_newtable(L); /* the kept request tables (see kept_key) */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &kept_key);
  }
  lua_pop(L, 1);
  rt_histogram_open(L);
  rt_op_open(L);
  rt_drive_open(L);
  rt_run_open(L);
  rt_response_open(L);
  lua_setfield(L, -2, "response_methods");
  rt_error_push_metatable(L);
  lua_setfield(L, -2, "error_metatable");
  lua_pushliteral(L, RT_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, curl_version());
  lua_setfield(L, -2, "curl_version");
  return 1;
}
