/* buf.h: a growable byte buffer for response bodies and header blocks. */
#ifndef RT_BUF_H
#define RT_BUF_H

#include <stddef.h>

/* data is owned by whoever holds the struct; {0} is an empty buffer. */
typedef struct rt_buf_s {
  char *data;
  size_t len;
  size_t cap;
} rt_buf_t;

/* Append bytes, growing the buffer geometrically. 0, or -1 when out of
 * memory (the buffer is then unchanged). */
int rt_buf_append(rt_buf_t *buf, const char *data, size_t len);

/* Hand the bytes to the caller, who must free() them; buf becomes empty. */
char *rt_buf_take(rt_buf_t *buf, size_t *len);

void rt_buf_free(rt_buf_t *buf);

#endif
