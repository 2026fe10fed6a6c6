//! The nftables ruleset for Services, per family (`ip netlet-nft`, `ip6 netlet-nft`), and how
//! one Service's change becomes the few objects a transaction touches.
//!
//! ```text
//! nat-prerouting / nat-output (nat, -100)   jump services
//! services                                  daddr . l4proto . dport vmap @host-ports
//!                                           <local, not loopback> l4proto . dport vmap @host-ports-any
//!                                           (ip) daddr 127.0.0.1 l4proto . dport vmap @host-ports-any
//!                                           daddr . l4proto . dport vmap @service-ips
//!                                           <node address> l4proto . dport vmap @service-nodeports
//! svc-<ns>/<name>/<proto>/<port>            [masquerade mark]
//!                                           [affinity: id . saddr's entry in @affinity-NN gone
//!                                            from @live-NN -> delete it; present -> refresh it,
//!                                            dnat to it]
//!                                           dnat to id . numgen random mod N map @endpoints-NN
//!                                           (-> endpoint address . port) [update @affinity-NN]
//! ext-<...>  (NodePort, external/LB IPs)    Cluster: mark for masquerade; Local: pods and the node
//!                                           go to svc-<...>, others keep their address
//! fw-<...>  (LoadBalancer IPs with          allowed source -> goto ext-<...>; else drop
//!           loadBalancerSourceRanges)
//! hp-<sandbox>/<proto>/<host ip|*>:<port>   a pod's host port: hairpin mark, dnat to the pod
//! filter-input/forward/output (filter,-110) ct state new jump endpoints-check
//! endpoints-check                           vmap @no-endpoint-services / @no-endpoint-nodeports
//!                                           (goto reject-chain: refused; drop: none local)
//! nat-postrouting (nat, 100)                saddr . daddr @hairpin (a pod sent to itself) -> masquerade
//!                                           mark set -> clear it, masquerade
//!                                           (ip) saddr 127.0.0.0/8, oif not lo -> masquerade
//! filter-input (ip)                         new, daddr 127.0.0.0/8, saddr not -> drop
//!                                           (route_localnet is on for localhost host ports)
//! ```
//!
//! Endpoints are data, not chains: they sit in shared maps keyed by the chain's id and a slot
//! whose values are `address . port`, so adding or removing one endpoint changes a few elements
//! (and, when the count changes, the chain's one rule); no verdict changes, so the kernel does
//! not re-check the table's jump graph. Never the other Services.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netlet_nftables::{
    self as nft, BaseChain, Batch, Expr, Family, MetaKey, Operator, Register, SetSpec, VerdictData,
    base, hook,
};
use netlet_sdk::proto::{
    Endpoint, HostPorts, Protocol, Service, ServiceType, SessionAffinity, TrafficPolicy,
};

/// The driver's table name (in families ip and ip6).
pub const TABLE: &str = "netlet-nft";
/// The packet mark bit that asks for masquerade.
pub const MASQ_BIT: u32 = 0x4000;
const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_EP_SERVICES: &str = "no-endpoint-services";
const NO_EP_NODEPORTS: &str = "no-endpoint-nodeports";
const HOST_PORTS: &str = "host-ports";
const HAIRPIN: &str = "hairpin";
/// Service chains share their endpoint, affinity and live-endpoint maps in this many buckets
/// (by chain id): a rule naming a data map makes the kernel walk the map's elements, and a
/// table's sets are found by name one after another, so neither one map for all nor one per
/// Service scales.
const BUCKETS: u64 = 256;

/// The endpoint map (`chain id . slot -> addr . port`), affinity map (`chain id . client ->
/// addr . port`, timed) and live-endpoint set (`chain id . addr . port`) of a chain's bucket.
fn bucket(id: u64) -> [String; 3] {
    let b = id % BUCKETS;
    [
        format!("endpoints-{b:02}"),
        format!("affinity-{b:02}"),
        format!("live-{b:02}"),
    ]
}
const HOST_PORTS_ANY: &str = "host-ports-any";
const REJECT_CHAIN: &str = "reject-chain";
const MARK_CHAIN: &str = "mark-for-masquerade";
/// nft's types, for listings: inet_proto, inet_service, mark.
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_MARK: u32 = 19;
/// Kubernetes' default ClientIP affinity timeout.
const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// What the ruleset needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Pod CIDRs (at most one per family is used): ClusterIP traffic from elsewhere is
    /// masqueraded; externalTrafficPolicy Local lets traffic from them use every endpoint.
    pub cluster_cidrs: Vec<IpNet>,
    /// Where NodePorts answer; empty: every local address but loopback.
    pub nodeport_cidrs: Vec<IpNet>,
}

/// The address family's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fam {
    /// IPv4
    V4,
    /// IPv6
    V6,
}

impl Fam {
    /// Both families.
    pub const ALL: [Fam; 2] = [Fam::V4, Fam::V6];

