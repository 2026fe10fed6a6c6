//! Kubernetes `networking.k8s.io/v1` NetworkPolicy objects as the contract carries them
//! (`netlet.v1alpha1.NetworkPolicy`), with the API's defaults made explicit: `policyTypes`
//! unset means Ingress, plus Egress when the policy has egress rules; a rule without `from` /
//! `to` admits every peer, one without `ports` every port; a port without a protocol is TCP.
//! The result is checked with ApplyPolicy's rules, so a manifest is held to what a socket
//! caller is.

use k8s_openapi::api::networking::v1 as knet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netlet_sdk::proto::{
    LabelSelector, LabelSelectorRequirement, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicyRule, PolicyDirection, PolicyKey, PolicyKind, Protocol,
};

fn selector(s: &meta::LabelSelector) -> LabelSelector {
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
        resolved_addresses: Vec::new(),
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
    };
    netlet_sdk::validate::apply_policy(&netlet_sdk::proto::ApplyPolicyRequest {
        generation: 1,
        network_policies: vec![out.clone()],
        ..Default::default()
    })
    .map_err(|e| {
        e.message()
            .strip_prefix("network_policies[0].")
            .unwrap_or(e.message())
            .to_string()
    })?;
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
