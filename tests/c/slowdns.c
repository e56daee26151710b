/* slowdns.c: an LD_PRELOAD library for the specs. getaddrinfo of a host
 * name that starts with "slow." waits SLOWDNS_SECONDS (default 3) and then
 * answers as for 127.0.0.1, so a spec can hold a transfer in libcurl's
 * resolver thread, as a slow DNS server would. Every other name is
 * resolved as usual. */
#include <dlfcn.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*getaddrinfo_fn)(const char *, const char *,
                              const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service,
                const struct addrinfo *hints, struct addrinfo **res) {
  getaddrinfo_fn real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");

  if (node != NULL && strncmp(node, "slow.", 5) == 0) {
    const char *env = getenv("SLOWDNS_SECONDS");
    double seconds = env != NULL ? atof(env) : 3.0;
    struct timespec wait;

    wait.tv_sec = (time_t)seconds;
    wait.tv_nsec = (long)((seconds - (double)wait.tv_sec) * 1e9);
    nanosleep(&wait, NULL);
    node = "127.0.0.1";
  }
  return real(node, service, hints, res);
}
