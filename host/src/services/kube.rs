//! The Kubernetes API as a source (kube-rs): the cluster's Services and EndpointSlices,
//! NetworkPolicies, Namespaces, Pods, Nodes and Ingresses, and — where the API server serves
//! their kinds — AdminNetworkPolicies, BaselineAdminNetworkPolicies, ClusterNetworkPolicies,
//! netlet's DnsPolicies and HostnameGrants, and the objects that claim hostnames (Gateway API
//! HTTPRoutes, GRPCRoutes, TLSRoutes and Gateways, OpenShift Routes). Each kind is kept by a
//! reflector (the watch relists on 410 Gone, follows bookmarks and backs off on errors, as
//! kube-runtime's watcher does); the objects
//! are checked and applied with the manifests' rules ([`super::manifests::apply`]) as
//! [`Source::Kubernetes`], errors named `kubernetes: …`.
//!
//! A relist replaces a reflector's store only once it is complete, so while the API server is
//! away or relisting, the data plane keeps its last state, and afterwards only the difference
//! is applied (the views hand drivers deltas). Objects are stored stripped of what netlet does
//! not read (managed fields, owner references, annotations but the topology mode; of a Pod all
//! but its labels, node, named ports, addresses and readiness gates): the initial list of a
//! large cluster is where a watcher's memory goes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::manifests::{
    Manifests, Objects, apply_objects, replace_services, update_services, wanted_one,
};
use super::sources::{Key, Source, Wanted};
use crate::Host;
use crate::dns::ServiceObject;

/// Changes arriving within this long of each other are applied together.
const SETTLE: Duration = Duration::from_millis(20);

/// How often kinds not served are looked for again.
const REDISCOVER: Duration = Duration::from_secs(15);

/// The name errors of this source carry.
pub const ORIGIN: &str = "kubernetes";

/// The kinds read as they come (converted by `netpol::cnp`, `dns::policy` and `grants`), each
/// watched only where the API server serves it; so are the kinds of [`crate::hostnames::KINDS`]
/// but Ingress, read for the hostnames they claim.
const DYNAMIC: [(&str, &str, &str); 5] = [
    ("policy.networking.k8s.io", "v1alpha1", "AdminNetworkPolicy"),
    (
        "policy.networking.k8s.io",
        "v1alpha1",
        "BaselineAdminNetworkPolicy",
    ),
    (
        "policy.networking.k8s.io",
        "v1alpha2",
        "ClusterNetworkPolicy",
    ),
    ("netlet.io", "v1alpha1", "DnsPolicy"),
    ("netlet.io", "v1alpha1", "HostnameGrant"),
];

