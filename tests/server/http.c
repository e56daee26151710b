/*
 * The HTTP routes, served by libmicrohttpd on the main port and, with a
 * certificate, on the TLS port. Both share the per-key counters with the
 * fault port; /stats reports the connections of the daemon it is asked on.
 */
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "server.h"

/* Upper bounds that keep a single request from exhausting memory or
 * pinning a thread forever. */
#define MAX_BYTES_BODY ((unsigned long)64 * 1024 * 1024)
#define MAX_ECHO_BODY ((size_t)64 * 1024 * 1024)
#define MAX_DELAY_MS 600000UL
/* A PEM certificate chain or key is a few KiB; anything this big is the
 * wrong file. */
#define MAX_PEM_FILE ((long)1024 * 1024)

#define CONNECTION_LIMIT 4096U
#define CONNECTION_TIMEOUT_S 60U
#define LISTEN_BACKLOG 4096U

/* One running daemon. Its connection statistics are guarded by st->lock;
 * the PEM buffers must outlive the daemon, which may read them again. */
struct http_port {
  struct server_state *st;
  struct MHD_Daemon *daemon;
  unsigned int port;
  unsigned long accepted; /* connections since start */
  unsigned long open;     /* connections now open */
  char *cert_pem;
  char *key_pem;
};

/* Per-TCP-connection state, MHD's socket_context: created and freed by
 * notify_connection(). */
struct conn_ctx {
  uint64_t id;
};

/* Per-request state, stored in MHD's con_cls and freed in
 * request_completed(). */
struct request_ctx {
  struct strbuf body;
  bool body_too_large;
  bool has_key;
  unsigned long hits;      /* this request's hit number for its key */
  struct hit_entry *entry; /* in flight on this key until completed */
  /* Counted as aborted already (by /delay, which sees the client leave
   * while it sleeps), so request_completed() does not count it again. */
  bool aborted;
  /* The access handler returned MHD_NO: MHD reports the request as
   * terminated with an error, but we dropped it, not the client. */
  bool dropped;
};

/* One key/value pair borrowed from MHD (valid for the current request). */
struct kv {
  const char *key;
  size_t key_len;
  const char *val;
  size_t val_len;
};

struct kv_list {
  struct kv *items;
  size_t len;
  size_t cap;
  bool failed;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* If url starts with prefix, return what follows it, else NULL. */
static const char *path_tail(const char *url, const char *prefix) {
  size_t n = strlen(prefix);

  return strncmp(url, prefix, n) == 0 ? url + n : NULL;
}

static const char *query_arg(struct MHD_Connection *conn, const char *name) {
  return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
}

/* ------------------------------------------------------------------ */
/* Responses                                                           */
/* ------------------------------------------------------------------ */

/* Queue a response whose body is copied from (body, len). One optional
 * extra header covers every route (Retry-After, Location,
 * WWW-Authenticate). */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status,
                             const char *ctype, const char *body, size_t len,
                             const char *hname, const char *hval) {
  struct MHD_Response *resp;
  enum MHD_Result ret;

  /* MHD refuses an empty header value or one with CR, LF or tab, and a
   * refusal would drop the connection: answer 400 instead. */
  if (hval != NULL && (hval[0] == '\0' || strpbrk(hval, "\r\n\t") != NULL)) {
    status = MHD_HTTP_BAD_REQUEST;
    ctype = "text/plain";
    body = "bad header value in the query\n";
    len = strlen(body);
    hname = hval = NULL;
  }
  /* MUST_COPY: body often lives on our stack or in a buffer we free right
   * after, while MHD sends it later. The API takes a non-const pointer
   * even when it only copies; going through uintptr_t keeps -Wcast-qual
   * quiet. */
  resp = MHD_create_response_from_buffer(len, (void *)(uintptr_t)body,
                                         MHD_RESPMEM_MUST_COPY);
  if (resp == NULL)
    return MHD_NO;
  if (ctype != NULL &&
      MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) !=
          MHD_YES) {
    MHD_destroy_response(resp);
    return MHD_NO;
  }
  if (hname != NULL && hval != NULL &&
      MHD_add_response_header(resp, hname, hval) != MHD_YES) {
    MHD_destroy_response(resp);
    return MHD_NO;
  }
  ret = MHD_queue_response(conn, status, resp);
  /* MHD keeps its own reference until the response is sent. */
  MHD_destroy_response(resp);
  return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn,
                                  unsigned int status, const char *text) {
  return reply(conn, status, "text/plain", text, strlen(text), NULL, NULL);
}

