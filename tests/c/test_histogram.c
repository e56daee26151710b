/* test_histogram.c: the latency histogram (histogram.c) without Lua.
 *
 * Checks the bucket layout, percentiles against exact nearest-rank values
 * from sorted samples, exact merging and the edge cases. Samples come from
 * a fixed-seed generator, so a failure reproduces. Prints one TAP-style
 * line per case and, last, "N passed, M failed".
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "histogram.h"

#define SAMPLES 100000
#define SEED 20261130u

/* Big enough (59 KB each) to keep off the stack. */
static rt_histogram_t ha, hb, hc;
static uint64_t xs[2 * SAMPLES], sorted[2 * SAMPLES];

/* splitmix64: a fixed sequence for a fixed seed, on every libc. */
static uint64_t rng_state;

static uint64_t next_u64(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15u);

  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
  return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double next_unit(void) {
  return (double)(next_u64() >> 11) / 9007199254740992.0;
}

/* Uniform in [lo, hi]; the modulo bias does not matter here. */
static uint64_t next_between(uint64_t lo, uint64_t hi) {
  uint64_t span = hi - lo;

  if (span == UINT64_MAX)
    return next_u64();
  return lo + next_u64() % (span + 1);
}

/* Standard normal (Box-Muller). */
static double next_normal(void) {
  double u = next_unit(), v = next_unit();

  return sqrt(-2 * log(1 - u)) * cos(2 * M_PI * v);
}

static uint64_t clamp_ns(double ns) {
  if (!(ns > 0))
    return 0;
  if (ns >= 18446744073709551616.0)
    return UINT64_MAX;
  return (uint64_t)ns;
}

/* ------------------------------------------------------------------ */
/* Distributions                                                       */
/* ------------------------------------------------------------------ */

static uint64_t gen_uniform(void) {
  return next_between(1000, 1000000000); /* 1 us .. 1 s */
}

static uint64_t gen_lognormal(void) {
  return clamp_ns(exp(log(2e6) + 1.2 * next_normal())); /* median 2 ms */
}

static uint64_t gen_bimodal(void) {
  /* Mostly fast hits and a slow tail: 1 ms +- 10% and 200 ms +- 10%. */
  if (next_unit() < 0.9)
    return next_between(900000, 1100000);
  return next_between(180000000, 220000000);
}

static uint64_t gen_constant(void) {
  return 123456789;
}

/* Both sides of every power of two where buckets change width. */
static uint64_t gen_near_powers(void) {
  int p = (int)next_between(8, 63);
  uint64_t base = (uint64_t)1 << p;

  switch (next_u64() % 4) {
  case 0:
    return base - 1;
  case 1:
    return base;
  case 2:
    return base + 1;
  default:
    return base + next_between(0, 3);
  }
}

static uint64_t gen_small(void) {
  return next_between(0, 255);
}

static uint64_t gen_huge(void) {
  if (next_u64() % 16 == 0)
    return UINT64_MAX;
  return next_between(UINT64_MAX - ((uint64_t)1 << 62), UINT64_MAX);
}

struct dist {
  const char *name;
  uint64_t (*gen)(void);
};

static const struct dist dists[] = {
    {"uniform 1us..1s", gen_uniform},
    {"lognormal", gen_lognormal},
    {"bimodal", gen_bimodal},
    {"constant", gen_constant},
    {"near powers of two", gen_near_powers},
    {"values < 256", gen_small},
    {"huge, near 2^64", gen_huge},
};

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

  return x < y ? -1 : x > y;
}

/* p as a fraction num / den of 100 percent, so the exact rank is integer
 * arithmetic: ceil(n * num / den), at least 1. */
struct pct {
  double p;
  uint64_t num, den;
};

static const struct pct pcts[] = {
    {0, 0, 1},     {50, 1, 2},        {90, 9, 10},
    {99, 99, 100}, {99.9, 999, 1000}, {100, 1, 1},
};

static uint64_t exact_percentile(const uint64_t *s, uint64_t n,
                                 const struct pct *p) {
  uint64_t rank = (n * p->num + p->den - 1) / p->den;

  if (rank < 1)
    rank = 1;
  return s[rank - 1];
}

static double rel_error(uint64_t got, uint64_t want) {
  double d = (double)got - (double)want;

  if (want == 0)
    return got == 0 ? 0 : 1;
  return fabs(d) / (double)want;
}

