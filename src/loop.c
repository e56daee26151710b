/* loop.c: curl's multi socket API on libuv (a hardened docs/examples/multi-uv).
 *
 * Owns the multi handle, the per-socket poll contexts and curl's timer. Never
 * calls Lua: finished transfers are handed to their job's done hook only
 * after curl_multi_socket_action has returned.
 */
#include "loop.h"

#include <stdlib.h>

/* One per socket curl watches, attached with curl_multi_assign so a socket
 * never gets a second poll. Freed in its close callback. */
struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
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

  /* A poll error (for example a socket reset under epoll) must still reach
   * curl, or the transfer would wait for its timeout. */
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  socket_action(ctx->loop, ctx->fd, flags);
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
    ctx->loop = loop;
    ctx->poll.data = ctx;
    curl_multi_assign(loop->multi, fd, ctx);
  }
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  return uv_poll_start(&ctx->poll, events, on_poll) == 0 ? 0 : -1;
}

static void on_curl_timer(uv_timer_t *timer) {
  socket_action(timer->data, CURL_SOCKET_TIMEOUT, 0);
}

static void on_curl_kick(uv_idle_t *idle) {
  /* Stop first: if curl asks for 0 ms again, on_timeout restarts the idle
   * handle and libuv runs it on the next iteration, after polling for I/O. */
  uv_idle_stop(idle);
  socket_action(idle->data, CURL_SOCKET_TIMEOUT, 0);
}

static int on_timeout(CURLM *multi, long timeout_ms, void *userp) {
  rt_loop_t *loop = userp;

  (void)multi;
  if (timeout_ms < 0) {
    uv_timer_stop(&loop->curl_timer);
    uv_idle_stop(&loop->curl_kick);
  } else if (timeout_ms == 0) {
    /* Not a 0 ms uv_timer: re-armed from its own callback it runs again in
     * the same iteration and spins; not 1 ms either, which makes sequential
     * requests wait a millisecond each. An idle handle runs next iteration. */
    uv_timer_stop(&loop->curl_timer);
    uv_idle_start(&loop->curl_kick, on_curl_kick);
  } else {
    uv_idle_stop(&loop->curl_kick);
    uv_timer_start(&loop->curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0);
  }
  return 0;
}

int rt_loop_init(rt_loop_t *loop) {
  int err;

  loop->in_flight = 0;
  loop->xfer_pool = NULL;
  err = uv_loop_init(&loop->uv);
  if (err != 0)
    return err;
  loop->multi = curl_multi_init();
  if (loop->multi == NULL) {
    uv_loop_close(&loop->uv);
    return UV_ENOMEM;
  }
  uv_timer_init(&loop->uv, &loop->curl_timer);
  uv_idle_init(&loop->uv, &loop->curl_kick);
  loop->curl_timer.data = loop;
  loop->curl_kick.data = loop;
  curl_multi_setopt(loop->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(loop->multi, CURLMOPT_SOCKETDATA, loop);
  curl_multi_setopt(loop->multi, CURLMOPT_TIMERFUNCTION, on_timeout);
  curl_multi_setopt(loop->multi, CURLMOPT_TIMERDATA, loop);
  return 0;
}

int rt_loop_add(rt_loop_t *loop, CURL *easy) {
  /* curl calls on_timeout with 0 ms from here; the kick starts the transfer
   * on the next iteration, outside whatever code is adding it. */
  if (curl_multi_add_handle(loop->multi, easy) != CURLM_OK)
    return -1;
  loop->in_flight++;
  return 0;
}

void rt_loop_remove(rt_loop_t *loop, CURL *easy) {
  if (curl_multi_remove_handle(loop->multi, easy) == CURLM_OK)
    loop->in_flight--;
}

static void close_leftover_poll(uv_handle_t *handle, void *arg) {
  (void)arg;
  if (handle->type == UV_POLL && !uv_is_closing(handle))
    uv_close(handle, free_on_close);
}

int rt_loop_close(rt_loop_t *loop) {
  curl_multi_cleanup(loop->multi);
  loop->multi = NULL;
  uv_close((uv_handle_t *)&loop->curl_timer, NULL);
  uv_close((uv_handle_t *)&loop->curl_kick, NULL);
  /* Sockets curl still had open (kept-alive connections) were closed by
   * curl_multi_cleanup without a CURL_POLL_REMOVE; their polls go here. */
  uv_walk(&loop->uv, close_leftover_poll, NULL);
  uv_run(&loop->uv, UV_RUN_DEFAULT);
  return uv_loop_close(&loop->uv);
}