    /// The nftables table family.
    pub fn family(self) -> Family {
        match self {
            Fam::V4 => Family::Ip,
            Fam::V6 => Family::Ip6,
        }
    }
    fn addr_len(self) -> u32 {
        match self {
            Fam::V4 => 4,
            Fam::V6 => 16,
        }
    }
    /// nft's type: ipv4_addr / ipv6_addr.
    fn addr_type(self) -> u32 {
        match self {
            Fam::V4 => 7,
            Fam::V6 => 8,
        }
    }
    fn saddr_offset(self) -> u32 {
        match self {
            Fam::V4 => 12,
            Fam::V6 => 8,
        }
    }
    fn daddr_offset(self) -> u32 {
        match self {
            Fam::V4 => 16,
            Fam::V6 => 24,
        }
    }
    fn of(ip: &IpAddr) -> Fam {
        if ip.is_ipv4() { Fam::V4 } else { Fam::V6 }
    }
    /// The register after an address loaded into Reg32_00.
    fn after_addr(self) -> (Register, Register) {
        match self {
            Fam::V4 => (Register::Reg32_01, Register::Reg32_02),
            Fam::V6 => (Register::Reg32_04, Register::Reg32_05),
        }
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn proto_num(p: i32) -> u8 {
    match Protocol::try_from(p).unwrap_or(Protocol::Tcp) {
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
        _ => 6,
    }
}

fn proto_name(n: u8) -> &'static str {
    match n {
        17 => "udp",
        132 => "sctp",
        _ => "tcp",
    }
}

/// `addr . proto . port`, each field padded to 4 bytes.
fn ip_key(ip: &IpAddr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = ip_bytes(ip);
    k.extend([proto, 0, 0, 0]);
    k.extend(port.to_be_bytes());
    k.extend([0, 0]);
    k
}

/// `proto . port`.
fn port_key(proto: u8, port: u16) -> Vec<u8> {
    let mut k = vec![proto, 0, 0, 0];
    k.extend(port.to_be_bytes());
    k.extend([0, 0]);
    k
}

/// A Service chain's id in the shared maps' keys (FNV-1a of its name: stable, and with 64 bits
/// no two of a node's chains collide in practice).
fn chain_id(name: &str) -> u64 {
    netlet_sdk::hash::fnv1a(name.as_bytes())
}

/// `addr . port` as a map's data (the port padded to 4 bytes).
fn backend_bytes(ip: &IpAddr, port: u16) -> Vec<u8> {
    let mut d = ip_bytes(ip);
    d.extend(port.to_be_bytes());
    d.extend([0, 0]);
    d
}

/// The `hairpin` set's key for an endpoint address: `addr . addr`.
pub fn hairpin_key(ip: &IpAddr) -> Vec<u8> {
    let mut k = ip_bytes(ip);
    k.extend(ip_bytes(ip));
    k
}

/// A set element's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem {
    /// A plain set's key.
    Key,
    /// A verdict map's verdict.
    Verdict(VerdictData),
    /// A data map's value.
    Data(Vec<u8>),
}

/// How a Service chain treats the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masq {
    /// Leave it.
    None,
    /// Masquerade every connection (external traffic, externalTrafficPolicy Cluster).
    All,
    /// Masquerade unless it comes from the pod CIDR (ClusterIP with a known pod CIDR).
    NotFrom(IpNet),
    /// externalTrafficPolicy Local: the pod CIDR and the node itself go to the internal chain
    /// (the node's own connections masqueraded); others keep their address.
    ShortCircuit(Option<IpNet>, String),
}

/// What a chain holds; the rules are generated from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A Service port's chain: source handling, affinity, random choice of a slot.
    Service {
        /// Source handling.
        masq: Masq,
        /// The chain's id in the `endpoints`, `affinity` and `live-endpoints` keys.
        id: u64,
        /// ClientIP affinity timeout, ms.
        affinity_ms: Option<u64>,
        /// Number of endpoint slots.
        slots: u32,
    },
    /// loadBalancerSourceRanges in front of a LoadBalancer IP: allowed sources go on to
    /// `then`, others are dropped.
    Firewall {
        /// Allowed source CIDRs.
        allowed: Vec<IpNet>,
        /// The chain allowed traffic goes to.
        then: String,
    },
    /// A single destination (a pod's host port).
    Endpoint {
        /// Address.
        ip: IpAddr,
        /// Port.
        port: u16,
        /// Protocol number.
        proto: u8,
    },
}

/// What a Service takes that no other may: an address . protocol . port (`false`) or a
/// protocol . NodePort (`true`) in one family's table.
pub type Claim = (Fam, bool, Vec<u8>);

fn claim_kind(set: &str) -> Option<bool> {
    match set {
        SERVICE_IPS | NO_EP_SERVICES => Some(false),
        SERVICE_NODEPORTS | NO_EP_NODEPORTS => Some(true),
        _ => None,
    }
}

/// The claims of one Service's objects in `fam`.
pub fn claims(o: &Objects, fam: Fam) -> Vec<Claim> {
    o.elems
        .keys()
        .filter_map(|(set, key)| claim_kind(set).map(|n| (fam, n, key.clone())))
        .collect()
}

/// Leaves out the elements behind a claim another Service holds.
pub fn give_up(o: &mut Objects, c: &Claim) {
    o.elems
        .retain(|(set, key), _| !(claim_kind(set) == Some(c.1) && *key == c.2));
}

/// A claim for messages: "10.96.0.10 tcp 80" or "NodePort tcp 30080".
pub fn describe(c: &Claim) -> String {
    let k = &c.2;
    if c.1 {
        return format!(
            "NodePort {} {}",
            proto_name(k[0]),
            u16::from_be_bytes([k[4], k[5]])
        );
    }
    let n = c.0.addr_len() as usize;
    let ip: Option<IpAddr> = match n {
        4 => <[u8; 4]>::try_from(&k[..4]).ok().map(IpAddr::from),
        _ => <[u8; 16]>::try_from(&k[..16]).ok().map(IpAddr::from),
    };
    let ip = ip.map_or_else(String::new, |i| i.to_string());
    format!(
        "{ip} {} {}",
        proto_name(k[n]),
        u16::from_be_bytes([k[n + 4], k[n + 5]])
    )
}

/// A backend: address, port, protocol number.
pub type Backend = (IpAddr, u16, u8);

/// The nftables objects of one Service in one family.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    /// Chains by name.
    pub chains: BTreeMap<String, Body>,
    /// Elements: (set, key) → value.
    pub elems: BTreeMap<(String, Vec<u8>), Elem>,
    /// Endpoints (`addr:port`) in slot order, per Service chain (kept stable across changes).
    pub slots: BTreeMap<String, Vec<String>>,
    /// Every backend the Service's maps lead to.
    pub backends: BTreeSet<Backend>,
}

impl Objects {
    /// Whether there is nothing.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.elems.is_empty()
    }
}

fn parse_ips(list: &[String], fam: Fam) -> Vec<IpAddr> {
    list.iter()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .filter(|ip| Fam::of(ip) == fam)
        .collect()
}

