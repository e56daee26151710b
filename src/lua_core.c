/* lua_core.c: luaopen_retry_core, the small C API that lua/retry builds on.
 *
 * The one file that sees Lua, tasks and transfers together. Each Lua state
 * gets its own context (loop, multi handle, scheduler) kept in the registry
 * and closed by its __gc when the state closes: no mutable globals, so N
 * threads may each run their own state. See README "Architecture" for the
 * functions and their contracts.
 */
#include <dlfcn.h>
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <string.h>

#include "response.h"
#include "task.h"
#include "transfer.h"

#define CTX_MT "retry.Context"

typedef struct rt_ctx_s {
  rt_loop_t loop;
  rt_sched_t sched;
  int open;
} rt_ctx_t;

int luaopen_retry_core(lua_State *L);

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

/* core.enter(): mark retry.run as running; raises if it already is. */
static int l_enter(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);

  if (ctx->sched.running)
    return luaL_error(L, "retry.run cannot be nested: a loop is already "
                         "running (use retry.spawn to start more tasks)");
  ctx->sched.running = 1;
  ctx->sched.L = L;
  return 0;
}

/* core.loop() -> finished, fatal_error: runs until every task has ended
 * (true) or the live tasks are all stuck waiting (false). */
static int l_loop(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  int finished;

  if (!ctx->sched.running || ctx->sched.L != L)
    return luaL_error(L, "core.loop called outside retry.run");
  finished = rt_sched_run(&ctx->sched);
  lua_pushboolean(L, finished);
  if (ctx->sched.fatal_ref == LUA_NOREF)
    return 1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->sched.fatal_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ctx->sched.fatal_ref);
  ctx->sched.fatal_ref = LUA_NOREF;
  return 2;
}

/* core.leave(): retry.run is over. */
static int l_leave(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);

  ctx->sched.running = 0;
  ctx->sched.L = NULL;
  return 0;
}

/* core.spawn(fn, ...) -> handle, thread */
static int l_spawn(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  rt_task_t *t;

  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (!ctx->sched.running)
    return luaL_error(L, "retry.spawn must be called inside a task: wrap "
                         "the code in retry.run(function() ... end)");
  t = rt_task_spawn(L, &ctx->sched, lua_gettop(L) - 1);
  lua_pushthread(t->co);
  lua_xmove(t->co, L, 1);
  return 2;
}

/* core.park(what) -> values given to core.wake */
static int l_park(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  rt_task_t *t = rt_task_check(L, &ctx->sched, luaL_checkstring(L, 1));

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

  luaL_checkany(L, 2);
  lua_pushboolean(L, rt_task_cancel(L, t, 2));
  return 1;
}

/* core.sleep(seconds) */
static int l_sleep(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  lua_Number seconds = luaL_checknumber(L, 1);
  rt_task_t *t;

  if (!(seconds >= 0) || isinf(seconds))
    return luaL_error(L,
                      "retry.sleep: seconds must be a finite number >= 0, "
                      "got %f",
                      (double)seconds);
  t = rt_task_check(L, &ctx->sched, "retry.sleep");
  return rt_task_sleep(L, t, (double)seconds);
}

/* core.now() -> monotonic seconds */
static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

static long opt_ms(lua_State *L, int spec, const char *name) {
  lua_Number seconds;
  int isnum;

  if (lua_getfield(L, spec, name) == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  seconds = lua_tonumberx(L, -1, &isnum);
  if (!isnum || !(seconds >= 0) || seconds > 1e6)
    luaL_error(L, "request: '%s' must be a number of seconds >= 0", name);
  lua_pop(L, 1);
  return (long)ceil(seconds * 1000);
}

static int valid_header_name(const char *s, size_t len) {
  size_t i;

  if (len == 0)
    return 0;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c == ':' || c >= 0x7f)
      return 0;
  }
  return 1;
}

/* Turn spec.headers into "Name: value" lines kept alive on the stack.
 * Returns the line array (a userdata on the stack) and sets *count. */
static const char **header_lines(lua_State *L, int spec, size_t *count) {
  const char **lines;
  size_t n = 0;
  int t;

  *count = 0;
  if (lua_getfield(L, spec, "headers") == LUA_TNIL) {
    lua_pop(L, 1);
    return NULL;
  }
  luaL_argexpected(L, lua_istable(L, -1), spec, "headers as a table");
  t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    n++;
    lua_pop(L, 1);
  }
  lines = lua_newuserdatauv(L, (n ? n : 1) * sizeof(*lines), 1);
  lua_createtable(L, (int)n, 0); /* keeps the line strings alive */
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    size_t klen, vlen;
    const char *k, *v;

    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "request: header names must be strings");
    k = lua_tolstring(L, -2, &klen);
    if (!valid_header_name(k, klen))
      luaL_error(L, "request: invalid header name '%s'", k);
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "request: header '%s' must be a string or number", k);
    v = lua_tolstring(L, -1, &vlen);
    if (strpbrk(v, "\r\n") != NULL || strlen(v) != vlen)
      luaL_error(L, "request: header '%s' contains a line break or NUL", k);
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

