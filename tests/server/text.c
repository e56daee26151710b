/*
 * Text helpers shared by the ports: a growable buffer with JSON and URL
 * encoding, strict number parsing and percent-decoding.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

static bool sb_reserve(struct strbuf *sb, size_t extra) {
  size_t need;
  size_t cap;
  char *p;

  if (sb->failed)
    return false;
  if (extra > SIZE_MAX - sb->len - 1) {
    sb->failed = true;
    return false;
  }
  /* +1 keeps room for a NUL so the data can double as a C string. */
  need = sb->len + extra + 1;
  if (need <= sb->cap)
    return true;
  cap = sb->cap ? sb->cap : 256;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  p = realloc(sb->data, cap);
  if (p == NULL) {
    sb->failed = true;
    return false;
  }
  sb->data = p;
  sb->cap = cap;
  return true;
}

void sb_append(struct strbuf *sb, const char *s, size_t n) {
  if (!sb_reserve(sb, n))
    return;
  if (n > 0)
    memcpy(sb->data + sb->len, s, n);
  sb->len += n;
  sb->data[sb->len] = '\0';
}

void sb_puts(struct strbuf *sb, const char *s) {
  sb_append(sb, s, strlen(s));
}

void sb_printf(struct strbuf *sb, const char *fmt, ...) {
  va_list ap;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) {
    sb->failed = true;
    return;
  }
  if (!sb_reserve(sb, (size_t)n))
    return;
  va_start(ap, fmt);
  vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb->len += (size_t)n;
}

/* Append s as a quoted JSON string. Only '"', '\\' and control characters
 * need escaping; bytes >= 0x80 are passed through untouched so UTF-8 (or
 * arbitrary binary) survives the round trip byte for byte. */
void sb_json_string(struct strbuf *sb, const char *s, size_t n, bool lower) {
  size_t i;

  sb_append(sb, "\"", 1);
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];

    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      sb_append(sb, esc, 2);
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", (unsigned int)c);
      sb_append(sb, esc, 6);
    } else {
      if (lower && c < 0x80)
        c = (unsigned char)tolower(c);
      esc[0] = (char)c;
      sb_append(sb, esc, 1);
    }
  }
  sb_append(sb, "\"", 1);
}

/* Percent-encode everything but RFC 3986 unreserved characters, so a
 * decoded query value can be put back into a URL unchanged in meaning. */
void sb_url_encode(struct strbuf *sb, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i;

  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[3];

    if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      esc[0] = (char)c;
      sb_append(sb, esc, 1);
    } else {
      esc[0] = '%';
      esc[1] = hex[c >> 4];
      esc[2] = hex[c & 15];
      sb_append(sb, esc, 3);
    }
  }
}

void sb_free(struct strbuf *sb) {
  free(sb->data);
  sb->data = NULL;
  sb->len = 0;
  sb->cap = 0;
}

/* Strict decimal parse: digits only, no sign, no whitespace, <= max. A
 * typo in a test URL should be a 400, not a silently different number. */
bool parse_ulong(const char *s, unsigned long max, unsigned long *out) {
  unsigned long v = 0;

  if (s == NULL || *s == '\0')
    return false;
  for (; *s != '\0'; s++) {
    unsigned int d;

    if (*s < '0' || *s > '9')
      return false;
    d = (unsigned int)(*s - '0');
    if (v > (max - d) / 10)
      return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Decode a query component in place ('+' is a space, %XX a byte; a
 * malformed escape is kept literally, as MHD does) and return its new
 * length. */
size_t url_decode(char *s) {
  char *out = s;
  const char *in = s;

  while (*in != '\0') {
    int hi;
    int lo;

    if (*in == '+') {
      *out++ = ' ';
      in++;
    } else if (*in == '%' && (hi = hex_value(in[1])) >= 0 &&
               (lo = hex_value(in[2])) >= 0) {
      *out++ = (char)(hi * 16 + lo);
      in += 3;
    } else {
      *out++ = *in++;
    }
  }
  *out = '\0';
  return (size_t)(out - s);
}
