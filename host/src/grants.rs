//! Decisions the host makes itself: `CheckDns` (with the node-local DNS server's policies and
//! pod map when it runs) and `CheckHostname` (hostname grants, with their modules), and the
//! module list of `ListPolicies`.
//!
//! Hostname matching is Gateway API's: a grant's `*.example.com` covers names with one or more
//! labels in place of `*` (never `example.com` itself); an exact name covers only itself. A
//! requested wildcard (`*.shop.example.com`) is covered by a wildcard grant that covers the
//! names it stands for, never by an exact one.

use std::sync::atomic::Ordering;

use netlet_sdk::proto::{
    CheckDnsRequest, CheckDnsResponse, CheckHostnameRequest, CheckHostnameResponse, DnsAction,
    HostnameClaim, HostnameGrant, PolicyModule, PolicyModuleCounters,
};

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

use crate::Host;
use crate::dns::policy::{Action, Client, Policies};
use crate::hostnames::{self, Claim, NoGrant};
use crate::wasm::{self, HostnameRequest, Label, Modules};

/// Whether grant hostname `pattern` covers requested `host` (trailing dots and case ignored;
/// no allocation: every claim a webhook request carries is compared with every grant).
pub fn hostname_covered(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            // "*.x" in the request stands for names with a label in place of "*": the part
            // before the suffix must be at least one label.
            let h = host.strip_prefix("*.").unwrap_or(host);
            let (hb, sb) = (h.as_bytes(), suffix.as_bytes());
            let wild_request = host.starts_with("*.");
            let longer = if wild_request {
                // "*.rest" covered when rest is the suffix itself or below it.
                hb.len() >= sb.len()
            } else {
                hb.len() > sb.len() + 1
            };
            longer
                && hb[hb.len() - sb.len()..].eq_ignore_ascii_case(sb)
                && (hb.len() == sb.len() || hb[hb.len() - sb.len() - 1] == b'.')
        }
        None => !host.starts_with("*.") && host.eq_ignore_ascii_case(pattern),
    }
}

/// A `HostnameGrant` manifest or API object (`apiVersion: netlet.io/v1alpha1`, cluster-scoped;
/// its spec is [`crate::crd::HostnameGrantSpec`]) in the contract's form, checked as an
/// ApplyPolicy caller's would be.
pub fn from_manifest(v: &serde_json::Value) -> Result<HostnameGrant, String> {
    if v.get("apiVersion").and_then(|a| a.as_str()) != Some("netlet.io/v1alpha1") {
        return Err("apiVersion: must be netlet.io/v1alpha1".into());
    }
    if v.pointer("/metadata/namespace")
        .and_then(|n| n.as_str())
        .is_some_and(|n| !n.is_empty())
    {
        return Err("metadata.namespace: a HostnameGrant is cluster-scoped".into());
    }
    let name = v
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    let spec: crate::crd::HostnameGrantSpec =
        serde_path_to_error::deserialize(v.get("spec").cloned().unwrap_or_default())
            .map_err(|e| format!("spec.{}: {}", e.path(), e.inner()))?;
    let g = HostnameGrant {
        key: Some(netlet_sdk::proto::PolicyKey {
            kind: netlet_sdk::proto::PolicyKind::HostnameGrant as i32,
            namespace: String::new(),
            name: name.to_string(),
        }),
        namespaces: spec.namespaces,
        namespace_selector: spec
            .namespace_selector
            .as_ref()
            .map(crate::netpol::selector),
        hostnames: spec.hostnames,
        module: spec.module,
        module_settings_json: spec
            .module_settings
            .map(|s| s.to_string())
            .unwrap_or_default(),
        module_sha256: spec.module_sha256,
    };
    crate::policy::check_alone(
        netlet_sdk::proto::ApplyPolicyRequest {
            hostname_grants: vec![g.clone()],
            ..Default::default()
        },
        "hostname_grants[0].",
    )?;
    Ok(g)
}