fn cidr_of(cidrs: &[IpNet], fam: Fam) -> Option<IpNet> {
    cidrs
        .iter()
        .copied()
        .find(|c| matches!((c, fam), (IpNet::V4(_), Fam::V4) | (IpNet::V6(_), Fam::V6)))
}

/// The endpoint's port for a Service port: by name, else the numeric target port.
fn endpoint_port(e: &Endpoint, name: &str, proto: u8, target: u32, port: u32) -> Option<u16> {
    if e.ports.is_empty() {
        let p = if target != 0 { target } else { port };
        return u16::try_from(p).ok().filter(|p| *p != 0);
    }
    e.ports
        .iter()
        .find(|p| p.name == name && proto_num(p.protocol) == proto)
        .and_then(|p| u16::try_from(p.port).ok())
        .filter(|p| *p != 0)
}

/// Keeps every endpoint that stays in its slot; fills holes with the last ones, then
/// appends newcomers. A removal moves at most one other endpoint.
fn assign_slots(old: Option<&Vec<String>>, want: &BTreeSet<String>) -> Vec<String> {
    let mut slots: Vec<Option<String>> = old
        .map(|o| {
            o.iter()
                .map(|c| want.contains(c).then(|| c.clone()))
                .collect()
        })
        .unwrap_or_default();
    let placed: BTreeSet<&String> = slots.iter().flatten().collect();
    let mut newcomers: Vec<String> = want
        .iter()
        .filter(|c| !placed.contains(c))
        .cloned()
        .collect();
    // Trailing holes go; inner holes take a newcomer or the last endpoint.
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            if let Some(n) = newcomers.pop() {
                slots[i] = Some(n);
            } else {
                while slots.last().is_some_and(Option::is_none) {
                    slots.pop();
                }
                if i < slots.len() {
                    slots.swap_remove(i);
                    continue;
                }
            }
        }
        i += 1;
    }
    let mut out: Vec<String> = slots.into_iter().flatten().collect();
    newcomers.reverse();
    out.extend(newcomers);
    out
}

/// The objects one Service needs in one family, given what it had (for stable slots).
pub fn desired(
    set: &Settings,
    svc: Option<&Service>,
    eps: &BTreeMap<String, Endpoint>,
    fam: Fam,
    old: Option<&Objects>,
) -> Objects {
    let mut o = Objects::default();
    let Some(svc) = svc else { return o };
    if svc.r#type == ServiceType::ExternalName as i32 {
        return o;
    }
    let key = svc.key.clone().unwrap_or_default();
    let cluster_ips = parse_ips(&svc.cluster_ips, fam);
    let mut external_ips = parse_ips(&svc.external_ips, fam);
    let lb_ips = parse_ips(&svc.load_balancer_ips, fam);
    external_ips.extend(lb_ips.iter().copied());
    // loadBalancerSourceRanges: on LoadBalancer IPs, only these sources (of this family; none
    // when all are of the other one).
    let source_ranges: Vec<IpNet> = svc
        .load_balancer_source_ranges
        .iter()
        .filter_map(|c| c.parse::<IpNet>().ok())
        .collect();
    let firewalled = !source_ranges.is_empty();
    let allowed: Vec<IpNet> = source_ranges
        .into_iter()
        .filter(|c| matches!((c, fam), (IpNet::V4(_), Fam::V4) | (IpNet::V6(_), Fam::V6)))
        .collect();
    let node_ports = svc.r#type == ServiceType::NodePort as i32
        || svc.r#type == ServiceType::LoadBalancer as i32;
    let has_fam_ip = !cluster_ips.is_empty() || !external_ips.is_empty();
    if !has_fam_ip {
        // A single-stack Service of the other family: its NodePorts are not served here.
        return o;
    }
    let affinity_timeout = (svc.session_affinity == SessionAffinity::ClientIp as i32).then_some(
        match svc.session_affinity_timeout_seconds {
            0 => DEFAULT_AFFINITY_SECONDS,
            s => s,
        },
    );
    let etp_local = svc.external_traffic_policy == TrafficPolicy::Local as i32;
    let fam_eps: Vec<(&Endpoint, IpAddr)> = eps
        .values()
        .filter_map(|e| e.address.parse::<IpAddr>().ok().map(|ip| (e, ip)))
        .filter(|(_, ip)| Fam::of(ip) == fam)
        .collect();
    let cluster_cidr = cidr_of(&set.cluster_cidrs, fam);
    for p in &svc.ports {
        let proto = proto_num(p.protocol);
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let id = format!(
            "{}/{}/{}/{}",
            key.namespace,
            key.name,
            proto_name(proto),
            port
        );
        let svc_chain = format!("svc-{id}");
        let ext_chain = format!("ext-{id}");
        let has_external = !external_ips.is_empty() || (node_ports && p.node_port != 0);
        let mut internal = BTreeSet::new();
        let mut external = BTreeSet::new();
        let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut any = false;
        for (e, ip) in &fam_eps {
            let Some(eport) = endpoint_port(e, &p.name, proto, p.target_port, p.port) else {
                continue;
            };
            // Usable somewhere (ready, or the serving∧terminating fallback).
            any |= e.ready || (e.serving && e.terminating);
            if !e.use_for_internal && !e.use_for_external {
                continue;
            }
            let id = match ip {
                IpAddr::V4(a) => format!("{a}:{eport}"),
                IpAddr::V6(a) => format!("[{a}]:{eport}"),
            };
            if e.use_for_internal {
                internal.insert(id.clone());
            }
            if e.use_for_external && has_external {
                external.insert(id.clone());
            }
            if e.use_for_internal || has_external {
                o.backends.insert((*ip, eport, proto));
            }
            data.insert(id, backend_bytes(ip, eport));
        }
        // No endpoint for this traffic: refused, unless a Local policy hides endpoints that
        // exist on other nodes: then dropped (kube-proxy's rule).
        let itp_local = svc.internal_traffic_policy == TrafficPolicy::Local as i32;
        let none_verdict = |local: bool| {
            if any && local {
                VerdictData::Drop
            } else {
                VerdictData::Goto(REJECT_CHAIN.into())
            }
        };
        let chain_for = |o: &mut Objects, name: &str, members: &BTreeSet<String>, masq: Masq| {
            let id = chain_id(name);
            let [endpoints, _, live] = bucket(id);
            let slots = assign_slots(old.and_then(|x| x.slots.get(name)), members);
            for (i, ep) in slots.iter().enumerate() {
                let mut key = id.to_ne_bytes().to_vec();
                key.extend((i as u32).to_ne_bytes());
                o.elems
                    .insert((endpoints.clone(), key), Elem::Data(data[ep].clone()));
                if affinity_timeout.is_some() {
                    let mut key = id.to_ne_bytes().to_vec();
                    key.extend(&data[ep]);
                    o.elems.insert((live.clone(), key), Elem::Key);
                }
            }
            o.chains.insert(
                name.to_string(),
                Body::Service {
                    masq,
                    id,
                    affinity_ms: affinity_timeout.map(|t| u64::from(t) * 1000),
                    slots: slots.len() as u32,
                },
            );
            o.slots.insert(name.to_string(), slots);
        };
        let internal_masq = cluster_cidr.map_or(Masq::None, Masq::NotFrom);
        chain_for(&mut o, &svc_chain, &internal, internal_masq);
        if has_external {
            let masq = if etp_local {
                Masq::ShortCircuit(cluster_cidr, svc_chain.clone())
            } else {
                Masq::All
            };
            chain_for(&mut o, &ext_chain, &external, masq);
        }
        let target = |members: &BTreeSet<String>, chain: &str, local: bool| {
            if members.is_empty() {
                (NO_EP_SERVICES, none_verdict(local))
            } else {
                (SERVICE_IPS, VerdictData::Goto(chain.to_string()))
            }
        };
        for ip in &cluster_ips {
            let (map, v) = target(&internal, &svc_chain, itp_local);
            o.elems
                .insert((map.into(), ip_key(ip, proto, port)), Elem::Verdict(v));
        }
        if has_external {
            for ip in &external_ips {
                let (map, mut v) = target(&external, &ext_chain, etp_local);
                if firewalled && map == SERVICE_IPS && lb_ips.contains(ip) {
                    let fw = format!("fw-{id}");
                    o.chains.insert(
                        fw.clone(),
                        Body::Firewall {
                            allowed: allowed.clone(),
                            then: ext_chain.clone(),
                        },
                    );
                    v = VerdictData::Goto(fw);
                }
                o.elems
                    .insert((map.into(), ip_key(ip, proto, port)), Elem::Verdict(v));
            }
            if node_ports && p.node_port != 0 {
                let (map, v) = target(&external, &ext_chain, etp_local);
                let map = if map == SERVICE_IPS {
                    SERVICE_NODEPORTS
                } else {
                    NO_EP_NODEPORTS
                };
                o.elems.insert(
                    (map.into(), port_key(proto, p.node_port as u16)),
                    Elem::Verdict(v),
                );
            }
        }
    }
    o
}

