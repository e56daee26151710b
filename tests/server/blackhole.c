/*
 * The black hole: a listening socket that is never accepted from, with
 * its accept queue filled by the server itself. Linux drops a SYN that
 * arrives while the accept queue is full (no RST, no SYN-ACK), so a
 * client's connect() stays in SYN_SENT until its own connect timeout:
 * a reliable connect timeout on loopback, where nothing is ever slow.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"

/* With backlog 0 Linux queues one connection (the queue is "full" when it
 * holds more than the backlog), so one filler suffices; the second one is
 * a margin in case a kernel counts differently, and it just hangs in
 * SYN_SENT itself without delaying start-up. */
#define FILLERS 2
/* How long start-up waits for the first filler's handshake. */
#define FILL_WAIT_MS 1000

struct blackhole {
  int listen_fd;
  unsigned int port;
  int fillers[FILLERS];
};

/* Start a non-blocking connect to addr; returns the socket or -1. */
static int start_connect(const struct sockaddr_in *addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

  if (fd < 0)
    return -1;
  if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0 &&
      errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Wait until fd's connect has completed (writable without error). */
static bool wait_connected(int fd) {
  struct pollfd pfd = {.fd = fd, .events = POLLOUT};
  int err = 0;
  socklen_t len = sizeof err;

  if (poll(&pfd, 1, FILL_WAIT_MS) != 1)
    return false;
  return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
}

struct blackhole *blackhole_start(void) {
  struct blackhole *bh = calloc(1, sizeof *bh);
  struct sockaddr_in addr;
  size_t i;

  if (bh == NULL)
    return NULL;
  for (i = 0; i < FILLERS; i++)
    bh->fillers[i] = -1;
  bh->listen_fd = listen_loopback(0, &addr, "black hole");
  if (bh->listen_fd < 0)
    goto fail;
  bh->port = ntohs(addr.sin_port);
  /* The first filler must really sit in the queue before the port is
   * announced, or the first client would be queued instead. */
  bh->fillers[0] = start_connect(&addr);
  if (bh->fillers[0] < 0 || !wait_connected(bh->fillers[0])) {
    fprintf(stderr, "black hole: cannot fill the accept queue\n");
    goto fail;
  }
  for (i = 1; i < FILLERS; i++)
    bh->fillers[i] = start_connect(&addr);
  return bh;

fail:
  blackhole_stop(bh);
  return NULL;
}

unsigned int blackhole_port_number(const struct blackhole *bh) {
  return bh->port;
}

void blackhole_stop(struct blackhole *bh) {
  size_t i;

  if (bh == NULL)
    return;
  for (i = 0; i < FILLERS; i++) {
    if (bh->fillers[i] >= 0)
      close(bh->fillers[i]);
  }
  if (bh->listen_fd >= 0)
    close(bh->listen_fd);
  free(bh);
}
