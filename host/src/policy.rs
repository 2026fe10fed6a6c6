//! The node's policies as the host holds them: what each source wants (the manifests
//! directory, callers of the host socket, in their own (epoch, generation)), who owns which
//! policy, and the table drivers are told, in the host's epoch, with deltas of what changed.
//! Keeping the numberings apart is what lets a caller and the host restart independently: a
//! caller's new epoch is a full sync of the caller's policies; the host's new epoch is a full
//! sync to every driver.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use netlet_sdk::{
    generation::{Applied, Batch},
    parts::Parts,
    proto::{
        ApplyPolicyRequest, ClusterNetworkPolicy, DnsPolicy, HostnameGrant, ListPoliciesResponse,
        NamedPortTarget, NetworkPolicy, PolicyKey, Protocol,
    },
    state::PolicyTable,
};
use tonic::Status;

use crate::services::sources::Source;

/// A policy's identity: (kind, namespace, name).
pub type Key = (i32, String, String);

fn key_of(k: Option<&PolicyKey>) -> Option<Key> {
    k.map(|k| (k.kind, k.namespace.clone(), k.name.clone()))
}

/// Checks a batch of one object read from a manifest or the API as an ApplyPolicy caller's
/// would be; the reason without the batch's `prefix` (`dns_policies[0].`).
pub fn check_alone(req: netlet_sdk::proto::ApplyPolicyRequest, prefix: &str) -> Result<(), String> {
    let req = netlet_sdk::proto::ApplyPolicyRequest {
        generation: 1,
        ..req
    };
    netlet_sdk::validate::apply_policy(&req).map_err(|s| s.message().replace(prefix, ""))
}

/// One policy of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A NetworkPolicy.
    Network(NetworkPolicy),
    /// A DNS policy.
    Dns(DnsPolicy),
    /// A hostname grant.
    Grant(HostnameGrant),
    /// A ClusterNetworkPolicy (or a v1alpha1 admin policy mapped onto one).
    Cluster(ClusterNetworkPolicy),
    /// Egress by name for one pod of this node (see [`egress_key`]): resolved into a
    /// NetworkPolicy selecting only that pod, whose egress goes to the addresses the node-local
    /// DNS server answered it and to the DNS servers.
    DnsEgress {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The DNS servers' addresses (port 53, UDP and TCP).
        dns: BTreeSet<ipnet::IpNet>,
    },
}

/// The key of the NetworkPolicy that carries egress by name for a pod: `dns-egress-<pod>`, or
/// `dns-egress-<digest of the pod's name>` when that is no DNS-1123 label.
pub fn egress_key(namespace: &str, pod: &str) -> Key {
    let name = format!("dns-egress-{pod}");
    let label = name.len() <= 63
        && pod
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (
        netlet_sdk::proto::PolicyKind::NetworkPolicy as i32,
        namespace.to_string(),
        if label {
            name
        } else {
            format!(
                "dns-egress-{:016x}",
                netlet_sdk::hash::fnv1a(pod.as_bytes())
            )
        },
    )
}

/// The name of the address set holding what the node-local DNS server answered a pod.
pub fn answers_set(namespace: &str, pod: &str) -> String {
    crate::netpol::sets::SetDef::Answers {
        namespace: namespace.to_string(),
        name: pod.to_string(),
    }
    .name()
}

