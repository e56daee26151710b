/* transfer.c: one HTTP attempt on a pooled curl easy handle.
 *
 * Owns the easy handles of a loop (in flight and idle), their request header
 * lists and response buffers until a response takes them, and the mapping
 * from libcurl results to the Lua API's error kinds. No Lua here.
 */
#include "transfer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"

#define RT_USER_AGENT "User-Agent: lretry/" RT_VERSION

/* What CURLOPT_ACCEPT_ENCODING "" would send: every encoding this libcurl
 * decodes, in libcurl's order. Sent as a header of the request's list, as
 * is the User-Agent: libcurl formats the headers it makes itself byte by
 * byte twice per request (aprintf, then the request's format), and those
 * of the list once: 3.9k instructions less a bare retry.request GET (of
 * 114k, callgrind). Written once per process, before the first request. */
static char accept_encoding[64];
static uv_once_t accept_encoding_once = UV_ONCE_INIT;

/* The header list of a request without headers of its own (most of a
 * load): shared by every handle, as libcurl only reads it, instead of
 * six allocations made and freed per attempt. Linked once, with
 * accept_encoding. */
static char expect_line[] = "Expect:";
static char agent_line[] = RT_USER_AGENT;
static struct curl_slist default_encoding = {accept_encoding, NULL};
static struct curl_slist default_agent = {agent_line, &default_encoding};
static struct curl_slist default_headers = {expect_line, &default_agent};

static void build_accept_encoding(void) {
  const curl_version_info_data *info = curl_version_info(CURLVERSION_NOW);
  const char *names[3];
  size_t count = 0, i, len;

  if (info->features & CURL_VERSION_LIBZ)
    names[count++] = "deflate, gzip";
  if (info->features & CURL_VERSION_BROTLI)
    names[count++] = "br";
  if (info->features & CURL_VERSION_ZSTD)
    names[count++] = "zstd";
  if (count == 0)
    names[count++] = "identity";
  len = (size_t)snprintf(accept_encoding, sizeof(accept_encoding),
                         "Accept-Encoding:");
  for (i = 0; i < count; i++)
    len +=
        (size_t)snprintf(accept_encoding + len, sizeof(accept_encoding) - len,
                         "%s %s", i > 0 ? "," : "", names[i]);
}

/* A proxy's CONNECT gets only CURLOPT_PROXYHEADER's headers, not the
 * request's list: the User-Agent it had from CURLOPT_USERAGENT. libcurl
 * only reads the list. */
static char proxy_agent_line[] = RT_USER_AGENT;
static struct curl_slist proxy_headers = {proxy_agent_line, NULL};

/* ------------------------------------------------------------------ */
/* Checks made before anything is sent                                 */
/* ------------------------------------------------------------------ */

/* RFC 9110 tchar: what a method and a header name may be made of. */
static int is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
      (c >= '0' && c <= '9'))
    return 1;
  return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_token(const char *s, size_t len) {
  size_t i;

  if (len == 0)
    return 0;
  for (i = 0; i < len; i++)
    if (!is_tchar((unsigned char)s[i]))
      return 0;
  return 1;
}

const char *rt_request_check_method(const char *method, size_t len) {
  if (!is_token(method, len))
    return "method must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~; "
           "no spaces, CR, LF or NUL)";
  return NULL;
}

const char *rt_request_check_url(const char *url, size_t len) {
  size_t i;

  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)url[i];
    if (c <= ' ' || c == 0x7f)
      return "url must not hold spaces, control characters or NUL "
             "(percent-encode them)";
  }
  if (!(len > 7 && strncasecmp(url, "http://", 7) == 0) &&
      !(len > 8 && strncasecmp(url, "https://", 8) == 0))
    return "url must be an absolute http:// or https:// URL";
  return NULL;
}

static int name_is(const char *name, size_t len, const char *what) {
  return len == strlen(what) && strncasecmp(name, what, len) == 0;
}

