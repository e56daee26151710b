/* lua_histogram.c: core.histogram(), core.histogram_import() and the
 * Histogram methods (see lua_histogram.h).
 *
 * Owns the conversions at the Lua boundary (seconds to ns, uint64 to Lua
 * numbers) and the checks on imported tables; the arithmetic is
 * histogram.c's. Every misuse raises an `invalid` error object.
 */
#include "lua_histogram.h"

#include <inttypes.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "histogram.h"
#include "udata.h"

#define HIST_MT "retry.Histogram"
/* Its address keys the Histogram metatable (udata.h). */
static const char hist_key = 'h';

/* 2^64 as a double: the first ns value a uint64 cannot hold. */
#define TWO_64 18446744073709551616.0

/* Doubles at and above 2^63 are multiples of 2^11. */
#define FLOAT_STEP_MASK ((uint64_t)0x7FF)

/* The histogram at idx, or an `invalid` error naming the method, as in
 * `h.count()` for `h:count()`. */
static rt_histogram_t *check_hist(lua_State *L, int idx, const char *method) {
  rt_histogram_t *h = rt_udata_test(L, idx, &hist_key);

  if (h == NULL)
    rt_error_invalid(L,
                     "histogram:%s: expected a Histogram as self, got %s "
                     "(call it as h:%s())",
                     method, rt_error_typename(L, idx), method);
  return h;
}

rt_histogram_t *rt_histogram_test(lua_State *L, int idx) {
  return rt_udata_test(L, idx, &hist_key);
}

/* What the value at idx is, for an error message: a number's value, or a
 * type name. Pushes a string when it formats a number. */
static const char *describe(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TNUMBER && isnan(lua_tonumber(L, idx)))
    return "NaN"; /* not "-nan" or "nan", whichever libc prints */
  if (lua_type(L, idx) == LUA_TNUMBER)
    return luaL_tolstring(L, idx, NULL);
  return luaL_typename(L, idx);
}

/* Lua integers are signed: a uint64 beyond 2^63 - 1 would come out
 * negative. Only 292 years of ns get there, as a saturated sum or a clamped
 * value. Such a value becomes a float instead, still a plain JSON number,
 * rounded down to the 2^11 step doubles have there: the step divides every
 * bucket boundary up there, so a min or max stays inside its bucket and
 * histogram_import takes it back. */
static void push_u64(lua_State *L, uint64_t v) {
  if (v <= (uint64_t)LUA_MAXINTEGER)
    lua_pushinteger(L, (lua_Integer)v);
  else
    lua_pushnumber(L, (lua_Number)(v & ~FLOAT_STEP_MASK));
}

static void push_seconds(lua_State *L, double ns) {
  lua_pushnumber(L, (lua_Number)(ns / 1e9));
}

/* Seconds to ns, rounded to nearest: 1e-6 * 1e9 is 999.9999999999999, and
 * truncating would file a microsecond under 999 ns. Negative values are 0
 * (a clock step, not a latency); beyond 2^64 - 1 they clamp. */
uint64_t rt_histogram_ns(double seconds) {
  double ns = (double)seconds * 1e9;

  if (!(ns > 0))
    return 0;
  if (ns + 0.5 >= TWO_64)
    return UINT64_MAX;
  return (uint64_t)(ns + 0.5);
}

static rt_histogram_t *push_hist(lua_State *L) {
  rt_histogram_t *h = lua_newuserdatauv(L, sizeof(*h), 0);

  rt_hist_init(h);
  rt_udata_setmetatable(L, &hist_key);
  return h;
}

/* ------------------------------------------------------------------ */
/* Methods                                                             */
/* ------------------------------------------------------------------ */

/* h:record(seconds) */
static int hist_record(lua_State *L) {
  rt_histogram_t *h = check_hist(L, 1, "record");
  lua_Number seconds;

  if (lua_type(L, 2) != LUA_TNUMBER)
    return rt_error_invalid(
        L, "histogram:record: the value must be a number, got %s",
        luaL_typename(L, 2));
  seconds = lua_tonumber(L, 2);
  if (isnan(seconds))
    return rt_error_invalid(
        L, "histogram:record: the value must be a number, got NaN");
  /* count() hands out a Lua integer, so stop one short of wrapping it. */
  if (h->count >= (uint64_t)LUA_MAXINTEGER)
    return rt_error_invalid(L, "histogram:record: the histogram is full "
                               "(2^63 - 1 values)");
  rt_hist_record(h, rt_histogram_ns(seconds));
  return 0;
}