/// A client: for the API server a kubeconfig file names (its current context), or, given
/// `in-cluster`, the one a pod's service account reaches.
pub async fn client(path: &Path) -> anyhow::Result<Client> {
    let cfg = if path == Path::new("in-cluster") {
        kube::Config::incluster().map_err(|e| anyhow::anyhow!("in-cluster: {e}"))?
    } else {
        let kc = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    Client::try_from(cfg).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The annotations netlet reads (a Service's topology mode, the hostnames external-dns would
/// publish for it); every other one is dropped.
const READ_ANNOTATIONS: [&str; 2] = [
    super::view::TOPOLOGY_MODE_ANNOTATION,
    crate::hostnames::EXTERNAL_DNS_ANNOTATION,
];

/// What netlet never reads of any object.
fn strip_meta<K: Resource>(o: &mut K) {
    let m = o.meta_mut();
    m.managed_fields = None;
    m.owner_references = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| READ_ANNOTATIONS.contains(&k.as_str()));
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

/// Of an EndpointSlice, all but what each endpoint points at (`targetRef`, which the
/// EndpointSlice controller sets on every endpoint and netlet never reads) and the deprecated
/// topology map.
fn strip_slice(s: &mut EndpointSlice) {
    strip_meta(s);
    for e in &mut s.endpoints {
        e.target_ref = None;
        e.deprecated_topology = None;
    }
}

/// Of a Pod, what policy peers need (labels, node, named container ports, addresses) and what
/// its readiness gate needs (the gates, and netlet's condition).
fn strip_pod(p: &mut Pod) {
    strip_meta(p);
    if let Some(spec) = p.spec.take() {
        let mut containers = spec.containers;
        for c in &mut containers {
            let ports = c.ports.take();
            *c = k8s_openapi::api::core::v1::Container {
                name: std::mem::take(&mut c.name),
                ports,
                ..Default::default()
            };
        }
        p.spec = Some(PodSpec {
            containers,
            node_name: spec.node_name,
            host_network: spec.host_network,
            readiness_gates: spec.readiness_gates,
            ..Default::default()
        });
    }
    if let Some(status) = p.status.take() {
        p.status = Some(PodStatus {
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            phase: status.phase,
            conditions: status.conditions.map(|c| {
                c.into_iter()
                    .filter(|c| c.type_ == READINESS_GATE)
                    .collect()
            }),
            ..Default::default()
        });
    }
}

/// The pod readiness gate netlet sets: a pod that lists it in `spec.readinessGates` is Ready
/// only once netlet says its network is programmed, so a rollout waits for the network.
pub const READINESS_GATE: &str = "netlet.io/network-programmed";

/// How often pods waiting on [`READINESS_GATE`] are looked at.
const GATE_CHECK: Duration = Duration::from_secs(1);

/// Whether the data plane holds everything now wanted: every object source read, and every
/// Services and Policy driver acknowledging the generation of the node's Service view and
/// policy table (so whatever Services a pod may need and whatever policies select it are in).
async fn programmed(host: &Host) -> bool {
    use netlet_sdk::proto::Capability;
    if !host.sources_loaded() {
        return false;
    }
    let services = host.services.lock().await.table.generation();
    let policies = host.policies.lock().await.table.generation();
    let acked = |g: &std::sync::Mutex<u64>, want: u64| g.lock().is_ok_and(|g| *g == want);
    host.registry
        .with_capability(Capability::Services)
        .iter()
        .all(|d| acked(&d.services_generation, services))
        && host
            .registry
            .with_capability(Capability::Policy)
            .iter()
            .all(|d| acked(&d.policy_generation, policies))
}

/// Sets [`READINESS_GATE`] True on each pod attached on this node whose Pod object asks for
/// it, once the network is programmed ([`programmed`]). Set once: a later Service or policy
/// change elsewhere does not take a running pod out of its Services.
async fn readiness_gates(host: Arc<Host>, client: Client, pods: Store<Pod>) {
    let mut tick = tokio::time::interval(GATE_CHECK);
    let mut done: std::collections::HashSet<String> = Default::default();
    loop {
        tick.tick().await;
        let attached = match host.store.attachments() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let waiting: Vec<Arc<Pod>> = attached
            .iter()
            .filter_map(|a| a.sandbox.as_ref())
            .filter_map(|s| pods.get(&reflector::ObjectRef::new(&s.name).within(&s.namespace)))
            .filter(|p| {
                let gated = p.spec.as_ref().is_some_and(|s| {
                    s.readiness_gates
                        .iter()
                        .flatten()
                        .any(|g| g.condition_type == READINESS_GATE)
                });
                let set = p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == READINESS_GATE && c.status == "True")
                });
                gated && !set && !done.contains(p.metadata.uid.as_deref().unwrap_or_default())
            })
            .collect();
        if waiting.is_empty() || !programmed(&host).await {
            continue;
        }
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap_or_default();
        for p in waiting {
            let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
                continue;
            };
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": READINESS_GATE,
                "status": "True",
                "reason": "NetworkProgrammed",
                "message": "netlet: the pod's attachments, Services and policies are in the data plane",
                "lastTransitionTime": now,
            }]}});
            match Api::<Pod>::namespaced(client.clone(), ns)
                .patch_status(
                    name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Strategic(patch),
                )
                .await
            {
                Ok(_) => {
                    done.insert(p.metadata.uid.clone().unwrap_or_default());
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "readiness gate not set; retrying")
                }
            }
        }
    }
}

/// The last error of each kind's watch (kind → why), until it next succeeds.
type WatchErrors = Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>;

/// Each kind followed, by name.
type Resources = Arc<std::sync::Mutex<std::collections::BTreeMap<String, ApiResource>>>;

/// How often a kind whose watch failed is listed to see whether it is readable again.
const RECHECK: Duration = Duration::from_secs(2);

