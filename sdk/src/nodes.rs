//! The cluster's nodes as a driver receives them (`Cluster/ProgramNodes`): the contract's field
//! rules, and [`NodeTable`], which applies batches with the generation rules of
//! [`crate::generation`] and full syncs in parts, and says what changed, node by node, so a
//! driver touches only the routes of the nodes a batch names.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use tonic::Status;

use crate::generation::{Applied, Batch};
use crate::parts::{Filling, Parts, Splittable};
use crate::proto::{ClusterNode, ProgramNodesRequest, ProgramNodesResponse};
use crate::validate::{dns_subdomain, invalid};

/// Checks one node (`field` names it in the request), as the contract says: a DNS-1123
/// subdomain name, addresses that are IP addresses at most one per family, pod CIDRs in CIDR
/// form with the host bits zero, at most one per family.
pub fn check_node(field: &str, n: &ClusterNode) -> Result<(), Status> {
    dns_subdomain(&format!("{field}.name"), &n.name)?;
    let mut families = [false; 2];
    for (i, a) in n.addresses.iter().enumerate() {
        let ip: IpAddr = a.parse().map_err(|_| {
            invalid(
                format!("{field}.addresses[{i}]"),
                format!("{a:?} is not an IP address"),
            )
        })?;
        let f = usize::from(ip.is_ipv6());
        if std::mem::replace(&mut families[f], true) {
            return Err(invalid(
                format!("{field}.addresses[{i}]"),
                "at most one address per family",
            ));
        }
    }
    let mut families = [false; 2];
    for (i, c) in n.pod_cidrs.iter().enumerate() {
        let net: IpNet = c.parse().map_err(|_| {
            invalid(
                format!("{field}.pod_cidrs[{i}]"),
                format!("{c:?} is not a CIDR"),
            )
        })?;
        if net.trunc() != net {
            return Err(invalid(
                format!("{field}.pod_cidrs[{i}]"),
                format!("{c} has host bits set (did you mean {}?)", net.trunc()),
            ));
        }
        let f = usize::from(matches!(net, IpNet::V6(_)));
        if std::mem::replace(&mut families[f], true) {
            return Err(invalid(
                format!("{field}.pod_cidrs[{i}]"),
                "at most one pod CIDR per family",
            ));
        }
    }
    Ok(())
}

/// Checks a batch's fields (not its generation: see [`NodeTable::apply`]).
pub fn check_request(r: &ProgramNodesRequest) -> Result<(), Status> {
    if r.generation == 0 {
        return Err(invalid("generation", "must be > 0"));
    }
    for (i, n) in r.upserts.iter().enumerate() {
        check_node(&format!("upserts[{i}]"), n)?;
    }
    for (i, d) in r.deletes.iter().enumerate() {
        dns_subdomain(&format!("deletes[{i}]"), d)?;
    }
    Ok(())
}

/// What one applied batch changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// Nodes added or whose entry changed, as they are now.
    pub upserted: Vec<ClusterNode>,
    /// Nodes removed, as they were.
    pub removed: Vec<ClusterNode>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

/// A driver's copy of the node table.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: BTreeMap<String, ClusterNode>,
    applied: Applied,
    parts: Parts<ProgramNodesRequest>,
}

