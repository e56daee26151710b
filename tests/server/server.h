/*
 * Shared declarations of lretry-test-server. The server is split by
 * concern: text.c (buffers, parsing), state.c (shared state, shutdown),
 * counters.c (per-key counters), http.c (the MHD ports), fault.c (the
 * misbehaving raw TCP port), blackhole.c (the never-accepting port) and
 * server.c (command line, start and stop). The route table is in server.c.
 */
#ifndef LRETRY_TEST_SERVER_H
#define LRETRY_TEST_SERVER_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Hit counters are keyed by arbitrary strings; a fixed bucket count keeps
 * the table trivial while chains absorb any number of keys. */
#define HIT_BUCKETS 256

/* Thread-per-connection needs many threads; a small stack keeps 1,000+
 * concurrent connections cheap (the fault port uses it too). */
#define THREAD_STACK_SIZE ((size_t)256 * 1024)

struct hit_entry;

/* Everything shared between connection threads of every port. One mutex
 * covers the counters, connection ids, statistics and the shutdown flag:
 * contention is irrelevant for a test server and a single lock cannot
 * deadlock. */
struct server_state {
  pthread_mutex_t lock;
  /* An eventfd made readable at shutdown so sleepers (/delay) wake up
   * early instead of holding the daemon's shutdown hostage for the rest
   * of their delay. A descriptor rather than a condition variable because
   * /delay also polls its client's socket while it sleeps. */
  int stop_fd;
  bool stopping;
  /* Ids for accepted connections of every port, so a key's connection set
   * never mixes up a fault-port connection with an MHD one. */
  uint64_t next_conn_id;
  struct hit_entry *buckets[HIT_BUCKETS];
};

/* A snapshot of one key's counters, as /hits reports them. */
struct key_stats {
  unsigned long hits;
  unsigned long peak;
  unsigned long connections;
  unsigned long aborted;
};

/* Growable byte buffer used for request and response bodies. A sticky
 * failure flag lets callers append freely and check once. */
struct strbuf {
  char *data;
  size_t len;
  size_t cap;
  bool failed;
};

/* text.c */
void sb_append(struct strbuf *sb, const char *s, size_t n);
void sb_puts(struct strbuf *sb, const char *s);
void sb_printf(struct strbuf *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sb_json_string(struct strbuf *sb, const char *s, size_t n, bool lower);
void sb_url_encode(struct strbuf *sb, const char *s, size_t n);
void sb_free(struct strbuf *sb);
bool parse_ulong(const char *s, unsigned long max, unsigned long *out);
size_t url_decode(char *s);

/* state.c */
int state_init(struct server_state *st);
void state_destroy(struct server_state *st);
void state_stop(struct server_state *st);
bool state_stopping(struct server_state *st);
uint64_t state_next_conn_id(struct server_state *st);
void interruptible_sleep(struct server_state *st, unsigned long ms);
bool sleep_watching_peer(struct server_state *st, int peer_fd,
                         unsigned long ms);

/* counters.c. A request with ?key=K calls counters_begin() when it starts
 * and counters_end() with the returned entry once it is over; in between
 * it counts as in flight. counters_abort(), at most once per request and
 * before counters_end(), records that its client went away before the
 * reply was sent. */
struct hit_entry *counters_begin(struct server_state *st, const char *key,
                                 uint64_t conn_id, unsigned long *hits);
void counters_abort(struct server_state *st, struct hit_entry *e);
void counters_end(struct server_state *st, struct hit_entry *e);
struct key_stats counters_get(struct server_state *st, const char *key);
void counters_reset(struct server_state *st, const char *key);
void counters_clear_all_locked(struct server_state *st);

/* http.c: one MHD daemon (plain or TLS) serving the HTTP routes. */
struct http_port;
struct http_port *http_start(struct server_state *st, unsigned long port,
                             const char *tls_cert, const char *tls_key);
unsigned int http_port_number(const struct http_port *hp);
void http_stop(struct http_port *hp);

/* fault.c: the raw TCP port that misbehaves on purpose. */
struct fault_port;
struct fault_port *fault_start(struct server_state *st);
unsigned int fault_port_number(const struct fault_port *fp);
void fault_stop(struct fault_port *fp);

/* blackhole.c: a port whose accept queue is full, so connects hang. */
struct blackhole;
/* listen.c: a listening socket on 127.0.0.1, port picked by the kernel
 * (written to addr); -1 after saying why on stderr. */
int listen_loopback(int backlog, struct sockaddr_in *addr, const char *who);

struct blackhole *blackhole_start(void);
unsigned int blackhole_port_number(const struct blackhole *bh);
void blackhole_stop(struct blackhole *bh);

#endif
