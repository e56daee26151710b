/* buf.c: a growable byte buffer. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

int rt_buf_append(rt_buf_t *buf, const char *data, size_t len) {
  if (len == 0)
    return 0;
  if (len > buf->cap - buf->len) {
    size_t cap = buf->cap ? buf->cap : 256;
    char *grown;

    while (cap - buf->len < len) {
      if (cap > ((size_t)-1) / 2)
        return -1;
      cap *= 2;
    }
    grown = realloc(buf->data, cap);
    if (grown == NULL)
      return -1;
    buf->data = grown;
    buf->cap = cap;
  }
  memcpy(buf->data + buf->len, data, len);
  buf->len += len;
  return 0;
}

char *rt_buf_take(rt_buf_t *buf, size_t *len) {
  char *data = buf->data;

  *len = buf->len;
  buf->data = NULL;
  buf->len = 0;
  buf->cap = 0;
  return data;
}

void rt_buf_free(rt_buf_t *buf) {
  free(buf->data);
  buf->data = NULL;
  buf->len = 0;
  buf->cap = 0;
}
