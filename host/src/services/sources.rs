//! How the sources of Services coexist, and how their changes become deltas for drivers.
//!
//! Each source (the manifests directory, callers of `ProgramService` on the host socket, later
//! the Kubernetes API) owns the Services it wrote first: a key owned by one source is not
//! overwritten by another — the other's change is refused (a `FAILED_PRECONDITION` naming the
//! field for the socket, a reported error for a manifest) until the owner deletes it.
//!
//! The node's table (what drivers are told) is the union of the sources, with each endpoint's
//! `local` / `use_for_internal` / `use_for_external` computed for this node ([`super::view`]).
//! A change touches only its Services: the batch for drivers carries the Service objects that
//! changed and the endpoints whose state changed, so one endpoint's change costs the same in a
//! Service of 10 endpoints as in one of 1000.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use netlet_sdk::generation::{Applied, Batch};
use netlet_sdk::parts::Parts;
use netlet_sdk::proto::{
    Endpoint, EndpointKey, EndpointUpsert, HostPorts, PortMapping, ProgramServiceRequest, Protocol,
    Service, ServiceKey, ServiceType, TrafficPolicy,
};
use netlet_sdk::state::ServiceTable;

use super::view::{self, NodeInfo};

/// Where a Service came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// `netlet serve --manifests DIR`.
    Manifests,
    /// `ProgramService` on the host socket.
    Socket,
    /// The Kubernetes API (kube-rs): `--kubeconfig`.
    Kubernetes,
    /// The node-local DNS server: egress by name (NetworkPolicies of its own, one per pod).
    DnsEgress,
}

impl Source {
    /// Name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Manifests => "manifests",
            Source::Socket => "host socket (ProgramService)",
            Source::Kubernetes => "kubernetes",
            Source::DnsEgress => "node-local DNS (egress by name)",
        }
    }
}

/// A Service's key as `(namespace, name)`.
pub type Key = (String, String);

/// The map key of a Service key.
pub fn k(key: &ServiceKey) -> Key {
    (key.namespace.clone(), key.name.clone())
}

fn sk(key: &Key) -> ServiceKey {
    view::key(&key.0, &key.1)
}

/// One Service as a source wants it: the object, and its endpoints by address (conditions as
/// the source gave them; the node's view is computed here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanted {
    /// The Service.
    pub service: Option<Service>,
    /// Endpoints by address.
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// Every Service a batch names, with the field that names it.
fn named_keys(req: &ProgramServiceRequest) -> Vec<(String, Key)> {
    let mut out = Vec::new();
    for (i, s) in req.service_upserts.iter().enumerate() {
        out.extend(
            s.key
                .as_ref()
                .map(|key| (format!("service_upserts[{i}].key"), k(key))),
        );
    }
    for (i, key) in req.service_deletes.iter().enumerate() {
        out.push((format!("service_deletes[{i}]"), k(key)));
    }
    for (i, u) in req.endpoint_upserts.iter().enumerate() {
        out.extend(
            u.service
                .as_ref()
                .map(|key| (format!("endpoint_upserts[{i}].service"), k(key))),
        );
    }
    for (i, d) in req.endpoint_deletes.iter().enumerate() {
        out.extend(
            d.service
                .as_ref()
                .map(|key| (format!("endpoint_deletes[{i}].service"), k(key))),
        );
    }
    out
}

/// What a Service takes on the node that no other may: (address, or "NodePort", protocol,
/// port), the address in canonical form and the protocol defaulted to TCP.
type Claim = (String, i32, u32);

