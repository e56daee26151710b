/*
 * lretry-test-server: a small HTTP/1.1 server the lretry test suite runs
 * against. It exposes deterministic failure modes (status codes, failing
 * N times then succeeding, delays, dropped connections, ...) so retry
 * behaviour can be tested without touching the network.
 *
 * Usage: lretry-test-server [PORT]
 *
 * It listens on 127.0.0.1 only, prints the bound port on its own line once
 * it is ready, and runs until SIGINT or SIGTERM.
 *
 * Any request with ?key=K (except /hits and /reset) bumps counter K before
 * its route runs; "n" below is that new count (1 when there is no key).
 *
 *   /, /hello          200 text "hello\n"
 *   /status/N          N (200..599), text "status N\n"; ?retry_after=X
 *   /fail              ?key&n=1&status=503&retry_after&bad_json=1:
 *                      n <= N -> S {"ok":false,"hits":n}, else 200 ok:true
 *   /delay/MS          wait MS (<= 600000) ms, 200 {"delayed_ms":MS}
 *   /close             ?key&n=1: drop the connection without a reply while
 *                      n <= N, else 200 {"ok":true,"hits":n}
 *   /echo              200 JSON of method, path, query, headers, body, hits
 *   /auth/USER/PASS    200 if Basic auth matches, else 401 + challenge
 *   /hits?key=K        200 {"key":"K","hits":N} (not counted)
 *   /reset[?key=K]     clear all counters or one, 200 {"reset":true}
 *   /bytes/N           200, N (<= 64 MiB) 'x' bytes, octet-stream
 *   /redirect?to=PATH  302 Location: PATH
 *   anything else      404 "not found\n"; malformed parameters give 400
 */

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

/* Hit counters are keyed by arbitrary strings; a fixed bucket count keeps
 * the table trivial while chains absorb any number of keys. */
#define HIT_BUCKETS 256

/* Upper bounds that keep a single request from exhausting memory or
 * pinning a thread forever. */
#define MAX_BYTES_BODY ((unsigned long)64 * 1024 * 1024)
#define MAX_ECHO_BODY ((size_t)64 * 1024 * 1024)
#define MAX_DELAY_MS 600000UL

/* Thread-per-connection needs many threads; a small stack keeps 1,000+
 * concurrent connections cheap. */
#define THREAD_STACK_SIZE ((size_t)256 * 1024)
#define CONNECTION_LIMIT 4096U
#define CONNECTION_TIMEOUT_S 60U
#define LISTEN_BACKLOG 4096U

struct hit_entry {
  struct hit_entry *next;
  unsigned long count;
  char key[]; /* NUL-terminated, allocated with the entry */
};

/* Everything shared between connection threads. One mutex covers both the
 * counters and the shutdown flag: contention is irrelevant for a test
 * server and a single lock cannot deadlock. */
struct server_state {
  pthread_mutex_t lock;
  /* Signalled at shutdown so /delay sleepers wake up early instead of
   * holding MHD_stop_daemon() hostage for the rest of their delay. */
  pthread_cond_t stop_cond;
  bool stopping;
  struct hit_entry *buckets[HIT_BUCKETS];
};

/* Growable byte buffer used both for request bodies and response bodies. A
 * sticky failure flag lets callers append freely and check once. */
struct strbuf {
  char *data;
  size_t len;
  size_t cap;
  bool failed;
};

/* Per-request state, stored in MHD's con_cls and freed in
 * request_completed(). */
struct request_ctx {
  struct strbuf body;
  bool body_too_large;
  bool has_key;
  unsigned long hits; /* this request's hit number for its key, 1-based */
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
/* strbuf                                                              */
/* ------------------------------------------------------------------ */

static bool sb_reserve(struct strbuf *sb, size_t extra) {
  size_t need;
  size_t cap;
  char *p;

  if (sb->failed)
    return false;
  if (extra > SIZE_MAX - sb->len - 1) {
    sb->failed = true;
    return false;
  }
  /* +1 keeps room for a NUL so the data can double as a C string. */
  need = sb->len + extra + 1;
  if (need <= sb->cap)
    return true;
  cap = sb->cap ? sb->cap : 256;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  p = realloc(sb->data, cap);
  if (p == NULL) {
    sb->failed = true;
    return false;
  }
  sb->data = p;
  sb->cap = cap;
  return true;
}

static void sb_append(struct strbuf *sb, const char *s, size_t n) {
  if (!sb_reserve(sb, n))
    return;
  if (n > 0)
    memcpy(sb->data + sb->len, s, n);
  sb->len += n;
  sb->data[sb->len] = '\0';
}

static void sb_puts(struct strbuf *sb, const char *s) {
  sb_append(sb, s, strlen(s));
}

static void sb_printf(struct strbuf *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void sb_printf(struct strbuf *sb, const char *fmt, ...) {
  va_list ap;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) {
    sb->failed = true;
    return;
  }
  if (!sb_reserve(sb, (size_t)n))
    return;
  va_start(ap, fmt);
  vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb->len += (size_t)n;
}

/* Append s as a quoted JSON string. Only '"', '\\' and control characters
 * need escaping; bytes >= 0x80 are passed through untouched so UTF-8 (or
 * arbitrary binary) survives the round trip byte for byte. */
static void sb_json_string(struct strbuf *sb, const char *s, size_t n,
                           bool lower) {
  size_t i;

  sb_append(sb, "\"", 1);
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];

    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      sb_append(sb, esc, 2);
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", (unsigned int)c);
      sb_append(sb, esc, 6);
    } else {
      if (lower && c < 0x80)
        c = (unsigned char)tolower(c);
      esc[0] = (char)c;
      sb_append(sb, esc, 1);
    }
  }
  sb_append(sb, "\"", 1);
}

