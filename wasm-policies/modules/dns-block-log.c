// world: dns-policy
//
// Blocks names matching any of a list of patterns (trackers, ad networks, exfiltration domains)
// and logs each block with the asking pod; every other name is allowed.
//
// Settings:
//   {"block": [pattern...], "code": "nxdomain" | "refused"}   (code defaults to "nxdomain")
#include "dns_policy.h"
#include "policy_util.h"

static bool read_settings(str_t text, str_t name, bool evaluate, str_t *hit, bool *refused,
                          const char **err, str_t *err_key) {
  json_t j = {text.p, text.p + text.n, NULL};
  bool first = true;
  str_t key, val;
  *refused = false;
  if (json_object_begin(&j)) {
    while (json_object_next(&j, &key, &first)) {
      if (str_eq(key, str_c("block"))) {
        bool f2 = true;
        if (!json_array_begin(&j)) break;
        while (json_array_next(&j, &f2)) {
          if (!json_string(&j, &val)) break;
          const char *bad = pattern_check(val);
          if (bad) {
            *err_key = val;
            json_fail(&j, bad);
            break;
          }
          if (evaluate && !hit->p && pattern_matches(val, name)) *hit = val;
        }
      } else if (str_eq(key, str_c("code"))) {
        if (!json_string(&j, &val)) break;
        if (str_eq(val, str_c("refused"))) *refused = true;
        else if (!str_eq(val, str_c("nxdomain"))) {
          *err_key = val;
          json_fail(&j, "code must be \"nxdomain\" or \"refused\"");
        }
      } else {
        *err_key = key;
        json_fail(&j, "unknown settings key (block, code)");
      }
    }
  }
  json_end(&j);
  *err = j.err;
  return j.err == NULL;
}

bool exports_dns_policy_validate_settings(dns_policy_string_t *settings, dns_policy_string_t *err) {
  str_t hit = {0}, key = {0};
  bool refused;
  const char *e;
  if (read_settings(str_of(settings->ptr, settings->len), (str_t){0}, false, &hit, &refused, &e, &key))
    return true;
  text_t t = settings_error(e, key);
  err->ptr = (uint8_t *)t.p;
  err->len = t.n;
  return false;
}

void exports_dns_policy_check_dns(dns_policy_string_t *settings, dns_policy_dns_query_t *q,
                                  dns_policy_dns_decision_t *ret) {
  str_t name = str_of(q->name.ptr, q->name.len), hit = {0}, key = {0};
  bool refused;
  const char *e;
  text_t t = {0};
  if (!read_settings(str_of(settings->ptr, settings->len), name, true, &hit, &refused, &e, &key)) {
    ret->verdict.tag = NETLET_POLICY_TYPES_DNS_VERDICT_DENY;
    ret->verdict.val.deny = NETLET_POLICY_TYPES_DENY_CODE_REFUSED;
    text_cstr(&t, "settings unreadable: ");
    text_cstr(&t, e);
  } else if (hit.p) {
    ret->verdict.tag = NETLET_POLICY_TYPES_DNS_VERDICT_DENY;
    ret->verdict.val.deny =
        refused ? NETLET_POLICY_TYPES_DENY_CODE_REFUSED : NETLET_POLICY_TYPES_DENY_CODE_NXDOMAIN;
    text_cstr(&t, "blocked by \"");
    text_add(&t, hit);
    text_cstr(&t, "\"");
    text_t line = {0};
    text_cstr(&line, "blocked ");
    text_add(&line, name);
    text_cstr(&line, " for ");
    if (q->pod.is_some) {
      text_add(&line, str_of(q->pod.val.namespace_.ptr, q->pod.val.namespace_.len));
      text_cstr(&line, "/");
      text_add(&line, str_of(q->pod.val.name.ptr, q->pod.val.name.len));
    } else {
      text_add(&line, str_of(q->client_address.ptr, q->client_address.len));
    }
    text_cstr(&line, " by \"");
    text_add(&line, hit);
    text_cstr(&line, "\"");
    dns_policy_string_t msg = {(uint8_t *)line.p, line.n};
    netlet_policy_log_log(NETLET_POLICY_LOG_LEVEL_WARN, &msg);
    free(line.p);
  } else {
    ret->verdict.tag = NETLET_POLICY_TYPES_DNS_VERDICT_ALLOW;
    text_cstr(&t, "no block pattern matched");
  }
  ret->reason.ptr = (uint8_t *)t.p;
  ret->reason.len = t.n;
}
