//! The Policy face of the nft driver: NetworkPolicies and ClusterNetworkPolicies enforced in
//! the kernel, in a table of its own (`inet netlet-policy`), so that verdicts never wait on a
//! process: while the driver or the host restarts, the last rules keep holding (fail closed),
//! and a full sync replaces the table in one transaction (nothing in flight is dropped for it).
//!
//! Shape: a `forward` base chain (the hook every pod-to-pod and pod-to-outside packet crosses,
//! bridged ones too through br_netfilter, after Service DNAT) accepts established and related
//! traffic and IPv6 neighbour discovery, then looks the source address up in the `egress` verdict maps and the destination
//! address in the `ingress` ones: each local pod address a policy applies to leads to a chain of
//! its own for that direction, which holds, in order:
//!
//! 1. the Admin tier: ClusterNetworkPolicies by priority, rules in order; Accept returns
//!    (allowed in this direction), Deny drops, Pass jumps to step 2;
//! 2. (the `-n` chain) the NetworkPolicies selecting the pod: when any does for this direction,
//!    their allow rules return and the rest is dropped; else the Baseline tier, like step 1;
//!    what nothing decides is allowed.
//!
//! Peers are looked up in interval sets, one per address set the host shares (`<name>-4`,
//! `<name>-6`): a pod joining a selector is one element added, whatever the number of policies
//! naming it. A batch becomes one transaction holding only what changed: set elements, the
//! chains whose rules differ, map elements.
//!
//! Traffic from the node to its pods and from pods to the node does not cross `forward`: it is
//! allowed, as the NetworkPolicy API has it for the node (kubelet probes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;
use netlet_nftables::{
    self as nft, BaseChain, Batch, Conn, Expr, Family, MetaKey, NftError, Operator, Register,
    SetSpec, VerdictData, base,
};
use netlet_sdk::generation::Applied;
use netlet_sdk::parts::Parts;
use netlet_sdk::proto::{
    ApplyPolicyRequest, ApplyPolicyResponse, CheckDnsRequest, CheckDnsResponse,
    CheckHostnameRequest, CheckHostnameResponse, ClusterPolicyAction, ClusterPolicyTier,
    ListPoliciesRequest, ListPoliciesResponse, NetworkPolicyPort, PolicyDirection, Protocol,
    policy_server::Policy,
};
use netlet_sdk::state::PolicyTable;
use netlet_sdk::validate;
use tonic::{Request, Response, Status};

/// The table (family inet).
pub const TABLE: &str = "netlet-policy";
const FAMILY: Family = Family::Inet;
/// ct state bits: established, related.
const CT_ESTABLISHED_RELATED: u32 = 2 | 4;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Egress,
    Ingress,
}

impl Dir {
    fn letter(self) -> &'static str {
        match self {
            Dir::Egress => "e",
            Dir::Ingress => "i",
        }
    }
}

fn v6(a: &IpAddr) -> bool {
    a.is_ipv6()
}

/// The nft set holding a contract set's elements of one family.
fn set_name(set: &str, v6: bool) -> String {
    format!("{set}-{}", if v6 { 6 } else { 4 })
}

fn map_name(dir: Dir, v6: bool) -> String {
    format!(
        "{}-{}",
        match dir {
            Dir::Egress => "egress",
            Dir::Ingress => "ingress",
        },
        if v6 { 6 } else { 4 }
    )
}

fn addr_hex(a: &IpAddr) -> String {
    let bytes = match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Allowed in this direction.
    Return,
    Drop,
    /// To the chain of the next tier.
    Goto(String),
}

/// One rule of a pod's chain, in terms the kernel matches.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// The peer address is in this contract set.
    peer_set: Option<String>,
    /// The peer address is this one (a named port's target).
    peer_addr: Option<IpAddr>,
    /// IP protocol number.
    proto: Option<u8>,
    /// Destination port range.
    ports: Option<(u16, u16)>,
    verdict: Verdict,
}

/// The table as it should be.
#[derive(Debug, Default, Clone, PartialEq)]
struct Desired {
    sets: BTreeMap<String, BTreeSet<IpNet>>,
    chains: BTreeMap<String, Vec<Rule>>,
    /// (direction, pod address) → its chain.
    maps: BTreeMap<(Dir, IpAddr), String>,
}

fn proto_number(p: i32) -> u8 {
    match Protocol::try_from(p) {
        Ok(Protocol::Udp) => 17,
        Ok(Protocol::Sctp) => 132,
        _ => 6,
    }
}

