/* loop.c: curl's multi socket API on libuv (a hardened docs/examples/multi-uv).
 *
 * Owns the multi handle, the per-socket poll contexts, curl's timer and the
 * sizing of curl's connection cache. Never calls Lua: finished transfers are
 * handed to their job's done hook only after curl_multi_socket_action has
 * returned.
 */
#include "loop.h"

#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* The connection cache never shrinks below this: a script calling a few
 * hosts one request at a time keeps their connections. */
#define MIN_CONNECTS 8

/* How often the tidy timer looks at the recent peak of transfers in flight.
 * Two periods of history make the cache follow a load that pauses for a
 * moment without dropping its connections. */
#define TIDY_MS 1000

/* With a between hook, new transfers go to curl this many at a time, the
 * hook run after each batch: curl sends the requests of all the transfers
 * it was given in one call, some 20 µs each, and a load that had sixty to
 * start held the loop (and every timer) for over a millisecond. */
#define HAND_OVER_BATCH 8

/* A socket whose poll keeps failing without curl dropping it gets told so
 * after this many errors in a row, rather than spinning the loop. */
#define MAX_POLL_ERRORS 3

/* One per socket curl watches, attached with curl_multi_assign so a socket
 * never gets a second poll. Freed in its close callback. */
struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
  int events;      /* what curl asked for, as UV_READABLE | UV_WRITABLE */
  int errors;      /* poll errors in a row */
  rt_loop_t *loop; /* borrowed */
};

static void check_multi_info(rt_loop_t *loop) {
  CURLMsg *msg;
  int pending;

  for (;;) {
    CURL *easy;
    CURLcode result;
    rt_loop_job_t *job = NULL;

    msg = curl_multi_info_read(loop->multi, &pending);
    if (msg == NULL)
      break;
    if (msg->msg != CURLMSG_DONE)
      continue;
    easy = msg->easy_handle;
    result = msg->data.result;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&job);
    /* msg is invalid after this call, so everything was copied above. */
    curl_multi_remove_handle(loop->multi, easy);
    loop->in_flight--;
    job->done(job, result);
  }
}