/// Checks the modules grants name (see [`wasm::check_policy_module`]).
pub fn check_modules(
    modules: &Modules,
    grants: &[HostnameGrant],
) -> Result<(), (usize, &'static str, String)> {
    for (i, g) in grants.iter().enumerate() {
        wasm::check_policy_module(
            modules,
            &g.module,
            wasm::World::HostnameGrant,
            &g.module_settings_json,
        )
        .map_err(|(field, why)| (i, field, why))?;
    }
    Ok(())
}

/// The modules as `ListPolicies` shows them.
pub fn module_list(modules: &Modules) -> Vec<PolicyModule> {
    modules
        .status()
        .into_iter()
        .map(|(s, c)| {
            let c = c.counters();
            let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            PolicyModule {
                name: s.spec.name.clone(),
                file: s.spec.path.display().to_string(),
                world: s.world.map(|w| w.as_str().to_string()).unwrap_or_default(),
                sha256: s.sha256.unwrap_or_default(),
                pinned_sha256: s.spec.sha256.clone().unwrap_or_default(),
                fail_open: s.spec.fail_open,
                error: s.error,
                loaded_at_unix: s
                    .loaded_at
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
                counters: Some(PolicyModuleCounters {
                    calls: l(&c.calls),
                    allow: l(&c.allow),
                    deny: l(&c.deny),
                    rewrite: l(&c.rewrite),
                    deadline: l(&c.deadline),
                    memory_limit: l(&c.memory),
                    trap: l(&c.trap),
                    bad_output: l(&c.bad_output),
                    unavailable: l(&c.unavailable),
                    reloads: l(&c.reloads),
                }),
            }
        })
        .collect()
}

impl Host {
    /// The pod at `address`, from the DNS server's map or the attachments.
    fn client_at(&self, address: &str) -> Option<Client> {
        let ip: std::net::IpAddr = address.parse().ok()?;
        if let Some(d) = &self.dns {
            return d.client(ip).map(|c| (*c).clone());
        }
        let pods = self.store.attachments().ok()?;
        pods.iter().find_map(|p| {
            let s = p.sandbox.as_ref()?;
            p.attachments
                .iter()
                .flat_map(|a| &a.ips)
                .any(|a| a.address.split('/').next() == Some(address))
                .then(|| Client {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    labels: s.labels.clone().into_iter().collect(),
                    search: Vec::new(),
                })
        })
    }

    /// CheckDns: the decision the node-local DNS server would make for this client and name.
    pub async fn check_dns(&self, req: &CheckDnsRequest) -> CheckDnsResponse {
        let client = self.client_at(&req.client_address).or_else(|| {
            (!req.namespace.is_empty()).then(|| Client {
                namespace: req.namespace.clone(),
                name: req.pod.clone(),
                labels: Default::default(),
                search: Vec::new(),
            })
        });
        let d = match &self.dns {
            Some(dns) => dns.decide(
                &req.client_address,
                client.as_ref(),
                &req.query_name,
                req.query_type as u16,
            ),
            None => {
                let list: Vec<_> = self
                    .policies
                    .lock()
                    .await
                    .table
                    .dns_policies()
                    .cloned()
                    .collect();
                let mut name = req.query_name.to_ascii_lowercase();
                if !name.ends_with('.') {
                    name.push('.');
                }
                Policies::new(list).decide(
                    &self.modules,
                    client.as_ref(),
                    &req.client_address,
                    &name,
                    req.query_type as u16,
                )
            }
        };
        let (action, rewrite) = match d.action {
            Action::Allow => (DnsAction::Allow, String::new()),
            Action::NxDomain => (DnsAction::Deny, String::new()),
            Action::Refused => (DnsAction::Refuse, String::new()),
            Action::Rewrite(to) => (DnsAction::Rewrite, to),
        };
        CheckDnsResponse {
            action: action as i32,
            policy: d.policy,
            reason: d.reason,
            module: d.module,
            rewrite,
        }
    }

    /// CheckHostname: the decision on one claim (see [`crate::hostnames`] for the rules),
    /// from the grants applied now, the namespaces' labels and every source's claims.
    pub async fn check_hostname(&self, req: &CheckHostnameRequest) -> CheckHostnameResponse {
        let grants = self.hostname_grants().await;
        let namespaces = self.cluster_objects().namespaces;
        let since = req
            .claimed_since
            .as_ref()
            .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
            .unwrap_or_else(Timestamp::now);
        let ask = Claim {
            hostname: hostnames::normalize(&req.hostname),
            namespace: req.namespace.clone(),
            kind: req.object_kind.clone(),
            name: req.object_name.clone(),
            since,
        };
        self.decide_hostname(&grants, &namespaces, &ask)
    }

