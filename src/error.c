/* error.c: the Lua API's error objects, raised from C (see error.h). */
#include "error.h"

#include <lauxlib.h>
#include <stdarg.h>

void rt_error_push_metatable(lua_State *L) {
  if (luaL_newmetatable(L, RT_ERROR_MT)) {
    /* errors.lua fills in __index and __tostring; __name makes type errors
     * from luaL_checkudata and friends read well until it does. */
    lua_pushliteral(L, RT_ERROR_MT);
    lua_setfield(L, -2, "__name");
  }
}

void rt_error_push(lua_State *L, const char *kind, const char *message) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  rt_error_push_metatable(L);
  lua_setmetatable(L, -2);
}

const char *rt_error_typename(lua_State *L, int idx) {
  int type;

  idx = lua_absindex(L, idx);
  type = luaL_getmetafield(L, idx, "__name");
  if (type == LUA_TSTRING)
    return lua_tostring(L, -1);
  if (type != LUA_TNIL)
    lua_pop(L, 1);
  return luaL_typename(L, idx);
}

int rt_error_invalid(lua_State *L, const char *fmt, ...) {
  va_list ap;
  const char *message;

  va_start(ap, fmt);
  message = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  rt_error_push(L, "invalid", message);
  return lua_error(L);
}
