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
        ApplyPolicyRequest, DnsPolicy, HostnameGrant, ListPoliciesResponse, NetworkPolicy,
        PolicyKey,
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

/// One policy of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A NetworkPolicy.
    Network(NetworkPolicy),
    /// A DNS policy.
    Dns(DnsPolicy),
    /// A hostname grant.
    Grant(HostnameGrant),
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
    /// The NetworkPolicies as drivers were told them (selectors resolved).
    sent: BTreeMap<Key, NetworkPolicy>,
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
            sent: BTreeMap::new(),
        }
    }

    /// `p` with its selectors resolved against the known pods: `selected_addresses` (the pods
    /// it applies to) and each selector peer's `resolved_addresses`, sorted.
    fn resolve(&self, p: &NetworkPolicy) -> NetworkPolicy {
        let addresses = |pods: Vec<&crate::netpol::PodInfo>| -> Vec<String> {
            let set: BTreeSet<std::net::IpAddr> = pods
                .iter()
                .flat_map(|p| p.addresses.iter().copied())
                .collect();
            set.into_iter().map(|a| a.to_string()).collect()
        };
        let mut out = p.clone();
        out.selected_addresses = addresses(self.cluster.selected(p));
        let ns = p
            .key
            .as_ref()
            .map(|k| k.namespace.clone())
            .unwrap_or_default();
        for rule in out.ingress.iter_mut().chain(out.egress.iter_mut()) {
            for peer in &mut rule.peers {
                if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                    peer.resolved_addresses = addresses(self.cluster.peer_pods(&ns, peer));
                }
            }
        }
        out
    }

    /// Whether any NetworkPolicy is wanted (pods need resolving only then).
    pub fn has_network_policies(&self) -> bool {
        !self.sent.is_empty()
    }

    /// Sets the pods and namespaces selectors resolve against; returns the batch of the
    /// NetworkPolicies whose resolution changed (applied), or `None`.
    pub fn set_cluster(&mut self, cluster: crate::netpol::Cluster) -> Option<ApplyPolicyRequest> {
        self.cluster = cluster;
        let at = self.table.applied();
        let mut out = ApplyPolicyRequest {
            epoch: at.epoch,
            generation: at.generation + 1,
            ..Default::default()
        };
        for (k, owner) in &self.owners {
            let Some(Item::Network(p)) = self.wanted.get(owner).and_then(|w| w.get(k)) else {
                continue;
            };
            let r = self.resolve(p);
            if self.sent.get(k) != Some(&r) {
                out.network_policies.push(r);
            }
        }
        if out.network_policies.is_empty() {
            return None;
        }
        out.network_policies.sort_by(|a, b| {
            a.key
                .as_ref()
                .map(|k| &k.name)
                .cmp(&b.key.as_ref().map(|k| &k.name))
        });
        for p in &out.network_policies {
            if let Some(k) = key_of(p.key.as_ref()) {
                self.sent.insert(k, p.clone());
            }
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
        let mut mine = if req.full_sync {
            BTreeMap::new()
        } else {
            self.wanted
                .get(&Source::Socket)
                .cloned()
                .unwrap_or_default()
        };
        for (_, k, item) in items {
            mine.insert(k, item);
        }
        for (_, k) in deletes {
            mine.remove(&k);
        }
        self.socket = Applied::after(batch);
        Ok((self.socket, self.settle(Source::Socket, mine)))
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
        (self.settle(source, wanted), conflicts)
    }

    /// Sets `source`'s policies to `new` and returns the difference to the table as a batch.
    fn settle(&mut self, source: Source, new: BTreeMap<Key, Item>) -> Option<ApplyPolicyRequest> {
        let old = self.wanted.remove(&source).unwrap_or_default();
        let touched: BTreeSet<Key> = old
            .keys()
            .chain(new.keys())
            .filter(|k| old.get(*k) != new.get(*k))
            .cloned()
            .collect();
        let at = self.table.applied();
        let mut out = ApplyPolicyRequest {
            epoch: at.epoch,
            generation: at.generation + 1,
            ..Default::default()
        };
        for k in &touched {
            match new.get(k) {
                Some(item) => {
                    self.owners.insert(k.clone(), source);
                    match item.clone() {
                        Item::Network(p) => {
                            let r = self.resolve(&p);
                            self.sent.insert(k.clone(), r.clone());
                            out.network_policies.push(r);
                        }
                        Item::Dns(p) => out.dns_policies.push(p),
                        Item::Grant(g) => out.hostname_grants.push(g),
                    }
                }
                None => {
                    if self.owners.get(k) == Some(&source) {
                        self.owners.remove(k);
                        self.sent.remove(k);
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
        let empty = out.network_policies.is_empty()
            && out.dns_policies.is_empty()
            && out.hostname_grants.is_empty()
            && out.deletes.is_empty();
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
            module: String::new(),
        }
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
