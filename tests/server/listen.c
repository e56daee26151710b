/*
 * A listening TCP socket on 127.0.0.1 with a port the kernel picks: what
 * the fault port and the black hole both start from.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"

int listen_loopback(int backlog, struct sockaddr_in *addr, const char *who) {
  socklen_t alen = sizeof *addr;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

  if (fd < 0) {
    fprintf(stderr, "%s: socket: %s\n", who, strerror(errno));
    return -1;
  }
  memset(addr, 0, sizeof *addr);
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)addr, sizeof *addr) != 0 ||
      listen(fd, backlog) != 0 ||
      getsockname(fd, (struct sockaddr *)addr, &alen) != 0) {
    fprintf(stderr, "%s: bind/listen: %s\n", who, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}