/// A Service's claims, each with the field (within the Service) that makes it.
fn claims_of(svc: &Service) -> Vec<(Claim, String)> {
    if svc.r#type == ServiceType::ExternalName as i32 {
        return Vec::new();
    }
    let node_ports = svc.r#type == ServiceType::NodePort as i32
        || svc.r#type == ServiceType::LoadBalancer as i32;
    let mut out = Vec::new();
    for (k, p) in svc.ports.iter().enumerate() {
        let proto = match Protocol::try_from(p.protocol) {
            Ok(Protocol::Udp) | Ok(Protocol::Sctp) => p.protocol,
            _ => Protocol::Tcp as i32,
        };
        for (field, list) in [
            ("cluster_ips", &svc.cluster_ips),
            ("external_ips", &svc.external_ips),
            ("load_balancer_ips", &svc.load_balancer_ips),
        ] {
            for (j, ip) in list.iter().enumerate() {
                let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
                    continue; // "None" (headless) or empty
                };
                out.push(((ip.to_string(), proto, p.port), format!("{field}[{j}]")));
            }
        }
        if node_ports && p.node_port != 0 {
            out.push((
                ("NodePort".into(), proto, p.node_port),
                format!("ports[{k}].node_port"),
            ));
        }
    }
    out
}

/// Sets `key`'s claims to `new` (a claim both the old and the new set name keeps its place in
/// line); returns the claims whose line changed.
fn reclaim(
    claims: &mut HashMap<Claim, Vec<Key>>,
    claimed: &mut HashMap<Key, BTreeSet<Claim>>,
    key: &Key,
    new: BTreeSet<Claim>,
) -> Vec<Claim> {
    let old = claimed.remove(key).unwrap_or_default();
    let mut changed = Vec::new();
    for c in old.difference(&new) {
        if let Some(list) = claims.get_mut(c) {
            list.retain(|k| k != key);
            if list.is_empty() {
                claims.remove(c);
            }
        }
        changed.push(c.clone());
    }
    for c in new.difference(&old) {
        claims.entry(c.clone()).or_default().push(key.clone());
        changed.push(c.clone());
    }
    if !new.is_empty() {
        claimed.insert(key.clone(), new);
    }
    changed
}

fn describe_claim(c: &Claim) -> String {
    let proto = Protocol::try_from(c.1)
        .map(|p| p.as_str_name().trim_start_matches("PROTOCOL_"))
        .unwrap_or("TCP");
    format!("{} {proto} {}", c.0, c.2)
}

/// A refused change: the key, and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The Service.
    pub key: ServiceKey,
    /// Its owner.
    pub owner: Source,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} is owned by the {} source",
            self.key.namespace,
            self.key.name,
            self.owner.as_str()
        )
    }
}

/// The node's Services: the sources, who owns what, and the table drivers are told.
#[derive(Debug, Default)]
pub struct ServiceView {
    node: NodeInfo,
    owners: HashMap<Key, Source>,
    wanted: HashMap<Source, BTreeMap<Key, Wanted>>,
    /// What drivers are told (all sources, per-node decisions made), with its generation.
    pub table: ServiceTable,
    /// What callers of the host socket have reached (their batches' own epoch and numbering).
    socket: Applied,
    /// Parts of a socket caller's full sync, until the last.
    socket_parts: Parts<ProgramServiceRequest>,
    /// Services that need a health-check node port (externalTrafficPolicy Local with a port).
    health_checked: BTreeSet<Key>,
    /// Who asked for each address . protocol . port and NodePort, in order: the first holds it,
    /// the others wait for it.
    claims: HashMap<Claim, Vec<Key>>,
    /// What each Service asks for (the keys of `claims` it is in line for).
    claimed: HashMap<Key, BTreeSet<Claim>>,
    /// The claims more than one Service is in line for.
    contested: BTreeSet<Claim>,
}

impl ServiceView {
    /// An empty view for `node`, whose batches to drivers carry `epoch` (the host's, new at
    /// every start). The table starts at generation 1, empty: every driver that registers gets
    /// a full sync, even before any source has spoken, so one that outlived an earlier host
    /// drops what this one does not want.
    pub fn new(node: NodeInfo, epoch: u64) -> Self {
        let mut table = ServiceTable::default();
        let start = ProgramServiceRequest {
            epoch,
            generation: 1,
            full_sync: true,
            ..Default::default()
        };
        // An empty full sync onto an empty table always applies.
        let _ = table.apply(&start);
        Self {
            node,
            table,
            ..Default::default()
        }
    }