static void fill(rt_histogram_t *h, const uint64_t *v, size_t n) {
  size_t i;

  rt_hist_init(h);
  for (i = 0; i < n; i++)
    CHECK(rt_hist_record(h, v[i]) == 0);
}

static int same(const rt_histogram_t *a, const rt_histogram_t *b) {
  return a->count == b->count && a->min == b->min && a->max == b->max &&
         a->sum == b->sum &&
         memcmp(a->counts, b->counts, sizeof(a->counts)) == 0;
}

/* ------------------------------------------------------------------ */
/* Cases                                                               */
/* ------------------------------------------------------------------ */

/* Every bucket's low and high map back to it, buckets tile [0, 2^64)
 * without gaps or overlaps, and no bucket is wider than 1/128 of its
 * lowest value. */
static void test_layout(void) {
  int i, bad_round_trip = 0, bad_touch = 0, bad_width = 0;

  CHECK(RT_HIST_BUCKETS == 7424);
  CHECK(rt_hist_bucket_low(0) == 0);
  CHECK(rt_hist_bucket_high(RT_HIST_BUCKETS - 1) == UINT64_MAX);
  CHECK(rt_hist_index(UINT64_MAX) == RT_HIST_BUCKETS - 1);
  CHECK(rt_hist_index(255) == 255 && rt_hist_index(256) == 256);
  CHECK(rt_hist_index(257) == 256 && rt_hist_index(258) == 257);
  CHECK(rt_hist_index(511) == 383 && rt_hist_index(512) == 384);
  for (i = 0; i < RT_HIST_BUCKETS; i++) {
    uint64_t low = rt_hist_bucket_low(i), high = rt_hist_bucket_high(i);

    bad_round_trip += low > high || rt_hist_index(low) != i ||
                      rt_hist_index(high) != i ||
                      rt_hist_index(low + (high - low) / 2) != i;
    if (i + 1 < RT_HIST_BUCKETS)
      bad_touch += rt_hist_bucket_low(i + 1) != high + 1;
    if (i >= 256)
      bad_width += (high - low + 1) * 128 > low;
    else
      bad_width += low != high;
  }
  CHECK(bad_round_trip == 0);
  CHECK(bad_touch == 0);
  CHECK(bad_width == 0);
}

/* Random values land in the bucket that spans them, and a larger value
 * never lands in a lower bucket. */
static void test_index_monotonic(void) {
  int i, bad_span = 0, bad_order = 0;

  rng_state = SEED;
  for (i = 0; i < 1000000; i++) {
    /* Spread over every magnitude, not just the top few. */
    uint64_t a = next_u64() >> (next_u64() % 64);
    uint64_t b = a + (next_u64() >> (next_u64() % 63 + 1));
    int ia = rt_hist_index(a);

    if (b < a) /* wrapped */
      b = UINT64_MAX;
    bad_span += rt_hist_bucket_low(ia) > a || rt_hist_bucket_high(ia) < a;
    bad_order += rt_hist_index(b) < ia;
  }
  CHECK(bad_span == 0);
  CHECK(bad_order == 0);
}

static void check_distribution(const struct dist *d) {
  size_t i, k;
  double worst = -1;
  const char *worst_at = "";

  rng_state = SEED;
  for (i = 0; i < SAMPLES; i++)
    xs[i] = d->gen();
  fill(&ha, xs, SAMPLES);
  memcpy(sorted, xs, SAMPLES * sizeof(*xs));
  qsort(sorted, SAMPLES, sizeof(*sorted), cmp_u64);
  CHECK(ha.count == SAMPLES);
  CHECK(ha.min == sorted[0]);
  CHECK(ha.max == sorted[SAMPLES - 1]);
  for (k = 0; k < sizeof(pcts) / sizeof(pcts[0]); k++) {
    uint64_t want = exact_percentile(sorted, SAMPLES, &pcts[k]);
    uint64_t got = rt_hist_percentile(&ha, pcts[k].p);
    double err = rel_error(got, want);

    if (err > 0.01) {
      printf("#   %s p%g: got %llu, exact %llu (%.4f%%)\n", d->name, pcts[k].p,
             (unsigned long long)got, (unsigned long long)want, 100 * err);
      case_failed = 1;
    }
    /* The bound the layout promises, tighter than the 1% asked for. */
    CHECK(err <= 1.0 / 256);
    if (err > worst) {
      worst = err;
      worst_at = pcts[k].p == 99.9  ? "p99.9"
                 : pcts[k].p == 100 ? "p100"
                 : pcts[k].p == 99  ? "p99"
                 : pcts[k].p == 90  ? "p90"
                 : pcts[k].p == 50  ? "p50"
                                    : "p0";
    }
  }
  CHECK(rt_hist_percentile(&ha, 0) == sorted[0]);
  CHECK(rt_hist_percentile(&ha, 100) == sorted[SAMPLES - 1]);
  printf("#   %s: worst relative error %.5f%% (at %s)\n", d->name, 100 * worst,
         worst_at);
}

