/* transfer.h: one HTTP attempt on a curl easy handle.
 *
 * Turns a request description into a configured easy handle (reused from a
 * per-loop pool), follows redirects itself (aiohttp's rules, not curl's),
 * refuses the re-sends libcurl would make behind the caller's back, captures
 * status, headers and body, and hands the binding a plain result record in
 * which every libcurl result already has its error kind. Nothing above this
 * file touches an easy handle. No Lua here.
 */
#ifndef RT_TRANSFER_H
#define RT_TRANSFER_H

#include <stddef.h>

#include "buf.h"
#include "loop.h"

typedef struct rt_xfer_s rt_xfer_t;
typedef void (*rt_xfer_done_cb)(rt_xfer_t *xfer, void *arg);

/* What to send. Every pointer is borrowed for the duration of
 * rt_xfer_start only: curl copies what it keeps. The caller has checked
 * the request with rt_request_check. */
typedef struct rt_request_s {
  const char *method;         /* an HTTP token, upper case */
  const char *url;            /* an absolute http or https URL */
  const char *const *headers; /* "Name: value" lines */
  size_t header_count;
  const char *body; /* NULL for none */
  size_t body_len;
  long timeout_ms;          /* the whole attempt, redirects included; 0: none */
  long connect_timeout_ms;  /* 0 for curl's default */
  long max_redirects;       /* 0: a 3xx is the response */
  curl_off_t max_body_size; /* bytes; -1 for no limit */
  const char *ca_file;      /* PEM bundle; NULL for the system's */
  int verify_tls;
  int fresh_connect; /* a new connection, not a kept-alive one */
} rt_request_t;

/* Why an attempt was ended by this file rather than by libcurl. */
enum rt_xfer_stop {
  RT_STOP_NONE,
  RT_STOP_RESEND,    /* a re-send of a non-idempotent request was refused */
  RT_STOP_TOO_LARGE, /* the body passed max_body_size */
  RT_STOP_REDIRECTS, /* more redirects than max_redirects */
  RT_STOP_REDIRECT_SCHEME, /* a redirect to something not http or https */
  RT_STOP_REDIRECT_URL,    /* a redirect to a URL libcurl cannot parse */
  RT_STOP_TIMEOUT,         /* the timeout ran out between redirects */
  RT_STOP_NOMEM,
  RT_STOP_REFUSED /* libcurl would not start it: it never ran */
};

/* When the phases of an attempt ended, in seconds from its start; a phase
 * it never reached is 0. After redirects they describe the last request
 * (offset by when it started); total covers the whole chain. */
typedef struct rt_timings_s {
  double dns;
  double connect;
  double tls;
  double first_byte;
  double total;
  double finished_at; /* uv_hrtime in seconds when it ended: the clock of
                         core.now, so a load check measures from its own
                         start to the transfer's end, not to Lua's resume */
} rt_timings_t;

/* The outcome, filled in just before the done hook runs. Strings stay valid
 * until the transfer is released. */
typedef struct rt_xfer_result_s {
  CURLcode code;       /* the libcurl result of the last request */
  const char *kind;    /* the Lua API's error kind; NULL for a response */
  const char *message; /* why it failed; NULL for a response */
  long status;         /* HTTP status of the response (0 without one) */
  const char *url;     /* final URL, after redirects */
  const char *method;  /* method of the last request sent */
  int redirects;       /* redirects followed */
  int resent;          /* a dead kept-alive connection made it send again */
  double retry_after;  /* seconds a Retry-After header asks for (libcurl
                          parses seconds and HTTP dates); 0 without one */
  rt_timings_t timings;
} rt_xfer_result_t;

struct rt_xfer_s {
  rt_loop_job_t job;          /* first: the loop hands it back on completion */
  CURL *easy;                 /* owned; kept across reuse */
  rt_loop_t *loop;            /* borrowed */
  struct curl_slist *headers; /* owned while in flight */
  rt_buf_t body;              /* response body; taken by the response */
  rt_buf_t head;              /* raw header block of the last response */
  rt_xfer_result_t result;
  uv_timer_t deadline; /* the attempt's timeout, kept by us as well: see
                          on_deadline. Closed (and the struct freed) in
                          xfer_free's close callback. */
  char errbuf[CURL_ERROR_SIZE]; /* curl's message (CURLOPT_ERRORBUFFER) */
  char note[CURL_ERROR_SIZE];   /* ours, when we end or explain it */
  uint64_t started_ns;          /* uv_hrtime when the attempt started */
  uint64_t hop_started_ns;      /* ... and when its last request started */
  long timeout_ms;              /* the whole attempt */
  long hop_timeout_ms; /* what was left of it for the current request */
  long connect_timeout_ms;
  long max_redirects;
  curl_off_t max_body_size;
  enum rt_xfer_stop stop;
  int sends;        /* requests curl started for the current URL */
  int went_out;     /* a request of this attempt went out on a connection */
  int idempotent;   /* the current request may be re-sent once */
  int is_head;      /* a HEAD: no body to limit */
  int discard_body; /* the current response is a redirect being followed */
  int in_flight;
  int constant;     /* holds configure_constant's options: no reset needed */
  CURLU *parsed;    /* owned: parsed_url parsed, for CURLOPT_CURLU */
  char *parsed_url; /* owned: the URL of the handle's last request */
  char *normalized_url; /* owned (curl_free): parsed written out again */
  rt_xfer_done_cb done; /* borrowed */
  void *done_arg;       /* borrowed */
  rt_xfer_t *next_idle; /* pool link */
};

/* NULL when req may be sent, else a message naming what is wrong: a method
 * that is not an HTTP token, a URL with spaces or control characters or not
 * http(s), a header name that is not a token, a value with CR, LF or NUL.
 * Lengths are given so an embedded NUL is caught. */
const char *rt_request_check_method(const char *method, size_t len);
const char *rt_request_check_url(const char *url, size_t len);
const char *rt_request_check_header(const char *name, size_t name_len,
                                    const char *value, size_t value_len);

/* Start a transfer. On success returns 0 and done(xfer, arg) is called once
 * it ends, unless rt_xfer_release is called first. On failure returns a
 * negative code and done never runs. */
int rt_xfer_start(rt_loop_t *loop, const rt_request_t *req,
                  rt_xfer_done_cb done, void *arg, rt_xfer_t **out);

/* Give a transfer back to the pool: stops it if it is still in flight (done
 * then never runs) and frees whatever the response did not take. */
void rt_xfer_release(rt_xfer_t *xfer);

/* Free every pooled easy handle; call before rt_loop_close. */
void rt_xfer_pool_drain(rt_loop_t *loop);

#endif
