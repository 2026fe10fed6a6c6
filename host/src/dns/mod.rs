//! The node-local DNS server (the NodeLocal DNSCache idea, enlightened): it listens on a
//! node-local address (default `169.254.20.10`, UDP and TCP), knows which pod asked (the source
//! address is mapped to the pod netlet attached), answers cluster names itself from the Services
//! the host holds ([`zone`]), applies DNS policy per pod ([`policy`], WebAssembly modules
//! included), can expand a pod's search list in one round trip, refuses cluster names that
//! shadow public ones, and forwards everything else over TCP to the node's upstream servers
//! through a cache (positive and negative, TTL-bounded, stale answers served while upstreams are
//! down). Messages are hickory-proto's.

pub mod egress;
mod host;
pub mod notrack;
pub mod policy;
pub mod zone;

pub use host::{ServiceObject, ServiceObjects, group_services};

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{self, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wasm::Modules;
use policy::{Action, Behaviour, Client, Policies};
use zone::{Data, Kind, Lookup, Zone};

/// The default node-local address (NodeLocal DNSCache's).
pub const DEFAULT_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);

/// Settings of the DNS server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to serve on (UDP and TCP).
    pub listen: Vec<SocketAddr>,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// Upstream servers (TCP), tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Name servers pods are given after the node-local one (the cluster DNS Service), so a
    /// stopped server is a fallback, not an outage.
    pub fallback: Vec<IpAddr>,
    /// Search expansion and shadowing unless a DnsPolicy says otherwise.
    pub defaults: Behaviour,
    /// Cache entries kept at most.
    pub cache_entries: usize,
    /// Longest a positive answer is cached.
    pub max_ttl: Duration,
    /// Longest a negative answer is cached.
    pub negative_ttl: Duration,
    /// How long an expired answer may still be served while upstreams are down.
    pub serve_stale: Duration,
    /// Deadline of one upstream exchange.
    pub upstream_timeout: Duration,
    /// UDP sockets per address (SO_REUSEPORT), one per core is a good start.
    pub udp_sockets: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::new(IpAddr::V4(DEFAULT_ADDRESS), 53)],
            domain: "cluster.local".into(),
            upstreams: Vec::new(),
            fallback: Vec::new(),
            defaults: Behaviour {
                server_side_search: false,
                block_shadowing: true,
            },
            cache_entries: 100_000,
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            serve_stale: Duration::from_secs(3600),
            upstream_timeout: Duration::from_secs(2),
            udp_sockets: 2,
        }
    }
}

/// The upstream servers of a resolv.conf text (`nameserver` lines), on port 53.
pub fn resolv_conf_upstreams(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| IpAddr::from_str(s.trim()).ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Counters of the server.
#[derive(Debug, Default)]
pub struct Stats {
    /// Queries received.
    pub queries: AtomicU64,
    /// Answered from the cluster zone.
    pub cluster: AtomicU64,
    /// Upstream answers served from the cache.
    pub cache_hits: AtomicU64,
    /// Upstream answers that had to be asked for.
    pub cache_misses: AtomicU64,
    /// Expired answers served while upstreams were down.
    pub stale: AtomicU64,
    /// Upstream exchanges that failed.
    pub upstream_failures: AtomicU64,
    /// Upstream exchanges made.
    pub upstream_queries: AtomicU64,
    /// Sum of upstream exchange times, microseconds.
    pub upstream_micros: AtomicU64,
    /// Queries denied by DNS policy.
    pub denied: AtomicU64,
    /// Queries rewritten by DNS policy.
    pub rewritten: AtomicU64,
    /// Cluster names refused because they shadow a public one.
    pub shadowed: AtomicU64,
    /// Queries answered by server-side search expansion.
    pub expanded: AtomicU64,
    /// Malformed or unsupported queries.
    pub malformed: AtomicU64,
    /// Queries whose alias chain looped or ran too long (answered SERVFAIL).
    pub alias_loops: AtomicU64,
    /// Queries whose answering panicked (answered SERVFAIL; the server goes on).
    pub panics: AtomicU64,
    /// DNS-over-TCP connections closed at once: their source, or the server, held the most.
    pub tcp_refused: AtomicU64,
}

#[derive(Debug, Clone)]
struct CacheEntry {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    stored: Instant,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Cache {
    map: HashMap<(String, u16, u16), CacheEntry>,
}

/// Aliases (ExternalName targets) one query follows at most; CoreDNS stops at about as many.
pub const MAX_CNAME_HOPS: usize = 8;

/// An SRV record's weight when `n` records share a name: their shares of 100, at least 1
/// (RFC 2782: weight 0 means "rarely", not "equal").
fn srv_weight(n: usize) -> u16 {
    u16::try_from(100 / n.max(1)).unwrap_or(100).max(1)
}

/// The outcome of resolving one name.
#[derive(Debug, Clone)]
struct Resolution {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    authoritative: bool,
}

impl Resolution {
    fn code(rcode: ResponseCode) -> Self {
        Resolution {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            authoritative: false,
        }
    }
}

/// The DNS server's state.
pub struct Dns {
    cfg: Config,
    zone: RwLock<Arc<Zone>>,
    clients: RwLock<HashMap<IpAddr, Arc<Client>>>,
    policies: RwLock<Arc<Policies>>,
    modules: Arc<Modules>,
    cache: Mutex<Cache>,
    /// Counters.
    pub stats: Stats,
    /// What pods under egress by name were answered.
    pub egress: egress::Egress,
    /// Open DNS-over-TCP connections by source address.
    tcp_conns: Mutex<HashMap<IpAddr, usize>>,
    /// Public names a Service could shadow, and whether the upstream last said they exist.
    public_names: Mutex<HashMap<String, bool>>,
    /// Public names being asked about now.
    public_checks: Mutex<HashSet<String>>,
    /// This server, for the checks it starts.
    me: std::sync::Weak<Dns>,
    /// No upstream answered the last exchange.
    upstream_down: std::sync::atomic::AtomicBool,
}

/// Public names remembered at most (a new one past this many starts the memory afresh).
const MAX_PUBLIC_NAMES: usize = 65_536;
/// Longest wait between two questions about a public name the upstream has not answered yet.
const PUBLIC_RECHECK_MAX: Duration = Duration::from_secs(30);
/// Longest a cluster name waits for the upstream to say whether its public counterpart exists
/// (an upstream that answers does so in far less); past it, or with the upstream known to be
/// away, the cluster name is answered and the question goes on in the background.
const PUBLIC_WAIT: Duration = Duration::from_millis(250);

/// DNS-over-TCP connections one source may hold open at once (a pod's resolver needs one or
/// two); more are closed at once.
pub const TCP_PER_SOURCE: usize = 16;
/// DNS-over-TCP connections open at once, all sources together.
pub const TCP_TOTAL: usize = 1024;
/// How long a DNS-over-TCP connection may stay idle between queries.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// One admitted DNS-over-TCP connection; counted until dropped.
struct TcpSlot {
    dns: Arc<Dns>,
    src: IpAddr,
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut m = self
            .dns
            .tcp_conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.src) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.src);
            }
        }
    }
}