/// A watch that resumes after an error says nothing until the next change, so whether a
/// failing kind is readable again is asked directly (a one-item metadata list, with the same
/// credentials): its error goes once it is.
async fn recheck(
    client: Client,
    errors: WatchErrors,
    resources: Resources,
    tx: tokio::sync::mpsc::Sender<()>,
) {
    let mut tick = tokio::time::interval(RECHECK);
    loop {
        tick.tick().await;
        let failing: Vec<(String, ApiResource)> = {
            let (Ok(e), Ok(r)) = (errors.lock(), resources.lock()) else {
                return;
            };
            e.keys()
                .filter_map(|k| Some((k.clone(), r.get(k)?.clone())))
                .collect()
        };
        for (kind, ar) in failing {
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            if api
                .list_metadata(&kube::api::ListParams::default().limit(1))
                .await
                .is_ok()
                && errors.lock().is_ok_and(|mut e| e.remove(&kind).is_some())
            {
                let _ = tx.try_send(());
            }
        }
    }
}

/// Follows one kind into `writer`: an error is logged and kept in `errors` until the watch
/// next succeeds (the watcher retries with backoff); any event wakes the applier, and is handed
/// to `each` (which sees one object per event: per-object consumers such as the node table).
fn follow<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    strip: fn(&mut K),
    tx: tokio::sync::mpsc::Sender<()>,
    what: String,
    errors: WatchErrors,
    mut each: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    tokio::spawn(
        reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(strip),
        )
        .for_each(move |ev| {
            if let Ok(ev) = &ev {
                each(ev);
            }
            if let Ok(mut m) = errors.lock() {
                match ev {
                    Err(e) => {
                        tracing::warn!(kind = %what, error = %e, "Kubernetes watch failed; retrying with backoff");
                        m.insert(what.clone(), e.to_string());
                    }
                    Ok(_) => {
                        m.remove(&what);
                    }
                }
            }
            let _ = tx.try_send(());
            std::future::ready(())
        }),
    )
}

/// What the watches changed since the applier last looked: Services to look at again (a
/// Service or EndpointSlice event names one), whether a relist of either kind ended (every
/// Service is looked at again) and whether any other kind changed.
#[derive(Debug, Default)]
struct Pending {
    dirty: BTreeSet<Key>,
    relisted: bool,
    others: bool,
}

type Shared<T> = Arc<std::sync::Mutex<T>>;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which EndpointSlices (by namespace and name) belong to which Service, as the watch last
/// said: an EndpointSlice's event names the Service it belonged to before as well as the one it
/// belongs to now.
#[derive(Debug, Default)]
struct SliceIndex {
    service_of: HashMap<(String, String), Key>,
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// Being listed again: the index the relist is building.
    next: Option<Box<SliceIndex>>,
}

impl SliceIndex {
    /// Files slice `id` under `service` (none: under nothing); returns the Service it was under.
    fn set(&mut self, id: (String, String), service: Option<Key>) -> Option<Key> {
        let old = self.service_of.remove(&id);
        if let Some(o) = &old
            && let Some(set) = self.slices_of.get_mut(o)
        {
            set.remove(&id.1);
            if set.is_empty() {
                self.slices_of.remove(o);
            }
        }
        if let Some(svc) = service {
            self.slices_of
                .entry(svc.clone())
                .or_default()
                .insert(id.1.clone());
            self.service_of.insert(id, svc);
        }
        old
    }
}

fn service_key(s: &Service) -> Option<Key> {
    Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?))
}

fn slice_id(s: &EndpointSlice) -> Option<((String, String), Option<Key>)> {
    let id = (s.metadata.namespace.clone()?, s.metadata.name.clone()?);
    let svc = super::view::slice_service(s).map(|k| (k.namespace, k.name));
    Some((id, svc))
}

