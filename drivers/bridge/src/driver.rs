//! The bridge driver's state and its attach/detach logic: pools, persisted attachments and
//! the data plane, kept consistent under per-interface locks.
//!
//! Order of an attach: addresses are reserved in memory, the attachment record is written
//! durably, then the data plane is built. A crash after the write leaves a record whose veth
//! may be missing; a repeated AttachPod (the host replays its attachments whenever the driver
//! registers) finds the record, sees the veth missing and builds it again with the same
//! addresses.
//!
//! Detach removes the record (without waiting for the disk) and answers; the veth is deleted
//! by the [`Reaper`] behind it, and only then are its addresses free again, so nothing can
//! still send from an address handed to another pod. An attach that needs the name, or the
//! pod-side interface, of a veth still being deleted waits for it. A crash before the veth is
//! gone leaves a veth without a record (removed by the sweep at start); a crash before the
//! removal reached the disk brings the record back, and the host's replay or its sweep of
//! orphans settles it.

use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use netlet_sdk::proto::{
    Attachment, Condition, ConditionStatus, IpConfig, IpFamily, NetworkReadiness, NetworkSelection,
    PodAttachments, PodSandbox, Route,
};
use netlet_sdk::state::KeyLocks;
use netlet_sdk::store::Store;
use netlet_sdk::validate::{field_error, invalid, reason_error};
use prost::Message;
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::bandwidth;
use crate::config::NetworkConfig;
use crate::ipam::{IpamError, Pool};
use crate::netlink::{self, Netlink, NlError};
use crate::reaper::Reaper;

const TABLE: &str = "attachments";

/// The step named when the pod already has a link of the requested name.
const POD_INTERFACE_EXISTS: &str = "pod interface";

/// One served network.
struct Network {
    cfg: NetworkConfig,
    pools: Vec<Pool>,
    bridge_index: Option<u32>,
    problem: Option<(String, String)>,
}

impl Network {
    fn gateways(&self) -> Vec<IpNet> {
        self.pools
            .iter()
            .filter_map(|p| IpNet::new(p.gateway(), p.subnet().prefix_len()).ok())
            .collect()
    }
}

struct Reaping {
    netns: String,
    ifname: String,
    done: watch::Receiver<bool>,
}

struct State {
    networks: BTreeMap<String, Network>,
    /// `sandbox/ifname` → the record (sandbox + one attachment).
    records: HashMap<String, PodAttachments>,
}

/// The driver.
pub struct Bridge {
    name: String,
    /// Whether the masquerade table matches the configuration.
    masquerade_done: std::sync::atomic::AtomicBool,
    /// Whether the anti-spoofing table was made whole from the records (no attach before).
    guard_done: std::sync::atomic::AtomicBool,
    /// Host-side veths the anti-spoofing table has a chain for.
    guarded: Mutex<std::collections::HashSet<String>>,
    state_dir: PathBuf,
    store: Mutex<Option<Store>>,
    state: Mutex<State>,
    locks: KeyLocks,
    nl: Netlink,
    reaper: Reaper,
    /// Veths being deleted: host-side name → (pod namespace, pod-side name, done).
    reaping: Mutex<HashMap<String, Reaping>>,
    ready_tx: watch::Sender<NetworkReadiness>,
    /// The cluster's pod and Service CIDRs (never masqueraded to).
    cluster_cidrs: Vec<IpNet>,
    /// How other nodes' pods are reached.
    routing: crate::routes::Mode,
    /// The node table and the routes made from it (one batch at a time).
    cluster: tokio::sync::Mutex<Cluster>,
    /// Nodes not routed, with why (for readiness, read without waiting for a batch).
    unrouted: Mutex<(usize, BTreeMap<String, String>)>,
}

/// The cluster's nodes as the host sent them, and the routes to their pods.
struct Cluster {
    table: netlet_sdk::nodes::NodeTable,
    routes: crate::routes::Routes,
}

/// Why a network that takes its subnets from the node is not ready before they come.
const POD_CIDR_PENDING: &str = "PodCIDRPending";

/// The lock of a whole sandbox (its interfaces' keys are `sandbox/ifname`; no interface name
/// is empty, so this one is apart from them).
fn sandbox_lock(sandbox_id: &str) -> String {
    format!("{sandbox_id}/")
}

fn key(sandbox_id: &str, ifname: &str) -> String {
    format!("{sandbox_id}/{ifname}")
}

fn internal(e: NlError) -> Status {
    Status::internal(format!("data plane: {e}"))
}

fn family(ip: &IpAddr) -> i32 {
    if ip.is_ipv4() {
        IpFamily::Ipv4 as i32
    } else {
        IpFamily::Ipv6 as i32
    }
}

fn default_route(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse().ok()
}