    /// The owner of a Service, if any.
    pub fn owner(&self, key: &ServiceKey) -> Option<Source> {
        self.owners.get(&k(key)).copied()
    }

    /// Whether `source` may write `key`.
    pub fn check(&self, source: Source, key: &ServiceKey) -> Result<(), Conflict> {
        match self.owner(key) {
            Some(o) if o != source => Err(Conflict {
                key: key.clone(),
                owner: o,
            }),
            _ => Ok(()),
        }
    }

    /// Replaces everything `source` wants. Keys owned by another source are left out and
    /// returned as conflicts. Returns the batch for drivers (already applied to the table),
    /// or `None` when nothing changed.
    pub fn replace(
        &mut self,
        source: Source,
        mut wanted: BTreeMap<Key, Wanted>,
    ) -> (Option<ProgramServiceRequest>, Vec<Conflict>) {
        let mut conflicts = Vec::new();
        wanted.retain(|key, _| match self.check(source, &sk(key)) {
            Ok(()) => true,
            Err(c) => {
                conflicts.push(c);
                false
            }
        });
        let new = wanted;
        let old = self.wanted.remove(&source).unwrap_or_default();
        let mut touched: BTreeSet<Key> = old.keys().cloned().collect();
        touched.extend(new.keys().cloned());
        touched.retain(|key| old.get(key) != new.get(key));
        self.wanted.insert(source, new);
        (self.settle(source, touched), conflicts)
    }

    /// Sets what `source` wants for the given keys only (`None`: nothing any more): the entry
    /// point for event-driven sources, such as a watch on the Kubernetes API.
    pub fn update(
        &mut self,
        source: Source,
        changes: BTreeMap<Key, Option<Wanted>>,
    ) -> Result<Option<ProgramServiceRequest>, Conflict> {
        for key in changes.keys() {
            self.check(source, &sk(key))?;
        }
        let mine = self.wanted.entry(source).or_default();
        let mut touched = BTreeSet::new();
        for (key, w) in changes {
            match w {
                Some(w) if w.service.is_some() || !w.endpoints.is_empty() => {
                    mine.insert(key.clone(), w);
                }
                _ => {
                    mine.remove(&key);
                }
            }
            touched.insert(key);
        }
        Ok(self.settle(source, touched))
    }

    /// What the owner of `key` wants for it, if any source does.
    fn wanted_of(&self, key: &Key) -> Option<&Wanted> {
        let owner = self.owners.get(key)?;
        self.wanted.get(owner)?.get(key)
    }

    /// Whether `key` is first in line for everything it asks for.
    fn holds_all(&self, key: &Key) -> bool {
        self.claimed.get(key).is_none_or(|cs| {
            cs.iter()
                .all(|c| self.claims.get(c).and_then(|l| l.first()) == Some(key))
        })
    }

