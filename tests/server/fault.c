/*
 * The fault port: a raw TCP listener, one thread per connection, that
 * speaks just enough HTTP/1.1 to misbehave on purpose (resets, truncated
 * or malformed replies, huge headers and bodies). MHD cannot do these: it
 * always answers well-formed HTTP and never resets a connection.
 *
 * Requests are counted in the shared per-key table like on the MHD ports:
 * a request is in flight from the moment its head is read until its reply
 * (or close, or reset) is done.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"

/* A request head bigger than this is refused (connection closed). */
#define HEAD_MAX ((size_t)64 * 1024)
/* Generated bodies go out in pieces of this size: the chunk size of
 * /chunked, and the buffer that /bytes and /big-header repeat. */
#define CHUNK ((size_t)16 * 1024)
#define MAX_GEN_BODY ((unsigned long)256 * 1024 * 1024)
#define MAX_BIG_HEADER ((unsigned long)4 * 1024 * 1024)
/* Query parameters beyond this many are ignored; routes use two at most. */
#define MAX_ARGS 32
#define LISTEN_BACKLOG 4096

/* What happens to the connection once a request has been dealt with. */
enum outcome {
  KEEP,  /* read the next request on it */
  CLOSE, /* plain close(): FIN */
  RESET  /* SO_LINGER {1, 0} then close(): RST, no FIN */
};

struct fault_port {
  struct server_state *st;
  int listen_fd;
  unsigned int port;
  pthread_t acceptor;
  /* Live connections, guarded by st->lock. The acceptor links them in and
   * reaps (joins and frees) those whose thread is done; fault_stop()
   * takes over the rest. */
  struct fault_conn *conns;
};

struct fault_conn {
  struct fault_conn *next;
  struct fault_port *fp;
  pthread_t thread;
  /* Guarded by st->lock: fault_stop() shutdown()s fd from another thread,
   * so it is closed and set to -1 under the lock and never reused. */
  int fd;
  bool done;
  uint64_t id;
  unsigned long requests; /* requests read on this connection so far */
  size_t len;             /* bytes in buf */
  char buf[HEAD_MAX];     /* the current head, then what follows it */
};

struct arg {
  const char *key;
  const char *val;
};

/* A parsed request head. Every string points into the connection's buf,
 * NUL-terminated in place. */
struct request {
  const char *method;
  const char *path;
  struct arg args[MAX_ARGS];
  size_t nargs;
  unsigned long content_length;
  bool expect_continue;
  bool want_close; /* HTTP/1.0 or Connection: close */
  bool chunked_body;
  bool head_only; /* HEAD: replies carry no body */
  size_t head_len;
  size_t body_in_buf; /* body bytes that arrived along with the head */
};

/* ------------------------------------------------------------------ */
/* Socket I/O                                                          */
/* ------------------------------------------------------------------ */

/* MSG_NOSIGNAL: a client that hung up gives EPIPE, not a SIGPIPE. */
static bool send_all(int fd, const char *p, size_t n, int flags) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, flags | MSG_NOSIGNAL);

    if (w < 0) {
      if (errno == EINTR)
        continue;
      return false;
    }
    p += w;
    n -= (size_t)w;
  }
  return true;
}

static bool send_str(int fd, const char *s) {
  return send_all(fd, s, strlen(s), 0);
}

/* Send n copies of byte c without holding n bytes in memory. */
static bool send_fill(int fd, char c, unsigned long n) {
  char fill[CHUNK];

  memset(fill, c, sizeof fill);
  while (n > 0) {
    size_t k = n < sizeof fill ? (size_t)n : sizeof fill;

    if (!send_all(fd, fill, k, 0))
      return false;
    n -= k;
  }
  return true;
}

/* Read until the buffer holds a complete head (up to CRLFCRLF). Returns
 * false when the peer closed, an error occurred or the head is too big;
 * any of them ends the connection. */
static bool read_head(struct fault_conn *c, size_t *head_len) {
  size_t searched = 0;

  for (;;) {
    char *end = memmem(c->buf + searched, c->len - searched, "\r\n\r\n", 4);
    ssize_t r;

    if (end != NULL) {
      *head_len = (size_t)(end - c->buf) + 4;
      return true;
    }
    /* The terminator may straddle the next read. */
    searched = c->len > 3 ? c->len - 3 : 0;
    if (c->len == sizeof c->buf)
      return false;
    r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return false;
    c->len += (size_t)r;
  }
}

/* Read and drop the request body. The part that came with the head is
 * skipped in the buffer; the rest goes through a scratch buffer so the
 * head's strings stay intact for the route. */