const char *rt_request_check_header(const char *name, size_t name_len,
                                    const char *value, size_t value_len) {
  size_t i;

  if (!is_token(name, name_len))
    return "header names must be HTTP tokens (no spaces, colons, CR, LF "
           "or NUL)";
  /* The framing of the body is libcurl's to write: a Content-Length that
   * disagrees with the body would make the server read part of it, or of
   * the next request on the connection, as a request of its own. */
  if (name_is(name, name_len, "Content-Length") ||
      name_is(name, name_len, "Transfer-Encoding"))
    return "Content-Length and Transfer-Encoding headers cannot be given: "
           "they are set from the body";
  for (i = 0; i < value_len; i++) {
    char c = value[i];
    if (c == '\r' || c == '\n' || c == '\0')
      return "header values must not hold CR, LF or NUL";
  }
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Error kinds                                                         */
/* ------------------------------------------------------------------ */

/* Every libcurl result an HTTP attempt can end with, and its kind in the
 * Lua API. A result not listed is "network". README "Wire behaviour" shows
 * this table; keep the two in step. */
static const struct kind_row {
  CURLcode code;
  const char *kind;
} kind_rows[] = {
    /* Schemes are checked before sending, so after it this means the reply
     * was not HTTP/1.x or 2: HTTP/0.9, an unknown version or status. */
    {CURLE_UNSUPPORTED_PROTOCOL, "protocol"},
    {CURLE_URL_MALFORMAT, "invalid"},
    {CURLE_COULDNT_RESOLVE_PROXY, "dns"},
    {CURLE_COULDNT_RESOLVE_HOST, "dns"},
    {CURLE_COULDNT_CONNECT, "connect"},
    {CURLE_WEIRD_SERVER_REPLY, "protocol"},
    {CURLE_HTTP2, "protocol"},
    {CURLE_PARTIAL_FILE, "network"},
    {CURLE_OUT_OF_MEMORY, "protocol"},      /* see kind_of */
    {CURLE_OPERATION_TIMEDOUT, "timeout"},  /* see kind_of */
    {CURLE_ABORTED_BY_CALLBACK, "network"}, /* a refused re-send */
    {CURLE_TOO_MANY_REDIRECTS, "redirect"},
    {CURLE_GOT_NOTHING, "network"},
    {CURLE_SEND_ERROR, "network"},
    {CURLE_RECV_ERROR, "network"},
    {CURLE_BAD_CONTENT_ENCODING, "protocol"},
    {CURLE_FILESIZE_EXCEEDED, "too_large"},
    {CURLE_HTTP2_STREAM, "network"},
    {CURLE_HTTP3, "protocol"},
    {CURLE_SSL_CONNECT_ERROR, "tls"},
    {CURLE_PEER_FAILED_VERIFICATION, "tls"},
    {CURLE_SSL_CERTPROBLEM, "tls"},
    {CURLE_SSL_CIPHER, "tls"},
    {CURLE_SSL_CACERT_BADFILE, "tls"},
    {CURLE_SSL_ENGINE_NOTFOUND, "tls"},
    {CURLE_SSL_ENGINE_SETFAILED, "tls"},
    {CURLE_SSL_ENGINE_INITFAILED, "tls"},
    {CURLE_SSL_CRL_BADFILE, "tls"},
    {CURLE_SSL_ISSUER_ERROR, "tls"},
    {CURLE_SSL_PINNEDPUBKEYNOTMATCH, "tls"},
    {CURLE_SSL_INVALIDCERTSTATUS, "tls"},
    {CURLE_SSL_SHUTDOWN_FAILED, "tls"},
    {CURLE_SSL_CLIENTCERT, "tls"},
};

static const char *kind_of(rt_xfer_t *xfer, CURLcode code) {
  size_t i;
  const char *kind = "network";

  for (i = 0; i < sizeof(kind_rows) / sizeof(kind_rows[0]); i++) {
    if (kind_rows[i].code == code) {
      kind = kind_rows[i].kind;
      break;
    }
  }
  if (code == CURLE_OPERATION_TIMEDOUT) {
    curl_off_t sent_us = 0;

    /* curl reports both limits with one code. Before the request went out
     * (no pretransfer time, which a reused connection also has) it is the
     * connect limit, unless the whole-attempt limit was the tighter one. */
    curl_easy_getinfo(xfer->easy, CURLINFO_PRETRANSFER_TIME_T, &sent_us);
    if (sent_us == 0 && xfer->connect_timeout_ms > 0 &&
        (xfer->hop_timeout_ms == 0 ||
         xfer->connect_timeout_ms < xfer->hop_timeout_ms))
      kind = "connect";
  } else if (code == CURLE_OUT_OF_MEMORY) {
    long sent = 0;

    /* libcurl 7.88 says "out of memory" when a reply's header line passes
     * CURL_MAX_HTTP_HEADER (100 KB): that is a reply we cannot take. Before
     * anything was sent it is what it says. */
    curl_easy_getinfo(xfer->easy, CURLINFO_REQUEST_SIZE, &sent);
    if (sent > 0)
      snprintf(xfer->note, sizeof(xfer->note),
               "a header line of the reply is larger than libcurl's %d "
               "byte limit",
               CURL_MAX_HTTP_HEADER);
    else
      kind = "network";
  }
  return kind;
}

/* Stops made between requests have no libcurl result of their own: report
 * the one libcurl gives for the same thing. */
static CURLcode stop_code(enum rt_xfer_stop stop) {
  switch (stop) {
  case RT_STOP_REDIRECTS:
    return CURLE_TOO_MANY_REDIRECTS;
  case RT_STOP_REDIRECT_SCHEME:
    return CURLE_UNSUPPORTED_PROTOCOL;
  case RT_STOP_REDIRECT_URL:
    return CURLE_URL_MALFORMAT;
  case RT_STOP_TIMEOUT:
    return CURLE_OPERATION_TIMEDOUT;
  default:
    return CURLE_OUT_OF_MEMORY;
  }
}

static const char *stop_kind(enum rt_xfer_stop stop) {
  switch (stop) {
  case RT_STOP_TOO_LARGE:
    return "too_large";
  case RT_STOP_REDIRECTS:
  case RT_STOP_REDIRECT_SCHEME:
  case RT_STOP_REDIRECT_URL:
    return "redirect";
  case RT_STOP_TIMEOUT:
    return "timeout";
  default:
    return "network";
  }
}

/* End the attempt for a reason of this file's; the message goes to `note`
 * (curl writes its own, e.g. "aborted by callback", to errbuf after). */
static void stop_with(rt_xfer_t *xfer, enum rt_xfer_stop why, const char *fmt,
                      long n) {
  xfer->stop = why;
  snprintf(xfer->note, sizeof(xfer->note), fmt, n);
}

/* ------------------------------------------------------------------ */
/* Callbacks (curl calls them; they never re-enter curl nor run Lua)    */
/* ------------------------------------------------------------------ */

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp) {
  rt_xfer_t *xfer = userp;
  size_t len = size * nmemb;

  if (xfer->discard_body)
    return len;
  if (xfer->max_body_size >= 0 &&
      (curl_off_t)(xfer->body.len + len) > xfer->max_body_size) {
    stop_with(xfer, RT_STOP_TOO_LARGE,
              "the body is larger than max_body_size "
              "(%ld bytes)",
              (long)xfer->max_body_size);
    return 0;
  }
  /* A short count makes curl fail the transfer with CURLE_WRITE_ERROR. */
  if (rt_buf_append(&xfer->body, data, len) != 0) {
    stop_with(xfer, RT_STOP_NOMEM, "out of memory storing %ld body bytes",
              (long)(xfer->body.len + len));
    return 0;
  }
  return len;
}