impl NodeTable {
    /// Takes one ProgramNodes batch: checks it, keeps a part aside, refuses it by the generation
    /// rules, or applies it. Returns the answer and what changed (nothing for a part, a replay
    /// or a batch that changes no entry).
    pub fn apply(
        &mut self,
        req: &ProgramNodesRequest,
    ) -> Result<(ProgramNodesResponse, Changes), Status> {
        check_request(req)?;
        let Some(req) = self.parts.take(req)? else {
            return Ok((self.applied.into(), Changes::default()));
        };
        let batch = Batch::from(req.as_ref());
        if !self.applied.check(batch)? {
            return Ok((self.applied.into(), Changes::default()));
        }
        let mut changes = Changes::default();
        if req.full_sync {
            let wanted: BTreeMap<&str, &ClusterNode> =
                req.upserts.iter().map(|n| (n.name.as_str(), n)).collect();
            let gone: Vec<String> = self
                .nodes
                .keys()
                .filter(|k| !wanted.contains_key(k.as_str()))
                .cloned()
                .collect();
            for k in gone {
                changes.removed.extend(self.nodes.remove(&k));
            }
        } else {
            for d in &req.deletes {
                changes.removed.extend(self.nodes.remove(d));
            }
        }
        for n in &req.upserts {
            if self.nodes.get(&n.name) != Some(n) {
                self.nodes.insert(n.name.clone(), n.clone());
                changes.upserted.push(n.clone());
            }
        }
        self.applied = Applied::after(batch);
        Ok((self.applied.into(), changes))
    }

    /// The nodes, by name.
    pub fn nodes(&self) -> &BTreeMap<String, ClusterNode> {
        &self.nodes
    }

    /// The entry of the node this driver runs on, when the sender named one.
    pub fn local(&self) -> Option<&ClusterNode> {
        self.nodes.values().find(|n| n.local)
    }

    /// The generation applied (0: nothing yet).
    pub fn generation(&self) -> u64 {
        self.applied.generation
    }
}

/// The pod CIDRs of a node, parsed (entries were checked on the way in).
pub fn pod_cidrs(n: &ClusterNode) -> Vec<IpNet> {
    n.pod_cidrs.iter().filter_map(|c| c.parse().ok()).collect()
}

/// The addresses of a node, parsed.
pub fn addresses(n: &ClusterNode) -> Vec<IpAddr> {
    n.addresses.iter().filter_map(|a| a.parse().ok()).collect()
}

impl From<&ProgramNodesRequest> for Batch {
    fn from(r: &ProgramNodesRequest) -> Self {
        Self {
            epoch: r.epoch,
            generation: r.generation,
            full_sync: r.full_sync,
        }
    }
}

impl From<Applied> for ProgramNodesResponse {
    fn from(a: Applied) -> Self {
        Self {
            applied_generation: a.generation,
            applied_epoch: a.epoch,
        }
    }
}

