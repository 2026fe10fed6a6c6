//! DNS policy: which names the pods of a namespace may resolve.
//!
//! The policies that apply to a query are the cluster-wide ones (empty namespace) and those of
//! the asking pod's namespace whose pod selector matches its labels; a client that is no pod
//! netlet attached gets the cluster-wide ones only. Every applicable policy must allow the name;
//! the first (cluster-wide first, then by name) that does not decides. Within one policy:
//! a `deny` pattern denies; else an `allow` pattern allows; else its module (if any) decides;
//! else its `default_action`. A module that fails gives the policy's `failure_action`, or the
//! module's own failure mode when that is unspecified.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use netlet_sdk::dnsname::pattern_matches;
use netlet_sdk::proto::{DnsAction, DnsPolicy, LabelSelector};

use crate::wasm::{self, DenyCode, DnsQuery, DnsVerdict, Label, Modules, PodIdentity};

/// The pod behind a client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// The search list the pod was given (fully qualified, lower case, trailing dots).
    pub search: Vec<String>,
}

/// What becomes of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Resolve it.
    Allow,
    /// Answer NXDOMAIN.
    NxDomain,
    /// Answer REFUSED.
    Refused,
    /// Resolve this name instead, answering with a CNAME to it.
    Rewrite(String),
}

/// A decision and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub action: Action,
    /// The policy that decided (`namespace/name`, or `name` for a cluster-wide one); empty when
    /// no policy applies.
    pub policy: String,
    /// The module that decided, when one did.
    pub module: String,
    /// Why.
    pub reason: String,
}

impl Decision {
    fn allow_all() -> Self {
        Decision {
            action: Action::Allow,
            policy: String::new(),
            module: String::new(),
            reason: "no DNS policy applies".into(),
        }
    }
}

/// One policy, ready to evaluate.
#[derive(Debug)]
struct Compiled {
    id: String,
    namespace: String,
    selector: Option<LabelSelector>,
    allow: Vec<String>,
    deny: Vec<String>,
    default: Action,
    deny_action: Action,
    module: String,
    settings: String,
    pin: String,
    failure: Option<Action>,
    server_side_search: bool,
    block_shadowing: bool,
    allow_shadowing: bool,
    /// Egress by name: how long an answered address stays allowed at least.
    egress_min_ttl: Option<std::time::Duration>,
    decisions: Counts,
}

/// Decisions of one policy.
#[derive(Debug, Default)]
pub struct Counts {
    /// Allowed.
    pub allow: AtomicU64,
    /// Denied (NXDOMAIN or REFUSED).
    pub deny: AtomicU64,
    /// Rewritten.
    pub rewrite: AtomicU64,
    /// Decided by the failure verdict (the module failed).
    pub failed: AtomicU64,
}

fn action(a: i32, unspecified: Action) -> Action {
    match DnsAction::try_from(a) {
        Ok(DnsAction::Allow) => Action::Allow,
        Ok(DnsAction::Deny) => Action::NxDomain,
        Ok(DnsAction::Refuse) => Action::Refused,
        _ => unspecified,
    }
}

/// Seconds an address answered under egress by name stays allowed at least, by default.
pub const DEFAULT_EGRESS_MIN_TTL: u64 = 30;

/// The DNS policies in force.
#[derive(Debug, Default)]
pub struct Policies {
    list: Vec<Compiled>,
}

/// What the policies say about search expansion and shadowing for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behaviour {
    /// Expand the search list in the server.
    pub server_side_search: bool,
    /// Refuse cluster names that shadow public ones.
    pub block_shadowing: bool,
}

