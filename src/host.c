/* host.c: the Lua states lretry runs a script in. See host.h.
 *
 * The main thread's state prints what went wrong and yields the exit
 * status; a worker thread's state (threads.h) runs the same chunk as
 * worker k of N and reports a failure to the main thread instead of
 * printing it.
 */
#include "host.h"

#include <errno.h>
#include <lauxlib.h>
#include <pthread.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedded.h"
#include "lua_core.h"

static int load_embedded(lua_State *L) {
  const rt_embedded_t *e = lua_touserdata(L, lua_upvalueindex(1));

  if (luaL_loadbufferx(L, e->chunk, e->len, e->chunkname, "bt") != LUA_OK)
    return lua_error(L);
  lua_pushstring(L, e->module);
  lua_call(L, 1, 1);
  return 1;
}

/* package.preload gets the C core and every embedded module, so lretry uses
 * its own copy whatever is installed on the Lua path. */
static void preload_modules(lua_State *L) {
  const rt_embedded_t *e;

  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_retry_core);
  lua_setfield(L, -2, "retry.core");
  for (e = rt_embedded_lua; e->module != NULL; e++) {
    lua_pushlightuserdata(L, (void *)e);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, e->module);
  }
  lua_pop(L, 1);
}

/* Message handler: retry.run already attached the failing task's traceback
 * (to a string, or as err.traceback); add one only where none is. */
