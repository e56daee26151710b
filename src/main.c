/* main.c: the lretry host program.
 *
 * Owns the process: arguments, libcurl's global state, the file-descriptor
 * limit and the exit status. Runs a script's main chunk inside retry.run in
 * a state host.c makes (the lua/ modules embedded, so no package.path is
 * needed). The only file that exits.
 */
#include <lua.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include <curl/curl.h>
#include <uv.h>

#include "host.h"

static const char usage[] =
    "usage: lretry [options] [--] [script.lua [args...]]\n"
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
    "threshold; 130 a load was interrupted by Ctrl-C, 143 by SIGTERM.\n";

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
  rt_host_t host;
  const char *code = NULL;
  const char *script = NULL;
  const char *json = NULL;
  int quiet = 0;
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
    /* The end of the options: what follows is the script, even "-x.lua". */
    if (strcmp(argv[i], "--") == 0) {
      if (i + 1 < argc) {
        script = argv[i + 1];
        script_index = i + 1;
      }
      break;
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
    /* Bare `lretry` asks for the usage; options without a script are a
     * mistake worth naming. */
    if (argc > 1)
      fputs("lretry: no script to run (give a file, - for stdin, or -e "
            "CODE)\n",
            stderr);
    fputs(usage, stderr);
    return 2;
  }
  raise_fd_limit();
  /* Once per process, before any thread starts (a load may run several):
   * curl_global_init is not thread-safe on every build. The core's own
   * calls, one per Lua state, then only count references. */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "lretry: curl_global_init failed\n");
    return 1;
  }
  status =
      rt_host_init(&host, argc, argv, script_index, code, script, json, quiet);
  if (status == 0) {
    status = rt_host_run(&host);
    rt_host_free(&host);
  }
  curl_global_cleanup();
  return status;
}