/// The objects of every pod's host ports in one family: per mapping a chain (hairpin mark, dnat
/// to the pod) reached from `host-ports` (a given node address) or `host-ports-any`.
pub fn host_port_objects(all: &BTreeMap<String, HostPorts>, fam: Fam) -> Objects {
    let mut o = Objects::default();
    for h in all.values() {
        let Some(pod_ip) = parse_ips(&h.pod_ips, fam).into_iter().next() else {
            continue;
        };
        // Chain names are at most 255 bytes; sandbox ids up to 256.
        let id: String = h.sandbox_id.chars().take(180).collect();
        for m in &h.port_mappings {
            let proto = proto_num(m.protocol);
            let (Ok(port), Ok(to)) = (u16::try_from(m.host_port), u16::try_from(m.container_port))
            else {
                continue;
            };
            let host_ip = match m.host_ip.parse::<IpAddr>() {
                Ok(ip) if Fam::of(&ip) != fam => continue,
                Ok(ip) => Some(ip),
                Err(_) => None,
            };
            let chain = format!(
                "hp-{id}/{}/{}:{port}",
                proto_name(proto),
                host_ip.map_or("*".to_string(), |ip| ip.to_string())
            );
            let elem = match host_ip {
                Some(ip) => (HOST_PORTS.to_string(), ip_key(&ip, proto, port)),
                None => (HOST_PORTS_ANY.to_string(), port_key(proto, port)),
            };
            o.elems
                .insert(elem, Elem::Verdict(VerdictData::Goto(chain.clone())));
            o.chains.insert(
                chain,
                Body::Endpoint {
                    ip: pod_ip,
                    port: to,
                    proto,
                },
            );
        }
    }
    o
}

/// `saddr` or `daddr` into Reg1 and, with `cidr`, compared against it.
fn addr_in(fam: Fam, daddr: bool, cidr: &IpNet, op: Operator) -> Vec<Expr> {
    let off = if daddr {
        fam.daddr_offset()
    } else {
        fam.saddr_offset()
    };
    nft::addr_in(off, cidr, op)
}

fn fib_local(daddr: bool) -> Vec<Expr> {
    vec![
        if daddr {
            nft::fib_daddr_type(Register::Reg1)
        } else {
            nft::fib_saddr_type(Register::Reg1)
        },
        nft::cmp(
            Operator::Equal,
            Register::Reg1,
            nft::RTN_LOCAL.to_ne_bytes().to_vec(),
        ),
    ]
}

fn goto(chain: &str) -> Expr {
    nft::verdict(&VerdictData::Goto(chain.into()))
}

fn jump(chain: &str) -> Expr {
    nft::verdict(&VerdictData::Jump(chain.into()))
}

