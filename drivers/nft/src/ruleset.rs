//! The nftables ruleset for Services, per family (`ip netlet-nft`, `ip6 netlet-nft`), and how
//! one Service's change becomes the few elements a transaction touches.
//!
//! Chains are fixed or shared; a Service is data. Adding, changing or removing one changes set
//! and map elements only (no chain, no rule, no jump verdict), so the kernel has no jump graph
//! to check again and the cost does not grow with the number of Services.
//!
//! ```text
//! nat-prerouting / nat-output (nat, -100)   jump services
//! services                                  daddr . l4proto . dport vmap @host-ports
//!                                           <local, not loopback> l4proto . dport vmap @host-ports-any
//!                                           (ip) daddr 127.0.0.1 l4proto . dport vmap @host-ports-any
//!                                           daddr . l4proto . dport vmap @firewalls (load balancer
//!                                             source ranges: jump fw-<...>, allowed sources return)
//!                                           jump local-shortcuts, jump fronts
//!                                           <node address> jump local-shortcuts-nodeports,
//!                                             jump fronts-nodeports
//! local-shortcuts(-nodeports)               externalTrafficPolicy Local for pods and the node, per
//!                                           class: saddr <pod CIDR> key @class goto class;
//!                                           <from the node> key @class: mark, goto class
//! fronts(-nodeports)                        per class in use: key @class goto class
//! class-<kind>-<masq>-<affinity>-<n>        shared by every Service port of its kind:
//!                                           [masquerade mark] [affinity: the client's remembered
//!                                           endpoint, forgotten when no longer live, else reused]
//!                                           dnat to key . numgen random mod n map @endpoints-<kind>
//!                                           [remembered in @affinity-<kind>]
//! hp-<sandbox>/<proto>/<host ip|*>:<port>   a pod's host port: hairpin mark, dnat to the pod
//! filter-input/forward/output (filter,-110) ct state new jump endpoints-check
//! endpoints-check                           key @no-endpoint-reject: goto reject-chain (refused)
//!                                           key @no-endpoint-drop: drop (none local)
//! nat-postrouting (nat, 100)                saddr . daddr @hairpin (a pod sent to itself) -> masquerade
//!                                           mark set -> clear it, masquerade
//!                                           (ip) saddr 127.0.0.0/8, oif not lo -> masquerade
//! filter-input (ip)                         new, daddr 127.0.0.0/8, saddr not -> drop
//!                                           (route_localnet is on for localhost host ports)
//! ```
//!
//! A front is what a connection is addressed to: `daddr . l4proto . dport` (a cluster, external
//! or load-balancer IP with its port) or `l4proto . dport` (a NodePort on a node address). Its
//! class (the kind of front, how the source is masqueraded, the affinity timeout, the number of
//! endpoints) is a set the front is a member of, and the class's chain picks an endpoint from
//! `@endpoints-<kind>` (`key . slot -> addr . port`). An endpoint change touches a few elements;
//! when the count changes, the front moves to the class of the new count. A class not in use
//! yet is the only thing that adds a chain (and a set and a rule), once per node; each new
//! connection is looked up once per class in use.

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
/// Load-balancer fronts with loadBalancerSourceRanges: `-> jump fw-...`.
const FIREWALLS: &str = "firewalls";
const NO_EP_REJECT_IP: &str = "no-endpoint-reject";
const NO_EP_DROP_IP: &str = "no-endpoint-drop";
const NO_EP_REJECT_NP: &str = "no-endpoint-reject-nodeports";
const NO_EP_DROP_NP: &str = "no-endpoint-drop-nodeports";
const HOST_PORTS: &str = "host-ports";
const HAIRPIN: &str = "hairpin";
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

/// How a class chain treats the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Masq {
    /// Leave it.
    None = 0,
    /// Masquerade every connection (external traffic, externalTrafficPolicy Cluster).
    All = 1,
    /// Masquerade unless it comes from the pod CIDR (ClusterIP with a known pod CIDR).
    NotFromCluster = 2,
}