impl Bridge {
    /// A driver for `networks`, its records under `state_dir`. Nothing is touched yet: call
    /// [`Bridge::reconcile`] (and keep calling it) to open the store and build the bridges.
    pub fn new(
        name: &str,
        networks: Vec<NetworkConfig>,
        cluster_cidrs: Vec<IpNet>,
        routing: crate::routes::Mode,
        state_dir: &Path,
    ) -> Result<Arc<Self>, NlError> {
        let nets = networks
            .into_iter()
            .map(|cfg| {
                let pools = cfg.subnets.iter().map(|s| Pool::new(*s)).collect();
                (
                    cfg.name.clone(),
                    Network {
                        cfg,
                        pools,
                        bridge_index: None,
                        problem: Some(("Starting".into(), "bridge not set up yet".into())),
                    },
                )
            })
            .collect();
        let (ready_tx, _) = watch::channel(NetworkReadiness {
            ready: false,
            reason: "Starting".into(),
            message: "bridge driver starting".into(),
            conditions: vec![],
        });
        Ok(Arc::new(Self {
            masquerade_done: false.into(),
            guard_done: false.into(),
            guarded: Mutex::default(),
            name: name.to_string(),
            state_dir: state_dir.to_path_buf(),
            store: Mutex::new(None),
            state: Mutex::new(State {
                networks: nets,
                records: HashMap::new(),
            }),
            locks: KeyLocks::default(),
            nl: Netlink::connect()?,
            reaper: Reaper::start()?,
            reaping: Mutex::new(HashMap::new()),
            ready_tx,
            cluster_cidrs,
            cluster: tokio::sync::Mutex::new(Cluster {
                table: Default::default(),
                routes: crate::routes::Routes::new(routing),
            }),
            routing,
            unrouted: Mutex::default(),
        }))
    }

