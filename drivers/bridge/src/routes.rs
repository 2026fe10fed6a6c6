//! Routes to the other nodes' pods, from the cluster's node table (the host's
//! `Cluster/ProgramNodes`). Per other node and pod CIDR, one of two paths, chosen per peer
//! (Calico's CrossSubnet idea) unless the configuration forces one:
//!
//! ```text
//!  direct   the node is on a subnet this node is attached to (kindnet, flannel host-gw):
//!             <its pod CIDR> via <its address>
//!  overlay  it is not (another subnet, behind a router; flannel's vxlan backend):
//!             <its pod CIDR> via <its VTEP> dev netlet.vx4 onlink       (route)
//!             <its VTEP> lladdr <its VTEP MAC> dev netlet.vx4 permanent  (neighbour)
//!             <its VTEP MAC> dst <its address> dev netlet.vx4 self       (forwarding entry)
//! ```
//!
//! A node's VTEP address is its pod CIDR's network address (10.244.2.0 for 10.244.2.0/24) and
//! its MAC derives from its name ([`crate::netlink::vtep_mac`]), so nothing but the node table
//! is needed. One VXLAN device per family (`netlet.vx4`, `netlet.vx6`: VNI [`VNI`], UDP port
//! [`PORT`], no learning), its MTU the underlay's less the encapsulation. The pods' own
//! addresses travel unchanged either way.
//!
//! Routes carry the protocol [`PROTOCOL`], so the ones this driver made are told from
//! everyone else's: after a restart, the first full sync removes the ones no node wants any
//! more and nothing else; the devices' neighbour and forwarding entries are checked likewise.
//! A change of one node touches only its own routes and entries.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlet_sdk::nodes;
use netlet_sdk::proto::ClusterNode;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::netlink::{Netlink, NlError, NlResult, Within, errno, exists_ok, vtep_mac};

/// The route protocol of the routes this driver makes (`ip route show proto 147`): an otherwise
/// unassigned number (see /etc/iproute2/rt_protos).
pub const PROTOCOL: u8 = 147;
/// The overlay's VXLAN network identifier.
pub const VNI: u32 = 4096;
/// The overlay's UDP port (IANA's VXLAN port).
pub const PORT: u16 = 4789;
/// Bytes VXLAN adds over an IPv4 underlay (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14);
/// over IPv6, 20 more.
pub const OVERHEAD_V4: u32 = 50;

/// How other nodes' pods are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Directly when the node is on a subnet of this node, else through the overlay.
    #[default]
    Auto,
    /// Directly only (nodes elsewhere are reported, not routed).
    Direct,
    /// Through the overlay always.
    Overlay,
}

/// One way to another node's pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hop {
    /// `dst via via`.
    Direct {
        /// The other node's pod CIDR.
        dst: IpNet,
        /// Its address, on a subnet of this node.
        via: IpAddr,
    },
    /// Through the VXLAN device of `dst`'s family.
    Overlay {
        /// The other node's pod CIDR.
        dst: IpNet,
        /// Its VTEP address (the CIDR's network address).
        vtep: IpAddr,
        /// Its VTEP MAC.
        mac: [u8; 6],
        /// Its address on the underlay.
        underlay: IpAddr,
    },
}

/// This node's end of the overlay for one family: the device's local address, its VTEP
/// address and MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Local {
    underlay: IpAddr,
    vtep: IpAddr,
    mac: [u8; 6],
}

fn device(v6: bool) -> &'static str {
    if v6 { "netlet.vx6" } else { "netlet.vx4" }
}

/// What the routes to other nodes are.
#[derive(Debug, Default)]
pub struct Routes {
    mode: Mode,
    /// Hops made, by node.
    installed: BTreeMap<String, Vec<Hop>>,
    /// Nodes not routed, with why.
    unrouted: BTreeMap<String, String>,
    /// The overlay's devices as made, per family (v4, v6).
    locals: [Option<Local>; 2],
    /// Whether leftovers of an earlier run were looked for.
    swept: bool,
}