    /// Updates ownership and claims for `touched` keys of `source`, recomputes the node view of
    /// every Service whose standing changed and returns the difference to the table as a batch
    /// (applied).
    ///
    /// The table holds only the winners: a Service that waits for an address, port or NodePort
    /// another Service holds is kept out of it (with its endpoints) until it holds everything
    /// it asks for. Drivers are told the table, so no delta, full sync or driver restart can
    /// give a contested port to another Service than the one the host names.
    fn settle(&mut self, source: Source, touched: BTreeSet<Key>) -> Option<ProgramServiceRequest> {
        let mine = self.wanted.get(&source);
        for key in &touched {
            match mine.and_then(|m| m.get(key)) {
                Some(_) => {
                    self.owners.insert(key.clone(), source);
                }
                None => {
                    if self.owners.get(key) == Some(&source) {
                        self.owners.remove(key);
                    }
                }
            }
        }
        let mut affected = touched.clone();
        for key in &touched {
            let asks: BTreeSet<Claim> = self
                .wanted_of(key)
                .and_then(|w| w.service.as_ref())
                .map(|s| claims_of(s).into_iter().map(|c| c.0).collect())
                .unwrap_or_default();
            for c in reclaim(&mut self.claims, &mut self.claimed, key, asks) {
                let line = self.claims.get(&c);
                if line.is_some_and(|l| l.len() > 1) {
                    self.contested.insert(c.clone());
                } else {
                    self.contested.remove(&c);
                }
                affected.extend(line.into_iter().flatten().cloned());
            }
        }
        let mut req = self.next_batch();
        let no_endpoints = BTreeMap::new();
        for key in &affected {
            let now = match self.wanted_of(key) {
                Some(w) if self.holds_all(key) => self.node_view(w),
                _ => Wanted::default(),
            };
            let health_checked = now.service.as_ref().is_some_and(|s| {
                s.external_traffic_policy == TrafficPolicy::Local as i32
                    && s.health_check_node_port != 0
            });
            if health_checked {
                self.health_checked.insert(key.clone());
            } else {
                self.health_checked.remove(key);
            }
            let skey = sk(key);
            let (have_svc, have_eps) = match self.table.entry(&skey) {
                Some((s, e)) => (s, e),
                None => (None, &no_endpoints),
            };
            match (&now.service, have_svc) {
                (Some(n), h) if h != Some(n) => req.service_upserts.push(n.clone()),
                (None, Some(_)) => req.service_deletes.push(skey.clone()),
                _ => {}
            }
            let gone_with_service = now.service.is_none() && have_svc.is_some();
            for (addr, ep) in &now.endpoints {
                if have_eps.get(addr) != Some(ep) {
                    req.endpoint_upserts.push(EndpointUpsert {
                        service: Some(skey.clone()),
                        endpoint: Some(ep.clone()),
                    });
                }
            }
            for addr in have_eps.keys() {
                if !now.endpoints.contains_key(addr) && !gone_with_service {
                    req.endpoint_deletes.push(EndpointKey {
                        service: Some(skey.clone()),
                        address: addr.clone(),
                    });
                }
            }
        }
        let empty = req.service_upserts.is_empty()
            && req.service_deletes.is_empty()
            && req.endpoint_upserts.is_empty()
            && req.endpoint_deletes.is_empty();
        if empty {
            return None;
        }
        // Valid by construction: keys and addresses come from validated or converted objects.
        self.table.apply(&req).ok()?;
        Some(req)
    }

    /// The next batch for drivers: a delta in the host's epoch.
    fn next_batch(&self) -> ProgramServiceRequest {
        let applied = self.table.applied();
        ProgramServiceRequest {
            epoch: applied.epoch,
            generation: applied.generation + 1,
            full_sync: applied.is_empty(),
            ..Default::default()
        }
    }

    /// Refuses host ports that another pod holds: `ALREADY_EXISTS` naming the mapping and the
    /// pod that has it.
    pub fn check_host_ports(
        &self,
        sandbox_id: &str,
        field: &str,
        mappings: &[PortMapping],
    ) -> Result<(), tonic::Status> {
        for (i, pm) in mappings.iter().enumerate() {
            if !netlet_sdk::state::is_published(pm) {
                // A containerPort without hostPort publishes nothing.
                continue;
            }
            let taken = self
                .table
                .host_ports()
                .values()
                .filter(|h| h.sandbox_id != sandbox_id)
                .find(|h| {
                    h.port_mappings
                        .iter()
                        .any(|o| netlet_sdk::state::host_ports_collide(pm, o))
                });
            if let Some(h) = taken {
                return Err(netlet_sdk::validate::field_error(
                    tonic::Code::AlreadyExists,
                    format!("{field}[{i}].host_port"),
                    format!(
                        "{} is held by pod {} (sandbox {})",
                        pm.host_port, h.pod, h.sandbox_id
                    ),
                    "HOST_PORT_HELD",
                ));
            }
        }
        Ok(())
    }

    /// Sets (or with `None` removes) one pod's host ports; returns the batch for drivers
    /// (applied), or `None` when nothing changed.
    pub fn set_host_ports(
        &mut self,
        sandbox_id: &str,
        ports: Option<HostPorts>,
    ) -> Option<ProgramServiceRequest> {
        let have = self.table.host_ports().get(sandbox_id);
        if have == ports.as_ref() {
            return None;
        }
        let mut req = self.next_batch();
        match ports {
            Some(p) => req.host_port_upserts.push(p),
            None => req.host_port_deletes.push(sandbox_id.to_string()),
        }
        self.table.apply(&req).ok()?;
        Some(req)
    }

