/* udata.h: typed full userdata, their metatables found by address.
 *
 * luaL_testudata and luaL_setmetatable find a metatable in the registry by
 * its name, which Lua interns through its API string cache (a hash and a
 * strcmp) at every call: some 150 instructions, and a load request made
 * about 20 such checks. The types on the request path also keep their
 * metatable under the address of a static key, read with lua_rawgetp. The
 * name stays: it is the `__name` error messages and tostring show. */
#ifndef RT_UDATA_H
#define RT_UDATA_H

#include <lua.h>

/* Mark the metatable at the top of the stack as the one of key's type,
 * and keep it in the registry under key. */
static inline void rt_udata_keep_metatable(lua_State *L, const void *key) {
  lua_pushboolean(L, 1);
  lua_rawsetp(L, -2, key);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* Give the value at the top of the stack the metatable kept under key. */
static inline void rt_udata_setmetatable(lua_State *L, const void *key) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  lua_setmetatable(L, -2);
}

/* The block of the userdata at idx if its metatable is marked with key,
 * else NULL: luaL_testudata, asking the (small) metatable rather than the
 * registry. Lua code cannot make a light userdata, so only C marks one. */
static inline void *rt_udata_test(lua_State *L, int idx, const void *key) {
  void *p = lua_touserdata(L, idx);

  if (p == NULL || !lua_getmetatable(L, idx))
    return NULL;
  if (lua_rawgetp(L, -1, key) == LUA_TNIL)
    p = NULL;
  lua_pop(L, 2);
  return p;
}

#endif