/// The hook of the Service watch: each event names its Service.
fn on_service(pending: Shared<Pending>) -> impl FnMut(&watcher::Event<Service>) + Send + 'static {
    move |ev| match ev {
        watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
            if let Some(k) = service_key(s) {
                lock(&pending).dirty.insert(k);
            }
        }
        watcher::Event::InitDone => lock(&pending).relisted = true,
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// The hook of the EndpointSlice watch: each event names the Service the slice belongs to, and
/// the one it belonged to.
fn on_slice(
    pending: Shared<Pending>,
    index: Shared<SliceIndex>,
) -> impl FnMut(&watcher::Event<EndpointSlice>) + Send + 'static {
    move |ev| {
        let mut idx = lock(&index);
        match ev {
            watcher::Event::Apply(s) => {
                let Some((id, svc)) = slice_id(s) else { return };
                let old = idx.set(id, svc.clone());
                let mut p = lock(&pending);
                p.dirty.extend(old);
                p.dirty.extend(svc);
            }
            watcher::Event::Delete(s) => {
                let Some((id, _)) = slice_id(s) else { return };
                let old = idx.set(id, None);
                lock(&pending).dirty.extend(old);
            }
            watcher::Event::Init => idx.next = Some(Box::default()),
            watcher::Event::InitApply(s) => {
                if let (Some(next), Some((id, svc))) = (idx.next.as_mut(), slice_id(s)) {
                    next.set(id, svc);
                }
            }
            watcher::Event::InitDone => {
                if let Some(next) = idx.next.take() {
                    *idx = *next;
                }
                lock(&pending).relisted = true;
            }
        }
    }
}

/// The hook of every other kind: something changed.
fn on_other<K>(pending: Shared<Pending>) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    move |ev| {
        if !matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_)) {
            lock(&pending).others = true;
        }
    }
}

/// The stores of every kind followed.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    network_policies: Store<NetworkPolicy>,
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    ingresses: Store<Ingress>,
    dynamic: Vec<(String, Store<DynamicObject>)>,
    errors: WatchErrors,
    resources: Resources,
    pending: Shared<Pending>,
    index: Shared<SliceIndex>,
}

impl Stores {
    async fn ready(&self) -> bool {
        let typed = self.services.wait_until_ready().await.is_ok()
            && self.slices.wait_until_ready().await.is_ok()
            && self.network_policies.wait_until_ready().await.is_ok()
            && self.namespaces.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await.is_ok()
            && self.nodes.wait_until_ready().await.is_ok()
            && self.ingresses.wait_until_ready().await.is_ok();
        for (_, s) in &self.dynamic {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        typed
    }

    /// What is held besides Services and EndpointSlices, as the manifests' objects (copied:
    /// far fewer than those in a large cluster).
    fn objects(&self) -> Objects {
        fn all<K: Clone + Resource>(s: &Store<K>) -> Vec<K>
        where
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            s.state().iter().map(|o| o.as_ref().clone()).collect()
        }
        let mut o = Objects {
            network_policies: all(&self.network_policies),
            namespaces: all(&self.namespaces),
            pods: all(&self.pods),
            nodes: all(&self.nodes),
            ..Default::default()
        };
        for (kind, s) in &self.dynamic {
            let state = s.state();
            let values = state
                .iter()
                .filter_map(|d| serde_json::to_value(d.as_ref()).ok());
            match kind.as_str() {
                "DnsPolicy" => o.dns_policies.extend(values),
                "HostnameGrant" => o.hostname_grants.extend(values),
                k if crate::hostnames::is_claiming_kind(k) => {
                    // A list's items may come without their kind.
                    o.claimers.extend(values.map(|mut v| {
                        v["kind"] = serde_json::Value::String(kind.clone());
                        v
                    }))
                }
                _ => o.cluster_policies.extend(values),
            }
        }
        o.claimers.extend(
            self.ingresses
                .state()
                .iter()
                .filter_map(|i| serde_json::to_value(i.as_ref()).ok()),
        );
        o
    }
}

/// How often the node's network state is compared with what its Node object last got (besides
/// at every change of the drivers' registrations and health).
const NODE_REPORT: Duration = Duration::from_secs(2);

/// The condition netlet keeps on its Node besides `NetworkUnavailable`.
pub const NODE_CONDITION: &str = "NetletNetworkReady";