static int is_redirect(long status) {
  return status == 301 || status == 302 || status == 303 || status == 307 ||
         status == 308;
}

/* The header block holds a Location line (CURLINFO_REDIRECT_URL is only
 * set once the transfer is done). */
static int has_location(const rt_buf_t *head) {
  size_t i;

  for (i = 0; i + 10 <= head->len; i++)
    if (head->data[i] == '\n' &&
        strncasecmp(head->data + i + 1, "location:", 9) == 0)
      return 1;
  return 0;
}

/* The headers of a response are in (libcurl has its Content-Length by the
 * final header callback). The body of a redirect that will be followed is
 * thrown away, not limited; otherwise an announced body over the limit
 * ends the attempt before a byte of it is read. curl's own
 * CURLOPT_MAXFILESIZE would also refuse a redirect's body and a HEAD's. */
static int end_of_head(rt_xfer_t *xfer) {
  long status = 0;
  curl_off_t announced = -1;

  curl_easy_getinfo(xfer->easy, CURLINFO_RESPONSE_CODE, &status);
  xfer->discard_body = is_redirect(status) && xfer->max_redirects > 0 &&
                       has_location(&xfer->head);
  if (xfer->discard_body || xfer->is_head || xfer->max_body_size < 0)
    return 0;
  curl_easy_getinfo(xfer->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced);
  if (announced > xfer->max_body_size) {
    stop_with(xfer, RT_STOP_TOO_LARGE,
              "the announced body is larger than max_body_size (%ld bytes)",
              (long)xfer->max_body_size);
    return -1;
  }
  return 0;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp) {
  rt_xfer_t *xfer = userp;
  size_t len = size * nmemb;

  /* Each status line starts a new header block (redirects, 100 Continue);
   * only the last response's headers are kept. */
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0)
    xfer->head.len = 0;
  if (rt_buf_append(&xfer->head, data, len) != 0) {
    stop_with(xfer, RT_STOP_NOMEM, "out of memory storing %ld header bytes",
              (long)(xfer->head.len + len));
    return 0;
  }
  /* A short count makes curl fail the transfer with CURLE_WRITE_ERROR. */
  if (len <= 2 && (data[0] == '\r' || data[0] == '\n') &&
      end_of_head(xfer) != 0)
    return 0;
  return len;
}

/* Called by libcurl right before each request goes out. A second call for
 * the same URL means libcurl found its kept-alive connection dead before
 * any byte of the reply came back and wants to send the request again on
 * another one (up to 5 times, silently). One such re-send of an idempotent
 * request is harmless and saves an attempt; anything more, or any re-send
 * of POST, PATCH or another method, is refused so the retry policy decides
 * in the open. */
static int on_prereq(void *userp, char *primary_ip, char *local_ip,
                     int primary_port, int local_port) {
  rt_xfer_t *xfer = userp;

  (void)primary_ip;
  (void)local_ip;
  (void)primary_port;
  (void)local_port;
  xfer->went_out = 1;
  if (xfer->sends++ == 0)
    return CURL_PREREQFUNC_OK;
  /* libcurl counts such re-sends on the handle and gives up after five
   * in all, across transfers, until curl_easy_reset zeroes the count. */
  xfer->constant = 0;
  if (xfer->idempotent && !xfer->result.resent) {
    xfer->result.resent = 1;
    return CURL_PREREQFUNC_OK;
  }
  xfer->stop = RT_STOP_RESEND;
  snprintf(xfer->note, sizeof(xfer->note),
           "the connection closed before any reply%s",
           xfer->idempotent ? ", again after one re-send"
                            : "; the request is not idempotent, so it was "
                              "not sent again");
  return CURL_PREREQFUNC_ABORT;
}

