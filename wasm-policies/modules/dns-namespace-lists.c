// world: dns-policy
//
// Per-namespace allow and deny lists of DNS name patterns (see policy_util.h for the patterns).
//
// Settings:
//   {"namespaces": {"<namespace>" | "*": {"allow": [pattern...], "deny": [pattern...]}},
//    "default": "allow" | "deny",         (names matching no list; default "deny")
//    "deny_code": "nxdomain" | "refused"} (answer to a denied name; default "nxdomain")
//
// A namespace's own entry decides; "*" stands for namespaces without one and for clients that are
// no pod. Within an entry, deny wins over allow.
#include "dns_policy.h"
#include "policy_util.h"

typedef struct {
  bool present;
  str_t allow_hit, deny_hit;
  bool allowed, denied;
} entry_t;

typedef struct {
  // the query; `evaluate` false when only validating
  bool evaluate;
  str_t ns, name;
  // what the settings say
  bool default_allow;
  bool refused;
  entry_t own, star;
  // where an error is
  str_t err_key;
} state_t;

static bool read_list(json_t *j, state_t *st, entry_t *e, bool deny) {
  bool first = true;
  if (!json_array_begin(j)) return false;
  while (json_array_next(j, &first)) {
    str_t pat;
    if (!json_string(j, &pat)) return false;
    const char *bad = pattern_check(pat);
    if (bad) {
      st->err_key = pat;
      return json_fail(j, bad);
    }
    if (e && st->evaluate && !(deny ? e->denied : e->allowed) && pattern_matches(pat, st->name)) {
      if (deny) {
        e->denied = true;
        e->deny_hit = pat;
      } else {
        e->allowed = true;
        e->allow_hit = pat;
      }
    }
  }
  return !j->err;
}

static bool read_entry(json_t *j, state_t *st, entry_t *e) {
  if (e) e->present = true;
  bool first = true;
  str_t key;
  if (!json_object_begin(j)) return false;
  while (json_object_next(j, &key, &first)) {
    if (str_eq(key, str_c("allow"))) {
      if (!read_list(j, st, e, false)) return false;
    } else if (str_eq(key, str_c("deny"))) {
      if (!read_list(j, st, e, true)) return false;
    } else {
      st->err_key = key;
      return json_fail(j, "unknown key in a namespace entry (allow, deny)");
    }
  }
  return !j->err;
}

static bool read_settings(str_t text, state_t *st, const char **err) {
  json_t j = {text.p, text.p + text.n, NULL};
  st->default_allow = false;
  st->refused = false;
  bool first = true;
  str_t key, val;
  if (json_object_begin(&j)) {
    while (json_object_next(&j, &key, &first)) {
      if (str_eq(key, str_c("namespaces"))) {
        bool f2 = true;
        str_t ns;
        if (!json_object_begin(&j)) break;
        while (json_object_next(&j, &ns, &f2)) {
          entry_t *e = NULL;
          if (str_eq(ns, str_c("*"))) e = &st->star;
          else if (st->evaluate && str_eq(ns, st->ns)) e = &st->own;
          if (!read_entry(&j, st, e)) break;
        }
      } else if (str_eq(key, str_c("default"))) {
        if (!json_string(&j, &val)) break;
        if (str_eq(val, str_c("allow"))) st->default_allow = true;
        else if (!str_eq(val, str_c("deny"))) {
          st->err_key = val;
          json_fail(&j, "default must be \"allow\" or \"deny\"");
        }
      } else if (str_eq(key, str_c("deny_code"))) {
        if (!json_string(&j, &val)) break;
        if (str_eq(val, str_c("refused"))) st->refused = true;
        else if (!str_eq(val, str_c("nxdomain"))) {
          st->err_key = val;
          json_fail(&j, "deny_code must be \"nxdomain\" or \"refused\"");
        }
      } else {
        st->err_key = key;
        json_fail(&j, "unknown settings key (namespaces, default, deny_code)");
      }
    }
  }
  json_end(&j);
  *err = j.err;
  return j.err == NULL;
}

bool exports_dns_policy_validate_settings(dns_policy_string_t *settings, dns_policy_string_t *err) {
  state_t st = {0};
  const char *e;
  if (read_settings(str_of(settings->ptr, settings->len), &st, &e)) return true;
  text_t t = settings_error(e, st.err_key);
  err->ptr = (uint8_t *)t.p;
  err->len = t.n;
  return false;
}

void exports_dns_policy_check_dns(dns_policy_string_t *settings, dns_policy_dns_query_t *q,
                                  dns_policy_dns_decision_t *ret) {
  state_t st = {0};
  st.evaluate = true;
  st.name = str_of(q->name.ptr, q->name.len);
  if (q->pod.is_some) st.ns = str_of(q->pod.val.namespace_.ptr, q->pod.val.namespace_.len);
  const char *e;
  text_t t = {0};
  if (!read_settings(str_of(settings->ptr, settings->len), &st, &e)) {
    // Settings were validated at load; a failure here is a bug: deny, and say so.
    ret->verdict.tag = NETLET_POLICY_TYPES_DNS_VERDICT_DENY;
    ret->verdict.val.deny = NETLET_POLICY_TYPES_DENY_CODE_REFUSED;
    text_cstr(&t, "settings unreadable: ");
    text_cstr(&t, e);
  } else {
    entry_t *en = st.own.present ? &st.own : &st.star;
    const char *who = st.own.present ? "namespace " : (q->pod.is_some ? "namespace * for " : "no pod: *");
    text_cstr(&t, who);
    if (q->pod.is_some && (st.own.present || st.star.present)) text_add(&t, st.ns);
    bool allow;
    if (en->present && en->denied) {
      allow = false;
      text_cstr(&t, ": denied by \"");
      text_add(&t, en->deny_hit);
      text_cstr(&t, "\"");
    } else if (en->present && en->allowed) {
      allow = true;
      text_cstr(&t, ": allowed by \"");
      text_add(&t, en->allow_hit);
      text_cstr(&t, "\"");
    } else {
      allow = st.default_allow;
      text_cstr(&t, allow ? ": no pattern matched, default allow" : ": no pattern matched, default deny");
    }
    if (allow) {
      ret->verdict.tag = NETLET_POLICY_TYPES_DNS_VERDICT_ALLOW;
    } else {
      ret->verdict.tag = NETLET_POLICY_TYPES_DNS_VERDICT_DENY;
      ret->verdict.val.deny =
          st.refused ? NETLET_POLICY_TYPES_DENY_CODE_REFUSED : NETLET_POLICY_TYPES_DENY_CODE_NXDOMAIN;
    }
  }
  ret->reason.ptr = (uint8_t *)t.p;
  ret->reason.len = t.n;
}
