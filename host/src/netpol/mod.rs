//! Kubernetes `networking.k8s.io/v1` NetworkPolicy objects as the contract carries them
//! (`netlet.v1alpha1.NetworkPolicy`), with the API's defaults made explicit: `policyTypes`
//! unset means Ingress, plus Egress when the policy has egress rules; a rule without `from` /
//! `to` admits every peer, one without `ports` every port; a port without a protocol is TCP.
//! The result is checked with ApplyPolicy's rules, so a manifest is held to what a socket
//! caller is.

use k8s_openapi::api::networking::v1 as knet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
pub mod cnp;
pub mod sets;

use netlet_sdk::proto::{
    LabelSelector, LabelSelectorRequirement, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicyRule, PolicyDirection, PolicyKey, PolicyKind, Protocol,
};

pub(crate) fn selector(s: &meta::LabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: s
            .match_labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        match_expressions: s
            .match_expressions
            .iter()
            .flatten()
            .map(|e| LabelSelectorRequirement {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

fn peer(p: &knet::NetworkPolicyPeer) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: p.pod_selector.as_ref().map(selector),
        namespace_selector: p.namespace_selector.as_ref().map(selector),
        ip_block_cidr: p
            .ip_block
            .as_ref()
            .map(|b| b.cidr.clone())
            .unwrap_or_default(),
        ip_block_except: p
            .ip_block
            .as_ref()
            .and_then(|b| b.except.clone())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// A port of a rule; `Err` names what the contract cannot carry (a negative or huge number).
fn port(p: &knet::NetworkPolicyPort) -> Result<NetworkPolicyPort, String> {
    let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => return Err(format!("protocol: {other:?} is not TCP, UDP or SCTP")),
    };
    let number =
        |v: i32, what: &str| u32::try_from(v).map_err(|_| format!("{what}: {v} is not a port"));
    let (port, named_port) = match &p.port {
        None => (0, String::new()),
        Some(IntOrString::Int(n)) => (number(*n, "port")?, String::new()),
        Some(IntOrString::String(s)) => (0, s.clone()),
    };
    Ok(NetworkPolicyPort {
        protocol: protocol as i32,
        port,
        end_port: p
            .end_port
            .map(|e| number(e, "endPort"))
            .transpose()?
            .unwrap_or(0),
        named_port,
        ..Default::default()
    })
}

fn rule(
    peers: Option<&Vec<knet::NetworkPolicyPeer>>,
    ports: Option<&Vec<knet::NetworkPolicyPort>>,
) -> Result<NetworkPolicyRule, String> {
    Ok(NetworkPolicyRule {
        peers: peers.into_iter().flatten().map(peer).collect(),
        ports: ports
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| port(p).map_err(|e| format!("ports[{i}].{e}")))
            .collect::<Result<_, _>>()?,
    })
}

/// Holds a converted object (alone in `req`) to ApplyPolicy's rules, so a manifest is held to
/// what a socket caller is; the error names the field below `prefix`.
pub(crate) fn checked(
    mut req: netlet_sdk::proto::ApplyPolicyRequest,
    prefix: &str,
) -> Result<(), String> {
    req.generation = 1;
    netlet_sdk::validate::apply_policy(&req).map_err(|e| {
        e.message()
            .strip_prefix(prefix)
            .unwrap_or(e.message())
            .to_string()
    })
}

/// The contract's NetworkPolicy for `np`, or why it cannot be one (`field: why`, fields named
/// as in the contract, e.g. `ingress[0].peers[1].ip_block_except[0]`).
pub fn network_policy(np: &knet::NetworkPolicy) -> Result<NetworkPolicy, String> {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let name = np.metadata.name.clone().unwrap_or_default();
    let spec = np.spec.clone().unwrap_or_default();
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(r.from.as_ref(), r.ports.as_ref()).map_err(|e| format!("ingress[{i}].{e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let egress = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(r.to.as_ref(), r.ports.as_ref()).map_err(|e| format!("egress[{i}].{e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let directions = match &spec.policy_types {
        Some(types) if !types.is_empty() => types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                "Ingress" => Ok(PolicyDirection::Ingress as i32),
                "Egress" => Ok(PolicyDirection::Egress as i32),
                other => Err(format!(
                    "directions[{i}]: {other:?} is not Ingress or Egress"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        // The API's default: Ingress always, Egress when there are egress rules.
        _ => {
            let mut d = vec![PolicyDirection::Ingress as i32];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                d.push(PolicyDirection::Egress as i32);
            }
            d
        }
    };
    let out = NetworkPolicy {
        key: Some(PolicyKey {
            kind: PolicyKind::NetworkPolicy as i32,
            namespace,
            name,
        }),
        // Absent and empty select every pod of the namespace alike.
        pod_selector: Some(spec.pod_selector.as_ref().map(selector).unwrap_or_default()),
        selected_addresses: Vec::new(),
        directions,
        ingress,
        egress,
        selected_set: String::new(),
    };
    checked(
        netlet_sdk::proto::ApplyPolicyRequest {
            network_policies: vec![out.clone()],
            ..Default::default()
        },
        "network_policies[0].",
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<NetworkPolicy, String> {
        network_policy(&netlet_sdk::yaml::from_str::<knet::NetworkPolicy>(yaml).unwrap())
    }

    // The Kubernetes documentation's example NetworkPolicy ("test-network-policy").
    #[test]
    fn the_documentation_example_converts_with_the_defaults_made_explicit() {
        let p = parse(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: test-network-policy, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {matchLabels: {project: myproject}}
    - podSelector: {matchLabels: {role: frontend}}
    ports: [{protocol: TCP, port: 6379}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{protocol: TCP, port: 5978}]
"#,
        )
        .unwrap();
        assert_eq!(p.key.as_ref().unwrap().name, "test-network-policy");
        assert_eq!(p.pod_selector.as_ref().unwrap().match_labels["role"], "db");
        assert_eq!(p.directions, [1, 2]);
        let from = &p.ingress[0].peers;
        assert_eq!(from.len(), 3, "three peers, ORed");
        assert_eq!(from[0].ip_block_except, ["172.17.1.0/24"]);
        assert!(from[1].pod_selector.is_none() && from[1].namespace_selector.is_some());
        assert_eq!(p.ingress[0].ports[0].port, 6379);
        assert_eq!(p.egress[0].ports[0].protocol, Protocol::Tcp as i32);
    }

    #[test]
    fn defaults_and_refusals() {
        // No policyTypes, no egress: Ingress only; an empty ingress list denies all ingress.
        let deny =
            parse("metadata: {name: deny, namespace: a}\nspec: {podSelector: {}}\n").unwrap();
        assert_eq!(deny.directions, [PolicyDirection::Ingress as i32]);
        assert!(deny.ingress.is_empty());
        // Egress rules without policyTypes: both directions; a rule without `to` and ports
        // admits everything; a named port and a port range carried as written.
        let p = parse(
            "metadata: {name: p, namespace: a}\nspec:\n  podSelector: {}\n  egress: [{}]\n  ingress: [{ports: [{port: http}, {port: 32000, endPort: 32768, protocol: UDP}]}]\n",
        )
        .unwrap();
        assert_eq!(p.directions, [1, 2]);
        assert!(p.egress[0].peers.is_empty() && p.egress[0].ports.is_empty());
        assert_eq!(p.ingress[0].ports[0].named_port, "http");
        assert_eq!(
            (p.ingress[0].ports[1].port, p.ingress[0].ports[1].end_port),
            (32000, 32768)
        );
        // Refused, naming the field: an exception outside its block, a bad protocol, a
        // negative port, an ipBlock with a selector.
        for (yaml, field) in [
            (
                "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]",
                "ingress[0].peers[0].ip_block_except[0]",
            ),
            (
                "ingress: [{ports: [{protocol: ICMP, port: 1}]}]",
                "ingress[0].ports[0].protocol",
            ),
            ("egress: [{ports: [{port: -1}]}]", "egress[0].ports[0].port"),
            (
                "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16}, podSelector: {}}]}]",
                "ingress[0].peers[0].ip_block_cidr",
            ),
            (
                "podSelector: {matchExpressions: [{key: app, operator: In}]}",
                "pod_selector.match_expressions[0].values",
            ),
        ] {
            let e = parse(&format!(
                "metadata: {{name: p, namespace: a}}\nspec:\n  {yaml}\n"
            ))
            .unwrap_err();
            assert!(e.starts_with(&format!("{field}:")), "{field}: {e}");
        }
    }
}

/// A pod as policy resolution sees it: where it lives, its labels, its addresses and its named
/// container ports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: std::collections::HashMap<String, String>,
    /// Addresses (one per family).
    pub addresses: Vec<std::net::IpAddr>,
    /// Named container ports: name → (protocol, number).
    pub ports: std::collections::HashMap<String, (Protocol, u16)>,
    /// Attached on this node (policies apply to these; the others are peers only).
    pub local: bool,
}

/// A node as node peers see it: its labels and addresses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    /// Labels.
    pub labels: std::collections::HashMap<String, String>,
    /// `status.addresses` of type InternalIP and ExternalIP.
    pub addresses: Vec<std::net::IpAddr>,
}

/// A Node object's labels and addresses.
pub fn node_info(n: &k8s_openapi::api::core::v1::Node) -> NodeInfo {
    NodeInfo {
        labels: n
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        addresses: n
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect(),
    }
}

/// A Pod object's namespace, name, labels, addresses (`status.podIPs`, else `status.podIP`)
/// and named container ports; `None` without an address (not running, or host-network
/// pods, whose address is the node's, are left to node peers).
pub fn pod_info(p: &k8s_openapi::api::core::v1::Pod) -> Option<PodInfo> {
    let status = p.status.as_ref()?;
    if p.spec
        .as_ref()
        .is_some_and(|s| s.host_network == Some(true))
    {
        return None;
    }
    let mut addresses: Vec<std::net::IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if addresses.is_empty() {
        addresses.extend(
            status
                .pod_ip
                .as_ref()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok()),
        );
    }
    if addresses.is_empty() {
        return None;
    }
    let ports = p
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            let name = cp.name.clone()?;
            let proto = match cp.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            Some((name, (proto, u16::try_from(cp.container_port).ok()?)))
        })
        .collect();
    Some(PodInfo {
        namespace: p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        addresses,
        ports,
        local: false,
    })
}

/// The pods and namespaces selectors are resolved against.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// This node's pods (from its attachments), and any other given one by one.
    pub pods: Vec<PodInfo>,
    /// Other nodes' pods (`Pod` objects), shared by every snapshot taken until they change: an
    /// attach does not copy them, and a diff skips them while the `Arc` is the same. One whose
    /// address a pod of `pods` has is shadowed by it (an address this node attached is this
    /// node's pod, whatever a Pod object says).
    pub remote: std::sync::Arc<Vec<PodInfo>>,
    /// Namespace labels by name; every namespace also carries
    /// `kubernetes.io/metadata.name: <name>`, as the API server sets it.
    pub namespaces: std::collections::HashMap<String, std::collections::HashMap<String, String>>,
    /// Nodes, for node peers.
    pub nodes: Vec<NodeInfo>,
}

impl Cluster {
    /// Every pod: `pods`, then the `remote` ones they do not shadow.
    pub fn all_pods(&self) -> impl Iterator<Item = &PodInfo> {
        let local: std::collections::HashSet<std::net::IpAddr> = self
            .pods
            .iter()
            .flat_map(|p| p.addresses.iter().copied())
            .collect();
        self.pods.iter().chain(
            self.remote
                .iter()
                .filter(move |p| !p.addresses.iter().any(|a| local.contains(a))),
        )
    }

    pub(crate) fn namespace_labels(&self, ns: &str) -> std::collections::HashMap<String, String> {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        l
    }
}
