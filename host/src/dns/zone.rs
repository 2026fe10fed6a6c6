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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

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

/// The cluster's names.
#[derive(Debug, Default)]
pub struct Zone {
    /// The cluster domain with a trailing dot, e.g. `cluster.local.`.
    pub domain: String,
    records: HashMap<String, Vec<Data>>,
    /// Every name that exists, records or not (empty non-terminals included).
    names: HashSet<String>,
    /// Services by `<name>.<namespace>` (to tell shadowing candidates quickly).
    services: HashSet<(String, String)>,
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

impl Zone {
    /// Builds the zone for `domain` (e.g. `cluster.local`) from Service and EndpointSlice
    /// objects.
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a KService>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Zone {
        let mut z = Zone {
            domain: fqdn(domain),
            ..Default::default()
        };
        let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            if let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
            {
                by_service.entry((ns, svc.clone())).or_default().push(s);
            }
        }
        z.add(
            &format!("dns-version.{}", z.domain),
            Data::Txt(SCHEMA_VERSION.into()),
        );
        for svc in services {
            let (Some(name), Some(spec)) = (&svc.metadata.name, &svc.spec) else {
                continue;
            };
            let ns = svc
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let base = format!(
                "{}.{}.svc.{}",
                name.to_ascii_lowercase(),
                ns.to_ascii_lowercase(),
                z.domain
            );
            z.services
                .insert((name.to_ascii_lowercase(), ns.to_ascii_lowercase()));
            z.exist(&base);
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(target) = &spec.external_name {
                    z.add(&base, Data::Cname(fqdn(target)));
                }
                continue;
            }
            let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
            if ips.is_empty()
                && let Some(ip) = &spec.cluster_ip
            {
                ips.push(ip.clone());
            }
            let headless = ips.iter().any(|ip| ip == "None") || ips.is_empty();
            let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
            let named_ports: Vec<(String, String)> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let n = p.name.as_ref().filter(|n| !n.is_empty())?;
                    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                    Some((n.to_ascii_lowercase(), proto))
                })
                .collect();
            if !headless {
                for ip in ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                    z.add(&base, Data::Addr(ip));
                    z.add(&reverse_name(ip), Data::Ptr(base.clone()));
                }
                for p in spec.ports.iter().flatten() {
                    let Some(n) = p.name.as_ref().filter(|n| !n.is_empty()) else {
                        continue;
                    };
                    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                    let srv = format!("_{}._{proto}.{base}", n.to_ascii_lowercase());
                    z.add(&srv, Data::Srv(p.port as u16, base.clone()));
                }
                continue;
            }
            // Headless: the endpoints.
            let slices = by_service
                .get(&(ns.clone(), name.clone()))
                .cloned()
                .unwrap_or_default();
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
                        z.add(&base, Data::Addr(ip));
                        let target = match &host {
                            Some(h) => {
                                let n = format!("{h}.{base}");
                                z.add(&n, Data::Addr(ip));
                                z.add(&reverse_name(ip), Data::Ptr(n.clone()));
                                n
                            }
                            None => format!("{}.{base}", dashed(ip)),
                        };
                        for (port_name, proto) in &named_ports {
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
                                z.add(&srv, Data::Srv(port as u16, target.clone()));
                            }
                        }
                    }
                }
            }
        }
        for v in z.records.values_mut() {
            v.sort();
            v.dedup();
        }
        z
    }

    /// Adds a ClusterIP Service known only by its addresses and named ports (name, protocol in
    /// lower case, port): its A/AAAA, PTR and SRV records.
    pub fn add_cluster_ip_service(
        &mut self,
        ns: &str,
        name: &str,
        ips: &[IpAddr],
        ports: &[(String, String, u16)],
    ) {
        let base = format!(
            "{}.{}.svc.{}",
            name.to_ascii_lowercase(),
            ns.to_ascii_lowercase(),
            self.domain
        );
        self.services
            .insert((name.to_ascii_lowercase(), ns.to_ascii_lowercase()));
        self.exist(&base);
        for ip in ips {
            self.add(&base, Data::Addr(*ip));
            self.add(&reverse_name(*ip), Data::Ptr(base.clone()));
        }
        for (port_name, proto, port) in ports {
            let srv = format!("_{}._{proto}.{base}", port_name.to_ascii_lowercase());
            self.add(&srv, Data::Srv(*port, base.clone()));
        }
    }

    fn exist(&mut self, name: &str) {
        // the name and every ancestor down to the zone (empty non-terminals exist too)
        let mut n = name;
        loop {
            if !self.names.insert(n.to_string()) {
                break;
            }
            match n.split_once('.') {
                Some((_, rest)) if !rest.is_empty() && rest.len() >= self.domain.len() => n = rest,
                _ => break,
            }
        }
    }

    fn add(&mut self, name: &str, d: Data) {
        if name.ends_with(&self.domain) {
            self.exist(name);
        }
        self.records.entry(name.to_string()).or_default().push(d);
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
        self.services.contains(&(svc.to_string(), ns.to_string()))
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
            return if self.names.contains(name) || name == self.domain {
                Lookup::Records(Vec::new())
            } else {
                Lookup::NxDomain
            };
        };
        let pick: Vec<Data> = records
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