static int on_error(lua_State *L) {
  const char *msg;
  lua_Integer i, n;

  if (lua_type(L, 1) == LUA_TTABLE) {
    lua_getfield(L, 1, "traceback");  /* 2 */
    msg = luaL_tolstring(L, 1, NULL); /* 3 */
    if (lua_type(L, 2) == LUA_TSTRING)
      lua_pushfstring(L, "%s\n%s", msg, lua_tostring(L, 2));
    else
      luaL_traceback(L, L, msg, 1);
    lua_replace(L, 3);
    /* The errors of other tasks nobody awaited travel with this one. */
    if (lua_getfield(L, 1, "also_failed") == LUA_TTABLE) { /* 4 */
      n = luaL_len(L, 4);
      for (i = 1; i <= n; i++) {
        lua_geti(L, 4, i);
        luaL_tolstring(L, 5, NULL);
        lua_pushfstring(L, "%s\nalso failed: %s", lua_tostring(L, 3),
                        lua_tostring(L, 6));
        lua_replace(L, 3);
        lua_settop(L, 4);
      }
    }
    lua_settop(L, 3);
    return 1;
  }
  msg = luaL_tolstring(L, 1, NULL);
  if (strstr(msg, "stack traceback:") != NULL)
    return 1;
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static void set_arg_table(lua_State *L, char **argv, int argc, int script) {
  int i;

  lua_createtable(L, argc - script - 1, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* lretry --json FILE / --quiet: defaults for every retry.load. */
static int set_load_defaults(lua_State *L, const char *json, int quiet) {
  int status;

  lua_getglobal(L, "require");
  lua_pushliteral(L, "retry.load");
  status = lua_pcall(L, 1, 1, 0);
  if (status != LUA_OK)
    return status;
  lua_getfield(L, -1, "defaults");
  if (json != NULL) {
    lua_pushstring(L, json);
    lua_setfield(L, -2, "json");
  }
  lua_pushboolean(L, quiet);
  lua_setfield(L, -2, "quiet");
  lua_pop(L, 2);
  return LUA_OK;
}

/* The standard libraries, lretry's modules and `arg`, set up in protected
 * mode: running out of memory here (say, a thousand threads each making a
 * state) fails this state with an error rather than aborting the process
 * in Lua's panic handler. */
static int open_libraries(lua_State *L) {
  rt_host_t *h = lua_touserdata(L, 1);

  luaL_openlibs(L);
  preload_modules(L);
  rt_threads_preload(L, &h->threads);
  set_arg_table(L, h->argv, h->argc, h->script_index);
  return 0;
}

/* A state with retry.run and the chunk on its stack, ready for call_main.
 * Returns a Lua status (the message on top when not LUA_OK); *out is NULL
 * when not even a state could be made. */
static int open_state(rt_host_t *h, lua_State **out) {
  lua_State *L = luaL_newstate();
  int status;

  *out = L;
  if (L == NULL)
    return LUA_ERRMEM;
  /* Incremental: a cycle once the heap is 1.2 times what the last one
   * kept (Lua's default: 2), in 1 KB steps (default: 8 KB) at twice the
   * rate of allocation. Beside Lua's generational mode (11% faster than
   * the incremental defaults) it costs as many instructions and some 2.5%
   * of `lretry load`'s rate, for a 1.8 MB smaller peak at 64 connections
   * and a p99 sleep lateness of 1.0-1.4 ms instead of 1.6-2.2 under full
   * load: a young collection is a millisecond or two in which no task
   * runs, and it ages the requests in flight into old objects that only
   * its next major collection frees. A load at 64 connections keeps some
   * 0.75 MB of Lua heap: 1.2 rather than 1.5 lets it peak at 1.2 MB
   * rather than 1.9 (1.7 MB less RSS for 100,000 requests), for 0.5% more
   * instructions a request. A script may change it. */
  lua_gc(L, LUA_GCINC, 120, 200, 10);
  lua_pushcfunction(L, open_libraries);
  lua_pushlightuserdata(L, h);
  status = lua_pcall(L, 1, 0, 0);
  if (status != LUA_OK)
    return status;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "retry");
  status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_OK && (h->json != NULL || h->quiet))
    status = set_load_defaults(L, h->json, h->quiet);
  if (status != LUA_OK)
    return status;
  lua_getfield(L, -1, "run");
  lua_remove(L, -2);
  if (h->code != NULL)
    return luaL_loadbuffer(L, h->code, strlen(h->code), h->chunkname);
  return luaL_loadbufferx(L, h->source, h->source_len, h->chunkname, NULL);
}

/* Stack: retry.run, chunk. Pushes the script arguments (a command gets its
 * name as the first) and runs it; returns a Lua status, the message (with
 * its traceback) on top when not LUA_OK, or -1 when the arguments do not
 * fit on the stack. */
static int call_main(lua_State *L, rt_host_t *h) {
  int first = h->script_index + 1;
  int base, i;

  /* Every argument goes on the stack: a probe of hundreds of URLs needs
   * more than the 20 free slots Lua guarantees. */
  if (!lua_checkstack(L, h->argc - first + 2))
    return -1;
  for (i = first; i < h->argc; i++)
    lua_pushstring(L, h->argv[i]);
  base = lua_gettop(L) - (h->argc - first) - 1;
  lua_pushcfunction(L, on_error);
  lua_insert(L, base);
  return lua_pcall(L, h->argc - first + 1, 0, base);
}

/* What a load asked the host to exit with (retry.load's exit_status):
 * 130 after Ctrl-C, 143 after SIGTERM, 2 after a crossed threshold; 0 when
 * no load ran. */
static int load_exit_status(lua_State *L) {
  int status = 0;

  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "retry.load") == LUA_TTABLE &&
      lua_getfield(L, -1, "exit_status") == LUA_TNUMBER)
    status = (int)lua_tointeger(L, -1);
  lua_settop(L, 0);
  return status;
}