/// (IP protocol, destination port range, peer address) a port admits.
type PortMatch = (u8, Option<(u16, u16)>, Option<IpAddr>);

/// The (protocol, port range, peer address) alternatives a rule's port admits for `pod`.
fn port_matches(port: &NetworkPolicyPort, pod: &IpAddr, dir: Dir) -> Vec<PortMatch> {
    let proto = proto_number(port.protocol);
    if !port.named_port.is_empty() {
        return port
            .named_port_targets
            .iter()
            .filter_map(|t| {
                let a: IpAddr = t.address.parse().ok()?;
                let n = u16::try_from(t.port).ok()?;
                match dir {
                    // The pod's own port of that name.
                    Dir::Ingress => (a == *pod).then_some((proto, Some((n, n)), None)),
                    // The destination's port of that name.
                    Dir::Egress => {
                        (a.is_ipv4() == pod.is_ipv4()).then_some((proto, Some((n, n)), Some(a)))
                    }
                }
            })
            .collect();
    }
    let range = match (port.port, port.end_port) {
        (0, _) => None,
        (p, 0) => Some((p as u16, p as u16)),
        (p, e) => Some((p as u16, e as u16)),
    };
    vec![(proto, range, None)]
}

/// The rules for one policy rule: each peer (none: any) × each port (none: any).
fn expand(
    peers: &[Option<String>],
    ports: &[NetworkPolicyPort],
    pod: &IpAddr,
    dir: Dir,
    verdict: &Verdict,
    out: &mut Vec<Rule>,
) {
    let any = [None];
    let peers: &[Option<String>] = if peers.is_empty() { &any } else { peers };
    for peer in peers {
        if ports.is_empty() {
            out.push(Rule {
                peer_set: peer.clone(),
                peer_addr: None,
                proto: None,
                ports: None,
                verdict: verdict.clone(),
            });
            continue;
        }
        for port in ports {
            for (proto, range, addr) in port_matches(port, pod, dir) {
                out.push(Rule {
                    peer_set: peer.clone(),
                    peer_addr: addr,
                    proto: Some(proto),
                    ports: range,
                    verdict: verdict.clone(),
                });
            }
        }
    }
}

fn desired(t: &PolicyTable) -> Desired {
    let mut d = Desired::default();
    // A set of pods a policy applies to holds pod addresses: one lookup, not a scan.
    let contains = |set: &str, a: &IpAddr| {
        t.address_set(set)
            .is_some_and(|m| m.contains(&IpNet::from(*a)))
    };
    // The local pod addresses: the elements of the sets policies apply to.
    let mut selected_sets: BTreeSet<&str> = BTreeSet::new();
    for p in t.network_policies() {
        selected_sets.insert(&p.selected_set);
    }
    let mut admin = Vec::new();
    let mut baseline = Vec::new();
    for p in t.cluster_network_policies() {
        selected_sets.insert(&p.selected_set);
        let name = p.key.as_ref().map(|k| k.name.clone()).unwrap_or_default();
        if p.tier == ClusterPolicyTier::Admin as i32 {
            admin.push((p.priority, name, p));
        } else {
            baseline.push((p.priority, name, p));
        }
    }
    admin.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    baseline.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let pods: BTreeSet<IpAddr> = selected_sets
        .iter()
        .filter_map(|s| t.address_set(s))
        .flatten()
        .filter(|n| n.prefix_len() == n.max_prefix_len())
        .map(|n| n.addr())
        .collect();
    let nps: Vec<_> = t.network_policies().collect();
    for pod in &pods {
        for dir in [Dir::Egress, Dir::Ingress] {
            let main = format!("{}-{}", dir.letter(), addr_hex(pod));
            let next = format!("{main}-n");
            let cnp_rules = |tier: &[(u32, String, &netlet_sdk::proto::ClusterNetworkPolicy)],
                             out: &mut Vec<Rule>| {
                for (_, _, p) in tier
                    .iter()
                    .filter(|(_, _, p)| contains(&p.selected_set, pod))
                {
                    let rules = match dir {
                        Dir::Egress => &p.egress,
                        Dir::Ingress => &p.ingress,
                    };
                    for r in rules {
                        let verdict = match ClusterPolicyAction::try_from(r.action) {
                            Ok(ClusterPolicyAction::Accept) => Verdict::Return,
                            Ok(ClusterPolicyAction::Pass) => Verdict::Goto(next.clone()),
                            _ => Verdict::Drop,
                        };
                        let peers: Vec<Option<String>> = r
                            .peers
                            .iter()
                            .map(|x| Some(x.address_set.clone()))
                            .collect();
                        expand(&peers, &r.ports, pod, dir, &verdict, out);
                    }
                }
            };
            let mut first = Vec::new();
            cnp_rules(&admin, &mut first);
            let pdir = match dir {
                Dir::Egress => PolicyDirection::Egress,
                Dir::Ingress => PolicyDirection::Ingress,
            } as i32;
            let isolating: Vec<_> = nps
                .iter()
                .filter(|p| p.directions.contains(&pdir) && contains(&p.selected_set, pod))
                .collect();
            let mut second = Vec::new();
            if isolating.is_empty() {
                cnp_rules(&baseline, &mut second);
            } else {
                for p in &isolating {
                    let rules = match dir {
                        Dir::Egress => &p.egress,
                        Dir::Ingress => &p.ingress,
                    };
                    for r in rules {
                        let peers: Vec<Option<String>> = r
                            .peers
                            .iter()
                            .map(|x| Some(x.address_set.clone()))
                            .collect();
                        expand(&peers, &r.ports, pod, dir, &Verdict::Return, &mut second);
                    }
                }
                second.push(Rule {
                    peer_set: None,
                    peer_addr: None,
                    proto: None,
                    ports: None,
                    verdict: Verdict::Drop,
                });
            }
            if first.is_empty() && second.is_empty() {
                continue;
            }
            first.push(Rule {
                peer_set: None,
                peer_addr: None,
                proto: None,
                ports: None,
                verdict: Verdict::Goto(next.clone()),
            });
            d.chains.insert(main.clone(), first);
            d.chains.insert(next, second);
            d.maps.insert((dir, *pod), main);
        }
    }
    for (name, m) in t.address_set_elements() {
        d.sets.insert(name.clone(), m.clone());
    }
    d
}

