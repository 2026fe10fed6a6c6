//! The manifests source: a directory of YAML files holding Kubernetes `Service` and
//! `EndpointSlice` objects (several documents per file), watched so edits, additions and
//! deletions take effect without a restart. A file that does not load is reported with its
//! name and the reason, and its last good content stays in effect.
//!
//! The directory is watched with inotify (through `notify`): on an event every file is read
//! again and compared by content, so an edit that keeps the size and lands within the same
//! timestamp tick is seen too. A rescan every [`RESCAN`] is the safety net for lost events (a
//! full inotify queue): it reads a file again when its target's modification or change time,
//! size or inode changed. Symlinks are followed, so a ConfigMap mounted as the directory works
//! through its `..data` swaps; a file that reads empty while it held objects is applied only
//! when it reads so twice (it may be half-written).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::core::v1::{Namespace as KNamespace, Pod as KPod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy as KNetworkPolicy;

use netlet_sdk::validate;

use super::sources::{Key, Source, Wanted, k};
use super::view::{self, NodeInfo};
use crate::Host;

/// How often the directory is scanned besides its inotify events.
pub const RESCAN: Duration = Duration::from_secs(2);

/// Without inotify (its limits reached), how often the directory is polled.
pub const POLL: Duration = Duration::from_millis(250);

/// After an event, how long to wait for the writer's next ones before reading.
const SETTLE: Duration = Duration::from_millis(20);

/// What tells a file changed: its target's modification and change times, size and inode
/// (a ConfigMap mount swaps a `..data` symlink to new files of maybe the same size and time;
/// an in-place edit of the same size still moves the change time).
type Stamp = (SystemTime, i64, i64, u64, u64);

#[derive(Debug, Default, Clone)]
struct FileState {
    stamp: Option<Stamp>,
    /// FNV-1a of the content last read.
    digest: Option<u64>,
    /// A file that read empty while it held objects: applied only when it reads so twice with
    /// the same stamp (it may be half-written).
    empty_seen: Option<Stamp>,
    objects: Objects,
    error: Option<String>,
}

/// What the directory holds.
#[derive(Debug, Default)]
pub struct Manifests {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

/// What one file holds.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    /// Services.
    pub services: Vec<KService>,
    /// EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// NetworkPolicies.
    pub network_policies: Vec<KNetworkPolicy>,
    /// Namespaces (their labels, for namespace selectors).
    pub namespaces: Vec<KNamespace>,
    /// Pods (other nodes' pods, for policy peers).
    pub pods: Vec<KPod>,
    /// ClusterNetworkPolicies, AdminNetworkPolicies, BaselineAdminNetworkPolicies (as read;
    /// converted by `netpol::cnp`).
    pub cluster_policies: Vec<serde_json::Value>,
    /// netlet's DnsPolicies (as read; converted by `dns::policy::from_manifest`).
    pub dns_policies: Vec<serde_json::Value>,
    /// netlet's HostnameGrants (as read; converted by `grants::from_manifest`).
    pub hostname_grants: Vec<serde_json::Value>,
    /// Nodes (their addresses, for node peers).
    pub nodes: Vec<k8s_openapi::api::core::v1::Node>,
    /// Objects that claim hostnames (Ingresses, Gateway API routes and Gateways, OpenShift
    /// Routes; as read, see [`crate::hostnames`]).
    pub claimers: Vec<serde_json::Value>,
}

/// A kind read as it comes, converted into the contract's form (its key, when it has one).
type Convert =
    fn(&serde_json::Value) -> Result<(Option<crate::policy::Key>, crate::policy::Item), String>;

fn policy_key(k: Option<&netlet_sdk::proto::PolicyKey>) -> Option<crate::policy::Key> {
    k.map(|k| (k.kind, k.namespace.clone(), k.name.clone()))
}

impl Objects {
    fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.slices.is_empty()
            && self.network_policies.is_empty()
            && self.namespaces.is_empty()
            && self.pods.is_empty()
            && self.cluster_policies.is_empty()
            && self.dns_policies.is_empty()
            && self.hostname_grants.is_empty()
            && self.nodes.is_empty()
            && self.claimers.is_empty()
    }
}