/* Send a JSON body assembled in sb and release sb. */
static enum MHD_Result reply_json(struct MHD_Connection *conn,
                                  unsigned int status, struct strbuf *sb,
                                  const char *hname, const char *hval) {
  enum MHD_Result ret;

  if (sb->failed || sb->data == NULL) {
    sb_free(sb);
    return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
  }
  ret = reply(conn, status, "application/json", sb->data, sb->len, hname, hval);
  sb_free(sb);
  return ret;
}

static enum MHD_Result bad_request(struct MHD_Connection *conn,
                                   const char *why) {
  struct strbuf sb = {0};
  enum MHD_Result ret;

  sb_printf(&sb, "bad request: %s\n", why);
  if (sb.failed)
    ret = MHD_NO;
  else
    ret = reply_text(conn, MHD_HTTP_BAD_REQUEST, sb.data);
  sb_free(&sb);
  return ret;
}

/* ------------------------------------------------------------------ */
/* Routes                                                              */
/* ------------------------------------------------------------------ */

/* Final statuses only. libmicrohttpd 0.9.75 treats a queued 1xx as an
 * interim response: 102/103/1xx are sent and the access handler is invoked
 * again, which would queue the same 1xx forever, and a 101 without an
 * upgrade handler leaves the client waiting indefinitely. */
static bool valid_final_status(unsigned long code) {
  return code >= 200 && code <= 599;
}

static enum MHD_Result route_status(struct MHD_Connection *conn,
                                    const char *arg) {
  unsigned long code;
  char body[32];
  int n;

  if (!parse_ulong(arg, 999, &code) || !valid_final_status(code))
    return bad_request(conn, "status must be 200..599");
  n = snprintf(body, sizeof body, "status %lu\n", code);
  return reply(conn, (unsigned int)code, "text/plain", body, (size_t)n,
               MHD_HTTP_HEADER_RETRY_AFTER, query_arg(conn, "retry_after"));
}

/* Shared by /fail and /close: hits without a key all count as hit 1, and
 * n defaults to 1, so keyless requests always take the failing branch. */
static bool should_fail(struct MHD_Connection *conn,
                        const struct request_ctx *rq, bool *bad) {
  const char *n_arg = query_arg(conn, "n");
  unsigned long limit = 1;
  unsigned long hits = rq->has_key ? rq->hits : 1;

  *bad = n_arg != NULL && !parse_ulong(n_arg, ULONG_MAX, &limit);
  return hits <= limit;
}

static enum MHD_Result ok_hits(struct MHD_Connection *conn,
                               const struct request_ctx *rq) {
  struct strbuf sb = {0};

  sb_printf(&sb, "{\"ok\":true,\"hits\":%lu}", rq->has_key ? rq->hits : 1UL);
  return reply_json(conn, MHD_HTTP_OK, &sb, NULL, NULL);
}

static enum MHD_Result route_fail(struct MHD_Connection *conn,
                                  const struct request_ctx *rq) {
  const char *status_arg = query_arg(conn, "status");
  const char *bad_json = query_arg(conn, "bad_json");
  unsigned long status = MHD_HTTP_SERVICE_UNAVAILABLE;
  struct strbuf sb = {0};
  bool bad;
  bool fail = should_fail(conn, rq, &bad);

  if (bad)
    return bad_request(conn, "n must be a non-negative integer");
  if (status_arg != NULL &&
      (!parse_ulong(status_arg, 999, &status) || !valid_final_status(status)))
    return bad_request(conn, "status must be 200..599");
  if (!fail)
    return ok_hits(conn, rq);
  if (bad_json != NULL && strcmp(bad_json, "1") == 0)
    sb_puts(&sb, "not json");
  else
    sb_printf(&sb, "{\"ok\":false,\"hits\":%lu}", rq->has_key ? rq->hits : 1UL);
  return reply_json(conn, (unsigned int)status, &sb,
                    MHD_HTTP_HEADER_RETRY_AFTER,
                    query_arg(conn, "retry_after"));
}