/* ------------------------------------------------------------------ */
/* Configuration                                                       */
/* ------------------------------------------------------------------ */

static int is_idempotent(const char *method) {
  static const char *const safe[] = {"GET", "HEAD",   "OPTIONS",
                                     "PUT", "DELETE", "TRACE"};
  size_t i;

  for (i = 0; i < sizeof(safe) / sizeof(safe[0]); i++)
    if (strcmp(method, safe[i]) == 0)
      return 1;
  return 0;
}

static int header_is(const char *line, const char *name) {
  size_t n = strlen(name);

  return strncasecmp(line, name, n) == 0 && (line[n] == ':' || line[n] == ';');
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

static int append_header(struct curl_slist **list, const char *line) {
  struct curl_slist *grown = curl_slist_append(*list, line);

  if (grown == NULL)
    return -1;
  *list = grown;
  return 0;
}

static void free_headers(rt_xfer_t *xfer) {
  if (xfer->headers != &default_headers)
    curl_slist_free_all(xfer->headers);
  xfer->headers = NULL;
}

static int set_headers(rt_xfer_t *xfer, const rt_request_t *req) {
  struct curl_slist *list = NULL;
  int has_type = 0, has_agent = 0, has_encoding = 0;
  int failed = 0;
  size_t i;

  uv_once(&accept_encoding_once, build_accept_encoding);
  if (req->header_count == 0 &&
      !(req->body == NULL && strcmp(req->method, "POST") == 0)) {
    xfer->headers = &default_headers;
    return curl_easy_setopt(xfer->easy, CURLOPT_HTTPHEADER, &default_headers) !=
           CURLE_OK;
  }
  /* curl would otherwise wait up to a second for "100 Continue" before
   * sending a large body, which a retry client gains nothing from. */
  failed |= append_header(&list, "Expect:");
  for (i = 0; i < req->header_count && !failed; i++) {
    has_type |= header_is(req->headers[i], "Content-Type");
    has_agent |= header_is(req->headers[i], "User-Agent");
    has_encoding |= header_is(req->headers[i], "Accept-Encoding");
    failed |= append_header(&list, req->headers[i]);
  }
  /* A POST without a body would go out labelled as a form
   * (application/x-www-form-urlencoded, libcurl's default): say nothing. */
  if (req->body == NULL && !has_type && strcmp(req->method, "POST") == 0)
    failed |= append_header(&list, "Content-Type:");
  if (!has_agent)
    failed |= append_header(&list, RT_USER_AGENT);
  if (!has_encoding)
    failed |= append_header(&list, accept_encoding);
  if (failed) {
    curl_slist_free_all(list);
    return -1;
  }
  xfer->headers = list;
  return curl_easy_setopt(xfer->easy, CURLOPT_HTTPHEADER, list) != CURLE_OK;
}

/* The options every attempt shares, set when the handle is new or reset. */
static int configure_constant(rt_xfer_t *xfer) {
  CURL *easy = xfer->easy;
  CURLcode rc = CURLE_OK;

  rc |= curl_easy_setopt(easy, CURLOPT_PRIVATE, &xfer->job);
  rc |= curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  rc |= curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, xfer->errbuf);
  rc |= curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
  rc |= curl_easy_setopt(easy, CURLOPT_WRITEDATA, xfer);
  rc |= curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
  rc |= curl_easy_setopt(easy, CURLOPT_HEADERDATA, xfer);
  rc |= curl_easy_setopt(easy, CURLOPT_PREREQFUNCTION, on_prereq);
  rc |= curl_easy_setopt(easy, CURLOPT_PREREQDATA, xfer);
  rc |= curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  /* Redirects are followed by follow_redirect, not by curl: curl keeps a
   * custom method across a 303 and drops the body of a PUT on a 302. */
  rc |= curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
  /* Turns decoding on; the header itself goes in the request's list. */
  rc |= curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
  rc |= curl_easy_setopt(easy, CURLOPT_PROXYHEADER, &proxy_headers);
  /* HTTP/1.1, as aiohttp: over HTTP/2 libcurl would also send a request
   * again after a refused stream or an HTTP_1_1_REQUIRED reset, which the
   * re-send rule in on_prereq cannot tell from a dead connection. */
  rc |=
      curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  /* Without it, removing a transfer that is still resolving its host name
   * (a cancel, a timeout) waits for getaddrinfo in libcurl's resolver
   * thread, blocking the whole loop; with it the thread is left to finish
   * and clean up alone. */
  rc |= curl_easy_setopt(easy, CURLOPT_QUICK_EXIT, 1L);
  return rc != CURLE_OK;
}