    /// The networks served.
    pub fn network_names(&self) -> Vec<String> {
        self.lock().networks.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reaping_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reaping>> {
        self.reaping.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no veth named `host_veth`, and none whose pod side is `ifname` in `netns`,
    /// is being deleted.
    async fn reaped(&self, host_veth: &str, netns: &str, ifname: &str) {
        let pending: Vec<watch::Receiver<bool>> = self
            .reaping_lock()
            .iter()
            .filter(|(h, r)| *h == host_veth || (r.netns == netns && r.ifname == ifname))
            .map(|(_, r)| r.done.clone())
            .collect();
        for mut done in pending {
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// Waits until every veth being deleted now is gone; returns whether there was any.
    async fn all_reaped(&self) -> bool {
        let pending: Vec<watch::Receiver<bool>> = self
            .reaping_lock()
            .values()
            .map(|r| r.done.clone())
            .collect();
        for mut done in pending.iter().cloned() {
            let _ = done.wait_for(|d| *d).await;
        }
        !pending.is_empty()
    }

    fn store(&self) -> Result<Store, Status> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Status::unavailable("the IPAM store is not open yet; see NetworkReady"))
    }

    /// Opens the store (loading the records and their addresses) if not yet open, sets the
    /// forwarding sysctls, and (re)creates missing bridges; then publishes readiness.
    pub async fn reconcile(&self) {
        let store_problem = self.open_store().err();
        let forwarding = netlink::sysctl("net.ipv4.ip_forward", "1")
            .and_then(|_| netlink::sysctl("net.ipv6.conf.all.forwarding", "1"))
            .err();
        let masquerade = self.ensure_masquerade().err();
        let guard = if store_problem.is_none() {
            self.ensure_guard().err()
        } else {
            None
        };
        if let Some(e) = &guard {
            tracing::warn!(error = %e, "anti-spoofing table not in place; no attach until it is");
        }
        // (config, gateway addresses, whether the bridge was up at the last look)
        let todo: Vec<(NetworkConfig, Vec<IpNet>, bool)> = self
            .lock()
            .networks
            .values()
            .map(|n| (n.cfg.clone(), n.gateways(), n.bridge_index.is_some()))
            .collect();
        for (cfg, gateways, had) in todo {
            let name = cfg.name.clone();
            let present = if had {
                self.nl.link_index(&cfg.bridge).await.ok().flatten()
            } else {
                None
            };
            let outcome = match present {
                Some(i) => Ok(i),
                None => {
                    let r = self
                        .nl
                        .ensure_bridge(
                            &cfg.bridge,
                            cfg.mtu,
                            netlink::bridge_mac(&cfg.bridge),
                            &gateways,
                        )
                        .await;
                    if let Ok(index) = r {
                        tracing::info!(network = %name, bridge = %cfg.bridge, "bridge ready");
                        if had {
                            self.reattach_ports(&name, index).await;
                        }
                    }
                    r
                }
            };
            let mut st = self.lock();
            let Some(n) = st.networks.get_mut(&name) else {
                continue;
            };
            match outcome {
                Ok(i) => {
                    n.bridge_index = Some(i);
                    n.problem = None;
                }
                Err(e) => {
                    tracing::warn!(network = %name, error = %e, "bridge setup failed");
                    n.bridge_index = None;
                    n.problem = Some(("BridgeSetupFailed".into(), e.to_string()));
                }
            }
            if let Some((reason, msg)) = &store_problem {
                n.problem = Some((reason.clone(), msg.clone()));
            }
            if let Some(e) = &forwarding {
                n.problem = Some(("SysctlFailed".into(), e.to_string()));
            }
            if let Some(e) = &masquerade
                && n.cfg.masquerade
            {
                n.problem = Some(("MasqueradeFailed".into(), e.to_string()));
            }
            if let Some(e) = &guard {
                n.problem = Some(("AntiSpoofingFailed".into(), e.to_string()));
            }
            if n.cfg.pod_cidrs_from_node && n.pools.is_empty() {
                n.problem = Some((
                    POD_CIDR_PENDING.into(),
                    "this node's Node object has no spec.podCIDRs in the node table yet".into(),
                ));
            }
        }
        self.publish();
    }

    /// Puts the host veths of `network`'s attachments back on its bridge, after the bridge was
    /// lost and made again (deleting a bridge frees its ports; the pods keep their addresses).
    async fn reattach_ports(&self, network: &str, bridge: u32) {
        let veths: Vec<String> = self
            .lock()
            .records
            .values()
            .flat_map(|r| r.attachments.iter())
            .filter(|a| a.network == network)
            .map(|a| a.host_interface.clone())
            .collect();
        let mut back = 0usize;
        for v in veths {
            match self.nl.set_master(&v, bridge).await {
                Ok(true) => {
                    back += 1;
                    if let Err(e) = self.nl.set_hairpin(&v).await {
                        tracing::warn!(link = %v, error = %e, "cannot set hairpin mode");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(link = %v, error = %e, "cannot put a pod's veth back on its bridge")
                }
            }
        }
        tracing::warn!(
            network,
            ports = back,
            "bridge was recreated; pods' veths put back on it"
        );
    }

    /// Removes host-side veths on this driver's bridges, and ifb devices, that no record
    /// explains: left by an attach that died before its record was written. Call once at
    /// start, before serving.
    pub async fn sweep_leftovers(&self) {
        let (known, bridges): (std::collections::HashSet<String>, Vec<u32>) = {
            let st = self.lock();
            (
                st.records
                    .values()
                    .flat_map(|r| r.attachments.iter().map(|a| a.host_interface.clone()))
                    .collect(),
                st.networks
                    .values()
                    .filter_map(|n| n.bridge_index)
                    .collect(),
            )
        };
        let mut stale = Vec::new();
        for b in bridges {
            match self.nl.ports_of(b).await {
                Ok(ports) => stale.extend(
                    ports
                        .into_iter()
                        .filter(|p| p.starts_with("veth") && !known.contains(p)),
                ),
                Err(e) => tracing::warn!(error = %e, "cannot list bridge ports"),
            }
        }
        let known_ifbs: std::collections::HashSet<String> =
            known.iter().map(|v| bandwidth::ifb_name(v)).collect();
        if let Ok(ifbs) = self.nl.links_named(bandwidth::IFB_PREFIX).await {
            stale.extend(ifbs.into_iter().filter(|i| !known_ifbs.contains(i)));
        }
        for name in stale {
            match self.nl.delete_link(&name).await {
                Ok(_) => {
                    tracing::warn!(link = %name, "removed a leftover link no attachment explains")
                }
                Err(e) => tracing::warn!(link = %name, error = %e, "cannot remove leftover link"),
            }
        }
    }

    /// Makes the driver's nftables table masquerade exactly the configured networks' CIDRs (and
    /// removes a leftover table when none is configured). Done once; retried until it works.
    fn ensure_masquerade(&self) -> Result<(), NlError> {
        use std::sync::atomic::Ordering;
        if self.masquerade_done.load(Ordering::Relaxed) {
            return Ok(());
        }
        let cidrs: Vec<ipnet::IpNet> = self
            .lock()
            .networks
            .values()
            .filter(|n| n.cfg.masquerade)
            .flat_map(|n| n.cfg.subnets.clone())
            .collect();
        match crate::masquerade::apply(&cidrs, &self.cluster_cidrs) {
            Ok(()) => {
                self.masquerade_done.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if cidrs.is_empty() => {
                // Nothing to masquerade: a kernel without nf_tables is fine.
                tracing::debug!(error = %e, "no masquerade table to clean up");
                self.masquerade_done.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the anti-spoofing table guard exactly the recorded pods' ports (once; retried
    /// until it works). Until then no attach proceeds.
    fn ensure_guard(&self) -> Result<(), NlError> {
        use std::sync::atomic::Ordering;
        if self.guard_done.load(Ordering::Acquire) {
            return Ok(());
        }
        let ports: Vec<crate::guard::Port> = self
            .lock()
            .records
            .values()
            .filter_map(|r| r.attachments.first())
            .map(port_of)
            .collect();
        crate::guard::send(crate::guard::table(&ports))?;
        *self.guarded.lock().unwrap_or_else(|p| p.into_inner()) =
            ports.into_iter().map(|p| p.veth).collect();
        self.guard_done.store(true, Ordering::Release);
        Ok(())
    }

    /// Guards `a`'s port (before its veth exists, so its first frame is checked).
    fn guard(&self, a: &Attachment) -> Result<(), NlError> {
        let mut g = self.guarded.lock().unwrap_or_else(|p| p.into_inner());
        let had = g.contains(&a.host_interface);
        crate::guard::send(crate::guard::add(&port_of(a), had))?;
        g.insert(a.host_interface.clone());
        Ok(())
    }

    /// Stops guarding `veth` (its pod is gone: its frames are dropped from now on).
    fn unguard(&self, veth: &str) {
        let mut g = self.guarded.lock().unwrap_or_else(|p| p.into_inner());
        if !g.contains(veth) {
            return;
        }
        match crate::guard::send(crate::guard::remove(veth)) {
            Ok(()) => {
                g.remove(veth);
            }
            Err(e) => tracing::warn!(veth, error = %e, "anti-spoofing chain not removed"),
        }
    }

    fn open_store(&self) -> Result<(), (String, String)> {
        let mut slot = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let store = Store::open(&self.state_dir, "bridge.redb", &[TABLE])
            .map_err(|e| ("IPAMStoreUnavailable".to_string(), e.to_string()))?;
        let rows = store
            .scan(TABLE)
            .map_err(|e| ("IPAMStoreUnavailable".to_string(), e.to_string()))?;
        let mut st = self.lock();
        for (k, v) in rows {
            let rec = match PodAttachments::decode(v.as_slice()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(key = %k, error = %e, "undecodable attachment record kept aside");
                    continue;
                }
            };
            if let Some(a) = rec.attachments.first()
                && let Some(n) = st.networks.get_mut(&a.network)
            {
                let pending = n.cfg.pod_cidrs_from_node && n.pools.is_empty();
                for ip in a.ips.iter().filter_map(|c| parse_cidr(&c.address)) {
                    match n.pools.iter_mut().find(|p| p.contains(ip.addr())) {
                        Some(p) => {
                            if let Err(e) = p.reserve(ip.addr(), &k) {
                                tracing::error!(key = %k, error = %e, "restored address conflicts");
                            }
                        }
                        // Kept when the node's pod CIDRs arrive (see `set_pod_cidrs`).
                        None if pending => {}
                        None => {
                            tracing::warn!(key = %k, ip = %ip.addr(), "restored address is outside today's subnets")
                        }
                    }
                }
            }
            st.records.insert(k, rec);
        }
        tracing::info!(records = st.records.len(), dir = %self.state_dir.display(), "IPAM store open");
        drop(st);
        *slot = Some(store);
        Ok(())
    }

    /// Current readiness (per network conditions; exhaustion reported, not fatal).
    pub fn readiness(&self) -> NetworkReadiness {
        let st = self.lock();
        let mut conditions = Vec::new();
        let mut first_problem: Option<(String, String)> = None;
        let mut exhausted: Vec<String> = Vec::new();
        for n in st.networks.values() {
            let (ok, reason, message) = match &n.problem {
                None => (
                    true,
                    "BridgeReady".to_string(),
                    format!("bridge {} is up", n.cfg.bridge),
                ),
                Some((r, m)) => {
                    if first_problem.is_none() {
                        first_problem = Some((r.clone(), format!("network {}: {m}", n.cfg.name)));
                    }
                    (false, r.clone(), m.clone())
                }
            };
            conditions.push(condition(
                "NetworkReady",
                ok,
                &reason,
                message,
                &n.cfg.name,
                &self.name,
            ));
            for p in &n.pools {
                let (cap, used) = p.usage();
                let free = used as u128 >= cap;
                if free {
                    exhausted.push(format!(
                        "network {}: {} has no free address ({used} of {cap} used)",
                        n.cfg.name,
                        p.subnet()
                    ));
                }
                conditions.push(condition(
                    "AddressesAvailable",
                    !free,
                    if free {
                        "IPAMExhausted"
                    } else {
                        "AddressesFree"
                    },
                    format!("{}: {used} of {cap} used", p.subnet()),
                    &n.cfg.name,
                    &self.name,
                ));
            }
        }
        if st.networks.values().any(|n| n.cfg.pod_cidrs_from_node) {
            let u = self.unrouted.lock().unwrap_or_else(|p| p.into_inner());
            let (routed, unrouted) = (&u.0, &u.1);
            let listed: Vec<String> = unrouted
                .iter()
                .take(10)
                .map(|(n, why)| format!("{n}: {why}"))
                .collect();
            conditions.push(condition(
                "NodesRouted",
                unrouted.is_empty(),
                if unrouted.is_empty() {
                    "AllNodesRouted"
                } else {
                    "NodesUnrouted"
                },
                if unrouted.is_empty() {
                    format!("{routed} other nodes routed")
                } else {
                    format!(
                        "{} of the cluster's nodes are not routed: {}",
                        unrouted.len(),
                        listed.join("; ")
                    )
                },
                "",
                &self.name,
            ));
        }
        match first_problem {
            Some((reason, message)) => NetworkReadiness {
                ready: false,
                reason,
                message,
                conditions,
            },
            None if !exhausted.is_empty() => NetworkReadiness {
                ready: true,
                reason: "IPAMExhausted".into(),
                message: exhausted.join("; "),
                conditions,
            },
            None => NetworkReadiness {
                ready: true,
                reason: String::new(),
                message: String::new(),
                conditions,
            },
        }
    }

    fn publish(&self) {
        let now = self.readiness();
        self.ready_tx.send_if_modified(|old| {
            let changed = old.ready != now.ready
                || old.reason != now.reason
                || old.conditions.len() != now.conditions.len()
                || old
                    .conditions
                    .iter()
                    .zip(&now.conditions)
                    .any(|(a, b)| a.status != b.status || a.reason != b.reason);
            if changed {
                *old = now.clone();
            }
            changed
        });
    }

    /// Readiness changes.
    pub fn watch(&self) -> watch::Receiver<NetworkReadiness> {
        self.ready_tx.subscribe()
    }

    /// Applies one batch of the cluster's node table: this node's pod CIDRs (for a network that
    /// takes them from the node) and the routes to the other nodes' pods, before answering. A
    /// failure to program the kernel forgets the table, so the host's next batch is a full sync.
    pub async fn program_nodes(
        &self,
        req: &netlet_sdk::proto::ProgramNodesRequest,
    ) -> Result<netlet_sdk::proto::ProgramNodesResponse, Status> {
        let mut c = self.cluster.lock().await;
        let (resp, changes) = c.table.apply(req)?;
        // A whole full sync (even one that changes no entry) also checks every route: after a
        // restart of the driver, the kernel's routes are what it finds.
        let whole = req.full_sync && !req.full_sync_continues;
        if changes.is_empty() && !whole {
            return Ok(resp);
        }
        if changes
            .upserted
            .iter()
            .chain(&changes.removed)
            .any(|n| n.local)
        {
            // This node's Node deleted (kubelet registers it again) or without CIDRs: the
            // subnets in use stay, so its pods keep working meanwhile.
            let cidrs = c
                .table
                .local()
                .map(netlet_sdk::nodes::pod_cidrs)
                .unwrap_or_default();
            if !cidrs.is_empty() {
                self.set_pod_cidrs(cidrs).await;
            }
        }
        let own: Vec<IpNet> = self
            .lock()
            .networks
            .values()
            .flat_map(|n| n.cfg.subnets.clone())
            .collect();
        let touched: Vec<String> = changes
            .upserted
            .iter()
            .chain(&changes.removed)
            .map(|n| n.name.clone())
            .collect();
        let Cluster { table, routes } = &mut *c;
        let res = routes
            .apply(&self.nl, table.nodes(), &touched, &own, whole)
            .await;
        *self.unrouted.lock().unwrap_or_else(|p| p.into_inner()) =
            (routes.routed(), routes.unrouted().clone());
        self.publish();
        if let Err(e) = res {
            tracing::warn!(error = %e, "routes to other nodes not programmed");
            *c = Cluster {
                table: Default::default(),
                routes: crate::routes::Routes::new(self.routing),
            };
            return Err(internal(e));
        }
        Ok(resp)
    }

    /// The node table as applied (ListNodes).
    pub async fn cluster_nodes(&self) -> netlet_sdk::proto::ListNodesResponse {
        let c = self.cluster.lock().await;
        netlet_sdk::proto::ListNodesResponse {
            nodes: c.table.nodes().values().cloned().collect(),
            generation: c.table.generation(),
        }
    }

    /// Sets the subnets of the network that takes them from the node: new pods get addresses
    /// from them; the bridge gets their gateways; pods attached before keep their addresses
    /// (a Node recreated with other pod CIDRs needs its pods recreated, as with kubelet).
    async fn set_pod_cidrs(&self, cidrs: Vec<IpNet>) {
        {
            let mut st = self.lock();
            let State { networks, records } = &mut *st;
            for n in networks.values_mut().filter(|n| n.cfg.pod_cidrs_from_node) {
                if n.cfg.subnets == cidrs {
                    continue;
                }
                tracing::info!(network = %n.cfg.name, from = ?n.cfg.subnets, to = ?cidrs, "pod CIDRs from the node");
                n.cfg.subnets = cidrs.clone();
                n.pools = cidrs.iter().map(|s| Pool::new(*s)).collect();
                // The addresses pods hold stay theirs.
                for (k, rec) in records.iter() {
                    for a in rec.attachments.iter().filter(|a| a.network == n.cfg.name) {
                        for ip in a.ips.iter().filter_map(|c| parse_cidr(&c.address)) {
                            if let Some(p) = n.pools.iter_mut().find(|p| p.contains(ip.addr())) {
                                let _ = p.reserve(ip.addr(), k);
                            }
                        }
                    }
                }
                // The bridge gets the new gateways at the next reconcile.
                n.bridge_index = None;
            }
        }
        self.masquerade_done
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.reconcile().await;
    }

    /// Attaches one interface (idempotently; a missing veth of a known record is rebuilt).
    pub async fn attach(
        &self,
        sandbox: &PodSandbox,
        sel: &NetworkSelection,
        field: &str,
    ) -> Result<Attachment, Status> {
        let store = self.store()?;
        let ifname = if sel.interface_name.is_empty() {
            "eth0"
        } else {
            sel.interface_name.as_str()
        };
        // The sandbox's lock, then the interface's: a detach of the sandbox (which takes the
        // sandbox's lock first) waits for an attach in flight instead of finding nothing yet and
        // answering "detached" while the attach goes on to make a pod nobody holds.
        let _s = self.locks.lock(&sandbox_lock(&sandbox.id)).await;
        let k = key(&sandbox.id, ifname);
        let _g = self.locks.lock(&k).await;
        let netns = Path::new(&sandbox.netns_path);
        if !netns.exists() {
            return Err(invalid(
                "sandbox.netns_path",
                format!("{} does not exist", sandbox.netns_path),
            ));
        }
        let limits = bandwidth::limits(sandbox, sel, field).map_err(|(f, why)| invalid(f, why))?;
        self.reaped(
            &netlink::host_veth_name(&sandbox.id, ifname),
            &sandbox.netns_path,
            ifname,
        )
        .await;
        let existing = self.lock().records.get(&k).cloned();
        let (attachment, bridge_index, fresh) = match existing {
            Some(rec) => {
                let a = rec.attachments.first().cloned().unwrap_or_default();
                if a.network != sel.network {
                    return Err(field_error(
                        Code::AlreadyExists,
                        format!("{field}.interface_name"),
                        format!(
                            "{ifname} of sandbox {} is attached to network {:?}",
                            sandbox.id, a.network
                        ),
                        "INTERFACE_IN_USE",
                    ));
                }
                if self
                    .nl
                    .link_index(&a.host_interface)
                    .await
                    .map_err(internal)?
                    .is_some()
                {
                    return Ok(a);
                }
                tracing::warn!(sandbox = %sandbox.id, ifname, "veth of a stored attachment is missing; rebuilding");
                let bi = self.bridge_index(&sel.network, field)?;
                (a, bi, false)
            }
            None => {
                let bi = self.bridge_index(&sel.network, field)?;
                let a = match self.allocate(&k, sandbox, sel, ifname, field) {
                    // The address asked for, or the last free one, may be a detached pod's
                    // whose veth is still being deleted: free in a moment, so wait for it.
                    Err(e)
                        if matches!(e.code(), Code::AlreadyExists | Code::ResourceExhausted)
                            && self.all_reaped().await =>
                    {
                        self.allocate(&k, sandbox, sel, ifname, field)?
                    }
                    r => r?,
                };
                (a, bi, true)
            }
        };
        let rec = PodAttachments {
            sandbox: Some(sandbox.clone()),
            attachments: vec![attachment.clone()],
        };
        // A fresh record is written while the data plane is built. A crash in between leaves a
        // record whose veth is missing (rebuilt by the next AttachPod, which the host replays)
        // or a veth without a record (removed by the sweep at start).
        let build = self.build(netns, &attachment, bridge_index, limits.as_ref(), !fresh);
        let (stored, built) = if fresh {
            tokio::join!(store.put(TABLE, &k, rec.encode_to_vec()), build)
        } else {
            (Ok(()), build.await)
        };
        if stored.is_ok() && built.is_ok() {
            if fresh {
                self.lock().records.insert(k, rec);
                self.publish();
            }
            return Ok(attachment);
        }
        tracing::warn!(sandbox = %sandbox.id, ifname, store = ?stored.as_ref().err(), data_plane = ?built.as_ref().err(), "attach failed; undoing");
        let _ = bandwidth::remove(&self.nl, &attachment.host_interface).await;
        let _ = self.nl.delete_link(&attachment.host_interface).await;
        if fresh {
            if stored.is_ok() {
                self.forget(&store, &k, &attachment).await;
            } else {
                self.release(&k, &attachment);
            }
        }
        match (stored, built) {
            (_, Err(e)) if e.what == POD_INTERFACE_EXISTS => Err(field_error(
                Code::AlreadyExists,
                format!("{field}.interface_name"),
                e.message,
                "INTERFACE_EXISTS",
            )),
            (_, Err(e)) => Err(internal(e)),
            (Err(e), _) => Err(Status::unavailable(format!("IPAM store: {e}"))),
            _ => Err(Status::internal("attach failed")),
        }
    }

    fn bridge_index(&self, network: &str, field: &str) -> Result<u32, Status> {
        let st = self.lock();
        let n = st.networks.get(network).ok_or_else(|| {
            field_error(
                Code::FailedPrecondition,
                format!("{field}.network"),
                format!("driver {} does not serve network {network:?}", self.name),
                "NETWORK_NOT_SERVED",
            )
        })?;
        if n.pools.is_empty() {
            return Err(netlet_sdk::validate::reason_error(
                Code::Unavailable,
                format!(
                    "network {network:?} has no pod CIDRs yet: this node's Node object has no spec.podCIDRs in the node table"
                ),
                "POD_CIDR_PENDING",
            ));
        }
        n.bridge_index.ok_or_else(|| {
            let (r, m) = n.problem.clone().unwrap_or_default();
            Status::unavailable(format!("network {network:?} is not ready: {r}: {m}"))
        })
    }

    fn allocate(
        &self,
        k: &str,
        sandbox: &PodSandbox,
        sel: &NetworkSelection,
        ifname: &str,
        field: &str,
    ) -> Result<Attachment, Status> {
        let mut st = self.lock();
        let n = st.networks.get_mut(&sel.network).ok_or_else(|| {
            field_error(
                Code::FailedPrecondition,
                format!("{field}.network"),
                "not served",
                "NETWORK_NOT_SERVED",
            )
        })?;
        let mut wanted: Vec<Option<IpAddr>> = vec![None; n.pools.len()];
        for (i, s) in sel.ips.iter().enumerate() {
            let ip: IpAddr = s
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| invalid(format!("{field}.ips[{i}]"), "not an IP address"))?;
            let Some(p) = n.pools.iter().position(|p| p.contains(ip)) else {
                let subnets: Vec<String> = n.pools.iter().map(|p| p.subnet().to_string()).collect();
                return Err(invalid(
                    format!("{field}.ips[{i}]"),
                    format!(
                        "{ip} is in none of network {:?}'s subnets ({})",
                        sel.network,
                        subnets.join(", ")
                    ),
                ));
            };
            if wanted[p].replace(ip).is_some() {
                return Err(invalid(
                    format!("{field}.ips[{i}]"),
                    format!("a second address in {}", n.pools[p].subnet()),
                ));
            }
        }
        let mut taken: Vec<(usize, IpAddr)> = Vec::new();
        let mut failure = None;
        for (p, want) in wanted.iter().enumerate() {
            let pool = &mut n.pools[p];
            let r = match want {
                Some(ip) => pool.reserve(*ip, k).map(|_| *ip),
                None => pool.allocate(k),
            };
            match r {
                Ok(ip) => taken.push((p, ip)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for (p, ip) in taken {
                n.pools[p].release(ip, k);
            }
            let field_ips = format!("{field}.ips");
            return Err(match e {
                IpamError::Exhausted(_) => reason_error(
                    Code::ResourceExhausted,
                    format!("network {:?}: {e}", sel.network),
                    "POOL_EXHAUSTED",
                ),
                IpamError::OutOfRange { .. } => invalid(field_ips, e.to_string()),
                IpamError::InUse { .. } => {
                    field_error(Code::AlreadyExists, field_ips, e, "ADDRESS_IN_USE")
                }
            });
        }
        let addrs: Vec<IpAddr> = taken.iter().map(|(_, ip)| *ip).collect();
        let mac = match sel.mac.as_str() {
            "" => netlink::pod_mac(&addrs),
            m => netlink::parse_mac(m)
                .ok_or_else(|| invalid(format!("{field}.mac"), "not a MAC address"))?,
        };
        let default = sel.default_route.unwrap_or(true);
        let host_veth = netlink::host_veth_name(&sandbox.id, ifname);
        let ips = taken
            .iter()
            .map(|(p, ip)| IpConfig {
                address: format!("{ip}/{}", n.pools[*p].subnet().prefix_len()),
                family: family(ip),
                gateway: n.pools[*p].gateway().to_string(),
            })
            .collect();
        let routes = if default {
            n.pools
                .iter()
                .map(|p| Route {
                    destination: default_route(&p.gateway()).into(),
                    gateway: p.gateway().to_string(),
                    ..Default::default()
                })
                .collect()
        } else {
            vec![]
        };
        Ok(Attachment {
            network: sel.network.clone(),
            driver: self.name.clone(),
            interface_name: ifname.to_string(),
            mac: netlink::mac_string(&mac),
            mtu: if sel.mtu != 0 {
                sel.mtu
            } else if n.cfg.pod_cidrs_from_node && self.routing != crate::routes::Mode::Direct {
                // Room for the overlay's encapsulation (the path to some node may take it).
                n.cfg.mtu.saturating_sub(crate::routes::OVERHEAD_V4)
            } else {
                n.cfg.mtu
            },
            ips,
            routes,
            dns: sandbox.dns_config.clone(),
            default_route: default,
            host_interface: host_veth.clone(),
            host_mac: netlink::mac_string(&netlink::host_veth_mac(&host_veth)),
            device_id: String::new(),
            netns_path: sandbox.netns_path.clone(),
        })
    }

    fn release(&self, k: &str, a: &Attachment) {
        let mut st = self.lock();
        if let Some(n) = st.networks.get_mut(&a.network) {
            for ip in a.ips.iter().filter_map(|c| parse_cidr(&c.address)) {
                for p in n.pools.iter_mut() {
                    p.release(ip.addr(), k);
                }
            }
        }
    }

    async fn forget(&self, store: &Store, k: &str, a: &Attachment) {
        if let Err(e) = store.delete(TABLE, k).await {
            tracing::error!(key = %k, error = %e, "could not delete attachment record; addresses stay held");
            return;
        }
        self.lock().records.remove(k);
        self.release(k, a);
        self.publish();
    }

    async fn build(
        &self,
        netns: &Path,
        a: &Attachment,
        bridge: u32,
        limits: Option<&bandwidth::Limits>,
        rebuild: bool,
    ) -> Result<(), NlError> {
        // The pod-side connection (a thread entering the namespace) is opened while the veth
        // is created.
        let ns = netns.to_path_buf();
        let connect = tokio::task::spawn_blocking(move || Netlink::connect_in(&ns));
        if rebuild {
            // A rebuild replaces whatever an earlier life left on the node side; a leftover
            // pod-side interface makes the creation fail with EEXIST, handled below.
            self.nl.delete_link(&a.host_interface).await?;
        }
        if !self.guard_done.load(std::sync::atomic::Ordering::Acquire) {
            return Err(NlError {
                what: "anti-spoofing".into(),
                errno: None,
                message: "the anti-spoofing table is not in place yet; see NetworkReady".into(),
            });
        }
        self.guard(a)?;
        let mac = netlink::parse_mac(&a.mac).unwrap_or_default();
        let host_mac = netlink::host_veth_mac(&a.host_interface);
        let create = || {
            self.nl.create_veth(
                &a.host_interface,
                host_mac,
                &a.interface_name,
                netns,
                mac,
                a.mtu,
                bridge,
            )
        };
        let (connected, created) = tokio::join!(connect, create());
        let pod = connected.map_err(|e| NlError {
            what: "pod netlink connection".into(),
            errno: None,
            message: e.to_string(),
        })??;
        match created {
            Err(e) if e.errno == Some(netlink::errno::EEXIST) => {
                // Our host-side name is taken: a pair left by an attempt that died before its
                // record was written, or by an earlier life of a rebuilt attachment. Deleting
                // our end takes its peer too, then the pair is made again. Otherwise the pod
                // already has a link of that name that this driver did not make: it is left
                // alone and the attach refused (pods.proto, AttachPod).
                if !self.nl.delete_link(&a.host_interface).await? {
                    return Err(NlError {
                        what: POD_INTERFACE_EXISTS.into(),
                        errno: Some(netlink::errno::EEXIST),
                        message: format!(
                            "{} already exists in the pod's namespace; this driver did not make it",
                            a.interface_name
                        ),
                    });
                }
                create().await?;
            }
            other => other?,
        }
        let addrs: Vec<IpNet> = a
            .ips
            .iter()
            .filter_map(|c| parse_cidr(&c.address))
            .collect();
        let gws: Vec<IpAddr> = a
            .routes
            .iter()
            .filter_map(|r| r.gateway.parse().ok())
            .collect();
        pod.configure_pod(&a.interface_name, &addrs, &gws).await?;
        if let Some(l) = limits {
            bandwidth::apply(&self.nl, &a.host_interface, l).await?;
        }
        Ok(())
    }

    /// Detaches the sandbox's interfaces (those named in `only`, or all); unknown → OK.
    pub async fn detach(
        self: &Arc<Self>,
        sandbox_id: &str,
        only: &[NetworkSelection],
    ) -> Result<(), Status> {
        // Until the records are loaded, "nothing attached" would be a lie: the caller retries.
        let store = self.store()?;
        let _s = self.locks.lock(&sandbox_lock(sandbox_id)).await;
        let keys: Vec<String> = {
            let st = self.lock();
            let prefix = format!("{sandbox_id}/");
            st.records
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter(|(_, r)| {
                    only.is_empty()
                        || r.attachments.first().is_some_and(|a| {
                            only.iter().any(|s| {
                                s.network == a.network
                                    && (s.interface_name.is_empty()
                                        || s.interface_name == a.interface_name)
                            })
                        })
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        if keys.is_empty() {
            return Ok(());
        }
        for k in keys {
            let _g = self.locks.lock(&k).await;
            let Some(a) = self
                .lock()
                .records
                .get(&k)
                .and_then(|r| r.attachments.first().cloned())
            else {
                continue;
            };
            store
                .delete_lazy(TABLE, &k)
                .await
                .map_err(|e| Status::unavailable(format!("IPAM store: {e}")))?;
            self.lock().records.remove(&k);
            self.unguard(&a.host_interface);
            let (done_tx, done) = watch::channel(false);
            self.reaping_lock().insert(
                a.host_interface.clone(),
                Reaping {
                    netns: a.netns_path.clone(),
                    ifname: a.interface_name.clone(),
                    done,
                },
            );
            let me = self.clone();
            tokio::spawn(async move {
                let names = vec![
                    a.host_interface.clone(),
                    bandwidth::ifb_name(&a.host_interface),
                ];
                let t = std::time::Instant::now();
                match me.reaper.delete(names).await {
                    Ok(()) => {
                        tracing::debug!(key = %k, took = ?t.elapsed(), "veth deleted");
                        me.release(&k, &a)
                    }
                    // The addresses stay held; the veth, without a record, goes at the next
                    // start's sweep, and the addresses with it.
                    Err(e) => {
                        tracing::error!(key = %k, error = %e, "could not delete the veth; its addresses stay held")
                    }
                }
                me.reaping_lock().remove(&a.host_interface);
                let _ = done_tx.send(true);
                me.publish();
            });
        }
        self.publish();
        Ok(())
    }

    /// Every attachment, one entry per sandbox.
    /// Every attachment, once the records are loaded (`UNAVAILABLE` before: an empty list
    /// then would tell a caller that nothing is attached).
    pub fn pods(&self) -> Result<Vec<PodAttachments>, Status> {
        self.store()?;
        let st = self.lock();
        let mut by_sandbox: BTreeMap<String, PodAttachments> = BTreeMap::new();
        let mut keys: Vec<&String> = st.records.keys().collect();
        keys.sort();
        for k in keys {
            let r = &st.records[k];
            let id = r.sandbox.as_ref().map(|s| s.id.clone()).unwrap_or_default();
            let e = by_sandbox.entry(id).or_insert_with(|| PodAttachments {
                sandbox: r.sandbox.clone(),
                attachments: vec![],
            });
            e.attachments.extend(r.attachments.iter().cloned());
        }
        Ok(by_sandbox.into_values().collect())
    }
}

/// The anti-spoofing view of an attachment: its host-side veth, MAC and addresses.
fn port_of(a: &Attachment) -> crate::guard::Port {
    crate::guard::Port {
        veth: a.host_interface.clone(),
        mac: netlink::parse_mac(&a.mac).unwrap_or_default(),
        addrs: a
            .ips
            .iter()
            .filter_map(|c| parse_cidr(&c.address))
            .map(|n| n.addr())
            .collect(),
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    network: &str,
    driver: &str,
) -> Condition {
    Condition {
        r#type: kind.into(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        } as i32,
        reason: reason.into(),
        message,
        network: network.into(),
        driver: driver.into(),
        last_transition_time: None,
    }
}
