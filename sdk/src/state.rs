//! Desired-state tables with generation semantics, shared by the host (which replays them to a
//! restarted driver) and by drivers (which keep their data plane's state in memory).
//!
//! Batches are validated first ([`crate::validate`]); applying a valid batch cannot fail, so bad
//! input changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tonic::Status;

use crate::generation::{Applied, Batch};
pub use crate::ports::{host_port_key, host_ports_collide, is_published, published};

use crate::proto::{
    ApplyPolicyRequest, DnsPolicy, Endpoint, GarbageCollectRequest, HostPorts, HostnameGrant,
    ListAttachmentsRequest, ListAttachmentsResponse, ListPoliciesResponse, ListServicesResponse,
    NetworkPolicy, NetworkSelection, PodAttachments, PodNetworkStatusRequest,
    PodNetworkStatusResponse, PolicyKey, PolicyKind, ProgramServiceRequest, Service, ServiceKey,
    ServiceState,
};

/// AttachPod's selections with the contract's defaults (pods.proto, AttachPod): no selection is
/// [{network: "default"}]; an empty interface name is "eth0" for the first and `net<N>` for
/// the N-th further one; an unset default_route is true for the first only.
pub fn with_defaults(networks: Vec<NetworkSelection>) -> Vec<NetworkSelection> {
    let mut nets = if networks.is_empty() {
        vec![NetworkSelection {
            network: "default".into(),
            ..Default::default()
        }]
    } else {
        networks
    };
    for (i, n) in nets.iter_mut().enumerate() {
        if n.interface_name.is_empty() {
            n.interface_name = if i == 0 {
                "eth0".into()
            } else {
                format!("net{i}")
            };
        }
        if n.default_route.is_none() {
            n.default_route = Some(i == 0);
        }
    }
    nets
}

/// Whether a pod passes ListAttachments' filters (empty filters match everything).
pub fn pod_matches(pod: &PodAttachments, filter: &ListAttachmentsRequest) -> bool {
    (filter.namespace.is_empty()
        || pod
            .sandbox
            .as_ref()
            .is_some_and(|s| s.namespace == filter.namespace))
        && (filter.network.is_empty()
            || pod.attachments.iter().any(|a| a.network == filter.network))
}

/// The `NOT_FOUND` answered for a sandbox that is not attached.
pub fn not_attached(sandbox_id: &str) -> Status {
    crate::validate::field_error(
        tonic::Code::NotFound,
        "sandbox_id",
        format!("{sandbox_id:?} is not attached"),
        "SANDBOX_NOT_ATTACHED",
    )
}

/// ListAttachments over a Pods server's records: the filter validated, the matching pods kept.
pub fn list_attachments(
    req: &ListAttachmentsRequest,
    pods: impl IntoIterator<Item = PodAttachments>,
) -> Result<ListAttachmentsResponse, Status> {
    crate::validate::list_attachments(req)?;
    Ok(ListAttachmentsResponse {
        pods: pods.into_iter().filter(|p| pod_matches(p, req)).collect(),
    })
}

/// PodNetworkStatus over a Pods server's records: the id validated, the sandbox or `NOT_FOUND`.
pub fn pod_network_status(
    req: &PodNetworkStatusRequest,
    pods: impl IntoIterator<Item = PodAttachments>,
) -> Result<PodNetworkStatusResponse, Status> {
    crate::validate::sandbox_id("sandbox_id", &req.sandbox_id)?;
    let pod = pods
        .into_iter()
        .find(|p| p.sandbox.as_ref().is_some_and(|s| s.id == req.sandbox_id))
        .ok_or_else(|| not_attached(&req.sandbox_id))?;
    Ok(PodNetworkStatusResponse { pod: Some(pod) })
}

/// GarbageCollect: the request validated, the ids among `pods` that are not valid any more
/// (with `network` set, only those attached to it; detach just that network's attachments:
/// [`gc_selection`]).
pub fn stale_sandboxes(
    req: &GarbageCollectRequest,
    pods: impl IntoIterator<Item = PodAttachments>,
) -> Result<Vec<String>, Status> {
    crate::validate::garbage_collect(req)?;
    Ok(pods
        .into_iter()
        .filter(|p| {
            req.network.is_empty() || p.attachments.iter().any(|a| a.network == req.network)
        })
        .filter_map(|p| p.sandbox.map(|s| s.id))
        .filter(|id| !req.valid_sandbox_ids.contains(id))
        .collect())
}