/// Reports the node's network state on its Node object (`settings.node.name`), as network
/// plugins do: `NetworkUnavailable` False once the network is ready (True, reason
/// `NetletNotReady`, while it is not: the node controller then keeps new pods off the node),
/// and [`NODE_CONDITION`] with the host's readiness reason and message. Patched (strategic
/// merge on the condition type) only when the state changed; a Node that does not exist yet or
/// a refused patch is retried.
pub async fn report_node(host: Arc<Host>, client: Client) {
    let name = host.settings.node.name.clone();
    let nodes: Api<Node> = Api::all(client);
    let mut last: Option<(bool, String, String)> = None;
    let mut tick = tokio::time::interval(NODE_REPORT);
    // Registrations and health: a change is reported at once (a node turns Ready as soon as
    // the runtime sees the CNI configuration the host writes when ready), the tick retries.
    let mut changes = host.registry.subscribe();
    let mut shutdown = std::pin::pin!(crate::stopped(host.shutdown.clone()));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = changes.changed() => if r.is_err() { return },
            () = &mut shutdown => return,
        }
        let r = host.readiness("");
        let now = (r.ready, r.reason.clone(), r.message.clone());
        if last.as_ref() == Some(&now) {
            continue;
        }
        let ts = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap_or_default();
        let flipped = last.as_ref().is_none_or(|l| l.0 != now.0);
        let condition = |kind: &str, status: bool, reason: &str, message: &str| {
            let mut c = serde_json::json!({
                "type": kind,
                "status": if status { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": ts,
            });
            if flipped {
                c["lastTransitionTime"] = ts.clone();
            }
            c
        };
        let (reason, message) = if r.ready {
            ("NetletReady", "netlet's drivers are ready".to_string())
        } else {
            ("NetletNotReady", format!("{}: {}", r.reason, r.message))
        };
        let patch = serde_json::json!({"status": {"conditions": [
            condition("NetworkUnavailable", !r.ready, reason, &message),
            condition(NODE_CONDITION, r.ready, if r.ready { "Ready" } else { &r.reason }, &message),
        ]}});
        match nodes
            .patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => last = Some(now),
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "node conditions not reported; retrying")
            }
        }
    }
}

/// Follows the API server until shutdown.
pub async fn watch(host: Arc<Host>, client: Client) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut tasks = Vec::new();
    let errors = WatchErrors::default();
    let resources = Resources::default();
    let pending = Shared::<Pending>::default();
    let index = Shared::<SliceIndex>::default();
    macro_rules! typed {
        ($k:ty, $strip:expr) => {
            typed!($k, $strip, on_other::<$k>(pending.clone()))
        };
        ($k:ty, $strip:expr, $each:expr) => {{
            let (store, writer) = reflector::store::<$k>();
            if let Ok(mut r) = resources.lock() {
                r.insert(
                    <$k as Resource>::kind(&()).to_string(),
                    ApiResource::erase::<$k>(&()),
                );
            }
            tasks.push(follow(
                Api::<$k>::all(client.clone()),
                writer,
                $strip,
                tx.clone(),
                <$k as Resource>::kind(&()).to_string(),
                errors.clone(),
                $each,
            ));
            store
        }};
    }
    let mut node_table =
        crate::cluster::convert::follower(host.nodes.clone(), host.settings.node.name.clone());
    let mut node_other = on_other::<Node>(pending.clone());
    let mut stores = Stores {
        services: typed!(Service, strip_meta, on_service(pending.clone())),
        slices: typed!(
            EndpointSlice,
            strip_slice,
            on_slice(pending.clone(), index.clone())
        ),
        network_policies: typed!(NetworkPolicy, strip_meta),
        namespaces: typed!(Namespace, strip_meta),
        pods: typed!(Pod, strip_pod),
        nodes: typed!(Node, strip_meta, move |ev: &watcher::Event<Node>| {
            node_table(ev);
            node_other(ev);
        }),
        ingresses: typed!(Ingress, strip_meta),
        dynamic: Vec::new(),
        errors: errors.clone(),
        resources: resources.clone(),
        pending: pending.clone(),
        index: index.clone(),
    };
    tasks.push(tokio::spawn(readiness_gates(
        host.clone(),
        client.clone(),
        stores.pods.clone(),
    )));
    tasks.push(tokio::spawn(recheck(
        client.clone(),
        errors.clone(),
        resources.clone(),
        tx.clone(),
    )));
    let mut shutdown = std::pin::pin!(crate::stopped(host.shutdown.clone()));
    // Which optional kinds are served is known once the API server answers; until then (it may
    // start after the node) discovery is retried.
    let mut absent: Vec<(&str, &str, &str)> = DYNAMIC.to_vec();
    absent.extend(
        crate::hostnames::KINDS
            .iter()
            .filter(|k| k.2 != "Ingress")
            .copied(),
    );
    let mut backoff = Duration::from_millis(200);
    loop {
        let transient = discover(&client, &mut absent, &mut stores, &mut tasks, &tx).await;
        if !transient {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(10)),
            () = &mut shutdown => {
                tasks.iter().for_each(|t| t.abort());
                return;
            }
        }
    }
    // Nothing is applied before every kind has been listed once: an empty store is not "no
    // Services". Meanwhile what keeps a kind from being listed (RBAC, the API server away) is
    // reported.
    {
        let mut ready = std::pin::pin!(stores.ready());
        loop {
            tokio::select! {
                ok = &mut ready => if ok { break } else { return },
                Some(()) = rx.recv() => publish(&host, &errors, Vec::new()),
                () = &mut shutdown => {
                    tasks.iter().for_each(|t| t.abort());
                    return;
                }
            }
        }
    }
    tracing::info!(
        services = stores.services.len(),
        endpoint_slices = stores.slices.len(),
        network_policies = stores.network_policies.len(),
        pods = stores.pods.len(),
        "Kubernetes API listed"
    );
    // A kind not served at the start (its CRD applied after the node came up) is looked for
    // again now and then.
    let mut rediscover = tokio::time::interval(REDISCOVER);
    rediscover.reset();
    let mut applier = Applier::default();
    let mut first = true;
    loop {
        let p = std::mem::take(&mut *lock(&pending));
        let all_loaded = if first || p.relisted {
            applier.all_services(&host, &stores).await
        } else {
            applier.some_services(&host, &stores, p.dirty).await;
            false
        };
        if first || p.others || applier.claims_changed {
            applier.objects(&host, &stores, all_loaded).await;
        }
        first = false;
        publish(&host, &errors, applier.errors());
        tokio::select! {
            Some(()) = rx.recv() => {
                // Other kinds come in bursts (a rollout's Pods): applied together. A Service or
                // EndpointSlice change alone is applied at once.
                if lock(&pending).others {
                    tokio::time::sleep(SETTLE).await;
                }
            }
            _ = rediscover.tick(), if !absent.is_empty() => {
                let before = stores.dynamic.len();
                discover(&client, &mut absent, &mut stores, &mut tasks, &tx).await;
                for (kind, s) in &stores.dynamic[before..] {
                    if s.wait_until_ready().await.is_err() {
                        tracing::warn!(kind, "Kubernetes kind not listed");
                    }
                }
                lock(&pending).others = true;
                continue;
            }
            () = &mut shutdown => break,
        }
        while rx.try_recv().is_ok() {}
    }
    tasks.iter().for_each(|t| t.abort());
}