/// (offset in the network header, length) of the source (`source`) or destination address.
fn addr_field(v6: bool, source: bool) -> (u32, u32) {
    match (v6, source) {
        (false, true) => (12, 4),
        (false, false) => (16, 4),
        (true, true) => (8, 16),
        (true, false) => (24, 16),
    }
}

/// The peer's address: the source of what comes in, the destination of what goes out.
fn addr_offsets(v6: bool, dir: Dir) -> (u32, u32) {
    addr_field(v6, dir == Dir::Ingress)
}

fn rule_exprs(r: &Rule, v6: bool, dir: Dir) -> Vec<Expr> {
    let (off, len) = addr_offsets(v6, dir);
    let mut e = Vec::new();
    if let Some(s) = &r.peer_set {
        e.push(nft::payload(base::NETWORK, off, len, Register::Reg1));
        e.push(nft::lookup(&set_name(s, v6), Register::Reg1, None));
    }
    if let Some(a) = &r.peer_addr {
        e.push(nft::payload(base::NETWORK, off, len, Register::Reg1));
        e.push(nft::cmp(Operator::Equal, Register::Reg1, addr_bytes(a)));
    }
    if let Some(p) = r.proto {
        e.push(nft::meta(MetaKey::L4Proto, Register::Reg1));
        e.push(nft::cmp(Operator::Equal, Register::Reg1, vec![p]));
    }
    if let Some((lo, hi)) = r.ports {
        e.push(nft::payload(base::TRANSPORT, 2, 2, Register::Reg1));
        if lo == hi {
            e.push(nft::cmp(
                Operator::Equal,
                Register::Reg1,
                lo.to_be_bytes().to_vec(),
            ));
        } else {
            // As nft writes `th dport >= lo th dport <= hi` (the port loaded for each).
            e.push(nft::cmp(
                Operator::GreatherThanEqual,
                Register::Reg1,
                lo.to_be_bytes().to_vec(),
            ));
            e.push(nft::payload(base::TRANSPORT, 2, 2, Register::Reg1));
            e.push(nft::cmp(
                Operator::LessThanEqual,
                Register::Reg1,
                hi.to_be_bytes().to_vec(),
            ));
        }
    }
    e.push(match &r.verdict {
        Verdict::Return => nft::ret(),
        Verdict::Drop => nft::verdict(&VerdictData::Drop),
        Verdict::Goto(c) => nft::verdict(&VerdictData::Goto(c.clone())),
    });
    e
}

