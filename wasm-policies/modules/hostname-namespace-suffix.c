// world: hostname-grant
//
// A namespace may use hostnames under its own name below a shared suffix: with the suffix
// "apps.example.com", namespace "shop" may use "shop.apps.example.com" and any name ending in
// ".shop.apps.example.com" (wildcards included), and nothing else under the suffix.
//
// Settings: {"suffix": "apps.example.com"}
#include "hostname_grant.h"
#include "policy_util.h"

static bool read_settings(str_t text, str_t *suffix, const char **err) {
  json_t j = {text.p, text.p + text.n, NULL};
  bool first = true;
  str_t key;
  suffix->p = NULL;
  suffix->n = 0;
  if (json_object_begin(&j)) {
    while (json_object_next(&j, &key, &first)) {
      if (str_eq(key, str_c("suffix"))) {
        if (!json_string(&j, suffix)) break;
        const char *bad = pattern_check(*suffix);
        if (bad) json_fail(&j, bad);
        else if (memchr(suffix->p, '*', suffix->n)) json_fail(&j, "suffix must not have wildcards");
      } else {
        json_fail(&j, "unknown settings key (suffix)");
      }
    }
  }
  json_end(&j);
  if (!j.err && !suffix->p) json_fail(&j, "suffix is required");
  *err = j.err;
  return j.err == NULL;
}

bool exports_hostname_grant_validate_settings(hostname_grant_string_t *settings,
                                              hostname_grant_string_t *err) {
  str_t suffix;
  const char *e;
  if (read_settings(str_of(settings->ptr, settings->len), &suffix, &e)) return true;
  text_t t = {0};
  text_cstr(&t, e);
  err->ptr = (uint8_t *)t.p;
  err->len = t.n;
  return false;
}

void exports_hostname_grant_check_hostname(hostname_grant_string_t *settings,
                                           hostname_grant_hostname_request_t *req,
                                           hostname_grant_hostname_decision_t *ret) {
  str_t suffix;
  const char *e;
  text_t t = {0};
  if (!read_settings(str_of(settings->ptr, settings->len), &suffix, &e)) {
    ret->allowed = false;
    text_cstr(&t, "settings unreadable: ");
    text_cstr(&t, e);
  } else {
    // the name the namespace owns: "<namespace>.<suffix>"
    text_t own = {0};
    text_add(&own, str_of(req->namespace_.ptr, req->namespace_.len));
    text_cstr(&own, ".");
    text_add(&own, trim_dot(suffix));
    str_t host = trim_dot(str_of(req->hostname.ptr, req->hostname.len));
    bool exact = host.n == own.n && memcmp(host.p, own.p, own.n) == 0;
    bool below = host.n > own.n + 1 && host.p[host.n - own.n - 1] == '.' &&
                 memcmp(host.p + host.n - own.n, own.p, own.n) == 0;
    ret->allowed = exact || below;
    text_cstr(&t, ret->allowed ? "within " : "outside ");
    text_add(&t, (str_t){own.p, own.n});
    free(own.p);
  }
  ret->reason.ptr = (uint8_t *)t.p;
  ret->reason.len = t.n;
}
