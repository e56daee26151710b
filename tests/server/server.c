/*
 * lretry-test-server: a small HTTP/1.1 server the lretry test suite runs
 * against. It exposes deterministic failure modes (status codes, failing
 * N times then succeeding, delays, dropped connections, resets, broken
 * replies, connect timeouts, TLS) so retry behaviour can be tested without
 * touching the network.
 *
 * Usage: lretry-test-server [PORT] [--tls-cert FILE --tls-key FILE]
 *
 * Everything listens on 127.0.0.1 only. Once ready it prints the HTTP port
 * alone on the first line (older readers take just that), then
 * "fault PORT", "blackhole PORT" and, with a certificate, "tls PORT", one
 * per line, and runs until SIGINT or SIGTERM.
 *
 * Counters. Any request with ?key=K (except /hits and /reset) on the HTTP,
 * TLS or fault port bumps counter K before its route runs; "n" below is
 * that new count (1 when there is no key). Per key the server also keeps
 * the peak number of such requests in flight at once (MHD ports: from the
 * first access-handler call to the request-completed callback; fault port:
 * from the head being read until the reply, close or reset is done),
 * the number of distinct TCP connections that carried the key, and (MHD
 * ports only) how many of its requests were aborted: the client closed or
 * reset the connection before the reply was sent. /delay watches its
 * client while it sleeps and counts that at once; any other request counts
 * when MHD reports it cut short by the client (not by the server's own
 * drop, as in /close, nor by shutdown or the idle timeout). Each request
 * counts at most once.
 *
 * HTTP port (libmicrohttpd) and TLS port (the same routes over HTTPS):
 *   /, /hello          200 text "hello\n"
 *   /status/N          N (200..599), text "status N\n"; ?retry_after=X
 *   /fail              ?key&n=1&status=503&retry_after&bad_json=1:
 *                      n <= N -> S {"ok":false,"hits":n}, else 200 ok:true
 *   /delay/MS          wait MS (<= 600000) ms, 200 {"delayed_ms":MS};
 *                      if the client hangs up meanwhile, stop waiting and
 *                      close at once (counted as aborted); with
 *                      ?key&first=1 only the key's first hit waits
 *   /close             ?key&n=1: drop the connection without a reply while
 *                      n <= N (curl exit 52), else 200 {"ok":true,"hits":n},
 *                      after MS ms with &delay=MS (like /delay)
 *   /flaky             ?drop=P&fail=Q (percent, default 0): each request
 *                      at random, independently: dropped without a reply
 *                      (curl 52) with probability P, else 503 with
 *                      probability Q, else 200 "flaky ok\n"
 *   /echo              200 JSON of method, path, query, headers, body, hits
 *   /auth/USER/PASS    200 if Basic auth matches, else 401 + challenge
 *   /hits?key=K        200 {"key":"K","hits":N,"peak":P,"connections":C,
 *                      "aborted":A} (not counted; all 0 for an unknown K)
 *   /reset[?key=K]     clear all counters or one, 200 {"reset":true}
 *   /stats             200 {"connections":A,"open":O}: connections this
 *                      daemon accepted since start, and open now
 *   /bytes/N           200, N (<= 64 MiB) 'x' bytes, octet-stream
 *   /redirect?to=PATH  302 (or ?code=301|302|303|307|308) Location: PATH
 *   /loop/N            302 to /loop/N+1 with the same query, forever
 *                      (curl -L: exit 47 after 50 redirects)
 *   anything else      404 "not found\n"; malformed parameters give 400
 *
 * Fault port (raw TCP, thread per connection, keep-alive unless noted; a
 * request body needs Content-Length and is read and dropped, after a 100
 * Continue if the client expects one). "curl N" is curl 7.88's exit code:
 *   /ok                200 "ok\n"
 *   /reset-second      ?answer=N (1): requests 1..N on this connection
 *                      (of any route) get /ok; the next one is read, then
 *                      answered with an RST (curl 56 "Recv failure:
 *                      Connection reset by peer" on a fresh connection,
 *                      e.g. answer=0; on a reused one curl silently
 *                      retries on a new connection and succeeds)
 *   /reply-then-reset  a complete 200 "ok\n", then an RST without a FIN
 *                      (curl 0; reusing the connection, curl sees it died
 *                      and reconnects)
 *   /close             read the request, close without a reply (curl 52)
 *   /not-http          "this is not HTTP\r\n\r\n", close (curl 1,
 *                      "Received HTTP/0.9 when not allowed")
 *   /bad-version       "HTTP/9.9 200 OK" reply, close (curl 1)
 *   /no-colon          200 with a header line without a colon, close
 *                      (curl 8, CURLE_WEIRD_SERVER_REPLY)
 *   /partial           Content-Length: 100, 10 bytes, close (curl 18)
 *   /bad-gzip          200 Content-Encoding: gzip, body not gzip
 *                      (curl --compressed 61; without it curl 0)
 *   /big-header?size=N 200 with "X-Big: " + N (<= 4 MiB) 'a', body "ok\n"
 *                      (curl 27 "Out of memory" above 100 KB)
 *   /chunked?size=N    200 chunked, N (<= 256 MiB) 'x' in 16 KiB chunks
 *   /bytes?size=N      200 Content-Length N, N (<= 256 MiB) 'x'
 *   /reset-upload      read the head only, then an RST. With a body over
 *                      1 MiB curl sends "Expect: 100-continue", waits for
 *                      the 100 and gets the RST instead: curl 56. Without
 *                      Expect (-H Expect:) it races: 55 "Send failure" or
 *                      56, depending on whether curl is writing or polling
 *                      when the RST arrives
 *   anything else      404 "not found\n"; bad parameters give 400
 * A request head over 64 KiB closes the connection (an RST, as unread data
 * is left), a malformed one gets 400 and a close, and a chunked request
 * body 501 and a close.
 *
 * Black-hole port: a listening socket whose accept queue is full and never
 * drained. Connects hang in SYN_SENT (curl --connect-timeout: exit 28).
 */

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "server.h"