/// The family and direction of a pod chain, from its name (`e-0a000005`, `i-…-n`).
fn chain_kind(name: &str) -> (bool, Dir) {
    let dir = if name.starts_with("e-") {
        Dir::Egress
    } else {
        Dir::Ingress
    };
    let hex = name[2..].trim_end_matches("-n");
    (hex.len() > 8, dir)
}

/// The skeleton: the table, the base chain and the four verdict maps.
fn skeleton(b: &mut Batch) {
    b.replace_table(FAMILY, TABLE);
    for dir in [Dir::Egress, Dir::Ingress] {
        for v6 in [false, true] {
            b.add_set(
                FAMILY,
                TABLE,
                &SetSpec {
                    name: map_name(dir, v6),
                    key_len: if v6 { 16 } else { 4 },
                    key_type: if v6 { 8 } else { 7 },
                    verdict_map: true,
                    data: None,
                    timeout_ms: None,
                    interval: false,
                },
            );
        }
    }
    b.add_chain(
        FAMILY,
        TABLE,
        "forward",
        Some(&BaseChain {
            kind: "filter",
            hook: nft::hook::FORWARD,
            priority: 0,
        }),
    );
    b.add_rule(
        FAMILY,
        TABLE,
        "forward",
        vec![
            nft::ct_state(Register::Reg1),
            nft::bitwise(
                Register::Reg1,
                Register::Reg1,
                CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec(),
                vec![0; 4],
            ),
            nft::cmp(Operator::NotEqual, Register::Reg1, vec![0; 4]),
            nft::verdict(&VerdictData::Accept),
        ],
    );
    // IPv6 neighbour discovery (router and neighbour solicitations and advertisements,
    // ICMPv6 types 133-136) is how pods find each other's link addresses at all: bridged, it
    // crosses this hook too, and no policy may cut it (an isolated pod would lose every IPv6
    // neighbour, allowed ones included).
    b.add_rule(
        FAMILY,
        TABLE,
        "forward",
        vec![
            nft::meta(MetaKey::Nfproto, Register::Reg1),
            nft::cmp(Operator::Equal, Register::Reg1, vec![NFPROTO_IPV6]),
            nft::meta(MetaKey::L4Proto, Register::Reg1),
            nft::cmp(Operator::Equal, Register::Reg1, vec![58]),
            nft::payload(base::TRANSPORT, 0, 1, Register::Reg1),
            nft::cmp(Operator::GreatherThanEqual, Register::Reg1, vec![133]),
            nft::payload(base::TRANSPORT, 0, 1, Register::Reg1),
            nft::cmp(Operator::LessThanEqual, Register::Reg1, vec![136]),
            nft::verdict(&VerdictData::Accept),
        ],
    );
    for dir in [Dir::Egress, Dir::Ingress] {
        for v6 in [false, true] {
            // The pod's own address: the source for egress, the destination for ingress.
            let (off, len) = addr_field(v6, dir == Dir::Egress);
            b.add_rule(
                FAMILY,
                TABLE,
                "forward",
                vec![
                    nft::meta(MetaKey::Nfproto, Register::Reg1),
                    nft::cmp(
                        Operator::Equal,
                        Register::Reg1,
                        vec![if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }],
                    ),
                    nft::payload(base::NETWORK, off, len, Register::Reg1),
                    nft::lookup(&map_name(dir, v6), Register::Reg1, Some(Register::Verdict)),
                ],
            );
        }
    }
}

fn add_set(b: &mut Batch, name: &str, elems: &BTreeSet<IpNet>) {
    for v6 in [false, true] {
        b.add_set(
            FAMILY,
            TABLE,
            &SetSpec {
                name: set_name(name, v6),
                key_len: if v6 { 16 } else { 4 },
                key_type: if v6 { 8 } else { 7 },
                verdict_map: false,
                data: None,
                timeout_ms: None,
                interval: true,
            },
        );
        let nets: Vec<IpNet> = elems
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .copied()
            .collect();
        if !nets.is_empty() {
            b.add_intervals(FAMILY, TABLE, &set_name(name, v6), &nets);
        }
    }
}

fn chain_rules(b: &mut Batch, name: &str, rules: &[Rule]) {
    let (v6, dir) = chain_kind(name);
    for r in rules {
        b.add_rule(FAMILY, TABLE, name, rule_exprs(r, v6, dir));
    }
}