/// Which front a class chain finds its id by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `daddr . l4proto . dport` in `fronts`.
    Ip = 0,
    /// `l4proto . dport` in `fronts-nodeports`.
    NodePort = 1,
    /// `daddr . l4proto . dport` in `local-shortcuts`.
    ShortcutIp = 2,
    /// `l4proto . dport` in `local-shortcuts-nodeports`.
    ShortcutNodePort = 3,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Kind::Ip,
        Kind::NodePort,
        Kind::ShortcutIp,
        Kind::ShortcutNodePort,
    ];
    fn by_addr(self) -> bool {
        matches!(self, Kind::Ip | Kind::ShortcutIp)
    }
    fn shortcut(self) -> bool {
        matches!(self, Kind::ShortcutIp | Kind::ShortcutNodePort)
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::NodePort => "nodeport",
            Kind::ShortcutIp => "local-ip",
            Kind::ShortcutNodePort => "local-nodeport",
        }
    }
    /// The chain its classes' dispatch rules are in.
    fn dispatch(self) -> &'static str {
        match self {
            Kind::Ip => "fronts",
            Kind::NodePort => "fronts-nodeports",
            Kind::ShortcutIp => "local-shortcuts",
            Kind::ShortcutNodePort => "local-shortcuts-nodeports",
        }
    }
    /// Its endpoint map (`key . slot -> addr . port`) and affinity set (`key . client . slot`,
    /// timed: the slot each client was given).
    fn maps(self) -> [String; 2] {
        let n = self.name();
        [format!("endpoints-{n}"), format!("affinity-{n}")]
    }
    /// Key length in 4-byte registers.
    fn key_regs(self, fam: Fam) -> u32 {
        if self.by_addr() {
            fam.addr_len() / 4 + 2
        } else {
            2
        }
    }
}

/// What a Service port needs from the data plane beyond its endpoints: one shared chain per
/// class in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Class {
    /// Where the id is found.
    pub kind: Kind,
    /// Source handling.
    pub masq: Masq,
    /// ClientIP affinity timeout in seconds (0: none; Kubernetes allows up to 86400).
    pub affinity_s: u32,
    /// Endpoints to choose from (at least 1).
    pub slots: u32,
}

/// Kubernetes' longest ClientIP affinity timeout.
const MAX_AFFINITY_S: u32 = 86400;

impl Class {
    /// The name of its chain, and of the set of its fronts.
    pub fn chain(&self) -> String {
        let masq = match self.masq {
            Masq::None => "none",
            Masq::All => "all",
            Masq::NotFromCluster => "notfrom",
        };
        format!(
            "class-{}-{masq}-{}-{}",
            self.kind.name(),
            self.affinity_s,
            self.slots
        )
    }
}