/// What a stale sandbox is detached from: the request's network only, or everything.
pub fn gc_selection(req: &GarbageCollectRequest) -> Vec<NetworkSelection> {
    if req.network.is_empty() {
        Vec::new()
    } else {
        vec![NetworkSelection {
            network: req.network.clone(),
            ..Default::default()
        }]
    }
}

fn skey(k: &ServiceKey) -> (String, String) {
    (k.namespace.clone(), k.name.clone())
}

#[derive(Debug, Default, Clone)]
struct ServiceEntry {
    service: Option<Service>,
    endpoints: BTreeMap<String, Endpoint>,
}

/// Services with their endpoints, as programmed.
#[derive(Debug, Default, Clone)]
pub struct ServiceTable {
    applied: Applied,
    entries: BTreeMap<(String, String), ServiceEntry>,
    host_ports: BTreeMap<String, HostPorts>,
}

impl ServiceTable {
    /// Applied generation (0 before the first sync).
    pub fn generation(&self) -> u64 {
        self.applied.generation
    }

    /// Applied epoch and generation.
    pub fn applied(&self) -> Applied {
        self.applied
    }

    /// As [`ServiceTable::apply`], for a caller that has already worked out how the batch
    /// leaves each Service it touches: `post` gives those Services (key → Service and
    /// endpoints by address; both empty: gone), moved in rather than copied from the batch
    /// (the nft driver builds exactly this to compute its rules; at 10k Services × 10
    /// endpoints a second copy of a full sync's endpoints was 40 MB). Host ports and the stamp
    /// come from `req`; `post` must name every Service the batch touches (a full sync: every
    /// Service it holds).
    pub fn apply_resolved(
        &mut self,
        req: &ProgramServiceRequest,
        post: impl IntoIterator<
            Item = (
                (String, String),
                (Option<Service>, BTreeMap<String, Endpoint>),
            ),
        >,
    ) -> Result<Applied, Status> {
        let Some(batch) = self.begin(req)? else {
            return Ok(self.applied);
        };
        for (key, (service, endpoints)) in post {
            if service.is_none() && endpoints.is_empty() {
                self.entries.remove(&key);
            } else {
                self.entries
                    .insert(key, ServiceEntry { service, endpoints });
            }
        }
        self.applied = Applied::after(batch);
        Ok(self.applied)
    }