/// The transaction that takes the table from `cur` (`None`: unknown, rebuild) to `want`.
fn plan(cur: Option<&Desired>, want: &Desired) -> Batch {
    let mut b = Batch::new();
    let Some(cur) = cur else {
        skeleton(&mut b);
        for (name, elems) in &want.sets {
            add_set(&mut b, name, elems);
        }
        for name in want.chains.keys() {
            b.add_chain(FAMILY, TABLE, name, None);
        }
        for (name, rules) in &want.chains {
            chain_rules(&mut b, name, rules);
        }
        add_map_elements(&mut b, want.maps.iter());
        return b;
    };
    // Sets: new ones whole; changed ones by their differences (removals first: a prefix may
    // be replaced by an overlapping one).
    for (name, elems) in &want.sets {
        match cur.sets.get(name) {
            None => add_set(&mut b, name, elems),
            Some(was) if was != elems => {
                for v6 in [false, true] {
                    let fam = |n: &&IpNet| matches!(n, IpNet::V6(_)) == v6;
                    let gone: Vec<IpNet> = was.difference(elems).filter(fam).copied().collect();
                    let new: Vec<IpNet> = elems.difference(was).filter(fam).copied().collect();
                    if !gone.is_empty() {
                        b.delete_intervals(FAMILY, TABLE, &set_name(name, v6), &gone);
                    }
                    if !new.is_empty() {
                        b.add_intervals(FAMILY, TABLE, &set_name(name, v6), &new);
                    }
                }
            }
            Some(_) => {}
        }
    }
    // Chains: new ones first (rules may go to them), then the rules of new and changed ones.
    for name in want.chains.keys().filter(|n| !cur.chains.contains_key(*n)) {
        b.add_chain(FAMILY, TABLE, name, None);
    }
    for (name, rules) in &want.chains {
        match cur.chains.get(name) {
            Some(was) if was == rules => continue,
            Some(_) => b.flush_chain(FAMILY, TABLE, name),
            None => {}
        }
        chain_rules(&mut b, name, rules);
    }
    // Map elements: the ones that go or change, then the new ones.
    let mut gone: BTreeMap<(Dir, bool), Vec<Vec<u8>>> = BTreeMap::new();
    for (k, chain) in &cur.maps {
        if want.maps.get(k) != Some(chain) {
            gone.entry((k.0, v6(&k.1)))
                .or_default()
                .push(addr_bytes(&k.1));
        }
    }
    for ((dir, is6), keys) in gone {
        b.delete_keys(FAMILY, TABLE, &map_name(dir, is6), keys);
    }
    add_map_elements(
        &mut b,
        want.maps
            .iter()
            .filter(|(k, c)| cur.maps.get(*k) != Some(*c)),
    );
    // Chains no longer wanted: emptied, then deleted (nothing leads to them any more).
    let old: Vec<&String> = cur
        .chains
        .keys()
        .filter(|n| !want.chains.contains_key(*n))
        .collect();
    for name in &old {
        b.flush_chain(FAMILY, TABLE, name);
    }
    for name in &old {
        b.delete_chain(FAMILY, TABLE, name);
    }
    for name in cur.sets.keys().filter(|n| !want.sets.contains_key(*n)) {
        for v6 in [false, true] {
            b.delete_set(FAMILY, TABLE, &set_name(name, v6));
        }
    }
    b
}

fn add_map_elements<'a>(
    b: &mut Batch,
    elems: impl Iterator<Item = (&'a (Dir, IpAddr), &'a String)>,
) {
    type Elements = Vec<(Vec<u8>, VerdictData)>;
    let mut by_map: BTreeMap<(Dir, bool), Elements> = BTreeMap::new();
    for ((dir, a), chain) in elems {
        by_map
            .entry((*dir, v6(a)))
            .or_default()
            .push((addr_bytes(a), VerdictData::Jump(chain.clone())));
    }
    for ((dir, is6), e) in by_map {
        b.add_verdicts(FAMILY, TABLE, &map_name(dir, is6), e);
    }
}

struct State {
    table: PolicyTable,
    /// The table as the kernel has it; `None` until the first full sync (the rules of an
    /// earlier run keep holding until then).
    programmed: Option<Desired>,
    conn: Conn,
}

/// The Policy service of the nft driver.
pub struct NftPolicy {
    state: Mutex<State>,
    parts: Mutex<Parts<ApplyPolicyRequest>>,
}

impl NftPolicy {
    /// Opens the netlink socket. The table of an earlier run is left in place, enforcing, until
    /// the first full sync replaces it.
    pub fn start() -> Result<Self, NftError> {
        Ok(Self {
            state: Mutex::new(State {
                table: PolicyTable::default(),
                programmed: None,
                conn: Conn::open()?,
            }),
            parts: Mutex::default(),
        })
    }