/// What the Kubernetes source last applied, kept to change it one Service at a time: what was
/// left out of each Service (or refused), the hostname claims each Service makes, and what the
/// other kinds left out.
#[derive(Default)]
struct Applier {
    left_out: BTreeMap<Key, Vec<String>>,
    refused: BTreeMap<Key, String>,
    claim_conflicts: Vec<String>,
    claims: BTreeMap<Key, Vec<crate::hostnames::Claim>>,
    /// A Service's hostname claims changed since the other kinds were applied.
    claims_changed: bool,
    others: Vec<String>,
}

impl Applier {
    /// Every error, in a stable order: the other kinds', then each Service's.
    fn errors(&self) -> Vec<String> {
        let mut out = self.others.clone();
        out.extend(self.left_out.values().flatten().cloned());
        out.extend(self.refused.values().cloned());
        out.extend(self.claim_conflicts.iter().cloned());
        out
    }

    /// What netlet wants of one Service as the stores hold it (`None`: nothing), and what was
    /// left out of it.
    fn wanted(host: &Host, key: &Key, o: &ServiceObject) -> (Option<Wanted>, Vec<String>) {
        let mine: Vec<(String, &EndpointSlice)> = o
            .slices
            .iter()
            .map(|s| (ORIGIN.to_string(), s.as_ref()))
            .collect();
        match wanted_one(
            ORIGIN,
            &o.service,
            |_| &mine,
            &host.settings.node,
            &host.settings.node_port_range,
        ) {
            Some((k, w, e)) if &k == key => (w, e),
            _ => (None, Vec::new()),
        }
    }