#define DIST_CASE(fn, i)                                                       \
  static void fn(void) {                                                       \
    check_distribution(&dists[i]);                                             \
  }
DIST_CASE(test_dist_uniform, 0)
DIST_CASE(test_dist_lognormal, 1)
DIST_CASE(test_dist_bimodal, 2)
DIST_CASE(test_dist_constant, 3)
DIST_CASE(test_dist_near_powers, 4)
DIST_CASE(test_dist_small, 5)
DIST_CASE(test_dist_huge, 6)

/* Decimal percentiles pick the exact nearest rank, though p / 100 * count
 * is off in binary: 99.9 / 100 * 100000 is 99900.00000000001, whose ceil
 * would be rank 99901. Two exact buckets split at the rank tell them
 * apart: with `rank` values of 1 the answer is 1, with one fewer it is 2. */
static void test_decimal_ranks(void) {
  static const struct {
    double p;
    uint64_t num, den; /* p = num / den percent */
  } ps[] = {{0.1, 1, 10},       {12.3, 123, 10},      {33.3, 333, 10},
            {57.7, 577, 10},    {99, 99, 1},          {99.9, 999, 10},
            {99.99, 9999, 100}, {99.999, 99999, 1000}};
  static const uint64_t ns[] = {1000, 100000, 123457};
  size_t i, j;

  for (i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
    for (j = 0; j < sizeof(ns) / sizeof(ns[0]); j++) {
      uint64_t n = ns[j];
      uint64_t den = ps[i].den * 100;
      uint64_t rank = (n * ps[i].num + den - 1) / den;

      rt_hist_init(&ha);
      rt_hist_record_n(&ha, 1, rank);
      rt_hist_record_n(&ha, 2, n - rank);
      if (rank < n)
        CHECK(rt_hist_percentile(&ha, ps[i].p) == 1);
      if (rank > 1) {
        rt_hist_init(&ha);
        rt_hist_record_n(&ha, 1, rank - 1);
        rt_hist_record_n(&ha, 2, n - rank + 1);
        CHECK(rt_hist_percentile(&ha, ps[i].p) == 2);
      }
    }
  }
  /* A rank is at least 1. */
  rt_hist_init(&ha);
  rt_hist_record(&ha, 5);
  rt_hist_record(&ha, 7);
  CHECK(rt_hist_percentile(&ha, 1e-9) == 5);
}

/* Merging a and b equals recording both sets into one histogram, bucket
 * for bucket. */
static void test_merge_exact(void) {
  size_t i, d;

  for (d = 0; d < sizeof(dists) / sizeof(dists[0]); d++) {
    rng_state = SEED + d;
    for (i = 0; i < 2 * SAMPLES; i++)
      xs[i] = dists[(d + i % 2) % (sizeof(dists) / sizeof(dists[0]))].gen();
    fill(&ha, xs, SAMPLES);
    fill(&hb, xs + SAMPLES, SAMPLES);
    fill(&hc, xs, 2 * SAMPLES);
    CHECK(rt_hist_merge(&ha, &hb) == 0);
    CHECK(ha.count == hc.count && ha.min == hc.min && ha.max == hc.max);
    CHECK(memcmp(ha.counts, hc.counts, sizeof(ha.counts)) == 0);
    CHECK(same(&ha, &hc));
  }
  /* Into an empty one, from an empty one, and into itself. */
  fill(&ha, xs, SAMPLES);
  rt_hist_init(&hb);
  CHECK(rt_hist_merge(&hb, &ha) == 0);
  CHECK(same(&hb, &ha));
  rt_hist_init(&hc);
  CHECK(rt_hist_merge(&ha, &hc) == 0);
  CHECK(same(&hb, &ha));
  fill(&hc, xs, SAMPLES);
  for (i = 0; i < SAMPLES; i++)
    rt_hist_record(&hc, xs[i]);
  CHECK(rt_hist_merge(&ha, &ha) == 0);
  CHECK(same(&ha, &hc));
}