    /// The hostname grants applied now (a snapshot kept per policy generation: a webhook
    /// request does not copy them).
    pub async fn hostname_grants(&self) -> Arc<Vec<HostnameGrant>> {
        let policies = self.policies.lock().await;
        let generation = policies.table.generation();
        let mut cached = self.grant_snapshot.lock().unwrap();
        // Generation 0 holds nothing, as the empty snapshot a host starts with.
        if cached.0 != generation {
            *cached = (
                generation,
                Arc::new(policies.table.hostname_grants().cloned().collect()),
            );
        }
        cached.1.clone()
    }

    /// The decision on claim `ask`: a grant covering the name must list the namespace (and
    /// its module agree), or, for a name no grant covers, the node's `noGrant` mode decides;
    /// then no older claim of another namespace may hold the name.
    pub fn decide_hostname(
        &self,
        grants: &[HostnameGrant],
        namespaces: &Namespaces,
        ask: &Claim,
    ) -> CheckHostnameResponse {
        let governing: Vec<(&HostnameGrant, &String)> = grants
            .iter()
            .filter_map(|g| {
                let p = g
                    .hostnames
                    .iter()
                    .find(|h| hostname_covered(h, &ask.hostname))?;
                Some((g, p))
            })
            .collect();
        let out = if governing.is_empty() {
            let why = format!("no grant covers {:?}", ask.hostname);
            match self.settings.no_grant {
                NoGrant::Deny => {
                    return denied(format!("{why} (hostnames.noGrant: deny)"));
                }
                NoGrant::Allow => CheckHostnameResponse {
                    allowed: true,
                    reason: format!("{why}; allowed (hostnames.noGrant: allow)"),
                    ..Default::default()
                },
                NoGrant::Audit => CheckHostnameResponse {
                    allowed: true,
                    audit: true,
                    reason: format!("{why}; allowed for audit only (hostnames.noGrant: audit)"),
                    ..Default::default()
                },
            }
        } else {
            let Some((g, pattern)) = governing
                .iter()
                .find(|(g, _)| lists(g, &ask.namespace, namespaces))
            else {
                let names: Vec<&str> = governing
                    .iter()
                    .filter_map(|(g, _)| g.key.as_ref().map(|k| k.name.as_str()))
                    .collect();
                return denied(format!(
                    "no grant lets namespace {:?} use {:?} (it is governed by {})",
                    ask.namespace,
                    ask.hostname,
                    names.join(", ")
                ));
            };
            let d = self.grant_module(g, pattern, namespaces, ask);
            if !d.allowed {
                return d;
            }
            d
        };
        // A claim holds its name while its namespace may use it by the grants (modules are
        // not asked again for others' claims); a name no grant covers is held by any claim.
        let holds = |c: &Claim| {
            governing.is_empty()
                || governing
                    .iter()
                    .any(|(g, _)| lists(g, &c.namespace, namespaces))
        };
        if let Some(h) = self.claims.holder(ask, holds) {
            return CheckHostnameResponse {
                allowed: false,
                reason: format!(
                    "{:?} is held by {} since {}",
                    ask.hostname,
                    h.object(),
                    h.since
                ),
                held_by: h.object(),
                held_since: Some(prost_types::Timestamp {
                    seconds: h.since.as_second(),
                    nanos: h.since.subsec_nanosecond(),
                }),
                module: out.module,
                ..Default::default()
            };
        }
        out
    }