    /// Services of `source` that ask for an address . protocol . port or NodePort another
    /// Service holds, as messages ("ns/b: 10.96.0.10 TCP 80 is held by ns/a"). The holder keeps
    /// it; the other gets it when the holder lets go.
    pub fn claim_conflicts(&self, source: Source) -> Vec<String> {
        let mut out: Vec<String> = self
            .contested
            .iter()
            .filter_map(|c| Some((c, self.claims.get(c)?)))
            .flat_map(|(c, keys)| {
                keys.iter()
                    .skip(1)
                    .filter(|k| self.owners.get(*k) == Some(&source))
                    .map(move |k| {
                        format!(
                            "{}/{}: {} is held by {}/{}",
                            k.0,
                            k.1,
                            describe_claim(c),
                            keys[0].0,
                            keys[0].1
                        )
                    })
            })
            .collect();
        out.sort();
        out
    }

    /// Refuses a socket batch whose Services ask for what another Service keeps holding
    /// (`ALREADY_EXISTS` naming the field and the holder).
    fn check_claims(&self, req: &ProgramServiceRequest) -> Result<(), tonic::Status> {
        let upserts: HashMap<Key, &Service> = req
            .service_upserts
            .iter()
            .filter_map(|s| s.key.as_ref().map(|key| (k(key), s)))
            .collect();
        let deleted: BTreeSet<Key> = req.service_deletes.iter().map(k).collect();
        // Whether `holder` still holds `c` once the batch is applied.
        let keeps = |holder: &Key, c: &Claim| {
            if deleted.contains(holder) {
                return false;
            }
            match upserts.get(holder) {
                Some(s) => claims_of(s).iter().any(|(x, _)| x == c),
                None => !(req.full_sync && self.owners.get(holder) == Some(&Source::Socket)),
            }
        };
        let mut in_batch: HashMap<Claim, Key> = HashMap::new();
        for (i, svc) in req.service_upserts.iter().enumerate() {
            let Some(key) = svc.key.as_ref().map(k) else {
                continue;
            };
            for (c, field) in claims_of(svc) {
                let holder = self
                    .claims
                    .get(&c)
                    .into_iter()
                    .flatten()
                    .take_while(|h| **h != key)
                    .find(|h| keeps(h, &c))
                    .cloned()
                    .or_else(|| in_batch.get(&c).filter(|h| **h != key).cloned());
                if let Some(h) = holder {
                    return Err(netlet_sdk::validate::field_error(
                        tonic::Code::AlreadyExists,
                        format!("service_upserts[{i}].{field}"),
                        format!("{} is held by Service {}/{}", describe_claim(&c), h.0, h.1),
                        "SERVICE_PORT_HELD",
                    ));
                }
                in_batch.entry(c).or_insert_with(|| key.clone());
            }
        }
        Ok(())
    }

    /// The epoch and generation of the socket source's batches.
    pub fn socket_applied(&self) -> Applied {
        self.socket
    }