/* Whether a request leaves the handle as configure_constant left it, up to
 * the options every attempt sets again (URL, timeouts, fresh connect,
 * headers, and HTTPGET, which also clears NOBODY): the next attempt on it
 * then needs no curl_easy_reset, and no constant option set again. A
 * transfer that failed, was cancelled or saw libcurl re-send also needs
 * the reset (see on_prereq). */
static int keeps_constant(const rt_request_t *req) {
  /* An '@' may be credentials in the URL, which libcurl keeps auth state
   * for: such a handle is reset, like one that was given a CA file. */
  return req->body == NULL && strcmp(req->method, "GET") == 0 &&
         req->ca_file == NULL && req->verify_tls &&
         strchr(req->url, '@') == NULL;
}

/* Hand libcurl the request's URL already parsed when the handle's last
 * request had the same one: libcurl parses a URL given as text at every
 * transfer and writes it out again normalized (10k instructions for
 * http://127.0.0.1:PORT/, callgrind), while a URL handle it only copies.
 * Parsed with the flags libcurl uses for CURLOPT_URL, and given with the
 * text libcurl would have made of it (the effective URL, response.url): a
 * newer libcurl makes that text from the handle itself, 7.88 takes it as
 * given. A URL that does not parse goes as text, for libcurl to refuse in
 * its own words. */
static int set_url(rt_xfer_t *xfer, const char *url) {
  CURL *easy = xfer->easy;

  if (xfer->parsed_url == NULL || strcmp(xfer->parsed_url, url) != 0) {
    free(xfer->parsed_url);
    xfer->parsed_url = NULL;
    curl_free(xfer->normalized_url);
    xfer->normalized_url = NULL;
    if (xfer->parsed == NULL)
      xfer->parsed = curl_url();
    if (xfer->parsed == NULL ||
        curl_url_set(xfer->parsed, CURLUPART_URL, url,
                     CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) !=
            CURLUE_OK ||
        curl_url_get(xfer->parsed, CURLUPART_URL, &xfer->normalized_url, 0) !=
            CURLUE_OK ||
        (xfer->parsed_url = strdup(url)) == NULL)
      return curl_easy_setopt(easy, CURLOPT_CURLU, NULL) != CURLE_OK ||
             curl_easy_setopt(easy, CURLOPT_URL, url) != CURLE_OK;
  }
  return curl_easy_setopt(easy, CURLOPT_URL, xfer->normalized_url) !=
             CURLE_OK ||
         curl_easy_setopt(easy, CURLOPT_CURLU, xfer->parsed) != CURLE_OK;
}

static int configure(rt_xfer_t *xfer, const rt_request_t *req) {
  CURL *easy = xfer->easy;
  CURLcode rc = CURLE_OK;

  if (!xfer->constant) {
    curl_easy_reset(easy);
    if (configure_constant(xfer) != 0)
      return -1;
  }
  xfer->constant = keeps_constant(req);
  if (set_url(xfer, req->url) != 0)
    return -1;
  rc |= curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, req->timeout_ms);
  rc |= curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                         req->connect_timeout_ms);
  rc |= curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT,
                         req->fresh_connect ? 1L : 0L);
  if (req->ca_file != NULL)
    rc |= curl_easy_setopt(easy, CURLOPT_CAINFO, req->ca_file);
  if (!req->verify_tls) {
    rc |= curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
    rc |= curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (rc != CURLE_OK)
    return -1;
  if (set_method(easy, req) != 0)
    return -1;
  return set_headers(xfer, req);
}

/* ------------------------------------------------------------------ */
/* The pool of easy handles                                            */
/* ------------------------------------------------------------------ */

static void free_on_close(uv_handle_t *handle) {
  free(handle->data);
}

static void xfer_free(rt_xfer_t *xfer) {
  curl_easy_cleanup(xfer->easy);
  curl_url_cleanup(xfer->parsed);
  free(xfer->parsed_url);
  curl_free(xfer->normalized_url);
  rt_buf_free(&xfer->head);
  rt_buf_free(&xfer->body);
  uv_close((uv_handle_t *)&xfer->deadline, free_on_close);
}

static void pool_trim(rt_loop_t *loop, unsigned keep) {
  while (loop->xfer_idle > keep) {
    rt_xfer_t *xfer = loop->xfer_pool;

    loop->xfer_pool = xfer->next_idle;
    loop->xfer_idle--;
    xfer_free(xfer);
  }
}

