/* main.c: the lretry host program.
 *
 * Owns the process: arguments, the Lua state, the file-descriptor limit and
 * the exit status. Runs a script's main chunk inside retry.run, with the
 * lua/ modules embedded so no package.path is needed. The only file that
 * exits.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include <curl/curl.h>
#include <uv.h>

#include "embedded.h"
#include "lua_core.h"

static const char usage[] =
    "usage: lretry [options] [script.lua [args...]]\n"
    "       lretry load URL [options]     load check (lretry load --help)\n"
    "       lretry probe URL...           check endpoints with retries\n"
    "       lretry merge A.json B.json... add load results exactly\n"
    "  -e CODE      run CODE (inside retry.run) instead of a script\n"
    "  --json FILE  every retry.load in the script writes its figures to\n"
    "               FILE as JSON (- for stdout)\n"
    "  --quiet      no live progress line during a load\n"
    "  -v, --version  print versions and exit\n"
    "  -h, --help     print this help and exit\n"
    "A script runs inside retry.run, so it can make requests at top level;\n"
    "`arg` holds its arguments as in lua. '-' reads the script from stdin.\n"
    "Exit status: 0; 1 an error; 2 bad usage, or a load crossed a\n"
    "threshold; 130 a load was interrupted by Ctrl-C.\n";

static const char *const commands[] = {"load", "probe", "merge", NULL};

/* Thousands of concurrent transfers need as many descriptors; the soft
 * limit is often 1024 while the hard limit allows far more. */
static void raise_fd_limit(void) {
  struct rlimit lim;

  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
}

static int load_embedded(lua_State *L) {
  const rt_embedded_t *e = lua_touserdata(L, lua_upvalueindex(1));

  if (luaL_loadbufferx(L, e->source, e->len, e->chunkname, "t") != LUA_OK)
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

/* Stack: retry.run, chunk. Pushes the script arguments and runs it. */
static int run_main(lua_State *L, char **argv, int argc, int first_arg) {
  int base, i, status;

  /* Every argument goes on the stack: a probe of hundreds of URLs needs
   * more than the 20 free slots Lua guarantees. */
  if (!lua_checkstack(L, argc - first_arg + 2)) {
    fprintf(stderr, "lretry: too many arguments (%d)\n", argc - first_arg);
    return 2;
  }
  for (i = first_arg; i < argc; i++)
    lua_pushstring(L, argv[i]);
  base = lua_gettop(L) - (argc - first_arg) - 1;
  lua_pushcfunction(L, on_error);
  lua_insert(L, base);
  status = lua_pcall(L, argc - first_arg + 1, 0, base);
  if (status != LUA_OK) {
    fprintf(stderr, "lretry: %s\n", lua_tostring(L, -1));
    return 1;
  }
  return 0;
}

/* What a load asked the host to exit with (retry.load's exit_status):
 * 130 after Ctrl-C, 2 after a crossed threshold; 0 when no load ran. */
static int load_exit_status(lua_State *L) {
  int status = 0;

  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "retry.load") == LUA_TTABLE &&
      lua_getfield(L, -1, "exit_status") == LUA_TNUMBER)
    status = (int)lua_tointeger(L, -1);
  lua_settop(L, 0);
  return status;
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

static int is_command(const char *arg) {
  int i;

  for (i = 0; commands[i] != NULL; i++)
    if (strcmp(arg, commands[i]) == 0)
      return 1;
  return 0;
}

static int print_version(void) {
  printf("lretry %s (%s, libcurl %s, libuv %s)\n", RT_VERSION, LUA_RELEASE,
         curl_version_info(CURLVERSION_NOW)->version, uv_version_string());
  return 0;
}

int main(int argc, char **argv) {
  lua_State *L;
  const char *code = NULL;
  const char *script = NULL;
  const char *json = NULL;
  int quiet = 0;
  int load_status;
  int script_index = argc;
  int status;
  int i;

  /* lretry load|probe|merge: the command runs as a chunk in retry.cli. */
  if (argc > 1 && is_command(argv[1])) {
    code = "return require('retry.cli').main(...)";
    script_index = 0;
  }
  for (i = 1; code == NULL && i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      fputs(usage, stdout);
      return 0;
    }
    if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--version") == 0)
      return print_version();
    if (strcmp(argv[i], "-e") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "lretry: '-e' needs an argument\n%s", usage);
        return 2;
      }
      code = argv[++i];
      script_index = i;
      break;
    }
    if (strcmp(argv[i], "--json") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "lretry: '--json' needs a file name\n%s", usage);
        return 2;
      }
      json = argv[++i];
      continue;
    }
    if (strcmp(argv[i], "--quiet") == 0) {
      quiet = 1;
      continue;
    }
    if (argv[i][0] == '-' && argv[i][1] != '\0') {
      fprintf(stderr, "lretry: unknown option '%s'\n%s", argv[i], usage);
      return 2;
    }
    script = argv[i];
    script_index = i;
    break;
  }
  if (code == NULL && script == NULL) {
    fputs(usage, stderr);
    return 2;
  }
  raise_fd_limit();
  L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "lretry: cannot create a Lua state\n");
    return 1;
  }
  luaL_openlibs(L);
  preload_modules(L);
  set_arg_table(L, argv, argc, script_index);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "retry");
  status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_OK && (json != NULL || quiet))
    status = set_load_defaults(L, json, quiet);
  if (status == LUA_OK) {
    lua_getfield(L, -1, "run");
    lua_remove(L, -2);
    if (script_index == 0)
      status = luaL_loadbuffer(L, code, strlen(code), "=lretry");
    else if (code != NULL)
      status = luaL_loadbuffer(L, code, strlen(code), "=(command line)");
    else if (strcmp(script, "-") == 0)
      status = luaL_loadfile(L, NULL);
    else
      status = luaL_loadfile(L, script);
  }
  if (status != LUA_OK) {
    fprintf(stderr, "lretry: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  /* A command gets its name as the first argument. */
  status = run_main(L, argv, argc, script_index == 0 ? 1 : script_index + 1);
  /* After Ctrl-C the script may end in an error (a later load refused to
   * start): the interrupt is still what the caller should see. */
  load_status = load_exit_status(L);
  if (status == 0 || load_status == 130)
    status = load_status;
  lua_close(L);
  return status;
}