static void abandon_xfer(void *op) {
  rt_xfer_release(op);
}

static void on_xfer_done(rt_xfer_t *xfer, void *arg) {
  (void)xfer;
  rt_task_wake(arg, 0);
}

static int request_k(lua_State *L, int status, lua_KContext kctx) {
  rt_task_t *t = (rt_task_t *)kctx;
  rt_xfer_t *xfer = t->op;
  rt_response_t *r;
  const char *text = NULL;
  long code = 0;

  (void)status;
  rt_task_resumed(L, t);
  if (xfer->result != CURLE_OK) {
    lua_pushnil(L);
    lua_pushstring(L, rt_xfer_error_kind(xfer));
    lua_pushstring(L, rt_xfer_error_message(xfer));
    lua_pushinteger(L, (lua_Integer)xfer->result);
    rt_xfer_release(rt_task_take_op(t));
    return 4;
  }
  /* Until the op is taken below, an error raised here leaves the transfer
   * with the task, which releases it when it ends. */
  r = rt_response_push(L);
  curl_easy_getinfo(xfer->easy, CURLINFO_RESPONSE_CODE, &code);
  r->status = code;
  r->body = rt_buf_take(&xfer->body, &r->body_len);
  r->head = rt_buf_take(&xfer->head, &r->head_len);
  curl_easy_getinfo(xfer->easy, CURLINFO_EFFECTIVE_URL, &text);
  lua_pushstring(L, text);
  rt_response_setfield(L, "url");
  text = NULL;
  curl_easy_getinfo(xfer->easy, CURLINFO_EFFECTIVE_METHOD, &text);
  lua_pushstring(L, text);
  rt_response_setfield(L, "method");
  rt_xfer_release(rt_task_take_op(t));
  return 1;
}

/* core.request{method=, url=, headers=, body=, timeout=, connect_timeout=}
 * -> Response | nil, kind, message, curl_code. One attempt, no retries. */
static int l_request(lua_State *L) {
  rt_ctx_t *ctx = ctx_of(L);
  rt_request_t req;
  rt_xfer_t *xfer = NULL;
  rt_task_t *t;
  int rc;

  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  t = rt_task_check(L, &ctx->sched, "a request");
  memset(&req, 0, sizeof(req));
  lua_getfield(L, 1, "method");
  req.method = lua_tostring(L, -1);
  lua_getfield(L, 1, "url");
  req.url = lua_tostring(L, -1);
  if (req.method == NULL || req.url == NULL)
    return luaL_error(L, "request: 'method' and 'url' must be strings");
  if (lua_getfield(L, 1, "body") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "request: 'body' must be a string");
    req.body = lua_tolstring(L, -1, &req.body_len);
  }
  req.timeout_ms = opt_ms(L, 1, "timeout");
  req.connect_timeout_ms = opt_ms(L, 1, "connect_timeout");
  req.headers = header_lines(L, 1, &req.header_count);
  rc = rt_xfer_start(&ctx->loop, &req, on_xfer_done, t, &xfer);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "invalid");
    lua_pushfstring(L, "could not start the transfer (%s)", uv_strerror(rc));
    return 3;
  }
  return rt_task_park(L, t, xfer, abandon_xfer, request_k);
}

static const luaL_Reg core_funcs[] = {
    {"cancel", l_cancel},   {"enter", l_enter}, {"leave", l_leave},
    {"loop", l_loop},       {"now", l_now},     {"park", l_park},
    {"request", l_request}, {"sleep", l_sleep}, {"spawn", l_spawn},
    {"wake", l_wake},       {NULL, NULL}};

/* The per-state context, made on first load and shared by later loads. */
static rt_ctx_t *push_ctx(lua_State *L) {
  rt_ctx_t *ctx;

  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ctx_key) == LUA_TUSERDATA)
    return lua_touserdata(L, -1);
  lua_pop(L, 1);
  ctx = lua_newuserdatauv(L, sizeof(*ctx), 0);
  memset(ctx, 0, sizeof(*ctx));
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
  rt_response_open(L);
  lua_setfield(L, -2, "response_methods");
  lua_pushliteral(L, RT_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, curl_version());
  lua_setfield(L, -2, "curl_version");
  return 1;
}