    /// The verdict of grant `g` (covering the name with `pattern`, listing the namespace):
    /// allowed, unless its module says otherwise.
    fn grant_module(
        &self,
        g: &HostnameGrant,
        pattern: &str,
        namespaces: &Namespaces,
        ask: &Claim,
    ) -> CheckHostnameResponse {
        let name = g.key.as_ref().map(|k| k.name.clone()).unwrap_or_default();
        if g.module.is_empty() {
            return CheckHostnameResponse {
                allowed: true,
                reason: format!("granted by {name:?} for {pattern:?}"),
                grant: name,
                ..Default::default()
            };
        }
        let settings = if g.module_settings_json.is_empty() {
            "{}"
        } else {
            &g.module_settings_json
        };
        let r = HostnameRequest {
            namespace: ask.namespace.clone(),
            namespace_labels: namespaces
                .get(&ask.namespace)
                .into_iter()
                .flatten()
                .map(|(key, value)| Label {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            hostname: ask.hostname.clone(),
            object_kind: ask.kind.clone(),
            object_name: ask.name.clone(),
        };
        let pinned_mismatch = !g.module_sha256.is_empty()
            && self
                .modules
                .sha256(&g.module)
                .is_some_and(|s| !s.eq_ignore_ascii_case(&g.module_sha256));
        let (allowed, reason) = if pinned_mismatch {
            (
                false,
                format!(
                    "module {:?}: loaded sha256 is not the grant's pin",
                    g.module
                ),
            )
        } else {
            match self.modules.check_hostname(&g.module, settings, &r) {
                Ok(d) => (d.allowed, d.reason),
                Err(f) => {
                    let open = self.modules.fails_open(&g.module).unwrap_or(false);
                    (
                        open,
                        format!(
                            "module failed ({f}); failing {}",
                            if open { "open" } else { "closed" }
                        ),
                    )
                }
            }
        };
        CheckHostnameResponse {
            allowed,
            grant: if allowed { name } else { String::new() },
            reason,
            module: g.module.clone(),
            ..Default::default()
        }
    }

    /// Every claim the object sources hold, each with its decision now: the audit.
    pub async fn hostname_audit(&self) -> Vec<HostnameClaim> {
        let grants = self.hostname_grants().await;
        let namespaces = self.cluster_objects().namespaces;
        let index = self.claims.index();
        index
            .all()
            .into_iter()
            .map(|c| HostnameClaim {
                hostname: c.hostname.clone(),
                namespace: c.namespace.clone(),
                kind: c.kind.clone(),
                name: c.name.clone(),
                since: Some(prost_types::Timestamp {
                    seconds: c.since.as_second(),
                    nanos: c.since.subsec_nanosecond(),
                }),
                decision: Some(self.decide_hostname(&grants, &namespaces, c)),
            })
            .collect()
    }
}

/// Namespaces' labels by name.
pub type Namespaces = HashMap<String, HashMap<String, String>>;

/// Whether grant `g` lists namespace `ns`: by name, `*`, or its namespace selector (a
/// namespace not known yet carries only its name label).
pub fn lists(g: &HostnameGrant, ns: &str, namespaces: &Namespaces) -> bool {
    g.namespaces.iter().any(|n| n == "*" || n == ns)
        || g.namespace_selector
            .as_ref()
            .is_some_and(|sel| match namespaces.get(ns) {
                Some(l) => netlet_sdk::labels::matches(sel, l),
                None => netlet_sdk::labels::matches(
                    sel,
                    &HashMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())]),
                ),
            })
}

fn denied(reason: String) -> CheckHostnameResponse {
    CheckHostnameResponse {
        allowed: false,
        reason,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::hostname_covered;

    #[test]
    fn gateway_api_hostname_matching() {
        // Written from the Gateway API's HTTPRoute hostnames rules.
        for (pattern, host, want) in [
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "aexample.com", false),
            ("*.example.com", "*.example.com", true),
            ("*.example.com", "*.a.example.com", true),
            ("*.example.com", "*.aexample.com", false),
            ("*.example.com", "*.com", false),
            ("*.Example.com", "A.example.COM.", true),
            ("shop.example.com", "shop.example.com", true),
            ("shop.example.com", "Shop.Example.com.", true),
            ("shop.example.com", "a.shop.example.com", false),
            ("shop.example.com", "*.example.com", false),
            ("a.example.com", "*.example.com", false),
        ] {
            assert_eq!(hostname_covered(pattern, host), want, "{pattern} {host}");
        }
    }
}