/// Parses one file's documents into Services, EndpointSlices and NetworkPolicies; errors name
/// the document.
pub fn parse(text: &str) -> Result<Objects, String> {
    let mut o = Objects::default();
    let docs: Vec<serde_json::Value> = netlet_sdk::yaml::documents(text).map_err(|e| e.message)?;
    for (i, v) in docs.into_iter().enumerate() {
        if v.is_null() {
            continue;
        }
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let what = |e: serde_path_to_error::Error<serde_json::Error>| {
            format!("document {} ({kind}): {}: {}", i + 1, e.path(), e.inner())
        };
        match kind.as_str() {
            "Service" => o
                .services
                .push(serde_path_to_error::deserialize(v).map_err(what)?),
            "EndpointSlice" => o
                .slices
                .push(serde_path_to_error::deserialize(v).map_err(what)?),
            "NetworkPolicy" => o
                .network_policies
                .push(serde_path_to_error::deserialize(v).map_err(what)?),
            "Namespace" => o
                .namespaces
                .push(serde_path_to_error::deserialize(v).map_err(what)?),
            "Pod" => o
                .pods
                .push(serde_path_to_error::deserialize(v).map_err(what)?),
            "Node" => o
                .nodes
                .push(serde_path_to_error::deserialize(v).map_err(what)?),
            "ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => {
                o.cluster_policies.push(v)
            }
            "DnsPolicy" => o.dns_policies.push(v),
            "HostnameGrant" => o.hostname_grants.push(v),
            k if crate::hostnames::is_claiming_kind(k) => o.claimers.push(v),
            "" => return Err(format!("document {}: no kind", i + 1)),
            other => {
                return Err(format!(
                    "document {}: kind {other} is not Service, EndpointSlice, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy, DnsPolicy, HostnameGrant, Namespace, Pod, Node, Ingress, HTTPRoute, GRPCRoute, TLSRoute, Gateway or Route",
                    i + 1
                ));
            }
        }
    }
    Ok(o)
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

impl Manifests {
    /// Objects held elsewhere (the Kubernetes API source's), as one pseudo-file named
    /// `origin`, so they are checked and reported with the manifests' rules.
    pub fn of(origin: &str, objects: Objects) -> Self {
        let mut files = BTreeMap::new();
        files.insert(
            PathBuf::from(origin),
            FileState {
                objects,
                ..Default::default()
            },
        );
        Manifests {
            dir: PathBuf::from(origin),
            files,
        }
    }

    /// A source over `dir` (read by [`Manifests::scan`]).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    /// Reads what changed by its stamp; returns whether anything did.
    pub fn scan(&mut self) -> bool {
        self.scan_with(false)
    }

    /// Reads every file again and compares contents (after an inotify event: the stamp may
    /// not have moved); returns whether anything changed.
    pub fn reread(&mut self) -> bool {
        self.scan_with(true)
    }

