/* response.c: the Response userdata: lazy headers, body as owned bytes.
 *
 * Owns nothing but the bytes a finished transfer handed over. Knows nothing
 * about curl or the loop.
 */
#include "response.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "udata.h"

#define RESPONSE_MT "retry.Response"
#define HEADERS_MT "retry.Headers"

/* Its address keys the Response metatable (udata.h). */
static const char response_key = 'r';

/* The response at index 1, or an `invalid` error naming the method, as in
 * `r.text(42)` for `r:text()`. */
static rt_response_t *check_response(lua_State *L, const char *method) {
  rt_response_t *r = rt_udata_test(L, 1, &response_key);

  if (r == NULL)
    rt_error_invalid(L,
                     "response:%s: expected a Response as self, got %s "
                     "(call it as r:%s())",
                     method, rt_error_typename(L, 1), method);
  return r;
}

static void free_body(rt_response_t *r) {
  free(r->body);
  r->body = NULL;
  r->body_len = 0;
  r->closed = 1;
}

/* :close() and <close>: free the body, keep status, reason and headers
 * readable. Idempotent. */
static int resp_close(lua_State *L) {
  free_body(check_response(L, "close"));
  return 0;
}

static void free_trail(rt_response_t *r) {
  if (r->trail != &r->trail_one)
    free(r->trail);
  r->trail = NULL;
  r->trail_len = 0;
}

/* __gc: everything; safe on a half-made response. */
static int resp_gc(lua_State *L) {
  rt_response_t *r = check_response(L, "__gc");

  free_trail(r);
  free_body(r);
  free(r->head);
  r->head = NULL;
  return 0;
}

static int push_body(lua_State *L, rt_response_t *r) {
  if (r->closed)
    return rt_error_invalid(L, "the response is closed: its body was freed "
                               "by close() or <close>, or by the retry "
                               "loop once it retried the response (read "
                               "a retried response's body in "
                               "evaluate_response_callback, get_timeout or "
                               "before_retry)");
  lua_pushlstring(L, r->body != NULL ? r->body : "", r->body_len);
  return 1;
}

static int resp_text(lua_State *L) {
  return push_body(L, check_response(L, "text"));
}

static int resp_read(lua_State *L) {
  return push_body(L, check_response(L, "read"));
}

static int headers_index(lua_State *L) {
  size_t len;
  const char *key;
  luaL_Buffer b;
  char *lower;
  size_t i;

  /* A script can call getmetatable(r.headers).__index(anything, k). */
  if (!lua_istable(L, 1))
    return rt_error_invalid(L,
                            "headers: expected a headers table as self, "
                            "got %s",
                            rt_error_typename(L, 1));
  if (lua_type(L, 2) != LUA_TSTRING)
    return 0;
  key = lua_tolstring(L, 2, &len);
  lower = luaL_buffinitsize(L, &b, len);
  for (i = 0; i < len; i++) {
    char c = key[i];
    lower[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
  }
  luaL_pushresultsize(&b, len);
  lua_rawget(L, 1);
  return 1;
}

static const char *skip_space(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t'))
    p++;
  return p;
}

static const char *trim_end(const char *start, const char *end) {
  while (end > start && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
    end--;
  return end;
}

/* Push the reason phrase from the status line ("HTTP/1.1 404 Not Found"). */
static void push_reason(lua_State *L, const char *line, const char *end) {
  const char *p = memchr(line, ' ', (size_t)(end - line));

  if (p != NULL)
    p = memchr(p + 1, ' ', (size_t)(end - p - 1));
  if (p == NULL) {
    lua_pushliteral(L, ""); /* HTTP/2 sends no reason phrase */
    return;
  }
  p = skip_space(p, end);
  lua_pushlstring(L, p, (size_t)(trim_end(p, end) - p));
}

/* Add one "Name: value" line to the headers table at index t. Repeated
 * names are joined with ", " as RFC 9110 allows. */
static void add_header(lua_State *L, int t, const char *line, const char *end) {
  const char *colon = memchr(line, ':', (size_t)(end - line));
  const char *value;
  luaL_Buffer b;
  size_t i;

  if (colon == NULL || colon == line)
    return;
  luaL_buffinit(L, &b);
  for (i = 0; line + i < colon; i++) {
    char c = line[i];
    luaL_addchar(&b, (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c);
  }
  luaL_pushresult(&b);
  value = skip_space(colon + 1, end);
  end = trim_end(value, end);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, t) == LUA_TSTRING) {
    lua_pushliteral(L, ", ");
    lua_pushlstring(L, value, (size_t)(end - value));
    lua_concat(L, 3);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, value, (size_t)(end - value));
  }
  lua_rawset(L, t);
}

