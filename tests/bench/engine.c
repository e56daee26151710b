/* engine.c: what a request path in C with a Lua check per response could
 * do on one loop, measured before it is built.
 *
 * Issue 9's throughput targets need a request path that does not resume a
 * Lua task per request (README, Performance). This runs lretry's own
 * transfers (src/transfer.c: its request headers, callbacks and pooled easy
 * handles), CONCURRENCY at a time, makes each response a Response in a Lua
 * state (src/response.c), calls a Lua check on it from C and records the
 * latency in lretry's histogram (src/histogram.c). As lretry's loop does,
 * it handles the transfers one turn of the loop finished together, after
 * the poll (a uv_check handle), checking every response and then starting
 * every next transfer: work of one kind in a row runs faster than the same
 * work interleaved (the caches stay warm), which instruction counts do not
 * show. What it leaves out is what such a path would keep in C: the retry
 * decision for a response that stands, and the counts. scripts/bench.sh
 * puts its figures beside the ceiling's.
 *
 *   lretry-engine URL [TOTAL] [CONCURRENCY]      defaults: 100000 64
 *
 * Prints one line: requests, failures, p99 latency, seconds, requests per
 * second. Exits 1 when a transfer failed or the check did not pass.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "histogram.h"
#include "loop.h"
#include "response.h"
#include "transfer.h"

struct worker {
  struct run *run;
  rt_xfer_t *xfer;
  uint64_t started_ns;
};

struct run {
  rt_loop_t loop;
  uv_check_t turn;       /* after the poll: the finished transfers */
  uv_idle_t nudge;       /* on while some wait for the turn: a transfer curl
                            finished outside the poll (from a timer or the
                            kick) must not wait for the poll to time out */
  struct worker **ended; /* finished since the last turn */
  long ended_count;
  lua_State *L;
  int check_ref;
  rt_request_t req;
  rt_histogram_t latency;
  long total;
  long started;
  long done;
  long failed;
};

static void on_done(rt_xfer_t *xfer, void *arg);
static void on_turn(uv_check_t *turn);
static void on_nudge(uv_idle_t *nudge);

static void start(struct worker *w) {
  struct run *run = w->run;

  run->started++;
  w->started_ns = uv_hrtime();
  if (rt_xfer_start(&run->loop, &run->req, on_done, w, &w->xfer) != 0) {
    w->xfer = NULL;
    run->done++;
    run->failed++;
  }
}

/* The response as a Response, through the check; whether it passed. */
static int check(struct run *run, rt_xfer_t *xfer) {
  lua_State *L = run->L;
  rt_response_t *r;
  int passed;

  lua_rawgeti(L, LUA_REGISTRYINDEX, run->check_ref);
  r = rt_response_push(L);
  r->status = xfer->result.status;
  r->finished_at = xfer->result.timings.finished_at;
  r->body = rt_buf_take(&xfer->body, &r->body_len);
  r->head = rt_buf_take(&xfer->head, &r->head_len);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    fprintf(stderr, "lretry-engine: the check raised: %s\n",
            lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  passed = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return passed;
}

static void on_done(rt_xfer_t *xfer, void *arg) {
  struct worker *w = arg;
  struct run *run = w->run;

  (void)xfer;
  rt_hist_record(&run->latency, uv_hrtime() - w->started_ns);
  if (run->ended_count == 0) {
    uv_check_start(&run->turn, on_turn);
    uv_idle_start(&run->nudge, on_nudge);
  }
  run->ended[run->ended_count++] = w;
}

static void on_nudge(uv_idle_t *nudge) {
  (void)nudge;
}

/* Check every response that came in this turn, then start the next
 * transfers. */
static void on_turn(uv_check_t *turn) {
  struct run *run = turn->data;
  long i, n = run->ended_count;

  uv_check_stop(turn);
  uv_idle_stop(&run->nudge);
  run->ended_count = 0;
  for (i = 0; i < n; i++) {
    struct worker *w = run->ended[i];

    run->done++;
    if (w->xfer->result.kind != NULL || !check(run, w->xfer))
      run->failed++;
    rt_xfer_release(w->xfer);
    w->xfer = NULL;
  }
  for (i = 0; i < n && run->started < run->total; i++)
    start(run->ended[i]);
}

/* The Lua state and its check, as a load's `check` would be written. */
static int open_lua(struct run *run) {
  lua_State *L = luaL_newstate();

  if (L == NULL)
    return -1;
  luaL_openlibs(L);
  rt_response_open(L);
  lua_pop(L, 1);
  if (luaL_dostring(L, "return function(r) return r.status == 200 end") !=
      LUA_OK) {
    lua_close(L);
    return -1;
  }
  run->check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  run->L = L;
  return 0;
}

int main(int argc, char **argv) {
  bench_args_t args;
  const char *bad_url;
  struct run run = {0};
  struct worker *workers = NULL;
  long conc, i;
  uint64_t t0;
  double seconds;
  int status = 1;

  bench_args(argc, argv, "lretry-engine", &args);
  run.total = args.total;
  conc = args.conc;
  /* A RetryClient's defaults: GET, 30 s per attempt, 10 s to connect, no
   * redirects followed beyond aiohttp's 10, no body limit. */
  run.req.method = "GET";
  run.req.url = args.url;
  run.req.timeout_ms = 30000;
  run.req.connect_timeout_ms = 10000;
  run.req.max_redirects = 10;
  run.req.max_body_size = -1;
  run.req.verify_tls = 1;
  rt_hist_init(&run.latency);
  bad_url = rt_request_check_url(args.url, strlen(args.url));
  if (bad_url != NULL) {
    fprintf(stderr, "lretry-engine: %s: %s\n", args.url, bad_url);
    return 2;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "lretry-engine: cannot set up libcurl\n");
    return 1;
  }
  if (rt_loop_init(&run.loop) != 0) {
    fprintf(stderr, "lretry-engine: cannot set up libuv\n");
    curl_global_cleanup();
    return 1;
  }
  uv_check_init(&run.loop.uv, &run.turn);
  run.turn.data = &run;
  uv_idle_init(&run.loop.uv, &run.nudge);
  workers = calloc((size_t)conc, sizeof(*workers));
  run.ended = calloc((size_t)conc, sizeof(*run.ended));
  if (workers == NULL || run.ended == NULL || open_lua(&run) != 0) {
    fprintf(stderr, "lretry-engine: out of memory\n");
    goto out;
  }
  t0 = uv_hrtime();
  for (i = 0; i < conc; i++) {
    workers[i].run = &run;
    start(&workers[i]);
  }
  uv_run(&run.loop.uv, UV_RUN_DEFAULT);
  seconds = (double)(uv_hrtime() - t0) / 1e9;
  printf("engine: %ld requests (%ld failed, p99 %.3f ms) in %.2f s, %.0f "
         "req/s\n",
         run.done, run.failed,
         (double)rt_hist_percentile(&run.latency, 99) / 1e6, seconds,
         (double)run.done / seconds);
  status = run.failed == 0 && run.done == run.total ? 0 : 1;
out:
  /* Every transfer has ended when uv_run returns and was released. */
  /* rt_loop_close runs the loop that closes them. */
  uv_close((uv_handle_t *)&run.turn, NULL);
  uv_close((uv_handle_t *)&run.nudge, NULL);
  free(run.ended);
  free(workers);
  if (run.L != NULL)
    lua_close(run.L);
  rt_xfer_pool_drain(&run.loop);
  rt_loop_close(&run.loop);
  curl_global_cleanup();
  return status;
}