static void test_empty(void) {
  rt_histogram_t *h = &ha;

  memset(h, 0xAB, sizeof(*h));
  rt_hist_init(h);
  CHECK(h->count == 0 && h->min == 0 && h->max == 0 && h->sum == 0);
  CHECK(rt_hist_percentile(h, 0) == 0);
  CHECK(rt_hist_percentile(h, 50) == 0);
  CHECK(rt_hist_percentile(h, 100) == 0);
  CHECK(rt_hist_mean(h) == 0);
  rt_hist_init(&hb);
  CHECK(rt_hist_merge(h, &hb) == 0);
  CHECK(h->count == 0 && h->min == 0 && h->max == 0);
  CHECK(rt_hist_record_n(h, 5, 0) == 0);
  CHECK(h->count == 0 && h->min == 0);
}

/* One value: every percentile is that value exactly (clamped to min and
 * max), though its bucket is wide. */
static void test_single_value(void) {
  rt_hist_init(&ha);
  CHECK(rt_hist_record(&ha, 1000001) == 0);
  CHECK(rt_hist_percentile(&ha, 0) == 1000001);
  CHECK(rt_hist_percentile(&ha, 50) == 1000001);
  CHECK(rt_hist_percentile(&ha, 99.9) == 1000001);
  CHECK(rt_hist_percentile(&ha, 100) == 1000001);
  CHECK(rt_hist_mean(&ha) == 1000001.0);
}

/* record_n is n records; the sum saturates instead of wrapping, and a
 * count that would wrap is refused with h unchanged. */
static void test_record_n_and_limits(void) {
  int i;

  rt_hist_init(&ha);
  rt_hist_init(&hb);
  for (i = 0; i < 1000; i++)
    rt_hist_record(&ha, 777777);
  CHECK(rt_hist_record_n(&hb, 777777, 1000) == 0);
  CHECK(same(&ha, &hb));
  CHECK(rt_hist_mean(&ha) == 777777.0);

  rt_hist_init(&ha);
  CHECK(rt_hist_record(&ha, UINT64_MAX) == 0);
  CHECK(rt_hist_record(&ha, UINT64_MAX) == 0);
  CHECK(ha.sum == UINT64_MAX);
  CHECK(rt_hist_record_n(&ha, 3, UINT64_MAX / 2) == 0);
  CHECK(ha.sum == UINT64_MAX);
  memcpy(&hb, &ha, sizeof(ha));
  CHECK(rt_hist_record_n(&ha, 5, UINT64_MAX) == -ERANGE);
  CHECK(same(&ha, &hb));
  CHECK(rt_hist_merge(&ha, &hb) == -ERANGE);
  CHECK(same(&ha, &hb));
}

struct test_case {
  const char *name;
  void (*run)(void);
};

static const struct test_case cases[] = {
    {"buckets round-trip and tile the range", test_layout},
    {"index spans and is monotonic", test_index_monotonic},
    {"percentiles: uniform 1us..1s", test_dist_uniform},
    {"percentiles: lognormal", test_dist_lognormal},
    {"percentiles: bimodal", test_dist_bimodal},
    {"percentiles: constant", test_dist_constant},
    {"percentiles: near powers of two", test_dist_near_powers},
    {"percentiles: values < 256", test_dist_small},
    {"percentiles: huge, near 2^64", test_dist_huge},
    {"decimal percentiles pick the exact rank", test_decimal_ranks},
    {"merge equals recording both sets", test_merge_exact},
    {"empty histogram", test_empty},
    {"a single value is reported exactly", test_single_value},
    {"record_n, saturating sum, count overflow", test_record_n_and_limits},
};

int main(void) {
  size_t i;
  size_t n = sizeof(cases) / sizeof(cases[0]);

  printf("1..%zu\n", n);
  for (i = 0; i < n; i++) {
    case_failed = 0;
    cases[i].run();
    printf("%s %zu - %s\n", case_failed ? "not ok" : "ok", i + 1,
           cases[i].name);
    fflush(stdout);
    if (case_failed)
      failed++;
    else
      passed++;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