    fn scan_with(&mut self, reread: bool) -> bool {
        let mut seen = Vec::new();
        let mut changed = false;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                let had = !self.files.is_empty();
                self.files.clear();
                tracing::warn!(dir = %self.dir.display(), error = %e, "manifests directory unreadable");
                return had;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !is_manifest(&path) {
                continue;
            }
            // Symlinks are followed (ConfigMap mounts are links into `..data/`).
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            seen.push(path.clone());
            let stamp = Some((
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.ctime(),
                meta.ctime_nsec(),
                meta.len(),
                meta.ino(),
            ));
            let st = self.files.entry(path.clone()).or_default();
            if st.stamp == stamp && !reread {
                continue;
            }
            let text = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "manifest unreadable; looked at again at the next event or rescan");
                    continue;
                }
            };
            let digest = Some(netlet_sdk::hash::fnv1a(&text));
            if st.digest == digest && st.empty_seen.is_none() {
                st.stamp = stamp;
                continue;
            }
            let loaded = String::from_utf8(text)
                .map_err(|e| format!("not UTF-8: {e}"))
                .and_then(|t| parse(&t));
            let had = !st.objects.is_empty();
            if let Ok(o) = &loaded
                && o.is_empty()
                && had
                && st.empty_seen != stamp
            {
                // Maybe caught between truncate and write: look again at the next scan.
                st.empty_seen = stamp;
                continue;
            }
            st.empty_seen = None;
            st.stamp = stamp;
            st.digest = digest;
            changed = true;
            match loaded {
                Ok(objects) => {
                    st.objects = objects;
                    st.error = None;
                    tracing::info!(file = %path.display(), services = st.objects.services.len(), slices = st.objects.slices.len(), network_policies = st.objects.network_policies.len(), "manifest loaded");
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "manifest not loaded; its last good content stays");
                    st.error = Some(e);
                }
            }
        }
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        changed || self.files.len() != before
    }

    /// Files that did not load, as `file: reason`.
    pub fn errors(&self) -> Vec<String> {
        self.files
            .iter()
            .filter_map(|(p, s)| Some(format!("{}: {}", p.display(), s.error.as_ref()?)))
            .collect()
    }

    /// The namespaces (name → labels) and the pods with addresses the files hold, for policy
    /// selectors: pods of other nodes, and namespaces' labels.
    pub fn cluster(&self) -> crate::netpol::Cluster {
        let mut c = crate::netpol::Cluster::default();
        let mut remote = Vec::new();
        for f in self.files.values() {
            for ns in &f.objects.namespaces {
                if let Some(name) = &ns.metadata.name {
                    c.namespaces.insert(
                        name.clone(),
                        ns.metadata
                            .labels
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .collect(),
                    );
                }
            }
            remote.extend(f.objects.pods.iter().filter_map(crate::netpol::pod_info));
            c.nodes
                .extend(f.objects.nodes.iter().map(crate::netpol::node_info));
        }
        c.remote = Arc::new(remote);
        c
    }

    /// The Node objects the files hold, as the node table holds them.
    pub fn cluster_nodes(&self, local: &str) -> Vec<netlet_sdk::proto::ClusterNode> {
        self.files
            .values()
            .flat_map(|f| f.objects.nodes.iter())
            .filter_map(|n| crate::cluster::convert::node_of(n, local))
            .collect()
    }

    /// Every NetworkPolicy the files hold (and admin policy, DnsPolicy, HostnameGrant), in the
    /// contract's form; one that does not convert is left out and reported (`file: NetworkPolicy ns/name: field: why`).
    pub fn network_policies(
        &self,
    ) -> (
        BTreeMap<crate::policy::Key, crate::policy::Item>,
        Vec<String>,
    ) {
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for (path, f) in &self.files {
            for np in &f.objects.network_policies {
                match crate::netpol::network_policy(np) {
                    Ok(p) => {
                        let k = p
                            .key
                            .as_ref()
                            .map(|k| (k.kind, k.namespace.clone(), k.name.clone()));
                        if let Some(k) = k {
                            out.insert(k, crate::policy::Item::Network(p));
                        }
                    }
                    Err(why) => errors.push(format!(
                        "{}: NetworkPolicy {}/{}: {why}",
                        path.display(),
                        np.metadata.namespace.as_deref().unwrap_or("default"),
                        np.metadata.name.as_deref().unwrap_or_default()
                    )),
                }
            }
            let origin = path.display();
            let kinds: [(&[serde_json::Value], Convert); 3] = [
                (&f.objects.cluster_policies, |v| {
                    crate::netpol::cnp::cluster_network_policy(v)
                        .map(|p| (policy_key(p.key.as_ref()), crate::policy::Item::Cluster(p)))
                }),
                (&f.objects.dns_policies, |v| {
                    crate::dns::policy::from_manifest(v)
                        .map(|p| (policy_key(p.key.as_ref()), crate::policy::Item::Dns(p)))
                }),
                (&f.objects.hostname_grants, |v| {
                    crate::grants::from_manifest(v)
                        .map(|g| (policy_key(g.key.as_ref()), crate::policy::Item::Grant(g)))
                }),
            ];
            for (values, convert) in kinds {
                for v in values {
                    match convert(v) {
                        Ok((Some(k), item)) => {
                            out.insert(k, item);
                        }
                        Ok((None, _)) => {}
                        Err(why) => errors.push(format!(
                            "{origin}: {} {}: {why}",
                            v.get("kind").and_then(|k| k.as_str()).unwrap_or_default(),
                            v.pointer("/metadata/name")
                                .and_then(|k| k.as_str())
                                .unwrap_or_default()
                        )),
                    }
                }
            }
        }
        (out, errors)
    }

    /// Every Service and EndpointSlice the files hold, for the DNS zone.
    pub fn service_objects(&self) -> crate::dns::ServiceObjects {
        let files = || self.files.values();
        crate::dns::group_services(
            files().flat_map(|f| f.objects.services.iter().cloned().map(Arc::new)),
            files().flat_map(|f| f.objects.slices.iter().cloned().map(Arc::new)),
        )
    }

    /// Every Service the files hold, as this node's source wants it (see [`wanted_of`]), each
    /// error naming its file.
    pub fn wanted(
        &self,
        node: &NodeInfo,
        node_ports: &std::ops::RangeInclusive<u32>,
    ) -> (BTreeMap<Key, Wanted>, Vec<String>) {
        wanted_of(
            self.files.iter().flat_map(|(p, f)| {
                f.objects
                    .services
                    .iter()
                    .map(move |s| (p.display().to_string(), s))
            }),
            self.files.iter().flat_map(|(p, f)| {
                f.objects
                    .slices
                    .iter()
                    .map(move |s| (p.display().to_string(), s))
            }),
            node,
            node_ports,
        )
    }
}

