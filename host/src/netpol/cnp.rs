//! `policy.networking.k8s.io` admin policies as the contract carries them
//! (`netlet.v1alpha1.ClusterNetworkPolicy`): v1alpha2 ClusterNetworkPolicy (Admin and Baseline
//! tiers) and the older v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy, which many
//! clusters still have. The v1alpha1 kinds map onto the v1alpha2 one: an AdminNetworkPolicy is
//! an Admin tier policy (its `Allow` is `Accept`), the BaselineAdminNetworkPolicy (a singleton
//! named `default`) is a Baseline tier policy at priority 1000. Their keys are `anp-<name>` and
//! `banp-<name>`, so they never replace a ClusterNetworkPolicy of the same name.
//!
//! Ports: v1alpha1 `ports` (`portNumber`, `portRange`, `namedPort`) and v1alpha2 `protocols`
//! (`tcp`/`udp`/`sctp` with `destinationPort` as a number or range, `destinationNamedPort`);
//! the spellings of the API's development versions (`match`, `port`, `namedPort`) are read
//! too. A `domainNames` peer (it needs the DNS issue) matches nothing, which for an Accept rule
//! is what the API asks of a peer an implementation cannot resolve.

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use netlet_sdk::proto::{
    ClusterNetworkPolicy, ClusterNetworkPolicyPeer, ClusterNetworkPolicyRule, ClusterPolicyAction,
    ClusterPolicyTier, NetworkPolicyPort, PolicyKey, PolicyKind, Protocol,
};
use serde::Deserialize;
use serde_json::Value;

use super::selector;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    kind: String,
    #[serde(default)]
    metadata: meta::ObjectMeta,
    spec: Spec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    tier: Option<String>,
    priority: Option<i64>,
    subject: Subject,
    #[serde(default)]
    ingress: Vec<Rule>,
    #[serde(default)]
    egress: Vec<Rule>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Subject {
    namespaces: Option<meta::LabelSelector>,
    pods: Option<NamespacedPod>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NamespacedPod {
    #[serde(default)]
    namespace_selector: meta::LabelSelector,
    #[serde(default)]
    pod_selector: meta::LabelSelector,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    name: String,
    action: String,
    #[serde(default)]
    from: Vec<Peer>,
    #[serde(default)]
    to: Vec<Peer>,
    ports: Option<Vec<Value>>,
    protocols: Option<Vec<Value>>,
    #[serde(rename = "match")]
    matches: Option<Vec<Value>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Peer {
    namespaces: Option<meta::LabelSelector>,
    pods: Option<NamespacedPod>,
    nodes: Option<meta::LabelSelector>,
    networks: Option<Vec<String>>,
    domain_names: Option<Vec<String>>,
}

fn protocol(name: &str) -> Result<Protocol, String> {
    match name {
        "TCP" | "tcp" => Ok(Protocol::Tcp),
        "UDP" | "udp" => Ok(Protocol::Udp),
        "SCTP" | "sctp" => Ok(Protocol::Sctp),
        other => Err(format!("{other:?} is not TCP, UDP or SCTP")),
    }
}

fn number(v: &Value, what: &str) -> Result<u32, String> {
    v.as_u64()
        .filter(|n| (1..=65535).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| format!("{what}: {v} is not a port"))
}

fn range(v: &Value) -> Result<(u32, u32), String> {
    Ok((
        number(v.get("start").unwrap_or(&Value::Null), "start")?,
        number(v.get("end").unwrap_or(&Value::Null), "end")?,
    ))
}

fn named(name: &str, proto: Protocol) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: proto as i32,
        named_port: name.to_string(),
        ..Default::default()
    }
}

fn numbered(proto: Protocol, (port, end_port): (u32, u32)) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: proto as i32,
        port,
        end_port: if end_port == port { 0 } else { end_port },
        ..Default::default()
    }
}

/// One v1alpha1 `ports` item.
fn v1alpha1_port(v: &Value) -> Result<Vec<NetworkPolicyPort>, String> {
    let proto = |o: &Value| protocol(o.get("protocol").and_then(Value::as_str).unwrap_or("TCP"));
    if let Some(n) = v.get("namedPort").and_then(Value::as_str) {
        return Ok(vec![named(n, Protocol::Tcp)]);
    }
    if let Some(p) = v.get("portNumber") {
        let n = number(p.get("port").unwrap_or(&Value::Null), "portNumber.port")?;
        return Ok(vec![numbered(proto(p)?, (n, n))]);
    }
    if let Some(p) = v.get("portRange") {
        return Ok(vec![numbered(proto(p)?, range(p)?)]);
    }
    Err("one of portNumber, portRange, namedPort is required".into())
}