impl Item {
    /// The address sets a resolved policy names.
    fn sets(&self) -> Vec<&str> {
        match self {
            Item::Network(p) => std::iter::once(p.selected_set.as_str())
                .chain(
                    p.ingress
                        .iter()
                        .chain(&p.egress)
                        .flat_map(|r| &r.peers)
                        .map(|x| x.address_set.as_str()),
                )
                .collect(),
            Item::Cluster(p) => std::iter::once(p.selected_set.as_str())
                .chain(
                    p.ingress
                        .iter()
                        .chain(&p.egress)
                        .flat_map(|r| &r.peers)
                        .map(|x| x.address_set.as_str()),
                )
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether its resolution depends on the pods beyond set elements (named ports).
    fn has_named_ports(&self) -> bool {
        let named = |ports: &[netlet_sdk::proto::NetworkPolicyPort]| {
            ports.iter().any(|p| !p.named_port.is_empty())
        };
        match self {
            Item::Network(p) => p.ingress.iter().chain(&p.egress).any(|r| named(&r.ports)),
            Item::Cluster(p) => p.ingress.iter().chain(&p.egress).any(|r| named(&r.ports)),
            _ => false,
        }
    }
}

/// The policies of a batch, by key, each with the field that names it.
fn items_of(req: &ApplyPolicyRequest) -> Vec<(String, Key, Item)> {
    let mut out = Vec::new();
    for (i, p) in req.network_policies.iter().enumerate() {
        out.extend(key_of(p.key.as_ref()).map(|k| {
            (
                format!("network_policies[{i}].key"),
                k,
                Item::Network(p.clone()),
            )
        }));
    }
    for (i, p) in req.dns_policies.iter().enumerate() {
        out.extend(
            key_of(p.key.as_ref())
                .map(|k| (format!("dns_policies[{i}].key"), k, Item::Dns(p.clone()))),
        );
    }
    for (i, p) in req.cluster_network_policies.iter().enumerate() {
        out.extend(key_of(p.key.as_ref()).map(|k| {
            (
                format!("cluster_network_policies[{i}].key"),
                k,
                Item::Cluster(p.clone()),
            )
        }));
    }
    for (i, g) in req.hostname_grants.iter().enumerate() {
        out.extend(key_of(g.key.as_ref()).map(|k| {
            (
                format!("hostname_grants[{i}].key"),
                k,
                Item::Grant(g.clone()),
            )
        }));
    }
    out
}

fn push_item(out: &mut ApplyPolicyRequest, item: Item) {
    match item {
        Item::Network(p) => out.network_policies.push(p),
        Item::Cluster(p) => out.cluster_network_policies.push(p),
        Item::Dns(p) => out.dns_policies.push(p),
        Item::Grant(g) => out.hostname_grants.push(g),
        // Resolved into a NetworkPolicy before it is sent.
        Item::DnsEgress { .. } => {}
    }
}

/// Policies of every source and the driver-facing table. Each source (the manifests directory,
/// callers of the host socket, later the Kubernetes API) owns the policies it wrote first; a
/// policy another source owns is refused (socket: `FAILED_PRECONDITION` naming the field) or
/// left out and reported (manifests) until its owner lets go.
#[derive(Debug)]
pub struct PolicyView {
    /// What drivers are told, in the host's epoch; starts at generation 1, empty.
    pub table: PolicyTable,
    socket: Applied,
    socket_parts: Parts<ApplyPolicyRequest>,
    wanted: HashMap<Source, BTreeMap<Key, Item>>,
    owners: HashMap<Key, Source>,
    /// The pods and namespaces selectors are resolved against.
    cluster: crate::netpol::Cluster,
    /// The address sets the policies name, with their elements.
    sets: crate::netpol::sets::Sets,
    /// The NetworkPolicies and ClusterNetworkPolicies as drivers were told them (selectors
    /// resolved to set names, named ports to their targets).
    sent: BTreeMap<Key, Item>,
    /// How many sent policies name each set.
    set_refs: HashMap<String, usize>,
}

/// Where a named port leads: each of `pods` with a container port of that name and protocol.
fn named_targets<'a>(
    pods: impl Iterator<Item = &'a crate::netpol::PodInfo>,
    port: &netlet_sdk::proto::NetworkPolicyPort,
) -> Vec<NamedPortTarget> {
    let proto = Protocol::try_from(port.protocol)
        .ok()
        .filter(|p| *p != Protocol::Unspecified)
        .unwrap_or(Protocol::Tcp);
    let mut out: BTreeSet<(std::net::IpAddr, u16)> = BTreeSet::new();
    for pod in pods {
        if let Some((_, n)) = pod.ports.get(&port.named_port).filter(|(p, _)| *p == proto) {
            out.extend(pod.addresses.iter().map(|a| (*a, *n)));
        }
    }
    out.into_iter()
        .map(|(a, n)| NamedPortTarget {
            address: a.to_string(),
            port: u32::from(n),
        })
        .collect()
}

impl PolicyView {
    /// An empty view whose batches to drivers carry `epoch`.
    pub fn new(epoch: u64) -> Self {
        let mut table = PolicyTable::default();
        // An empty full sync onto an empty table always applies: every driver that registers
        // gets a full sync, even an empty one.
        let _ = table.apply(&ApplyPolicyRequest {
            epoch,
            generation: 1,
            full_sync: true,
            ..Default::default()
        });
        Self {
            table,
            socket: Applied::default(),
            socket_parts: Parts::default(),
            wanted: HashMap::new(),
            owners: HashMap::new(),
            cluster: Default::default(),
            sets: Default::default(),
            sent: BTreeMap::new(),
            set_refs: HashMap::new(),
        }
    }

