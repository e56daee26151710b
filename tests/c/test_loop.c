/* test_loop.c: the libcurl-on-libuv glue (loop.c, transfer.c) without Lua.
 *
 * Runs real transfers against the bundled test server, whose base URL comes
 * from LRETRY_TEST_URL. Prints one TAP-style line per case and, last,
 * "N passed, M failed". Every case ends by closing its loop, which must
 * report every handle closed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "loop.h"
#include "transfer.h"

static const char *base_url;
static int completed; /* done hooks run in the current case */

/* What the done hook saw for one transfer. */
struct outcome {
  int calls;
  CURLcode code;
  long status;
  long connects;
  CURL *easy;
  const char *kind;
  char body[4096];
};

static void record_done(rt_xfer_t *xfer, void *arg) {
  struct outcome *out = arg;
  size_t n = xfer->body.len < sizeof(out->body) - 1 ? xfer->body.len
                                                    : sizeof(out->body) - 1;

  out->calls++;
  completed++;
  out->code = xfer->result.code;
  out->easy = xfer->easy;
  out->status = xfer->result.status;
  curl_easy_getinfo(xfer->easy, CURLINFO_NUM_CONNECTS, &out->connects);
  out->kind = xfer->result.kind;
  if (n > 0)
    memcpy(out->body, xfer->body.data, n);
  out->body[n] = '\0';
  rt_xfer_release(xfer);
}

static void url_for(char *dst, size_t size, const char *path) {
  snprintf(dst, size, "%s%s", base_url, path);
}

static rt_xfer_t *start(rt_loop_t *loop, const char *method, const char *path,
                        long timeout_ms, struct outcome *out) {
  char url[512];
  rt_request_t req = {0};
  rt_xfer_t *xfer = NULL;

  url_for(url, sizeof(url), path);
  req.method = method;
  req.url = url;
  req.timeout_ms = timeout_ms;
  req.max_body_size = -1;
  req.verify_tls = 1;
  if (rt_xfer_start(loop, &req, record_done, out, &xfer) != 0)
    return NULL;
  return xfer;
}

static void on_guard(uv_timer_t *timer) {
  *(int *)timer->data = 1;
}

/* Run the loop until *count reaches target or limit_ms passes. Returns 1 when
 * the target was reached. */