static rt_xfer_t *xfer_get(rt_loop_t *loop) {
  rt_xfer_t *xfer = loop->xfer_pool;

  if (xfer != NULL) {
    loop->xfer_pool = xfer->next_idle;
    loop->xfer_idle--;
  } else {
    xfer = calloc(1, sizeof(*xfer));
    if (xfer == NULL)
      return NULL;
    xfer->easy = curl_easy_init();
    if (xfer->easy == NULL) {
      free(xfer);
      return NULL;
    }
    uv_timer_init(&loop->uv, &xfer->deadline);
    xfer->deadline.data = xfer;
    xfer->loop = loop;
    xfer->job.done = NULL;
    loop->trim = pool_trim;
  }
  memset(&xfer->result, 0, sizeof(xfer->result));
  xfer->errbuf[0] = '\0';
  xfer->note[0] = '\0';
  xfer->stop = RT_STOP_NONE;
  xfer->sends = 0;
  xfer->went_out = 0;
  return xfer;
}

static void xfer_put(rt_xfer_t *xfer) {
  rt_loop_t *loop = xfer->loop;

  free_headers(xfer);
  rt_buf_free(&xfer->body);
  /* A steady load never has more idle handles than connections; after a
   * burst the loop's tidy timer trims the pool to what the load needs. */
  if ((long)loop->xfer_idle >= loop->max_connects) {
    xfer_free(xfer);
    return;
  }
  /* The header block is kept: it is rewritten by every transfer and its
   * buffer would be allocated again at once. */
  xfer->head.len = 0;
  xfer->next_idle = loop->xfer_pool;
  loop->xfer_pool = xfer;
  loop->xfer_idle++;
}

/* ------------------------------------------------------------------ */
/* Redirects                                                           */
/* ------------------------------------------------------------------ */

static int is_http_url(const char *url) {
  return rt_request_check_url(url, strlen(url)) == NULL;
}

/* Whether the redirect target `to` has the scheme, host and port of
 * `from` (1) or not (0); -1 when libcurl cannot parse `to` (a port over
 * 65535, a broken IPv6 literal or an empty host pass the byte checks but
 * not this). */
static int same_origin(const char *from, const char *to) {
  static const CURLUPart parts[] = {CURLUPART_SCHEME, CURLUPART_HOST,
                                    CURLUPART_PORT};
  CURLU *ua = curl_url();
  CURLU *ub = curl_url();
  int same = 0;
  size_t i;

  if (ub == NULL || curl_url_set(ub, CURLUPART_URL, to, 0) != CURLUE_OK) {
    same = -1;
    goto out;
  }
  if (ua == NULL || from == NULL ||
      curl_url_set(ua, CURLUPART_URL, from, 0) != CURLUE_OK)
    goto out;
  for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
    char *pa = NULL, *pb = NULL;
    int equal;

    curl_url_get(ua, parts[i], &pa, CURLU_DEFAULT_PORT);
    curl_url_get(ub, parts[i], &pb, CURLU_DEFAULT_PORT);
    equal = pa != NULL && pb != NULL && strcasecmp(pa, pb) == 0;
    curl_free(pa);
    curl_free(pb);
    if (!equal)
      goto out;
  }
  same = 1;
out:
  curl_url_cleanup(ua);
  curl_url_cleanup(ub);
  return same;
}

/* The request headers minus credentials (for another origin) and minus
 * what described the body (when it is dropped). */
static int drop_headers(rt_xfer_t *xfer, int credentials, int body) {
  struct curl_slist *list = NULL;
  struct curl_slist *item;

  for (item = xfer->headers; item != NULL; item = item->next) {
    struct curl_slist *grown;
    const char *h = item->data;

    if (credentials &&
        (header_is(h, "Authorization") || header_is(h, "Cookie")))
      continue;
    if (body &&
        (header_is(h, "Content-Type") || header_is(h, "Content-Length")))
      continue;
    grown = curl_slist_append(list, h);
    if (grown == NULL) {
      curl_slist_free_all(list);
      return -1;
    }
    list = grown;
  }
  if (curl_easy_setopt(xfer->easy, CURLOPT_HTTPHEADER, list) != CURLE_OK) {
    curl_slist_free_all(list);
    return -1;
  }
  free_headers(xfer);
  xfer->headers = list;
  return 0;
}

/* Send the next request of a redirect, as aiohttp does: a 303 becomes a GET
 * without a body (except for HEAD), a 301 or 302 turns a POST into a GET
 * without a body, anything else keeps its method and body; credentials do
 * not go to another origin. Returns 1 when the next request is on its way,
 * 0 when this response ends the attempt (xfer->stop says if it failed). */