static void sb_free(struct strbuf *sb) {
  free(sb->data);
  sb->data = NULL;
  sb->len = 0;
  sb->cap = 0;
}

/* ------------------------------------------------------------------ */
/* Hit counters                                                        */
/* ------------------------------------------------------------------ */

static size_t hash_key(const char *key) {
  /* FNV-1a: short, decent spread, no dependencies. */
  uint32_t h = 2166136261u;

  for (; *key != '\0'; key++) {
    h ^= (unsigned char)*key;
    h *= 16777619u;
  }
  return h % HIT_BUCKETS;
}

/* Returns the new count for key (>= 1), or 0 if memory ran out. */
static unsigned long hits_increment(struct server_state *st, const char *key) {
  struct hit_entry **head = &st->buckets[hash_key(key)];
  struct hit_entry *e;
  unsigned long n = 0;
  size_t len = strlen(key);

  pthread_mutex_lock(&st->lock);
  for (e = *head; e != NULL; e = e->next) {
    if (strcmp(e->key, key) == 0)
      break;
  }
  if (e == NULL) {
    e = malloc(sizeof *e + len + 1);
    if (e != NULL) {
      memcpy(e->key, key, len + 1);
      e->count = 0;
      e->next = *head;
      *head = e;
    }
  }
  if (e != NULL)
    n = ++e->count;
  pthread_mutex_unlock(&st->lock);
  return n;
}

static unsigned long hits_get(struct server_state *st, const char *key) {
  struct hit_entry *e;
  unsigned long n = 0;

  pthread_mutex_lock(&st->lock);
  for (e = st->buckets[hash_key(key)]; e != NULL; e = e->next) {
    if (strcmp(e->key, key) == 0) {
      n = e->count;
      break;
    }
  }
  pthread_mutex_unlock(&st->lock);
  return n;
}

/* Caller must hold st->lock (or be the only thread left). */
static void hits_clear_all_locked(struct server_state *st) {
  size_t i;

  for (i = 0; i < HIT_BUCKETS; i++) {
    struct hit_entry *e = st->buckets[i];

    while (e != NULL) {
      struct hit_entry *next = e->next;

      free(e);
      e = next;
    }
    st->buckets[i] = NULL;
  }
}

static void hits_reset(struct server_state *st, const char *key) {
  pthread_mutex_lock(&st->lock);
  if (key == NULL) {
    hits_clear_all_locked(st);
  } else {
    struct hit_entry **pp = &st->buckets[hash_key(key)];

    while (*pp != NULL) {
      if (strcmp((*pp)->key, key) == 0) {
        struct hit_entry *dead = *pp;

        *pp = dead->next;
        free(dead);
        break;
      }
      pp = &(*pp)->next;
    }
  }
  pthread_mutex_unlock(&st->lock);
}

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* Strict decimal parse: digits only, no sign, no whitespace, <= max. A
 * typo in a test URL should be a 400, not a silently different number. */
