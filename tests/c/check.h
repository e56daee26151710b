/* check.h: what the C test runners share. Each runner prints one TAP-style
 * line per case and, last, "N passed, M failed" (scripts/test.sh reads it);
 * a CHECK that fails prints where and marks the current case failed. */
#ifndef RT_TEST_CHECK_H
#define RT_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;
static int case_failed;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      printf("#   %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
      case_failed = 1;                                                         \
    }                                                                          \
  } while (0)

#endif