/* h:count() -> integer */
static int hist_count(lua_State *L) {
  rt_histogram_t *h = check_hist(L, 1, "count");

  lua_pushinteger(L, (lua_Integer)h->count);
  return 1;
}

/* h:percentile(p) -> seconds, for p in [0, 100] */
static int hist_percentile(lua_State *L) {
  rt_histogram_t *h = check_hist(L, 1, "percentile");
  lua_Number p = lua_tonumber(L, 2);

  if (lua_type(L, 2) != LUA_TNUMBER || !(p >= 0 && p <= 100))
    return rt_error_invalid(
        L, "histogram:percentile: p must be a number in [0, 100], got %s",
        describe(L, 2));
  push_seconds(L, (double)rt_hist_percentile(h, (double)p));
  return 1;
}

/* h:min() -> seconds, 0 when empty */
static int hist_min(lua_State *L) {
  push_seconds(L, (double)check_hist(L, 1, "min")->min);
  return 1;
}

/* h:max() -> seconds, 0 when empty */
static int hist_max(lua_State *L) {
  push_seconds(L, (double)check_hist(L, 1, "max")->max);
  return 1;
}

/* h:mean() -> seconds, 0 when empty */
static int hist_mean(lua_State *L) {
  push_seconds(L, rt_hist_mean(check_hist(L, 1, "mean")));
  return 1;
}

/* h:merge(other) -> h, holding both sets of values */
static int hist_merge(lua_State *L) {
  rt_histogram_t *h = check_hist(L, 1, "merge");
  rt_histogram_t *other = rt_udata_test(L, 2, &hist_key);

  if (other == NULL)
    return rt_error_invalid(
        L, "histogram:merge: other must be a Histogram, got %s",
        rt_error_typename(L, 2));
  if (other->count > (uint64_t)LUA_MAXINTEGER - h->count)
    return rt_error_invalid(L, "histogram:merge: the merged count would "
                               "exceed 2^63 - 1");
  rt_hist_merge(h, other);
  lua_settop(L, 1);
  return 1;
}

/* h:reset(): empty again */
static int hist_reset(lua_State *L) {
  rt_hist_init(check_hist(L, 1, "reset"));
  return 0;
}

/* h:export() -> {unit = "ns", sub_buckets = 128, count =, min =, max =,
 * sum =, buckets = {index, count, ...}}: the non-empty buckets as flat
 * pairs, 0-based indexes ascending, ready for a JSON encoder. */
static int hist_export(lua_State *L) {
  rt_histogram_t *h = check_hist(L, 1, "export");
  lua_Integer n = 0;
  int i, used = 0;

  for (i = 0; i < RT_HIST_BUCKETS; i++)
    used += h->counts[i] != 0;
  lua_createtable(L, 0, 7);
  lua_pushliteral(L, "ns");
  lua_setfield(L, -2, "unit");
  lua_pushinteger(L, RT_HIST_SUB);
  lua_setfield(L, -2, "sub_buckets");
  push_u64(L, h->count);
  lua_setfield(L, -2, "count");
  push_u64(L, h->min);
  lua_setfield(L, -2, "min");
  push_u64(L, h->max);
  lua_setfield(L, -2, "max");
  push_u64(L, h->sum);
  lua_setfield(L, -2, "sum");
  lua_createtable(L, 2 * used, 0);
  for (i = 0; i < RT_HIST_BUCKETS; i++) {
    if (h->counts[i] == 0)
      continue;
    lua_pushinteger(L, i);
    lua_rawseti(L, -2, ++n);
    push_u64(L, h->counts[i]);
    lua_rawseti(L, -2, ++n);
  }
  lua_setfield(L, -2, "buckets");
  return 1;
}

static int hist_tostring(lua_State *L) {
  rt_histogram_t *h = check_hist(L, 1, "__tostring");

  lua_pushfstring(L, HIST_MT " (%I values)", (lua_Integer)h->count);
  return 1;
}

/* ------------------------------------------------------------------ */
/* Constructors                                                        */
/* ------------------------------------------------------------------ */

