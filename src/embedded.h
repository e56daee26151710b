/* embedded.h: the lua/ modules compiled into lretry, precompiled by luac
 * or as source (see cmake/embed.cmake). */
#ifndef RT_EMBEDDED_H
#define RT_EMBEDDED_H

#include <stddef.h>

typedef struct rt_embedded_s {
  const char *module;    /* "retry.client" */
  const char *chunkname; /* "@retry/client.lua" */
  const char *chunk;     /* luac's output, or the source */
  size_t len;
} rt_embedded_t;

/* Ends with an entry whose module is NULL. */
extern const rt_embedded_t rt_embedded_lua[];

#endif
