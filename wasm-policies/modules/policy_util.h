// Helpers shared by netlet's C policy modules: a JSON reader for settings (objects, arrays,
// strings, no escapes: names and patterns never need them) that walks the text in place without
// allocating, and the DNS name patterns of DnsPolicy.
//
// Patterns (case-insensitive, a trailing dot ignored on both sides):
//   "api.example.com"   that name only
//   "*.example.com"     one label before example.com ("a.example.com", not "a.b.example.com"
//                       nor "example.com"); "*" inside a label matches any run of characters
//                       but the dot ("api-*.example.com")
//   "**.example.com"    one or more labels before example.com (never the apex)
//   "**"                every name
#ifndef NETLET_POLICY_UTIL_H
#define NETLET_POLICY_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *p;
  size_t n;
} str_t;

static inline str_t str_of(const uint8_t *p, size_t n) { return (str_t){(const char *)p, n}; }
static inline str_t str_c(const char *s) { return (str_t){s, strlen(s)}; }
static inline bool str_eq(str_t a, str_t b) { return a.n == b.n && memcmp(a.p, b.p, a.n) == 0; }
static inline str_t trim_dot(str_t s) {
  if (s.n > 0 && s.p[s.n - 1] == '.') s.n--;
  return s;
}
static inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

// ---- JSON ----

typedef struct {
  const char *s, *end;
  const char *err;  // first error, static text
} json_t;

static inline void json_ws(json_t *j) {
  while (j->s < j->end && (*j->s == ' ' || *j->s == '\n' || *j->s == '\t' || *j->s == '\r')) j->s++;
}
static inline bool json_fail(json_t *j, const char *e) {
  if (!j->err) j->err = e;
  return false;
}
static inline bool json_peek(json_t *j, char c) {
  json_ws(j);
  return j->s < j->end && *j->s == c;
}
static inline bool json_eat(json_t *j, char c) {
  if (!json_peek(j, c)) return false;
  j->s++;
  return true;
}
static inline bool json_string(json_t *j, str_t *out) {
  if (!json_eat(j, '"')) return json_fail(j, "expected a string");
  const char *start = j->s;
  while (j->s < j->end && *j->s != '"') {
    if (*j->s == '\\') return json_fail(j, "escapes are not supported in settings strings");
    j->s++;
  }
  if (j->s >= j->end) return json_fail(j, "unterminated string");
  out->p = start;
  out->n = (size_t)(j->s - start);
  j->s++;
  return true;
}
// Object iteration: json_object_begin, then while json_object_next(&key) { read the value }.
static inline bool json_object_begin(json_t *j) {
  if (!json_eat(j, '{')) return json_fail(j, "expected an object");
  return true;
}
static inline bool json_object_next(json_t *j, str_t *key, bool *first) {
  if (j->err) return false;
  if (json_eat(j, '}')) return false;
  if (!*first && !json_eat(j, ',')) return json_fail(j, "expected ',' or '}'");
  *first = false;
  if (!json_string(j, key)) return false;
  if (!json_eat(j, ':')) return json_fail(j, "expected ':'");
  return true;
}
static inline bool json_array_begin(json_t *j) {
  if (!json_eat(j, '[')) return json_fail(j, "expected an array");
  return true;
}
static inline bool json_array_next(json_t *j, bool *first) {
  if (j->err) return false;
  if (json_eat(j, ']')) return false;
  if (!*first && !json_eat(j, ',')) return json_fail(j, "expected ',' or ']'");
  *first = false;
  return true;
}
static inline bool json_end(json_t *j) {
  json_ws(j);
  if (j->err) return false;
  if (j->s != j->end) return json_fail(j, "trailing characters after the settings object");
  return true;
}

// ---- patterns ----

// Whether `pattern` is well formed; the reason when not.
static inline const char *pattern_check(str_t pat) {
  pat = trim_dot(pat);
  if (pat.n == 0) return "empty pattern";
  if (pat.n > 253) return "pattern longer than 253 characters";
  size_t label = 0;
  for (size_t i = 0; i <= pat.n; i++) {
    if (i == pat.n || pat.p[i] == '.') {
      size_t len = i - label;
      if (len == 0) return "empty label in pattern";
      if (len > 63) return "label longer than 63 characters";
      bool double_star = false;
      for (size_t k = label; k + 1 < i; k++) double_star |= pat.p[k] == '*' && pat.p[k + 1] == '*';
      if (double_star && (len != 2 || label != 0)) return "\"**\" must be the whole leftmost label";
      label = i + 1;
      continue;
    }
    char c = lower(pat.p[i]);
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '*'))
      return "pattern has a character outside [a-z0-9-_*.]";
  }
  return NULL;
}

// Glob within one label: '*' matches any run of characters.
static inline bool label_glob(const char *p, size_t pn, const char *s, size_t sn) {
  size_t pi = 0, si = 0, star = (size_t)-1, mark = 0;
  while (si < sn) {
    if (pi < pn && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (pi < pn && lower(p[pi]) == lower(s[si])) {
      pi++;
      si++;
    } else if (star != (size_t)-1) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < pn && p[pi] == '*') pi++;
  return pi == pn;
}

// Label-wise match from the right.
static inline bool pattern_matches(str_t pat, str_t name) {
  pat = trim_dot(pat);
  name = trim_dot(name);
  if (pat.n == 2 && pat.p[0] == '*' && pat.p[1] == '*') return name.n > 0;
  size_t pe = pat.n, ne = name.n;
  for (;;) {
    // the rightmost remaining label of each
    size_t ps = pe, ns = ne;
    while (ps > 0 && pat.p[ps - 1] != '.') ps--;
    while (ns > 0 && name.p[ns - 1] != '.') ns--;
    bool p_last = ps == 0, n_last = ns == 0;
    if (p_last && pe - ps == 2 && pat.p[0] == '*' && pat.p[1] == '*') {
      // "**" needs at least one label left in the name
      return ne > 0;
    }
    if (ne == 0) return false;
    if (!label_glob(pat.p + ps, pe - ps, name.p + ns, ne - ns)) return false;
    if (p_last || n_last) return p_last && n_last;
    pe = ps - 1;
    ne = ns - 1;
  }
}

#endif

// ---- text building ----

// A growing text on the module's heap (freed by the host's post-return call).
typedef struct {
  char *p;
  size_t n, cap;
} text_t;

static inline void text_add(text_t *t, str_t s) {
  if (t->n + s.n + 1 > t->cap) {
    size_t cap = (t->cap ? t->cap * 2 : 64);
    while (cap < t->n + s.n + 1) cap *= 2;
    t->p = realloc(t->p, cap);
    if (!t->p) abort();
    t->cap = cap;
  }
  memcpy(t->p + t->n, s.p, s.n);
  t->n += s.n;
}
static inline void text_cstr(text_t *t, const char *s) { text_add(t, str_c(s)); }

// A settings error as validate-settings returns it: `why`, and `: "<key>"` when one is named.
static inline text_t settings_error(const char *why, str_t key) {
  text_t t = {0};
  text_cstr(&t, why);
  if (key.n) {
    text_cstr(&t, ": \"");
    text_add(&t, key);
    text_cstr(&t, "\"");
  }
  return t;
}