/* Count the request as abandoned by its client, once. */
static void mark_aborted(struct server_state *st, struct request_ctx *rq) {
  if (rq->aborted)
    return;
  rq->aborted = true;
  counters_abort(st, rq->entry);
}

/* Sleeps watching the client's socket, so a client that gives up (a
 * timeout, a cancelled hedge) is counted as aborted the moment it closes,
 * not when the delay is over and the reply fails to go out. */
static enum MHD_Result route_delay(struct server_state *st,
                                   struct MHD_Connection *conn,
                                   struct request_ctx *rq, const char *arg) {
  const union MHD_ConnectionInfo *info;
  unsigned long ms;
  struct strbuf sb = {0};

  if (!parse_ulong(arg, MAX_DELAY_MS, &ms))
    return bad_request(conn, "delay must be 0..600000 ms");
  /* ?first=1: only a key's first hit is slow, so a hedged copy (or a
   * retry) of a slow request is answered at once. */
  if (rq->has_key && rq->hits > 1 && query_arg(conn, "first") != NULL)
    ms = 0;
  info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (sleep_watching_peer(st, info != NULL ? info->connect_fd : -1, ms)) {
    mark_aborted(st, rq);
    /* No one is left to read a reply: drop the connection now. */
    return MHD_NO;
  }
  sb_printf(&sb, "{\"delayed_ms\":%lu}", ms);
  return reply_json(conn, MHD_HTTP_OK, &sb, NULL, NULL);
}

static enum MHD_Result route_close(struct server_state *st,
                                   struct MHD_Connection *conn,
                                   struct request_ctx *rq) {
  const char *delay_arg = query_arg(conn, "delay");
  const union MHD_ConnectionInfo *info;
  unsigned long ms = 0;
  bool bad;

  if (should_fail(conn, rq, &bad) || bad) {
    /* MHD_NO without queueing a response makes MHD drop the socket, so
     * the client sees an empty reply (curl exit 52). */
    return MHD_NO;
  }
  if (delay_arg != NULL && !parse_ulong(delay_arg, MAX_DELAY_MS, &ms))
    return bad_request(conn, "delay must be 0..600000 ms");
  /* ?delay=MS: the hits after the drops answer late, so the copy libcurl
   * sends again after a drop on a reused connection can be cut. */
  if (ms > 0) {
    info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (sleep_watching_peer(st, info != NULL ? info->connect_fd : -1, ms)) {
      mark_aborted(st, rq);
      return MHD_NO;
    }
  }
  return ok_hits(conn, rq);
}

/* A uniform draw in [0, 100): splitmix64 of a shared counter, so the
 * threads of the daemon need no lock and each request draws anew. */
static unsigned long draw_percent(void) {
  static _Atomic uint64_t counter;
  uint64_t z = atomic_fetch_add(&counter, 1) * 0x9E3779B97F4A7C15ULL;

  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return (unsigned long)(z % 100);
}

/* A server misbehaving at random, for load checks: some requests get no
 * reply at all (the connection dropped), some a 503. */
static enum MHD_Result route_flaky(struct MHD_Connection *conn) {
  const char *drop_arg = query_arg(conn, "drop");
  const char *fail_arg = query_arg(conn, "fail");
  unsigned long drop = 0, fail = 0;

  if ((drop_arg != NULL && !parse_ulong(drop_arg, 100, &drop)) ||
      (fail_arg != NULL && !parse_ulong(fail_arg, 100, &fail)))
    return bad_request(conn, "drop and fail must be percentages 0..100");
  if (draw_percent() < drop)
    return MHD_NO; /* as /close: MHD drops the socket */
  if (draw_percent() < fail)
    return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "flaky 503\n");
  return reply_text(conn, MHD_HTTP_OK, "flaky ok\n");
}

static enum MHD_Result collect_kv(void *cls, enum MHD_ValueKind kind,
                                  const char *key, size_t key_size,
                                  const char *value, size_t value_size) {
  struct kv_list *list = cls;

  (void)kind;
  if (list->len == list->cap) {
    size_t cap = list->cap ? list->cap * 2 : 16;
    struct kv *p = realloc(list->items, cap * sizeof *p);

    if (p == NULL) {
      list->failed = true;
      return MHD_NO;
    }
    list->items = p;
    list->cap = cap;
  }
  list->items[list->len].key = key;
  list->items[list->len].key_len = key_size;
  /* A bare "?flag" has no value; report it as an empty string so the
   * JSON shape stays predictable. */
  list->items[list->len].val = value != NULL ? value : "";
  list->items[list->len].val_len = value != NULL ? value_size : 0;
  list->len++;
  return MHD_YES;
}