impl Routes {
    /// Routes of `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            ..Default::default()
        }
    }

    /// Nodes that are not routed, with why.
    pub fn unrouted(&self) -> &BTreeMap<String, String> {
        &self.unrouted
    }

    /// How many nodes are routed.
    pub fn routed(&self) -> usize {
        self.installed.values().filter(|r| !r.is_empty()).count()
    }

    /// Brings the hops of `touched` nodes (names; their entries in `table`, absent when the
    /// node is gone) to what the table wants, excluding `own` (this node's pod CIDRs). With
    /// `all`, every node's, and whatever of [`PROTOCOL`] or on the overlay's devices no node
    /// wants goes.
    pub async fn apply(
        &mut self,
        nl: &Netlink,
        table: &BTreeMap<String, ClusterNode>,
        touched: &[String],
        own: &[IpNet],
        mut all: bool,
    ) -> NlResult<()> {
        let onlink = onlink_prefixes(nl).await?;
        // This node's overlay ends; a change (new address, new pod CIDR) remakes the device
        // and every node's hops.
        let local = table.values().find(|n| n.local);
        for v6 in [false, true] {
            let want = local.and_then(|l| local_end(l, v6));
            let slot = &mut self.locals[usize::from(v6)];
            if *slot != want {
                if slot.take().is_some() || !self.swept {
                    delete_link(nl, device(v6)).await?;
                }
                if let Some(w) = &want {
                    let mtu = underlay_mtu(nl, &onlink, w.underlay).await?;
                    make_device(nl, v6, w, mtu).await?;
                }
                *slot = want;
                all = true;
            }
        }
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
            for h in had.iter().filter(|h| !wanted.contains(h)) {
                remove(nl, h).await?;
            }
            for h in &wanted {
                add(nl, h).await?;
            }
            if !wanted.is_empty() {
                self.installed.insert(name, wanted);
            }
        }
        if all && !self.swept {
            self.sweep(nl).await?;
            self.swept = true;
        }
        Ok(())
    }

    /// Removes routes of [`PROTOCOL`] and overlay entries no node wants (an earlier run's).
    async fn sweep(&self, nl: &Netlink) -> NlResult<()> {
        let keep: Vec<&Hop> = self.installed.values().flatten().collect();
        for m in ours(nl).await? {
            let Some((dst, gw)) = route_of(&m) else {
                continue;
            };
            let kept = keep.iter().any(|h| match h {
                Hop::Direct { dst: d, via } => *d == dst && *via == gw,
                Hop::Overlay { dst: d, vtep, .. } => *d == dst && *vtep == gw,
            });
            if !kept {
                tracing::info!(%dst, via = %gw, "route of an earlier run removed");
                ignore_gone(
                    nl.handle()
                        .route()
                        .del(m)
                        .execute()
                        .within("delete route")
                        .await,
                )?;
            }
        }
        for v6 in [false, true] {
            let Some(index) = nl.link_index(device(v6)).await? else {
                continue;
            };
            let entries: Vec<NeighbourMessage> = nl
                .handle()
                .neighbours()
                .get()
                .execute()
                .try_collect()
                .within("list neighbours")
                .await?;
            let fdb: Vec<NeighbourMessage> = nl
                .handle()
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute()
                .try_collect()
                .within("list forwarding entries")
                .await?;
            for m in entries.into_iter().chain(fdb) {
                if m.header.ifindex != index {
                    continue;
                }
                let (dst, lladdr) = neighbour_of(&m);
                let kept = keep.iter().any(|h| match h {
                    Hop::Overlay {
                        vtep,
                        mac,
                        underlay,
                        ..
                    } => {
                        lladdr.as_deref() == Some(mac.as_slice())
                            && (dst == Some(*vtep) || dst == Some(*underlay))
                    }
                    Hop::Direct { .. } => false,
                });
                // Entries the kernel makes itself (the all-zero default) are not ours.
                if !kept && lladdr.as_deref().is_some_and(|l| l != [0u8; 6]) {
                    ignore_gone(
                        nl.handle()
                            .neighbours()
                            .del(m)
                            .execute()
                            .within("delete overlay entry")
                            .await,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The hops `n`'s pods need (its unroutable CIDRs noted in `unrouted`).
    fn wanted(&mut self, n: &ClusterNode, onlink: &[(IpNet, u32)], own: &[IpNet]) -> Vec<Hop> {
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
            let v6 = matches!(dst, IpNet::V6(_));
            let Some(via) = addrs.iter().find(|a| a.is_ipv6() == v6) else {
                why.push(format!("{dst}: the node has no address of its family"));
                continue;
            };
            let direct = onlink.iter().any(|(p, _)| p.contains(via));
            let overlay = match self.mode {
                Mode::Direct => false,
                Mode::Overlay => true,
                Mode::Auto => !direct,
            };
            if !overlay {
                if direct {
                    out.push(Hop::Direct { dst, via: *via });
                } else {
                    why.push(format!(
                        "{dst}: {via} is not on a subnet this node is attached to (routing: direct)"
                    ));
                }
                continue;
            }
            if self.locals[usize::from(v6)].is_none() {
                why.push(format!(
                    "{dst}: no overlay of its family here (this node's entry has no address or pod CIDR of that family)"
                ));
                continue;
            }
            out.push(Hop::Overlay {
                dst,
                vtep: dst.network(),
                mac: vtep_mac(&n.name),
                underlay: *via,
            });
        }
        if why.is_empty() {
            self.unrouted.remove(&n.name);
        } else {
            self.unrouted.insert(n.name.clone(), why.join("; "));
        }
        out
    }
}

/// This node's overlay end for a family, from its own entry.
fn local_end(n: &ClusterNode, v6: bool) -> Option<Local> {
    let underlay = nodes::addresses(n)
        .into_iter()
        .find(|a| a.is_ipv6() == v6)?;
    let cidr = nodes::pod_cidrs(n)
        .into_iter()
        .find(|c| matches!(c, IpNet::V6(_)) == v6)?;
    Some(Local {
        underlay,
        vtep: cidr.network(),
        mac: vtep_mac(&n.name),
    })
}

fn route_message(dst: IpNet, gw: IpAddr, dev: Option<u32>) -> NlResult<RouteMessage> {
    let bad = |e: String| NlError {
        what: format!("route {dst} via {gw}"),
        errno: None,
        message: e,
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .and_then(|b| b.gateway(gw))
        .map_err(|e| bad(e.to_string()))?
        .protocol(RouteProtocol::Other(PROTOCOL));
    if let Some(i) = dev {
        b = b.output_interface(i).onlink();
    }
    Ok(b.build())
}

async fn index_of(nl: &Netlink, name: &str) -> NlResult<u32> {
    nl.link_index(name).await?.ok_or_else(|| NlError {
        what: format!("link {name}"),
        errno: Some(errno::ENODEV),
        message: "missing".into(),
    })
}

async fn add(nl: &Netlink, h: &Hop) -> NlResult<()> {
    match h {
        Hop::Direct { dst, via } => {
            nl.handle()
                .route()
                .add(route_message(*dst, *via, None)?)
                .replace()
                .execute()
                .within(format!("add route {dst} via {via}"))
                .await
        }
        Hop::Overlay {
            dst,
            vtep,
            mac,
            underlay,
        } => {
            let index = index_of(nl, device(dst.addr().is_ipv6())).await?;
            nl.handle()
                .neighbours()
                .add_bridge(index, mac)
                .destination(*underlay)
                .flags(NeighbourFlags::Own)
                .replace()
                .execute()
                .within(format!("add forwarding entry for {underlay}"))
                .await?;
            nl.handle()
                .neighbours()
                .add(index, *vtep)
                .link_layer_address(mac)
                .replace()
                .execute()
                .within(format!("add neighbour {vtep}"))
                .await?;
            nl.handle()
                .route()
                .add(route_message(*dst, *vtep, Some(index))?)
                .replace()
                .execute()
                .within(format!("add route {dst} via {vtep} over the overlay"))
                .await
        }
    }
}

/// ESRCH / ENOENT / ENODEV: gone already (its link went, or somebody removed it).
fn ignore_gone(r: NlResult<()>) -> NlResult<()> {
    match r {
        Err(e) if matches!(e.errno, Some(3) | Some(2) | Some(errno::ENODEV)) => Ok(()),
        other => other,
    }
}

async fn remove(nl: &Netlink, h: &Hop) -> NlResult<()> {
    match h {
        Hop::Direct { dst, via } => ignore_gone(
            nl.handle()
                .route()
                .del(route_message(*dst, *via, None)?)
                .execute()
                .within(format!("delete route {dst} via {via}"))
                .await,
        ),
        Hop::Overlay {
            dst,
            vtep,
            mac,
            underlay,
        } => {
            let Some(index) = nl.link_index(device(dst.addr().is_ipv6())).await? else {
                return Ok(());
            };
            ignore_gone(
                nl.handle()
                    .route()
                    .del(route_message(*dst, *vtep, Some(index))?)
                    .execute()
                    .within(format!("delete route {dst} via {vtep}"))
                    .await,
            )?;
            let mut neigh = NeighbourMessage::default();
            neigh.header.family = if vtep.is_ipv6() {
                AddressFamily::Inet6
            } else {
                AddressFamily::Inet
            };
            neigh.header.ifindex = index;
            neigh
                .attributes
                .push(NeighbourAttribute::Destination(address(*vtep)));
            ignore_gone(
                nl.handle()
                    .neighbours()
                    .del(neigh)
                    .execute()
                    .within(format!("delete neighbour {vtep}"))
                    .await,
            )?;
            let mut fdb = NeighbourMessage::default();
            fdb.header.family = AddressFamily::Bridge;
            fdb.header.ifindex = index;
            fdb.header.flags = NeighbourFlags::Own;
            fdb.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            fdb.attributes
                .push(NeighbourAttribute::Destination(address(*underlay)));
            ignore_gone(
                nl.handle()
                    .neighbours()
                    .del(fdb)
                    .execute()
                    .within(format!("delete forwarding entry for {underlay}"))
                    .await,
            )
        }
    }
}

fn address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

fn neighbour_of(m: &NeighbourMessage) -> (Option<IpAddr>, Option<Vec<u8>>) {
    let mut dst = None;
    let mut ll = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                dst = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                dst = Some(IpAddr::V6(*v6))
            }
            // A forwarding entry's (family AF_BRIDGE) destination comes unparsed.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = match b.len() {
                    4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(l) => ll = Some(l.clone()),
            _ => {}
        }
    }
    (dst, ll)
}

async fn delete_link(nl: &Netlink, name: &str) -> NlResult<()> {
    nl.delete_link(name).await.map(|_| ())
}

/// The MTU of the link holding `underlay` (1500 when it cannot be told).
async fn underlay_mtu(nl: &Netlink, onlink: &[(IpNet, u32)], underlay: IpAddr) -> NlResult<u32> {
    let Some((_, index)) = onlink
        .iter()
        .find(|(p, _)| p.addr() == underlay || p.contains(&underlay))
    else {
        return Ok(1500);
    };
    let link = nl
        .handle()
        .link()
        .get()
        .match_index(*index)
        .execute()
        .try_next()
        .within("get underlay link")
        .await?;
    Ok(link
        .and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        })
        .unwrap_or(1500))
}