/* Parse the raw header block into fields.headers and fields.reason; the
 * fields table is at index f. */
static void parse_head(lua_State *L, rt_response_t *r, int f) {
  const char *p = r->head != NULL ? r->head : "";
  const char *end = p + r->head_len;
  int first = 1;
  int t;

  lua_newtable(L);
  t = lua_gettop(L);
  luaL_setmetatable(L, HEADERS_MT);
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = nl != NULL ? nl : end;

    if (first) {
      push_reason(L, p, trim_end(p, line_end));
      lua_setfield(L, f, "reason");
      first = 0;
    } else if (line_end > p) {
      add_header(L, t, p, line_end);
    }
    p = line_end + 1;
  }
  if (first) {
    lua_pushliteral(L, "");
    lua_setfield(L, f, "reason");
  }
  lua_setfield(L, f, "headers");
  free(r->head);
  r->head = NULL;
  r->head_len = 0;
}

static const char *const timing_names[] = {"dns", "connect", "tls",
                                           "first_byte", "total"};

/* A new table each time: a script may keep or change it. */
static int push_timings(lua_State *L, const rt_response_t *r) {
  size_t i;

  lua_createtable(L, 0, 5);
  for (i = 0; i < sizeof(timing_names) / sizeof(timing_names[0]); i++) {
    lua_pushnumber(L, r->timings[i]);
    lua_setfield(L, -2, timing_names[i]);
  }
  return 1;
}

static void set_number(lua_State *L, const char *name, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, name);
}

static void set_integer(lua_State *L, const char *name, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, name);
}

void rt_response_push_history(lua_State *L, const rt_attempt_t *attempts, int n,
                              int last_stands) {
  int i;

  lua_createtable(L, last_stands ? n : n + 1, 0);
  for (i = 1; i <= n; i++) {
    const rt_attempt_t *a = &attempts[i - 1];
    int retried = i < n || !last_stands;

    lua_createtable(L, 0, retried ? 6 : 4);
    set_integer(L, "attempt", i);
    set_number(L, "elapsed", a->elapsed);
    set_integer(L, "status", a->status);
    if (a->resent) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "resent");
    }
    if (retried) {
      lua_pushliteral(L, "status");
      lua_setfield(L, -2, "reason");
      set_number(L, "wait", a->wait);
    }
    lua_rawseti(L, -2, i);
  }
}

/* Make r's trail into its fields (the table at index f) as the retry loop
 * sets them: attempts, history and elapsed. */
static void unfold_trail(lua_State *L, rt_response_t *r, int f) {
  rt_response_push_history(L, r->trail, r->trail_len, 1);
  lua_setfield(L, f, "history");
  lua_pushinteger(L, r->trail_len);
  lua_setfield(L, f, "attempts");
  lua_pushnumber(L, r->trail_elapsed);
  lua_setfield(L, f, "elapsed");
  free_trail(r);
}

static int is_trail_key(const char *key) {
  return key != NULL &&
         (strcmp(key, "history") == 0 || strcmp(key, "attempts") == 0 ||
          strcmp(key, "elapsed") == 0);
}

void rt_response_set_trail(rt_response_t *r, rt_attempt_t *attempts, int n,
                           double elapsed) {
  if (n == 1) {
    r->trail_one = attempts[0];
    attempts = &r->trail_one;
  }
  r->trail = attempts;
  r->trail_len = n;
  r->trail_elapsed = elapsed;
}

