//! Routes to the other nodes' pods, from the cluster's node table (the host's
//! `Cluster/ProgramNodes`).
//!
//! A node on a subnet this node is attached to is reached directly: one route per pod CIDR,
//! `<its pod CIDR> via <its address>`, as kindnet and flannel's host-gw do; the pods' own
//! addresses travel unchanged. A node that is not (another subnet behind a router) is reported
//! (condition `NodesRouted`) and not routed. Routes carry the protocol [`PROTOCOL`], so the ones
//! this driver made are told from everyone else's: after a restart, the first full sync removes
//! the ones no node wants any more and nothing else. A change of one node touches only its own
//! routes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlet_sdk::nodes;
use netlet_sdk::proto::ClusterNode;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::RouteMessageBuilder;

use crate::netlink::{Netlink, NlError, NlResult, Within, errno};

/// The route protocol of the routes this driver makes (`ip route show proto 147`): an otherwise
/// unassigned number (see /etc/iproute2/rt_protos).
pub const PROTOCOL: u8 = 147;

/// One route to another node's pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The other node's pod CIDR.
    pub dst: IpNet,
    /// Its address, on a subnet of this node.
    pub via: IpAddr,
}

/// What the routes to other nodes are.
#[derive(Debug, Default)]
pub struct Routes {
    /// Routes made, by node.
    installed: BTreeMap<String, Vec<Route>>,
    /// Nodes not routed, with why.
    unrouted: BTreeMap<String, String>,
    /// Whether routes left by an earlier run were looked for.
    swept: bool,
}

impl Routes {
    /// Nodes that are not routed, with why.
    pub fn unrouted(&self) -> &BTreeMap<String, String> {
        &self.unrouted
    }

    /// How many nodes are routed.
    pub fn routed(&self) -> usize {
        self.installed.values().filter(|r| !r.is_empty()).count()
    }

    /// Brings the routes of `touched` nodes (names; their entries in `table`, absent when the
    /// node is gone) to what the table wants, excluding `own` (this node's pod CIDRs). With
    /// `all`, every node's, and any route of [`PROTOCOL`] that no node wants goes.
    pub async fn apply(
        &mut self,
        nl: &Netlink,
        table: &BTreeMap<String, ClusterNode>,
        touched: &[String],
        own: &[IpNet],
        all: bool,
    ) -> NlResult<()> {
        let onlink = onlink_prefixes(nl).await?;
        let mut names: Vec<String> = touched.to_vec();
        if all {
            names.extend(table.keys().cloned());
            names.extend(self.installed.keys().cloned());
            names.sort();
            names.dedup();
        }
        for name in names {
            let wanted = match table.get(&name) {
                Some(n) if !n.local => self.wanted(n, &onlink, own),
                _ => {
                    self.unrouted.remove(&name);
                    Vec::new()
                }
            };
            let had = self.installed.remove(&name).unwrap_or_default();
            for r in had.iter().filter(|r| !wanted.contains(r)) {
                delete(nl, r).await?;
            }
            for r in &wanted {
                add(nl, r).await?;
            }
            if !wanted.is_empty() {
                self.installed.insert(name, wanted);
            }
        }
        if all && !self.swept {
            let keep: Vec<&Route> = self.installed.values().flatten().collect();
            for m in ours(nl).await? {
                let Some(r) = route_of(&m) else { continue };
                if !keep.contains(&&r) {
                    tracing::info!(dst = %r.dst, via = %r.via, "route of an earlier run removed");
                    delete(nl, &r).await?;
                }
            }
            self.swept = true;
        }
        Ok(())
    }

    /// The routes `n`'s pods need (its unroutable CIDRs noted in `unrouted`).
    fn wanted(&mut self, n: &ClusterNode, onlink: &[IpNet], own: &[IpNet]) -> Vec<Route> {
        let addrs = nodes::addresses(n);
        let mut out = Vec::new();
        let mut why = Vec::new();
        for dst in nodes::pod_cidrs(n) {
            if own
                .iter()
                .any(|o| o.contains(&dst.network()) || dst.contains(&o.network()))
            {
                why.push(format!("{dst} overlaps this node's pod CIDRs"));
                continue;
            }
            let Some(via) = addrs.iter().find(|a| a.is_ipv4() == dst.addr().is_ipv4()) else {
                why.push(format!("{dst}: the node has no address of its family"));
                continue;
            };
            if !onlink.iter().any(|p| p.contains(via)) {
                why.push(format!(
                    "{dst}: {via} is not on a subnet this node is attached to"
                ));
                continue;
            }
            out.push(Route { dst, via: *via });
        }
        if why.is_empty() {
            self.unrouted.remove(&n.name);
        } else {
            self.unrouted.insert(n.name.clone(), why.join("; "));
        }
        out
    }
}

fn message(r: &Route) -> NlResult<RouteMessage> {
    fn bad<E: std::fmt::Display>(r: &Route) -> impl FnOnce(E) -> NlError + '_ {
        move |e| NlError {
            what: format!("route {} via {}", r.dst, r.via),
            errno: None,
            message: e.to_string(),
        }
    }
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .and_then(|b| b.gateway(r.via))
        .map_err(bad(r))?
        .protocol(RouteProtocol::Other(PROTOCOL))
        .build())
}

async fn add(nl: &Netlink, r: &Route) -> NlResult<()> {
    nl.handle()
        .route()
        .add(message(r)?)
        .replace()
        .execute()
        .within(format!("add route {} via {}", r.dst, r.via))
        .await
}

async fn delete(nl: &Netlink, r: &Route) -> NlResult<()> {
    let res = nl
        .handle()
        .route()
        .del(message(r)?)
        .execute()
        .within(format!("delete route {} via {}", r.dst, r.via))
        .await;
    match res {
        // ESRCH: gone already (its link went down, or somebody removed it).
        Err(e) if e.errno == Some(3) || e.errno == Some(errno::ENODEV) => Ok(()),
        other => other,
    }
}

/// The routes of [`PROTOCOL`] in the main table, both families.
async fn ours(nl: &Netlink) -> NlResult<Vec<RouteMessage>> {
    let mut out = Vec::new();
    for m in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let all: Vec<RouteMessage> = nl
            .handle()
            .route()
            .get(m)
            .execute()
            .try_collect()
            .within("list routes")
            .await?;
        out.extend(
            all.into_iter()
                .filter(|m| m.header.protocol == RouteProtocol::Other(PROTOCOL)),
        );
    }
    Ok(out)
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let mut dst = None;
    let mut via = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip(d),
            RouteAttribute::Gateway(g) => via = ip(g),
            _ => {}
        }
    }
    let dst = IpNet::new(dst?, m.header.destination_prefix_length).ok()?;
    Some(Route { dst, via: via? })
}

/// The prefixes of this node's own addresses (what is directly reachable), loopback and
/// link-local left out.
async fn onlink_prefixes(nl: &Netlink) -> NlResult<Vec<IpNet>> {
    let all: Vec<_> = nl
        .handle()
        .address()
        .get()
        .execute()
        .try_collect()
        .within("list addresses")
        .await?;
    let mut out = Vec::new();
    for m in all {
        let len = m.header.prefix_len;
        for a in &m.attributes {
            let ip = match a {
                AddressAttribute::Address(ip) => *ip,
                _ => continue,
            };
            let skip = ip.is_loopback()
                || matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
                || (m.header.family == AddressFamily::Inet && len == 32)
                || (m.header.family == AddressFamily::Inet6 && len == 128);
            if !skip && let Ok(p) = IpNet::new(ip, len) {
                out.push(p.trunc());
            }
        }
    }
    Ok(out)
}