static int follow_redirect(rt_xfer_t *xfer) {
  CURL *easy = xfer->easy;
  long status = 0;
  char *location = NULL;
  char *current = NULL;
  char *method = NULL;
  int to_get, same;
  uint64_t spent_ms;

  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
  if (!is_redirect(status) || xfer->max_redirects == 0)
    return 0;
  curl_easy_getinfo(easy, CURLINFO_REDIRECT_URL, &location);
  if (location == NULL)
    return 0; /* no Location: the 3xx is the response */
  if (xfer->result.redirects >= xfer->max_redirects) {
    stop_with(xfer, RT_STOP_REDIRECTS, "more than %ld redirects",
              xfer->max_redirects);
    return 0;
  }
  if (!is_http_url(location)) {
    stop_with(xfer, RT_STOP_REDIRECT_SCHEME,
              "a %ld redirect to a URL that is not http or https", status);
    return 0;
  }
  curl_easy_getinfo(easy, CURLINFO_EFFECTIVE_URL, &current);
  same = same_origin(current, location);
  if (same < 0) {
    stop_with(xfer, RT_STOP_REDIRECT_URL, "a %ld redirect to a malformed URL",
              status);
    return 0;
  }
  spent_ms = (uv_hrtime() - xfer->started_ns) / 1000000;
  if (xfer->timeout_ms > 0 && spent_ms >= (uint64_t)xfer->timeout_ms) {
    stop_with(xfer, RT_STOP_TIMEOUT,
              "the attempt took longer than its timeout (%ld ms) following "
              "redirects",
              xfer->timeout_ms);
    return 0;
  }
  curl_easy_getinfo(easy, CURLINFO_EFFECTIVE_METHOD, &method);
  to_get = method != NULL &&
           ((status == 303 && strcmp(method, "HEAD") != 0) ||
            ((status == 301 || status == 302) && strcmp(method, "POST") == 0));
  if (drop_headers(xfer, !same, to_get) != 0) {
    stop_with(xfer, RT_STOP_NOMEM, "out of memory following a %ld redirect",
              status);
    return 0;
  }
  if (to_get) {
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    xfer->idempotent = 1;
  }
  /* curl copies the URL before the handle is added again, which is when
   * `location` (curl's own memory) becomes invalid. A URL handle would
   * take precedence over it. */
  curl_easy_setopt(easy, CURLOPT_CURLU, NULL);
  curl_easy_setopt(easy, CURLOPT_URL, location);
  if (xfer->timeout_ms > 0) {
    xfer->hop_timeout_ms = xfer->timeout_ms - (long)spent_ms;
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, xfer->hop_timeout_ms);
  }
  xfer->body.len = 0;
  xfer->head.len = 0;
  xfer->sends = 0;
  xfer->discard_body = 0;
  xfer->result.redirects++;
  xfer->hop_started_ns = uv_hrtime();
  if (rt_loop_add(xfer->loop, &xfer->job, easy) != 0) {
    stop_with(xfer, RT_STOP_NOMEM,
              "could not start the request of a %ld redirect", status);
    return 0;
  }
  xfer->in_flight = 1;
  return 1;
}

/* ------------------------------------------------------------------ */
/* Start, finish, release                                              */
/* ------------------------------------------------------------------ */

static double phase(CURL *easy, CURLINFO info, double offset) {
  curl_off_t us = 0;

  if (curl_easy_getinfo(easy, info, &us) != CURLE_OK || us <= 0)
    return 0;
  return offset + (double)us / 1e6;
}

/* Whether the response's Retry-After starts with a number of seconds too
 * large for libcurl's curl_off_t, which it reports as 0 ("now"), as it
 * does a value it cannot read: a server asking to be left alone for ages
 * must not be retried at once. libcurl reads the leading digits of the
 * last Retry-After, so this does too. */
static int retry_after_overflows(CURL *easy) {
  struct curl_header *h;
  const char *v;

  if (curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &h) !=
      CURLHE_OK)
    return 0;
  if (h->amount > 1 && curl_easy_header(easy, "Retry-After", h->amount - 1,
                                        CURLH_HEADER, -1, &h) != CURLHE_OK)
    return 0;
  for (v = h->value; *v == ' ' || *v == '\t'; v++)
    ;
  if (*v == '+') /* as strtol, libcurl takes a sign */
    v++;
  while (*v == '0')
    v++;
  /* libcurl read 0: leading digits that are not all zeros overflowed. */
  return *v >= '1' && *v <= '9';
}

static void record_times(rt_xfer_t *xfer) {
  rt_xfer_result_t *r = &xfer->result;
  double offset = (double)(xfer->hop_started_ns - xfer->started_ns) / 1e9;
  curl_off_t after = 0;
  uint64_t now = uv_hrtime();

  r->timings.dns = phase(xfer->easy, CURLINFO_NAMELOOKUP_TIME_T, offset);
  r->timings.connect = phase(xfer->easy, CURLINFO_CONNECT_TIME_T, offset);
  r->timings.tls = phase(xfer->easy, CURLINFO_APPCONNECT_TIME_T, offset);
  r->timings.first_byte =
      phase(xfer->easy, CURLINFO_STARTTRANSFER_TIME_T, offset);
  r->timings.total = (double)(now - xfer->started_ns) / 1e9;
  r->timings.finished_at = (double)now / 1e9;
  /* libcurl gives a date in the past as a negative delay: "now". */
  if (curl_easy_getinfo(xfer->easy, CURLINFO_RETRY_AFTER, &after) == CURLE_OK &&
      after > 0)
    r->retry_after = (double)after;
  else if (after == 0 && retry_after_overflows(xfer->easy))
    r->retry_after = HUGE_VAL;
}