static bool kv_key_equal(const struct kv *a, const struct kv *b,
                         bool fold_case) {
  if (a->key_len != b->key_len)
    return false;
  if (fold_case)
    return strncasecmp(a->key, b->key, a->key_len) == 0;
  return memcmp(a->key, b->key, a->key_len) == 0;
}

/* Emit the request's values of one kind as a JSON object. Duplicate keys
 * are collapsed with the last occurrence winning, so the output is valid
 * JSON with unique member names. */
static void sb_json_kv_object(struct strbuf *sb, struct MHD_Connection *conn,
                              enum MHD_ValueKind kind, bool lower_keys) {
  struct kv_list list = {0};
  size_t i;
  size_t j;
  bool first = true;

  MHD_get_connection_values_n(conn, kind, collect_kv, &list);
  if (list.failed)
    sb->failed = true;
  sb_append(sb, "{", 1);
  for (i = 0; i < list.len; i++) {
    for (j = i + 1; j < list.len; j++) {
      if (kv_key_equal(&list.items[i], &list.items[j], lower_keys))
        break;
    }
    if (j < list.len)
      continue; /* a later duplicate wins */
    if (!first)
      sb_append(sb, ",", 1);
    first = false;
    sb_json_string(sb, list.items[i].key, list.items[i].key_len, lower_keys);
    sb_append(sb, ":", 1);
    sb_json_string(sb, list.items[i].val, list.items[i].val_len, false);
  }
  sb_append(sb, "}", 1);
  free(list.items);
}

static enum MHD_Result route_echo(struct MHD_Connection *conn,
                                  const struct request_ctx *rq, const char *url,
                                  const char *method) {
  struct strbuf sb = {0};

  if (rq->body_too_large)
    return reply_text(conn, MHD_HTTP_CONTENT_TOO_LARGE,
                      "request body too large\n");
  sb_puts(&sb, "{\"method\":");
  sb_json_string(&sb, method, strlen(method), false);
  sb_puts(&sb, ",\"path\":");
  sb_json_string(&sb, url, strlen(url), false);
  sb_puts(&sb, ",\"query\":");
  sb_json_kv_object(&sb, conn, MHD_GET_ARGUMENT_KIND, false);
  sb_puts(&sb, ",\"headers\":");
  sb_json_kv_object(&sb, conn, MHD_HEADER_KIND, true);
  sb_puts(&sb, ",\"body\":");
  sb_json_string(&sb, rq->body.data != NULL ? rq->body.data : "", rq->body.len,
                 false);
  if (rq->has_key)
    sb_printf(&sb, ",\"hits\":%lu", rq->hits);
  sb_puts(&sb, "}");
  return reply_json(conn, MHD_HTTP_OK, &sb, NULL, NULL);
}

static enum MHD_Result route_auth(struct MHD_Connection *conn,
                                  const char *arg) {
  const char *slash = strchr(arg, '/');
  char *user;
  char *pass = NULL;
  bool ok = false;
  struct strbuf sb = {0};

  if (slash == NULL)
    return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
  /* USER is everything up to the first '/', PASS is the rest. */
  user = MHD_basic_auth_get_username_password(conn, &pass);
  if (user != NULL && pass != NULL && strlen(user) == (size_t)(slash - arg) &&
      strncmp(user, arg, (size_t)(slash - arg)) == 0 &&
      strcmp(pass, slash + 1) == 0)
    ok = true;
  if (user != NULL)
    MHD_free(user);
  if (pass != NULL)
    MHD_free(pass);
  if (!ok) {
    /* Header added by hand (not MHD_queue_basic_auth_fail_response) so the
     * exact value is under our control and the body has a Content-Type. */
    sb_puts(&sb, "{\"authenticated\":false}");
    return reply_json(conn, MHD_HTTP_UNAUTHORIZED, &sb,
                      MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Basic realm=\"test\"");
  }
  sb_puts(&sb, "{\"authenticated\":true,\"user\":");
  sb_json_string(&sb, arg, (size_t)(slash - arg), false);
  sb_puts(&sb, "}");
  return reply_json(conn, MHD_HTTP_OK, &sb, NULL, NULL);
}

