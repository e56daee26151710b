/* error.h: the Lua API's error objects, raised from C.
 *
 * The Lua layer (lua/retry/errors.lua) and C share one metatable, registered
 * here as "retry.Error", so an argument check in C raises the same `invalid`
 * error object a check in Lua does: a table with `kind` and `message`, never
 * a plain string with a file:line in front.
 */
#ifndef RT_ERROR_H
#define RT_ERROR_H

#include <lua.h>

#define RT_ERROR_MT "retry.Error"

/* Create the shared metatable if it is not there yet and push it. */
void rt_error_push_metatable(lua_State *L);

/* Push a new error object {kind = kind, message = message}. */
void rt_error_push(lua_State *L, const char *kind, const char *message);

/* Raise an `invalid` error object whose message is formatted as by
 * lua_pushfstring. Never returns. */
int rt_error_invalid(lua_State *L, const char *fmt, ...);

/* What the value at idx is, for a message: its metatable's `__name` (a
 * retry.Response, a FILE*), else its Lua type, as luaL_typeerror names it.
 * May push the name; the error raised next drops it. */
const char *rt_error_typename(lua_State *L, int idx);

#endif
