/* response.h: the Response userdata ("retry.Response").
 *
 * Owns a finished attempt's body and raw header block. Headers are parsed
 * into a case-insensitive table only when first read; the body becomes a Lua
 * string only when :text() or :read() asks for it. Other fields (method,
 * url, and those the Lua layer adds: attempts, history, elapsed) live in a
 * table kept as the userdata's user value.
 */
#ifndef RT_RESPONSE_H
#define RT_RESPONSE_H

#include <stddef.h>

#include <lua.h>

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
} rt_response_t;

/* Push a new empty response. Fill status, body and head right after: until
 * then it holds nothing, so an error while making it leaks nothing. */
rt_response_t *rt_response_push(lua_State *L);

/* Whether the value at idx is a Response. */
int rt_response_is(lua_State *L, int idx);

/* Set a field of the response on top of the stack to the value on top
 * (popped). */
void rt_response_setfield(lua_State *L, const char *name);

/* Register the metatable; leaves the methods table on the stack so the Lua
 * layer can add methods written in Lua. */
void rt_response_open(lua_State *L);

#endif