static enum MHD_Result route_hits(struct server_state *st,
                                  struct MHD_Connection *conn) {
  const char *key = query_arg(conn, "key");
  struct strbuf sb = {0};
  struct key_stats ks;

  if (key == NULL)
    return bad_request(conn, "missing key");
  ks = counters_get(st, key);
  sb_puts(&sb, "{\"key\":");
  sb_json_string(&sb, key, strlen(key), false);
  sb_printf(&sb,
            ",\"hits\":%lu,\"peak\":%lu,\"connections\":%lu,"
            "\"aborted\":%lu}",
            ks.hits, ks.peak, ks.connections, ks.aborted);
  return reply_json(conn, MHD_HTTP_OK, &sb, NULL, NULL);
}

static enum MHD_Result route_reset(struct server_state *st,
                                   struct MHD_Connection *conn) {
  static const char body[] = "{\"reset\":true}";

  counters_reset(st, query_arg(conn, "key"));
  return reply(conn, MHD_HTTP_OK, "application/json", body, sizeof body - 1,
               NULL, NULL);
}

static enum MHD_Result route_stats(struct http_port *hp,
                                   struct MHD_Connection *conn) {
  struct strbuf sb = {0};
  unsigned long accepted;
  unsigned long open;

  pthread_mutex_lock(&hp->st->lock);
  accepted = hp->accepted;
  open = hp->open;
  pthread_mutex_unlock(&hp->st->lock);
  sb_printf(&sb, "{\"connections\":%lu,\"open\":%lu}", accepted, open);
  return reply_json(conn, MHD_HTTP_OK, &sb, NULL, NULL);
}

static enum MHD_Result route_bytes(struct MHD_Connection *conn,
                                   const char *arg) {
  unsigned long n;
  char *buf;
  struct MHD_Response *resp;
  enum MHD_Result ret;

  if (!parse_ulong(arg, MAX_BYTES_BODY, &n))
    return bad_request(conn, "size must be 0..67108864");
  /* MUST_FREE hands our malloc'd buffer to MHD, avoiding a second 64 MiB
   * copy; +1 so a zero-byte body still gets a real pointer. */
  buf = malloc((size_t)n + 1);
  if (buf == NULL)
    return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
  memset(buf, 'x', (size_t)n);
  resp = MHD_create_response_from_buffer((size_t)n, buf, MHD_RESPMEM_MUST_FREE);
  if (resp == NULL) {
    free(buf);
    return MHD_NO;
  }
  if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                              "application/octet-stream") != MHD_YES) {
    MHD_destroy_response(resp);
    return MHD_NO;
  }
  ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
  MHD_destroy_response(resp);
  return ret;
}

static bool valid_redirect_code(unsigned long code) {
  return code == MHD_HTTP_MOVED_PERMANENTLY || code == MHD_HTTP_FOUND ||
         code == MHD_HTTP_SEE_OTHER || code == MHD_HTTP_TEMPORARY_REDIRECT ||
         code == MHD_HTTP_PERMANENT_REDIRECT;
}

static enum MHD_Result redirect_to(struct MHD_Connection *conn,
                                   unsigned int code, const char *to) {
  struct strbuf sb = {0};
  enum MHD_Result ret;

  sb_printf(&sb, "redirecting to %s\n", to);
  if (sb.failed) {
    sb_free(&sb);
    return MHD_NO;
  }
  ret = reply(conn, code, "text/plain", sb.data, sb.len,
              MHD_HTTP_HEADER_LOCATION, to);
  sb_free(&sb);
  return ret;
}

static enum MHD_Result route_redirect(struct MHD_Connection *conn) {
  const char *to = query_arg(conn, "to");
  const char *code_arg = query_arg(conn, "code");
  unsigned long code = MHD_HTTP_FOUND;

  if (to == NULL || *to == '\0')
    return bad_request(conn, "missing to");
  if (code_arg != NULL &&
      (!parse_ulong(code_arg, 999, &code) || !valid_redirect_code(code)))
    return bad_request(conn, "code must be 301, 302, 303, 307 or 308");
  return redirect_to(conn, (unsigned int)code, to);
}

