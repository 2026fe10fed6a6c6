//! Hostname claims: which objects use which hostnames, and whether they may.
//!
//! A claim is a hostname an object uses: an Ingress's rules and TLS hosts, the `hostnames` of
//! a Gateway API HTTPRoute, GRPCRoute or TLSRoute, a Gateway listener's `hostname`, an
//! OpenShift Route's `host`, and the external-dns hostname annotation of a Service. It
//! carries the object's namespace, kind and name and its age (the object's
//! `creationTimestamp`).
//!
//! The decision for a claim (namespace N, hostname H):
//!
//! 1. **Grants.** H is *governed* when some grant's hostnames cover it (Gateway API matching,
//!    see [`crate::grants::hostname_covered`]). A governed H needs a grant that covers it and
//!    lists N (by name, `*`, or a namespace selector), and that grant's module (if any) must
//!    agree. An H no grant covers follows the node's `hostnames.noGrant` mode: `deny`, `allow`,
//!    or `audit` (allowed, with the violation said as a warning and in the audit).
//! 2. **Oldest claim wins** (OpenShift's route admission rule): H is refused when another
//!    namespace holds it with an older claim: older `creationTimestamp`, ties broken by
//!    namespace, kind and name, so the same claims give the same winner whatever order they
//!    arrive in. A namespace may reuse its own names, and an object never blocks itself (an
//!    update keeps its claims). A claim *holds* only while its namespace may use the name by
//!    step 1's grants (without modules): taking a name out of a grant frees it for the
//!    namespace the grant now lists — a name moves only when the holder lets go or a grant
//!    says so.
//!
//! Claims are on literal names: `*.example.com` claimed by one namespace and `a.example.com`
//! by another do not conflict (the more specific name wins in a Gateway's routing anyway).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::services::sources::Source;

/// The annotation external-dns reads hostnames from (comma-separated).
pub const EXTERNAL_DNS_ANNOTATION: &str = "external-dns.alpha.kubernetes.io/hostname";

