/* histogram.c: the log-linear latency histogram (see histogram.h).
 *
 * Owns only the arithmetic of the fixed layout; memory belongs to the
 * caller (a struct on the stack, or inside a Lua userdata).
 */
#include "histogram.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <string.h>

/* Bits below the top one that pick the sub-bucket: 2^7 = RT_HIST_SUB. */
#define SUB_BITS 7

void rt_hist_init(rt_histogram_t *h) {
  memset(h, 0, sizeof(*h));
}

int rt_hist_index(uint64_t value_ns) {
  int p, shift;

  if (value_ns < RT_HIST_EXACT)
    return (int)value_ns;
  p = 63 - __builtin_clzll(value_ns);
  shift = p - SUB_BITS;
  /* v >> shift keeps the top 8 bits, 128..255: the top bit is always set,
   * so subtracting 128 leaves the sub-bucket. */
  return RT_HIST_EXACT + (p - 8) * RT_HIST_SUB +
         (int)((value_ns >> shift) - RT_HIST_SUB);
}

uint64_t rt_hist_bucket_low(int i) {
  int j, p;
  uint64_t m;

  if (i < RT_HIST_EXACT)
    return (uint64_t)i;
  j = i - RT_HIST_EXACT;
  p = j / RT_HIST_SUB + 8;
  m = (uint64_t)(j % RT_HIST_SUB + RT_HIST_SUB);
  return m << (p - SUB_BITS);
}

uint64_t rt_hist_bucket_high(int i) {
  int p;

  if (i < RT_HIST_EXACT)
    return (uint64_t)i;
  p = (i - RT_HIST_EXACT) / RT_HIST_SUB + 8;
  /* Written as low + (width - 1) so the last bucket ends at UINT64_MAX
   * without computing 2^64. */
  return rt_hist_bucket_low(i) + (((uint64_t)1 << (p - SUB_BITS)) - 1);
}

static uint64_t add_sat(uint64_t a, uint64_t b) {
  uint64_t r;

  if (__builtin_add_overflow(a, b, &r))
    return UINT64_MAX;
  return r;
}

int rt_hist_record_n(rt_histogram_t *h, uint64_t value_ns, uint64_t n) {
  uint64_t total;

  if (n == 0)
    return 0;
  /* Every bucket holds at most count, so checking count alone keeps every
   * bucket from wrapping too. */
  if (n > UINT64_MAX - h->count)
    return -ERANGE;
  if (h->count == 0 || value_ns < h->min)
    h->min = value_ns;
  if (h->count == 0 || value_ns > h->max)
    h->max = value_ns;
  h->counts[rt_hist_index(value_ns)] += n;
  h->count += n;
  if (__builtin_mul_overflow(value_ns, n, &total))
    total = UINT64_MAX;
  h->sum = add_sat(h->sum, total);
  return 0;
}

int rt_hist_record(rt_histogram_t *h, uint64_t value_ns) {
  return rt_hist_record_n(h, value_ns, 1);
}

int rt_hist_merge(rt_histogram_t *into, const rt_histogram_t *from) {
  int i, last;

  if (from->count == 0)
    return 0;
  if (from->count > UINT64_MAX - into->count)
    return -ERANGE;
  if (into->count == 0 || from->min < into->min)
    into->min = from->min;
  if (into->count == 0 || from->max > into->max)
    into->max = from->max;
  /* Buckets outside [index(min), index(max)] are empty by construction. */
  last = rt_hist_index(from->max);
  for (i = rt_hist_index(from->min); i <= last; i++)
    into->counts[i] += from->counts[i];
  into->count += from->count;
  into->sum = add_sat(into->sum, from->sum);
  return 0;
}

/* ceil(p / 100 * count), in [1, count]. p usually arrives as a decimal that
 * binary floating point cannot hold: 99.9 / 100 * 100000 comes out as
 * 99900.00000000001, and a plain ceil would pick rank 99901. A few ulps of
 * slack absorb that; a true fraction that small needs counts near 2^50. */
static uint64_t rank_of(double p, uint64_t count) {
  double x = p / 100.0 * (double)count;
  double r = ceil(x - x * 4 * DBL_EPSILON);

  if (r < 1)
    return 1;
  if (r >= (double)count)
    return count;
  return (uint64_t)r;
}

uint64_t rt_hist_percentile(const rt_histogram_t *h, double p) {
  uint64_t rank, seen = 0, low, mid;
  int i, last;

  if (h->count == 0)
    return 0;
  if (!(p > 0)) /* NaN too: the caller checks the range, this never reads
                   past the buckets */
    return h->min;
  if (p >= 100)
    return h->max;
  rank = rank_of(p, h->count);
  last = rt_hist_index(h->max);
  for (i = rt_hist_index(h->min); i < last; i++) {
    seen += h->counts[i];
    if (seen >= rank)
      break;
  }
  /* The loop stops at the last non-empty bucket at the latest, which
   * holds every rank up to count. */
  low = rt_hist_bucket_low(i);
  mid = low + (rt_hist_bucket_high(i) - low) / 2;
  if (mid < h->min)
    return h->min;
  if (mid > h->max)
    return h->max;
  return mid;
}

double rt_hist_mean(const rt_histogram_t *h) {
  if (h->count == 0)
    return 0;
  return (double)h->sum / (double)h->count;
}