/* Append the request's query, re-encoded from MHD's decoded arguments
 * (MHD keeps no raw copy); "?flag" without a value stays without '='. */
static enum MHD_Result append_query(void *cls, enum MHD_ValueKind kind,
                                    const char *key, size_t key_size,
                                    const char *value, size_t value_size) {
  struct strbuf *sb = cls;

  (void)kind;
  sb_append(sb, sb->data != NULL && strchr(sb->data, '?') ? "&" : "?", 1);
  sb_url_encode(sb, key, key_size);
  if (value != NULL) {
    sb_append(sb, "=", 1);
    sb_url_encode(sb, value, value_size);
  }
  return MHD_YES;
}

/* /loop/N -> /loop/N+1 forever, keeping the query so ?key=K counts every
 * hop: a client without a redirect limit never gets out. */
static enum MHD_Result route_loop(struct MHD_Connection *conn,
                                  const char *arg) {
  unsigned long n;
  struct strbuf to = {0};
  enum MHD_Result ret;

  if (!parse_ulong(arg, ULONG_MAX - 1, &n))
    return bad_request(conn, "loop step must be a non-negative integer");
  sb_printf(&to, "/loop/%lu", n + 1);
  MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, append_query, &to);
  if (to.failed) {
    sb_free(&to);
    return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
  }
  ret = redirect_to(conn, MHD_HTTP_FOUND, to.data);
  sb_free(&to);
  return ret;
}