impl Dns {
    /// Admits a DNS-over-TCP connection from `src` within the per-source and total limits.
    fn admit_tcp(self: &Arc<Self>, src: IpAddr) -> Option<TcpSlot> {
        let mut m = self
            .tcp_conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let total: usize = m.values().sum();
        let mine = m.get(&src).copied().unwrap_or(0);
        if mine >= TCP_PER_SOURCE || total >= TCP_TOTAL {
            self.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        m.insert(src, mine + 1);
        Some(TcpSlot {
            dns: self.clone(),
            src,
        })
    }
}

fn fqdn_lower(n: &Name) -> String {
    let mut s = n.to_ascii().to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

impl Dns {
    /// A server with an empty zone, no clients and no policies.
    pub fn new(cfg: Config, modules: Arc<Modules>) -> Arc<Self> {
        let domain = cfg.domain.clone();
        Arc::new_cyclic(|me| Dns {
            public_names: Mutex::default(),
            public_checks: Mutex::default(),
            me: me.clone(),
            upstream_down: Default::default(),
            zone: RwLock::new(Arc::new(Zone::new(&domain))),
            clients: RwLock::new(HashMap::new()),
            policies: RwLock::new(Arc::new(Policies::default())),
            modules,
            cache: Mutex::new(Cache::default()),
            stats: Stats::default(),
            egress: egress::Egress::default(),
            tcp_conns: Mutex::default(),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The modules policies may name.
    pub fn modules(&self) -> &Arc<Modules> {
        &self.modules
    }

    /// Replaces the cluster zone.
    pub fn set_zone(&self, z: Zone) {
        *self.zone.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(z);
    }

    /// The cluster zone now (a snapshot: later changes do not reach it).
    pub fn zone(&self) -> Arc<Zone> {
        self.zone
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the cluster zone in place. Queries under way keep the snapshot they took (the
    /// zone's maps share their structure, so that copy is cheap).
    pub fn update_zone(&self, f: impl FnOnce(&mut Zone)) {
        let mut z = self.zone.write().unwrap_or_else(PoisonError::into_inner);
        f(Arc::make_mut(&mut z));
    }

    /// Replaces the address → pod map.
    pub fn set_clients(&self, c: HashMap<IpAddr, Arc<Client>>) {
        *self.clients.write().unwrap_or_else(PoisonError::into_inner) = c;
    }

    /// Maps `ips` to `client`.
    pub fn add_client(&self, client: Arc<Client>, ips: &[IpAddr]) {
        let mut m = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        for ip in ips {
            m.insert(*ip, client.clone());
        }
    }

    /// Forgets the pods behind `ips`.
    pub fn forget_clients(&self, ips: &[IpAddr]) {
        let mut m = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        for ip in ips {
            m.remove(ip);
        }
    }

    /// Replaces the DNS policies.
    pub fn set_policies(&self, p: Policies) {
        *self
            .policies
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(p);
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every pod the server knows, once each.
    pub fn clients(&self) -> Vec<Arc<Client>> {
        let m = self.clients.read().unwrap_or_else(PoisonError::into_inner);
        let mut seen = std::collections::HashSet::new();
        m.values()
            .filter(|c| seen.insert((c.namespace.as_str(), c.name.as_str())))
            .cloned()
            .collect()
    }

    /// The pod behind an address.
    pub fn client(&self, ip: IpAddr) -> Option<Arc<Client>> {
        self.clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .cloned()
    }

    /// The search list a pod of `namespace` gets by default (kubelet's).
    pub fn default_search(&self, namespace: &str) -> Vec<String> {
        let d = self.cfg.domain.trim_end_matches('.');
        vec![
            format!("{namespace}.svc.{d}"),
            format!("svc.{d}"),
            d.to_string(),
        ]
    }

    /// Decides a query as `CheckDns` asks it.
    pub fn decide(
        &self,
        client_address: &str,
        client: Option<&Client>,
        qname: &str,
        qtype: u16,
    ) -> policy::Decision {
        let mut n = qname.to_ascii_lowercase();
        if !n.ends_with('.') {
            n.push('.');
        }
        self.policies()
            .decide(&self.modules, client, &client_address, &n, qtype)
    }

    /// Answers one DNS message from `src`; `None` when nothing should be sent back. A query
    /// whose answering panics is answered SERVFAIL and counted; the server goes on (its locks
    /// shrug off poisoning), so no query a pod can send takes it down.
    pub async fn answer(self: Arc<Self>, req: Vec<u8>, src: IpAddr, udp: bool) -> Option<Vec<u8>> {
        use futures::FutureExt;
        let id = (req.len() >= 12).then(|| u16::from_be_bytes([req[0], req[1]]));
        let dns = self.clone();
        match std::panic::AssertUnwindSafe(self.respond(req, src, udp))
            .catch_unwind()
            .await
        {
            Ok(out) => out,
            Err(_) => {
                dns.stats.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%src, "answering a DNS query panicked; answered SERVFAIL");
                Message::error_msg(id?, OpCode::Query, ResponseCode::ServFail)
                    .to_vec()
                    .ok()
            }
        }
    }

    async fn respond(self: Arc<Self>, req: Vec<u8>, src: IpAddr, udp: bool) -> Option<Vec<u8>> {
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let msg = match Message::from_vec(&req) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                if req.len() < 12 {
                    return None;
                }
                let id = u16::from_be_bytes([req[0], req[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
        };
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        let id = msg.metadata.id;
        if msg.metadata.op_code != OpCode::Query || msg.queries.len() != 1 {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            let code = if msg.metadata.op_code != OpCode::Query {
                ResponseCode::NotImp
            } else {
                ResponseCode::FormErr
            };
            return Message::error_msg(id, msg.metadata.op_code, code)
                .to_vec()
                .ok();
        }
        let q = msg.queries[0].clone();
        let qname = fqdn_lower(q.name());
        let qtype = q.query_type();
        let client = self.client(src);
        let policies = self.policies();
        let res = self
            .resolve_for(
                &policies,
                client.as_deref(),
                src,
                &qname,
                qtype,
                q.query_class(),
            )
            .await;
        // Egress by name: the drivers hold the answered addresses before the pod hears them.
        if res.rcode == ResponseCode::NoError
            && let Some(c) = client.as_deref()
            && let Some(min_ttl) = policies.egress(Some(c))
        {
            let found = egress::addresses(&res.answers);
            if !found.is_empty() {
                let pod = (c.namespace.clone(), c.name.clone());
                self.egress.learn(&pod, &found, min_ttl).await;
            }
        }

        let mut out = Message::response(id, OpCode::Query);
        out.metadata.recursion_desired = msg.metadata.recursion_desired;
        out.metadata.recursion_available = true;
        out.metadata.authoritative = res.authoritative;
        out.metadata.response_code = res.rcode;
        out.add_query(q);
        out.insert_answers(res.answers);
        out.insert_authorities(res.authorities);
        let max = match &msg.edns {
            Some(e) => {
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                out.set_edns(edns);
                usize::from(e.max_payload().clamp(512, 1232))
            }
            None => 512,
        };
        // Over TCP the two-byte length is the limit (a large headless Service can pass it:
        // the encoder then fails, and the answer goes truncated, as over UDP).
        let max = if udp { max } else { usize::from(u16::MAX) };
        match out.to_vec() {
            Ok(bytes) if bytes.len() <= max => Some(bytes),
            _ => {
                let mut t = out.truncate();
                t.metadata.truncation = true;
                t.to_vec().ok()
            }
        }
    }

    async fn resolve_for(
        &self,
        policies: &Policies,
        client: Option<&Client>,
        src: IpAddr,
        qname: &str,
        qtype: RecordType,
        qclass: DNSClass,
    ) -> Resolution {
        let behaviour = policies.behaviour(client, self.cfg.defaults);
        let zone = self.zone();
        // Server-side search: the pod's first try along its search list, for a name that is
        // not a cluster name, is expanded here along the rest of the list.
        if behaviour.server_side_search
            && let Some(c) = client
            && let Some(first) = c.search.first()
            && let Some(x) = qname.strip_suffix(&format!(".{first}"))
            && !x.is_empty()
            && zone.lookup(qname, kind(qtype)) == Lookup::NxDomain
        {
            return self
                .expand(policies, &zone, c, src, qname, x, qtype, qclass, behaviour)
                .await;
        }
        let d = policies.decide(&self.modules, client, &src, qname, u16::from(qtype));
        self.count(&d, client);
        match d.action {
            Action::Allow => self.lookup(&zone, qname, qtype, qclass, behaviour).await,
            Action::Rewrite(to) => {
                let mut r = self.lookup(&zone, &to, qtype, qclass, behaviour).await;
                if let (Some(from), Some(target)) = (name(qname), name(&to)) {
                    r.answers.insert(
                        0,
                        Record::from_rdata(from, zone::TTL, RData::CNAME(rdata::CNAME(target))),
                    );
                }
                r
            }
            Action::NxDomain => Resolution::code(ResponseCode::NXDomain),
            Action::Refused => Resolution::code(ResponseCode::Refused),
        }
    }

    /// Counts a decision, and logs a denial with the pod.
    fn count(&self, d: &policy::Decision, client: Option<&Client>) {
        match &d.action {
            Action::Allow => {}
            Action::Rewrite(_) => {
                self.stats.rewritten.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                let pod = client
                    .map(|c| format!("{}/{}", c.namespace, c.name))
                    .unwrap_or_default();
                tracing::info!(%pod, policy = %d.policy, module = %d.module, reason = %d.reason, "DNS query denied");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn expand(
        &self,
        policies: &Policies,
        zone: &Zone,
        c: &Client,
        src: IpAddr,
        asked: &str,
        x: &str,
        qtype: RecordType,
        qclass: DNSClass,
        behaviour: Behaviour,
    ) -> Resolution {
        let mut candidates: Vec<String> = c
            .search
            .iter()
            .skip(1)
            .map(|s| format!("{x}.{s}"))
            .collect();
        candidates.push(format!("{x}."));
        let mut nodata = false;
        let mut denied = None;
        for cand in candidates {
            let d = policies.decide(&self.modules, Some(c), &src, &cand, u16::from(qtype));
            let target = match d.action {
                Action::Allow => cand.clone(),
                Action::Rewrite(ref to) => to.clone(),
                _ => {
                    denied = Some(d);
                    continue;
                }
            };
            let r = self.lookup(zone, &target, qtype, qclass, behaviour).await;
            if r.rcode == ResponseCode::NoError && !r.answers.is_empty() {
                self.stats.expanded.fetch_add(1, Ordering::Relaxed);
                let mut answers = Vec::with_capacity(r.answers.len() + 1);
                if let (Some(from), Some(to)) = (name(asked), name(&target)) {
                    answers.push(Record::from_rdata(
                        from,
                        zone::TTL,
                        RData::CNAME(rdata::CNAME(to)),
                    ));
                }
                answers.extend(r.answers);
                return Resolution {
                    rcode: ResponseCode::NoError,
                    answers,
                    authorities: Vec::new(),
                    authoritative: false,
                };
            }
            nodata |= r.rcode == ResponseCode::NoError;
        }
        if let Some(d) = denied {
            // The name the pod meant is denied: say so as the policy says.
            self.count(&d, Some(c));
            match d.action {
                Action::Refused => return Resolution::code(ResponseCode::Refused),
                Action::NxDomain if !nodata => return Resolution::code(ResponseCode::NXDomain),
                _ => {}
            }
        }
        let mut r = Resolution::code(if nodata {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        });
        r.authorities.push(self.soa(zone));
        r
    }

    fn soa(&self, zone: &Zone) -> Record {
        let origin = name(&zone.domain).unwrap_or_else(Name::root);
        let mname = name(&format!("ns.dns.{}", zone.domain)).unwrap_or_else(Name::root);
        let rname = name(&format!("hostmaster.{}", zone.domain)).unwrap_or_else(Name::root);
        Record::from_rdata(
            origin,
            zone::TTL,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, zone::TTL)),
        )
    }

    /// Resolves `qname` (a name a policy allowed): the cluster zone, else upstream. An
    /// ExternalName's alias is followed as CoreDNS follows it, iteratively: at most
    /// [`MAX_CNAME_HOPS`] aliases, and a name seen twice (a Service naming itself, two naming
    /// each other) ends the query with SERVFAIL instead of a recursion tenants control.
    async fn lookup(
        &self,
        zone: &Zone,
        qname: &str,
        qtype: RecordType,
        qclass: DNSClass,
        behaviour: Behaviour,
    ) -> Resolution {
        let (mut out, mut alias) = self
            .lookup_once(zone, qname, qtype, qclass, behaviour)
            .await;
        if qtype == RecordType::CNAME {
            // The alias itself was asked for.
            return out;
        }
        // Only a name with an alias allocates: the common answer stays copy-free.
        let mut seen: Vec<String> = Vec::new();
        while let Some(next) = alias.take() {
            if seen.len() >= MAX_CNAME_HOPS || next == qname || seen.contains(&next) {
                self.stats.alias_loops.fetch_add(1, Ordering::Relaxed);
                tracing::info!(name = %qname, chain = ?seen, "DNS alias chain loops or is too long");
                return Resolution::code(ResponseCode::ServFail);
            }
            let (step, more) = self
                .lookup_once(zone, &next, qtype, qclass, behaviour)
                .await;
            out.answers.extend(step.answers);
            out.authoritative = false;
            seen.push(next);
            alias = more;
        }
        out
    }

    /// One step of [`Self::lookup`]: the records of `qname` itself, and the alias (an
    /// ExternalName's target in the cluster zone) still to follow.
    async fn lookup_once(
        &self,
        zone: &Zone,
        qname: &str,
        qtype: RecordType,
        qclass: DNSClass,
        behaviour: Behaviour,
    ) -> (Resolution, Option<String>) {
        if behaviour.block_shadowing && self.shadows_public(zone, qname, qclass).await {
            self.stats.shadowed.fetch_add(1, Ordering::Relaxed);
            let mut r = Resolution::code(ResponseCode::NXDomain);
            r.authorities.push(self.soa(zone));
            r.authoritative = true;
            return (r, None);
        }
        match zone.lookup(qname, kind(qtype)) {
            Lookup::NotOurs => (self.upstream(qname, qtype, qclass).await, None),
            Lookup::NxDomain => {
                self.stats.cluster.fetch_add(1, Ordering::Relaxed);
                let mut r = Resolution::code(ResponseCode::NXDomain);
                r.authorities.push(self.soa(zone));
                r.authoritative = true;
                (r, None)
            }
            Lookup::Records(data) => {
                self.stats.cluster.fetch_add(1, Ordering::Relaxed);
                let owner = name(qname).unwrap_or_else(Name::root);
                let mut r = Resolution {
                    rcode: ResponseCode::NoError,
                    answers: Vec::new(),
                    authorities: Vec::new(),
                    authoritative: true,
                };
                let mut alias = None;
                let weight = srv_weight(data.len());
                for d in data {
                    let rdata = match d {
                        Data::Addr(IpAddr::V4(a)) => RData::A(a.into()),
                        Data::Addr(IpAddr::V6(a)) => RData::AAAA(a.into()),
                        Data::Cname(t) => {
                            let Some(n) = name(&t) else { continue };
                            alias = Some(t);
                            RData::CNAME(rdata::CNAME(n))
                        }
                        Data::Srv(port, t) => {
                            let Some(t) = name(&t) else { continue };
                            RData::SRV(rdata::SRV::new(0, weight, port, t))
                        }
                        Data::Ptr(t) => {
                            let Some(t) = name(&t) else { continue };
                            RData::PTR(rdata::PTR(t))
                        }
                        Data::Txt(t) => RData::TXT(rdata::TXT::new(vec![t])),
                    };
                    r.answers
                        .push(Record::from_rdata(owner.clone(), zone::TTL, rdata));
                }
                if r.answers.is_empty() {
                    r.authorities.push(self.soa(zone));
                }
                (r, alias.map(|t| t.to_ascii_lowercase()))
            }
        }
    }

    /// Whether `qname` is a Service name in a namespace named like a public suffix (`com`)
    /// whose public counterpart (`yahoo.com` for `yahoo.com.svc.cluster.local`) exists: then
    /// the cluster name would answer for the public one through a pod's search walk.
    ///
    /// A cluster name never waits long for, or fails with, the outside: what the upstream last
    /// said of the public name decides (refreshed in the background); a name it never answered
    /// for is asked now, for at most [`PUBLIC_WAIT`] and not at all while the upstream is known
    /// to be away, and meanwhile the Service is answered.
    async fn shadows_public(&self, zone: &Zone, qname: &str, qclass: DNSClass) -> bool {
        let Some(rest) = qname
            .strip_suffix(zone.domain.as_str())
            .and_then(|r| r.strip_suffix(".svc."))
        else {
            return false;
        };
        let public = format!("{rest}.");
        let Some((svc, ns)) = shadowing_service(&public) else {
            return false;
        };
        if !zone.has_service(svc, ns) || !is_public_suffix(ns) {
            return false;
        }
        let known = self
            .public_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&public)
            .copied();
        if known.is_none() && !self.upstream_down.load(Ordering::Relaxed) {
            let asked =
                tokio::time::timeout(PUBLIC_WAIT, self.upstream(&public, RecordType::A, qclass))
                    .await;
            if let Some(exists) = asked.ok().and_then(|r| self.learn_public(&public, r.rcode)) {
                return exists;
            }
        }
        // Known (refreshed when the cached answer expires), or not known yet (asked again).
        self.check_public(public, qclass);
        known.unwrap_or(false)
    }

    /// Records what the upstream's answer (`rcode`) says of a public name: NXDOMAIN → it does
    /// not exist, an answer → it does; anything else says nothing (`None`, nothing recorded).
    fn learn_public(&self, public: &str, rcode: ResponseCode) -> Option<bool> {
        let exists = match rcode {
            ResponseCode::NXDomain => false,
            ResponseCode::NoError => true,
            _ => return None,
        };
        let mut known = self
            .public_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if known.len() >= MAX_PUBLIC_NAMES && !known.contains_key(public) {
            known.clear();
        }
        known.insert(public.to_string(), exists);
        Some(exists)
    }

    /// Asks the upstream whether `public` exists, in the background (once at a time per name;
    /// a fresh cached answer costs no exchange): NXDOMAIN → no, an answer → yes, no answer →
    /// what was known stays.
    fn check_public(&self, public: String, qclass: DNSClass) {
        let Some(me) = self.me.upgrade() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self
            .public_checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(public.clone())
        {
            return;
        }
        rt.spawn(async move {
            // Never answered yet: asked again, less and less often, while its Service stays.
            let mut wait = Duration::from_millis(500);
            loop {
                let r = me.upstream(&public, RecordType::A, qclass).await;
                me.learn_public(&public, r.rcode);
                let settled = me
                    .public_names
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(&public);
                let wanted = shadowing_service(&public)
                    .is_some_and(|(svc, ns)| me.zone().has_service(svc, ns));
                if settled || !wanted {
                    break;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(PUBLIC_RECHECK_MAX);
            }
            me.public_checks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&public);
        });
    }

    async fn upstream(&self, qname: &str, qtype: RecordType, qclass: DNSClass) -> Resolution {
        let key = (qname.to_string(), u16::from(qtype), u16::from(qclass));
        let now = Instant::now();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .get(&key)
            .cloned();
        if let Some(e) = &cached
            && now < e.stored + e.ttl
        {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return aged(e, now, None);
        }
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        match self.exchange(qname, qtype, qclass).await {
            Some(m) => {
                let rcode = m.metadata.response_code;
                let cacheable = matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain);
                let ttl = if m.answers.is_empty() {
                    let soa_min = m
                        .authorities
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::SOA(s) => Some(s.minimum.min(r.ttl)),
                            _ => None,
                        })
                        .min()
                        .unwrap_or(0);
                    Duration::from_secs(u64::from(soa_min)).min(self.cfg.negative_ttl)
                } else {
                    let min = m.answers.iter().map(|r| r.ttl).min().unwrap_or(0);
                    Duration::from_secs(u64::from(min)).min(self.cfg.max_ttl)
                };
                let e = CacheEntry {
                    rcode,
                    answers: m.answers,
                    authorities: m.authorities,
                    stored: now,
                    ttl,
                };
                if cacheable && !ttl.is_zero() {
                    let mut c = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                    if c.map.len() >= self.cfg.cache_entries {
                        // Make room: drop what expired past serving stale, else anything.
                        let stale = self.cfg.serve_stale;
                        c.map.retain(|_, v| now < v.stored + v.ttl + stale);
                        if c.map.len() >= self.cfg.cache_entries
                            && let Some(k) = c.map.keys().next().cloned()
                        {
                            c.map.remove(&k);
                        }
                    }
                    c.map.insert(key, e.clone());
                }
                aged(&e, now, None)
            }
            None => match cached {
                Some(e) if now < e.stored + e.ttl + self.cfg.serve_stale => {
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                    // RFC 8767: stale answers go out with a TTL of 30 s.
                    aged(&e, now, Some(30))
                }
                _ => Resolution::code(ResponseCode::ServFail),
            },
        }
    }

    /// One exchange with the first upstream that answers, over TCP.
    async fn exchange(&self, qname: &str, qtype: RecordType, qclass: DNSClass) -> Option<Message> {
        let n = name(qname)?;
        let mut q = Message::query();
        q.metadata.id = rand_id();
        q.metadata.recursion_desired = true;
        let mut query = Query::query(n, qtype);
        query.set_query_class(qclass);
        q.add_query(query);
        let bytes = q.to_vec().ok()?;
        for up in &self.cfg.upstreams {
            self.stats.upstream_queries.fetch_add(1, Ordering::Relaxed);
            let start = Instant::now();
            let r =
                tokio::time::timeout(self.cfg.upstream_timeout, tcp_exchange(*up, &bytes)).await;
            self.stats
                .upstream_micros
                .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
            match r {
                Ok(Ok(resp)) => match Message::from_vec(&resp) {
                    Ok(m)
                        if m.metadata.id == q.metadata.id
                            && m.metadata.response_code != ResponseCode::ServFail =>
                    {
                        self.upstream_down.store(false, Ordering::Relaxed);
                        return Some(m);
                    }
                    _ => {}
                },
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %up, error = %e, "upstream DNS exchange failed")
                }
                Err(_) => tracing::debug!(upstream = %up, "upstream DNS exchange timed out"),
            }
            self.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
        }
        if !self.cfg.upstreams.is_empty() {
            self.upstream_down.store(true, Ordering::Relaxed);
        }
        None
    }
}

fn aged(e: &CacheEntry, now: Instant, fixed: Option<u32>) -> Resolution {
    let elapsed = now.saturating_duration_since(e.stored).as_secs() as u32;
    let fix = |mut r: Record| {
        r.ttl = fixed.unwrap_or_else(|| r.ttl.saturating_sub(elapsed).max(1));
        r
    };
    Resolution {
        rcode: e.rcode,
        answers: e.answers.iter().cloned().map(fix).collect(),
        authorities: e.authorities.iter().cloned().map(fix).collect(),
        authoritative: false,
    }
}

fn rand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u16
}

async fn tcp_exchange(up: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    s.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    framed.extend_from_slice(msg);
    s.write_all(&framed).await?;
    let len = s.read_u16().await? as usize;
    let mut buf = vec![0; len];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

fn kind(t: RecordType) -> Kind {
    match t {
        RecordType::A => Kind::A,
        RecordType::AAAA => Kind::Aaaa,
        RecordType::SRV => Kind::Srv,
        RecordType::PTR => Kind::Ptr,
        RecordType::TXT => Kind::Txt,
        RecordType::CNAME => Kind::Cname,
        _ => Kind::Other,
    }
}

/// Whether a single label is a public suffix of the public-suffix list (`com`, `dev`, `co`).
/// The Service `(name, namespace)` whose cluster name would shadow public name `public`
/// (`www.yahoo.com.` → `yahoo` of namespace `com`): its last two labels.
fn shadowing_service(public: &str) -> Option<(&str, &str)> {
    let mut labels = public.trim_end_matches('.').rsplitn(3, '.');
    let ns = labels.next()?;
    let svc = labels.next()?;
    Some((svc, ns))
}

pub fn is_public_suffix(label: &str) -> bool {
    psl::suffix(label.as_bytes()).is_some_and(|s| s.is_known() && s.as_bytes() == label.as_bytes())
}

/// The DNS server's and the policy modules' counters in the OpenMetrics text format.
pub fn metrics_text(dns: Option<&Dns>, modules: &Modules) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP netlet_{name} {help}");
        let _ = writeln!(out, "# TYPE netlet_{name} counter");
        for (labels, v) in rows {
            let _ = writeln!(out, "netlet_{name}_total{labels} {v}");
        }
    };
    if let Some(d) = dns {
        let s = &d.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, v) in [
            ("dns_queries", "DNS queries received.", l(&s.queries)),
            (
                "dns_cluster_answers",
                "Answers from the cluster zone.",
                l(&s.cluster),
            ),
            (
                "dns_cache_hits",
                "Upstream answers served from the cache.",
                l(&s.cache_hits),
            ),
            (
                "dns_cache_misses",
                "Upstream answers asked for.",
                l(&s.cache_misses),
            ),
            (
                "dns_stale_answers",
                "Expired answers served while upstreams were down.",
                l(&s.stale),
            ),
            (
                "dns_upstream_queries",
                "Upstream exchanges.",
                l(&s.upstream_queries),
            ),
            (
                "dns_upstream_failures",
                "Upstream exchanges that failed.",
                l(&s.upstream_failures),
            ),
            (
                "dns_upstream_microseconds",
                "Time spent in upstream exchanges.",
                l(&s.upstream_micros),
            ),
            ("dns_denied", "Queries denied by DNS policy.", l(&s.denied)),
            (
                "dns_rewritten",
                "Queries rewritten by DNS policy.",
                l(&s.rewritten),
            ),
            (
                "dns_shadowed",
                "Cluster names refused for shadowing a public name.",
                l(&s.shadowed),
            ),
            (
                "dns_expanded",
                "Queries answered by server-side search expansion.",
                l(&s.expanded),
            ),
            (
                "dns_malformed",
                "Malformed or unsupported queries.",
                l(&s.malformed),
            ),
            (
                "dns_alias_loops",
                "Queries whose alias chain looped or ran too long (SERVFAIL).",
                l(&s.alias_loops),
            ),
            (
                "dns_panics",
                "Queries whose answering panicked (SERVFAIL).",
                l(&s.panics),
            ),
            (
                "dns_tcp_refused",
                "DNS-over-TCP connections closed at once (per-source or total limit).",
                l(&s.tcp_refused),
            ),
        ] {
            counter(name, help, vec![(String::new(), v)]);
        }
        let p = d.policies();
        let mut rows = Vec::new();
        for (id, c) in p.counts() {
            for (verdict, a) in [
                ("allow", &c.allow),
                ("deny", &c.deny),
                ("rewrite", &c.rewrite),
                ("failed", &c.failed),
            ] {
                rows.push((
                    format!("{{policy=\"{id}\",verdict=\"{verdict}\"}}"),
                    a.load(Ordering::Relaxed),
                ));
            }
        }
        counter(
            "dns_policy_decisions",
            "DNS policy decisions by policy and verdict.",
            rows,
        );
    }
    let mut rows = Vec::new();
    for (st, c) in modules.status() {
        let c = c.counters();
        for (outcome, a) in [
            ("allow", &c.allow),
            ("deny", &c.deny),
            ("rewrite", &c.rewrite),
            ("deadline", &c.deadline),
            ("memory_limit", &c.memory),
            ("trap", &c.trap),
            ("bad_output", &c.bad_output),
            ("unavailable", &c.unavailable),
        ] {
            rows.push((
                format!("{{module=\"{}\",outcome=\"{outcome}\"}}", st.spec.name),
                a.load(Ordering::Relaxed),
            ));
        }
    }
    counter(
        "policy_module_calls",
        "WebAssembly policy module calls by outcome.",
        rows,
    );
    out
}

async fn loopback() -> anyhow::Result<(rtnetlink::Handle, u32)> {
    use futures::TryStreamExt;
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    let lo = handle
        .link()
        .get()
        .match_name("lo".to_string())
        .execute()
        .try_next()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no loopback device"))?
        .header
        .index;
    Ok((handle, lo))
}

/// Puts the listen addresses on the loopback device (an address already there is fine), so
/// packets from pods to them are delivered to this node. Returns the ones it added.
pub async fn assign_addresses(listen: &[SocketAddr]) -> anyhow::Result<Vec<IpAddr>> {
    let (handle, lo) = loopback().await?;
    let mut added = Vec::new();
    for a in listen {
        let ip = a.ip();
        if ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        match handle.address().add(lo, ip, prefix).execute().await {
            Ok(()) => {
                tracing::info!(%ip, "DNS address put on lo");
                added.push(ip);
            }
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -(nix::errno::Errno::EEXIST as i32) => {}
            Err(e) => return Err(anyhow::anyhow!("adding {ip} to lo: {e}")),
        }
    }
    Ok(added)
}

/// At a graceful stop: takes the NOTRACK rules away and gives back the addresses the host took
/// over (the ones it added that are not link-local: a cluster DNS Service IP is the Service's
/// again). A link-local one stays, so that pods asking it meanwhile are refused at once (port
/// unreachable) and go on to their fallback name server rather than wait for a timeout.
/// `held` are the taken-over addresses whose Service no endpoint serves (the node-local server
/// is the cluster's DNS, as deploy/ runs it): nothing to give them back to, so they stay, with
/// their rules, and queries to them go unanswered rather than refused until the host is back
/// (a DaemonSet's rolling update: the clients' retries reach the new host).
pub async fn release_addresses(added: &[IpAddr], notrack_on: bool, held: &[IpAddr]) {
    if !held.is_empty() {
        let h = held.to_vec();
        match tokio::task::spawn_blocking(move || notrack::hold(&h)).await {
            Ok(Ok(())) => {
                tracing::info!(addresses = ?held, "cluster DNS addresses held until the host is back")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cluster DNS addresses not held"),
            Err(e) => tracing::warn!(error = %e, "cluster DNS addresses not held"),
        }
    } else if notrack_on {
        match tokio::task::spawn_blocking(notrack::remove).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "DNS NOTRACK rules not removed"),
            Err(e) => tracing::warn!(error = %e, "DNS NOTRACK rules not removed"),
        }
    }
    let taken: Vec<IpAddr> = added
        .iter()
        .copied()
        .filter(|ip| !held.contains(ip))
        .filter(|ip| match ip {
            IpAddr::V4(a) => !a.is_link_local(),
            IpAddr::V6(a) => !a.is_unicast_link_local(),
        })
        .collect();
    if taken.is_empty() {
        return;
    }
    let Ok((handle, lo)) = loopback().await else {
        return;
    };
    use futures::TryStreamExt;
    // The whole dump first, then the deletes (not interleaved on one connection).
    let dump: Vec<_> = match handle
        .address()
        .get()
        .set_link_index_filter(lo)
        .execute()
        .try_collect()
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the addresses of lo");
            return;
        }
    };
    for msg in dump {
        let ip = msg.attributes.iter().find_map(|a| match a {
            rtnetlink::packet_route::address::AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if ip.is_some_and(|ip| taken.contains(&ip)) {
            match handle.address().del(msg).execute().await {
                Ok(()) => tracing::info!(ip = ?ip, "DNS address given back"),
                Err(e) => tracing::warn!(ip = ?ip, error = %e, "DNS address not removed from lo"),
            }
        }
    }
}

/// Serves on the configured addresses until the task is dropped. Returns once every socket is
/// bound (an error names the address that could not be).
///
/// UDP is served by threads of their own, one per socket (`udp_sockets` per address, spread by
/// SO_REUSEPORT), each receiving with a blocking call and answering in place whatever needs no
/// upstream exchange (the cluster zone, the cache, a denial): the host's runtime only sees the
/// queries that wait on an upstream. The first task returned stands for those threads: dropping
/// or aborting it stops them (within [`UDP_STOP_CHECK`]).
pub async fn serve(dns: Arc<Dns>) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = tokio::runtime::Handle::current();
    let mut tasks = Vec::new();
    let mut n = 0;
    for addr in dns.cfg.listen.clone() {
        for _ in 0..dns.cfg.udp_sockets.max(1) {
            let sock =
                Arc::new(udp_socket(addr).map_err(|e| anyhow::anyhow!("DNS UDP {addr}: {e}"))?);
            let (dns, rt, stop) = (dns.clone(), rt.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("dns-udp-{n}"))
                .spawn(move || {
                    // A panic the answer's own guard did not catch ends this round of the
                    // loop, not the socket's service.
                    while !stop.load(Ordering::Acquire) {
                        let run = std::panic::AssertUnwindSafe(|| {
                            udp_thread(dns.clone(), sock.clone(), rt.clone(), stop.clone())
                        });
                        if std::panic::catch_unwind(run).is_ok() {
                            break;
                        }
                        dns.stats.panics.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("a DNS UDP thread panicked; it starts again");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })?;
            n += 1;
        }
        let tcp = tcp_listener(addr).map_err(|e| anyhow::anyhow!("DNS TCP {addr}: {e}"))?;
        tasks.push(tokio::spawn(tcp_loop(dns.clone(), tcp)));
    }
    tasks.insert(
        0,
        tokio::spawn(async move {
            let _stop = StopOnDrop(stop);
            std::future::pending::<()>().await
        }),
    );
    Ok(tasks)
}

/// How often a UDP thread looks whether it should stop.
pub const UDP_STOP_CHECK: Duration = Duration::from_millis(200);

struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &socket::SockaddrStorage::from(addr),
    )?;
    let s = std::net::UdpSocket::from(fd);
    s.set_read_timeout(Some(UDP_STOP_CHECK))?;
    Ok(s)
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &socket::SockaddrStorage::from(addr),
    )?;
    socket::listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// Datagrams taken (and answers sent) per system call at most.