    /// The pods whose addresses lie in any of `sets` (every pod when `sets` is empty).
    fn pods_in<'a>(&'a self, sets: &[&str]) -> Vec<&'a crate::netpol::PodInfo> {
        let members: Vec<_> = sets.iter().filter_map(|n| self.sets.members(n)).collect();
        self.cluster
            .all_pods()
            .filter(|p| {
                sets.is_empty()
                    || p.addresses
                        .iter()
                        .any(|a| members.iter().any(|m| m.iter().any(|net| net.contains(a))))
            })
            .collect()
    }

    /// Records what drivers are told of `k` (`None`: deleted), keeping the sets' reference
    /// counts; the sets now named for the first time go to `added`, the ones no longer named
    /// to `gone`.
    fn record_sent(
        &mut self,
        k: &Key,
        item: Option<Item>,
        added: &mut BTreeSet<String>,
        gone: &mut BTreeSet<String>,
    ) {
        if let Some(old) = self.sent.remove(k) {
            for n in old.sets() {
                if let Some(c) = self.set_refs.get_mut(n) {
                    *c -= 1;
                    if *c == 0 {
                        self.set_refs.remove(n);
                        gone.insert(n.to_string());
                    }
                }
            }
        }
        if let Some(item) = item {
            for n in item.sets() {
                let c = self.set_refs.entry(n.to_string()).or_insert(0);
                if *c == 0 {
                    added.insert(n.to_string());
                }
                *c += 1;
            }
            self.sent.insert(k.clone(), item);
        }
    }

    /// Fills each named port's targets: the destination pods (ingress: the ones the policy
    /// selects; egress: the ones in its peers' sets, every pod for a rule without peers) that
    /// have a port of that name and protocol.
    fn resolve_named_ports(
        &self,
        ports: &mut [netlet_sdk::proto::NetworkPolicyPort],
        ingress: bool,
        selected: &str,
        peers: &[String],
    ) {
        let refs: Vec<&str> = if ingress {
            vec![selected]
        } else {
            peers.iter().map(String::as_str).collect()
        };
        for port in ports.iter_mut().filter(|x| !x.named_port.is_empty()) {
            port.named_port_targets = named_targets(self.pods_in(&refs).into_iter(), port);
        }
    }

    /// `p` with its selectors resolved: `selected_set` (this node's pods it applies to), each
    /// peer's `address_set`, each named port's targets.
    fn resolve_network(&mut self, p: &NetworkPolicy) -> NetworkPolicy {
        use crate::netpol::sets::{Namespaces, SetDef, subtract};
        let ns = p
            .key
            .as_ref()
            .map(|k| k.namespace.clone())
            .unwrap_or_default();
        let mut out = p.clone();
        out.selected_addresses.clear();
        out.selected_set = self.sets.define(
            SetDef::Pods {
                local: true,
                namespaces: Namespaces::Named(ns.clone()),
                pods: Some(p.pod_selector.clone().unwrap_or_default()),
            },
            &self.cluster,
        );
        for (ingress, rules) in [(true, &mut out.ingress), (false, &mut out.egress)] {
            for rule in rules.iter_mut() {
                for peer in &mut rule.peers {
                    peer.resolved_addresses.clear();
                    let def = if peer.ip_block_cidr.is_empty() {
                        SetDef::Pods {
                            local: false,
                            namespaces: match &peer.namespace_selector {
                                None => Namespaces::Named(ns.clone()),
                                Some(s) => Namespaces::Selected(s.clone()),
                            },
                            pods: peer.pod_selector.clone(),
                        }
                    } else {
                        let block = peer
                            .ip_block_cidr
                            .parse::<ipnet::IpNet>()
                            .map(|b| b.trunc());
                        let except: Vec<ipnet::IpNet> = peer
                            .ip_block_except
                            .iter()
                            .filter_map(|e| e.parse().ok())
                            .collect();
                        SetDef::Prefixes(block.map(|b| subtract(b, &except)).unwrap_or_default())
                    };
                    peer.address_set = self.sets.define(def, &self.cluster);
                }
                let peers: Vec<String> = rule.peers.iter().map(|x| x.address_set.clone()).collect();
                self.resolve_named_ports(&mut rule.ports, ingress, &out.selected_set, &peers);
            }
        }
        out
    }

    /// `p` with its selectors resolved, as [`Self::resolve_network`] does.
    fn resolve_cluster(&mut self, p: &ClusterNetworkPolicy) -> ClusterNetworkPolicy {
        use crate::netpol::sets::{Namespaces, SetDef, disjoint};
        let mut out = p.clone();
        out.selected_set = self.sets.define(
            SetDef::Pods {
                local: true,
                namespaces: Namespaces::Selected(
                    p.subject_namespace_selector.clone().unwrap_or_default(),
                ),
                pods: p.subject_pod_selector.clone(),
            },
            &self.cluster,
        );
        for (ingress, rules) in [(true, &mut out.ingress), (false, &mut out.egress)] {
            for rule in rules.iter_mut() {
                for peer in &mut rule.peers {
                    let def = if let Some(ns) = &peer.namespace_selector {
                        SetDef::Pods {
                            local: false,
                            namespaces: Namespaces::Selected(ns.clone()),
                            pods: peer.pod_selector.clone(),
                        }
                    } else if let Some(n) = &peer.node_selector {
                        SetDef::Nodes(n.clone())
                    } else {
                        SetDef::Prefixes(disjoint(
                            peer.networks.iter().filter_map(|n| n.parse().ok()),
                        ))
                    };
                    peer.address_set = self.sets.define(def, &self.cluster);
                }
                let peers: Vec<String> = rule.peers.iter().map(|x| x.address_set.clone()).collect();
                self.resolve_named_ports(&mut rule.ports, ingress, &out.selected_set, &peers);
            }
        }
        out
    }

    /// Egress by name for one pod as the NetworkPolicy drivers enforce.
    fn resolve_egress(
        &mut self,
        namespace: &str,
        pod: &str,
        dns: &BTreeSet<ipnet::IpNet>,
    ) -> NetworkPolicy {
        use crate::netpol::sets::SetDef;
        use netlet_sdk::proto::{
            NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicyRule, PolicyDirection,
        };
        let (kind, ns, name) = egress_key(namespace, pod);
        let peer = |set: String| NetworkPolicyPeer {
            address_set: set,
            ..Default::default()
        };
        let port = |p: Protocol| NetworkPolicyPort {
            protocol: p as i32,
            port: 53,
            ..Default::default()
        };
        NetworkPolicy {
            key: Some(PolicyKey {
                kind,
                namespace: ns,
                name,
            }),
            selected_set: self.sets.define(
                SetDef::Pod {
                    namespace: namespace.to_string(),
                    name: pod.to_string(),
                },
                &self.cluster,
            ),
            directions: vec![PolicyDirection::Egress as i32],
            egress: vec![
                NetworkPolicyRule {
                    peers: vec![peer(self.sets.define(
                        SetDef::Answers {
                            namespace: namespace.to_string(),
                            name: pod.to_string(),
                        },
                        &self.cluster,
                    ))],
                    ports: Vec::new(),
                },
                NetworkPolicyRule {
                    peers: vec![peer(
                        self.sets
                            .define(SetDef::Prefixes(dns.clone()), &self.cluster),
                    )],
                    ports: vec![port(Protocol::Udp), port(Protocol::Tcp)],
                },
            ],
            ..Default::default()
        }
    }

    /// Adds to and removes from the answers set of a pod under egress by name. Returns the
    /// batch for drivers (applied), or `None` when the set is not in use or nothing changed.
    pub fn learn(
        &mut self,
        namespace: &str,
        pod: &str,
        add: &[ipnet::IpNet],
        remove: &[ipnet::IpNet],
    ) -> Option<ApplyPolicyRequest> {
        let change = self.sets.learn(&answers_set(namespace, pod), add, remove)?;
        let at = self.table.applied();
        let out = ApplyPolicyRequest {
            epoch: at.epoch,
            generation: at.generation + 1,
            address_set_changes: vec![change],
            ..Default::default()
        };
        self.table.apply(&out).ok()?;
        Some(out)
    }

    fn resolve(&mut self, item: &Item) -> Item {
        match item {
            Item::DnsEgress {
                namespace,
                pod,
                dns,
            } => Item::Network(self.resolve_egress(namespace, pod, dns)),
            Item::Network(p) => Item::Network(self.resolve_network(p)),
            Item::Cluster(p) => Item::Cluster(self.resolve_cluster(p)),
            other => other.clone(),
        }
    }

    /// Whether any NetworkPolicy or ClusterNetworkPolicy is wanted (pods need resolving only
    /// then).
    pub fn has_network_policies(&self) -> bool {
        !self.sent.is_empty()
    }

    /// Sets the pods, namespaces and nodes selectors resolve against; returns the batch
    /// (applied) of the set elements that changed and of the policies whose named ports now
    /// lead elsewhere, or `None`.
    pub fn set_cluster(&mut self, cluster: crate::netpol::Cluster) -> Option<ApplyPolicyRequest> {
        let old = std::mem::replace(&mut self.cluster, cluster);
        let changes = self.sets.update(&old, &self.cluster);
        let at = self.table.applied();
        let mut out = ApplyPolicyRequest {
            epoch: at.epoch,
            generation: at.generation + 1,
            address_set_changes: changes,
            ..Default::default()
        };
        let named: Vec<(Key, Item)> = self
            .sent
            .iter()
            .filter(|(_, i)| i.has_named_ports())
            .map(|(k, i)| (k.clone(), i.clone()))
            .collect();
        for (k, sent) in named {
            let Some(wanted) = self
                .owners
                .get(&k)
                .and_then(|o| self.wanted.get(o))
                .and_then(|w| w.get(&k))
                .cloned()
            else {
                continue;
            };
            let r = self.resolve(&wanted);
            if r != sent {
                push_item(&mut out, r.clone());
                // The same sets: only named-port targets differ.
                let (mut added, mut gone) = (BTreeSet::new(), BTreeSet::new());
                self.record_sent(&k, Some(r), &mut added, &mut gone);
            }
        }
        if out.address_set_changes.is_empty()
            && out.network_policies.is_empty()
            && out.cluster_network_policies.is_empty()
        {
            return None;
        }
        self.table.apply(&out).ok()?;
        Some(out)
    }

    /// Applies a validated batch from a caller of the host socket. Returns what that caller has
    /// now applied and, unless nothing changed, the batch for drivers (already applied to the
    /// table): a delta in the host's numbering.
    pub fn apply_socket(
        &mut self,
        req: &ApplyPolicyRequest,
    ) -> Result<(Applied, Option<ApplyPolicyRequest>), Status> {
        // A full sync in parts is kept until its last part, then taken as one batch.
        let Some(whole) = self.socket_parts.take(req)? else {
            return Ok((self.socket, None));
        };
        let req = whole.as_ref();
        let items = items_of(req);
        let deletes: Vec<(String, Key)> = req
            .deletes
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    format!("deletes[{i}]"),
                    (k.kind, k.namespace.clone(), k.name.clone()),
                )
            })
            .collect();
        for (field, key) in items
            .iter()
            .map(|(f, k, _)| (f, k))
            .chain(deletes.iter().map(|(f, k)| (f, k)))
        {
            if let Some(owner) = self.owners.get(key).filter(|o| **o != Source::Socket) {
                return Err(netlet_sdk::validate::field_error(
                    tonic::Code::FailedPrecondition,
                    field,
                    format!(
                        "{}/{} is owned by the {} source",
                        key.1,
                        key.2,
                        owner.as_str()
                    ),
                    "POLICY_OWNED_BY_OTHER_SOURCE",
                ));
            }
        }
        let batch = Batch::from(req);
        if !self.socket.check(batch)? {
            return Ok((self.socket, None));
        }
        self.socket = Applied::after(batch);
        if req.full_sync {
            let mut mine = BTreeMap::new();
            for (_, k, item) in items {
                mine.insert(k, item);
            }
            return Ok((self.socket, self.settle(Source::Socket, mine, None)));
        }
        // A delta: the caller's map is changed in place, and only what it names compared.
        let mut mine = self.wanted.remove(&Source::Socket).unwrap_or_default();
        let mut touched = BTreeSet::new();
        for (_, k, item) in items {
            if mine.get(&k) != Some(&item) {
                touched.insert(k.clone());
            }
            mine.insert(k, item);
        }
        for (_, k) in deletes {
            if mine.remove(&k).is_some() {
                touched.insert(k);
            }
        }
        Ok((
            self.socket,
            self.settle(Source::Socket, mine, Some(touched)),
        ))
    }

    /// Replaces what `source` wants. Policies another source owns are left out and returned as
    /// messages. Returns the batch for drivers (applied), or `None` when nothing changed.
    pub fn replace(
        &mut self,
        source: Source,
        mut wanted: BTreeMap<Key, Item>,
    ) -> (Option<ApplyPolicyRequest>, Vec<String>) {
        let mut conflicts = Vec::new();
        wanted.retain(|k, _| match self.owners.get(k) {
            Some(o) if *o != source => {
                conflicts.push(format!(
                    "{}/{} is owned by the {} source",
                    k.1,
                    k.2,
                    o.as_str()
                ));
                false
            }
            _ => true,
        });
        (self.settle(source, wanted, None), conflicts)
    }

    /// Sets `source`'s policies to `new` and returns the difference to the table as a batch.
    /// `touched`: the keys that may differ, when the caller knows them (a delta; the source's
    /// old map is then already taken out); else every key of the old and new maps is compared.
    fn settle(
        &mut self,
        source: Source,
        new: BTreeMap<Key, Item>,
        touched: Option<BTreeSet<Key>>,
    ) -> Option<ApplyPolicyRequest> {
        let touched = match touched {
            Some(t) => t,
            None => {
                let old = self.wanted.remove(&source).unwrap_or_default();
                old.keys()
                    .chain(new.keys())
                    .filter(|k| old.get(*k) != new.get(*k))
                    .cloned()
                    .collect()
            }
        };
        let at = self.table.applied();
        let mut out = ApplyPolicyRequest {
            epoch: at.epoch,
            generation: at.generation + 1,
            ..Default::default()
        };
        let (mut added, mut gone) = (BTreeSet::new(), BTreeSet::new());
        for k in &touched {
            match new.get(k) {
                Some(item) => {
                    self.owners.insert(k.clone(), source);
                    let r = self.resolve(item);
                    if matches!(r, Item::Network(_) | Item::Cluster(_)) {
                        self.record_sent(k, Some(r.clone()), &mut added, &mut gone);
                    }
                    push_item(&mut out, r);
                }
                None => {
                    if self.owners.get(k) == Some(&source) {
                        self.owners.remove(k);
                        self.record_sent(k, None, &mut added, &mut gone);
                        out.deletes.push(PolicyKey {
                            kind: k.0,
                            namespace: k.1.clone(),
                            name: k.2.clone(),
                        });
                    }
                }
            }
        }
        self.wanted.insert(source, new);
        // Sets: new ones whole, before the policies that name them; unnamed ones deleted.
        for n in added.difference(&gone) {
            if self.table.address_set(n).is_none() {
                out.address_sets.push(self.sets.full(n));
            }
        }
        let unnamed: Vec<String> = gone
            .into_iter()
            .filter(|n| !self.set_refs.contains_key(n))
            .collect();
        for n in self.sets.forget(&unnamed) {
            if self.table.address_set(&n).is_some() {
                out.address_set_deletes.push(n);
            }
        }
        let empty = out.network_policies.is_empty()
            && out.cluster_network_policies.is_empty()
            && out.dns_policies.is_empty()
            && out.hostname_grants.is_empty()
            && out.deletes.is_empty()
            && out.address_sets.is_empty()
            && out.address_set_deletes.is_empty();
        if empty {
            return None;
        }
        // Valid by construction: every item was validated or converted.
        self.table.apply(&out).ok()?;
        Some(out)
    }

    /// The policies, with the socket callers' epoch and generation.
    pub fn list(&self) -> ListPoliciesResponse {
        ListPoliciesResponse {
            applied_generation: self.socket.generation,
            applied_epoch: self.socket.epoch,
            ..self.table.list()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlet_sdk::proto::{HostnameGrant, PolicyKey, PolicyKind};

    fn grant(name: &str) -> HostnameGrant {
        HostnameGrant {
            key: Some(PolicyKey {
                kind: PolicyKind::HostnameGrant as i32,
                namespace: String::new(),
                name: name.into(),
            }),
            namespaces: vec!["*".into()],
            hostnames: vec!["a.example.com".into()],
            ..Default::default()
        }
    }

    // A named port resolves to the pod's container port of that name and protocol; a pod
    // without one (or with it on another protocol) is no target.
    #[test]
    fn egress_by_name_is_a_network_policy_of_one_pod() {
        let pod = |name: &str, ip: &str| crate::netpol::PodInfo {
            namespace: "shop".into(),
            name: name.into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            addresses: vec![ip.parse().unwrap()],
            local: true,
            ..Default::default()
        };
        let mut v = PolicyView::new(7);
        v.set_cluster(crate::netpol::Cluster {
            pods: vec![pod("web-0", "10.0.0.5"), pod("web-1", "10.0.0.6")],
            ..Default::default()
        });
        let key = egress_key("shop", "web-0");
        let dns: BTreeSet<ipnet::IpNet> = ["169.254.20.10/32".parse().unwrap()].into();
        let item = Item::DnsEgress {
            namespace: "shop".into(),
            pod: "web-0".into(),
            dns,
        };
        let (batch, conflicts) = v.replace(Source::DnsEgress, [(key.clone(), item)].into());
        assert!(conflicts.is_empty());
        let batch = batch.expect("a batch");
        let p = &batch.network_policies[0];
        assert_eq!(p.key.as_ref().unwrap().name, "dns-egress-web-0");
        // A pod name that is no label (dots, too long) gets a digest.
        let long = egress_key("shop", &"a.b".repeat(30)).2;
        assert!(
            long.starts_with("dns-egress-") && long.len() == 27,
            "{long}"
        );
        let set = |name: &str| {
            batch
                .address_sets
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.elements.clone())
        };
        // web-0 only, though web-1 has the same labels.
        assert_eq!(set(&p.selected_set), Some(vec!["10.0.0.5".to_string()]));
        assert_eq!(
            p.directions,
            vec![netlet_sdk::proto::PolicyDirection::Egress as i32]
        );
        let answers = &p.egress[0].peers[0].address_set;
        assert_eq!(*answers, answers_set("shop", "web-0"));
        assert_eq!(set(answers), Some(vec![]));
        assert!(p.egress[0].ports.is_empty());
        assert_eq!(
            set(&p.egress[1].peers[0].address_set),
            Some(vec!["169.254.20.10".to_string()])
        );
        assert_eq!(
            p.egress[1]
                .ports
                .iter()
                .map(|x| (x.protocol, x.port))
                .collect::<Vec<_>>(),
            vec![(Protocol::Udp as i32, 53), (Protocol::Tcp as i32, 53)]
        );
        // An answer adds to the set, in the next generation; the same again changes nothing.
        let a: ipnet::IpNet = "203.0.113.10/32".parse().unwrap();
        let before = v.table.generation();
        let learned = v.learn("shop", "web-0", &[a], &[]).expect("a change");
        assert_eq!(learned.generation, before + 1);
        assert_eq!(learned.address_set_changes[0].name, *answers);
        assert_eq!(learned.address_set_changes[0].add, vec!["203.0.113.10"]);
        assert!(v.learn("shop", "web-0", &[a], &[]).is_none());
        // No set for a pod without egress by name.
        assert!(v.learn("shop", "web-1", &[a], &[]).is_none());
        let gone = v.learn("shop", "web-0", &[], &[a]).expect("a change");
        assert_eq!(gone.address_set_changes[0].remove, vec!["203.0.113.10"]);
        // The pod leaves egress by name: its policy and sets go.
        let (batch, _) = v.replace(Source::DnsEgress, BTreeMap::new());
        let batch = batch.unwrap();
        assert_eq!(batch.deletes.len(), 1);
        assert!(batch.address_set_deletes.contains(answers));
    }

    #[test]
    fn named_ports_resolve_per_pod() {
        let pod = crate::netpol::PodInfo {
            namespace: "x".into(),
            name: "a".into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            ports: [("http".to_string(), (Protocol::Tcp, 8080))].into(),
            ..Default::default()
        };
        let named = |name: &str, proto: Protocol| netlet_sdk::proto::NetworkPolicyPort {
            protocol: proto as i32,
            named_port: name.into(),
            ..Default::default()
        };
        let at = |name, proto| named_targets(std::iter::once(&pod), &named(name, proto));
        assert_eq!(
            at("http", Protocol::Tcp),
            vec![NamedPortTarget {
                address: "10.0.0.1".into(),
                port: 8080
            }]
        );
        assert_eq!(
            at("http", Protocol::Unspecified).len(),
            1,
            "unspecified is TCP"
        );
        assert!(
            at("http", Protocol::Udp).is_empty(),
            "no UDP port of that name"
        );
        assert!(at("dns", Protocol::Tcp).is_empty());
    }

    #[test]
    fn callers_and_drivers_are_numbered_apart() {
        let mut v = PolicyView::new(42);
        let first = ApplyPolicyRequest {
            epoch: 5,
            generation: 9,
            full_sync: true,
            hostname_grants: vec![grant("a")],
            ..Default::default()
        };
        let (applied, out) = v.apply_socket(&first).unwrap();
        assert_eq!((applied.epoch, applied.generation), (5, 9));
        let out = out.unwrap();
        assert_eq!((out.epoch, out.generation), (42, 2));
        // A replay changes nothing and sends nothing.
        assert!(v.apply_socket(&first).unwrap().1.is_none());
        // The caller restarted: its full sync at generation 1 applies and replaces.
        let again = ApplyPolicyRequest {
            epoch: 6,
            generation: 1,
            full_sync: true,
            hostname_grants: vec![grant("b")],
            ..Default::default()
        };
        let (_, out) = v.apply_socket(&again).unwrap();
        let out = out.unwrap();
        assert_eq!(out.generation, 3);
        // Drivers get the difference: b in, a out.
        assert!(!out.full_sync);
        assert_eq!(out.hostname_grants, vec![grant("b")]);
        assert_eq!(out.deletes.len(), 1);
        let l = v.list();
        assert_eq!((l.applied_epoch, l.applied_generation), (6, 1));
        assert_eq!(l.hostname_grants, vec![grant("b")]);
    }
}