/// What a per-Service chain holds (only a load balancer's source ranges and pods' host ports
/// have one); the rules are generated from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// loadBalancerSourceRanges in front of a LoadBalancer IP: allowed sources return (on to
    /// the class), others are dropped.
    Firewall {
        /// Allowed source CIDRs.
        allowed: Vec<IpNet>,
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

/// The sets whose keys are claims (`false`: by address, `true`: NodePort).
fn claim_kind(set: &str) -> Option<bool> {
    match set {
        NO_EP_REJECT_IP | NO_EP_DROP_IP => Some(false),
        NO_EP_REJECT_NP | NO_EP_DROP_NP => Some(true),
        s if s.starts_with("class-ip-") => Some(false),
        s if s.starts_with("class-nodeport-") => Some(true),
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

/// Leaves out the elements behind a claim another Service holds: the front's class and its
/// endpoints, shortcut and firewall.
pub fn give_up(o: &mut Objects, c: &Claim) {
    // The maps keyed by a front and more (endpoints, affinity, live) of the claim's key shape.
    let keyed_by_front: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| k.by_addr() != c.1)
        .flat_map(|k| k.maps())
        .collect();
    o.elems.retain(|(set, key), _| {
        if keyed_by_front.contains(set) {
            return !key.starts_with(&c.2);
        }
        let kind = claim_kind(set).or(match set.as_str() {
            FIREWALLS => Some(false),
            s if s.starts_with("class-local-ip-") => Some(false),
            s if s.starts_with("class-local-nodeport-") => Some(true),
            _ => None,
        });
        !(kind == Some(c.1) && *key == c.2)
    });
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
    /// The classes its fronts use (their chains are shared, made once).
    pub classes: BTreeSet<Class>,
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
    let affinity_s = if svc.session_affinity == SessionAffinity::ClientIp as i32 {
        match svc.session_affinity_timeout_seconds {
            0 => DEFAULT_AFFINITY_SECONDS,
            s => s.min(MAX_AFFINITY_S),
        }
    } else {
        0
    };
    let etp_local = svc.external_traffic_policy == TrafficPolicy::Local as i32;
    let itp_local = svc.internal_traffic_policy == TrafficPolicy::Local as i32;
    let fam_eps: Vec<(&Endpoint, IpAddr)> = eps
        .values()
        .filter_map(|e| e.address.parse::<IpAddr>().ok().map(|ip| (e, ip)))
        .filter(|(_, ip)| Fam::of(ip) == fam)
        .collect();
    let internal_masq = if cidr_of(&set.cluster_cidrs, fam).is_some() {
        Masq::NotFromCluster
    } else {
        Masq::None
    };
    let external_masq = if etp_local { Masq::None } else { Masq::All };
    for p in &svc.ports {
        let proto = proto_num(p.protocol);
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let name = format!(
            "{}/{}/{}/{}",
            key.namespace,
            key.name,
            proto_name(proto),
            port
        );
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
        let internal_slots = assign_slots(
            old.and_then(|x| x.slots.get(&format!("svc-{name}"))),
            &internal,
        );
        let external_slots = assign_slots(
            old.and_then(|x| x.slots.get(&format!("ext-{name}"))),
            &external,
        );
        let class = |kind, masq, slots: &Vec<String>| Class {
            kind,
            masq,
            affinity_s,
            slots: slots.len() as u32,
        };
        // A front: a member of its class's set, its endpoints keyed by it; or, without
        // endpoints for its traffic, refused (dropped when a Local policy hides endpoints that
        // exist on other nodes: kube-proxy's rule).
        let front = |o: &mut Objects, k: &[u8], c: Class, slots: &Vec<String>, local: bool| {
            if c.slots == 0 {
                if !c.kind.shortcut() {
                    let set = match (c.kind.by_addr(), any && local) {
                        (true, false) => NO_EP_REJECT_IP,
                        (true, true) => NO_EP_DROP_IP,
                        (false, false) => NO_EP_REJECT_NP,
                        (false, true) => NO_EP_DROP_NP,
                    };
                    o.elems.insert((set.into(), k.to_vec()), Elem::Key);
                }
                return;
            }
            o.elems.insert((c.chain(), k.to_vec()), Elem::Key);
            o.classes.insert(c);
            let [endpoints, _] = c.kind.maps();
            for (i, ep) in slots.iter().enumerate() {
                let mut key = k.to_vec();
                key.extend((i as u32).to_ne_bytes());
                o.elems
                    .insert((endpoints.clone(), key), Elem::Data(data[ep].clone()));
            }
        };
        for ip in &cluster_ips {
            let c = class(Kind::Ip, internal_masq, &internal_slots);
            front(
                &mut o,
                &ip_key(ip, proto, port),
                c,
                &internal_slots,
                itp_local,
            );
        }
        if !internal_slots.is_empty() {
            o.slots
                .insert(format!("svc-{name}"), internal_slots.clone());
        }
        if !has_external {
            continue;
        }
        if !external_slots.is_empty() {
            o.slots
                .insert(format!("ext-{name}"), external_slots.clone());
        }
        // externalTrafficPolicy Local: pods and the node itself use every endpoint, as from
        // inside (the node's own connections masqueraded); others keep their address.
        let shortcut = etp_local && !external_slots.is_empty();
        for ip in &external_ips {
            let k = ip_key(ip, proto, port);
            if firewalled && !external_slots.is_empty() && lb_ips.contains(ip) {
                let fw = format!("fw-{name}");
                o.chains.insert(
                    fw.clone(),
                    Body::Firewall {
                        allowed: allowed.clone(),
                    },
                );
                o.elems.insert(
                    (FIREWALLS.into(), k.clone()),
                    Elem::Verdict(VerdictData::Jump(fw)),
                );
            }
            if shortcut {
                let c = class(Kind::ShortcutIp, internal_masq, &internal_slots);
                front(&mut o, &k, c, &internal_slots, false);
            }
            let c = class(Kind::Ip, external_masq, &external_slots);
            front(&mut o, &k, c, &external_slots, etp_local);
        }
        if node_ports && p.node_port != 0 {
            let k = port_key(proto, p.node_port as u16);
            if shortcut {
                let c = class(Kind::ShortcutNodePort, internal_masq, &internal_slots);
                front(&mut o, &k, c, &internal_slots, false);
            }
            let c = class(Kind::NodePort, external_masq, &external_slots);
            front(&mut o, &k, c, &external_slots, etp_local);
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

/// The rules of a per-Service chain.
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
        Body::Firewall { allowed } => {
            let mut r: Vec<Vec<Expr>> = allowed
                .iter()
                .map(|c| {
                    let mut e = addr_in(fam, false, c, Operator::Equal);
                    e.push(nft::ret());
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
    }
}

fn reg(n: u32) -> Register {
    use Register::*;
    [
        Reg32_00, Reg32_01, Reg32_02, Reg32_03, Reg32_04, Reg32_05, Reg32_06, Reg32_07, Reg32_08,
        Reg32_09, Reg32_10, Reg32_11, Reg32_12, Reg32_13, Reg32_14, Reg32_15,
    ][n as usize]
}

/// The chains of a class: its own, and with affinity the one that sends a client to the slot it
/// was given.
pub fn class_chains(set: &Settings, fam: Fam, c: &Class) -> Vec<(String, Vec<Vec<Expr>>)> {
    let name = c.chain();
    let mut r = Vec::new();
    match c.masq {
        Masq::None => {}
        Masq::All => r.push(vec![jump(MARK_CHAIN)]),
        Masq::NotFromCluster => {
            if let Some(cidr) = cidr_of(&set.cluster_cidrs, fam) {
                let mut e = addr_in(fam, false, &cidr, Operator::NotEqual);
                e.push(jump(MARK_CHAIN));
                r.push(e);
            }
        }
    }
    // Registers: the front's key from Reg32_00 (`k` registers), then the slot or the client's
    // address and a slot; the chosen backend (`addr . port`) from Reg32_10. Every value is
    // loaded for the one expression that uses it, so that `nft list` can show each rule.
    let k = c.kind.key_regs(fam);
    let a = fam.addr_len() / 4;
    let key_at = || service_key_load_at(fam, c.kind.by_addr(), 0);
    let client = || nft::payload(base::NETWORK, fam.saddr_offset(), fam.addr_len(), reg(k));
    let backend = reg(10);
    let dnat = || nft::dnat(fam == Fam::V6, backend, reg(10 + a));
    let [endpoints, affinity] = c.kind.maps();
    let pick = |slot: Option<u32>| {
        let mut e = key_at();
        e.push(match slot {
            Some(i) => nft::immediate(reg(k), i.to_ne_bytes().to_vec()),
            None => nft::numgen_random(reg(k), c.slots),
        });
        e.push(nft::lookup(&endpoints, reg(0), Some(backend)));
        e.push(dnat());
        e
    };
    let mut chains = Vec::new();
    if c.affinity_s != 0 {
        // `key . client . slot` in the affinity set: the slot a client was given (a slot past
        // the count, after endpoints left, matches nothing: the client is given another).
        let given = |slot: Option<u32>| {
            let mut e = key_at();
            e.push(client());
            e.push(match slot {
                Some(i) => nft::immediate(reg(k + a), i.to_ne_bytes().to_vec()),
                None => nft::numgen_random(reg(k + a), c.slots),
            });
            e
        };
        let ms = u64::from(c.affinity_s) * 1000;
        let sticky = format!("{name}-sticky");
        let rules = (0..c.slots)
            .map(|i| {
                let mut e = given(Some(i));
                e.push(nft::lookup(&affinity, reg(0), None));
                // Used again: its timeout starts over.
                e.extend(given(Some(i)));
                e.push(nft::dynset_update(&affinity, reg(0), ms));
                let mut to = pick(Some(i));
                e.append(&mut to);
                e
            })
            .collect();
        chains.push((sticky.clone(), rules));
        r.push(vec![jump(&sticky)]);
        // A client without a slot is given one at random, then sent to it.
        let mut e = given(None);
        e.push(nft::dynset_update(&affinity, reg(0), ms));
        r.push(e);
        r.push(vec![jump(&sticky)]);
    }
    // Without affinity (or when the affinity set refused the element): one at random.
    r.push(pick(None));
    chains.insert(0, (name, r));
    chains
}

/// The rules that send a class's fronts to its chain (in the kind's dispatch chain).
fn class_dispatch(set: &Settings, fam: Fam, c: &Class) -> Vec<Vec<Expr>> {
    let name = c.chain();
    let mut member = service_key_load_at(fam, c.kind.by_addr(), 0);
    member.push(nft::lookup(&name, reg(0), None));
    if !c.kind.shortcut() {
        member.push(goto(&name));
        return vec![member];
    }
    let mut r = Vec::new();
    if let Some(cidr) = cidr_of(&set.cluster_cidrs, fam) {
        let mut e = addr_in(fam, false, &cidr, Operator::Equal);
        e.extend(member.iter().cloned());
        e.push(goto(&name));
        r.push(e);
    }
    let mut e = fib_local(false);
    e.extend(member.iter().cloned());
    e.push(jump(MARK_CHAIN));
    r.push(e);
    let mut e = fib_local(false);
    e.extend(member);
    e.push(goto(&name));
    r.push(e);
    r
}

/// A class's set of fronts.
fn class_set(fam: Fam, c: &Class) -> SetSpec {
    let (key_len, key_type) = front_key(fam, c.kind.by_addr());
    SetSpec {
        name: c.chain(),
        key_len,
        key_type,
        verdict_map: false,
        data: None,
        timeout_ms: None,
        interval: false,
    }
}

/// A front key's length and nft type.
fn front_key(fam: Fam, by_addr: bool) -> (u32, u32) {
    if by_addr {
        (
            fam.addr_len() + 8,
            (fam.addr_type() << 6 | TYPE_INET_PROTO) << 6 | TYPE_INET_SERVICE,
        )
    } else {
        (8, TYPE_INET_PROTO << 6 | TYPE_INET_SERVICE)
    }
}

/// Loads a front's key (`daddr . l4proto . dport`, or `l4proto . dport`) from register `at`.
fn service_key_load_at(fam: Fam, by_addr: bool, at: u32) -> Vec<Expr> {
    let mut e = Vec::new();
    let mut next = at;
    if by_addr {
        e.push(nft::payload(
            base::NETWORK,
            fam.daddr_offset(),
            fam.addr_len(),
            reg(next),
        ));
        next += fam.addr_len() / 4;
    }
    e.push(nft::meta(MetaKey::L4Proto, reg(next)));
    e.push(nft::payload(base::TRANSPORT, 2, 2, reg(next + 1)));
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
    let backend_type = fam.addr_type() << 6 | TYPE_INET_SERVICE;
    let backend_len = fam.addr_len() + 4;
    let spec = |name: &str, key_len, key_type| SetSpec {
        name: name.into(),
        key_len,
        key_type,
        verdict_map: false,
        data: None,
        timeout_ms: None,
        interval: false,
    };
    let mut sets = vec![
        SetSpec {
            verdict_map: true,
            ..spec(HOST_PORTS, key_len, ip_type)
        },
        SetSpec {
            verdict_map: true,
            ..spec(HOST_PORTS_ANY, 8, port_type)
        },
        SetSpec {
            verdict_map: true,
            ..spec(FIREWALLS, key_len, ip_type)
        },
        spec(NO_EP_REJECT_IP, key_len, ip_type),
        spec(NO_EP_DROP_IP, key_len, ip_type),
        spec(NO_EP_REJECT_NP, 8, port_type),
        spec(NO_EP_DROP_NP, 8, port_type),
        spec(
            HAIRPIN,
            2 * fam.addr_len(),
            fam.addr_type() << 6 | fam.addr_type(),
        ),
    ];
    for kind in Kind::ALL {
        let (klen, ktype) = front_key(fam, kind.by_addr());
        let [endpoints, affinity] = kind.maps();
        sets.push(SetSpec {
            data: Some((backend_type, backend_len)),
            ..spec(&endpoints, klen + 4, ktype << 6 | TYPE_MARK)
        });
        // Each rule gives its class's own timeout.
        sets.push(SetSpec {
            timeout_ms: Some(u64::from(DEFAULT_AFFINITY_SECONDS) * 1000),
            ..spec(
                &affinity,
                klen + fam.addr_len() + 4,
                (ktype << 6 | fam.addr_type()) << 6 | TYPE_MARK,
            )
        });
    }
    for s in &sets {
        b.add_set(f, TABLE, s);
    }
    let base = |kind, hook, priority| BaseChain {
        kind,
        hook,
        priority,
    };
    let chains: [(&str, Option<BaseChain>); 15] = [
        ("services", None),
        ("local-shortcuts", None),
        ("fronts", None),
        ("local-shortcuts-nodeports", None),
        ("fronts-nodeports", None),
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
    // `<guard> key vmap @map`.
    let vmap = |mut guard: Vec<Expr>, by_addr: bool, map: &str| {
        guard.extend(service_key_load_at(fam, by_addr, 0));
        guard.push(nft::lookup(
            map,
            Register::Reg32_00,
            Some(Register::Verdict),
        ));
        guard
    };
    // Pods' host ports first: on a given node address, then on every one.
    rule("services", vmap(vec![], true, HOST_PORTS));
    rule(
        "services",
        vmap(local_not_loopback(fam), false, HOST_PORTS_ANY),
    );
    if fam == Fam::V4 {
        // Host ports answer on 127.0.0.1 too, as the CNI portmap plugin serves them (IPv4 only:
        // the kernel never routes ::1 off the node). Such traffic leaves with a loopback source,
        // which route_localnet lets out and nat-postrouting masquerades.
        let guard = addr_in(fam, true, &localhost(), Operator::Equal);
        rule("services", vmap(guard, false, HOST_PORTS_ANY));
    }
    // services: a load balancer's source ranges, then the fronts (by address, then NodePorts on
    // node addresses), externalTrafficPolicy Local's shortcuts for pods and the node first.
    rule("services", vmap(vec![], true, FIREWALLS));
    rule("services", vec![jump("local-shortcuts")]);
    rule("services", vec![jump("fronts")]);
    let node_guards = node_address_guards(set, fam);
    for g in &node_guards {
        for chain in ["local-shortcuts-nodeports", "fronts-nodeports"] {
            let mut e = g.clone();
            e.push(jump(chain));
            rule("services", e);
        }
    }
    // endpoints-check: fronts without endpoints for their traffic.
    for (by_addr, guards, reject, drop) in [
        (true, vec![vec![]], NO_EP_REJECT_IP, NO_EP_DROP_IP),
        (false, node_guards, NO_EP_REJECT_NP, NO_EP_DROP_NP),
    ] {
        for g in guards {
            for (set, verdict) in [
                (reject, goto(REJECT_CHAIN)),
                (drop, nft::verdict(&VerdictData::Drop)),
            ] {
                let mut e = g.clone();
                e.extend(service_key_load_at(fam, by_addr, 0));
                e.push(nft::lookup(set, Register::Reg32_00, None));
                e.push(verdict);
                rule("endpoints-check", e);
            }
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

    /// Makes what a class not in use yet needs: its set, its chain, and its dispatch rules.
    pub fn add_class(&mut self, set: &Settings, fam: Fam, c: &Class) {
        let f = fam.family();
        self.make.add_set(f, TABLE, &class_set(fam, c));
        let chains = class_chains(set, fam, c);
        for (chain, _) in &chains {
            self.make.add_chain(f, TABLE, chain, None);
        }
        for (chain, rules) in chains {
            for r in rules {
                self.fill.add_rule(f, TABLE, &chain, r);
            }
        }
        for r in class_dispatch(set, fam, c) {
            self.fill.add_rule(f, TABLE, c.kind.dispatch(), r);
        }
        self.touched += 1;
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
                let a = format!("10.244.{}.{}", i / 250, i % 250 + 2);
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
            // Per id (svc, ext): the emptied slot takes the last endpoint and the last slot
            // goes (1 add, 2 deletes); per front (ClusterIP, NodePort): its class changes
            // (1 delete, 1 add). No chain.
            assert_eq!(plan.touched, 10, "n={n}");
            assert!(b.chains.is_empty());
        }
    }

    #[test]
    fn a_service_is_data_only_and_its_classes_are_shared() {
        let set = Settings {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        let mut a = svc();
        a.session_affinity = SessionAffinity::ClientIp as i32;
        let o = desired(&set, Some(&a), &eps(10), Fam::V4, None);
        assert!(o.chains.is_empty(), "{:?}", o.chains);
        assert!(
            o.elems.values().all(|v| !matches!(v, Elem::Verdict(_))),
            "no verdict: {:?}",
            o.elems
        );
        let classes: Vec<String> = o.classes.iter().map(Class::chain).collect();
        assert_eq!(
            classes,
            ["class-ip-notfrom-10800-10", "class-nodeport-all-10800-10"]
        );
        // Another Service of the same shape uses the same classes.
        let mut b = a.clone();
        b.key.as_mut().unwrap().name = "other".into();
        b.cluster_ips = vec!["10.96.0.11".into()];
        b.ports[0].node_port = 30081;
        let o2 = desired(&set, Some(&b), &eps(10), Fam::V4, None);
        assert_eq!(o.classes, o2.classes);
        // Endpoints are keyed by the front: the ClusterIP's and the NodePort's.
        let [ip_eps, _] = Kind::Ip.maps();
        let [np_eps, _] = Kind::NodePort.maps();
        for (set, n) in [(ip_eps, 10), (np_eps, 10)] {
            assert_eq!(
                o.elems.keys().filter(|(s, _)| *s == set).count(),
                n,
                "{set}"
            );
        }
    }

    #[test]
    fn no_endpoints_reject_and_other_family_untouched() {
        let set = Settings::default();
        let o = desired(&set, Some(&svc()), &BTreeMap::new(), Fam::V4, None);
        assert!(o.elems.contains_key(&(
            NO_EP_REJECT_IP.into(),
            ip_key(&"10.96.0.10".parse().unwrap(), 6, 80)
        )));
        assert!(
            o.elems
                .contains_key(&(NO_EP_REJECT_NP.into(), port_key(6, 30080)))
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