const UDP_BATCH: usize = 32;

fn std_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(std::net::SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}

fn udp_thread(
    dns: Arc<Dns>,
    sock: Arc<std::net::UdpSocket>,
    rt: tokio::runtime::Handle,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;
    // Timers and sockets an answer makes belong to the host's runtime.
    let _rt = rt.enter();
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; 4096]; UDP_BATCH];
    let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut got: Vec<(usize, SocketAddr)> = Vec::with_capacity(UDP_BATCH);
    let mut out: Vec<(Vec<u8>, SockaddrStorage)> = Vec::with_capacity(UDP_BATCH);
    while !stop.load(Ordering::Acquire) {
        // Blocks for the first datagram (up to the socket's read timeout), then takes what
        // else is queued, in one call.
        got.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(msgs) => {
                    for m in msgs {
                        if let Some(a) = m.address.as_ref().and_then(std_addr) {
                            got.push((m.bytes, a));
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS UDP receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        out.clear();
        for (i, (n, src)) in got.iter().enumerate() {
            // Answered in place when no upstream exchange is needed; otherwise the runtime
            // goes on with it (polled there again, with a waker that counts) and sends it.
            let mut fut = Box::pin(dns.clone().answer(bufs[i][..*n].to_vec(), src.ip(), true));
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(Some(reply)) => out.push((reply, SockaddrStorage::from(*src))),
                Poll::Ready(None) => {}
                Poll::Pending => {
                    let (sock, src) = (sock.clone(), *src);
                    rt.spawn(async move {
                        if let Some(reply) = fut.await {
                            let _ = sock.send_to(&reply, src);
                        }
                    });
                }
            }
        }
        if out.is_empty() {
            continue;
        }
        let slices: Vec<[IoSlice<'_>; 1]> = out.iter().map(|(b, _)| [IoSlice::new(b)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = out.iter().map(|(_, a)| Some(*a)).collect();
        let sent = match sendmmsg(fd, &mut tx, slices.iter(), &addrs, [], MsgFlags::empty()) {
            Ok(r) => r.count(),
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP answers not sent together");
                0
            }
        };
        // The kernel may stop early (a full send buffer): the rest one by one.
        for (reply, to) in out.iter().skip(sent) {
            if let Some(to) = std_addr(to) {
                let _ = sock.send_to(reply, to);
            }
        }
    }
}

async fn tcp_loop(dns: Arc<Dns>, listener: TcpListener) {
    loop {
        let (mut s, src) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Within the limits, or closed at once (a pod cannot hold the server's sockets).
        let Some(slot) = dns.admit_tcp(src.ip()) else {
            drop(s);
            continue;
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
                    Ok(Ok(n)) => n as usize,
                    _ => return,
                };
                let mut msg = vec![0; len];
                // The message follows its length at once, or the connection goes.
                match tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut msg)).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
                let Some(out) = dns.clone().answer(msg, src.ip(), false).await else {
                    continue;
                };
                let mut framed = Vec::with_capacity(out.len() + 2);
                framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
                framed.extend_from_slice(&out);
                if s.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}