    /// Number of Services.
    pub fn len(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.service.is_some())
            .count()
    }

    /// Whether no Service is programmed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What every batch does first: its check (`None`: a replay, nothing to do), a full sync's
    /// clearing, its host ports.
    fn begin(&mut self, req: &ProgramServiceRequest) -> Result<Option<Batch>, Status> {
        let batch = Batch::from(req);
        if !self.applied.check(batch)? {
            return Ok(None);
        }
        if req.full_sync {
            self.entries.clear();
            self.host_ports.clear();
        }
        apply_host_ports(&mut self.host_ports, req);
        Ok(Some(batch))
    }

    /// Applies a validated batch (see [`Applied::check`]); returns what is applied.
    pub fn apply(&mut self, req: &ProgramServiceRequest) -> Result<Applied, Status> {
        let Some(batch) = self.begin(req)? else {
            return Ok(self.applied);
        };
        for s in &req.service_upserts {
            if let Some(k) = &s.key {
                self.entries.entry(skey(k)).or_default().service = Some(s.clone());
            }
        }
        for k in &req.service_deletes {
            self.entries.remove(&skey(k));
        }
        for u in &req.endpoint_upserts {
            if let (Some(k), Some(e)) = (&u.service, &u.endpoint) {
                self.entries
                    .entry(skey(k))
                    .or_default()
                    .endpoints
                    .insert(e.address.clone(), e.clone());
            }
        }
        for d in &req.endpoint_deletes {
            if let Some(k) = &d.service
                && let Some(entry) = self.entries.get_mut(&skey(k))
            {
                entry.endpoints.remove(&d.address);
            }
        }
        // Drop entries the batch left empty (only those it touched: O(batch), not O(table)).
        let touched = req
            .service_upserts
            .iter()
            .filter_map(|s| s.key.as_ref())
            .chain(
                req.endpoint_upserts
                    .iter()
                    .filter_map(|u| u.service.as_ref()),
            )
            .chain(
                req.endpoint_deletes
                    .iter()
                    .filter_map(|d| d.service.as_ref()),
            );
        for k in touched {
            let key = skey(k);
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.service.is_none() && e.endpoints.is_empty())
            {
                self.entries.remove(&key);
            }
        }
        self.applied = Applied::after(batch);
        Ok(self.applied)
    }

    /// Host ports of attached pods, by sandbox id.
    pub fn host_ports(&self) -> &BTreeMap<String, HostPorts> {
        &self.host_ports
    }

    /// One Service's entry: its object (if known) and its endpoints by address.
    pub fn entry(
        &self,
        key: &ServiceKey,
    ) -> Option<(Option<&Service>, &BTreeMap<String, Endpoint>)> {
        self.entries
            .get(&skey(key))
            .map(|e| (e.service.as_ref(), &e.endpoints))
    }

    /// The Services of the table (without their endpoints).
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.entries.values().filter_map(|e| e.service.as_ref())
    }

    /// The whole table as one full-sync batch at the applied generation.
    pub fn full_sync_request(&self) -> ProgramServiceRequest {
        // One part when none is limited: the batch itself, numbered 0 and not continued.
        self.full_sync_parts(usize::MAX).next().unwrap_or_default()
    }

    /// The full sync of [`ServiceTable::full_sync_request`] in parts of at most `max` bytes,
    /// each built only when asked for (see [`crate::parts::lazy_parts`]).
    pub fn full_sync_parts(&self, max: usize) -> impl Iterator<Item = ProgramServiceRequest> + '_ {
        let template = ProgramServiceRequest {
            generation: self.applied.generation,
            epoch: self.applied.epoch,
            full_sync: true,
            ..Default::default()
        };
        let host_ports = self
            .host_ports
            .values()
            .cloned()
            .map(ServiceItem::HostPorts);
        let services = self.entries.iter().flat_map(|((ns, name), e)| {
            let key = ServiceKey {
                namespace: ns.clone(),
                name: name.clone(),
            };
            let service = e.service.clone().map(ServiceItem::Service);
            let endpoints = e.endpoints.values().map(move |ep| {
                ServiceItem::Endpoint(crate::proto::EndpointUpsert {
                    service: Some(key.clone()),
                    endpoint: Some(ep.clone()),
                })
            });
            service.into_iter().chain(endpoints)
        });
        crate::parts::lazy_parts(&template, host_ports.chain(services), max)
    }

    /// Services (those whose Service object is known), optionally in one namespace.
    pub fn list(&self, namespace: &str) -> ListServicesResponse {
        ListServicesResponse {
            applied_generation: self.applied.generation,
            applied_epoch: self.applied.epoch,
            services: self
                .entries
                .iter()
                .filter(|((ns, _), _)| namespace.is_empty() || ns == namespace)
                .filter_map(|(_, e)| {
                    Some(ServiceState {
                        service: Some(e.service.clone()?),
                        endpoints: e.endpoints.values().cloned().collect(),
                    })
                })
                .collect(),
            host_ports: self
                .host_ports
                .values()
                .filter(|h| namespace.is_empty() || h.pod.split('/').next() == Some(namespace))
                .cloned()
                .collect(),
            ..Default::default()
        }
    }
}

/// One item of a Services full sync.
enum ServiceItem {
    Service(Service),
    Endpoint(crate::proto::EndpointUpsert),
    HostPorts(HostPorts),
}

impl crate::parts::PartItem<ProgramServiceRequest> for ServiceItem {
    fn encoded_len(&self) -> usize {
        use prost::Message;
        match self {
            ServiceItem::Service(s) => s.encoded_len(),
            ServiceItem::Endpoint(e) => e.encoded_len(),
            ServiceItem::HostPorts(h) => h.encoded_len(),
        }
    }

