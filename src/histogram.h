/* histogram.h: a log-linear latency histogram of uint64 nanoseconds.
 *
 * Plain C: no Lua, no libuv, no allocation. The layout is fixed, so every
 * histogram is the same size and two of them merge exactly, bucket by
 * bucket, whichever process recorded them (HdrHistogram's idea with one
 * fixed precision instead of a configurable one).
 *
 * Layout: values below 256 have a bucket each (index = value). A value
 * v >= 256 with p = floor(log2(v)) falls in one of RT_HIST_SUB buckets that
 * split [2^p, 2^(p+1)) evenly: index = 256 + (p - 8) * 128 +
 * ((v >> (p - 7)) - 128). A bucket is at most 1/128 of its lowest value
 * wide, so its midpoint is within 1/256 (0.39%) of any value in it.
 *
 * Invariants: count is the sum of counts[]; min and max are exact values
 * recorded (both 0 when empty); sum saturates at UINT64_MAX rather than
 * wrapping, so the mean of absurd values is a lower bound, not garbage.
 */
#ifndef RT_HISTOGRAM_H
#define RT_HISTOGRAM_H

#include <stdint.h>

#define RT_HIST_SUB 128                  /* buckets per power of two */
#define RT_HIST_EXACT 256                /* values with their own bucket */
#define RT_HIST_BUCKETS (256 + 56 * 128) /* 7424; 2^64 - 1 is the last */

typedef struct rt_histogram_s {
  uint64_t count; /* values recorded */
  uint64_t min;   /* exact; 0 when empty */
  uint64_t max;   /* exact; 0 when empty */
  uint64_t sum;   /* saturating at UINT64_MAX */
  uint64_t counts[RT_HIST_BUCKETS];
} rt_histogram_t;

/* Make h empty. A zeroed struct is also an empty histogram. */
void rt_hist_init(rt_histogram_t *h);

/* Record one value. 0, or -ERANGE when count would overflow (h is then
 * unchanged). */
int rt_hist_record(rt_histogram_t *h, uint64_t value_ns);

/* Record n copies of value_ns (n = 0 does nothing). 0, or -ERANGE when
 * count would overflow (h is then unchanged). */
int rt_hist_record_n(rt_histogram_t *h, uint64_t value_ns, uint64_t n);

/* Add from's values into into; into == from doubles it. The result equals
 * one histogram that recorded both sets. 0, or -ERANGE when count would
 * overflow (into is then unchanged). */
int rt_hist_merge(rt_histogram_t *into, const rt_histogram_t *from);

/* The nearest-rank percentile for p in [0, 100]: the value of rank
 * ceil(p / 100 * count) (at least 1), reported as the midpoint of its bucket
 * (the value itself for exact buckets), clamped to [min, max]. p <= 0 gives
 * min and p >= 100 gives max exactly; an empty histogram gives 0. */
uint64_t rt_hist_percentile(const rt_histogram_t *h, double p);

/* sum / count in ns, 0 when empty. */
double rt_hist_mean(const rt_histogram_t *h);

/* The bucket of value_ns, in [0, RT_HIST_BUCKETS). */
int rt_hist_index(uint64_t value_ns);

/* The lowest and highest (inclusive) value of bucket i, for i in
 * [0, RT_HIST_BUCKETS). */
uint64_t rt_hist_bucket_low(int i);
uint64_t rt_hist_bucket_high(int i);

#endif
