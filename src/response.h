/* response.h: the Response userdata ("retry.Response").
 *
 * Owns a finished attempt's body and raw header block. Headers are parsed
 * into a case-insensitive table only when first read; the body becomes a Lua
 * string only when :text() or :read() asks for it. Other fields (method,
 * url, and those the Lua layer adds: attempts, history, elapsed) live in a
 * table kept as the userdata's user value. A request run in C (the load's
 * driver) gives its Response those three as a trail of attempts, made into
 * Lua values only when a script reads one of them.
 */
#ifndef RT_RESPONSE_H
#define RT_RESPONSE_H

#include <stddef.h>

#include <lua.h>

/* One attempt of a request, as its history record tells it. */
typedef struct rt_attempt_s {
  double elapsed;
  double wait; /* before the next attempt (not read for the last) */
  int status;
  int resent;
} rt_attempt_t;

typedef struct rt_response_s {
  long status;
  double retry_after; /* seconds asked for by Retry-After; 0 for none */
  double timings[5];  /* dns, connect, tls, first_byte, total (seconds) */
  double finished_at; /* when the transfer ended, on core.now's clock */
  char *body;         /* owned; NULL once closed */
  size_t body_len;
  char *head; /* owned; raw header block, NULL once parsed */
  size_t head_len;
  int closed;
  /* The request's attempts (the last one this response's), not yet made
   * into attempts, history and elapsed: NULL once they are, or when the
   * retry loop set those fields. Points at trail_one or is owned. */
  rt_attempt_t *trail;
  int trail_len;
  double trail_elapsed; /* the request's */
  rt_attempt_t trail_one;
} rt_response_t;

/* Push a new empty response. Fill status, body and head right after: until
 * then it holds nothing, so an error while making it leaks nothing. */
rt_response_t *rt_response_push(lua_State *L);

/* Whether the value at idx is a Response. */
int rt_response_is(lua_State *L, int idx);

/* Set a field of the response on top of the stack to the value on top
 * (popped). */
void rt_response_setfield(lua_State *L, const char *name);

/* Give the response r (just pushed) its request's n >= 1 attempts (the
 * last r's own) and elapsed, which its attempts, history and elapsed
 * fields read as the retry loop would have set them: earlier attempts
 * retried for their status. One attempt is copied; more are malloc'd, and
 * r owns them from now. */
void rt_response_set_trail(rt_response_t *r, rt_attempt_t *attempts, int n,
                           double elapsed);

/* Push a history table of n attempts as the retry loop makes it (records
 * as attempt.lua's record_of, each retried for its status, with its wait,
 * but the last when last_stands), with room for one more record unless
 * last_stands. */
void rt_response_push_history(lua_State *L, const rt_attempt_t *attempts, int n,
                              int last_stands);

/* The retry loop sets attempts, history and elapsed itself: drop any trail
 * of the response at idx. */
void rt_response_drop_trail(lua_State *L, int idx);

/* Register the metatable; leaves the methods table on the stack so the Lua
 * layer can add methods written in Lua. */
void rt_response_open(lua_State *L);

#endif