/* core.histogram() -> an empty Histogram */
static int l_histogram(lua_State *L) {
  push_hist(L);
  return 1;
}

/* The value at idx as a uint64 >= lowest: a Lua integer, or a float
 * holding a whole number up to 2^64 (what push_u64 writes above 2^63, or
 * what a JSON decoder that makes every number a float gives back). 2^64
 * itself is how a double spells UINT64_MAX. Raises naming `what`. */
static uint64_t check_u64(lua_State *L, int idx, const char *what, int lowest) {
  lua_Integer i;
  lua_Number f;
  int isint;

  if (lua_type(L, idx) == LUA_TNUMBER) {
    i = lua_tointegerx(L, idx, &isint);
    if (isint && i >= lowest)
      return (uint64_t)i;
    f = lua_tonumber(L, idx);
    if (!isint && f >= lowest && f <= TWO_64 && f == floor(f))
      return f >= TWO_64 ? UINT64_MAX : (uint64_t)f;
  }
  rt_error_invalid(L, "histogram_import: %s must be an integer >= %d, got %s",
                   what, lowest, describe(L, idx));
  return 0;
}

/* A count (of the whole or of a bucket): it must fit a Lua integer, since
 * h:count() hands it out as one. */
static uint64_t check_count(lua_State *L, int idx, const char *what,
                            int lowest) {
  uint64_t n = check_u64(L, idx, what, lowest);

  if (n > (uint64_t)LUA_MAXINTEGER)
    rt_error_invalid(L, "histogram_import: %s must be at most 2^63 - 1", what);
  return n;
}

static uint64_t field_u64(lua_State *L, int t, const char *name) {
  uint64_t v;

  lua_getfield(L, t, name);
  v = check_u64(L, -1, name, 0);
  lua_pop(L, 1);
  return v;
}

static const char *fmt_u64(char *buf, size_t size, uint64_t v) {
  snprintf(buf, size, "%" PRIu64, v);
  return buf;
}

/* Read buckets = {index, count, ...} from the table at t into h, checking
 * each pair. Returns the sum of the counts; sets *first and *last to the
 * lowest and highest index (-1 when there is none). */
static uint64_t read_buckets(lua_State *L, int t, rt_histogram_t *h,
                             uint64_t count, int *first, int *last) {
  lua_Integer n, k, index, prev = -1;
  uint64_t total = 0, c;
  int isint;
  char what[64];

  *first = *last = -1;
  if (lua_getfield(L, t, "buckets") != LUA_TTABLE)
    rt_error_invalid(L, "histogram_import: buckets must be a table, got %s",
                     luaL_typename(L, -1));
  n = (lua_Integer)lua_rawlen(L, -1);
  if (n % 2 != 0)
    rt_error_invalid(L,
                     "histogram_import: buckets must hold (index, count) "
                     "pairs, but its length %I is odd",
                     n);
  for (k = 1; k < n; k += 2) {
    lua_rawgeti(L, -1, k);
    index = lua_tointegerx(L, -1, &isint);
    if (lua_type(L, -1) != LUA_TNUMBER || !isint || index < 0 ||
        index >= RT_HIST_BUCKETS)
      rt_error_invalid(L,
                       "histogram_import: buckets[%I] (an index) must be an "
                       "integer in [0, %d], got %s",
                       k, RT_HIST_BUCKETS - 1, describe(L, -1));
    if (index <= prev)
      rt_error_invalid(L,
                       "histogram_import: bucket indexes must be strictly "
                       "ascending, but buckets[%I] = %I follows %I",
                       k, index, prev);
    lua_pop(L, 1);
    lua_rawgeti(L, -1, k + 1);
    snprintf(what, sizeof(what), "buckets[%lld] (a count)", (long long)(k + 1));
    /* Empty buckets are left out, so a 0 here is a broken export. */
    c = check_count(L, -1, what, 1);
    lua_pop(L, 1);
    if (c > count - total)
      rt_error_invalid(L,
                       "histogram_import: the bucket counts sum to more than "
                       "count (%I)",
                       (lua_Integer)count);
    total += c;
    h->counts[index] = c;
    if (*first < 0)
      *first = (int)index;
    *last = (int)index;
    prev = index;
  }
  lua_pop(L, 1);
  return total;
}