static enum MHD_Result dispatch(struct http_port *hp,
                                struct MHD_Connection *conn,
                                struct request_ctx *rq, const char *url,
                                const char *method) {
  struct server_state *st = hp->st;
  const char *arg;

  if (strcmp(url, "/") == 0 || strcmp(url, "/hello") == 0)
    return reply_text(conn, MHD_HTTP_OK, "hello\n");
  if ((arg = path_tail(url, "/status/")) != NULL)
    return route_status(conn, arg);
  if (strcmp(url, "/fail") == 0)
    return route_fail(conn, rq);
  if ((arg = path_tail(url, "/delay/")) != NULL)
    return route_delay(st, conn, rq, arg);
  if (strcmp(url, "/close") == 0)
    return route_close(st, conn, rq);
  if (strcmp(url, "/flaky") == 0)
    return route_flaky(conn);
  if (strcmp(url, "/echo") == 0)
    return route_echo(conn, rq, url, method);
  if ((arg = path_tail(url, "/auth/")) != NULL)
    return route_auth(conn, arg);
  if (strcmp(url, "/hits") == 0)
    return route_hits(st, conn);
  if (strcmp(url, "/reset") == 0)
    return route_reset(st, conn);
  if (strcmp(url, "/stats") == 0)
    return route_stats(hp, conn);
  if ((arg = path_tail(url, "/bytes/")) != NULL)
    return route_bytes(conn, arg);
  if (strcmp(url, "/redirect") == 0)
    return route_redirect(conn);
  if ((arg = path_tail(url, "/loop/")) != NULL)
    return route_loop(conn, arg);
  return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

/* ------------------------------------------------------------------ */
/* MHD callbacks                                                       */
/* ------------------------------------------------------------------ */

/* Start counting a request: hits, in flight (until request_completed())
 * and the connection it came on. */
static enum MHD_Result begin_request(struct http_port *hp,
                                     struct MHD_Connection *conn,
                                     struct request_ctx *rq, const char *key) {
  const union MHD_ConnectionInfo *info;
  const struct conn_ctx *cc;

  info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  cc = info != NULL ? info->socket_context : NULL;
  /* notify_connection() could not allocate the context: without an id
   * the connection count would be wrong, so drop the connection. */
  if (cc == NULL)
    return MHD_NO;
  rq->has_key = true;
  rq->entry = counters_begin(hp->st, key, cc->id, &rq->hits);
  return rq->entry != NULL ? MHD_YES : MHD_NO;
}

/* MHD calls this once when the headers are in, once per chunk of upload
 * data, and once more when the request is complete; the response can
 * only be queued on that last call. */
static enum MHD_Result
handle_request(void *cls, struct MHD_Connection *conn, const char *url,
               const char *method, const char *version, const char *upload_data,
               size_t *upload_data_size, void **con_cls) {
  struct http_port *hp = cls;
  struct request_ctx *rq = *con_cls;
  enum MHD_Result ret;

  (void)version;
  if (rq == NULL) {
    const char *key;

    rq = calloc(1, sizeof *rq);
    if (rq == NULL)
      return MHD_NO;
    *con_cls = rq;
    /* Count exactly once per request, before any route logic runs. The
     * inspection routes must not disturb the counters they report. */
    key = query_arg(conn, "key");
    if (key != NULL && strcmp(url, "/hits") != 0 && strcmp(url, "/reset") != 0)
      return begin_request(hp, conn, rq, key);
    return MHD_YES;
  }

  if (*upload_data_size != 0) {
    /* Only /echo cares about the body; everything else just drains it so
     * the connection stays usable for keep-alive. */
    if (strcmp(url, "/echo") == 0 && !rq->body_too_large) {
      if (rq->body.len + *upload_data_size > MAX_ECHO_BODY) {
        rq->body_too_large = true;
        sb_free(&rq->body);
      } else {
        sb_append(&rq->body, upload_data, *upload_data_size);
        if (rq->body.failed) {
          rq->dropped = true;
          return MHD_NO;
        }
      }
    }
    *upload_data_size = 0;
    return MHD_YES;
  }

  ret = dispatch(hp, conn, rq, url, method);
  if (ret == MHD_NO)
    rq->dropped = true;
  return ret;
}

/* Whether a request MHD cut short was cut short by its client: it closed
 * or reset the connection while MHD was reading the request or sending
 * the reply. Not our own MHD_NO (also reported as WITH_ERROR), a shutdown,
 * or the idle timeout, which is MHD closing on a client still there. */
static bool client_went_away(const struct request_ctx *rq,
                             enum MHD_RequestTerminationCode toe) {
  switch (toe) {
  case MHD_REQUEST_TERMINATED_WITH_ERROR:
    return !rq->dropped;
  case MHD_REQUEST_TERMINATED_READ_ERROR:
  case MHD_REQUEST_TERMINATED_CLIENT_ABORT:
    return true;
  default:
    return false;
  }
}

/* Also called when a request is cut short (client gone, MHD_NO, daemon
 * shutdown), so the in-flight count always comes back down. */
static void request_completed(void *cls, struct MHD_Connection *conn,
                              void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
  struct http_port *hp = cls;
  struct request_ctx *rq = *con_cls;

  (void)conn;
  if (rq == NULL)
    return;
  if (client_went_away(rq, toe))
    mark_aborted(hp->st, rq);
  counters_end(hp->st, rq->entry);
  sb_free(&rq->body);
  free(rq);
  *con_cls = NULL;
}

static void notify_connection(void *cls, struct MHD_Connection *conn,
                              void **socket_context,
                              enum MHD_ConnectionNotificationCode toe) {
  struct http_port *hp = cls;
  struct conn_ctx *cc;

  (void)conn;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
    cc = malloc(sizeof *cc);
    if (cc != NULL)
      cc->id = state_next_conn_id(hp->st);
    *socket_context = cc;
    pthread_mutex_lock(&hp->st->lock);
    hp->accepted++;
    hp->open++;
    pthread_mutex_unlock(&hp->st->lock);
  } else {
    free(*socket_context);
    *socket_context = NULL;
    pthread_mutex_lock(&hp->st->lock);
    hp->open--;
    pthread_mutex_unlock(&hp->st->lock);
  }
}

/* MHD logs every access-handler MHD_NO as an internal error. /close does
 * that on purpose, so drop that one message; everything else (bind
 * failures, resource exhaustion) still reaches stderr. The text arrives as
 * a "%s" argument rather than in fmt, so it has to be formatted first. */
