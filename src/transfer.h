/* transfer.h: one HTTP attempt on a curl easy handle.
 *
 * Turns a request description into a configured easy handle (reused from a
 * per-loop pool), captures status, headers and body, and maps a CURLcode to
 * the error kinds of the Lua API. No Lua here.
 */
#ifndef RT_TRANSFER_H
#define RT_TRANSFER_H

#include <stddef.h>

#include "buf.h"
#include "loop.h"

typedef struct rt_xfer_s rt_xfer_t;
typedef void (*rt_xfer_done_cb)(rt_xfer_t *xfer, void *arg);

/* What to send. Every pointer is borrowed for the duration of
 * rt_xfer_start only: curl copies what it keeps. */
typedef struct rt_request_s {
  const char *method; /* upper case */
  const char *url;
  const char *const *headers; /* "Name: value" lines */
  size_t header_count;
  const char *body; /* NULL for none */
  size_t body_len;
  long timeout_ms;         /* 0 for none */
  long connect_timeout_ms; /* 0 for curl's default */
} rt_request_t;

struct rt_xfer_s {
  rt_loop_job_t job;          /* first: the loop hands it back on completion */
  CURL *easy;                 /* owned; kept across reuse */
  rt_loop_t *loop;            /* borrowed */
  struct curl_slist *headers; /* owned while in flight */
  rt_buf_t body;              /* response body; taken by the response */
  rt_buf_t head;              /* raw header block of the last response */
  char errbuf[CURL_ERROR_SIZE];
  CURLcode result;
  long timeout_ms;
  long connect_timeout_ms;
  int in_flight;
  rt_xfer_done_cb done; /* borrowed */
  void *done_arg;       /* borrowed */
  rt_xfer_t *next_idle; /* pool link */
};

/* Start a transfer. On success returns 0 and done(xfer, arg) is called once
 * it ends, unless rt_xfer_abandon is called first. On failure returns a
 * negative code and done never runs. */
int rt_xfer_start(rt_loop_t *loop, const rt_request_t *req,
                  rt_xfer_done_cb done, void *arg, rt_xfer_t **out);

/* Give a transfer back to the pool: stops it if it is still in flight (done
 * then never runs) and frees whatever the response did not take. */
void rt_xfer_release(rt_xfer_t *xfer);

/* Free every pooled easy handle; call before rt_loop_close. */
void rt_xfer_pool_drain(rt_loop_t *loop);

/* Error kind of the Lua API for a failed transfer ("connect", "dns",
 * "timeout", "network", "tls", "invalid"). */
const char *rt_xfer_error_kind(const rt_xfer_t *xfer);

/* A message for a failed transfer: curl's detailed text when it gave one. */
const char *rt_xfer_error_message(const rt_xfer_t *xfer);

#endif