impl Policies {
    /// Compiles the policies (as the policy table holds them: validated).
    pub fn new(policies: impl IntoIterator<Item = DnsPolicy>) -> Self {
        let mut list: Vec<Compiled> = policies
            .into_iter()
            .filter_map(|p| {
                let key = p.key?;
                let id = if key.namespace.is_empty() {
                    key.name.clone()
                } else {
                    format!("{}/{}", key.namespace, key.name)
                };
                let default = action(p.default_action, Action::Allow);
                let deny_action = if default == Action::Refused {
                    Action::Refused
                } else {
                    Action::NxDomain
                };
                Some(Compiled {
                    id,
                    namespace: key.namespace,
                    selector: p.pod_selector,
                    allow: p.allow,
                    deny: p.deny,
                    default,
                    deny_action,
                    module: p.module,
                    settings: if p.module_settings_json.is_empty() {
                        "{}".into()
                    } else {
                        p.module_settings_json
                    },
                    pin: p.module_sha256,
                    failure: match DnsAction::try_from(p.failure_action) {
                        Ok(DnsAction::Unspecified) | Err(_) => None,
                        _ => Some(action(p.failure_action, Action::Refused)),
                    },
                    server_side_search: p.server_side_search,
                    block_shadowing: p.block_tld_shadowing,
                    allow_shadowing: p.allow_tld_shadowing,
                    egress_min_ttl: p.egress_by_name.then(|| {
                        std::time::Duration::from_secs(match p.egress_min_ttl_seconds {
                            0 => DEFAULT_EGRESS_MIN_TTL,
                            n => u64::from(n),
                        })
                    }),
                    decisions: Counts::default(),
                })
            })
            .collect();
        // Cluster-wide first, then by namespace and name.
        list.sort_by(|a, b| {
            (!a.namespace.is_empty(), &a.id).cmp(&(!b.namespace.is_empty(), &b.id))
        });
        Policies { list }
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn applicable<'a>(
        &'a self,
        client: Option<&'a Client>,
    ) -> impl Iterator<Item = &'a Compiled> + 'a {
        self.list.iter().filter(move |p| {
            if p.namespace.is_empty() {
                return true;
            }
            let Some(c) = client else { return false };
            p.namespace == c.namespace
                && p.selector
                    .as_ref()
                    .is_none_or(|s| netlet_sdk::labels::matches(s, &c.labels))
        })
    }

    /// Whether any policy turns egress by name on.
    pub fn any_egress(&self) -> bool {
        self.list.iter().any(|p| p.egress_min_ttl.is_some())
    }

    /// Egress by name for a client: `Some(shortest time an answered address stays allowed)`
    /// when any applicable policy turns it on (the longest of their minimums).
    pub fn egress(&self, client: Option<&Client>) -> Option<std::time::Duration> {
        self.applicable(client)
            .filter_map(|p| p.egress_min_ttl)
            .max()
    }

    /// Search expansion and shadowing for a client: on when any applicable policy turns it on,
    /// else the node's defaults; shadowing allowed when any applicable policy opts out.
    pub fn behaviour(&self, client: Option<&Client>, defaults: Behaviour) -> Behaviour {
        let mut b = defaults;
        let mut allow = false;
        for p in self.applicable(client) {
            b.server_side_search |= p.server_side_search;
            b.block_shadowing |= p.block_shadowing;
            allow |= p.allow_shadowing;
        }
        b.block_shadowing &= !allow;
        b
    }

