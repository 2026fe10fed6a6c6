//! The cluster zone: the records the Kubernetes DNS specification
//! (<https://github.com/kubernetes/dns/blob/master/docs/specification.md>) defines, built from the
//! Services and EndpointSlices the host holds.
//!
//! - `<svc>.<ns>.svc.<zone>`: A/AAAA of the ClusterIPs; for a headless Service, of its ready
//!   endpoints (all of them with `publishNotReadyAddresses`); CNAME to `externalName` for an
//!   ExternalName Service.
//! - `<hostname>.<svc>.<ns>.svc.<zone>`: A/AAAA of a headless Service's endpoint that has a
//!   hostname (pods with `hostname` and `subdomain`, StatefulSets).
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV for each named port: the Service name for a
//!   ClusterIP Service, one record per ready endpoint of a headless one (its hostname, or its
//!   address with dashes).
//! - PTR for ClusterIPs and for headless endpoints with a hostname.
//! - `dns-version.<zone>`: TXT with the specification's schema version.
//! - Any other name in the zone: NXDOMAIN; a name that exists without records of the asked type
//!   (or an empty non-terminal such as `<ns>.svc.<zone>`): NOERROR with no answers. Both carry
//!   the zone's SOA.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The schema version of the Kubernetes DNS specification served.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// TTL of cluster records, in seconds (CoreDNS's kubernetes plugin default).
pub const TTL: u32 = 5;

/// What the zone holds for a name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is not in the zone (or reverse zones) this server answers for.
    NotOurs,
    /// The name does not exist.
    NxDomain,
    /// The name exists; these are its records of the type asked (possibly none: NODATA).
    Records(Vec<Data>),
}

/// One record's data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Data {
    /// An address (A or AAAA by family).
    Addr(IpAddr),
    /// An alias (fully qualified, trailing dot).
    Cname(String),
    /// A service location: port and target.
    Srv(u16, String),
    /// A reverse pointer target.
    Ptr(String),
    /// A text.
    Txt(String),
}

/// Query types the zone distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A.
    A,
    /// AAAA.
    Aaaa,
    /// SRV.
    Srv,
    /// PTR.
    Ptr,
    /// TXT.
    Txt,
    /// CNAME.
    Cname,
    /// Anything else (answered NODATA for existing names).
    Other,
}

/// The records one Service gives the zone: each a name and its data, or a name that only
/// exists (a headless Service without ready endpoints, an ExternalName without a target).
type Contribution = Arc<Records>;

/// Records: each a name and its data, or a name that only exists.
type Records = Vec<(String, Option<Data>)>;

/// The cluster's names. Each Service's records are kept as its own contribution, so one
/// Service is put in or taken out without touching the others; the maps are persistent
/// (structure-sharing), so the server's readers keep a snapshot that costs nothing to take
/// while a change is made.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// The cluster domain with a trailing dot, e.g. `cluster.local.`.
    pub domain: String,
    /// Records by name, sorted; one Service's record repeated by another is kept twice (and
    /// answered once).
    records: imbl::HashMap<String, Vec<Data>>,
    /// Every name that exists, records or not (empty non-terminals included), with how many
    /// records and Services make it exist.
    names: imbl::HashMap<String, u32>,
    /// Each Service's contribution by `(<name>, <namespace>)`, lower case.
    services: imbl::HashMap<(String, String), Contribution>,
}
fn fqdn(s: &str) -> String {
    let mut s = s.to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

/// The reverse-lookup name of an address (`4.3.2.1.in-addr.arpa.`, nibbles for IPv6).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(73);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => ip.to_string().replace('.', "-"),
        IpAddr::V6(_) => ip.to_string().replace(':', "-"),
    }
}