static void finish(rt_xfer_t *xfer, CURLcode code) {
  rt_xfer_result_t *r = &xfer->result;

  uv_timer_stop(&xfer->deadline);
  r->code = code;
  if (code != CURLE_OK || xfer->stop != RT_STOP_NONE)
    xfer->constant = 0; /* whatever it left, the next use starts afresh */
  if (xfer->stop != RT_STOP_NONE) {
    r->kind = stop_kind(xfer->stop);
    r->message = xfer->note;
    if (code == CURLE_OK)
      r->code = stop_code(xfer->stop);
  } else if (code != CURLE_OK) {
    r->kind = kind_of(xfer, code);
    r->message = xfer->note[0] != '\0'     ? xfer->note
                 : xfer->errbuf[0] != '\0' ? xfer->errbuf
                                           : curl_easy_strerror(code);
  }
  if (xfer->stop == RT_STOP_REFUSED) {
    /* The handle's figures are its last transfer's: none are this one's. */
    r->timings.total = (double)(uv_hrtime() - xfer->started_ns) / 1e9;
    r->timings.finished_at = rt_clock_now();
  } else {
    curl_easy_getinfo(xfer->easy, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_getinfo(xfer->easy, CURLINFO_EFFECTIVE_URL, &r->url);
    curl_easy_getinfo(xfer->easy, CURLINFO_EFFECTIVE_METHOD, &r->method);
    record_times(xfer);
  }
  xfer->done(xfer, xfer->done_arg);
}

/* libcurl 7.88 can lose a transfer's timeout: when another of its timers
 * (the connect timeout) is handled less than a millisecond before it, the
 * timeout entry is dropped, and with the socket API nothing looks at the
 * transfer again until its socket speaks, which a stalled server never
 * does. This timer, a little after libcurl's, ends such a transfer. */
#define DEADLINE_SLACK_MS 5

static void on_deadline(uv_timer_t *timer) {
  rt_xfer_t *xfer = timer->data;

  if (!xfer->in_flight)
    return;
  rt_loop_remove(xfer->loop, &xfer->job, xfer->easy);
  xfer->in_flight = 0;
  snprintf(xfer->note, sizeof(xfer->note),
           "the attempt took longer than its timeout (%ld ms)",
           xfer->timeout_ms);
  finish(xfer, CURLE_OPERATION_TIMEDOUT);
}

static void on_done(rt_loop_job_t *job, CURLcode code) {
  rt_xfer_t *xfer = (rt_xfer_t *)job;

  xfer->in_flight = 0;
  if (job->refused != 0) {
    snprintf(xfer->note, sizeof(xfer->note),
             "libcurl would not start the %s: %s",
             xfer->result.redirects > 0 ? "request of a redirect" : "transfer",
             curl_multi_strerror((CURLMcode)job->refused));
    job->refused = 0;
    xfer->stop = RT_STOP_REFUSED;
    finish(xfer, code);
    return;
  }
  if (code == CURLE_OK && xfer->stop == RT_STOP_NONE && follow_redirect(xfer))
    return;
  finish(xfer, code);
}

int rt_xfer_start(rt_loop_t *loop, const rt_request_t *req,
                  rt_xfer_done_cb done, void *arg, rt_xfer_t **out) {
  rt_xfer_t *xfer = xfer_get(loop);

  if (xfer == NULL)
    return UV_ENOMEM;
  xfer->job.done = on_done;
  xfer->timeout_ms = req->timeout_ms;
  xfer->hop_timeout_ms = req->timeout_ms;
  xfer->connect_timeout_ms = req->connect_timeout_ms;
  xfer->is_head = strcmp(req->method, "HEAD") == 0;
  xfer->discard_body = 0;
  xfer->max_redirects = req->max_redirects;
  xfer->max_body_size = req->max_body_size;
  xfer->idempotent = is_idempotent(req->method);
  if (configure(xfer, req) != 0) {
    xfer_put(xfer);
    return UV_ENOMEM;
  }
  xfer->done = done;
  xfer->done_arg = arg;
  xfer->started_ns = uv_hrtime();
  xfer->hop_started_ns = xfer->started_ns;
  if (rt_loop_add(loop, &xfer->job, xfer->easy) != 0) {
    xfer_put(xfer);
    return UV_EINVAL;
  }
  xfer->in_flight = 1;
  if (req->timeout_ms > 0)
    uv_timer_start(&xfer->deadline, on_deadline,
                   (uint64_t)req->timeout_ms + DEADLINE_SLACK_MS, 0);
  *out = xfer;
  return 0;
}

void rt_xfer_release(rt_xfer_t *xfer) {
  uv_timer_stop(&xfer->deadline);
  if (xfer->in_flight) {
    rt_loop_remove(xfer->loop, &xfer->job, xfer->easy);
    xfer->in_flight = 0;
    xfer->constant = 0;
  }
  xfer_put(xfer);
}

void rt_xfer_pool_drain(rt_loop_t *loop) {
  pool_trim(loop, 0);
}