struct options {
  unsigned long port;
  const char *tls_cert;
  const char *tls_key;
};

/* Each connection costs a descriptor; lift the soft limit to the hard one
 * so 1,000+ concurrent clients work without the caller running ulimit. */
static void raise_fd_limit(void) {
  struct rlimit rl;

  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static bool parse_args(int argc, char **argv, struct options *o) {
  bool have_port = false;
  int i;

  memset(o, 0, sizeof *o);
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--tls-cert") == 0 && i + 1 < argc) {
      o->tls_cert = argv[++i];
    } else if (strcmp(argv[i], "--tls-key") == 0 && i + 1 < argc) {
      o->tls_key = argv[++i];
    } else if (!have_port && parse_ulong(argv[i], 65535, &o->port)) {
      have_port = true;
    } else {
      return false;
    }
  }
  /* Both or neither: a certificate without its key is a caller's bug. */
  return (o->tls_cert == NULL) == (o->tls_key == NULL);
}

/* Ports as started; NULL members were not started (or not asked for). */
struct ports {
  struct http_port *http;
  struct http_port *tls;
  struct fault_port *fault;
  struct blackhole *blackhole;
};

/* Reverse order of starting. state_stop() first so /delay sleepers and
 * fault-port loops let go and the joins below do not wait on them. */
static void stop_all(struct server_state *st, struct ports *p) {
  state_stop(st);
  fault_stop(p->fault);
  http_stop(p->tls);
  http_stop(p->http);
  blackhole_stop(p->blackhole);
}

int main(int argc, char **argv) {
  struct server_state state;
  struct options opt;
  struct ports p = {NULL, NULL, NULL, NULL};
  sigset_t stop_signals;
  struct sigaction sa;
  int sig = 0;

  if (!parse_args(argc, argv, &opt)) {
    fprintf(stderr, "usage: %s [PORT] [--tls-cert FILE --tls-key FILE]\n",
            argv[0]);
    return 2;
  }

  raise_fd_limit();

  /* A client hanging up mid-response must not kill the server. */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGPIPE, &sa, NULL);

  /* Block the stop signals before any thread starts so every thread
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

  p.http = http_start(&state, opt.port, NULL, NULL);
  if (p.http != NULL)
    p.fault = fault_start(&state);
  if (p.fault != NULL)
    p.blackhole = blackhole_start();
  if (p.blackhole != NULL && opt.tls_cert != NULL)
    p.tls = http_start(&state, 0, opt.tls_cert, opt.tls_key);
  if (p.blackhole == NULL || (opt.tls_cert != NULL && p.tls == NULL)) {
    stop_all(&state, &p);
    state_destroy(&state);
    return 1;
  }

  /* The test harness reads these lines to learn where to connect; the
   * bare HTTP port comes first for readers that take only one line. */
  printf("%u\n", http_port_number(p.http));
  printf("fault %u\n", fault_port_number(p.fault));
  printf("blackhole %u\n", blackhole_port_number(p.blackhole));
  if (p.tls != NULL)
    printf("tls %u\n", http_port_number(p.tls));
  fflush(stdout);

  while (sigwait(&stop_signals, &sig) != 0)
    ;

  stop_all(&state, &p);
  state_destroy(&state);
  return 0;
}