    /// Applies a validated `ProgramService` batch from the host socket: its generation checked
    /// against the socket source's (a replay of the applied one changes nothing), a full sync
    /// replacing everything that source owns. Returns the source's applied generation and the
    /// batch for drivers.
    pub fn apply_socket(
        &mut self,
        req: &ProgramServiceRequest,
    ) -> Result<(Applied, Option<ProgramServiceRequest>), tonic::Status> {
        // A full sync in parts is kept until its last part, then taken as one batch.
        let Some(whole) = self.socket_parts.take(req)? else {
            return Ok((self.socket, None));
        };
        let req = whole.as_ref();
        let named = named_keys(req);
        for (field, key) in &named {
            self.check(Source::Socket, &sk(key)).map_err(|c| {
                netlet_sdk::validate::field_error(
                    tonic::Code::FailedPrecondition,
                    field,
                    c,
                    "SERVICE_OWNED_BY_OTHER_SOURCE",
                )
            })?;
        }
        self.check_claims(req)?;
        let batch = Batch::from(req);
        if !self.socket.check(batch)? {
            return Ok((self.socket, None));
        }
        let mine = self.wanted.entry(Source::Socket).or_default();
        let mut touched: BTreeSet<Key> = named.into_iter().map(|(_, key)| key).collect();
        if req.full_sync {
            touched.extend(mine.keys().cloned());
            mine.clear();
        }
        for svc in &req.service_upserts {
            if let Some(key) = &svc.key {
                mine.entry(k(key)).or_default().service = Some(svc.clone());
            }
        }
        for key in &req.service_deletes {
            mine.remove(&k(key));
        }
        for u in &req.endpoint_upserts {
            if let (Some(key), Some(e)) = (&u.service, &u.endpoint) {
                mine.entry(k(key))
                    .or_default()
                    .endpoints
                    .insert(e.address.clone(), e.clone());
            }
        }
        for d in &req.endpoint_deletes {
            if let Some(w) = d.service.as_ref().and_then(|key| mine.get_mut(&k(key))) {
                w.endpoints.remove(&d.address);
            }
        }
        for key in &touched {
            if mine
                .get(key)
                .is_some_and(|w| w.service.is_none() && w.endpoints.is_empty())
            {
                mine.remove(key);
            }
        }
        self.socket = Applied::after(batch);
        Ok((self.socket, self.settle(Source::Socket, touched)))
    }

    /// Services with a health-check node port: (port, key, endpoints local and in use for
    /// external traffic here).
    pub fn health_checks(&self) -> Vec<(u16, ServiceKey, usize)> {
        self.health_checked
            .iter()
            .filter_map(|key| {
                let skey = sk(key);
                let (svc, eps) = self.table.entry(&skey)?;
                let port = svc?.health_check_node_port as u16;
                let local = eps
                    .values()
                    .filter(|e| e.local && e.use_for_external)
                    .count();
                Some((port, skey, local))
            })
            .collect()
    }