/// Makes the overlay's device of a family (the old one, if any, is gone already).
async fn make_device(nl: &Netlink, v6: bool, l: &Local, underlay_mtu: u32) -> NlResult<()> {
    let name = device(v6);
    let overhead = OVERHEAD_V4 + if l.underlay.is_ipv6() { 20 } else { 0 };
    let b = LinkVxlan::new(name, VNI).port(PORT).learning(false);
    let b = match l.underlay {
        IpAddr::V4(a) => b.local(a),
        IpAddr::V6(a) => b.local6(a),
    };
    let res = nl
        .handle()
        .link()
        .add(
            b.mtu(underlay_mtu.saturating_sub(overhead))
                .address(l.mac.to_vec())
                .build(),
        )
        .execute()
        .within(format!("create {name}"))
        .await;
    exists_ok(res)?;
    let index = index_of(nl, name).await?;
    let prefix = if v6 { 128 } else { 32 };
    nl.add_address(index, l.vtep, prefix).await?;
    nl.handle()
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .within(format!("set {name} up"))
        .await?;
    tracing::info!(device = name, local = %l.underlay, vtep = %l.vtep, "overlay device ready");
    Ok(())
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

fn route_of(m: &RouteMessage) -> Option<(IpNet, IpAddr)> {
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
    Some((dst, via?))
}

/// The prefixes of this node's own addresses with their links (what is directly reachable),
/// loopback, link-local, host routes and the overlay's own addresses left out.
async fn onlink_prefixes(nl: &Netlink) -> NlResult<Vec<(IpNet, u32)>> {
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
                out.push((p.trunc(), m.header.index));
            }
        }
    }
    Ok(out)
}