/* core.histogram_import(t) -> a Histogram from what h:export() made */
static int l_histogram_import(lua_State *L) {
  rt_histogram_t *h;
  uint64_t count, total;
  int first, last;
  char a[24], b[24], c[24];

  if (!lua_istable(L, 1))
    return rt_error_invalid(
        L, "histogram_import: expected a table from h:export(), got %s",
        luaL_typename(L, 1));
  lua_settop(L, 1);
  /* Filled in place while checking: on an error it is merely garbage. */
  h = push_hist(L);
  lua_getfield(L, 1, "unit");
  if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) != 2 ||
      memcmp(lua_tostring(L, -1), "ns", 2) != 0)
    return rt_error_invalid(
        L, "histogram_import: unit must be \"ns\", got %s",
        lua_type(L, -1) == LUA_TSTRING
            ? lua_pushfstring(L, "\"%s\"", lua_tostring(L, -1))
            : luaL_typename(L, -1));
  lua_pop(L, 1);
  lua_getfield(L, 1, "sub_buckets");
  if (lua_type(L, -1) != LUA_TNUMBER || lua_tonumber(L, -1) != RT_HIST_SUB)
    return rt_error_invalid(L,
                            "histogram_import: sub_buckets must be %d (the "
                            "only layout), got %s",
                            RT_HIST_SUB, describe(L, -1));
  lua_pop(L, 1);
  lua_getfield(L, 1, "count");
  count = check_count(L, -1, "count", 0);
  lua_pop(L, 1);
  h->count = count;
  h->min = field_u64(L, 1, "min");
  h->max = field_u64(L, 1, "max");
  h->sum = field_u64(L, 1, "sum");
  total = read_buckets(L, 1, h, count, &first, &last);
  if (total != count)
    return rt_error_invalid(
        L, "histogram_import: the bucket counts sum to %s, but count is %s",
        fmt_u64(a, sizeof(a), total), fmt_u64(b, sizeof(b), count));
  if (count == 0) {
    if (h->min != 0 || h->max != 0 || h->sum != 0)
      return rt_error_invalid(L, "histogram_import: an empty histogram "
                                 "(count 0) must have min, max and sum 0");
    return 1;
  }
  if (h->min > h->max)
    return rt_error_invalid(
        L, "histogram_import: min (%s) must not exceed max (%s)",
        fmt_u64(a, sizeof(a), h->min), fmt_u64(b, sizeof(b), h->max));
  if (h->min < rt_hist_bucket_low(first) || h->min > rt_hist_bucket_high(first))
    return rt_error_invalid(
        L,
        "histogram_import: min (%s) must lie in the first non-empty bucket "
        "(%d: %s..%s)",
        fmt_u64(a, sizeof(a), h->min), first,
        fmt_u64(b, sizeof(b), rt_hist_bucket_low(first)),
        fmt_u64(c, sizeof(c), rt_hist_bucket_high(first)));
  if (h->max < rt_hist_bucket_low(last) || h->max > rt_hist_bucket_high(last))
    return rt_error_invalid(
        L,
        "histogram_import: max (%s) must lie in the last non-empty bucket "
        "(%d: %s..%s)",
        fmt_u64(a, sizeof(a), h->max), last,
        fmt_u64(b, sizeof(b), rt_hist_bucket_low(last)),
        fmt_u64(c, sizeof(c), rt_hist_bucket_high(last)));
  return 1;
}

static const luaL_Reg hist_methods[] = {{"count", hist_count},
                                        {"export", hist_export},
                                        {"max", hist_max},
                                        {"mean", hist_mean},
                                        {"merge", hist_merge},
                                        {"min", hist_min},
                                        {"percentile", hist_percentile},
                                        {"record", hist_record},
                                        {"reset", hist_reset},
                                        {NULL, NULL}};

static const luaL_Reg hist_funcs[] = {{"histogram", l_histogram},
                                      {"histogram_import", l_histogram_import},
                                      {NULL, NULL}};

void rt_histogram_open(lua_State *L) {
  if (luaL_newmetatable(L, HIST_MT)) {
    luaL_newlib(L, hist_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, hist_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  rt_udata_keep_metatable(L, &hist_key);
  lua_pop(L, 1);
  luaL_setfuncs(L, hist_funcs, 0);
}
