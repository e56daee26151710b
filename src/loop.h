/* loop.h: libcurl's multi socket interface driven by a libuv loop.
 *
 * The only module that knows both libuv and libcurl. It owns the multi
 * handle, one uv_poll per socket curl asks about, one uv_timer for curl's
 * timeout and an idle handle (the kick) that runs curl's 0 ms timeouts on
 * the next loop iteration and hands curl the transfers waiting for it. It
 * knows nothing about Lua or about what a transfer means: an
 * easy handle added here carries, as CURLOPT_PRIVATE, a pointer to an
 * rt_loop_job_t whose done hook is called once the transfer has ended.
 *
 * It also sizes libcurl's connection cache: at least as many connections as
 * transfers were in flight lately, so a steady load keeps one connection per
 * transfer instead of reconnecting, and fewer again after a burst.
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
  /* The loop's own, while the job waits to be handed to curl. */
  CURL *easy;
  rt_loop_job_t *prev, *next;
  int queued;
  /* curl_multi_add_handle's CURLMcode when done runs because curl refused
   * the transfer at hand-over (else 0): it never ran, and what its handle
   * reports is its last transfer's. */
  int refused;
};

/* Called by the tidy timer with how many idle easy handles are worth
 * keeping; the pool's owner frees the rest. */
typedef void (*rt_loop_trim_cb)(rt_loop_t *loop, unsigned keep);

/* Called after each socket event has been handed to curl, and after each
 * batch of new transfers curl has started, outside curl: one I/O phase may
 * read dozens of responses, and one kick may send dozens of requests, and
 * whatever is due meanwhile (a backoff's end) need not wait for all of
 * them. May run Lua. */
typedef void (*rt_loop_between_cb)(void *data);

struct rt_loop_s {
  uv_loop_t uv;
  CURLM *multi;          /* owned; cleaned up in rt_loop_reset and _close */
  uv_timer_t curl_timer; /* curl's timeout when it is > 0 ms */
  uv_idle_t curl_kick;   /* curl's timeout when it is 0 ms */
  uv_timer_t tidy;       /* shrinks the caches after a burst; unref'd */
  unsigned in_flight;    /* easy handles currently added */
  unsigned peak;         /* most in flight since the last tidy */
  unsigned recent_peak;  /* most in flight in the tidy period before */
  unsigned high_water;   /* most in flight since the caches were emptied */
  long max_connects;     /* CURLMOPT_MAXCONNECTS as last set */
  void *xfer_pool;       /* owned by transfer.c; idle easy handles */
  unsigned xfer_idle;    /* how many there are (transfer.c keeps it) */
  rt_loop_trim_cb trim;  /* set by transfer.c; may be NULL */
  int shrunk;            /* the caches let go of much since the last tidy */
  rt_loop_between_cb between; /* may be NULL */
  void *between_data;
  rt_loop_job_t *waiting_head; /* added, not yet handed to curl (FIFO) */
  rt_loop_job_t *waiting_tail;
};

/* Initialise the uv loop and the multi handle. Returns 0 or a negative
 * UV_E* code; on failure nothing needs closing. */
int rt_loop_init(rt_loop_t *loop);

/* Start the transfer of easy, whose CURLOPT_PRIVATE is job. Returns 0, or
 * -1 when curl refuses it (the done hook then never runs).
 *
 * With a between hook, the transfer waits for the next loop iteration and
 * is handed to curl there, a few at a time with the hook run in between:
 * curl sends every request it was given in one call, and sixty of them
 * hold the loop for a millisecond and more. A transfer curl then refuses
 * ends through the done hook with job->refused set. */
int rt_loop_add(rt_loop_t *loop, rt_loop_job_t *job, CURL *easy);

/* Stop a transfer that has not finished; its done hook never runs. */
void rt_loop_remove(rt_loop_t *loop, rt_loop_job_t *job, CURL *easy);

/* Close every idle connection and free every pooled easy handle, so none
 * outlives a run of the loop. Nothing may be in flight. */
void rt_loop_reset(rt_loop_t *loop);

/* Clean up the multi handle, close every handle this module opened, run the
 * loop until they are closed and close it. Every easy handle must have been
 * removed first. Returns the result of uv_loop_close (0 when all is closed). */
int rt_loop_close(rt_loop_t *loop);

#endif