/// The kinds that claim hostnames: (group, version, kind), as the Kubernetes source watches
/// them and the webhook is registered for (Services are watched anyway; their annotation is
/// read there).
pub const KINDS: [(&str, &str, &str); 6] = [
    ("networking.k8s.io", "v1", "Ingress"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute"),
    ("gateway.networking.k8s.io", "v1", "TLSRoute"),
    ("gateway.networking.k8s.io", "v1", "Gateway"),
    ("route.openshift.io", "v1", "Route"),
];

/// Whether objects of `kind` claim hostnames.
pub fn is_claiming_kind(kind: &str) -> bool {
    kind == "Service" || KINDS.iter().any(|k| k.2 == kind)
}

/// A hostname as claims compare it: lower case, no trailing dot, no surrounding blanks.
pub fn normalize(h: &str) -> String {
    h.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The hostnames an object of `kind` uses, normalized, each once, in order of appearance.
pub fn hostnames_of(kind: &str, obj: &Value) -> Vec<String> {
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    let each = |list: Option<&Value>, field: &str| -> Vec<Value> {
        list.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.get(field).cloned())
            .collect()
    };
    let raw: Vec<String> = match kind {
        "Ingress" => {
            let spec = obj.get("spec");
            let mut v: Vec<String> = each(spec.and_then(|s| s.get("rules")), "host")
                .iter()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect();
            for hosts in each(spec.and_then(|s| s.get("tls")), "hosts") {
                v.extend(strs(Some(&hosts)));
            }
            v
        }
        "HTTPRoute" | "GRPCRoute" | "TLSRoute" => strs(obj.pointer("/spec/hostnames")),
        "Gateway" => each(obj.pointer("/spec/listeners"), "hostname")
            .iter()
            .filter_map(|h| h.as_str().map(str::to_string))
            .collect(),
        "Route" => obj
            .pointer("/spec/host")
            .and_then(Value::as_str)
            .map(|h| vec![h.to_string()])
            .unwrap_or_default(),
        "Service" => obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(EXTERNAL_DNS_ANNOTATION))
            .and_then(Value::as_str)
            .map(|a| a.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut out: Vec<String> = Vec::new();
    for h in raw.iter().map(|h| normalize(h)).filter(|h| !h.is_empty()) {
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// One hostname an object uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The hostname, normalized.
    pub hostname: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's kind.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// Since when: the object's creation.
    pub since: Timestamp,
}

impl Claim {
    /// The object, as denials name it: `namespace/Kind/name`.
    pub fn object(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.kind, self.name)
    }

    /// Whether both are the same object's.
    pub fn same_object(&self, o: &Claim) -> bool {
        self.namespace == o.namespace && self.kind == o.kind && self.name == o.name
    }

    /// Whether this claim is older than `o` (ties broken by namespace, kind, name).
    pub fn older_than(&self, o: &Claim) -> bool {
        (self.since, &self.namespace, &self.kind, &self.name)
            < (o.since, &o.namespace, &o.kind, &o.name)
    }
}

/// The claims of an object (`kind`, `metadata` and what [`hostnames_of`] reads); none without
/// a name. A missing or unreadable `creationTimestamp` counts as `now`.
pub fn claims_of(obj: &Value, now: Timestamp) -> Vec<Claim> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let meta = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let name = meta("name");
    if name.is_empty() {
        return Vec::new();
    }
    let since = meta("creationTimestamp").parse().unwrap_or(now);
    let namespace = meta("namespace");
    hostnames_of(kind, obj)
        .into_iter()
        .map(|hostname| Claim {
            hostname,
            namespace: namespace.clone(),
            kind: kind.to_string(),
            name: name.clone(),
            since,
        })
        .collect()
}

/// Claims by hostname, each list oldest first.
#[derive(Debug, Default, Clone)]
pub struct Index {
    by_host: HashMap<String, Vec<Claim>>,
}

impl Index {
    /// An index of `claims` (an object's claim given twice counts once).
    pub fn new(claims: impl IntoIterator<Item = Claim>) -> Self {
        let mut by_host: HashMap<String, Vec<Claim>> = HashMap::new();
        for c in claims {
            let list = by_host.entry(c.hostname.clone()).or_default();
            if !list.iter().any(|o| o.same_object(&c)) {
                list.push(c);
            }
        }
        for list in by_host.values_mut() {
            list.sort_by(|a, b| {
                (a.since, &a.namespace, &a.kind, &a.name).cmp(&(
                    b.since,
                    &b.namespace,
                    &b.kind,
                    &b.name,
                ))
            });
        }
        Self { by_host }
    }

    /// Every claim, by hostname then age.
    pub fn all(&self) -> Vec<&Claim> {
        let mut hosts: Vec<&String> = self.by_host.keys().collect();
        hosts.sort();
        hosts.into_iter().flat_map(|h| &self.by_host[h]).collect()
    }

    /// The oldest claim on `ask`'s hostname, other than `ask`'s object's, that `holds`: the
    /// name's holder.
    pub fn first_holding<'a>(
        &'a self,
        ask: &Claim,
        holds: impl Fn(&Claim) -> bool,
    ) -> Option<&'a Claim> {
        self.by_host
            .get(&ask.hostname)?
            .iter()
            .find(|c| !c.same_object(ask) && holds(c))
    }

    /// The claim that keeps `ask` from its name: the name's holder, when it is older than
    /// `ask` and of another namespace (as [`Claims::holder`] decides over two indexes).
    #[cfg(test)]
    pub fn holder<'a>(&'a self, ask: &Claim, holds: impl Fn(&Claim) -> bool) -> Option<&'a Claim> {
        self.first_holding(ask, holds).filter(|c| blocks(c, ask))
    }
}

/// Whether the holder `c` of a name keeps `ask` from it.
fn blocks(c: &Claim, ask: &Claim) -> bool {
    c.namespace != ask.namespace && c.older_than(ask)
}

/// The claims of a Service: its external-dns hostname annotation.
pub fn service_claims(svc: &k8s_openapi::api::core::v1::Service, now: Timestamp) -> Vec<Claim> {
    let m = &svc.metadata;
    let Some(list) = m
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXTERNAL_DNS_ANNOTATION))
    else {
        return Vec::new();
    };
    let mut out: Vec<Claim> = Vec::new();
    for h in list.split(',').map(normalize).filter(|h| !h.is_empty()) {
        if out.iter().any(|c| c.hostname == h) {
            continue;
        }
        out.push(Claim {
            hostname: h,
            namespace: m.namespace.clone().unwrap_or_default(),
            kind: "Service".into(),
            name: m.name.clone().unwrap_or_default(),
            since: m.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now),
        });
    }
    out
}