static int run_until(rt_loop_t *loop, const int *count, int target,
                     uint64_t limit_ms) {
  uv_timer_t guard;
  int expired = 0;

  uv_timer_init(&loop->uv, &guard);
  guard.data = &expired;
  uv_timer_start(&guard, on_guard, limit_ms, 0);
  while (*count < target && !expired)
    uv_run(&loop->uv, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  /* The guard lives on this stack frame: finish closing it here. */
  uv_run(&loop->uv, UV_RUN_NOWAIT);
  return *count >= target;
}

static void finish(rt_loop_t *loop) {
  CHECK(loop->in_flight == 0);
  rt_xfer_pool_drain(loop);
  CHECK(rt_loop_close(loop) == 0);
}

static void test_one_transfer(rt_loop_t *loop) {
  struct outcome out = {0};

  CHECK(start(loop, "GET", "/hello", 5000, &out) != NULL);
  CHECK(run_until(loop, &out.calls, 1, 5000));
  CHECK(out.calls == 1);
  CHECK(out.code == CURLE_OK);
  CHECK(out.status == 200);
  CHECK(strcmp(out.body, "hello\n") == 0);
}

/* curl asks for a 0 ms timeout when a handle is added: it must be served by
 * the idle handle on the next iteration, not by a 0 or 1 ms timer. */
static void test_zero_timeout_uses_idle(rt_loop_t *loop) {
  struct outcome out = {0};

  CHECK(start(loop, "GET", "/hello", 5000, &out) != NULL);
  CHECK(uv_is_active((uv_handle_t *)&loop->curl_kick));
  CHECK(!uv_is_active((uv_handle_t *)&loop->curl_timer));
  CHECK(run_until(loop, &out.calls, 1, 5000));
  CHECK(out.status == 200);
}

static void count_iteration(uv_prepare_t *prepare) {
  (*(long *)prepare->data)++;
}

/* Sequential requests must not spin the loop: each takes a handful of
 * iterations (connect, write, read), not thousands. */
static void test_no_spin(rt_loop_t *loop) {
  enum { requests = 50 };
  uv_prepare_t prepare;
  long iterations = 0;
  int i;

  uv_prepare_init(&loop->uv, &prepare);
  prepare.data = &iterations;
  uv_prepare_start(&prepare, count_iteration);
  uv_unref((uv_handle_t *)&prepare);
  for (i = 0; i < requests; i++) {
    struct outcome out = {0};

    CHECK(start(loop, "GET", "/hello", 5000, &out) != NULL);
    CHECK(run_until(loop, &out.calls, 1, 5000));
    CHECK(out.status == 200);
  }
  printf("#   %ld loop iterations for %d sequential requests\n", iterations,
         requests);
  CHECK(iterations < requests * 20);
  uv_close((uv_handle_t *)&prepare, NULL);
  /* The handle lives on this stack frame: finish closing it here. */
  uv_run(&loop->uv, UV_RUN_NOWAIT);
}

/* The second request reuses both the pooled easy handle and the kept-alive
 * connection. */
static void test_connection_reuse(rt_loop_t *loop) {
  struct outcome first = {0}, second = {0};

  CHECK(start(loop, "GET", "/hello", 5000, &first) != NULL);
  CHECK(run_until(loop, &first.calls, 1, 5000));
  CHECK(start(loop, "GET", "/hello", 5000, &second) != NULL);
  CHECK(run_until(loop, &second.calls, 1, 5000));
  CHECK(first.connects == 1);
  CHECK(second.connects == 0);
  CHECK(first.easy == second.easy);
}

/* Cancelling removes the transfer from the loop: the done hook never runs
 * and nothing stays in flight. */
static void test_cancel_mid_flight(rt_loop_t *loop) {
  struct outcome out = {0};
  int never = 0;
  rt_xfer_t *xfer = start(loop, "GET", "/delay/3000", 10000, &out);

  CHECK(xfer != NULL);
  CHECK(!run_until(loop, &never, 1, 100));
  CHECK(loop->in_flight == 1);
  rt_xfer_release(xfer);
  CHECK(loop->in_flight == 0);
  CHECK(!run_until(loop, &never, 1, 100));
  CHECK(out.calls == 0);
  /* The loop still serves new transfers after a cancel. */
  CHECK(start(loop, "GET", "/hello", 5000, &out) != NULL);
  CHECK(run_until(loop, &out.calls, 1, 5000));
  CHECK(out.status == 200);
}

static void test_refused(rt_loop_t *loop) {
  struct outcome out = {0};
  rt_request_t req = {0};
  rt_xfer_t *xfer;

  /* Port 1 on loopback: nothing listens there on a test machine. */
  req.method = "GET";
  req.url = "http://127.0.0.1:1/";
  req.timeout_ms = 5000;
  req.max_body_size = -1;
  req.verify_tls = 1;
  CHECK(rt_xfer_start(loop, &req, record_done, &out, &xfer) == 0);
  CHECK(run_until(loop, &out.calls, 1, 5000));
  CHECK(out.code == CURLE_COULDNT_CONNECT);
  CHECK(out.kind != NULL && strcmp(out.kind, "connect") == 0);
}

static void test_empty_reply(rt_loop_t *loop) {
  struct outcome out = {0};

  CHECK(start(loop, "GET", "/close?key=c-empty&n=100", 5000, &out) != NULL);
  CHECK(run_until(loop, &out.calls, 1, 5000));
  CHECK(out.code != CURLE_OK);
  CHECK(out.kind != NULL && strcmp(out.kind, "network") == 0);
}

static void test_timeout(rt_loop_t *loop) {
  struct outcome out = {0};

  CHECK(start(loop, "GET", "/delay/3000", 100, &out) != NULL);
  CHECK(run_until(loop, &out.calls, 1, 5000));
  CHECK(out.code == CURLE_OPERATION_TIMEDOUT);
  CHECK(out.kind != NULL && strcmp(out.kind, "timeout") == 0);
}

static void test_post_body(rt_loop_t *loop) {
  struct outcome out = {0};
  char url[512];
  rt_request_t req = {0};
  rt_xfer_t *xfer;
  const char *headers[] = {"Content-Type: text/plain"};

  url_for(url, sizeof(url), "/echo");
  req.method = "POST";
  req.url = url;
  req.headers = headers;
  req.header_count = 1;
  req.body = "payload-123";
  req.body_len = strlen(req.body);
  req.timeout_ms = 5000;
  req.max_body_size = -1;
  req.verify_tls = 1;
  CHECK(rt_xfer_start(loop, &req, record_done, &out, &xfer) == 0);
  CHECK(run_until(loop, &out.calls, 1, 5000));
  CHECK(out.status == 200);
  CHECK(strstr(out.body, "payload-123") != NULL);
  CHECK(strstr(out.body, "POST") != NULL);
}

static void test_many_concurrent(rt_loop_t *loop) {
  enum { count = 500 };
  static struct outcome outs[count];
  int ok = 0, i;

  memset(outs, 0, sizeof(outs));
  for (i = 0; i < count; i++)
    CHECK(start(loop, "GET", "/hello", 20000, &outs[i]) != NULL);
  CHECK(loop->in_flight == count);
  CHECK(run_until(loop, &completed, count, 20000));
  for (i = 0; i < count; i++)
    ok += outs[i].calls == 1 && outs[i].status == 200;
  CHECK(ok == count);
}

/* Closing a loop whose pool holds kept-alive connections closes every poll
 * handle (checked by finish). */
static void test_close_with_idle_connections(rt_loop_t *loop) {
  struct outcome a = {0}, b = {0};

  CHECK(start(loop, "GET", "/hello", 5000, &a) != NULL);
  CHECK(start(loop, "GET", "/hello", 5000, &b) != NULL);
  CHECK(run_until(loop, &completed, 2, 5000));
  /* Two transfers at once need two connections, both kept alive for
   * finish() to close. */
  CHECK(a.connects == 1 && b.connects == 1);
  CHECK(a.status == 200 && b.status == 200);
}

/* A steady load keeps one connection per transfer in flight: libcurl's own
 * cache size (4 per easy handle added at the moment one ends) would close
 * and reopen connections between rounds. */
static void test_connections_follow_concurrency(rt_loop_t *loop) {
  enum { width = 32, rounds = 10 };
  static struct outcome outs[width];
  long connects = 0;
  int round, i;

  for (round = 0; round < rounds; round++) {
    memset(outs, 0, sizeof(outs));
    completed = 0;
    for (i = 0; i < width; i++)
      CHECK(start(loop, "GET", "/hello", 5000, &outs[i]) != NULL);
    CHECK(run_until(loop, &completed, width, 10000));
    for (i = 0; i < width; i++) {
      CHECK(outs[i].status == 200);
      connects += outs[i].connects;
    }
  }
  printf("#   %ld connections for %d rounds of %d\n", connects, rounds, width);
  CHECK(connects == width);
}

/* One round of `width` GETs of `path` at once; returns the connections
 * they opened. */
static long round_of(rt_loop_t *loop, int width, const char *path) {
  static struct outcome outs[64];
  long connects = 0;
  int i;

  memset(outs, 0, sizeof(outs));
  completed = 0;
  for (i = 0; i < width; i++)
    CHECK(start(loop, "GET", path, 5000, &outs[i]) != NULL);
  CHECK(run_until(loop, &completed, width, 10000));
  for (i = 0; i < width; i++) {
    CHECK(outs[i].status == 200);
    connects += outs[i].connects;
  }
  return connects;
}

/* A steady load's transfers in flight dip below its concurrency whenever
 * its tasks are busy with what came back: a cache that followed such a dip
 * down would close connections the load opens again a moment later. A
 * real drop is followed, with a quarter to spare. */
static void test_cache_follows_real_drops_only(rt_loop_t *loop) {
  long connects = round_of(loop, 32, "/hello");
  uint64_t until = uv_now(&loop->uv) + 3300;

  while (uv_now(&loop->uv) < until)
    connects += round_of(loop, 26, "/delay/20");
  printf("#   cache of %ld after a dip to 26 of 32\n", loop->max_connects);
  CHECK(loop->max_connects >= 32);
  connects += round_of(loop, 32, "/hello");
  CHECK(connects == 32);
  until = uv_now(&loop->uv) + 3300;
  while (uv_now(&loop->uv) < until)
    round_of(loop, 8, "/delay/20");
  printf("#   cache of %ld after a drop to 8\n", loop->max_connects);
  CHECK(loop->max_connects == 10);
}

static void count_poll(uv_handle_t *handle, void *arg) {
  if (handle->type == UV_POLL && !uv_is_closing(handle))
    (*(int *)arg)++;
}

struct between_state {
  rt_loop_t *loop;
  int calls;
  struct outcome second;
};

/* Starts a transfer the first time: the hook runs outside curl, where
 * adding a handle is allowed (inside, curl refuses recursive calls). */
static void start_second(void *data) {
  struct between_state *st = data;

  if (st->calls++ == 0)
    CHECK(start(st->loop, "GET", "/hello", 5000, &st->second) != NULL);
}

/* The between hook runs after each socket event, outside curl. */
static void test_between_runs_outside_curl(rt_loop_t *loop) {
  struct between_state st = {0};
  struct outcome first = {0};

  st.loop = loop;
  loop->between = start_second;
  loop->between_data = &st;
  CHECK(start(loop, "GET", "/hello", 5000, &first) != NULL);
  CHECK(run_until(loop, &completed, 2, 5000));
  CHECK(first.status == 200);
  CHECK(st.second.status == 200);
  CHECK(st.calls >= 2);
  loop->between = NULL;
}

static int count_waiting(const rt_loop_t *loop) {
  const rt_loop_job_t *job;
  int n = 0;

  for (job = loop->waiting_head; job != NULL; job = job->next)
    n++;
  return n;
}

struct batches {
  rt_loop_t *loop;
  int calls;
  int waiting[8]; /* transfers not yet given to curl, at each call */
};

static void note_waiting(void *data) {
  struct batches *b = data;

  if (b->calls < 8)
    b->waiting[b->calls] = count_waiting(b->loop);
  b->calls++;
}

/* With a between hook, transfers wait for the loop and go to curl eight at
 * a time, the hook run after each batch: curl sends every request it is
 * given in one call, and a timer due meanwhile must not wait for them all. */
static void test_new_transfers_go_in_batches(rt_loop_t *loop) {
  enum { count = 20 };
  static struct outcome outs[count];
  struct batches b = {0};
  int ok = 0, i;

  memset(outs, 0, sizeof(outs));
  b.loop = loop;
  loop->between = note_waiting;
  loop->between_data = &b;
  for (i = 0; i < count; i++)
    CHECK(start(loop, "GET", "/hello", 5000, &outs[i]) != NULL);
  CHECK(count_waiting(loop) == count);
  CHECK(loop->in_flight == count);
  CHECK(uv_is_active((uv_handle_t *)&loop->curl_kick));
  /* One iteration runs the kick: three batches, the hook after the two
   * that leave transfers waiting. */
  uv_run(&loop->uv, UV_RUN_NOWAIT);
  CHECK(count_waiting(loop) == 0);
  CHECK(b.calls >= 2);
  CHECK(b.waiting[0] == 12);
  CHECK(b.waiting[1] == 4);
  CHECK(run_until(loop, &completed, count, 5000));
  for (i = 0; i < count; i++)
    ok += outs[i].calls == 1 && outs[i].status == 200;
  CHECK(ok == count);
  loop->between = NULL;
}

static void do_nothing(void *data) {
  (void)data;
}

/* A transfer cancelled before curl was given it never reaches the server
 * nor its done hook; the others are not held up. */
static void test_cancel_while_waiting(rt_loop_t *loop) {
  struct outcome a = {0}, b = {0}, c = {0}, hits = {0};
  rt_xfer_t *second;
  int never = 0;
  char path[128];

  /* A key of its own: the ASan build runs this against the same server. */
  snprintf(path, sizeof(path), "/hello?key=waiting-%ld-%lu", (long)getpid(),
           (unsigned long)uv_hrtime());
  loop->between = do_nothing;
  CHECK(start(loop, "GET", "/hello", 5000, &a) != NULL);
  second = start(loop, "GET", path, 5000, &b);
  CHECK(second != NULL);
  CHECK(start(loop, "GET", "/hello", 5000, &c) != NULL);
  rt_xfer_release(second);
  CHECK(count_waiting(loop) == 2);
  CHECK(loop->in_flight == 2);
  CHECK(run_until(loop, &completed, 2, 5000));
  CHECK(a.status == 200 && c.status == 200);
  CHECK(!run_until(loop, &never, 1, 100));
  CHECK(b.calls == 0);
  CHECK(loop->in_flight == 0);
  memcpy(path, "/hits?", 6); /* "/hello?key=..." -> "/hits?key=..." */
  memmove(path + 6, path + 7, strlen(path + 7) + 1);
  CHECK(start(loop, "GET", path, 5000, &hits) != NULL);
  CHECK(run_until(loop, &hits.calls, 1, 5000));
  CHECK(strstr(hits.body, "\"hits\":0,") != NULL);
  loop->between = NULL;
}

struct refusal {
  int calls;
  long status;
  char kind[32];
  char message[256];
};

static void record_refusal(rt_xfer_t *xfer, void *arg) {
  struct refusal *out = arg;

  out->calls++;
  out->status = xfer->result.status;
  snprintf(out->kind, sizeof(out->kind), "%s",
           xfer->result.kind != NULL ? xfer->result.kind : "");
  snprintf(out->message, sizeof(out->message), "%s",
           xfer->result.message != NULL ? xfer->result.message : "");
  rt_xfer_release(xfer);
}

/* A transfer libcurl will not take at hand-over (here: its handle is in
 * another multi handle, as out of memory would also make it) ends with an
 * error that says so, and nothing of the handle's last transfer. */
static void test_refused_at_hand_over(rt_loop_t *loop) {
  struct outcome first = {0};
  struct refusal out = {0};
  CURLM *other = curl_multi_init();
  rt_xfer_t *xfer;

  loop->between = do_nothing;
  /* The pooled handle then holds a 503's status and timings. */
  CHECK(start(loop, "GET", "/fail?n=1", 5000, &first) != NULL);
  CHECK(run_until(loop, &first.calls, 1, 5000));
  CHECK(first.status == 503);
  xfer = start(loop, "GET", "/hello", 5000, NULL);
  CHECK(xfer != NULL);
  CHECK(xfer->easy == first.easy);
  CHECK(curl_multi_add_handle(other, xfer->easy) == CURLM_OK);
  xfer->done = record_refusal;
  xfer->done_arg = &out;
  CHECK(run_until(loop, &out.calls, 1, 5000));
  printf("#   %s: %s\n", out.kind, out.message);
  CHECK(out.status == 0);
  CHECK(strcmp(out.kind, "network") == 0);
  CHECK(strstr(out.message, "libcurl would not start the transfer") != NULL);
  CHECK(loop->in_flight == 0);
  curl_multi_remove_handle(other, first.easy);
  curl_multi_cleanup(other);
  loop->between = NULL;
}

/* rt_loop_reset closes kept-alive connections and empties the handle pool;
 * the loop serves new transfers afterwards on new connections. */
static void test_reset_closes_idle(rt_loop_t *loop) {
  struct outcome a = {0}, b = {0}, c = {0};
  int polls = 0;

  CHECK(start(loop, "GET", "/hello", 5000, &a) != NULL);
  CHECK(start(loop, "GET", "/hello", 5000, &b) != NULL);
  CHECK(run_until(loop, &completed, 2, 5000));
  CHECK(loop->xfer_idle == 2);
  rt_loop_reset(loop);
  CHECK(loop->xfer_idle == 0);
  uv_walk(&loop->uv, count_poll, &polls);
  CHECK(polls == 0);
  CHECK(start(loop, "GET", "/hello", 5000, &c) != NULL);
  CHECK(run_until(loop, &c.calls, 1, 5000));
  CHECK(c.status == 200);
  CHECK(c.connects == 1);
}

/* After a burst the tidy timer gives the idle easy handles back (within
 * three of its periods), shrinks the connection cache and, with nothing in
 * flight, closes the idle connections: the next transfer connects anew. */
static void test_pool_shrinks_after_burst(rt_loop_t *loop) {
  enum { burst = 100 };
  static struct outcome outs[burst];
  struct outcome after = {0};
  int never = 0;
  int i;

  memset(outs, 0, sizeof(outs));
  for (i = 0; i < burst; i++)
    CHECK(start(loop, "GET", "/hello", 10000, &outs[i]) != NULL);
  CHECK(run_until(loop, &completed, burst, 10000));
  CHECK(loop->xfer_idle == burst);
  CHECK(loop->max_connects >= burst);
  CHECK(!run_until(loop, &never, 1, 3300));
  printf("#   %u idle handles, cache of %ld after the burst\n", loop->xfer_idle,
         loop->max_connects);
  CHECK(loop->xfer_idle == 0);
  CHECK(loop->max_connects < burst);
  CHECK(start(loop, "GET", "/hello", 5000, &after) != NULL);
  CHECK(run_until(loop, &after.calls, 1, 5000));
  CHECK(after.status == 200);
  CHECK(after.connects == 1);
}

struct test_case {
  const char *name;
  void (*run)(rt_loop_t *loop);
};

static const struct test_case cases[] = {
    {"one transfer", test_one_transfer},
    {"0 ms timeout runs on the idle handle", test_zero_timeout_uses_idle},
    {"sequential requests do not spin", test_no_spin},
    {"connection and easy handle reused", test_connection_reuse},
    {"cancel mid-flight", test_cancel_mid_flight},
    {"refused maps to connect", test_refused},
    {"empty reply maps to network", test_empty_reply},
    {"timeout maps to timeout", test_timeout},
    {"POST body sent", test_post_body},
    {"500 concurrent transfers", test_many_concurrent},
    {"close with idle connections", test_close_with_idle_connections},
    {"connections follow the concurrency", test_connections_follow_concurrency},
    {"the connection cache follows real drops, not dips",
     test_cache_follows_real_drops_only},
    {"reset closes idle connections", test_reset_closes_idle},
    {"handle pool shrinks after a burst", test_pool_shrinks_after_burst},
    {"the between hook runs after socket events, outside curl",
     test_between_runs_outside_curl},
    {"with a between hook, new transfers go to curl in batches",
     test_new_transfers_go_in_batches},
    {"a transfer cancelled before curl had it never runs",
     test_cancel_while_waiting},
    {"a transfer curl refuses at hand-over ends with an error saying so",
     test_refused_at_hand_over},
};

int main(void) {
  size_t i;
  size_t n = sizeof(cases) / sizeof(cases[0]);

  base_url = getenv("LRETRY_TEST_URL");
  if (base_url == NULL || base_url[0] == '\0') {
    fprintf(stderr, "test_loop: LRETRY_TEST_URL is not set\n");
    printf("0 passed, 1 failed\n");
    return 1;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    printf("0 passed, 1 failed\n");
    return 1;
  }
  printf("1..%zu\n", n);
  for (i = 0; i < n; i++) {
    rt_loop_t loop;

    case_failed = 0;
    completed = 0;
    if (rt_loop_init(&loop) != 0) {
      case_failed = 1;
    } else {
      cases[i].run(&loop);
      finish(&loop);
    }
    printf("%s %zu - %s\n", case_failed ? "not ok" : "ok", i + 1,
           cases[i].name);
    fflush(stdout);
    if (case_failed)
      failed++;
    else
      passed++;
  }
  curl_global_cleanup();
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