impl Splittable for ProgramNodesRequest {
    crate::parts::stamped!();
    fn split_items(self, max: usize) -> Vec<Self> {
        let mut template = self.empty_like();
        template.set_part(u32::MAX, true);
        let mut f = Filling::new(template, max);
        f.fill(self.upserts, |r| &mut r.upserts);
        f.fill(self.deletes, |r| &mut r.deletes);
        f.parts
    }
    fn append(&mut self, o: Self) {
        self.upserts.extend(o.upserts);
        self.deletes.extend(o.deletes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn node(name: &str, addr: &str, cidr: &str) -> ClusterNode {
        ClusterNode {
            name: name.into(),
            addresses: vec![addr.into()],
            pod_cidrs: vec![cidr.into()],
            local: false,
        }
    }

    fn req(generation: u64, full: bool, up: Vec<ClusterNode>, del: &[&str]) -> ProgramNodesRequest {
        ProgramNodesRequest {
            epoch: 5,
            generation,
            full_sync: full,
            upserts: up,
            deletes: del.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn field(s: Status) -> String {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        s.message()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn fields_are_checked_as_the_contract_says() {
        let mut t = NodeTable::default();
        let bad = |n: ClusterNode| req(1, true, vec![n], &[]);
        let mut n = node("a", "192.0.2.1", "10.244.1.0/24");
        n.name = "Not_A_Name".into();
        assert_eq!(field(t.apply(&bad(n)).unwrap_err()), "upserts[0].name");
        let n = node("a", "192.0.2.300", "10.244.1.0/24");
        assert_eq!(
            field(t.apply(&bad(n)).unwrap_err()),
            "upserts[0].addresses[0]"
        );
        let n = node("a", "192.0.2.1", "10.244.1.1/24");
        assert_eq!(
            field(t.apply(&bad(n)).unwrap_err()),
            "upserts[0].pod_cidrs[0]"
        );
        let mut n = node("a", "192.0.2.1", "10.244.1.0/24");
        n.pod_cidrs.push("10.244.2.0/24".into());
        assert_eq!(
            field(t.apply(&bad(n)).unwrap_err()),
            "upserts[0].pod_cidrs[1]"
        );
        let mut n = node("a", "192.0.2.1", "10.244.1.0/24");
        n.addresses.push("192.0.2.2".into());
        assert_eq!(
            field(t.apply(&bad(n)).unwrap_err()),
            "upserts[0].addresses[1]"
        );
        assert_eq!(
            field(t.apply(&req(0, true, vec![], &[])).unwrap_err()),
            "generation"
        );
        assert_eq!(t.generation(), 0, "nothing applied by a refused batch");
        // Dual-stack and empty entries are fine.
        let mut n = node("b", "192.0.2.2", "10.244.2.0/24");
        n.addresses.push("2001:db8::2".into());
        n.pod_cidrs.push("fd00:10:244:2::/64".into());
        let empty = ClusterNode {
            name: "c".into(),
            ..Default::default()
        };
        assert!(t.apply(&req(1, true, vec![n, empty], &[])).is_ok());
    }

    #[test]
    fn changes_name_only_the_nodes_that_changed() {
        let mut t = NodeTable::default();
        let (_, c) = t
            .apply(&req(
                1,
                true,
                vec![
                    node("a", "192.0.2.1", "10.244.1.0/24"),
                    node("b", "192.0.2.2", "10.244.2.0/24"),
                ],
                &[],
            ))
            .unwrap();
        assert_eq!(c.upserted.len(), 2);
        // A delta changing b's address and removing a.
        let (resp, c) = t
            .apply(&req(
                2,
                false,
                vec![node("b", "192.0.2.9", "10.244.2.0/24")],
                &["a", "zz"],
            ))
            .unwrap();
        assert_eq!(resp.applied_generation, 2);
        assert_eq!(c.upserted, vec![node("b", "192.0.2.9", "10.244.2.0/24")]);
        assert_eq!(c.removed, vec![node("a", "192.0.2.1", "10.244.1.0/24")]);
        // The same entry again changes nothing; a replay neither.
        let (_, c) = t
            .apply(&req(
                3,
                false,
                vec![node("b", "192.0.2.9", "10.244.2.0/24")],
                &[],
            ))
            .unwrap();
        assert!(c.is_empty());
        let (resp, c) = t.apply(&req(3, false, vec![], &["b"])).unwrap();
        assert!(c.is_empty() && resp.applied_generation == 3);
        // A full sync removes what it does not name.
        let (_, c) = t
            .apply(&req(
                4,
                true,
                vec![node("c", "192.0.2.3", "10.244.3.0/24")],
                &[],
            ))
            .unwrap();
        assert_eq!(c.removed.len(), 1);
        assert_eq!(t.nodes().keys().collect::<Vec<_>>(), ["c"]);
        // The generation rules hold (an older generation is refused).
        let s = t.apply(&req(2, false, vec![], &[])).unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition);
    }

    #[test]
    fn a_full_sync_in_parts_applies_at_the_last() {
        let mut t = NodeTable::default();
        let all: Vec<ClusterNode> = (0..2000)
            .map(|i| node(&format!("node-{i}"), "192.0.2.1", "10.244.1.0/24"))
            .collect();
        let parts = crate::parts::split(req(1, true, all, &[]), 16 * 1024);
        assert!(parts.len() > 2);
        let last = parts.len() - 1;
        for (i, p) in parts.into_iter().enumerate() {
            let (resp, c) = t.apply(&p).unwrap();
            if i < last {
                assert_eq!(resp.applied_generation, 0);
                assert!(c.is_empty());
            } else {
                assert_eq!(resp.applied_generation, 1);
                assert_eq!(c.upserted.len(), 2000);
            }
        }
        assert_eq!(t.nodes().len(), 2000);
    }
}
