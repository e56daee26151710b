/* udata.h: typed full userdata, their metatables found by address.
 *
 * luaL_testudata and luaL_setmetatable find a metatable in the registry by
 * its name, which Lua interns through its API string cache (a hash and a
 * strcmp) at every call: some 150 instructions, and a load request made
 * about 20 such checks. The types on the request path are checked by a
 * mark their metatable carries (below), and set from the registry by the
 * address of a static key. The name stays: it is the `__name` error
 * messages and tostring show. */
#ifndef RT_UDATA_H
#define RT_UDATA_H

#include <lua.h>

/* Mark the metatable at the top of the stack as the one of key's type,
 * and keep it in the registry under key. The mark is key at [1] of the
 * metatable's own metatable, which a `__metatable` field hides from
 * getmetatable and setmetatable: Lua code can neither read the mark nor
 * put it on another metatable (short of the debug library, which can give
 * any userdata any metatable anyway). */
static inline void rt_udata_keep_metatable(lua_State *L, const void *key) {
  lua_createtable(L, 1, 1);
  lua_pushlightuserdata(L, (void *)key);
  lua_rawseti(L, -2, 1);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* Give the value at the top of the stack the metatable kept under key. */
static inline void rt_udata_setmetatable(lua_State *L, const void *key) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  lua_setmetatable(L, -2);
}

/* The block of the userdata at idx if its metatable carries key's mark,
 * else NULL: luaL_testudata, asking two small tables rather than the
 * registry. */
static inline void *rt_udata_test(lua_State *L, int idx, const void *key) {
  void *p = lua_touserdata(L, idx);

  if (p == NULL || !lua_getmetatable(L, idx))
    return NULL;
  if (!lua_getmetatable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  if (lua_rawgeti(L, -1, 1) != LUA_TLIGHTUSERDATA ||
      lua_touserdata(L, -1) != key)
    p = NULL;
  lua_pop(L, 3);
  return p;
}

#endif