int rt_host_run(rt_host_t *h) {
  lua_State *L;
  int status = open_state(h, &L);
  int load_status;

  if (L == NULL) {
    fprintf(stderr, "lretry: cannot create a Lua state\n");
    return 1;
  }
  if (status != LUA_OK) {
    fprintf(stderr, "lretry: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  status = call_main(L, h);
  if (status == -1) {
    fprintf(stderr, "lretry: too many arguments (%d)\n",
            h->argc - h->script_index - 1);
    lua_close(L);
    return 2;
  }
  if (status != LUA_OK) {
    fprintf(stderr, "lretry: %s\n", lua_tostring(L, -1));
    status = 1;
  }
  /* After Ctrl-C the script may end in an error (a later load refused to
   * start): the interrupt is still what the caller should see. */
  load_status = load_exit_status(L);
  if (status == 0 || load_status > 128)
    status = load_status;
  /* Joins the worker threads of any load still holding them. */
  lua_close(L);
  return status;
}

/* main() called curl_global_init before any thread started; each state's
 * core then calls it again and curl_global_cleanup when it closes, which
 * only count references, but count them without a lock on builds of
 * libcurl that lack CURL_VERSION_THREADSAFE. Worker threads make and close
 * their states one at a time. */
static pthread_mutex_t curl_refs = PTHREAD_MUTEX_INITIALIZER;

/* A worker thread: the same state and chunk, as worker k of N. Its script
 * ends (with the load's sentinel error) once its share is handed over;
 * any other ending is a failure the main thread reports. */
static void run_worker(rt_worker_t *w, void *arg) {
  rt_host_t *h = arg;
  lua_State *L;
  int status;

  pthread_mutex_lock(&curl_refs);
  status = open_state(h, &L);
  pthread_mutex_unlock(&curl_refs);
  if (L == NULL) {
    rt_threads_worker_failed(w, "cannot create a Lua state");
    return;
  }
  if (status == LUA_OK)
    status = rt_threads_enter_worker(L, w);
  if (status == LUA_OK) {
    status = call_main(L, h);
    if (status == -1) {
      lua_pushliteral(L, "too many arguments");
      status = LUA_ERRRUN;
    }
  }
  if (status != LUA_OK && !rt_threads_handed_over(w))
    rt_threads_worker_failed(w, lua_type(L, -1) == LUA_TSTRING
                                    ? lua_tostring(L, -1)
                                    : "an error that is not a string");
  pthread_mutex_lock(&curl_refs);
  lua_close(L);
  pthread_mutex_unlock(&curl_refs);
}

/* The script's text, read as luaL_loadfile reads it: a first line
 * starting with # is skipped (its newline kept, so line numbers stay). */
static int read_script(rt_host_t *h) {
  const char *name = strcmp(h->script, "-") == 0 ? NULL : h->script;
  FILE *f = name == NULL ? stdin : fopen(name, "rb");
  size_t cap = 0, len = 0, skip = 0;
  char *buf = NULL;

  if (f == NULL) {
    fprintf(stderr, "lretry: cannot open %s: %s\n", name, strerror(errno));
    return 1;
  }
  for (;;) {
    size_t n;

    if (len == cap) {
      char *more = realloc(buf, cap = cap ? cap * 2 : 4096);

      if (more == NULL) {
        fprintf(stderr, "lretry: out of memory reading %s\n",
                name ? name : "stdin");
        free(buf);
        if (name != NULL)
          fclose(f);
        return 1;
      }
      buf = more;
    }
    n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0)
      break;
  }
  if (ferror(f)) {
    fprintf(stderr, "lretry: cannot read %s: %s\n", name ? name : "stdin",
            strerror(errno));
    free(buf);
    if (name != NULL)
      fclose(f);
    return 1;
  }
  if (name != NULL)
    fclose(f);
  if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
    skip = 3;
  if (skip < len && buf[skip] == '#') {
    while (skip < len && buf[skip] != '\n')
      skip++;
    /* A precompiled chunk after the comment starts right after it. */
    if (skip + 1 < len && buf[skip + 1] == LUA_SIGNATURE[0])
      skip++;
  }
  memmove(buf, buf + skip, len - skip);
  h->source = buf;
  h->source_len = len - skip;
  return 0;
}

int rt_host_init(rt_host_t *h, int argc, char **argv, int script_index,
                 const char *code, const char *script, const char *json,
                 int quiet) {
  const char *label;

  memset(h, 0, sizeof(*h));
  h->argc = argc;
  h->argv = argv;
  h->script_index = script_index;
  h->code = code;
  h->script = script;
  h->json = json;
  h->quiet = quiet;
  h->threads.run_worker = run_worker;
  h->threads.arg = h;
  if (code != NULL) {
    label = script_index == 0 ? "=lretry" : "=(command line)";
    h->chunkname = strdup(label);
  } else if (strcmp(script, "-") == 0) {
    h->chunkname = strdup("=stdin");
  } else {
    h->chunkname = malloc(strlen(script) + 2);
    if (h->chunkname != NULL) {
      h->chunkname[0] = '@';
      strcpy(h->chunkname + 1, script);
    }
  }
  if (h->chunkname == NULL) {
    fprintf(stderr, "lretry: out of memory\n");
    return 1;
  }
  if (code == NULL && read_script(h) != 0) {
    rt_host_free(h);
    return 1;
  }
  return 0;
}

void rt_host_free(rt_host_t *h) {
  free(h->chunkname);
  free(h->source);
  h->chunkname = NULL;
  h->source = NULL;
}