/// Services and EndpointSlices (each with where it came from: a file, the API) as a source
/// wants them, checked with the same rules as a ProgramService caller's: a Service that breaks
/// one is left out, an endpoint that breaks one is left out of its Service, and each is
/// reported (`origin: object: field: why`) while every other Service goes on being served.
pub fn wanted_of<'a>(
    services: impl IntoIterator<Item = (String, &'a KService)>,
    slices: impl IntoIterator<Item = (String, &'a EndpointSlice)>,
    node: &NodeInfo,
    node_ports: &std::ops::RangeInclusive<u32>,
) -> (BTreeMap<Key, Wanted>, Vec<String>) {
    let mut by_service: BTreeMap<Key, Vec<(String, &EndpointSlice)>> = BTreeMap::new();
    for (origin, s) in slices {
        if let Some(key) = view::slice_service(s) {
            by_service.entry(k(&key)).or_default().push((origin, s));
        }
    }
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (origin, ks) in services {
        let Some((key, wanted, mut why)) = wanted_one(
            &origin,
            ks,
            |key| by_service.get(key).map(Vec::as_slice).unwrap_or(&[]),
            node,
            node_ports,
        ) else {
            continue;
        };
        errors.append(&mut why);
        if let Some(w) = wanted {
            out.insert(key, w);
        }
    }
    (out, errors)
}

/// One Service (from `origin`) as a source wants it, with its EndpointSlices (`slices_of` its
/// key, each with where it came from), checked as [`wanted_of`] checks it: its key, what it
/// wants (`None`: left out) and what was left out, as messages. `None` for an object that is
/// no Service netlet serves (no name, or another proxy's).
pub fn wanted_one<'a>(
    origin: &str,
    ks: &KService,
    slices_of: impl FnOnce(&Key) -> &'a [(String, &'a EndpointSlice)],
    node: &NodeInfo,
    node_ports: &std::ops::RangeInclusive<u32>,
) -> Option<(Key, Option<Wanted>, Vec<String>)> {
    let svc = view::service(ks)?;
    let key = svc.key.as_ref().map(k)?;
    let object = format!("Service {}/{}", key.0, key.1);
    let mut errors = Vec::new();
    if let Err(e) =
        validate::service("", &svc).and_then(|()| view::check_node_ports("", &svc, node_ports))
    {
        errors.push(format!("{origin}: {object}: {}", e.message()));
        return Some((key, None, errors));
    }
    let mine = slices_of(&key);
    let just: Vec<&EndpointSlice> = mine.iter().map(|(_, s)| *s).collect();
    let mut endpoints = BTreeMap::new();
    for e in view::endpoints(&svc, &just, node) {
        match validate::endpoint("", &e).map_err(|s| s.message().to_string()) {
            Ok(()) => {
                endpoints.insert(e.address.clone(), e);
            }
            Err(why) => {
                let (from, slice) = mine
                    .iter()
                    .find(|(_, s)| s.endpoints.iter().any(|x| x.addresses.contains(&e.address)))
                    .map(|(o, s)| (o.clone(), s.metadata.name.clone().unwrap_or_default()))
                    .unwrap_or_default();
                errors.push(format!(
                    "{from}: EndpointSlice {}/{slice} of {object}: endpoint {}: {why}",
                    key.0, e.address
                ));
            }
        }
    }
    let wanted = Wanted {
        service: Some(svc),
        endpoints,
    };
    Some((key, Some(wanted), errors))
}