    /// This node's view of one wanted Service: endpoints categorized for the node.
    fn node_view(&self, want: &Wanted) -> Wanted {
        let Some(svc) = &want.service else {
            // Endpoints without their Service are kept (they may arrive first) but unused.
            let mut endpoints = want.endpoints.clone();
            for e in endpoints.values_mut() {
                e.local = !self.node.name.is_empty() && e.node_name == self.node.name;
                e.use_for_internal = false;
                e.use_for_external = false;
            }
            return Wanted {
                service: None,
                endpoints,
            };
        };
        let mut eps: Vec<Endpoint> = want.endpoints.values().cloned().collect();
        for e in &mut eps {
            e.local = !self.node.name.is_empty() && e.node_name == self.node.name;
        }
        view::categorize(svc, &mut eps, &self.node);
        Wanted {
            service: Some(svc.clone()),
            endpoints: eps.into_iter().map(|e| (e.address.clone(), e)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlet_sdk::proto::ServiceType;

    fn svc(name: &str) -> Service {
        Service {
            key: Some(view::key("ns", name)),
            r#type: ServiceType::ClusterIp as i32,
            cluster_ips: vec!["10.96.0.1".into()],
            ..Default::default()
        }
    }

    fn ep(addr: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: addr.into(),
            ready,
            serving: ready,
            node_name: "n1".into(),
            ..Default::default()
        }
    }

    fn wanted(name: &str, eps: &[(&str, bool)]) -> (Key, Wanted) {
        (
            ("ns".to_string(), name.to_string()),
            Wanted {
                service: Some(svc(name)),
                endpoints: eps
                    .iter()
                    .map(|(a, r)| (a.to_string(), ep(a, *r)))
                    .collect(),
            },
        )
    }

    fn view() -> ServiceView {
        ServiceView::new(
            NodeInfo {
                name: "n1".into(),
                zone: String::new(),
            },
            7,
        )
    }

    #[test]
    fn one_endpoint_change_sends_one_endpoint_whatever_the_size() {
        for size in [10usize, 1000] {
            let mut v = view();
            let addrs: Vec<String> = (0..size)
                .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
                .collect();
            let eps: Vec<(&str, bool)> = addrs.iter().map(|a| (a.as_str(), true)).collect();
            let (first, _) = v.replace(Source::Manifests, [wanted("big", &eps)].into());
            let first = first.unwrap();
            // The view starts synced at generation 1 (empty): this is a delta in its epoch.
            assert!(!first.full_sync && first.endpoint_upserts.len() == size);
            assert_eq!((first.epoch, first.generation), (7, 2));
            let mut changed = eps.clone();
            changed[3].1 = false;
            let (delta, _) = v.replace(Source::Manifests, [wanted("big", &changed)].into());
            let delta = delta.unwrap();
            assert!(!delta.full_sync);
            assert_eq!((delta.epoch, delta.generation), (7, 3));
            assert!(delta.service_upserts.is_empty());
            assert_eq!(delta.endpoint_upserts.len(), 1, "size {size}");
            assert!(
                !delta.endpoint_upserts[0]
                    .endpoint
                    .as_ref()
                    .unwrap()
                    .use_for_internal
            );
            assert_eq!(
                v.replace(Source::Manifests, [wanted("big", &changed)].into())
                    .0,
                None
            );
        }
    }

    #[test]
    fn terminating_fallback_flips_other_endpoints_in_the_same_batch() {
        let mut v = view();
        let mut term = ep("10.0.0.2", false);
        term.serving = true;
        term.terminating = true;
        let (key, mut w) = wanted("web", &[("10.0.0.1", true)]);
        w.endpoints.insert("10.0.0.2".into(), term);
        v.replace(Source::Manifests, [(key.clone(), w.clone())].into());
        w.endpoints.remove("10.0.0.1");
        let (delta, _) = v.replace(Source::Manifests, [(key, w)].into());
        let delta = delta.unwrap();
        assert_eq!(delta.endpoint_deletes.len(), 1);
        let up = delta.endpoint_upserts[0].endpoint.as_ref().unwrap();
        assert_eq!(
            (up.address.as_str(), up.use_for_internal),
            ("10.0.0.2", true)
        );
    }

    #[test]
    fn a_key_owned_by_one_source_is_not_overwritten_by_another() {
        let mut v = view();
        v.replace(
            Source::Manifests,
            [wanted("web", &[("10.0.0.1", true)])].into(),
        );
        let (key, w) = wanted("web", &[("10.0.0.9", true)]);
        let err = v
            .update(Source::Socket, [(key.clone(), Some(w.clone()))].into())
            .unwrap_err();
        assert_eq!(err.to_string(), "ns/web is owned by the manifests source");
        let (_, conflicts) = v.replace(Source::Kubernetes, [(key.clone(), w.clone())].into());
        assert_eq!(conflicts.len(), 1);
        assert!(v.table.entry(&sk(&key)).unwrap().1.contains_key("10.0.0.1"));
        // Once the owner lets go, another source may take it.
        let (gone, _) = v.replace(Source::Manifests, BTreeMap::new());
        assert_eq!(gone.unwrap().service_deletes, vec![sk(&key)]);
        assert!(
            v.update(Source::Socket, [(key.clone(), Some(w))].into())
                .unwrap()
                .is_some()
        );
        assert_eq!(v.owner(&sk(&key)), Some(Source::Socket));
    }

    #[test]
    fn host_ports_are_held_by_one_pod_and_go_with_it() {
        let mut v = view();
        let pm = |port, ip: &str| PortMapping {
            host_port: port,
            container_port: 80,
            host_ip: ip.into(),
            ..Default::default()
        };
        let hp = HostPorts {
            sandbox_id: "s1".into(),
            pod: "ns/a".into(),
            pod_ips: vec!["10.244.0.5".into()],
            port_mappings: vec![pm(8080, "")],
        };
        let first = v.set_host_ports("s1", Some(hp.clone())).unwrap();
        assert!(!first.full_sync && first.host_port_upserts == vec![hp.clone()]);
        assert_eq!(
            v.set_host_ports("s1", Some(hp)),
            None,
            "no change, no batch"
        );
        // Every address held: a given address of the same port and protocol collides.
        let e = v
            .check_host_ports(
                "s2",
                "sandbox.port_mappings",
                &[pm(9090, ""), pm(8080, "192.168.1.1")],
            )
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
        assert!(
            e.message()
                .starts_with("sandbox.port_mappings[1].host_port: 8080 is held by pod ns/a")
        );
        let mut udp = pm(8080, "");
        udp.protocol = netlet_sdk::proto::Protocol::Udp as i32;
        assert!(v.check_host_ports("s2", "f", &[udp]).is_ok());
        assert!(
            v.check_host_ports("s1", "f", &[pm(8080, "")]).is_ok(),
            "its own"
        );
        let gone = v.set_host_ports("s1", None).unwrap();
        assert_eq!(
            (gone.full_sync, gone.host_port_deletes.clone()),
            (false, vec!["s1".to_string()])
        );
        assert!(v.check_host_ports("s2", "f", &[pm(8080, "")]).is_ok());
        assert!(v.table.full_sync_request().host_port_upserts.is_empty());
    }

    #[test]
    fn an_address_and_port_is_held_by_the_first_service() {
        let mut v = view();
        v.replace(
            Source::Manifests,
            [wanted("web", &[("10.0.0.1", true)])].into(),
        );
        let with_port = |name: &str| {
            let mut s = svc(name);
            s.ports = vec![netlet_sdk::proto::ServicePort {
                port: 80,
                ..Default::default()
            }];
            s
        };
        // The manifests' web gets a port; a second manifest Service asks for the same.
        let (key, mut w) = wanted("web", &[("10.0.0.1", true)]);
        w.service = Some(with_port("web"));
        let (key2, mut w2) = wanted("web2", &[("10.0.0.2", true)]);
        w2.service = Some(with_port("web2"));
        v.replace(
            Source::Manifests,
            [(key.clone(), w.clone()), (key2.clone(), w2.clone())].into(),
        );
        assert_eq!(
            v.claim_conflicts(Source::Manifests),
            ["ns/web2: 10.96.0.1 TCP 80 is held by ns/web"]
        );
        // Drivers are told the holder only: in deltas and in the full sync a restarted driver
        // gets (web2 would come first in it, by name).
        let names = |r: &ProgramServiceRequest| -> Vec<String> {
            let mut n: Vec<String> = r
                .service_upserts
                .iter()
                .map(|s| s.key.as_ref().unwrap().name.clone())
                .collect();
            n.extend(
                r.endpoint_upserts
                    .iter()
                    .map(|u| u.service.as_ref().unwrap().name.clone()),
            );
            n.dedup();
            n
        };
        assert_eq!(names(&v.table.full_sync_request()), ["web"]);
        // The socket cannot take it: refused, nothing changes.
        let before = v.table.generation();
        let err = v
            .apply_socket(&ProgramServiceRequest {
                generation: 1,
                full_sync: true,
                service_upserts: vec![with_port("other")],
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        assert_eq!(
            err.message(),
            "service_upserts[0].cluster_ips[0]: 10.96.0.1 TCP 80 is held by Service ns/web"
        );
        assert_eq!(v.table.generation(), before);
        // The holder goes: the waiting one holds it now, and drivers get it with its endpoints.
        let (handover, _) = v.replace(Source::Manifests, [(key2, w2)].into());
        let handover = handover.unwrap();
        assert_eq!(names(&handover), ["web2"]);
        assert_eq!(handover.service_deletes, [view::key("ns", "web")]);
        assert_eq!(names(&v.table.full_sync_request()), ["web2"]);
        assert!(v.claim_conflicts(Source::Manifests).is_empty());
        assert!(
            v.apply_socket(&ProgramServiceRequest {
                generation: 1,
                full_sync: true,
                service_upserts: vec![with_port("other")],
                ..Default::default()
            })
            .is_err(),
            "web2 holds it now"
        );
    }
}