/// What a Service object (with its EndpointSlices) puts in the zone for `domain` (trailing
/// dot): its key (lower case) and records.
fn object_records(
    domain: &str,
    svc: &KService,
    slices: &[&EndpointSlice],
) -> Option<((String, String), Records)> {
    let (Some(name), Some(spec)) = (&svc.metadata.name, &svc.spec) else {
        return None;
    };
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let key = (name.to_ascii_lowercase(), ns.to_ascii_lowercase());
    let base = format!("{}.{}.svc.{domain}", key.0, key.1);
    let mut out = vec![(base.clone(), None)];
    if spec.type_.as_deref() == Some("ExternalName") {
        if let Some(target) = &spec.external_name {
            out.push((base, Some(Data::Cname(fqdn(target)))));
        }
        return Some((key, out));
    }
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = &spec.cluster_ip
    {
        ips.push(ip.clone());
    }
    let headless = ips.iter().any(|ip| ip == "None") || ips.is_empty();
    // Named ports: name and protocol in lower case, port.
    let named_ports: Vec<(String, String, u16)> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let n = p.name.as_ref().filter(|n| !n.is_empty())?;
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            Some((n.to_ascii_lowercase(), proto, p.port as u16))
        })
        .collect();
    if !headless {
        let ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        return Some((key, cluster_ip_records(&base, &ips, &named_ports)));
    }
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    // Headless: the endpoints.
    let mut seen = BTreeSet::new();
    for slice in slices {
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !publish_not_ready {
                continue;
            }
            let host = ep.hostname.as_ref().map(|h| h.to_ascii_lowercase());
            for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                if !seen.insert(ip) {
                    continue;
                }
                out.push((base.clone(), Some(Data::Addr(ip))));
                let target = match &host {
                    Some(h) => {
                        let n = format!("{h}.{base}");
                        out.push((n.clone(), Some(Data::Addr(ip))));
                        out.push((reverse_name(ip), Some(Data::Ptr(n.clone()))));
                        n
                    }
                    None => format!("{}.{base}", dashed(ip)),
                };
                for (port_name, proto, _) in &named_ports {
                    let port = slice
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| {
                            p.name.as_deref().map(str::to_ascii_lowercase).as_deref()
                                == Some(port_name.as_str())
                        })
                        .and_then(|p| p.port);
                    if let Some(port) = port {
                        let srv = format!("_{port_name}._{proto}.{base}");
                        out.push((srv, Some(Data::Srv(port as u16, target.clone()))));
                    }
                }
            }
        }
    }
    Some((key, out))
}

/// A ClusterIP Service's records under `base`: A/AAAA and PTR of its addresses, SRV of its named
/// ports (name, protocol in lower case, port).
fn cluster_ip_records(base: &str, ips: &[IpAddr], ports: &[(String, String, u16)]) -> Records {
    let mut out = vec![(base.to_string(), None)];
    for ip in ips {
        out.push((base.to_string(), Some(Data::Addr(*ip))));
        out.push((reverse_name(*ip), Some(Data::Ptr(base.to_string()))));
    }
    for (port_name, proto, port) in ports {
        let srv = format!("_{}._{proto}.{base}", port_name.to_ascii_lowercase());
        out.push((srv, Some(Data::Srv(*port, base.to_string()))));
    }
    out
}

impl Zone {
    /// An empty zone for `domain` (e.g. `cluster.local`): only `dns-version`.
    pub fn new(domain: &str) -> Zone {
        let mut z = Zone {
            domain: fqdn(domain),
            ..Default::default()
        };
        let version = format!("dns-version.{}", z.domain);
        z.put(&version, Some(&Data::Txt(SCHEMA_VERSION.into())));
        z
    }

    /// Puts a Service object in the zone (its EndpointSlices give a headless Service its
    /// records), replacing what it had.
    pub fn set_object(&mut self, svc: &KService, slices: &[&EndpointSlice]) {
        if let Some((key, records)) = object_records(&self.domain, svc, slices) {
            self.replace(key, Some(records));
        }
    }

    /// Puts a ClusterIP Service known only by its addresses and named ports (name, protocol in
    /// lower case, port) in the zone: its A/AAAA, PTR and SRV records, replacing what it had.
    pub fn add_cluster_ip_service(
        &mut self,
        ns: &str,
        name: &str,
        ips: &[IpAddr],
        ports: &[(String, String, u16)],
    ) {
        let key = (name.to_ascii_lowercase(), ns.to_ascii_lowercase());
        let base = format!("{}.{}.svc.{}", key.0, key.1, self.domain);
        let records = cluster_ip_records(&base, ips, ports);
        self.replace(key, Some(records));
    }

    /// Takes Service `<ns>/<name>` out of the zone.
    pub fn remove_service(&mut self, ns: &str, name: &str) {
        self.replace((name.to_ascii_lowercase(), ns.to_ascii_lowercase()), None);
    }

    /// Sets one Service's contribution.
    fn replace(&mut self, key: (String, String), records: Option<Records>) {
        if let Some(old) = self.services.remove(&key) {
            for (name, d) in old.iter() {
                self.take(name, d.as_ref());
            }
        }
        if let Some(records) = records {
            for (name, d) in &records {
                self.put(name, d.as_ref());
            }
            self.services.insert(key, Arc::new(records));
        }
    }

