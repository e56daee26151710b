/* args.c: see args.h. */
#include "args.h"

#include <stdio.h>
#include <stdlib.h>

static long count(const char *program, const char *text, const char *what) {
  char *end;
  long n = strtol(text, &end, 10);

  if (*end != '\0' || n <= 0) {
    fprintf(stderr, "%s: %s must be a positive integer, got %s\n", program,
            what, text);
    exit(2);
  }
  return n;
}

void bench_args(int argc, char **argv, const char *program,
                bench_args_t *args) {
  if (argc < 2 || argc > 4) {
    fprintf(stderr, "usage: %s URL [TOTAL] [CONCURRENCY]\n", program);
    exit(2);
  }
  args->url = argv[1];
  args->total = argc > 2 ? count(program, argv[2], "TOTAL") : 100000;
  args->conc = argc > 3 ? count(program, argv[3], "CONCURRENCY") : 64;
  if (args->conc > args->total)
    args->conc = args->total;
}