/// How long a claim the webhook admitted counts before a source shows its object (the API
/// server writes it after the webhook answers; the watch brings it a moment later).
const ADMITTED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Every object source's claims, indexed, and the claims the webhook admitted that no source
/// shows yet (so two requests in quick succession see each other).
#[derive(Default)]
pub struct Claims {
    by_source: Mutex<BTreeMap<Source, Vec<Claim>>>,
    index: Mutex<Arc<Index>>,
    admitted: Mutex<Vec<(Claim, Instant)>>,
}

impl Claims {
    /// Sets what `source` claims; the index is rebuilt when that changed.
    pub fn set(&self, source: Source, claims: Vec<Claim>) {
        let Ok(mut all) = self.by_source.lock() else {
            return;
        };
        if all.get(&source) == Some(&claims) {
            return;
        }
        all.insert(source, claims);
        let index = Index::new(all.values().flatten().cloned());
        if let Ok(mut a) = self.admitted.lock() {
            a.retain(|(c, at)| {
                at.elapsed() < ADMITTED_FOR
                    && !index
                        .by_host
                        .get(&c.hostname)
                        .is_some_and(|l| l.iter().any(|o| o.same_object(c)))
            });
        }
        if let Ok(mut i) = self.index.lock() {
            *i = Arc::new(index);
        }
    }

    /// Every source's claims, indexed.
    pub fn index(&self) -> Arc<Index> {
        self.index.lock().map(|i| i.clone()).unwrap_or_default()
    }

    /// Records claims the webhook admitted.
    pub fn admit(&self, claims: impl IntoIterator<Item = Claim>) {
        if let Ok(mut a) = self.admitted.lock() {
            a.retain(|(_, at)| at.elapsed() < ADMITTED_FOR);
            for c in claims {
                a.retain(|(o, _)| !(o.same_object(&c) && o.hostname == c.hostname));
                a.push((c, Instant::now()));
            }
        }
    }

    /// The claim that keeps `ask` from its name (see [`Index::holder`]), among the sources'
    /// claims and those admitted lately.
    pub fn holder(&self, ask: &Claim, holds: impl Fn(&Claim) -> bool) -> Option<Claim> {
        let from_sources = self.index().first_holding(ask, &holds).cloned();
        let admitted: Vec<Claim> = self
            .admitted
            .lock()
            .map(|a| {
                a.iter()
                    .filter(|(c, at)| at.elapsed() < ADMITTED_FOR && c.hostname == ask.hostname)
                    .map(|(c, _)| c.clone())
                    .collect()
            })
            .unwrap_or_default();
        let recent = Index::new(admitted).first_holding(ask, &holds).cloned();
        let first = match (from_sources, recent) {
            (Some(a), Some(b)) => Some(if b.older_than(&a) { b } else { a }),
            (a, b) => a.or(b),
        };
        first.filter(|c| blocks(c, ask))
    }
}

/// What happens to a hostname no grant covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoGrant {
    /// Refused.
    #[default]
    Deny,
    /// Allowed.
    Allow,
    /// Allowed, with the violation said (a warning; the audit lists it).
    Audit,
}