    fn set_claims(&mut self, key: &Key, o: Option<&ServiceObject>) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let claims = o
            .map(|o| crate::hostnames::service_claims(&o.service, now))
            .unwrap_or_default();
        let had = self.claims.get(key).map(Vec::as_slice).unwrap_or(&[]);
        if had != claims.as_slice() {
            self.claims_changed = true;
        }
        if claims.is_empty() {
            self.claims.remove(key);
        } else {
            self.claims.insert(key.clone(), claims);
        }
    }

    /// Every Service again (the first time, and after a relist). Returns whether this was the
    /// first read of the last source unread.
    async fn all_services(&mut self, host: &Arc<Host>, stores: &Stores) -> bool {
        let objects = crate::dns::group_services(stores.services.state(), stores.slices.state());
        let mut wanted = BTreeMap::new();
        self.left_out.clear();
        self.claims.clear();
        self.claims_changed = true;
        for (key, o) in &objects {
            let (w, e) = Self::wanted(host, key, o);
            if let Some(w) = w {
                wanted.insert(key.clone(), w);
            }
            if !e.is_empty() {
                self.left_out.insert(key.clone(), e);
            }
            self.set_claims(key, Some(o));
        }
        for e in self.left_out.values().flatten() {
            tracing::error!(source = ORIGIN, error = %e, "object left out");
        }
        let (refused, conflicts, all_loaded) =
            replace_services(host, Source::Kubernetes, wanted, ORIGIN).await;
        self.refused = refused;
        self.claim_conflicts = conflicts;
        host.refresh_dns_zone(Some((Source::Kubernetes, objects)))
            .await;
        all_loaded
    }

    /// The Services `keys` only, as the stores hold them now.
    async fn some_services(&mut self, host: &Arc<Host>, stores: &Stores, keys: BTreeSet<Key>) {
        if keys.is_empty() {
            return;
        }
        let mut changes = BTreeMap::new();
        let mut zone = Vec::new();
        for key in keys {
            let service = stores
                .services
                .get(&reflector::ObjectRef::new(&key.1).within(&key.0));
            let names: Vec<String> = lock(&stores.index)
                .slices_of
                .get(&key)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            let slices: Vec<Arc<EndpointSlice>> = names
                .iter()
                .filter_map(|n| {
                    stores
                        .slices
                        .get(&reflector::ObjectRef::new(n).within(&key.0))
                })
                .collect();
            let o = service.map(|service| ServiceObject { service, slices });
            let (w, e) = o
                .as_ref()
                .map(|o| Self::wanted(host, &key, o))
                .unwrap_or_default();
            for e in &e {
                tracing::error!(source = ORIGIN, error = %e, "object left out");
            }
            if e.is_empty() {
                self.left_out.remove(&key);
            } else {
                self.left_out.insert(key.clone(), e);
            }
            self.set_claims(&key, o.as_ref());
            self.refused.remove(&key);
            changes.insert(key.clone(), w);
            zone.push((key, o));
        }
        let (refused, conflicts) = update_services(host, Source::Kubernetes, changes, ORIGIN).await;
        for (key, why) in refused {
            tracing::error!(source = ORIGIN, error = %why, "Service not applied: another source owns it");
            self.refused.insert(key, why);
        }
        for m in conflicts
            .iter()
            .filter(|m| !self.claim_conflicts.contains(m))
        {
            tracing::error!(source = ORIGIN, conflict = %m, "Service asks for what another holds");
        }
        self.claim_conflicts = conflicts;
        host.update_dns_zone(Some((Source::Kubernetes, zone)), [])
            .await;
    }

    /// Everything but Services and EndpointSlices: policies, the pods and namespaces they
    /// select, hostname claims.
    async fn objects(&mut self, host: &Arc<Host>, stores: &Stores, all_loaded: bool) {
        let m = Manifests::of(ORIGIN, stores.objects());
        let claims = self.claims.values().flatten().cloned().collect();
        self.claims_changed = false;
        let mut errors = m.errors();
        errors
            .extend(apply_objects(host, Source::Kubernetes, &m, claims, all_loaded, ORIGIN).await);
        self.others = errors;
    }
}

/// The source's errors as `netletctl debug state` shows them: `applied` (objects left out),
/// then each kind whose watch is failing (`kubernetes: watch Service: why`).
fn publish(host: &Host, errors: &WatchErrors, mut applied: Vec<String>) {
    applied.retain(|e| !e.starts_with(&format!("{ORIGIN}: watch ")));
    if let Ok(w) = errors.lock() {
        applied.extend(w.iter().map(|(k, e)| format!("{ORIGIN}: watch {k}: {e}")));
    }
    if let Ok(mut all) = host.source_errors.lock() {
        all.insert(Source::Kubernetes, applied);
    }
}