    /// The name and its ancestors down to the zone (empty non-terminals exist too), for a name
    /// in the zone.
    fn lineage<'a>(&self, name: &'a str) -> impl Iterator<Item = &'a str> {
        let domain = self.domain.len();
        let mut next = name.ends_with(self.domain.as_str()).then_some(name);
        std::iter::from_fn(move || {
            let n = next?;
            next = match n.split_once('.') {
                Some((_, rest)) if !rest.is_empty() && rest.len() >= domain => Some(rest),
                _ => None,
            };
            Some(n)
        })
    }

    fn put(&mut self, name: &str, d: Option<&Data>) {
        let lineage: Vec<&str> = self.lineage(name).collect();
        for n in lineage {
            *self.names.entry(n.to_string()).or_insert(0) += 1;
        }
        if let Some(d) = d {
            let v = self.records.entry(name.to_string()).or_default();
            let at = v.partition_point(|x| x < d);
            v.insert(at, d.clone());
        }
    }

    fn take(&mut self, name: &str, d: Option<&Data>) {
        let lineage: Vec<&str> = self.lineage(name).collect();
        for n in lineage {
            if let Some(c) = self.names.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    self.names.remove(n);
                }
            }
        }
        if let Some(d) = d
            && let Some(v) = self.records.get_mut(name)
        {
            if let Some(at) = v.iter().position(|x| x == d) {
                v.remove(at);
            }
            if v.is_empty() {
                self.records.remove(name);
            }
        }
    }

    /// Whether `name` (lower case, trailing dot) is in the cluster zone.
    pub fn in_zone(&self, name: &str) -> bool {
        name == self.domain
            || (name.len() > self.domain.len()
                && name.ends_with(self.domain.as_str())
                && name.as_bytes()[name.len() - self.domain.len() - 1] == b'.')
    }

    /// Whether a Service `<svc>.<ns>` exists.
    pub fn has_service(&self, svc: &str, ns: &str) -> bool {
        self.services
            .contains_key(&(svc.to_string(), ns.to_string()))
    }

    /// The records of `name` (lower case, trailing dot) of `kind`.
    pub fn lookup(&self, name: &str, kind: Kind) -> Lookup {
        let reverse = name.ends_with(".in-addr.arpa.") || name.ends_with(".ip6.arpa.");
        if !self.in_zone(name) && !reverse {
            return Lookup::NotOurs;
        }
        let Some(records) = self.records.get(name) else {
            if reverse {
                // Addresses the cluster does not own are someone else's to answer.
                return Lookup::NotOurs;
            }
            return if self.names.contains_key(name) || name == self.domain {
                Lookup::Records(Vec::new())
            } else {
                Lookup::NxDomain
            };
        };
        let mut pick: Vec<Data> = records
            .iter()
            .filter(|d| {
                matches!(
                    (kind, d),
                    (_, Data::Cname(_))
                        | (Kind::A, Data::Addr(IpAddr::V4(_)))
                        | (Kind::Aaaa, Data::Addr(IpAddr::V6(_)))
                        | (Kind::Srv, Data::Srv(..))
                        | (Kind::Ptr, Data::Ptr(_))
                        | (Kind::Txt, Data::Txt(_))
                )
            })
            .cloned()
            .collect();
        // Sorted: a record two Services give is answered once.
        pick.dedup();
        Lookup::Records(pick)
    }

    /// Number of names with records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the zone holds no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, ip: Option<&str>, ports: &[(&str, u16)]) -> KService {
        let ports: Vec<_> = ports
            .iter()
            .map(|(n, p)| serde_json::json!({"name": n, "port": p}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip.unwrap_or("None"), "ports": ports},
        }))
        .unwrap()
    }

    fn slice(ns: &str, svc: &str, name: &str, eps: &[(&str, Option<&str>)]) -> EndpointSlice {
        let eps: Vec<_> = eps
            .iter()
            .map(|(ip, host)| serde_json::json!({"addresses": [ip], "hostname": host}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": eps,
        }))
        .unwrap()
    }

    fn records(z: &Zone, name: &str, kind: Kind) -> Lookup {
        z.lookup(name, kind)
    }

    fn expect(z: &Zone, want: &[(&str, Kind, Lookup)]) {
        for (name, kind, lookup) in want {
            assert_eq!(&z.lookup(name, *kind), lookup, "{name} {kind:?}");
        }
    }

    // Written out from the DNS specification: a Service taken out takes its names, its
    // reverse records and the empty non-terminals only it made exist; what another Service
    // still makes exist stays.
    #[test]
    fn a_service_taken_out_takes_only_its_names() {
        let mut z = Zone::new("cluster.local");
        z.set_object(
            &svc("shop", "web", Some("10.96.0.10"), &[("http", 80)]),
            &[],
        );
        z.set_object(&svc("shop", "db", Some("10.96.0.11"), &[]), &[]);
        let db = slice("shop", "db", "db-1", &[("10.244.0.7", Some("db-0"))]);
        z.set_object(&svc("shop", "db", None, &[("http", 80)]), &[&db]);
        let a = |ip: &str| Lookup::Records(vec![Data::Addr(ip.parse().unwrap())]);
        assert_eq!(
            records(&z, "web.shop.svc.cluster.local.", Kind::A),
            a("10.96.0.10")
        );
        assert_eq!(
            records(&z, "db.shop.svc.cluster.local.", Kind::A),
            a("10.244.0.7")
        );
        assert_eq!(
            records(&z, "db-0.db.shop.svc.cluster.local.", Kind::A),
            a("10.244.0.7")
        );
        // db's ClusterIP went with its headless change.
        assert_eq!(
            records(&z, "11.0.96.10.in-addr.arpa.", Kind::Ptr),
            Lookup::NotOurs
        );
        assert_eq!(
            records(&z, "_http._tcp.db.shop.svc.cluster.local.", Kind::Srv),
            Lookup::Records(vec![Data::Srv(
                8080,
                "db-0.db.shop.svc.cluster.local.".into()
            )])
        );
        z.remove_service("shop", "web");
        expect(
            &z,
            &[
                ("web.shop.svc.cluster.local.", Kind::A, Lookup::NxDomain),
                (
                    "_http._tcp.web.shop.svc.cluster.local.",
                    Kind::Srv,
                    Lookup::NxDomain,
                ),
                ("10.0.96.10.in-addr.arpa.", Kind::Ptr, Lookup::NotOurs),
                ("shop.svc.cluster.local.", Kind::A, Lookup::Records(vec![])),
            ],
        );
        assert!(!z.has_service("web", "shop"));
        z.remove_service("shop", "db");
        // Only dns-version is left.
        expect(
            &z,
            &[
                ("shop.svc.cluster.local.", Kind::A, Lookup::NxDomain),
                ("db-0.db.shop.svc.cluster.local.", Kind::A, Lookup::NxDomain),
                ("svc.cluster.local.", Kind::A, Lookup::NxDomain),
                (
                    "dns-version.cluster.local.",
                    Kind::Txt,
                    Lookup::Records(vec![Data::Txt(SCHEMA_VERSION.into())]),
                ),
            ],
        );
        // Two Services giving the same record: answered once, kept while either has it.
        let one = slice("a", "x", "x-1", &[("10.244.0.9", Some("h"))]);
        let two = slice("a", "y", "y-1", &[("10.244.0.9", Some("h"))]);
        z.set_object(&svc("a", "x", None, &[]), &[&one]);
        z.set_object(&svc("a", "y", None, &[]), &[&two]);
        z.remove_service("a", "x");
        assert_eq!(
            records(&z, "9.0.244.10.in-addr.arpa.", Kind::Ptr),
            Lookup::Records(vec![Data::Ptr("h.y.a.svc.cluster.local.".into())])
        );
    }

    // Changed one Service at a time, in any order, the zone equals the one built from scratch
    // from the same objects.
    #[test]
    fn changes_one_by_one_equal_a_fresh_build() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut z = Zone::new("cluster.local");
        let mut now: std::collections::BTreeMap<
            (String, String),
            (KService, Option<EndpointSlice>),
        > = Default::default();
        for _ in 0..2000 {
            let ns = format!("ns{}", next(3));
            let name = format!("s{}", next(12));
            let key = (ns.clone(), name.clone());
            match next(4) {
                0 => {
                    z.remove_service(&ns, &name);
                    now.remove(&key);
                }
                1 => {
                    let ip = format!("10.96.{}.{}", next(2), next(20));
                    let s = svc(&ns, &name, Some(&ip), &[("http", 80), ("dns", 53)]);
                    z.set_object(&s, &[]);
                    now.insert(key, (s, None));
                }
                _ => {
                    let eps: Vec<(String, Option<String>)> = (0..next(4))
                        .map(|_| {
                            let ip = format!("10.244.0.{}", next(30));
                            (ip, (next(2) == 0).then(|| format!("h{}", next(3))))
                        })
                        .collect();
                    let eps: Vec<(&str, Option<&str>)> = eps
                        .iter()
                        .map(|(a, h)| (a.as_str(), h.as_deref()))
                        .collect();
                    let sl = slice(&ns, &name, &format!("{name}-1"), &eps);
                    let s = svc(&ns, &name, None, &[("http", 80)]);
                    z.set_object(&s, &[&sl]);
                    now.insert(key, (s, Some(sl)));
                }
            }
            // Built afresh: every Service now, in one pass, into an empty zone.
            let mut fresh = Zone::new("cluster.local");
            for (s, l) in now.values() {
                fresh.set_object(s, &l.iter().collect::<Vec<_>>());
            }
            let norm = |z: &Zone| {
                let mut r: Vec<(String, Vec<Data>)> = z
                    .records
                    .iter()
                    .map(|(k, v)| {
                        let mut v = v.clone();
                        v.dedup();
                        (k.clone(), v)
                    })
                    .collect();
                r.sort();
                let mut n: Vec<String> = z.names.keys().cloned().collect();
                n.sort();
                let mut s: Vec<(String, String)> = z.services.keys().cloned().collect();
                s.sort();
                (r, n, s)
            };
            assert_eq!(norm(&z), norm(&fresh));
        }
    }
}
