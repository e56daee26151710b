/* args.h: the command line the bench's C programs share:
 * PROGRAM URL [TOTAL] [CONCURRENCY], defaults 100000 and 64, concurrency
 * no more than the total. */
#ifndef RT_BENCH_ARGS_H
#define RT_BENCH_ARGS_H

typedef struct bench_args_s {
  const char *url;
  long total;
  long conc;
} bench_args_t;

/* Fills args from argv, or prints the usage or the bad count under
 * program's name and exits 2. */
void bench_args(int argc, char **argv, const char *program, bench_args_t *args);

#endif
