/* transfer.c: one HTTP attempt on a pooled curl easy handle.
 *
 * Owns the easy handles of a loop (in flight and idle), their request header
 * lists and response buffers until a response takes them. No Lua here.
 */
#include "transfer.h"

#include <stdlib.h>
#include <string.h>

#define RT_USER_AGENT "lretry/" RT_VERSION

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp) {
  rt_xfer_t *xfer = userp;
  size_t len = size * nmemb;

  /* A short count makes curl fail the transfer with CURLE_WRITE_ERROR. */
  return rt_buf_append(&xfer->body, data, len) == 0 ? len : 0;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp) {
  rt_xfer_t *xfer = userp;
  size_t len = size * nmemb;

  /* Each status line starts a new header block (redirects, 100 Continue);
   * only the last response's headers are kept. */
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0)
    xfer->head.len = 0;
  return rt_buf_append(&xfer->head, data, len) == 0 ? len : 0;
}

static void on_done(rt_loop_job_t *job, CURLcode result) {
  rt_xfer_t *xfer = (rt_xfer_t *)job;

  xfer->in_flight = 0;
  xfer->result = result;
  xfer->done(xfer, xfer->done_arg);
}

static rt_xfer_t *xfer_get(rt_loop_t *loop) {
  rt_xfer_t *xfer = loop->xfer_pool;

  if (xfer != NULL) {
    loop->xfer_pool = xfer->next_idle;
    curl_easy_reset(xfer->easy);
    return xfer;
  }
  xfer = calloc(1, sizeof(*xfer));
  if (xfer == NULL)
    return NULL;
  xfer->easy = curl_easy_init();
  if (xfer->easy == NULL) {
    free(xfer);
    return NULL;
  }
  xfer->loop = loop;
  xfer->job.done = on_done;
  return xfer;
}

static void xfer_put(rt_xfer_t *xfer) {
  rt_loop_t *loop = xfer->loop;

  curl_slist_free_all(xfer->headers);
  xfer->headers = NULL;
  rt_buf_free(&xfer->body);
  /* The header block is kept: it is rewritten by every transfer and its
   * buffer would be allocated again at once. */
  xfer->head.len = 0;
  xfer->next_idle = loop->xfer_pool;
  loop->xfer_pool = xfer;
}

static int set_method(CURL *easy, const rt_request_t *req) {
  CURLcode rc = CURLE_OK;
  int is_get = strcmp(req->method, "GET") == 0;
  int is_post = strcmp(req->method, "POST") == 0;

  if (strcmp(req->method, "HEAD") == 0)
    return curl_easy_setopt(easy, CURLOPT_NOBODY, 1L) != CURLE_OK;
  if (req->body != NULL || is_post) {
    rc |= curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                           (curl_off_t)req->body_len);
    rc |= curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS,
                           req->body != NULL ? req->body : "");
  }
  if (is_get && req->body == NULL)
    rc |= curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
  else if (!is_post)
    rc |= curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req->method);
  return rc != CURLE_OK;
}

static int set_headers(rt_xfer_t *xfer, const rt_request_t *req) {
  struct curl_slist *list = NULL;
  struct curl_slist *grown;
  size_t i;

  /* curl would otherwise wait up to a second for "100 Continue" before
   * sending a large body, which a retry client gains nothing from. */
  list = curl_slist_append(NULL, "Expect:");
  if (list == NULL)
    return -1;
  for (i = 0; i < req->header_count; i++) {
    grown = curl_slist_append(list, req->headers[i]);
    if (grown == NULL) {
      curl_slist_free_all(list);
      return -1;
    }
    list = grown;
  }
  xfer->headers = list;
  return curl_easy_setopt(xfer->easy, CURLOPT_HTTPHEADER, list) != CURLE_OK;
}