/// The rules of a chain.
pub fn rules(fam: Fam, body: &Body) -> Vec<Vec<Expr>> {
    let saddr = || {
        nft::payload(
            base::NETWORK,
            fam.saddr_offset(),
            fam.addr_len(),
            Register::Reg1,
        )
    };
    match body {
        Body::Firewall { allowed, then } => {
            let mut r: Vec<Vec<Expr>> = allowed
                .iter()
                .map(|c| {
                    let mut e = addr_in(fam, false, c, Operator::Equal);
                    e.push(goto(then));
                    e
                })
                .collect();
            r.push(vec![nft::verdict(&VerdictData::Drop)]);
            r
        }
        Body::Endpoint { ip, port, .. } => vec![
            // The pod reaching itself: masqueraded (hairpin).
            vec![
                saddr(),
                nft::cmp(Operator::Equal, Register::Reg1, ip_bytes(ip)),
                jump(MARK_CHAIN),
            ],
            vec![
                nft::immediate(Register::Reg1, ip_bytes(ip)),
                nft::immediate(Register::Reg2, port.to_be_bytes().to_vec()),
                nft::dnat(fam == Fam::V6, Register::Reg1, Register::Reg2),
            ],
        ],
        Body::Service {
            masq,
            id,
            affinity_ms,
            slots,
        } => {
            let mut r = Vec::new();
            match masq {
                Masq::None => {}
                Masq::All => r.push(vec![jump(MARK_CHAIN)]),
                Masq::NotFrom(c) => {
                    let mut e = addr_in(fam, false, c, Operator::NotEqual);
                    e.push(jump(MARK_CHAIN));
                    r.push(e);
                }
                Masq::ShortCircuit(c, internal) => {
                    if let Some(c) = c {
                        let mut e = addr_in(fam, false, c, Operator::Equal);
                        e.push(goto(internal));
                        r.push(e);
                    }
                    let mut e = fib_local(false);
                    e.push(jump(MARK_CHAIN));
                    r.push(e);
                    let mut e = fib_local(false);
                    e.push(goto(internal));
                    r.push(e);
                }
            }
            // Registers: the chain's id in Reg32_00..01 then the chosen backend (`addr . port`)
            // from Reg32_02 (so Reg32_00.. holds a `live-endpoints` key); the id again in
            // Reg32_08..09 followed by the client address (an `affinity` key).
            let port_reg = match fam {
                Fam::V4 => Register::Reg32_03,
                Fam::V6 => Register::Reg32_06,
            };
            let dnat = || nft::dnat(fam == Fam::V6, Register::Reg32_02, port_reg);
            let id_bytes = id.to_ne_bytes().to_vec();
            let [endpoints, aff, live] = &bucket(*id);
            let id_at = |r| nft::immediate(r, id_bytes.clone());
            let client = || {
                nft::payload(
                    base::NETWORK,
                    fam.saddr_offset(),
                    fam.addr_len(),
                    Register::Reg32_10,
                )
            };
            if let Some(ms) = affinity_ms {
                // A remembered endpoint that is gone is forgotten...
                r.push(vec![
                    id_at(Register::Reg32_00),
                    id_at(Register::Reg32_08),
                    client(),
                    nft::lookup(aff, Register::Reg32_08, Some(Register::Reg32_02)),
                    nft::lookup_absent(live, Register::Reg32_00),
                    nft::dynset_delete(aff, Register::Reg32_08, Register::Reg32_02),
                ]);
                // ...a live one is used again, its timeout refreshed.
                r.push(vec![
                    id_at(Register::Reg32_08),
                    client(),
                    nft::lookup(aff, Register::Reg32_08, Some(Register::Reg32_02)),
                    nft::dynset_update_data(aff, Register::Reg32_08, Register::Reg32_02, *ms),
                    dnat(),
                ]);
            }
            if *slots > 0 {
                let mut e = vec![
                    id_at(Register::Reg32_00),
                    nft::numgen_random(Register::Reg32_02, *slots),
                    nft::lookup(endpoints, Register::Reg32_00, Some(Register::Reg32_02)),
                ];
                if let Some(ms) = affinity_ms {
                    e.push(id_at(Register::Reg32_08));
                    e.push(client());
                    e.push(nft::dynset_update_data(
                        aff,
                        Register::Reg32_08,
                        Register::Reg32_02,
                        *ms,
                    ));
                }
                e.push(dnat());
                r.push(e);
            }
            r
        }
    }
}

/// Loads `daddr . l4proto . dport` (or `l4proto . dport` without the address) from Reg32_00.
fn service_key_load(fam: Fam, with_addr: bool) -> Vec<Expr> {
    let (p, d) = if with_addr {
        fam.after_addr()
    } else {
        (Register::Reg32_00, Register::Reg32_01)
    };
    let mut e = Vec::new();
    if with_addr {
        e.push(nft::payload(
            base::NETWORK,
            fam.daddr_offset(),
            fam.addr_len(),
            Register::Reg32_00,
        ));
    }
    e.push(nft::meta(MetaKey::L4Proto, p));
    e.push(nft::payload(base::TRANSPORT, 2, 2, d));
    e
}

/// Matches destinations where NodePorts answer.
fn node_address_guards(set: &Settings, fam: Fam) -> Vec<Vec<Expr>> {
    let cidrs: Vec<&IpNet> = set
        .nodeport_cidrs
        .iter()
        .filter(|c| matches!((c, fam), (IpNet::V4(_), Fam::V4) | (IpNet::V6(_), Fam::V6)))
        .collect();
    if !set.nodeport_cidrs.is_empty() {
        return cidrs
            .into_iter()
            .map(|c| addr_in(fam, true, c, Operator::Equal))
            .collect();
    }
    vec![local_not_loopback(fam)]
}

/// Matches new connections (`ct state new`).
fn ct_new() -> Vec<Expr> {
    vec![
        nft::ct_state(Register::Reg1),
        nft::bitwise(
            Register::Reg1,
            Register::Reg1,
            nft::CT_STATE_NEW.to_ne_bytes().to_vec(),
            vec![0; 4],
        ),
        nft::cmp(Operator::NotEqual, Register::Reg1, vec![0; 4]),
    ]
}

/// The interface index of `lo` in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

fn localhost() -> IpNet {
    IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST))
}

fn loopback_net() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_default())
}

