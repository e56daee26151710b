/* lua_core.h: the entry point of the retry.core C module, for hosts that
 * link the core in (src/main.c) rather than load it as core.so. */
#ifndef RT_LUA_CORE_H
#define RT_LUA_CORE_H

#include <lua.h>

int luaopen_retry_core(lua_State *L);

#endif