    fn put(self, part: &mut ProgramServiceRequest) {
        match self {
            ServiceItem::Service(s) => part.service_upserts.push(s),
            ServiceItem::Endpoint(e) => part.endpoint_upserts.push(e),
            ServiceItem::HostPorts(h) => part.host_port_upserts.push(h),
        }
    }
}

/// Applies a batch's host port upserts and deletes to `map` (by sandbox id).
pub fn apply_host_ports(map: &mut BTreeMap<String, HostPorts>, req: &ProgramServiceRequest) {
    for h in &req.host_port_upserts {
        map.insert(h.sandbox_id.clone(), h.clone());
    }
    for id in &req.host_port_deletes {
        map.remove(id);
    }
}

type PKey = (i32, String, String);

/// An address set element as the contract writes it: an address alone for a full-length
/// prefix, else `address/length`.
pub fn element_string(n: ipnet::IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

fn pkey(k: &Option<PolicyKey>) -> Option<PKey> {
    k.as_ref()
        .map(|k| (k.kind, k.namespace.clone(), k.name.clone()))
}

/// NetworkPolicies, DNS policies and hostname grants, as applied.
#[derive(Debug, Default, Clone)]
pub struct PolicyTable {
    applied: Applied,
    network: BTreeMap<PKey, NetworkPolicy>,
    dns: BTreeMap<PKey, DnsPolicy>,
    grants: BTreeMap<PKey, HostnameGrant>,
    cluster: BTreeMap<PKey, crate::proto::ClusterNetworkPolicy>,
    sets: BTreeMap<String, BTreeSet<ipnet::IpNet>>,
}

/// An address set element as a prefix (an address is a full-length prefix); `None` when it
/// is neither (validation refuses those).
pub fn set_element(e: &str) -> Option<ipnet::IpNet> {
    e.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| e.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

impl PolicyTable {
    /// Applied generation (0 before the first sync).
    pub fn generation(&self) -> u64 {
        self.applied.generation
    }

    /// Applied epoch and generation.
    pub fn applied(&self) -> Applied {
        self.applied
    }

    /// Applies a validated batch (see [`Applied::check`]); returns what is applied.
    pub fn apply(&mut self, req: &ApplyPolicyRequest) -> Result<Applied, Status> {
        let batch = Batch::from(req);
        if !self.applied.check(batch)? {
            return Ok(self.applied);
        }
        if req.full_sync {
            self.network.clear();
            self.dns.clear();
            self.grants.clear();
            self.cluster.clear();
            self.sets.clear();
        }
        for set in &req.address_sets {
            self.sets.insert(
                set.name.clone(),
                set.elements.iter().filter_map(|e| set_element(e)).collect(),
            );
        }
        for c in &req.address_set_changes {
            let set = self.sets.entry(c.name.clone()).or_default();
            for e in c.remove.iter().filter_map(|e| set_element(e)) {
                set.remove(&e);
            }
            set.extend(c.add.iter().filter_map(|e| set_element(e)));
        }
        for p in &req.cluster_network_policies {
            if let Some(k) = pkey(&p.key) {
                self.cluster.insert(k, p.clone());
            }
        }
        for p in &req.network_policies {
            if let Some(k) = pkey(&p.key) {
                self.network.insert(k, p.clone());
            }
        }
        for p in &req.dns_policies {
            if let Some(k) = pkey(&p.key) {
                self.dns.insert(k, p.clone());
            }
        }
        for g in &req.hostname_grants {
            if let Some(k) = pkey(&g.key) {
                self.grants.insert(k, g.clone());
            }
        }
        for d in &req.deletes {
            let k = (d.kind, d.namespace.clone(), d.name.clone());
            match PolicyKind::try_from(d.kind) {
                Ok(PolicyKind::NetworkPolicy) => self.network.remove(&k).map(|_| ()),
                Ok(PolicyKind::DnsPolicy) => self.dns.remove(&k).map(|_| ()),
                Ok(PolicyKind::HostnameGrant) => self.grants.remove(&k).map(|_| ()),
                Ok(PolicyKind::ClusterNetworkPolicy) => self.cluster.remove(&k).map(|_| ()),
                _ => None,
            };
        }
        for n in &req.address_set_deletes {
            self.sets.remove(n);
        }
        self.applied = Applied::after(batch);
        Ok(self.applied)
    }

    /// Everything as one full-sync batch at the applied generation.
    pub fn full_sync_request(&self) -> ApplyPolicyRequest {
        ApplyPolicyRequest {
            generation: self.applied.generation,
            epoch: self.applied.epoch,
            full_sync: true,
            network_policies: self.network.values().cloned().collect(),
            dns_policies: self.dns.values().cloned().collect(),
            hostname_grants: self.grants.values().cloned().collect(),
            cluster_network_policies: self.cluster.values().cloned().collect(),
            address_sets: self.address_sets(),
            ..Default::default()
        }
    }

    fn address_sets(&self) -> Vec<crate::proto::AddressSet> {
        self.sets
            .iter()
            .map(|(name, e)| crate::proto::AddressSet {
                name: name.clone(),
                elements: e.iter().map(|n| element_string(*n)).collect(),
            })
            .collect()
    }

    /// Every address set with its elements.
    pub fn address_set_elements(&self) -> impl Iterator<Item = (&String, &BTreeSet<ipnet::IpNet>)> {
        self.sets.iter()
    }

    /// An address set's elements (empty when unknown).
    pub fn address_set(&self, name: &str) -> Option<&BTreeSet<ipnet::IpNet>> {
        self.sets.get(name)
    }

    /// NetworkPolicies, for enforcers.
    pub fn network_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.network.values()
    }

    /// ClusterNetworkPolicies, for enforcers.
    pub fn cluster_network_policies(
        &self,
    ) -> impl Iterator<Item = &crate::proto::ClusterNetworkPolicy> {
        self.cluster.values()
    }

    /// Everything applied.
    pub fn list(&self) -> ListPoliciesResponse {
        ListPoliciesResponse {
            applied_generation: self.applied.generation,
            applied_epoch: self.applied.epoch,
            network_policies: self.network.values().cloned().collect(),
            dns_policies: self.dns.values().cloned().collect(),
            hostname_grants: self.grants.values().cloned().collect(),
            cluster_network_policies: self.cluster.values().cloned().collect(),
            address_sets: self.address_sets(),
            modules: Vec::new(),
            hostname_claims: Vec::new(),
        }
    }

    /// Hostname grants, for evaluators.
    pub fn hostname_grants(&self) -> impl Iterator<Item = &HostnameGrant> {
        self.grants.values()
    }

    /// DNS policies, for evaluators.
    pub fn dns_policies(&self) -> impl Iterator<Item = &DnsPolicy> {
        self.dns.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{EndpointKey, EndpointUpsert};

    fn key(n: &str) -> ServiceKey {
        ServiceKey {
            namespace: "default".into(),
            name: n.into(),
        }
    }

    #[test]
    fn generations_and_deltas() {
        let mut t = ServiceTable::default();
        let delta = ProgramServiceRequest {
            generation: 1,
            ..Default::default()
        };
        assert_eq!(
            t.apply(&delta).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        let sync = ProgramServiceRequest {
            generation: 2,
            full_sync: true,
            service_upserts: vec![Service {
                key: Some(key("web")),
                ..Default::default()
            }],
            endpoint_upserts: vec![EndpointUpsert {
                service: Some(key("web")),
                endpoint: Some(Endpoint {
                    address: "10.0.0.1".into(),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        };
        assert_eq!(t.apply(&sync).unwrap().generation, 2);
        assert_eq!(t.apply(&sync).unwrap().generation, 2, "replay is a no-op");
        let del = ProgramServiceRequest {
            generation: 3,
            endpoint_deletes: vec![EndpointKey {
                service: Some(key("web")),
                address: "10.0.0.1".into(),
            }],
            ..Default::default()
        };
        t.apply(&del).unwrap();
        assert!(t.list("").services[0].endpoints.is_empty());
        assert_eq!(
            t.apply(&sync).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        let replay = t.full_sync_request();
        let mut t2 = ServiceTable::default();
        t2.apply(&replay).unwrap();
        assert_eq!(t2.list("").services, t.list("").services);
    }

    fn ep(addr: &str) -> Endpoint {
        Endpoint {
            address: addr.into(),
            ready: true,
            ..Default::default()
        }
    }

    fn svc(name: &str) -> Service {
        Service {
            key: Some(key(name)),
            cluster_ips: vec!["10.96.0.1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_applied_resolved_leaves_what_it_leaves_applied() {
        // web (2 endpoints), db (1), lone (endpoints only, no Service object).
        let start = ProgramServiceRequest {
            generation: 1,
            full_sync: true,
            service_upserts: vec![svc("web"), svc("db")],
            endpoint_upserts: [
                ("web", "10.0.0.1"),
                ("web", "10.0.0.2"),
                ("db", "10.0.1.1"),
                ("lone", "10.0.2.1"),
            ]
            .into_iter()
            .map(|(s, a)| EndpointUpsert {
                service: Some(key(s)),
                endpoint: Some(ep(a)),
            })
            .collect(),
            ..Default::default()
        };
        // A delta: db deleted, web's second endpoint gone and a third in, lone's only
        // endpoint gone (so lone goes), cache new.
        let delta = ProgramServiceRequest {
            generation: 2,
            service_upserts: vec![svc("cache")],
            service_deletes: vec![key("db")],
            endpoint_upserts: vec![EndpointUpsert {
                service: Some(key("web")),
                endpoint: Some(ep("10.0.0.3")),
            }],
            endpoint_deletes: vec![
                EndpointKey {
                    service: Some(key("web")),
                    address: "10.0.0.2".into(),
                },
                EndpointKey {
                    service: Some(key("lone")),
                    address: "10.0.2.1".into(),
                },
            ],
            ..Default::default()
        };
        // How the delta leaves each Service it touches, written out from the batch's rules.
        let k = |n: &str| ("default".to_string(), n.to_string());
        let eps = |a: &[&str]| -> BTreeMap<String, Endpoint> {
            a.iter().map(|a| (a.to_string(), ep(a))).collect()
        };
        let post = vec![
            (k("web"), (Some(svc("web")), eps(&["10.0.0.1", "10.0.0.3"]))),
            (k("db"), (None, BTreeMap::new())),
            (k("lone"), (None, BTreeMap::new())),
            (k("cache"), (Some(svc("cache")), BTreeMap::new())),
        ];
        let (mut applied, mut resolved) = (ServiceTable::default(), ServiceTable::default());
        applied.apply(&start).unwrap();
        resolved.apply(&start).unwrap();
        applied.apply(&delta).unwrap();
        assert_eq!(
            resolved
                .apply_resolved(&delta, post.clone())
                .unwrap()
                .generation,
            2
        );
        assert_eq!(resolved.list(""), applied.list(""));
        assert_eq!(resolved.full_sync_request(), applied.full_sync_request());
        let names: Vec<_> = resolved
            .list("")
            .services
            .iter()
            .map(|s| {
                s.service
                    .as_ref()
                    .unwrap()
                    .key
                    .as_ref()
                    .unwrap()
                    .name
                    .clone()
            })
            .collect();
        assert_eq!(names, ["cache", "web"]);
        // A replay changes nothing; an older generation is refused.
        assert_eq!(resolved.apply_resolved(&delta, post).unwrap().generation, 2);
        let stale = ProgramServiceRequest {
            generation: 1,
            ..Default::default()
        };
        assert_eq!(
            resolved
                .apply_resolved(&stale, Vec::new())
                .unwrap_err()
                .code(),
            tonic::Code::FailedPrecondition
        );
    }
}

/// Per-key async locks (one sandbox, one claim): work on one key is serialised, different keys
/// run in parallel, and a key's lock is dropped once nobody holds or waits for it.
#[derive(Default)]
pub struct KeyLocks {
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key of a [`KeyLocks`] until dropped.
pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    /// Locks `key` until the guard drops.
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = self
            .locks
            .lock()
            .map(|mut l| l.entry(key.to_string()).or_default().clone())
            .unwrap_or_default();
        KeyGuard {
            locks: self,
            key: key.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        if let Ok(mut locks) = self.locks.locks.lock()
            && locks
                .get(&self.key)
                .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.key);
        }
    }
}