/// Matches destinations that are local addresses of the node but not loopback.
fn local_not_loopback(fam: Fam) -> Vec<Expr> {
    let lo: IpNet = match fam {
        Fam::V4 => "127.0.0.0/8".parse().unwrap(),
        Fam::V6 => "::1/128".parse().unwrap(),
    };
    let mut e = fib_local(true);
    e.extend(addr_in(fam, true, &lo, Operator::NotEqual));
    e
}

/// The batch that replaces the table with the skeleton (no Service yet).
pub fn skeleton(set: &Settings, fam: Fam, b: &mut Batch) {
    let f = fam.family();
    b.replace_table(f, TABLE);
    let key_len = fam.addr_len() + 8;
    let ip_type = (fam.addr_type() << 6 | TYPE_INET_PROTO) << 6 | TYPE_INET_SERVICE;
    let port_type = TYPE_INET_PROTO << 6 | TYPE_INET_SERVICE;
    for (name, len, key_type) in [
        (HOST_PORTS, key_len, ip_type),
        (HOST_PORTS_ANY, 8, port_type),
        (SERVICE_IPS, key_len, ip_type),
        (SERVICE_NODEPORTS, 8, port_type),
        (NO_EP_SERVICES, key_len, ip_type),
        (NO_EP_NODEPORTS, 8, port_type),
    ] {
        b.add_set(
            f,
            TABLE,
            &SetSpec {
                name: name.into(),
                key_len: len,
                key_type,
                verdict_map: true,
                data: None,
                timeout_ms: None,
                interval: false,
            },
        );
    }
    let backend_type = fam.addr_type() << 6 | TYPE_INET_SERVICE;
    let backend_len = fam.addr_len() + 4;
    let id_type = TYPE_MARK << 6 | TYPE_MARK;
    for b_id in 0..BUCKETS {
        let [endpoints, affinity, live] = bucket(b_id);
        for (name, key_len, key_type, data, timeout_ms) in [
            (
                endpoints,
                12,
                id_type << 6 | TYPE_MARK,
                Some((backend_type, backend_len)),
                None,
            ),
            // Each rule gives its Service's own timeout.
            (
                affinity,
                8 + fam.addr_len(),
                id_type << 6 | fam.addr_type(),
                Some((backend_type, backend_len)),
                Some(u64::from(DEFAULT_AFFINITY_SECONDS) * 1000),
            ),
            (
                live,
                8 + backend_len,
                (id_type << 6 | fam.addr_type()) << 6 | TYPE_INET_SERVICE,
                None,
                None,
            ),
        ] {
            b.add_set(
                f,
                TABLE,
                &SetSpec {
                    name,
                    key_len,
                    key_type,
                    verdict_map: false,
                    data,
                    timeout_ms,
                    interval: false,
                },
            );
        }
    }
    b.add_set(
        f,
        TABLE,
        &SetSpec {
            name: HAIRPIN.into(),
            key_len: 2 * fam.addr_len(),
            key_type: fam.addr_type() << 6 | fam.addr_type(),
            verdict_map: false,
            data: None,
            timeout_ms: None,
            interval: false,
        },
    );
    let base = |kind, hook, priority| BaseChain {
        kind,
        hook,
        priority,
    };
    let chains: [(&str, Option<BaseChain>); 11] = [
        ("services", None),
        ("endpoints-check", None),
        (REJECT_CHAIN, None),
        (MARK_CHAIN, None),
        ("masquerading", None),
        ("nat-prerouting", Some(base("nat", hook::PREROUTING, -100))),
        ("nat-output", Some(base("nat", hook::OUTPUT, -100))),
        ("nat-postrouting", Some(base("nat", hook::POSTROUTING, 100))),
        ("filter-input", Some(base("filter", hook::INPUT, -110))),
        ("filter-forward", Some(base("filter", hook::FORWARD, -110))),
        ("filter-output", Some(base("filter", hook::OUTPUT, -110))),
    ];
    for (name, bc) in &chains {
        b.add_chain(f, TABLE, name, bc.as_ref());
    }
    let mut rule = |chain: &str, e: Vec<Expr>| b.add_rule(f, TABLE, chain, e);
    // Pods' host ports first: on a given node address, then on every one.
    let mut e = service_key_load(fam, true);
    e.push(nft::lookup(
        HOST_PORTS,
        Register::Reg32_00,
        Some(Register::Verdict),
    ));
    rule("services", e);
    let mut e = local_not_loopback(fam);
    e.extend(service_key_load(fam, false));
    e.push(nft::lookup(
        HOST_PORTS_ANY,
        Register::Reg32_00,
        Some(Register::Verdict),
    ));
    rule("services", e);
    if fam == Fam::V4 {
        // Host ports answer on 127.0.0.1 too, as the CNI portmap plugin serves them (IPv4 only:
        // the kernel never routes ::1 off the node). Such traffic leaves with a loopback source,
        // which route_localnet lets out and nat-postrouting masquerades.
        let mut e = addr_in(fam, true, &localhost(), Operator::Equal);
        e.extend(service_key_load(fam, false));
        e.push(nft::lookup(
            HOST_PORTS_ANY,
            Register::Reg32_00,
            Some(Register::Verdict),
        ));
        rule("services", e);
    }
    // services: by address, then NodePorts on node addresses; endpoints-check: the same keys
    // in the maps of Services without usable endpoints.
    for (chain, by_ip, by_port) in [
        ("services", SERVICE_IPS, SERVICE_NODEPORTS),
        ("endpoints-check", NO_EP_SERVICES, NO_EP_NODEPORTS),
    ] {
        let mut e = service_key_load(fam, true);
        e.push(nft::lookup(
            by_ip,
            Register::Reg32_00,
            Some(Register::Verdict),
        ));
        rule(chain, e);
        for mut e in node_address_guards(set, fam) {
            e.extend(service_key_load(fam, false));
            e.push(nft::lookup(
                by_port,
                Register::Reg32_00,
                Some(Register::Verdict),
            ));
            rule(chain, e);
        }
    }
    rule(
        REJECT_CHAIN,
        vec![
            nft::meta(MetaKey::L4Proto, Register::Reg1),
            nft::cmp(Operator::Equal, Register::Reg1, vec![6]),
            nft::reject_tcp_reset(),
        ],
    );
    rule(
        REJECT_CHAIN,
        vec![nft::reject_port_unreachable(fam == Fam::V6)],
    );
    // mark-for-masquerade: mark |= MASQ_BIT
    rule(
        MARK_CHAIN,
        vec![
            nft::meta(MetaKey::Mark, Register::Reg1),
            nft::bitwise(
                Register::Reg1,
                Register::Reg1,
                (!MASQ_BIT).to_ne_bytes().to_vec(),
                MASQ_BIT.to_ne_bytes().to_vec(),
            ),
            nft::meta_set(MetaKey::Mark, Register::Reg1),
        ],
    );
    // masquerading: return unless marked; clear the bit; masquerade.
    rule(
        "masquerading",
        vec![
            nft::meta(MetaKey::Mark, Register::Reg1),
            nft::bitwise(
                Register::Reg1,
                Register::Reg1,
                MASQ_BIT.to_ne_bytes().to_vec(),
                vec![0; 4],
            ),
            nft::cmp(Operator::Equal, Register::Reg1, vec![0; 4]),
            nft::ret(),
        ],
    );
    rule(
        "masquerading",
        vec![
            nft::meta(MetaKey::Mark, Register::Reg1),
            nft::bitwise(
                Register::Reg1,
                Register::Reg1,
                (!MASQ_BIT).to_ne_bytes().to_vec(),
                vec![0; 4],
            ),
            nft::meta_set(MetaKey::Mark, Register::Reg1),
            nft::masquerade(),
        ],
    );
    rule("nat-prerouting", vec![jump("services")]);
    rule("nat-output", vec![jump("services")]);
    // A pod that reached itself through a Service: masqueraded, so the answer comes back
    // through the node (hairpin).
    rule(
        "nat-postrouting",
        vec![
            nft::payload(
                base::NETWORK,
                fam.saddr_offset(),
                fam.addr_len(),
                Register::Reg32_00,
            ),
            nft::payload(
                base::NETWORK,
                fam.daddr_offset(),
                fam.addr_len(),
                fam.after_addr().0,
            ),
            nft::lookup(HAIRPIN, Register::Reg32_00, None),
            nft::masquerade(),
        ],
    );
    rule("nat-postrouting", vec![jump("masquerading")]);
    if fam == Fam::V4 {
        // A connection to a host port on 127.0.0.1, sent on to a pod: the pod cannot answer a
        // loopback source, so it leaves with the node's address.
        let mut e = addr_in(fam, false, &loopback_net(), Operator::Equal);
        e.push(nft::meta(MetaKey::Oif, Register::Reg1));
        e.push(nft::cmp(
            Operator::NotEqual,
            Register::Reg1,
            LOOPBACK_IFINDEX.to_ne_bytes().to_vec(),
        ));
        e.push(nft::masquerade());
        rule("nat-postrouting", e);
        // route_localnet also lets packets from elsewhere to 127.0.0.0/8 in: new ones are
        // dropped (as kube-proxy guards its localhost NodePorts, CVE-2020-8558).
        let mut e = ct_new();
        e.extend(addr_in(fam, true, &loopback_net(), Operator::Equal));
        e.extend(addr_in(fam, false, &loopback_net(), Operator::NotEqual));
        e.push(nft::verdict(&VerdictData::Drop));
        rule("filter-input", e);
    }
    for chain in ["filter-input", "filter-forward", "filter-output"] {
        let mut e = ct_new();
        e.push(jump("endpoints-check"));
        rule(chain, e);
    }
}

