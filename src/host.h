/* host.h: the Lua states lretry runs a script in.
 *
 * One recipe for every state, so a worker thread of `retry.load{threads =
 * N}` (threads.h) runs the script exactly as the main thread does: the
 * standard libraries, the embedded lua/ modules preloaded, `arg`, the
 * --json/--quiet defaults, and the same chunk (a script's text is read
 * once, so every thread runs the same code, also from stdin).
 */
#ifndef RT_HOST_H
#define RT_HOST_H

#include <stddef.h>

#include "threads.h"

typedef struct rt_host_s {
  int argc;
  char **argv;
  int script_index;   /* argv index of the script or of -e's CODE; 0
                         for a command (lretry load|probe|merge) */
  const char *code;   /* the chunk for a command or -e, else NULL */
  const char *script; /* the script's path ("-": stdin), else NULL */
  const char *json;   /* lretry --json FILE */
  int quiet;          /* lretry --quiet */
  char *chunkname;    /* owned: "@path", "=stdin", "=lretry"... */
  char *source;       /* owned: the script's text */
  size_t source_len;
  rt_threads_host_t threads;
} rt_host_t;

/* Fill h from the parsed command line and read the script, if any.
 * Returns 0, or prints why not and returns the exit status (1). */
int rt_host_init(rt_host_t *h, int argc, char **argv, int script_index,
                 const char *code, const char *script, const char *json,
                 int quiet);

/* Run the chunk in a new state on this thread; returns the exit status
 * (README "Load checks": 0, 1 an error, 2, 130). */
int rt_host_run(rt_host_t *h);

void rt_host_free(rt_host_t *h);

#endif
