/* lua_histogram.h: the Histogram userdata ("retry.Histogram") of
 * retry.core, binding histogram.h for load checks.
 *
 * Values cross this boundary as seconds (Lua numbers) and are kept as
 * nanoseconds; export() and histogram_import() speak nanoseconds so a
 * histogram can travel through JSON and merge exactly elsewhere. The
 * histogram lives inside its userdata: the GC owns it, nothing to close.
 */
#ifndef RT_LUA_HISTOGRAM_H
#define RT_LUA_HISTOGRAM_H

#include <lua.h>
#include <stdint.h>

#include "histogram.h"

/* Register the metatable and set `histogram` and `histogram_import` in the
 * module table on top of the stack. */
void rt_histogram_open(lua_State *L);

/* The histogram at idx, or NULL when it is not one. */
rt_histogram_t *rt_histogram_test(lua_State *L, int idx);

/* Seconds as the ns a histogram records, as h:record takes them: rounded
 * to nearest, negative ones 0, clamped at 2^64 - 1. */
uint64_t rt_histogram_ns(double seconds);

#endif