static int configure(rt_xfer_t *xfer, const rt_request_t *req) {
  CURL *easy = xfer->easy;
  CURLcode rc = CURLE_OK;

  xfer->errbuf[0] = '\0';
  xfer->timeout_ms = req->timeout_ms;
  xfer->connect_timeout_ms = req->connect_timeout_ms;
  rc |= curl_easy_setopt(easy, CURLOPT_PRIVATE, &xfer->job);
  rc |= curl_easy_setopt(easy, CURLOPT_URL, req->url);
  rc |= curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  rc |= curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, xfer->errbuf);
  rc |= curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
  rc |= curl_easy_setopt(easy, CURLOPT_WRITEDATA, xfer);
  rc |= curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
  rc |= curl_easy_setopt(easy, CURLOPT_HEADERDATA, xfer);
  rc |= curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  rc |= curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  rc |= curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 1L);
  rc |= curl_easy_setopt(easy, CURLOPT_MAXREDIRS, 10L);
  rc |= curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
  rc |= curl_easy_setopt(easy, CURLOPT_USERAGENT, RT_USER_AGENT);
  rc |= curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, req->timeout_ms);
  rc |= curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                         req->connect_timeout_ms);
  if (rc != CURLE_OK)
    return -1;
  if (set_method(easy, req) != 0)
    return -1;
  return set_headers(xfer, req);
}

int rt_xfer_start(rt_loop_t *loop, const rt_request_t *req,
                  rt_xfer_done_cb done, void *arg, rt_xfer_t **out) {
  rt_xfer_t *xfer = xfer_get(loop);

  if (xfer == NULL)
    return UV_ENOMEM;
  if (configure(xfer, req) != 0) {
    xfer_put(xfer);
    return UV_ENOMEM;
  }
  xfer->done = done;
  xfer->done_arg = arg;
  if (rt_loop_add(loop, xfer->easy) != 0) {
    xfer_put(xfer);
    return UV_EINVAL;
  }
  xfer->in_flight = 1;
  *out = xfer;
  return 0;
}

void rt_xfer_release(rt_xfer_t *xfer) {
  if (xfer->in_flight) {
    rt_loop_remove(xfer->loop, xfer->easy);
    xfer->in_flight = 0;
  }
  xfer_put(xfer);
}

void rt_xfer_pool_drain(rt_loop_t *loop) {
  rt_xfer_t *xfer = loop->xfer_pool;

  while (xfer != NULL) {
    rt_xfer_t *next = xfer->next_idle;

    curl_easy_cleanup(xfer->easy);
    rt_buf_free(&xfer->head);
    free(xfer);
    xfer = next;
  }
  loop->xfer_pool = NULL;
}

static int is_tls_error(CURLcode code) {
  switch (code) {
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_SSL_CLIENTCERT:
    return 1;
  default:
    return 0;
  }
}

const char *rt_xfer_error_kind(const rt_xfer_t *xfer) {
  curl_off_t sent_us = 0;

  switch (xfer->result) {
  case CURLE_COULDNT_CONNECT:
    return "connect";
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return "dns";
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL:
    return "invalid";
  case CURLE_OPERATION_TIMEDOUT:
    /* curl reports both limits with one code. Before the request went out
     * (no pretransfer time, which a reused connection also has) it is the
     * connect limit, unless the whole-attempt limit was the tighter one. */
    curl_easy_getinfo(xfer->easy, CURLINFO_PRETRANSFER_TIME_T, &sent_us);
    if (sent_us == 0 && xfer->connect_timeout_ms > 0 &&
        (xfer->timeout_ms == 0 || xfer->connect_timeout_ms < xfer->timeout_ms))
      return "connect";
    return "timeout";
  default:
    return is_tls_error(xfer->result) ? "tls" : "network";
  }
}

const char *rt_xfer_error_message(const rt_xfer_t *xfer) {
  if (xfer->errbuf[0] != '\0')
    return xfer->errbuf;
  return curl_easy_strerror(xfer->result);
}