    fn apply(&self, req: &ApplyPolicyRequest) -> Result<Applied, Status> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| Status::internal("state lock poisoned"))?;
        let t0 = std::time::Instant::now();
        let before = st.table.applied();
        let applied = st.table.apply(req)?;
        if applied == before {
            return Ok(applied);
        }
        let t1 = t0.elapsed();
        let want = desired(&st.table);
        let t2 = t0.elapsed();
        let cur = if req.full_sync {
            None
        } else {
            st.programmed.as_ref()
        };
        if cur != Some(&want) {
            let b = plan(cur, &want);
            let steps = b.len();
            if let Err(e) = st.conn.send(b) {
                // Nothing of the batch is in the kernel (a transaction is all or nothing), but
                // the table has taken it: forget it all, so the host's next delta is refused
                // and a full sync rebuilds the table from scratch.
                tracing::error!(error = %e, "policy transaction failed");
                st.table = PolicyTable::default();
                st.programmed = None;
                return Err(Status::internal(format!("programming policies: {e}")));
            }
            tracing::debug!(
                generation = applied.generation,
                messages = steps,
                table_us = t1.as_micros() as u64,
                desired_us = (t2 - t1).as_micros() as u64,
                total_us = t0.elapsed().as_micros() as u64,
                "policies programmed"
            );
        }
        st.programmed = Some(want);
        Ok(applied)
    }
}

/// The gRPC face.
pub struct Api(pub std::sync::Arc<NftPolicy>);

#[tonic::async_trait]
impl Policy for Api {
    async fn apply_policy(
        &self,
        req: Request<ApplyPolicyRequest>,
    ) -> Result<Response<ApplyPolicyResponse>, Status> {
        let req = req.into_inner();
        let p = self.0.clone();
        // Validation and the transaction run on a blocking thread, to their end even when the
        // host gives up on the call.
        let applied = tokio::task::spawn_blocking(move || {
            validate::apply_policy(&req)?;
            let whole = p
                .parts
                .lock()
                .map_err(|_| Status::internal("parts lock poisoned"))?
                .offer(req)?;
            match whole {
                Some(req) => p.apply(&req),
                None => p
                    .state
                    .lock()
                    .map(|st| st.table.applied())
                    .map_err(|_| Status::internal("state lock poisoned")),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("policy task failed: {e}")))??;
        Ok(Response::new(ApplyPolicyResponse::from(applied)))
    }

    async fn check_dns(
        &self,
        req: Request<CheckDnsRequest>,
    ) -> Result<Response<CheckDnsResponse>, Status> {
        validate::check_dns(&req.into_inner())?;
        Err(Status::unavailable(
            "no policy evaluator: the nft driver enforces network policies; DNS policies are evaluated elsewhere",
        ))
    }

    async fn check_hostname(
        &self,
        req: Request<CheckHostnameRequest>,
    ) -> Result<Response<CheckHostnameResponse>, Status> {
        validate::check_hostname(&req.into_inner())?;
        Err(Status::unavailable(
            "no policy evaluator: the nft driver enforces network policies; hostname grants are evaluated elsewhere",
        ))
    }

    async fn list_policies(
        &self,
        _req: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let p = self.0.clone();
        tokio::task::spawn_blocking(move || {
            p.state
                .lock()
                .map(|st| Response::new(st.table.list()))
                .map_err(|_| Status::internal("state lock poisoned"))
        })
        .await
        .map_err(|e| Status::internal(format!("policy task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A numeric port: its number, a range, or every port of the protocol (unspecified: TCP).
    #[test]
    fn ports_match_as_written() {
        let pod: IpAddr = "10.0.0.1".parse().unwrap();
        let port = |n, e, proto: Protocol| NetworkPolicyPort {
            protocol: proto as i32,
            port: n,
            end_port: e,
            ..Default::default()
        };
        let m = |p| port_matches(&p, &pod, Dir::Ingress);
        assert_eq!(
            m(port(80, 0, Protocol::Unspecified)),
            vec![(6, Some((80, 80)), None)]
        );
        assert_eq!(
            m(port(32000, 32768, Protocol::Udp)),
            vec![(17, Some((32000, 32768)), None)]
        );
        assert_eq!(m(port(0, 0, Protocol::Sctp)), vec![(132, None, None)]);
    }
}