impl std::str::FromStr for NoGrant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(Self::Deny),
            "allow" => Ok(Self::Allow),
            "audit" => Ok(Self::Audit),
            other => Err(format!("{other:?}: must be deny, allow or audit")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn claim(ns: &str, kind: &str, name: &str, host: &str, since: &str) -> Claim {
        Claim {
            hostname: host.into(),
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
            since: t(since),
        }
    }

    /// The fields each kind's API reference names as its hostnames.
    #[test]
    fn hostnames_of_each_kind() {
        let v = |y: &str| -> Value { netlet_sdk::yaml::documents::<Value>(y).unwrap().remove(0) };
        for (obj, want) in [
            (
                "kind: Ingress\nspec: {rules: [{host: Shop.Example.com}, {http: {}}], tls: [{hosts: [shop.example.com, 'pay.example.com.']}]}",
                vec!["shop.example.com", "pay.example.com"],
            ),
            (
                "kind: HTTPRoute\nspec: {hostnames: [a.example.com, '*.b.example.com']}",
                vec!["a.example.com", "*.b.example.com"],
            ),
            (
                "kind: GRPCRoute\nspec: {hostnames: [g.example.com]}",
                vec!["g.example.com"],
            ),
            (
                "kind: TLSRoute\nspec: {hostnames: [t.example.com]}",
                vec!["t.example.com"],
            ),
            (
                "kind: Gateway\nspec: {listeners: [{name: a, hostname: gw.example.com}, {name: b}]}",
                vec!["gw.example.com"],
            ),
            (
                "kind: Route\nspec: {host: r.example.com}",
                vec!["r.example.com"],
            ),
            (
                "kind: Service\nmetadata: {annotations: {external-dns.alpha.kubernetes.io/hostname: 'x.example.com, y.example.com'}}",
                vec!["x.example.com", "y.example.com"],
            ),
            ("kind: Service\nmetadata: {annotations: {a: b}}", vec![]),
            ("kind: ConfigMap\ndata: {host: c.example.com}", vec![]),
        ] {
            let o = v(obj);
            let kind = o["kind"].as_str().unwrap().to_string();
            assert_eq!(hostnames_of(&kind, &o), want, "{obj}");
        }
    }

    #[test]
    fn claims_carry_the_object_and_its_age() {
        let o: Value = serde_json::json!({"kind": "HTTPRoute", "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2026-01-02T03:04:05Z"}, "spec": {"hostnames": ["shop.example.com"]}});
        assert_eq!(
            claims_of(&o, t("2030-01-01T00:00:00Z")),
            [claim(
                "shop",
                "HTTPRoute",
                "web",
                "shop.example.com",
                "2026-01-02T03:04:05Z"
            )]
        );
        // Not created yet (a dry run, a manifest): now.
        let mut o2 = o.clone();
        o2["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("creationTimestamp");
        assert_eq!(
            claims_of(&o2, t("2030-01-01T00:00:00Z"))[0].since,
            t("2030-01-01T00:00:00Z")
        );
    }

    /// The oldest claim of another namespace holds the name, whatever order the claims came
    /// in; ties go by namespace, kind, name; one's own namespace and object never block.
    #[test]
    fn oldest_claim_holds_whatever_the_order() {
        let a = claim(
            "team-a",
            "HTTPRoute",
            "r",
            "shop.example.com",
            "2026-01-01T00:00:00Z",
        );
        let b = claim(
            "team-b",
            "Ingress",
            "i",
            "shop.example.com",
            "2026-01-01T00:00:05Z",
        );
        let a2 = claim(
            "team-a",
            "Ingress",
            "j",
            "shop.example.com",
            "2026-01-01T00:00:09Z",
        );
        for order in [
            vec![a.clone(), b.clone(), a2.clone()],
            vec![a2.clone(), b.clone(), a.clone()],
            vec![b.clone(), a2.clone(), a.clone()],
        ] {
            let idx = Index::new(order);
            assert_eq!(idx.holder(&b, |_| true), Some(&a));
            assert_eq!(idx.holder(&a, |_| true), None);
            // Same namespace, newer: reuses its own name.
            assert_eq!(idx.holder(&a2, |_| true), None);
            // A holder that no longer holds (its grant went): the next one, if any.
            assert_eq!(idx.holder(&b, |c| c.namespace != "team-a"), None);
        }
        // A tie: the namespace first in order holds it.
        let c = claim(
            "team-c",
            "HTTPRoute",
            "r",
            "shop.example.com",
            "2026-01-01T00:00:00Z",
        );
        let idx = Index::new([c.clone(), a.clone()]);
        assert_eq!(idx.holder(&c, |_| true), Some(&a));
        assert_eq!(idx.holder(&a, |_| true), None);
        // Another name is free.
        let other = claim(
            "team-b",
            "Ingress",
            "i",
            "pay.example.com",
            "2026-01-01T00:00:05Z",
        );
        assert_eq!(idx.holder(&other, |_| true), None);
    }
}