static bool drain_body(struct fault_conn *c, struct request *rq) {
  unsigned long left = rq->content_length;
  size_t avail = c->len - rq->head_len;
  char sink[CHUNK];

  if (rq->expect_continue && left > 0 &&
      !send_str(c->fd, "HTTP/1.1 100 Continue\r\n\r\n"))
    return false;
  rq->body_in_buf = left < avail ? (size_t)left : avail;
  left -= rq->body_in_buf;
  while (left > 0) {
    size_t want = left < sizeof sink ? (size_t)left : sizeof sink;
    ssize_t r = recv(c->fd, sink, want, 0);

    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return false;
    left -= (unsigned long)r;
  }
  return true;
}

/* Drop the request just served from the buffer, keeping whatever the
 * client already sent after it (a pipelined next request). */
static void consume_request(struct fault_conn *c, const struct request *rq) {
  size_t used = rq->head_len + rq->body_in_buf;

  memmove(c->buf, c->buf + used, c->len - used);
  c->len -= used;
}

/* Close the socket, with a RST when reset is true: SO_LINGER with a zero
 * timeout makes close() abort the connection instead of the orderly FIN.
 * Under the lock because fault_stop() may shutdown() this fd. */
static void conn_close(struct fault_conn *c, bool reset) {
  struct server_state *st = c->fp->st;

  pthread_mutex_lock(&st->lock);
  if (c->fd >= 0) {
    if (reset) {
      struct linger lg = {1, 0};

      setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->fd);
    c->fd = -1;
  }
  pthread_mutex_unlock(&st->lock);
}

/* ------------------------------------------------------------------ */
/* Request parsing                                                     */
/* ------------------------------------------------------------------ */

static char *trim(char *s) {
  char *end;

  while (*s == ' ' || *s == '\t')
    s++;
  end = s + strlen(s);
  while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
    *--end = '\0';
  return s;
}

static void parse_query(struct request *rq, char *q) {
  while (q != NULL && *q != '\0' && rq->nargs < MAX_ARGS) {
    char *next = strchr(q, '&');
    char *eq;

    if (next != NULL)
      *next++ = '\0';
    if (*q != '\0') {
      eq = strchr(q, '=');
      if (eq != NULL)
        *eq++ = '\0';
      url_decode(q);
      if (eq != NULL)
        url_decode(eq);
      rq->args[rq->nargs].key = q;
      /* "?flag" reads as an empty value, as on the MHD port. */
      rq->args[rq->nargs].val = eq != NULL ? eq : "";
      rq->nargs++;
    }
    q = next;
  }
}

static bool parse_header(struct request *rq, char *line) {
  char *colon = strchr(line, ':');
  char *value;

  if (colon == NULL)
    return false;
  *colon = '\0';
  value = trim(colon + 1);
  if (strcasecmp(line, "Content-Length") == 0)
    return parse_ulong(value, ULONG_MAX, &rq->content_length);
  if (strcasecmp(line, "Transfer-Encoding") == 0)
    rq->chunked_body = true;
  else if (strcasecmp(line, "Expect") == 0)
    rq->expect_continue = strcasecmp(value, "100-continue") == 0;
  else if (strcasecmp(line, "Connection") == 0 &&
           strcasecmp(value, "close") == 0)
    rq->want_close = true;
  return true;
}

/* Cut the NUL-terminated text at s into lines at each CRLF; returns the
 * line after s's first, or NULL when s was the last. */
static char *next_line(char *s) {
  char *crlf = strstr(s, "\r\n");

  if (crlf == NULL)
    return NULL;
  crlf[0] = crlf[1] = '\0';
  return crlf + 2;
}

/* Parse buf[0, head_len) in place. Returns false on a malformed head. */
static bool parse_request(char *buf, size_t head_len, struct request *rq) {
  char *line;
  char *target;
  char *version;
  char *query;

  memset(rq, 0, sizeof *rq);
  rq->head_len = head_len;
  /* The head ends in CRLFCRLF: end the text at the last CRLF, so every
   * line, the last one included, is CRLF-terminated but one. */
  buf[head_len - 2] = '\0';
  line = next_line(buf);
  /* Request line: METHOD SP TARGET SP HTTP/1.x */
  target = strchr(buf, ' ');
  if (target == NULL)
    return false;
  *target++ = '\0';
  version = strchr(target, ' ');
  if (version == NULL || strncmp(version + 1, "HTTP/1.", 7) != 0)
    return false;
  *version++ = '\0';
  rq->method = buf;
  rq->want_close = strcmp(version, "HTTP/1.0") == 0;
  rq->head_only = strcmp(buf, "HEAD") == 0;
  while (line != NULL) {
    char *next = next_line(line);

    if (*line != '\0' && !parse_header(rq, line))
      return false;
    line = next;
  }
  query = strchr(target, '?');
  if (query != NULL)
    *query++ = '\0';
  rq->path = target;
  parse_query(rq, query);
  return true;
}

