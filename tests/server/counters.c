/*
 * Per-key counters shared by every port: hits, the peak number of requests
 * in flight at once, the set of connections that carried the key, and how
 * many requests their client abandoned before the reply.
 *
 * Ownership: an entry belongs to the table while it is linked into it.
 * /reset unlinks entries; one that still has requests in flight is then
 * owned by those requests together and freed by the last counters_end(),
 * so a request that outlives a reset never touches the fresh counters a
 * new request with the same key started.
 */
#include <stdlib.h>
#include <string.h>

#include "server.h"

struct hit_entry {
  struct hit_entry *next;
  bool linked;
  unsigned long hits;
  unsigned long in_flight;
  unsigned long peak;
  unsigned long aborted;
  /* Distinct connection ids, unsorted: a key rarely sees more than a few
   * hundred connections, and a linear scan from the newest end finds a
   * kept-alive connection's id at once. */
  uint64_t *conns;
  size_t nconns;
  size_t conns_cap;
  char key[]; /* NUL-terminated, allocated with the entry */
};

static size_t hash_key(const char *key) {
  /* FNV-1a: short, decent spread, no dependencies. */
  uint32_t h = 2166136261u;

  for (; *key != '\0'; key++) {
    h ^= (unsigned char)*key;
    h *= 16777619u;
  }
  return h % HIT_BUCKETS;
}

static void entry_free(struct hit_entry *e) {
  free(e->conns);
  free(e);
}

static struct hit_entry *find_locked(struct server_state *st, const char *key) {
  struct hit_entry *e;

  for (e = st->buckets[hash_key(key)]; e != NULL; e = e->next) {
    if (strcmp(e->key, key) == 0)
      return e;
  }
  return NULL;
}

static bool add_conn_locked(struct hit_entry *e, uint64_t id) {
  size_t i;

  for (i = e->nconns; i > 0; i--) {
    if (e->conns[i - 1] == id)
      return true;
  }
  if (e->nconns == e->conns_cap) {
    size_t cap = e->conns_cap ? e->conns_cap * 2 : 4;
    uint64_t *p = realloc(e->conns, cap * sizeof *p);

    if (p == NULL)
      return false;
    e->conns = p;
    e->conns_cap = cap;
  }
  e->conns[e->nconns++] = id;
  return true;
}

/* Count a request with key on connection conn_id and mark it in flight.
 * Returns the entry to pass to counters_end() and stores the request's
 * 1-based hit number in *hits, or returns NULL if memory ran out. */
struct hit_entry *counters_begin(struct server_state *st, const char *key,
                                 uint64_t conn_id, unsigned long *hits) {
  struct hit_entry **head = &st->buckets[hash_key(key)];
  struct hit_entry *e;
  size_t len = strlen(key);

  pthread_mutex_lock(&st->lock);
  e = find_locked(st, key);
  if (e == NULL) {
    e = calloc(1, sizeof *e + len + 1);
    if (e == NULL)
      goto fail;
    memcpy(e->key, key, len + 1);
    e->linked = true;
    e->next = *head;
    *head = e;
  }
  if (!add_conn_locked(e, conn_id))
    goto fail;
  *hits = ++e->hits;
  if (++e->in_flight > e->peak)
    e->peak = e->in_flight;
  pthread_mutex_unlock(&st->lock);
  return e;

fail:
  /* A fresh entry stays linked with zero counts; /reset or shutdown frees
   * it like any other. */
  pthread_mutex_unlock(&st->lock);
  *hits = 0;
  return NULL;
}

/* The caller counts each request at most once (struct request_ctx's
 * aborted flag in http.c). An entry unlinked by /reset meanwhile takes
 * the count with it, as it does the request's hit. */
void counters_abort(struct server_state *st, struct hit_entry *e) {
  if (e == NULL)
    return;
  pthread_mutex_lock(&st->lock);
  e->aborted++;
  pthread_mutex_unlock(&st->lock);
}

void counters_end(struct server_state *st, struct hit_entry *e) {
  if (e == NULL)
    return;
  pthread_mutex_lock(&st->lock);
  e->in_flight--;
  if (!e->linked && e->in_flight == 0)
    entry_free(e);
  pthread_mutex_unlock(&st->lock);
}

struct key_stats counters_get(struct server_state *st, const char *key) {
  struct key_stats ks = {0, 0, 0, 0};
  struct hit_entry *e;

  pthread_mutex_lock(&st->lock);
  e = find_locked(st, key);
  if (e != NULL) {
    ks.hits = e->hits;
    ks.peak = e->peak;
    ks.connections = (unsigned long)e->nconns;
    ks.aborted = e->aborted;
  }
  pthread_mutex_unlock(&st->lock);
  return ks;
}

static void unlink_locked(struct hit_entry *e) {
  e->linked = false;
  if (e->in_flight == 0)
    entry_free(e);
}

/* Caller holds st->lock, or is the only thread left (shutdown, when no
 * request is in flight any more and every entry is linked). */
void counters_clear_all_locked(struct server_state *st) {
  size_t i;

  for (i = 0; i < HIT_BUCKETS; i++) {
    struct hit_entry *e = st->buckets[i];

    while (e != NULL) {
      struct hit_entry *next = e->next;

      unlink_locked(e);
      e = next;
    }
    st->buckets[i] = NULL;
  }
}

/* Forget one key, or every key when key is NULL. */
void counters_reset(struct server_state *st, const char *key) {
  pthread_mutex_lock(&st->lock);
  if (key == NULL) {
    counters_clear_all_locked(st);
  } else {
    struct hit_entry **pp = &st->buckets[hash_key(key)];

    while (*pp != NULL) {
      if (strcmp((*pp)->key, key) == 0) {
        struct hit_entry *dead = *pp;

        *pp = dead->next;
        unlink_locked(dead);
        break;
      }
      pp = &(*pp)->next;
    }
  }
  pthread_mutex_unlock(&st->lock);
}