/// A set element: key, and its verdict in a map.
type Element = (Vec<u8>, Elem);

/// The transaction's phases: objects are made before they are referenced and removed after
/// nothing references them.
#[derive(Default)]
pub struct Plan {
    make: Batch,
    unlink: Batch,
    flush: Batch,
    fill: Batch,
    remove: Batch,
    /// UDP endpoints that went away: (address, port), for the conntrack flush.
    pub udp_gone: Vec<(IpAddr, u16)>,
    /// Objects touched (chains, elements), for the log and the benchmark.
    pub touched: usize,
}

impl Plan {
    /// The whole transaction, in order.
    pub fn into_batch(self) -> Batch {
        let mut b = self.make;
        b.append(self.unlink);
        b.append(self.flush);
        b.append(self.fill);
        b.append(self.remove);
        b
    }

    /// Adds the difference between two states of one Service.
    pub fn diff(&mut self, fam: Fam, old: &Objects, new: &Objects) {
        let f = fam.family();
        for (name, body) in &new.chains {
            match old.chains.get(name) {
                Some(b) if b == body => {}
                Some(_) => {
                    self.flush.flush_chain(f, TABLE, name);
                    self.fill_rules(fam, name, body);
                }
                None => {
                    self.make.add_chain(f, TABLE, name, None);
                    self.fill_rules(fam, name, body);
                }
            }
        }
        // Elements: grouped per set, deletes before adds.
        let mut dels: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
        let mut adds: BTreeMap<&str, Vec<Element>> = BTreeMap::new();
        for ((set, key), v) in &old.elems {
            match new.elems.get(&(set.clone(), key.clone())) {
                Some(n) if n == v => {}
                _ => dels.entry(set).or_default().push(key.clone()),
            }
        }
        for ((set, key), v) in &new.elems {
            if old.elems.get(&(set.clone(), key.clone())) != Some(v) {
                adds.entry(set).or_default().push((key.clone(), v.clone()));
            }
        }
        for (set, keys) in dels {
            self.touched += keys.len();
            self.unlink.delete_keys(f, TABLE, set, keys);
        }
        for (set, elems) in adds {
            self.touched += elems.len();
            let (mut keys, mut verdicts, mut data) = (Vec::new(), Vec::new(), Vec::new());
            for (k, v) in elems {
                match v {
                    Elem::Key => keys.push(k),
                    Elem::Verdict(v) => verdicts.push((k, v)),
                    Elem::Data(d) => data.push((k, d)),
                }
            }
            self.fill.add_verdicts(f, TABLE, set, verdicts);
            self.fill.add_data(f, TABLE, set, data);
            self.fill.add_keys(f, TABLE, set, keys);
        }
        for (name, body) in &old.chains {
            if !new.chains.contains_key(name) {
                // Flush first: its rules may reference chains deleted in the same batch.
                self.flush.flush_chain(f, TABLE, name);
                self.remove.delete_chain(f, TABLE, name);
                self.touched += 1;
                if let Body::Endpoint {
                    ip,
                    port,
                    proto: 17,
                    ..
                } = body
                {
                    self.udp_gone.push((*ip, *port));
                }
            }
        }
        for (ip, port, proto) in old.backends.difference(&new.backends) {
            if *proto == 17 {
                self.udp_gone.push((*ip, *port));
            }
        }
    }