static const char *arg(const struct request *rq, const char *name) {
  size_t i;

  for (i = 0; i < rq->nargs; i++) {
    if (strcmp(rq->args[i].key, name) == 0)
      return rq->args[i].val;
  }
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Replies                                                             */
/* ------------------------------------------------------------------ */

/* A well-formed reply with Content-Length, so the connection can be
 * reused. extra is more header lines, each ending in CRLF. */
static enum outcome reply(struct fault_conn *c, const struct request *rq,
                          const char *status, const char *extra,
                          const char *body) {
  char head[512];
  size_t len = strlen(body);
  int n;

  n = snprintf(head, sizeof head,
               "HTTP/1.1 %s\r\nContent-Type: text/plain\r\n"
               "Content-Length: %zu\r\n%s%s\r\n",
               status, len, extra,
               rq->want_close ? "Connection: close\r\n" : "");
  if (n < 0 || (size_t)n >= sizeof head)
    return CLOSE;
  if (!send_all(c->fd, head, (size_t)n, rq->head_only ? 0 : MSG_MORE))
    return CLOSE;
  if (!rq->head_only && !send_all(c->fd, body, len, 0))
    return CLOSE;
  return rq->want_close ? CLOSE : KEEP;
}

static enum outcome reply_ok(struct fault_conn *c, const struct request *rq) {
  return reply(c, rq, "200 OK", "", "ok\n");
}

static enum outcome bad_request(struct fault_conn *c, const struct request *rq,
                                const char *why) {
  char body[128];

  snprintf(body, sizeof body, "bad request: %s\n", why);
  return reply(c, rq, "400 Bad Request", "", body);
}

/* Raw bytes, then close: for replies no client should reuse. */
static enum outcome send_raw(struct fault_conn *c, const char *raw) {
  send_str(c->fd, raw);
  return CLOSE;
}

static bool size_arg(const struct request *rq, unsigned long max,
                     unsigned long *n) {
  return parse_ulong(arg(rq, "size"), max, n);
}

static enum outcome route_reset_second(struct fault_conn *c,
                                       const struct request *rq) {
  const char *a = arg(rq, "answer");
  unsigned long answer = 1;

  if (a != NULL && !parse_ulong(a, ULONG_MAX, &answer))
    return bad_request(c, rq, "answer must be a non-negative integer");
  return c->requests <= answer ? reply_ok(c, rq) : RESET;
}

static enum outcome route_reply_then_reset(struct fault_conn *c,
                                           const struct request *rq) {
  /* The whole reply first, so the client gets a complete response and
   * only finds the connection dead when it tries to reuse it. */
  reply_ok(c, rq);
  return RESET;
}

static enum outcome route_bad_gzip(struct fault_conn *c,
                                   const struct request *rq) {
  return reply(c, rq, "200 OK", "Content-Encoding: gzip\r\n",
               "this is not gzip\n");
}

static enum outcome route_big_header(struct fault_conn *c,
                                     const struct request *rq) {
  unsigned long n;
  char tail[128];
  int len;

  if (!size_arg(rq, MAX_BIG_HEADER, &n))
    return bad_request(c, rq, "size must be 0..4194304");
  len = snprintf(tail, sizeof tail,
                 "\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n%s\r\n",
                 rq->want_close ? "Connection: close\r\n" : "");
  if (!send_str(c->fd, "HTTP/1.1 200 OK\r\nX-Big: ") ||
      !send_fill(c->fd, 'a', n) || !send_all(c->fd, tail, (size_t)len, 0) ||
      (!rq->head_only && !send_str(c->fd, "ok\n")))
    return CLOSE;
  return rq->want_close ? CLOSE : KEEP;
}

/* /chunked and /bytes: size bytes of 'x', generated on the fly. */
static enum outcome route_generated(struct fault_conn *c,
                                    const struct request *rq, bool chunked) {
  unsigned long n;
  char head[256];
  int len;

  if (!size_arg(rq, MAX_GEN_BODY, &n))
    return bad_request(c, rq, "size must be 0..268435456");
  if (chunked)
    len = snprintf(head, sizeof head,
                   "HTTP/1.1 200 OK\r\n"
                   "Content-Type: application/octet-stream\r\n"
                   "Transfer-Encoding: chunked\r\n%s\r\n",
                   rq->want_close ? "Connection: close\r\n" : "");
  else
    len = snprintf(head, sizeof head,
                   "HTTP/1.1 200 OK\r\n"
                   "Content-Type: application/octet-stream\r\n"
                   "Content-Length: %lu\r\n%s\r\n",
                   n, rq->want_close ? "Connection: close\r\n" : "");
  if (!send_all(c->fd, head, (size_t)len, 0))
    return CLOSE;
  if (rq->head_only)
    return rq->want_close ? CLOSE : KEEP;
  if (!chunked) {
    if (!send_fill(c->fd, 'x', n))
      return CLOSE;
  } else {
    while (n > 0) {
      unsigned long k = n < CHUNK ? n : (unsigned long)CHUNK;
      char size_line[32];
      int sl = snprintf(size_line, sizeof size_line, "%lx\r\n", k);

      if (!send_all(c->fd, size_line, (size_t)sl, MSG_MORE) ||
          !send_fill(c->fd, 'x', k) || !send_all(c->fd, "\r\n", 2, 0))
        return CLOSE;
      n -= k;
    }
    if (!send_str(c->fd, "0\r\n\r\n"))
      return CLOSE;
  }
  return rq->want_close ? CLOSE : KEEP;
}

static enum outcome dispatch(struct fault_conn *c, const struct request *rq) {
  const char *p = rq->path;

  if (strcmp(p, "/ok") == 0)
    return reply_ok(c, rq);
  if (strcmp(p, "/reset-second") == 0)
    return route_reset_second(c, rq);
  if (strcmp(p, "/reply-then-reset") == 0)
    return route_reply_then_reset(c, rq);
  if (strcmp(p, "/close") == 0)
    return CLOSE;
  if (strcmp(p, "/not-http") == 0)
    return send_raw(c, "this is not HTTP\r\n\r\n");
  if (strcmp(p, "/bad-version") == 0)
    return send_raw(c, "HTTP/9.9 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
  if (strcmp(p, "/no-colon") == 0)
    return send_raw(c, "HTTP/1.1 200 OK\r\nBogus header line\r\n"
                       "Content-Length: 3\r\n\r\nok\n");
  if (strcmp(p, "/partial") == 0)
    return send_raw(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
                       "0123456789");
  if (strcmp(p, "/bad-gzip") == 0)
    return route_bad_gzip(c, rq);
  if (strcmp(p, "/big-header") == 0)
    return route_big_header(c, rq);
  if (strcmp(p, "/chunked") == 0)
    return route_generated(c, rq, true);
  if (strcmp(p, "/bytes") == 0)
    return route_generated(c, rq, false);
  return reply(c, rq, "404 Not Found", "", "not found\n");
}

/* Serve one request whose head is in the buffer. */
static enum outcome serve(struct fault_conn *c, struct request *rq) {
  /* Before the body: the client is still sending it (or waiting for 100
   * Continue) when the RST arrives. */
  if (strcmp(rq->path, "/reset-upload") == 0)
    return RESET;
  /* A chunked request body would need a decoder to find where the next
   * request starts; no test sends one. */
  if (rq->chunked_body) {
    rq->want_close = true;
    return reply(c, rq, "501 Not Implemented", "",
                 "chunked request bodies are not supported\n");
  }
  if (!drain_body(c, rq))
    return CLOSE;
  return dispatch(c, rq);
}

/* ------------------------------------------------------------------ */
/* Connection and acceptor threads                                     */
/* ------------------------------------------------------------------ */

static void *conn_main(void *arg_) {
  struct fault_conn *c = arg_;
  struct server_state *st = c->fp->st;
  enum outcome out = KEEP;

  while (out == KEEP && !state_stopping(st)) {
    struct request rq;
    struct hit_entry *entry = NULL;
    const char *key;
    unsigned long hits;
    size_t head_len;

    if (!read_head(c, &head_len))
      break;
    if (!parse_request(c->buf, head_len, &rq)) {
      struct request plain = {.want_close = true};

      reply(c, &plain, "400 Bad Request", "", "malformed request\n");
      break;
    }
    c->requests++;
    key = arg(&rq, "key");
    if (key != NULL)
      entry = counters_begin(st, key, c->id, &hits);
    out = serve(c, &rq);
    /* The reply (or close, or reset) is done only after the socket is. */
    if (out != KEEP)
      conn_close(c, out == RESET);
    else
      consume_request(c, &rq);
    counters_end(st, entry);
  }
  conn_close(c, false);
  pthread_mutex_lock(&st->lock);
  c->done = true;
  pthread_mutex_unlock(&st->lock);
  return NULL;
}

/* Join and free the connections whose thread has finished. With stop_all
 * it takes every connection, finished or not (only at shutdown, after
 * their sockets were shut down so their threads finish). */
static void reap(struct fault_port *fp, bool stop_all) {
  struct fault_conn *dead = NULL;
  struct fault_conn **pp;

  pthread_mutex_lock(&fp->st->lock);
  pp = &fp->conns;
  while (*pp != NULL) {
    struct fault_conn *c = *pp;

    if (c->done || stop_all) {
      *pp = c->next;
      c->next = dead;
      dead = c;
    } else {
      pp = &c->next;
    }
  }
  pthread_mutex_unlock(&fp->st->lock);
  while (dead != NULL) {
    struct fault_conn *next = dead->next;

    pthread_join(dead->thread, NULL);
    free(dead);
    dead = next;
  }
}

static void start_conn(struct fault_port *fp, int fd,
                       const pthread_attr_t *attr) {
  struct server_state *st = fp->st;
  struct fault_conn *c = calloc(1, sizeof *c);

  if (c == NULL) {
    close(fd);
    return;
  }
  c->fp = fp;
  c->fd = fd;
  c->id = state_next_conn_id(st);
  /* Linked before the thread starts so the thread may finish (and mark
   * itself done) at any time; only the acceptor unlinks until stop. */
  pthread_mutex_lock(&st->lock);
  c->next = fp->conns;
  fp->conns = c;
  pthread_mutex_unlock(&st->lock);
  if (pthread_create(&c->thread, attr, conn_main, c) != 0) {
    pthread_mutex_lock(&st->lock);
    fp->conns = c->next; /* still first: no one else links */
    pthread_mutex_unlock(&st->lock);
    close(fd);
    free(c);
  }
}

static void *acceptor_main(void *arg_) {
  struct fault_port *fp = arg_;
  pthread_attr_t attr;

  if (pthread_attr_init(&attr) != 0)
    return NULL;
  pthread_attr_setstacksize(&attr, THREAD_STACK_SIZE);
  for (;;) {
    int fd = accept4(fp->listen_fd, NULL, NULL, SOCK_CLOEXEC);

    if (fd < 0) {
      /* fault_stop() shuts the listening socket down, which fails a
       * blocked accept() with EINVAL on Linux. */
      if (state_stopping(fp->st))
        break;
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
          errno == ENOMEM) {
        /* Out of descriptors or memory: wait for connections to end. */
        interruptible_sleep(fp->st, 10);
        continue;
      }
      perror("fault port: accept");
      break;
    }
    reap(fp, false);
    start_conn(fp, fd, &attr);
  }
  pthread_attr_destroy(&attr);
  return NULL;
}

struct fault_port *fault_start(struct server_state *st) {
  struct fault_port *fp = calloc(1, sizeof *fp);
  struct sockaddr_in addr;

  if (fp == NULL)
    return NULL;
  fp->st = st;
  fp->listen_fd = listen_loopback(LISTEN_BACKLOG, &addr, "fault port");
  if (fp->listen_fd < 0) {
    free(fp);
    return NULL;
  }
  fp->port = ntohs(addr.sin_port);
  if (pthread_create(&fp->acceptor, NULL, acceptor_main, fp) != 0) {
    fprintf(stderr, "fault port: cannot start the acceptor thread\n");
    goto fail;
  }
  return fp;

fail:
  close(fp->listen_fd);
  free(fp);
  return NULL;
}

unsigned int fault_port_number(const struct fault_port *fp) {
  return fp->port;
}

/* Call after state_stop(). Stops accepting, then wakes every connection
 * thread blocked in recv() or send() by shutting its socket down, and
 * joins them all. */
void fault_stop(struct fault_port *fp) {
  struct fault_conn *c;

  if (fp == NULL)
    return;
  shutdown(fp->listen_fd, SHUT_RDWR);
  pthread_join(fp->acceptor, NULL);
  close(fp->listen_fd);
  pthread_mutex_lock(&fp->st->lock);
  for (c = fp->conns; c != NULL; c = c->next) {
    if (c->fd >= 0)
      shutdown(c->fd, SHUT_RDWR);
  }
  pthread_mutex_unlock(&fp->st->lock);
  reap(fp, true);
  free(fp);
}