    /// Decides a query for `name` (lower case, trailing dot) of type `qtype`.
    pub fn decide(
        &self,
        modules: &Modules,
        client: Option<&Client>,
        client_address: &dyn std::fmt::Display,
        name: &str,
        qtype: u16,
    ) -> Decision {
        let mut last = None;
        for p in self.applicable(client) {
            let d = self.decide_one(p, modules, client, client_address, name, qtype);
            let counter = match &d.action {
                Action::Allow => &p.decisions.allow,
                Action::Rewrite(_) => &p.decisions.rewrite,
                _ => &p.decisions.deny,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if d.action != Action::Allow {
                return d;
            }
            last = Some(d);
        }
        last.unwrap_or_else(Decision::allow_all)
    }

    fn decide_one(
        &self,
        p: &Compiled,
        modules: &Modules,
        client: Option<&Client>,
        client_address: &dyn std::fmt::Display,
        name: &str,
        qtype: u16,
    ) -> Decision {
        let d = |action: Action, module: &str, reason: String| Decision {
            action,
            policy: p.id.clone(),
            module: module.to_string(),
            reason,
        };
        if let Some(pat) = p.deny.iter().find(|pat| pattern_matches(pat, name)) {
            return d(p.deny_action.clone(), "", format!("denied by {pat:?}"));
        }
        if let Some(pat) = p.allow.iter().find(|pat| pattern_matches(pat, name)) {
            return d(Action::Allow, "", format!("allowed by {pat:?}"));
        }
        if p.module.is_empty() {
            let what = match p.default {
                Action::Allow => "allow",
                Action::Refused => "refuse",
                _ => "deny",
            };
            return d(
                p.default.clone(),
                "",
                format!("no pattern matched; default {what}"),
            );
        }
        let failure = |why: String| {
            p.decisions.failed.fetch_add(1, Ordering::Relaxed);
            let fail_open = modules.fails_open(&p.module).unwrap_or(false);
            let action = p.failure.clone().unwrap_or(if fail_open {
                Action::Allow
            } else {
                Action::Refused
            });
            let mode = if action == Action::Allow {
                "failing open"
            } else {
                "failing closed"
            };
            d(action, &p.module, format!("module failed ({why}); {mode}"))
        };
        if !p.pin.is_empty()
            && modules
                .sha256(&p.module)
                .is_some_and(|s| !s.eq_ignore_ascii_case(&p.pin))
        {
            return failure(format!("loaded sha256 is not the policy's pin {}", p.pin));
        }
        let query = DnsQuery {
            pod: client.map(|c| PodIdentity {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                labels: c
                    .labels
                    .iter()
                    .map(|(k, v)| Label {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            }),
            client_address: client_address.to_string(),
            name: name.to_string(),
            qtype,
            qclass: 1,
        };
        match modules.check_dns(&p.module, &p.settings, &query) {
            Ok(out) => {
                let action = match out.verdict {
                    DnsVerdict::Allow => Action::Allow,
                    DnsVerdict::Deny(DenyCode::Nxdomain) => Action::NxDomain,
                    DnsVerdict::Deny(DenyCode::Refused) => Action::Refused,
                    DnsVerdict::Rewrite(to) => {
                        let mut to = to.to_ascii_lowercase();
                        if !to.ends_with('.') {
                            to.push('.');
                        }
                        Action::Rewrite(to)
                    }
                };
                d(action, &p.module, out.reason)
            }
            Err(f) => failure(f.to_string()),
        }
    }

    /// Decisions per policy: (policy, counts).
    pub fn counts(&self) -> Vec<(&str, &Counts)> {
        self.list
            .iter()
            .map(|p| (p.id.as_str(), &p.decisions))
            .collect()
    }

    /// Checks the modules the policies name (see [`wasm::check_policy_module`]). Returns
    /// (index in `policies`, field, why) of the first failure.
    pub fn check_modules(
        modules: &Modules,
        policies: &[DnsPolicy],
    ) -> Result<(), (usize, &'static str, String)> {
        for (i, p) in policies.iter().enumerate() {
            wasm::check_policy_module(
                modules,
                &p.module,
                wasm::World::DnsPolicy,
                &p.module_settings_json,
            )
            .map_err(|(field, why)| (i, field, why))?;
        }
        Ok(())
    }
}

/// A `DnsPolicy` manifest or API object (`apiVersion: netlet.io/v1alpha1`; its spec is
/// [`crate::crd::DnsPolicySpec`]) in the contract's form, checked as an ApplyPolicy caller's
/// would be. A policy without a namespace is cluster-wide.
///
/// ```yaml
/// apiVersion: netlet.io/v1alpha1
/// kind: DnsPolicy
/// metadata: {name: shop-dns, namespace: shop}
/// spec:
///   podSelector: {matchLabels: {app: web}}   # default: every pod of the namespace
///   allow: ["**.svc.cluster.local", "api.example.com"]
///   deny: ["*.evil.example"]
///   defaultAction: Deny                      # Allow (default), Deny (NXDOMAIN), Refuse
///   serverSideSearch: true
///   blockShadowing: true                     # or allowShadowing: true (the opt-out)
///   module: lists                            # a policyModules entry of the NodeConfig
///   moduleSettings: {default: deny}          # any YAML; given to the module as JSON
///   moduleSha256: "<64 hex digits>"
///   failureAction: Refuse                    # when the module fails
///   egressByName: true                       # pods may reach only what they resolved
///   egressMinTtlSeconds: 30                  # (default 30)
/// ```
pub fn from_manifest(v: &serde_json::Value) -> Result<DnsPolicy, String> {
    use crate::crd::DnsAction as A;
    if v.get("apiVersion").and_then(|a| a.as_str()) != Some("netlet.io/v1alpha1") {
        return Err("apiVersion: must be netlet.io/v1alpha1".into());
    }
    let name = v
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    let namespace = v
        .pointer("/metadata/namespace")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    let spec: crate::crd::DnsPolicySpec =
        serde_path_to_error::deserialize(v.get("spec").cloned().unwrap_or_default())
            .map_err(|e| format!("spec.{}: {}", e.path(), e.inner()))?;
    let act = |a: Option<A>| -> i32 {
        match a {
            None => DnsAction::Unspecified,
            Some(A::Allow) => DnsAction::Allow,
            Some(A::Deny) => DnsAction::Deny,
            Some(A::Refuse) => DnsAction::Refuse,
        }
        .into()
    };
    let p = DnsPolicy {
        key: Some(netlet_sdk::proto::PolicyKey {
            kind: netlet_sdk::proto::PolicyKind::DnsPolicy as i32,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        pod_selector: spec.pod_selector.as_ref().map(crate::netpol::selector),
        allow: spec.allow,
        deny: spec.deny,
        default_action: act(spec.default_action),
        server_side_search: spec.server_side_search,
        block_tld_shadowing: spec.block_shadowing,
        allow_tld_shadowing: spec.allow_shadowing,
        module: spec.module,
        module_settings_json: spec
            .module_settings
            .map(|s| s.to_string())
            .unwrap_or_default(),
        failure_action: act(spec.failure_action),
        module_sha256: spec.module_sha256,
        egress_by_name: spec.egress_by_name,
        egress_min_ttl_seconds: spec.egress_min_ttl_seconds,
    };
    crate::policy::check_alone(
        netlet_sdk::proto::ApplyPolicyRequest {
            dns_policies: vec![p.clone()],
            ..Default::default()
        },
        "dns_policies[0].",
    )?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ns: &str) -> Client {
        Client {
            namespace: ns.into(),
            name: "p".into(),
            labels: HashMap::new(),
            search: Vec::new(),
        }
    }

    #[test]
    fn a_namespace_can_opt_out_of_shadow_blocking() {
        let doc = |ns: &str, spec: &str| {
            serde_json::json!({
                "apiVersion": "netlet.io/v1alpha1",
                "kind": "DnsPolicy",
                "metadata": {"name": "p", "namespace": ns},
                "spec": serde_json::from_str::<serde_json::Value>(spec).unwrap(),
            })
        };
        let legacy = from_manifest(&doc("legacy", r#"{"allowShadowing": true}"#)).unwrap();
        let strict = from_manifest(&doc("strict", r#"{"blockShadowing": true}"#)).unwrap();
        let p = Policies::new([legacy, strict]);
        let node = |block| Behaviour {
            server_side_search: false,
            block_shadowing: block,
        };
        // The node blocks: the opted-out namespace alone may be shadowed.
        assert!(
            !p.behaviour(Some(&client("legacy")), node(true))
                .block_shadowing
        );
        assert!(
            p.behaviour(Some(&client("other")), node(true))
                .block_shadowing
        );
        assert!(p.behaviour(None, node(true)).block_shadowing);
        // The node allows: a namespace can still turn blocking on for itself.
        assert!(
            p.behaviour(Some(&client("strict")), node(false))
                .block_shadowing
        );
        assert!(
            !p.behaviour(Some(&client("other")), node(false))
                .block_shadowing
        );
        // Both on one policy: refused, by field.
        let both = from_manifest(&doc(
            "x",
            r#"{"allowShadowing": true, "blockShadowing": true}"#,
        ))
        .unwrap_err();
        assert!(both.starts_with("allow_tld_shadowing:"), "{both}");
    }
}