void rt_response_drop_trail(lua_State *L, int idx) {
  rt_response_t *r = rt_udata_test(L, idx, &response_key);

  if (r != NULL)
    free_trail(r);
}

static int resp_index(lua_State *L) {
  rt_response_t *r = check_response(L, "__index");
  const char *key;

  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
    return 1; /* a method */
  lua_pop(L, 1);
  /* lua_tostring would turn a number key into a string in place. */
  key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (key != NULL) {
    if (strcmp(key, "status") == 0) {
      lua_pushinteger(L, r->status);
      return 1;
    }
    if (strcmp(key, "ok") == 0) {
      lua_pushboolean(L, r->status < 400);
      return 1;
    }
    if (strcmp(key, "retry_after") == 0) {
      lua_pushnumber(L, r->retry_after);
      return 1;
    }
    if (strcmp(key, "timings") == 0)
      return push_timings(L, r);
    if (strcmp(key, "finished_at") == 0) {
      lua_pushnumber(L, r->finished_at);
      return 1;
    }
  }
  lua_getiuservalue(L, 1, 1);
  if (r->head != NULL && key != NULL &&
      (strcmp(key, "headers") == 0 || strcmp(key, "reason") == 0))
    parse_head(L, r, 3);
  if (r->trail != NULL && is_trail_key(key))
    unfold_trail(L, r, 3);
  lua_pushvalue(L, 2);
  lua_rawget(L, 3);
  return 1;
}

/* Fields the Lua layer adds (attempts, history, elapsed) and a script's
 * own go to the fields table; status and ok come from C and stay put. */
static int resp_newindex(lua_State *L) {
  rt_response_t *r = check_response(L, "__newindex");
  const char *key;

  key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (key != NULL &&
      (strcmp(key, "status") == 0 || strcmp(key, "ok") == 0 ||
       strcmp(key, "retry_after") == 0 || strcmp(key, "timings") == 0 ||
       strcmp(key, "finished_at") == 0))
    return rt_error_invalid(L, "response.%s is read-only", key);
  lua_settop(L, 3);
  lua_getiuservalue(L, 1, 1);
  /* The trail's other two fields stay as the request left them. */
  if (r->trail != NULL && is_trail_key(key))
    unfold_trail(L, r, 4);
  lua_insert(L, 2);
  lua_rawset(L, 2);
  return 0;
}

static int resp_tostring(lua_State *L) {
  rt_response_t *r = check_response(L, "__tostring");

  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, "method");
  lua_getfield(L, -2, "url");
  lua_pushfstring(L, "<Response [%d] %s %s>", (int)r->status,
                  luaL_optstring(L, -2, "?"), luaL_optstring(L, -1, "?"));
  return 1;
}

rt_response_t *rt_response_push(lua_State *L) {
  rt_response_t *r = lua_newuserdatauv(L, sizeof(*r), 1);

  memset(r, 0, sizeof(*r));
  rt_udata_setmetatable(L, &response_key);
  /* url, method, and what a request adds (attempts, history, elapsed):
   * room for them all at once, not a rehash as they come. */
  lua_createtable(L, 0, 8);
  lua_setiuservalue(L, -2, 1);
  return r;
}

int rt_response_is(lua_State *L, int idx) {
  return rt_udata_test(L, idx, &response_key) != NULL;
}

void rt_response_setfield(lua_State *L, const char *name) {
  lua_getiuservalue(L, -2, 1);
  lua_insert(L, -2);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

static const luaL_Reg resp_methods[] = {{"close", resp_close},
                                        {"read", resp_read},
                                        {"text", resp_text},
                                        {NULL, NULL}};

void rt_response_open(lua_State *L) {
  if (luaL_newmetatable(L, HEADERS_MT)) {
    lua_pushcfunction(L, headers_index);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newmetatable(L, RESPONSE_MT);
  rt_udata_keep_metatable(L, &response_key);
  lua_pushcfunction(L, resp_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, resp_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, resp_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, resp_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, resp_methods);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, resp_index, 1);
  lua_setfield(L, -3, "__index");
  lua_remove(L, -2);
}
