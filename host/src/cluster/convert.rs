//! A Kubernetes Node as the node table holds it.

use std::net::IpAddr;

use ipnet::IpNet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;
use netlet_sdk::proto::ClusterNode;

use super::Nodes;
use crate::services::sources::Source;

/// What the Kubernetes source does with each Node event: one entry written or removed per
/// event; a relist (after a watch restart) replaces the source's entries whole at its end.
pub fn follower(nodes: Arc<Nodes>, local: String) -> impl FnMut(&Event<Node>) + Send + 'static {
    move |ev| match ev {
        Event::Apply(n) | Event::InitApply(n) => {
            if let Some(e) = node_of(n, &local) {
                nodes.upsert(Source::Kubernetes, e);
            }
        }
        Event::Delete(n) => {
            if let Some(name) = &n.metadata.name {
                nodes.delete(Source::Kubernetes, name);
            }
        }
        Event::Init => nodes.relisting(Source::Kubernetes),
        Event::InitDone => nodes.relisted(Source::Kubernetes),
    }
}

/// The entry of `node`: its name, the addresses other nodes reach it at (InternalIP, else
/// ExternalIP; one per family, IPv4 first), its pod CIDRs (`spec.podCIDRs`, else
/// `spec.podCIDR`; one per family, normalised), and whether it is `local`. Values that do not
/// parse are left out (the API server validates them; a bad one must not stop the others).
pub fn node_of(node: &Node, local: &str) -> Option<ClusterNode> {
    let name = node.metadata.name.clone()?;
    let mut addresses: [Option<IpAddr>; 2] = [None, None];
    if let Some(list) = node.status.as_ref().and_then(|s| s.addresses.as_ref()) {
        for kind in ["InternalIP", "ExternalIP"] {
            for a in list.iter().filter(|a| a.type_ == kind) {
                if let Ok(ip) = a.address.parse::<IpAddr>() {
                    let slot = &mut addresses[usize::from(ip.is_ipv6())];
                    if slot.is_none() {
                        *slot = Some(ip);
                    }
                }
            }
        }
    }
    let spec = node.spec.as_ref();
    let listed: Vec<String> = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|l| !l.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    let mut cidrs: [Option<IpNet>; 2] = [None, None];
    for c in listed {
        if let Ok(net) = c.parse::<IpNet>() {
            let slot = &mut cidrs[usize::from(matches!(net, IpNet::V6(_)))];
            if slot.is_none() {
                *slot = Some(net.trunc());
            }
        }
    }
    Some(ClusterNode {
        local: name == local,
        name,
        addresses: addresses.iter().flatten().map(|a| a.to_string()).collect(),
        pod_cidrs: cidrs.iter().flatten().map(|c| c.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Node {
        let mut docs = netlet_sdk::yaml::documents::<serde_json::Value>(text).unwrap();
        serde_json::from_value(docs.remove(0)).unwrap()
    }

    #[test]
    fn a_node_as_the_table_holds_it() {
        let n = yaml(
            "metadata: {name: n2}\nspec: {podCIDR: 10.244.2.0/24, podCIDRs: [10.244.2.0/24, 'fd00:10:244:2::/64']}\nstatus: {addresses: [{type: Hostname, address: n2}, {type: ExternalIP, address: 203.0.113.2}, {type: InternalIP, address: 192.0.2.2}, {type: InternalIP, address: '2001:db8::2'}]}\n",
        );
        assert_eq!(
            node_of(&n, "n1").unwrap(),
            ClusterNode {
                name: "n2".into(),
                addresses: vec!["192.0.2.2".into(), "2001:db8::2".into()],
                pod_cidrs: vec!["10.244.2.0/24".into(), "fd00:10:244:2::/64".into()],
                local: false,
            }
        );
        // Only podCIDR (older API servers), only an ExternalIP, and the local node.
        let n = yaml(
            "metadata: {name: n1}\nspec: {podCIDR: 10.244.1.0/24}\nstatus: {addresses: [{type: ExternalIP, address: 203.0.113.1}]}\n",
        );
        let e = node_of(&n, "n1").unwrap();
        assert_eq!(
            (e.addresses, e.pod_cidrs, e.local),
            (
                vec!["203.0.113.1".to_string()],
                vec!["10.244.1.0/24".to_string()],
                true
            )
        );
        // Not allocated yet, no addresses yet.
        let e = node_of(&yaml("metadata: {name: n3}\n"), "n1").unwrap();
        assert!(e.addresses.is_empty() && e.pod_cidrs.is_empty());
    }
}