static void socket_action(rt_loop_t *loop, curl_socket_t fd, int flags) {
  int running;

  curl_multi_socket_action(loop->multi, fd, flags, &running);
  check_multi_info(loop);
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  struct sock_ctx *ctx = handle->data;
  int flags = 0;

  if (status < 0) {
    /* libuv reports POLLERR (a reset, say) as an error and stops the
     * poll. The socket may still hold a complete response, so curl must
     * read it and meet the error itself: hand it the events it waits for,
     * as curl's own tool does after poll() says POLLERR. CURL_CSELECT_ERR
     * alone would fail the transfer with "select/poll returned error"
     * without reading a byte. */
    ctx->errors++;
    if (ctx->errors > MAX_POLL_ERRORS)
      flags = CURL_CSELECT_ERR;
    else {
      if (ctx->events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
      if (ctx->events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    }
  } else {
    ctx->errors = 0;
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  socket_action(ctx->loop, ctx->fd, flags);
  /* curl keeps a socket it is still reading without telling us again, but
   * libuv stopped the poll: start it again unless curl let go of it (its
   * close callback has not run yet, so ctx is still ours to look at). */
  if (status < 0 && !uv_is_closing((uv_handle_t *)handle) &&
      !uv_is_active((uv_handle_t *)handle) && ctx->events != 0)
    uv_poll_start(handle, ctx->events, on_poll);
  /* Last: what it runs may close this handle. ctx lives until its close
   * callback, in a later phase. */
  if (ctx->loop->between != NULL)
    ctx->loop->between(ctx->loop->between_data);
}

static void free_on_close(uv_handle_t *handle) {
  free(handle->data);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
                     void *socketp) {
  rt_loop_t *loop = userp;
  struct sock_ctx *ctx = socketp;
  int events = 0;

  (void)easy;
  if (what == CURL_POLL_REMOVE) {
    if (ctx != NULL) {
      /* Stop now, not in the close callback: curl closes the fd next. */
      uv_poll_stop(&ctx->poll);
      uv_close((uv_handle_t *)&ctx->poll, free_on_close);
      curl_multi_assign(loop->multi, fd, NULL);
    }
    return 0;
  }
  if (ctx == NULL) {
    ctx = malloc(sizeof(*ctx));
    if (ctx == NULL)
      return -1;
    if (uv_poll_init_socket(&loop->uv, &ctx->poll, fd) != 0) {
      free(ctx);
      return -1;
    }
    ctx->fd = fd;
    ctx->errors = 0;
    ctx->loop = loop;
    ctx->poll.data = ctx;
    curl_multi_assign(loop->multi, fd, ctx);
  }
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  ctx->events = events;
  return uv_poll_start(&ctx->poll, events, on_poll) == 0 ? 0 : -1;
}

static void on_curl_timer(uv_timer_t *timer) {
  socket_action(timer->data, CURL_SOCKET_TIMEOUT, 0);
}

static void dequeue(rt_loop_t *loop, rt_loop_job_t *job) {
  if (job->prev != NULL)
    job->prev->next = job->next;
  else
    loop->waiting_head = job->next;
  if (job->next != NULL)
    job->next->prev = job->prev;
  else
    loop->waiting_tail = job->prev;
  job->prev = job->next = NULL;
  job->queued = 0;
}

/* Give curl up to HAND_OVER_BATCH of the waiting transfers. */
static void hand_over(rt_loop_t *loop) {
  int n;

  for (n = 0; n < HAND_OVER_BATCH && loop->waiting_head != NULL; n++) {
    rt_loop_job_t *job = loop->waiting_head;
    CURLMcode rc;

    dequeue(loop, job);
    rc = curl_multi_add_handle(loop->multi, job->easy);
    if (rc != CURLM_OK) {
      loop->in_flight--;
      job->refused = (int)rc;
      job->done(job, CURLE_FAILED_INIT);
    }
  }
}

static void on_curl_kick(uv_idle_t *idle) {
  rt_loop_t *loop = idle->data;

  /* Stop first: if curl asks for 0 ms again, on_timeout restarts the idle
   * handle and libuv runs it on the next iteration, after polling for I/O. */
  uv_idle_stop(idle);
  do {
    hand_over(loop);
    socket_action(loop, CURL_SOCKET_TIMEOUT, 0);
    /* What the hook runs may add more: they go in this kick too. */
    if (loop->waiting_head != NULL && loop->between != NULL)
      loop->between(loop->between_data);
  } while (loop->waiting_head != NULL);
}

static int on_timeout(CURLM *multi, long timeout_ms, void *userp) {
  rt_loop_t *loop = userp;

  (void)multi;
  if (timeout_ms < 0) {
    uv_timer_stop(&loop->curl_timer);
    if (loop->waiting_head == NULL)
      uv_idle_stop(&loop->curl_kick);
  } else if (timeout_ms == 0) {
    /* Not a 0 ms uv_timer: re-armed from its own callback it runs again in
     * the same iteration and spins; not 1 ms either, which makes sequential
     * requests wait a millisecond each. An idle handle runs next iteration. */
    uv_timer_stop(&loop->curl_timer);
    uv_idle_start(&loop->curl_kick, on_curl_kick);
  } else {
    /* Transfers waiting to be handed over keep the kick on. */
    if (loop->waiting_head == NULL)
      uv_idle_stop(&loop->curl_kick);
    uv_timer_start(&loop->curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0);
  }
  return 0;
}

/* libcurl's default cache holds 4 connections per easy handle added at the
 * moment a transfer ends, which falls to a handful whenever few transfers
 * happen to be added, and then closes connections a steady load is about to
 * need again. A fixed size set here does not move under it. */
static void set_max_connects(rt_loop_t *loop, long n) {
  if (n < MIN_CONNECTS)
    n = MIN_CONNECTS;
  if (n == loop->max_connects)
    return;
  loop->max_connects = n;
  curl_multi_setopt(loop->multi, CURLMOPT_MAXCONNECTS, n);
}

static int multi_open(rt_loop_t *loop) {
  loop->multi = curl_multi_init();
  if (loop->multi == NULL)
    return UV_ENOMEM;
  curl_multi_setopt(loop->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(loop->multi, CURLMOPT_SOCKETDATA, loop);
  curl_multi_setopt(loop->multi, CURLMOPT_TIMERFUNCTION, on_timeout);
  curl_multi_setopt(loop->multi, CURLMOPT_TIMERDATA, loop);
  loop->max_connects = 0;
  set_max_connects(loop, MIN_CONNECTS);
  return 0;
}

/* Follow the load down after a burst: connections beyond the recent peak
 * are closed as transfers hand theirs back, and idle easy handles beyond
 * what a return to that peak would need are freed now. With no transfer
 * at all for two periods after more than MIN_CONNECTS were in flight, every
 * idle connection is closed: libcurl closes cached connections only when a
 * transfer ends or starts, so after a burst with nothing following,
 * thousands of idle sockets would otherwise stay open. */
static void on_tidy(uv_timer_t *timer) {
  rt_loop_t *loop = timer->data;
  unsigned want =
      loop->peak > loop->recent_peak ? loop->peak : loop->recent_peak;
  unsigned idle = loop->xfer_idle;

#ifdef __GLIBC__
  /* What the caches let go of last time (their handles are closed by now)
   * goes back to the system: glibc keeps freed memory in its arenas, and
   * after a burst of 10,000 transfers that is some 200 MB. */
  if (loop->shrunk)
    malloc_trim(0);
#endif
  loop->shrunk = 0;
  loop->recent_peak = loop->peak;
  loop->peak = loop->in_flight;
  if (want == 0 && loop->in_flight == 0 && loop->high_water > MIN_CONNECTS) {
    loop->shrunk = 1;
    rt_loop_reset(loop);
    return;
  }
  /* Only a real drop shrinks the cache, and it keeps a quarter to spare:
   * a steady load's transfers in flight dip whenever its tasks are busy
   * with what came back (on a slow machine a 64-connection load peaked at
   * 40 in one period), and a cache that followed such dips closed
   * connections the load opened again a moment later (72 for 64). */
  if ((long)want < loop->max_connects - loop->max_connects / 4)
    set_max_connects(loop, (long)(want + want / 4));
  want = (unsigned)loop->max_connects;
  if (loop->trim != NULL)
    loop->trim(loop, want > loop->in_flight ? want - loop->in_flight : 0);
  if (idle - loop->xfer_idle > MIN_CONNECTS)
    loop->shrunk = 1;
}

int rt_loop_init(rt_loop_t *loop) {
  int err;

  loop->in_flight = 0;
  loop->peak = 0;
  loop->recent_peak = 0;
  loop->shrunk = 0;
  loop->high_water = 0;
  loop->xfer_pool = NULL;
  loop->xfer_idle = 0;
  loop->trim = NULL;
  loop->between = NULL;
  loop->between_data = NULL;
  loop->waiting_head = NULL;
  loop->waiting_tail = NULL;
  err = uv_loop_init(&loop->uv);
  if (err != 0)
    return err;
  err = multi_open(loop);
  if (err != 0) {
    uv_loop_close(&loop->uv);
    return err;
  }
  uv_timer_init(&loop->uv, &loop->curl_timer);
  uv_idle_init(&loop->uv, &loop->curl_kick);
  uv_timer_init(&loop->uv, &loop->tidy);
  loop->curl_timer.data = loop;
  loop->curl_kick.data = loop;
  loop->tidy.data = loop;
  uv_timer_start(&loop->tidy, on_tidy, TIDY_MS, TIDY_MS);
  /* The tidy timer alone must not keep the loop running. */
  uv_unref((uv_handle_t *)&loop->tidy);
  return 0;
}

int rt_loop_add(rt_loop_t *loop, rt_loop_job_t *job, CURL *easy) {
  job->queued = 0;
  job->refused = 0;
  if (loop->between == NULL) {
    /* curl calls on_timeout with 0 ms from here; the kick starts the
     * transfer on the next iteration, outside whatever code is adding it. */
    if (curl_multi_add_handle(loop->multi, easy) != CURLM_OK)
      return -1;
  } else {
    if (loop->multi == NULL)
      return -1;
    job->easy = easy;
    job->next = NULL;
    job->prev = loop->waiting_tail;
    if (job->prev != NULL)
      job->prev->next = job;
    else
      loop->waiting_head = job;
    loop->waiting_tail = job;
    job->queued = 1;
    uv_idle_start(&loop->curl_kick, on_curl_kick);
  }
  loop->in_flight++;
  if (loop->in_flight > loop->peak)
    loop->peak = loop->in_flight;
  if (loop->in_flight > loop->high_water)
    loop->high_water = loop->in_flight;
  if ((long)loop->in_flight > loop->max_connects)
    set_max_connects(loop, (long)loop->in_flight);
  return 0;
}

void rt_loop_remove(rt_loop_t *loop, rt_loop_job_t *job, CURL *easy) {
  if (job->queued) {
    dequeue(loop, job);
    loop->in_flight--;
  } else if (curl_multi_remove_handle(loop->multi, easy) == CURLM_OK)
    loop->in_flight--;
}

/* A poll of curl's is the first member of its sock_ctx, which is its data;
 * any other poll on the loop (the scheduler's clock) is not curl's. */
static void close_leftover_poll(uv_handle_t *handle, void *arg) {
  (void)arg;
  if (handle->type == UV_POLL && handle->data == (void *)handle &&
      !uv_is_closing(handle))
    uv_close(handle, free_on_close);
}

/* curl_multi_cleanup closes the sockets of kept-alive connections. curl
 * watches no socket of an idle connection (it sent CURL_POLL_REMOVE when
 * the transfer ended), so no poll should be left; any that is goes here
 * rather than outliving its socket. */
static void multi_close(rt_loop_t *loop) {
  curl_multi_cleanup(loop->multi);
  loop->multi = NULL;
  uv_walk(&loop->uv, close_leftover_poll, NULL);
}

void rt_loop_reset(rt_loop_t *loop) {
  if (loop->in_flight != 0)
    return;
  if (loop->trim != NULL)
    loop->trim(loop, 0);
  multi_close(loop);
  uv_timer_stop(&loop->curl_timer);
  uv_idle_stop(&loop->curl_kick);
  loop->peak = 0;
  loop->recent_peak = 0;
  loop->high_water = 0;
  /* Without a multi handle nothing can be added; rt_loop_add then fails
   * and the transfer reports it, which beats a crash. */
  multi_open(loop);
}

int rt_loop_close(rt_loop_t *loop) {
  if (loop->multi != NULL)
    multi_close(loop);
  uv_close((uv_handle_t *)&loop->curl_timer, NULL);
  uv_close((uv_handle_t *)&loop->curl_kick, NULL);
  uv_close((uv_handle_t *)&loop->tidy, NULL);
  uv_run(&loop->uv, UV_RUN_DEFAULT);
  return uv_loop_close(&loop->uv);
}