    /// Adds and removes `hairpin` elements (addresses that became, or stopped being, a
    /// backend of any Service).
    pub fn hairpin(&mut self, fam: Fam, add: Vec<IpAddr>, del: Vec<IpAddr>) {
        let f = fam.family();
        self.touched += add.len() + del.len();
        self.unlink
            .delete_keys(f, TABLE, HAIRPIN, del.iter().map(hairpin_key).collect());
        self.fill
            .add_keys(f, TABLE, HAIRPIN, add.iter().map(hairpin_key).collect());
    }

    fn fill_rules(&mut self, fam: Fam, name: &str, body: &Body) {
        self.touched += 1;
        for r in rules(fam, body) {
            self.fill.add_rule(fam.family(), TABLE, name, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlet_sdk::proto::{ServiceKey, ServicePort};

    fn svc() -> Service {
        Service {
            key: Some(ServiceKey {
                namespace: "ns".into(),
                name: "web".into(),
            }),
            r#type: ServiceType::NodePort as i32,
            cluster_ips: vec!["10.96.0.10".into()],
            ports: vec![ServicePort {
                port: 80,
                target_port: 8080,
                node_port: 30080,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn eps(n: usize) -> BTreeMap<String, Endpoint> {
        (0..n)
            .map(|i| {
                let a = format!("10.244.0.{}", i + 2);
                (
                    a.clone(),
                    Endpoint {
                        address: a,
                        ready: true,
                        serving: true,
                        use_for_internal: true,
                        use_for_external: true,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn slots_stay_put_and_a_removal_moves_at_most_one() {
        let want: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
        let s1 = assign_slots(None, &want);
        let mut want2 = want.clone();
        want2.remove("b");
        let s2 = assign_slots(Some(&s1), &want2);
        let moved = s1.iter().zip(&s2).filter(|(a, b)| a != b).count();
        assert_eq!(s2.len(), 3);
        assert_eq!(moved, 1, "{s1:?} -> {s2:?}");
        want2.insert("e".into());
        let s3 = assign_slots(Some(&s2), &want2);
        assert_eq!(&s3[..3], &s2[..], "a newcomer is appended");
    }

    #[test]
    fn one_endpoint_change_touches_few_objects_whatever_the_size() {
        let set = Settings::default();
        for n in [10usize, 1000] {
            let e = eps(n);
            let a = desired(&set, Some(&svc()), &e, Fam::V4, None);
            let mut e2 = e.clone();
            e2.values_mut().nth(3).unwrap().use_for_internal = false;
            e2.values_mut().nth(3).unwrap().use_for_external = false;
            let b = desired(&set, Some(&svc()), &e2, Fam::V4, Some(&a));
            let mut plan = Plan::default();
            plan.diff(Fam::V4, &a, &b);
            // two chains' rules (svc, ext), 2 x (delete 2 slot elements, add 1)
            assert!(plan.touched <= 9, "n={n}: {}", plan.touched);
        }
    }

    #[test]
    fn no_endpoints_reject_and_other_family_untouched() {
        let set = Settings::default();
        let o = desired(&set, Some(&svc()), &BTreeMap::new(), Fam::V4, None);
        assert!(o.elems.contains_key(&(
            NO_EP_SERVICES.into(),
            ip_key(&"10.96.0.10".parse().unwrap(), 6, 80)
        )));
        assert!(
            o.elems
                .contains_key(&(NO_EP_NODEPORTS.into(), port_key(6, 30080)))
        );
        assert!(desired(&set, Some(&svc()), &eps(3), Fam::V6, None).is_empty());
    }

    #[test]
    fn host_ports_by_family_and_address() {
        use netlet_sdk::proto::PortMapping;
        let pm = |port, ip: &str| PortMapping {
            host_port: port,
            container_port: 8080,
            host_ip: ip.into(),
            protocol: Protocol::Udp as i32,
            ..Default::default()
        };
        let hp = HostPorts {
            sandbox_id: "s1".into(),
            pod: "ns/a".into(),
            pod_ips: vec!["10.244.0.5".into(), "fd00::5".into()],
            port_mappings: vec![pm(53, ""), pm(54, "192.168.1.1")],
        };
        let all: BTreeMap<String, HostPorts> = [("s1".to_string(), hp)].into();
        let v4 = host_port_objects(&all, Fam::V4);
        assert_eq!(
            v4.chains.keys().collect::<Vec<_>>(),
            ["hp-s1/udp/*:53", "hp-s1/udp/192.168.1.1:54"]
        );
        assert!(
            v4.elems
                .contains_key(&(HOST_PORTS_ANY.into(), port_key(17, 53)))
        );
        assert!(v4.elems.contains_key(&(
            HOST_PORTS.into(),
            ip_key(&"192.168.1.1".parse().unwrap(), 17, 54)
        )));
        // The v4 host IP's mapping is not served in v6; the any-address one is.
        let v6 = host_port_objects(&all, Fam::V6);
        assert_eq!(v6.chains.keys().collect::<Vec<_>>(), ["hp-s1/udp/*:53"]);
        assert_eq!(
            v6.chains["hp-s1/udp/*:53"],
            Body::Endpoint {
                ip: "fd00::5".parse().unwrap(),
                port: 8080,
                proto: 17,
            }
        );
    }
}