/// One v1alpha2 `protocols` (or `match`) item.
fn v1alpha2_protocol(v: &Value) -> Result<Vec<NetworkPolicyPort>, String> {
    for key in ["destinationNamedPort", "namedPort"] {
        if let Some(n) = v.get(key).and_then(Value::as_str) {
            return Ok(vec![named(n, Protocol::Tcp)]);
        }
    }
    let mut out = Vec::new();
    for (key, proto) in [
        ("tcp", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("sctp", Protocol::Sctp),
    ] {
        let Some(m) = v.get(key) else { continue };
        let items: Vec<&Value> = match m {
            Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        for item in items {
            let port = ["destinationPort", "port", "Port"]
                .iter()
                .find_map(|k| item.get(*k));
            match port {
                // No port: every port of the protocol.
                None => out.push(numbered(proto, (0, 0))),
                Some(p) => {
                    if let Some(n) = p.get("number") {
                        let n = number(n, &format!("{key}.number"))?;
                        out.push(numbered(proto, (n, n)));
                    } else if let Some(r) = p.get("range").or_else(|| p.get("portRange")) {
                        out.push(numbered(proto, range(r)?));
                    } else {
                        return Err(format!("{key}: a port is a number or a range"));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err("one of tcp, udp, sctp, destinationNamedPort is required".into());
    }
    Ok(out)
}

fn peer(p: &Peer) -> Option<ClusterNetworkPolicyPeer> {
    let mut out = ClusterNetworkPolicyPeer::default();
    if let Some(ns) = &p.namespaces {
        out.namespace_selector = Some(selector(ns));
    } else if let Some(pods) = &p.pods {
        out.namespace_selector = Some(selector(&pods.namespace_selector));
        out.pod_selector = Some(selector(&pods.pod_selector));
    } else if let Some(n) = &p.nodes {
        out.node_selector = Some(selector(n));
    } else if let Some(n) = &p.networks {
        out.networks = n.clone();
    } else {
        // domainNames, or a peer kind this version does not know: matches nothing.
        let _ = &p.domain_names;
        return None;
    }
    Some(out)
}

fn rule(
    r: &Rule,
    egress: bool,
    v1alpha1: bool,
) -> Result<Option<ClusterNetworkPolicyRule>, String> {
    let action = match r.action.as_str() {
        "Accept" => ClusterPolicyAction::Accept,
        "Allow" if v1alpha1 => ClusterPolicyAction::Accept,
        "Deny" => ClusterPolicyAction::Deny,
        "Pass" => ClusterPolicyAction::Pass,
        other => return Err(format!("action: {other:?} is not Accept, Deny or Pass")),
    };
    let peers_in = if egress { &r.to } else { &r.from };
    if peers_in.is_empty() {
        return Err(format!(
            "{}: at least one peer",
            if egress { "to" } else { "from" }
        ));
    }
    let peers: Vec<_> = peers_in.iter().filter_map(peer).collect();
    if peers.is_empty() && action == ClusterPolicyAction::Accept {
        // Only peers that resolve to nothing: the rule accepts nothing.
        return Ok(None);
    }
    let mut ports = Vec::new();
    for (i, p) in r.ports.iter().flatten().enumerate() {
        ports.extend(v1alpha1_port(p).map_err(|e| format!("ports[{i}]: {e}"))?);
    }
    for (field, list) in [("protocols", &r.protocols), ("match", &r.matches)] {
        for (i, p) in list.iter().flatten().enumerate() {
            ports.extend(v1alpha2_protocol(p).map_err(|e| format!("{field}[{i}]: {e}"))?);
        }
    }
    // A Deny or Pass rule whose peers are all unknown fails closed: it matches everything.
    let peers = if peers.is_empty() {
        vec![ClusterNetworkPolicyPeer {
            networks: vec!["0.0.0.0/0".into(), "::/0".into()],
            ..Default::default()
        }]
    } else {
        peers
    };
    Ok(Some(ClusterNetworkPolicyRule {
        name: r.name.clone(),
        action: action as i32,
        peers,
        ports,
    }))
}

/// The contract's ClusterNetworkPolicy for a ClusterNetworkPolicy, AdminNetworkPolicy or
/// BaselineAdminNetworkPolicy object, or why it cannot be one (`field: why`).
pub fn cluster_network_policy(v: &Value) -> Result<ClusterNetworkPolicy, String> {
    let o: Object = serde_path_to_error::deserialize(v.clone())
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let name = o.metadata.name.clone().unwrap_or_default();
    let (tier, priority, key_name, v1alpha1) = match o.kind.as_str() {
        "ClusterNetworkPolicy" => {
            let tier = match o.spec.tier.as_deref() {
                Some("Admin") => ClusterPolicyTier::Admin,
                Some("Baseline") => ClusterPolicyTier::Baseline,
                other => return Err(format!("spec.tier: {other:?} is not Admin or Baseline")),
            };
            (tier, o.spec.priority, name, false)
        }
        "AdminNetworkPolicy" => (
            ClusterPolicyTier::Admin,
            o.spec.priority,
            format!("anp-{name}"),
            true,
        ),
        "BaselineAdminNetworkPolicy" => (
            ClusterPolicyTier::Baseline,
            Some(1000),
            format!("banp-{name}"),
            true,
        ),
        other => return Err(format!("kind: {other} is not an admin network policy")),
    };
    let priority = priority
        .filter(|p| (0..=1000).contains(p))
        .ok_or_else(|| format!("spec.priority: {priority:?} is not in 0..=1000"))?
        as u32;
    let (ns_sel, pod_sel) = match (&o.spec.subject.namespaces, &o.spec.subject.pods) {
        (Some(ns), None) => (selector(ns), None),
        (None, Some(p)) => (
            selector(&p.namespace_selector),
            Some(selector(&p.pod_selector)),
        ),
        _ => return Err("spec.subject: exactly one of namespaces, pods".into()),
    };
    let rules = |list: &[Rule], egress: bool| -> Result<Vec<_>, String> {
        let dir = if egress { "egress" } else { "ingress" };
        let mut out = Vec::new();
        for (i, r) in list.iter().enumerate() {
            out.extend(rule(r, egress, v1alpha1).map_err(|e| format!("spec.{dir}[{i}].{e}"))?);
        }
        Ok(out)
    };
    let out = ClusterNetworkPolicy {
        key: Some(PolicyKey {
            kind: PolicyKind::ClusterNetworkPolicy as i32,
            namespace: String::new(),
            name: key_name,
        }),
        tier: tier as i32,
        priority,
        subject_namespace_selector: Some(ns_sel),
        subject_pod_selector: pod_sel,
        selected_set: String::new(),
        ingress: rules(&o.spec.ingress, false)?,
        egress: rules(&o.spec.egress, true)?,
    };
    super::checked(
        netlet_sdk::proto::ApplyPolicyRequest {
            cluster_network_policies: vec![out.clone()],
            ..Default::default()
        },
        "cluster_network_policies[0].",
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ClusterNetworkPolicy, String> {
        cluster_network_policy(&netlet_sdk::yaml::from_str::<Value>(yaml).unwrap())
    }

    #[test]
    fn the_three_kinds_convert() {
        let cnp = parse(
            r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: sensitive}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {matchLabels: {tier: prod}}, podSelector: {}}}
  ingress:
  - {name: pass-monitoring, action: Pass, from: [{namespaces: {matchLabels: {team: monitoring}}}]}
  - {name: deny-rest, action: Deny, from: [{namespaces: {}}]}
  egress:
  - name: dns
    action: Accept
    to: [{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}}]
    protocols: [{udp: {destinationPort: {number: 53}}}, {tcp: {destinationPort: {range: {start: 8000, end: 8080}}}}, {destinationNamedPort: dns}]
  - {name: ext, action: Deny, to: [{networks: [10.0.0.0/8]}, {nodes: {}}, {domainNames: [a.example.com]}]}
"#,
        )
        .unwrap();
        assert_eq!(cnp.key.as_ref().unwrap().name, "sensitive");
        assert_eq!(
            (cnp.tier, cnp.priority),
            (ClusterPolicyTier::Admin as i32, 10)
        );
        assert!(cnp.subject_pod_selector.is_some());
        assert_eq!(cnp.ingress[0].action, ClusterPolicyAction::Pass as i32);
        let ports = &cnp.egress[0].ports;
        assert_eq!(
            (ports[0].protocol, ports[0].port, ports[0].end_port),
            (Protocol::Udp as i32, 53, 0)
        );
        assert_eq!((ports[1].port, ports[1].end_port), (8000, 8080));
        assert_eq!(ports[2].named_port, "dns");
        assert_eq!(cnp.egress[1].peers.len(), 2, "domainNames left out");

        let anp = parse(
            r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: allow-mon}
spec:
  priority: 3
  subject: {namespaces: {}}
  ingress:
  - {action: Allow, from: [{namespaces: {matchLabels: {team: mon}}}], ports: [{portNumber: {protocol: UDP, port: 9090}}, {portRange: {start: 1, end: 9}}]}
"#,
        )
        .unwrap();
        assert_eq!(anp.key.as_ref().unwrap().name, "anp-allow-mon");
        assert_eq!(anp.ingress[0].action, ClusterPolicyAction::Accept as i32);
        assert_eq!(anp.ingress[0].ports[0].protocol, Protocol::Udp as i32);
        assert_eq!(anp.ingress[0].ports[1].end_port, 9);

        let banp = parse(
            "kind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]\n",
        )
        .unwrap();
        assert_eq!(
            (banp.tier, banp.priority),
            (ClusterPolicyTier::Baseline as i32, 1000)
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (spec, field) in [
            (
                "tier: Admin\n  priority: 1001\n  subject: {namespaces: {}}",
                "spec.priority",
            ),
            (
                "tier: Middle\n  priority: 1\n  subject: {namespaces: {}}",
                "spec.tier",
            ),
            ("tier: Admin\n  priority: 1\n  subject: {}", "spec.subject"),
            (
                "tier: Baseline\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Pass, from: [{namespaces: {}}]}]",
                "ingress[0].action",
            ),
            (
                "tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [10.0.0.0/33]}]}]",
                "egress[0].peers[0].networks[0]",
            ),
            (
                "tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: []}]",
                "spec.ingress[0].from",
            ),
        ] {
            let e = parse(&format!(
                "kind: ClusterNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  {spec}\n"
            ))
            .unwrap_err();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }
}
