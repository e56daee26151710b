/* loop.h: libcurl's multi socket interface driven by a libuv loop.
 *
 * The only module that knows both libuv and libcurl. It owns the multi
 * handle, one uv_poll per socket curl asks about, one uv_timer for curl's
 * timeout and an idle handle that runs curl's 0 ms timeouts on the next loop
 * iteration. It knows nothing about Lua or about what a transfer means: an
 * easy handle added here carries, as CURLOPT_PRIVATE, a pointer to an
 * rt_loop_job_t whose done hook is called once the transfer has ended.
 */
#ifndef RT_LOOP_H
#define RT_LOOP_H

#include <curl/curl.h>
#include <uv.h>

typedef struct rt_loop_s rt_loop_t;
typedef struct rt_loop_job_s rt_loop_job_t;

/* Called after curl_multi_socket_action has returned and the finished easy
 * handle has been removed from the multi handle. It must not run Lua: it only
 * records the result and queues whatever should happen next. */
typedef void (*rt_loop_done_cb)(rt_loop_job_t *job, CURLcode result);

struct rt_loop_job_s {
  rt_loop_done_cb done;
};

struct rt_loop_s {
  uv_loop_t uv;
  CURLM *multi;          /* owned; cleaned up in rt_loop_close */
  uv_timer_t curl_timer; /* curl's timeout when it is > 0 ms */
  uv_idle_t curl_kick;   /* curl's timeout when it is 0 ms */
  unsigned in_flight;    /* easy handles currently added */
  void *xfer_pool;       /* owned by transfer.c; idle easy handles */
};

/* Initialise the uv loop and the multi handle. Returns 0 or a negative
 * UV_E* code; on failure nothing needs closing. */
int rt_loop_init(rt_loop_t *loop);

/* Start an easy handle whose CURLOPT_PRIVATE is an rt_loop_job_t. Returns 0,
 * or -1 when curl refuses it (the done hook then never runs). */
int rt_loop_add(rt_loop_t *loop, CURL *easy);

/* Stop an easy handle that has not finished; its done hook never runs. */
void rt_loop_remove(rt_loop_t *loop, CURL *easy);

/* Clean up the multi handle, close every handle this module opened, run the
 * loop until they are closed and close it. Every easy handle must have been
 * removed first. Returns the result of uv_loop_close (0 when all is closed). */
int rt_loop_close(rt_loop_t *loop);

#endif