/// Starts following each kind of `absent` the API server serves (taking it out of `absent`).
/// True when the API server could not be asked about one (retry later); a kind it answers is
/// not served stays in `absent`.
async fn discover(
    client: &Client,
    absent: &mut Vec<(&str, &str, &str)>,
    stores: &mut Stores,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    tx: &tokio::sync::mpsc::Sender<()>,
) -> bool {
    let mut transient = false;
    let mut still = Vec::new();
    for (group, version, kind) in absent.drain(..) {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok((ar, _)) => {
                tracing::info!(kind, group, version, "Kubernetes kind served; followed");
                if let Ok(mut r) = stores.resources.lock() {
                    r.insert(kind.to_string(), ar.clone());
                }
                let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
                stores.dynamic.push((kind.to_string(), writer.as_reader()));
                tasks.push(follow(
                    Api::<DynamicObject>::all_with(client.clone(), &ar),
                    writer,
                    strip_meta,
                    tx.clone(),
                    kind.to_string(),
                    stores.errors.clone(),
                    on_other::<DynamicObject>(stores.pending.clone()),
                ));
            }
            Err(e) => {
                let answered = matches!(&e, kube::Error::Discovery(_))
                    || matches!(&e, kube::Error::Api(s) if s.code == 404);
                if answered {
                    tracing::debug!(
                        kind,
                        group,
                        version,
                        "Kubernetes kind not served; looked for again later"
                    );
                } else {
                    tracing::warn!(kind, group, version, error = %e, "Kubernetes API discovery failed; retrying");
                    transient = true;
                }
                still.push((group, version, kind));
            }
        }
    }
    *absent = still;
    transient
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        let mut docs = netlet_sdk::yaml::documents::<serde_json::Value>(text).unwrap();
        serde_json::from_value(docs.remove(0)).unwrap()
    }

    /// What is read survives the stripping: a Service's topology mode (it turns on
    /// PreferClose), an EndpointSlice endpoint's address, conditions, node, zone and hints, a Pod's labels, node, named ports, addresses, gates and netlet's condition.
    #[test]
    fn stripping_keeps_what_is_read() {
        let mut svc: Service = yaml(
            "metadata: {name: web, namespace: shop, annotations: {service.kubernetes.io/topology-mode: Auto, kubectl.kubernetes.io/last-applied-configuration: '{}'}, managedFields: [{manager: kubectl}]}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n",
        );
        strip_meta(&mut svc);
        assert_eq!(
            svc.metadata
                .annotations
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [(
                "service.kubernetes.io/topology-mode".to_string(),
                "Auto".to_string()
            )]
        );
        assert!(svc.metadata.managed_fields.is_none());

        let mut slice: EndpointSlice = yaml(
            "metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.1.5], conditions: {ready: true, serving: true}, nodeName: n1, zone: z1, hints: {forZones: [{name: z1}]}, targetRef: {kind: Pod, namespace: shop, name: web-1, uid: 0b8d}}]\n",
        );
        strip_slice(&mut slice);
        let want: EndpointSlice = yaml(
            "metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.1.5], conditions: {ready: true, serving: true}, nodeName: n1, zone: z1, hints: {forZones: [{name: z1}]}}]\n",
        );
        assert_eq!(slice, want);

        let mut pod: Pod = yaml(
            "metadata: {name: p, namespace: shop, labels: {app: web}, annotations: {a: b}}\nspec: {nodeName: n1, readinessGates: [{conditionType: netlet.io/network-programmed}], containers: [{name: c, image: x, command: [sleep], env: [{name: A, value: B}], ports: [{name: http, containerPort: 8080}]}]}\nstatus: {phase: Running, podIP: 10.244.0.5, podIPs: [{ip: 10.244.0.5}], hostIP: 192.0.2.1, conditions: [{type: Ready, status: 'True'}, {type: netlet.io/network-programmed, status: 'True'}]}\n",
        );
        strip_pod(&mut pod);
        let want: Pod = yaml(
            "metadata: {name: p, namespace: shop, labels: {app: web}}\nspec: {nodeName: n1, readinessGates: [{conditionType: netlet.io/network-programmed}], containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}\nstatus: {phase: Running, podIP: 10.244.0.5, podIPs: [{ip: 10.244.0.5}], conditions: [{type: netlet.io/network-programmed, status: 'True'}]}\n",
        );
        assert_eq!(pod, want);
    }
}