/// Events of the directory, coalesced: one pending wake-up at most.
fn watcher(dir: &Path) -> Option<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)> {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut w = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    })
    .map_err(|e| tracing::warn!(error = %e, "no inotify: the manifests directory is polled"))
    .ok()?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the manifests directory: polled"))
        .ok()?;
    Some((w, rx))
}

/// Watches `dir` until shutdown, feeding changes into the node's Service view.
pub async fn watch(host: Arc<Host>, dir: PathBuf) {
    let mut m = Manifests::new(&dir);
    // Watched from the start: a change made while the first scan runs is not lost.
    let mut events = watcher(&dir);
    let mut rescan = tokio::time::interval(if events.is_some() { RESCAN } else { POLL });
    let mut shutdown = host.shutdown.clone();
    let mut scanned = false;
    loop {
        let reread = tokio::select! {
            _ = rescan.tick() => false,
            Some(()) = async {
                match events.as_mut() {
                    Some((_, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if reread {
            // A writer's events come in bursts (truncate, write, close; a `..data` swap).
            tokio::time::sleep(SETTLE).await;
            if let Some((_, rx)) = events.as_mut() {
                while rx.try_recv().is_ok() {}
            }
        }
        // The first pass goes through even when the directory is empty: it is what lets the
        // Policy drivers have their first full sync.
        if !m.scan_with(reread) && scanned {
            continue;
        }
        scanned = true;
        let origin = dir.display().to_string();
        let wanted = m.wanted(&host.settings.node, &host.settings.node_port_range);
        apply(
            &host,
            Source::Manifests,
            &m,
            wanted,
            m.service_objects(),
            &origin,
        )
        .await;
    }
}

/// Brings the node to what the manifests hold, as a whole: its Services (`wanted`, with what
/// was left out), the DNS zone (`dns`), its nodes, the pods and namespaces policy selectors
/// resolve against and its policies. What is left out or conflicts is reported as `file: …`.
/// The first apply, if it is the last source still unread, lets the drivers have their first
/// full sync. (The Kubernetes source applies the same parts one Service at a time.)
pub(crate) async fn apply(
    host: &Arc<Host>,
    source: Source,
    m: &Manifests,
    (wanted, invalid): (BTreeMap<Key, Wanted>, Vec<String>),
    dns: crate::dns::ServiceObjects,
    origin: &str,
) {
    host.nodes
        .replace(source, m.cluster_nodes(&host.settings.node.name));
    let mut errors = m.errors();
    let what = source.as_str();
    for e in invalid {
        tracing::error!(source = what, error = %e, "object left out");
        errors.push(e);
    }
    let (refused, mut conflicts, all_loaded) = replace_services(host, source, wanted, origin).await;
    errors.extend(refused.into_values());
    errors.append(&mut conflicts);
    let now = k8s_openapi::jiff::Timestamp::now();
    let claims: Vec<crate::hostnames::Claim> = dns
        .values()
        .flat_map(|o| crate::hostnames::service_claims(&o.service, now))
        .collect();
    host.refresh_dns_zone(Some((source, dns))).await;
    errors.append(&mut apply_objects(host, source, m, claims, all_loaded, origin).await);
    if let Ok(mut e) = host.source_errors.lock() {
        e.insert(source, errors);
    }
}

/// Replaces every Service `source` wants and brings the drivers up to date. Returns what was
/// refused (owned by another source), by Service, and what waits for what another Service
/// holds, as messages, and whether this was the first read of the last source unread (every
/// driver then has its first full sync).
pub(crate) async fn replace_services(
    host: &Arc<Host>,
    source: Source,
    wanted: BTreeMap<Key, Wanted>,
    origin: &str,
) -> (BTreeMap<Key, String>, Vec<String>, bool) {
    let mut view = host.services.lock().await;
    let prev = view.table.generation();
    let (delta, conflicts) = view.replace(source, wanted);
    let what = source.as_str();
    let mut refused = BTreeMap::new();
    for c in conflicts {
        tracing::error!(source = what, service = %format!("{}/{}", c.key.namespace, c.key.name), owner = c.owner.as_str(), "Service not applied: another source owns it");
        refused.insert(k(&c.key), format!("{origin}: {c}"));
    }
    // Two Services asking for one address and port: the first holds it (reported, not
    // refused: the data plane keeps serving the holder and hands it on when it goes).
    let conflicts = claim_conflicts(&view, source, origin);
    for m in &conflicts {
        tracing::error!(source = what, conflict = %m, "Service asks for what another holds");
    }
    // This source's first read: once it was the last one unread, every driver may have its
    // first full sync (a driver with nothing applied is sent the whole table).
    let all_loaded = host.source_read(source);
    let delta = delta.or_else(|| {
        all_loaded.then(|| netlet_sdk::proto::ProgramServiceRequest {
            generation: view.table.generation(),
            ..Default::default()
        })
    });
    push_services(host, &view, prev, delta).await;
    (refused, conflicts, all_loaded)
}

/// Services of `source` waiting for what another Service holds, as messages.
fn claim_conflicts(
    view: &super::sources::ServiceView,
    source: Source,
    origin: &str,
) -> Vec<String> {
    view.claim_conflicts(source)
        .into_iter()
        .map(|m| format!("{origin}: {m}"))
        .collect()
}

/// Sends the view's change (from generation `prev`) to the Services drivers, once every source
/// is read (until then drivers keep what they have: a driver that outlived a host restart goes
/// on serving the Services of a source not read yet).
async fn push_services(
    host: &Arc<Host>,
    view: &super::sources::ServiceView,
    prev: u64,
    delta: Option<netlet_sdk::proto::ProgramServiceRequest>,
) {
    if !host.sources_loaded() {
        host.health_checks.reconcile(view);
    } else if let Err(e) = crate::api::services::push(host, view, prev, delta).await {
        tracing::warn!(error = %e, "Services drivers not brought up to date; retried at their next resync");
    }
}

/// Sets what `source` wants of some Services only (`None`: nothing any more), as a watch event
/// tells it, and sends drivers the change of those Services alone. Returns, for each key, why
/// it was refused (another source owns it), and the source's claim conflicts now (not logged:
/// the caller logs those that are new).
pub(crate) async fn update_services(
    host: &Arc<Host>,
    source: Source,
    mut changes: BTreeMap<Key, Option<Wanted>>,
    origin: &str,
) -> (BTreeMap<Key, String>, Vec<String>) {
    let mut view = host.services.lock().await;
    let prev = view.table.generation();
    let mut refused = BTreeMap::new();
    changes.retain(
        |key, w| match view.check(source, &super::view::key(&key.0, &key.1)) {
            Ok(()) => true,
            Err(c) => {
                // Gone from this source: nothing is refused any more.
                if w.is_some() {
                    refused.insert(key.clone(), format!("{origin}: {c}"));
                }
                false
            }
        },
    );
    // Checked above: every key is the source's or no one's.
    let delta = view.update(source, changes).ok().flatten();
    let conflicts = claim_conflicts(&view, source, origin);
    if delta.is_some() {
        push_services(host, &view, prev, delta).await;
    }
    (refused, conflicts)
}

/// Brings the node to the objects of a source besides its Services: the hostname claims (`claims`
/// of its Services, and those of the claiming objects of `m`), the pods and namespaces policy
/// selectors resolve against, and its policies. Returns what was left out, as messages.
/// `all_loaded`: this source was the last one unread (every Policy driver has its first full
/// sync).
pub(crate) async fn apply_objects(
    host: &Arc<Host>,
    source: Source,
    m: &Manifests,
    mut claims: Vec<crate::hostnames::Claim>,
    all_loaded: bool,
    origin: &str,
) -> Vec<String> {
    let now = k8s_openapi::jiff::Timestamp::now();
    claims.extend(
        m.files
            .values()
            .flat_map(|f| &f.objects.claimers)
            .flat_map(|o| crate::hostnames::claims_of(o, now)),
    );
    host.claims.set(source, claims);
    let (policies, invalid) = m.network_policies();
    if let Ok(mut all) = host.source_clusters.lock() {
        let mut next = m.cluster();
        let c = all.entry(source).or_default();
        // The same Pod objects keep the same shared list: diffs then skip them.
        if next.remote == c.remote {
            next.remote = c.remote.clone();
        }
        *c = next;
    }
    // The pods and namespaces may have changed: the sets follow (whichever source the
    // policies come from). A driver that misses this gets the batch below (or a full
    // sync) anyway.
    let _ = host.refresh_policy_pods(!policies.is_empty()).await;
    let mut pview = host.policies.lock().await;
    let prev = pview.table.generation();
    let (batch, conflicts) = pview.replace(source, policies);
    let mut perrors: Vec<String> = invalid;
    perrors.extend(conflicts.into_iter().map(|c| format!("{origin}: {c}")));
    let what = source.as_str();
    for e in &perrors {
        tracing::error!(source = what, error = %e, "policy left out");
    }
    // After the first read of every source each Policy driver gets its first full sync (a
    // driver with nothing applied is sent the whole table, whatever the delta).
    let batch = batch.or_else(|| all_loaded.then(netlet_sdk::proto::ApplyPolicyRequest::default));
    if let Some(batch) = batch.filter(|_| host.sources_loaded())
        && let Err(e) = crate::api::policy::push(host, &pview, prev, &batch).await
    {
        tracing::warn!(error = %e, "Policy drivers not brought up to date; retried at their next resync");
    }
    drop(pview);
    host.refresh_dns_policies().await;
    perrors
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}\n";
    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.0.5], conditions: {ready: true}, nodeName: n1}]\n";

    #[test]
    fn files_load_change_break_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeInfo {
            name: "n1".into(),
            zone: String::new(),
        };
        let f = dir.path().join("web.yaml");
        std::fs::write(&f, format!("{SVC}---\n{SLICE}")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let mut m = Manifests::new(dir.path());
        assert!(m.scan());
        let (w, _) = m.wanted(&node, &NODE_PORTS);
        let web = &w[&("shop".to_string(), "web".to_string())];
        assert!(web.endpoints["10.244.0.5"].use_for_internal && web.endpoints["10.244.0.5"].local);
        assert!(!m.scan(), "nothing changed");
        // A broken edit is reported with the file and keeps the last good content.
        std::fs::write(&f, "kind: Service\nspec: [oops\n").unwrap();
        assert!(m.scan());
        assert!(
            m.errors()[0].starts_with(&f.display().to_string()),
            "{:?}",
            m.errors()
        );
        assert_eq!(m.wanted(&node, &NODE_PORTS).0.len(), 1);
        std::fs::write(&f, "kind: ConfigMap\n").unwrap();
        assert!(m.scan());
        assert!(m.errors()[0].contains(
            "kind ConfigMap is not Service, EndpointSlice, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy, DnsPolicy, HostnameGrant, Namespace, Pod, Node, Ingress, HTTPRoute, GRPCRoute, TLSRoute, Gateway or Route"
        ));
        // Deleting the file deletes its Services.
        std::fs::remove_file(&f).unwrap();
        assert!(m.scan());
        assert!(m.wanted(&node, &NODE_PORTS).0.is_empty() && m.errors().is_empty());
    }

    // A Service or endpoint that breaks the ProgramService rules is left out and reported with
    // file, object and field; the others are served.
    #[test]
    fn bad_objects_are_left_out_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeInfo {
            name: "n1".into(),
            zone: String::new(),
        };
        let bad_svc = SVC
            .replace("name: web", "name: bad")
            .replace("10.96.0.10", "10.96.0.300");
        let big_port = SVC
            .replace("name: web", "name: big")
            .replace("10.96.0.10", "10.96.0.11")
            .replace("port: 80,", "port: 70000,");
        let bad_ep = SLICE.replace(
            "nodeName: n1}]",
            "nodeName: n1}, {addresses: [10.244.0.256], conditions: {ready: true}}]",
        );
        let low_node_port = SVC
            .replace("name: web", "name: low")
            .replace("10.96.0.10", "10.96.0.12")
            .replace("clusterIP:", "type: NodePort, clusterIP:")
            .replace("targetPort: 8080}", "targetPort: 8080, nodePort: 20000}");
        // A health-check port past 65535 once was cast to a u16 and served as another port.
        let wrapped_health = SVC
            .replace("name: web", "name: wrapped")
            .replace("10.96.0.10", "10.96.0.13")
            .replace(
                "clusterIP:",
                "type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 96304, clusterIP:",
            );
        let f = dir.path().join("mixed.yaml");
        std::fs::write(
            &f,
            format!(
                "{SVC}---\n{bad_ep}---\n{bad_svc}---\n{big_port}---\n{low_node_port}---\n{wrapped_health}"
            ),
        )
        .unwrap();
        let mut m = Manifests::new(dir.path());
        assert!(m.scan());
        let (w, errors) = m.wanted(&node, &NODE_PORTS);
        let names: Vec<&str> = w.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(names, ["web"]);
        let web = &w[&("shop".to_string(), "web".to_string())];
        assert_eq!(web.endpoints.keys().collect::<Vec<_>>(), ["10.244.0.5"]);
        let file = f.display().to_string();
        let find = |needle: &str| errors.iter().find(|e| e.contains(needle)).cloned();
        let e = find("shop/bad").unwrap_or_else(|| panic!("{errors:?}"));
        assert!(
            e.starts_with(&file) && e.contains("Service shop/bad: cluster_ips[0]:"),
            "{e}"
        );
        let e = find("shop/big").unwrap_or_else(|| panic!("{errors:?}"));
        assert!(e.contains("ports[0].port:"), "{e}");
        let e = find("shop/low").unwrap_or_else(|| panic!("{errors:?}"));
        assert!(
            e.ends_with("ports[0].node_port: 20000 is outside the node port range 30000-32767"),
            "{e}"
        );
        let e = find("shop/wrapped").unwrap_or_else(|| panic!("{errors:?}"));
        assert!(e.contains("health_check_node_port:"), "{e}");
        let e = find("10.244.0.256").unwrap_or_else(|| panic!("{errors:?}"));
        assert!(
            e.starts_with(&file) && e.contains("EndpointSlice shop/web-1 of Service shop/web"),
            "{e}"
        );
    }

    fn cluster_ip(m: &Manifests) -> Vec<String> {
        let node = NodeInfo {
            name: "n1".into(),
            zone: String::new(),
        };
        m.wanted(&node, &NODE_PORTS)
            .0
            .values()
            .flat_map(|w| w.service.iter().flat_map(|s| s.cluster_ips.clone()))
            .collect()
    }

    // As a ConfigMap is mounted: files are links into `..data`, a link swapped to a new
    // directory on every update.
    #[test]
    fn configmap_mounts_are_followed_through_their_swaps() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let version = |name: &str, ip: &str| {
            std::fs::create_dir(d.join(name)).unwrap();
            std::fs::write(d.join(name).join("web.yaml"), SVC.replace("10.96.0.10", ip)).unwrap();
            symlink(name, d.join("..data_tmp")).unwrap();
            std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        };
        version("..2026_11_30_a", "10.96.0.10");
        symlink("..data/web.yaml", d.join("web.yaml")).unwrap();
        let mut m = Manifests::new(d);
        assert!(m.scan());
        assert_eq!(cluster_ip(&m), ["10.96.0.10"]);
        // Same size, new directory.
        version("..2026_11_30_b", "10.96.0.11");
        assert!(m.scan());
        assert_eq!(cluster_ip(&m), ["10.96.0.11"]);
    }

    #[test]
    fn same_size_edits_are_seen_and_half_written_files_wait() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("web.yaml");
        std::fs::write(&f, SVC).unwrap();
        let mut m = Manifests::new(dir.path());
        assert!(m.scan());
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        // Same size, in place, its modification time put back: the change time moved.
        std::fs::write(&f, SVC.replace("10.96.0.10", "10.96.0.11")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(m.scan());
        assert_eq!(cluster_ip(&m), ["10.96.0.11"]);
        // Caught empty (truncated, not written yet): kept until it reads empty twice.
        std::fs::write(&f, "").unwrap();
        assert!(!m.scan());
        assert_eq!(cluster_ip(&m), ["10.96.0.11"]);
        assert!(m.scan());
        assert!(cluster_ip(&m).is_empty());
    }

    // An event's reread compares content: nothing is re-applied for an event that changed
    // nothing (a touch, an unrelated file), and a change is seen whatever the stamp says.
    #[test]
    fn a_reread_applies_changed_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("web.yaml");
        std::fs::write(&f, SVC).unwrap();
        let mut m = Manifests::new(dir.path());
        assert!(m.scan());
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        std::fs::write(&f, SVC).unwrap();
        assert!(!m.reread(), "same content: nothing changed");
        std::fs::write(&f, SVC.replace("10.96.0.10", "10.96.0.11")).unwrap();
        assert!(m.reread());
        assert_eq!(cluster_ip(&m), ["10.96.0.11"]);
    }
}