static bool parse_ulong(const char *s, unsigned long max, unsigned long *out) {
  unsigned long v = 0;

  if (s == NULL || *s == '\0')
    return false;
  for (; *s != '\0'; s++) {
    unsigned int d;

    if (*s < '0' || *s > '9')
      return false;
    d = (unsigned int)(*s - '0');
    if (v > (max - d) / 10)
      return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

/* If url starts with prefix, return what follows it, else NULL. */
static const char *path_tail(const char *url, const char *prefix) {
  size_t n = strlen(prefix);

  return strncmp(url, prefix, n) == 0 ? url + n : NULL;
}

static const char *query_arg(struct MHD_Connection *conn, const char *name) {
  return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
}

/* Wait up to ms milliseconds, returning early if the server is shutting
 * down. A condition variable on CLOCK_MONOTONIC instead of nanosleep():
 * tests often abandon slow requests (client timeouts) and then stop the
 * server, and MHD_stop_daemon() joins every connection thread. */
static void interruptible_sleep(struct server_state *st, unsigned long ms) {
  struct timespec deadline;

  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += (time_t)(ms / 1000);
  deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&st->lock);
  while (!st->stopping) {
    if (pthread_cond_timedwait(&st->stop_cond, &st->lock, &deadline) ==
        ETIMEDOUT)
      break;
  }
  pthread_mutex_unlock(&st->lock);
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

static enum MHD_Result route_delay(struct server_state *st,
                                   struct MHD_Connection *conn,
                                   const char *arg) {
  unsigned long ms;
  struct strbuf sb = {0};

  if (!parse_ulong(arg, MAX_DELAY_MS, &ms))
    return bad_request(conn, "delay must be 0..600000 ms");
  interruptible_sleep(st, ms);
  sb_printf(&sb, "{\"delayed_ms\":%lu}", ms);
  return reply_json(conn, MHD_HTTP_OK, &sb, NULL, NULL);
}

static enum MHD_Result route_close(struct MHD_Connection *conn,
                                   const struct request_ctx *rq) {
  bool bad;

  if (should_fail(conn, rq, &bad) || bad) {
    /* MHD_NO without queueing a response makes MHD drop the socket, so
     * the client sees an empty reply (curl exit 52). */
    return MHD_NO;
  }
  return ok_hits(conn, rq);
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

  if (key == NULL)
    return bad_request(conn, "missing key");
  sb_puts(&sb, "{\"key\":");
  sb_json_string(&sb, key, strlen(key), false);
  sb_printf(&sb, ",\"hits\":%lu}", hits_get(st, key));
  return reply_json(conn, MHD_HTTP_OK, &sb, NULL, NULL);
}

static enum MHD_Result route_reset(struct server_state *st,
                                   struct MHD_Connection *conn) {
  static const char body[] = "{\"reset\":true}";

  hits_reset(st, query_arg(conn, "key"));
  return reply(conn, MHD_HTTP_OK, "application/json", body, sizeof body - 1,
               NULL, NULL);
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

static enum MHD_Result route_redirect(struct MHD_Connection *conn) {
  const char *to = query_arg(conn, "to");
  struct strbuf sb = {0};
  enum MHD_Result ret;

  if (to == NULL || *to == '\0')
    return bad_request(conn, "missing to");
  sb_printf(&sb, "redirecting to %s\n", to);
  if (sb.failed) {
    sb_free(&sb);
    return MHD_NO;
  }
  ret = reply(conn, MHD_HTTP_FOUND, "text/plain", sb.data, sb.len,
              MHD_HTTP_HEADER_LOCATION, to);
  sb_free(&sb);
  return ret;
}

static enum MHD_Result dispatch(struct server_state *st,
                                struct MHD_Connection *conn,
                                const struct request_ctx *rq, const char *url,
                                const char *method) {
  const char *arg;

  if (strcmp(url, "/") == 0 || strcmp(url, "/hello") == 0)
    return reply_text(conn, MHD_HTTP_OK, "hello\n");
  if ((arg = path_tail(url, "/status/")) != NULL)
    return route_status(conn, arg);
  if (strcmp(url, "/fail") == 0)
    return route_fail(conn, rq);
  if ((arg = path_tail(url, "/delay/")) != NULL)
    return route_delay(st, conn, arg);
  if (strcmp(url, "/close") == 0)
    return route_close(conn, rq);
  if (strcmp(url, "/echo") == 0)
    return route_echo(conn, rq, url, method);
  if ((arg = path_tail(url, "/auth/")) != NULL)
    return route_auth(conn, arg);
  if (strcmp(url, "/hits") == 0)
    return route_hits(st, conn);
  if (strcmp(url, "/reset") == 0)
    return route_reset(st, conn);
  if ((arg = path_tail(url, "/bytes/")) != NULL)
    return route_bytes(conn, arg);
  if (strcmp(url, "/redirect") == 0)
    return route_redirect(conn);
  return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

/* ------------------------------------------------------------------ */
/* MHD callbacks                                                       */
/* ------------------------------------------------------------------ */

/* MHD calls this once when the headers are in, once per chunk of upload
 * data, and once more when the request is complete; the response can
 * only be queued on that last call. */
static enum MHD_Result
handle_request(void *cls, struct MHD_Connection *conn, const char *url,
               const char *method, const char *version, const char *upload_data,
               size_t *upload_data_size, void **con_cls) {
  struct server_state *st = cls;
  struct request_ctx *rq = *con_cls;

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
    if (key != NULL && strcmp(url, "/hits") != 0 &&
        strcmp(url, "/reset") != 0) {
      rq->has_key = true;
      rq->hits = hits_increment(st, key);
      if (rq->hits == 0)
        return MHD_NO;
    }
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
        if (rq->body.failed)
          return MHD_NO;
      }
    }
    *upload_data_size = 0;
    return MHD_YES;
  }

  return dispatch(st, conn, rq, url, method);
}

static void request_completed(void *cls, struct MHD_Connection *conn,
                              void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
  struct request_ctx *rq = *con_cls;

  (void)cls;
  (void)conn;
  (void)toe;
  if (rq == NULL)
    return;
  sb_free(&rq->body);
  free(rq);
  *con_cls = NULL;
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
/* main                                                                */
/* ------------------------------------------------------------------ */

/* Each connection costs a descriptor; lift the soft limit to the hard one
 * so 1,000+ concurrent clients work without the caller running ulimit. */
static void raise_fd_limit(void) {
  struct rlimit rl;

  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static int state_init(struct server_state *st) {
  pthread_condattr_t attr;

  memset(st, 0, sizeof *st);
  if (pthread_mutex_init(&st->lock, NULL) != 0)
    return -1;
  /* Monotonic so /delay is immune to wall-clock jumps. */
  if (pthread_condattr_init(&attr) != 0) {
    pthread_mutex_destroy(&st->lock);
    return -1;
  }
  if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
      pthread_cond_init(&st->stop_cond, &attr) != 0) {
    pthread_condattr_destroy(&attr);
    pthread_mutex_destroy(&st->lock);
    return -1;
  }
  pthread_condattr_destroy(&attr);
  return 0;
}

static void state_destroy(struct server_state *st) {
  hits_clear_all_locked(st);
  pthread_cond_destroy(&st->stop_cond);
  pthread_mutex_destroy(&st->lock);
}

int main(int argc, char **argv) {
  struct server_state state;
  struct sockaddr_in addr;
  struct MHD_Daemon *daemon;
  const union MHD_DaemonInfo *info;
  sigset_t stop_signals;
  struct sigaction sa;
  unsigned long port = 0;
  int sig = 0;

  if (argc > 2 || (argc == 2 && !parse_ulong(argv[1], 65535, &port))) {
    fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
    return 2;
  }

  raise_fd_limit();

  /* A client hanging up mid-response must not kill the server. */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGPIPE, &sa, NULL);

  /* Block the stop signals before MHD creates threads so every thread
   * inherits the mask; main then picks them up synchronously with
   * sigwait(), which needs no async-signal-safe handler or global flag. */
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (pthread_sigmask(SIG_BLOCK, &stop_signals, NULL) != 0) {
    fprintf(stderr, "pthread_sigmask failed\n");
    return 1;
  }

  if (state_init(&state) != 0) {
    fprintf(stderr, "failed to initialise server state\n");
    return 1;
  }

  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  /* Thread per connection lets /delay simply block; poll() instead of
   * select() lifts the FD_SETSIZE (1024) ceiling on descriptors. */
  /* Option/argument pairs one per line; clang-format would reflow them. */
  /* clang-format off */
  daemon = MHD_start_daemon(
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
          MHD_USE_POLL | MHD_USE_ERROR_LOG,
      (uint16_t)port, NULL, NULL, &handle_request, &state,
      /* First, so start-up messages go through it too. */
      MHD_OPTION_EXTERNAL_LOGGER, &log_filter, (void *)NULL,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
      MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
      MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT_S,
      MHD_OPTION_THREAD_STACK_SIZE, THREAD_STACK_SIZE,
      MHD_OPTION_LISTEN_BACKLOG_SIZE, LISTEN_BACKLOG,
      MHD_OPTION_NOTIFY_COMPLETED, &request_completed, (void *)NULL,
      MHD_OPTION_END);
  /* clang-format on */
  if (daemon == NULL) {
    fprintf(stderr, "failed to start HTTP daemon on 127.0.0.1:%lu\n", port);
    state_destroy(&state);
    return 1;
  }

  info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
  if (info == NULL || info->port == 0) {
    fprintf(stderr, "could not determine the bound port\n");
    MHD_stop_daemon(daemon);
    state_destroy(&state);
    return 1;
  }
  /* The test harness reads this line to learn where to connect. */
  printf("%u\n", (unsigned int)info->port);
  fflush(stdout);

  while (sigwait(&stop_signals, &sig) != 0)
    ;

  /* Wake /delay sleepers first so stopping does not wait out delays. */
  pthread_mutex_lock(&state.lock);
  state.stopping = true;
  pthread_cond_broadcast(&state.stop_cond);
  pthread_mutex_unlock(&state.lock);

  MHD_stop_daemon(daemon);
  state_destroy(&state);
  return 0;
}
