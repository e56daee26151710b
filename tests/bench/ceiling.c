/* ceiling.c: what lretry's stack can do on one loop without Lua.
 *
 * The C ceiling of scripts/bench.sh: libcurl's multi socket API on libuv
 * through lretry's own glue (src/loop.c), CONCURRENCY easy handles set up
 * once and added again as soon as each transfer ends, bodies thrown away.
 * No Lua, no retry policy, no request building per attempt: whatever
 * lretry's layers above loop.c cost shows as the distance to this figure.
 *
 *   lretry-ceiling URL [TOTAL] [CONCURRENCY]      defaults: 100000 64
 *
 * Prints one line: requests, failures, seconds, requests per second. Exits
 * 1 when a transfer failed or answered other than 200.
 */
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "loop.h"

struct worker {
  rt_loop_job_t job; /* first: the loop hands it back */
  CURL *easy;
  struct run *run;
};

struct run {
  rt_loop_t loop;
  long total;
  long started;
  long done;
  long failed;
};

static size_t discard(char *data, size_t size, size_t n, void *arg) {
  (void)data;
  (void)arg;
  return size * n;
}

static void start(struct worker *w) {
  struct run *run = w->run;

  run->started++;
  if (rt_loop_add(&run->loop, &w->job, w->easy) != 0) {
    run->done++;
    run->failed++;
  }
}

static void on_done(rt_loop_job_t *job, CURLcode result) {
  struct worker *w = (struct worker *)job;
  struct run *run = w->run;
  long status = 0;

  curl_easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &status);
  run->done++;
  if (result != CURLE_OK || status != 200)
    run->failed++;
  if (run->started < run->total)
    start(w);
}

int main(int argc, char **argv) {
  bench_args_t args;
  struct run run = {0};
  struct worker *workers = NULL;
  long conc, i, made = 0;
  uint64_t t0;
  double seconds;
  int status = 1;

  bench_args(argc, argv, "lretry-ceiling", &args);
  run.total = args.total;
  conc = args.conc;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "lretry-ceiling: cannot set up libcurl\n");
    return 1;
  }
  if (rt_loop_init(&run.loop) != 0) {
    fprintf(stderr, "lretry-ceiling: cannot set up libuv\n");
    curl_global_cleanup();
    return 1;
  }
  workers = calloc((size_t)conc, sizeof(*workers));
  if (workers == NULL) {
    fprintf(stderr, "lretry-ceiling: out of memory\n");
    goto out;
  }
  for (made = 0; made < conc; made++) {
    struct worker *w = &workers[made];

    w->job.done = on_done;
    w->run = &run;
    w->easy = curl_easy_init();
    if (w->easy == NULL) {
      fprintf(stderr, "lretry-ceiling: cannot make an easy handle\n");
      goto out;
    }
    curl_easy_setopt(w->easy, CURLOPT_URL, args.url);
    curl_easy_setopt(w->easy, CURLOPT_PRIVATE, &w->job);
    curl_easy_setopt(w->easy, CURLOPT_WRITEFUNCTION, discard);
  }
  t0 = uv_hrtime();
  for (i = 0; i < conc; i++)
    start(&workers[i]);
  uv_run(&run.loop.uv, UV_RUN_DEFAULT);
  seconds = (double)(uv_hrtime() - t0) / 1e9;
  printf("ceiling: %ld requests (%ld failed) in %.2f s, %.0f req/s\n", run.done,
         run.failed, seconds, (double)run.done / seconds);
  status = run.failed == 0 && run.done == run.total ? 0 : 1;
out:
  /* Every transfer has ended when uv_run returns: none is in the multi. */
  for (i = 0; i < made; i++)
    curl_easy_cleanup(workers[i].easy);
  free(workers);
  rt_loop_close(&run.loop);
  curl_global_cleanup();
  return status;
}