static void log_filter(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void log_filter(void *cls, const char *fmt, va_list ap) {
  static const char expected[] = "Application reported internal error";
  char *msg = NULL;

  (void)cls;
  if (vasprintf(&msg, fmt, ap) < 0)
    return;
  if (strncmp(msg, expected, sizeof expected - 1) != 0)
    fputs(msg, stderr);
  free(msg);
}

/* ------------------------------------------------------------------ */
/* Start and stop                                                      */
/* ------------------------------------------------------------------ */

/* Read a whole PEM file into a NUL-terminated buffer the caller owns:
 * MHD_OPTION_HTTPS_MEM_* take strings, not paths. */
static char *read_pem(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  long size;

  if (f == NULL) {
    fprintf(stderr, "cannot open %s\n", path);
    return NULL;
  }
  if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
      size > MAX_PEM_FILE || fseek(f, 0, SEEK_SET) != 0) {
    fprintf(stderr, "cannot size %s (or it is over 1 MiB)\n", path);
    goto out;
  }
  buf = malloc((size_t)size + 1);
  if (buf == NULL)
    goto out;
  if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
    fprintf(stderr, "cannot read %s\n", path);
    free(buf);
    buf = NULL;
    goto out;
  }
  buf[size] = '\0';
out:
  fclose(f);
  return buf;
}

static void http_free(struct http_port *hp) {
  free(hp->cert_pem);
  free(hp->key_pem);
  free(hp);
}

/* Start a daemon on 127.0.0.1:port (0: the kernel picks). With tls_cert
 * and tls_key (PEM paths) it speaks HTTPS. */
struct http_port *http_start(struct server_state *st, unsigned long port,
                             const char *tls_cert, const char *tls_key) {
  struct http_port *hp;
  struct sockaddr_in addr;
  const union MHD_DaemonInfo *info;
  unsigned int flags = MHD_USE_THREAD_PER_CONNECTION |
                       MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                       MHD_USE_ERROR_LOG;
  struct MHD_OptionItem tls_opts[3] = {{MHD_OPTION_END, 0, NULL}};

  hp = calloc(1, sizeof *hp);
  if (hp == NULL)
    return NULL;
  hp->st = st;
  if (tls_cert != NULL) {
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
      fprintf(stderr, "libmicrohttpd was built without TLS\n");
      http_free(hp);
      return NULL;
    }
    hp->cert_pem = read_pem(tls_cert);
    hp->key_pem = read_pem(tls_key);
    if (hp->cert_pem == NULL || hp->key_pem == NULL) {
      http_free(hp);
      return NULL;
    }
    flags |= MHD_USE_TLS;
    tls_opts[0] =
        (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, hp->cert_pem};
    tls_opts[1] =
        (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, hp->key_pem};
    tls_opts[2] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
  }

  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  /* Thread per connection lets /delay simply block; poll() instead of
   * select() lifts the FD_SETSIZE (1024) ceiling on descriptors. */
  /* Option/argument pairs one per line; clang-format would reflow them. */
  /* clang-format off */
  hp->daemon = MHD_start_daemon(
      flags, (uint16_t)port, NULL, NULL, &handle_request, hp,
      /* First, so start-up messages go through it too. */
      MHD_OPTION_EXTERNAL_LOGGER, &log_filter, (void *)NULL,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
      MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
      MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT_S,
      MHD_OPTION_THREAD_STACK_SIZE, THREAD_STACK_SIZE,
      MHD_OPTION_LISTEN_BACKLOG_SIZE, LISTEN_BACKLOG,
      MHD_OPTION_NOTIFY_COMPLETED, &request_completed, (void *)hp,
      MHD_OPTION_NOTIFY_CONNECTION, &notify_connection, (void *)hp,
      MHD_OPTION_ARRAY, tls_opts,
      MHD_OPTION_END);
  /* clang-format on */
  if (hp->daemon == NULL) {
    fprintf(stderr, "failed to start the %s daemon on 127.0.0.1:%lu\n",
            tls_cert != NULL ? "HTTPS" : "HTTP", port);
    http_free(hp);
    return NULL;
  }
  info = MHD_get_daemon_info(hp->daemon, MHD_DAEMON_INFO_BIND_PORT);
  if (info == NULL || info->port == 0) {
    fprintf(stderr, "could not determine the bound port\n");
    http_stop(hp);
    return NULL;
  }
  hp->port = info->port;
  return hp;
}

unsigned int http_port_number(const struct http_port *hp) {
  return hp->port;
}

/* Joins every connection thread; call state_stop() first so /delay
 * sleepers let go. */
void http_stop(struct http_port *hp) {
  if (hp == NULL)
    return;
  MHD_stop_daemon(hp->daemon);
  http_free(hp);
}
