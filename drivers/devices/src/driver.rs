//! The devices driver's state: claims and moves, kept in redb, and the kernel work of moving a
//! device into a pod and back. One lock orders allocations, releases and moves, so two claims
//! never hold one device and two pods never race one device into two namespaces.
//!
//! A move is recorded before the kernel sees it (phase "moving in" / "moving out") and marked
//! done after, so a driver that dies in between finds, when it starts again, what it was doing
//! and puts the device back on the node (or finishes taking it out of the pod).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use netlet_sdk::netlink::{Netlink, NlError, errno};
use netlet_sdk::proto::{
    AllocateDeviceRequest, AllocateDeviceResponse, Attachment, Device, DeviceHealth, IpConfig,
    IpFamily, NetworkSelection, PodAttachments, PodSandbox, Route,
};
use netlet_sdk::store::Store;
use netlet_sdk::validate::field_error;
use prost::Message;
use tokio::sync::Mutex;
use tonic::{Code, Status};

use crate::config::Config;
use crate::inventory::{self, Link};
use crate::links;
use crate::netconf::NetConf;
use crate::sysfs::Sysfs;

const CLAIMS: &str = "claims";
const MOVES: &str = "moves";

/// The environment variable that makes the driver abort at a point of a move (`moved-in`:
/// the device is in the pod, not yet configured; `moved-out`: back on the node, its settings
/// not yet restored), once per state directory: a test hook for the recovery a crash there
/// needs.
pub const CRASH_AT_ENV: &str = "NETLET_DEVICES_CRASH_AT";

/// A claim as allocated.
#[derive(Clone, PartialEq, Message)]
pub struct ClaimRecord {
    /// The request, to tell a repeat from a different request under the same UID.
    #[prost(message, optional, tag = "1")]
    pub request: Option<AllocateDeviceRequest>,
    /// The answer given.
    #[prost(message, optional, tag = "2")]
    pub response: Option<AllocateDeviceResponse>,
}

/// Where a move stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Phase {
    /// Recorded, the kernel may or may not have moved the device into the pod.
    MovingIn = 0,
    /// In the pod, configured; the attachment answered.
    In = 1,
    /// Being taken back; the device may be in the pod or on the node.
    MovingOut = 2,
}

/// A device moved (or being moved) into a pod, with what it was on the node.
#[derive(Clone, PartialEq, Message)]
pub struct MoveRecord {
    /// Device id.
    #[prost(string, tag = "1")]
    pub device_id: String,
    /// The pod.
    #[prost(message, optional, tag = "2")]
    pub sandbox: Option<PodSandbox>,
    /// The selection, defaults filled in.
    #[prost(message, optional, tag = "3")]
    pub selection: Option<NetworkSelection>,
    /// The device as it was listed before the move.
    #[prost(message, optional, tag = "4")]
    pub device: Option<Device>,
    /// Its name on the node.
    #[prost(string, tag = "5")]
    pub original_name: String,
    /// Its MTU on the node.
    #[prost(uint32, tag = "6")]
    pub original_mtu: u32,
    /// Its MAC on the node.
    #[prost(string, tag = "7")]
    pub original_mac: String,
    /// Whether it was up on the node.
    #[prost(bool, tag = "8")]
    pub original_up: bool,
    /// Its addresses on the node (the move drops them).
    #[prost(string, repeated, tag = "9")]
    pub original_addresses: Vec<String>,
    /// Phase.
    #[prost(enumeration = "Phase", tag = "10")]
    pub phase: i32,
    /// The attachment answered, once in.
    #[prost(message, optional, tag = "11")]
    pub attachment: Option<Attachment>,
}

impl MoveRecord {
    fn key(&self) -> String {
        self.device_id.clone()
    }
    fn sandbox_id(&self) -> &str {
        self.sandbox.as_ref().map(|s| s.id.as_str()).unwrap_or("")
    }
    fn ifname(&self) -> &str {
        self.selection
            .as_ref()
            .map(|s| s.interface_name.as_str())
            .unwrap_or("")
    }
    fn network(&self) -> &str {
        self.selection
            .as_ref()
            .map(|s| s.network.as_str())
            .unwrap_or("")
    }
    fn netns(&self) -> PathBuf {
        PathBuf::from(
            self.sandbox
                .as_ref()
                .map(|s| s.netns_path.as_str())
                .unwrap_or(""),
        )
    }
}

#[derive(Default)]
struct State {
    claims: BTreeMap<String, ClaimRecord>,
    moves: BTreeMap<String, MoveRecord>,
}

/// The driver.
pub struct Devices {
    name: String,
    cfg: Config,
    sys: Sysfs,
    nl: Netlink,
    node_ns: std::fs::File,
    store: Store,
    state_dir: PathBuf,
    state: Mutex<State>,
    /// Bumped whenever the inventory may have changed (links, claims, moves).
    changed: tokio::sync::watch::Sender<u64>,
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

fn kernel(e: NlError) -> Status {
    Status::internal(e.to_string())
}

fn crash_point(state_dir: &Path, at: &str) {
    if std::env::var(CRASH_AT_ENV).is_ok_and(|v| v == at) {
        let mark = state_dir.join(format!("crashed-{at}"));
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&mark)
            .is_ok()
        {
            tracing::error!(at, "{CRASH_AT_ENV}: aborting");
            std::process::abort();
        }
    }
}

/// Whether interface `name` names a link of `nl`'s namespace.
async fn has_link(nl: &Netlink, name: &str) -> bool {
    matches!(nl.link_index(name).await, Ok(Some(_)))
}

impl Devices {
    /// Opens the store under `state_dir` and the node's netlink socket. Needs a runtime.
    pub fn new(name: &str, cfg: Config, state_dir: &Path) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(state_dir)?;
        let store = Store::open(state_dir, "devices.redb", &[CLAIMS, MOVES])?;
        let mut state = State::default();
        for (k, v) in store.scan(CLAIMS)? {
            state.claims.insert(k, ClaimRecord::decode(&v[..])?);
        }
        for (k, v) in store.scan(MOVES)? {
            state.moves.insert(k, MoveRecord::decode(&v[..])?);
        }
        Ok(Arc::new(Self {
            name: name.to_string(),
            sys: Sysfs::new(&cfg.sysfs_root),
            cfg,
            nl: Netlink::connect()?,
            node_ns: std::fs::File::open("/proc/self/ns/net")?,
            store,
            state_dir: state_dir.to_path_buf(),
            state: Mutex::new(state),
            changed: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// A receiver told whenever the inventory may have changed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Follows the node's link events (RTNLGRP_LINK: a link added, removed, renamed, up or
    /// down) for the watchers, until the socket fails.
    pub async fn follow_links(self: Arc<Self>) {
        use futures::StreamExt;
        let (conn, _handle, mut events) = match rtnetlink::new_multicast_connection(&[
            rtnetlink::MulticastGroup::Link,
        ]) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "link events: no netlink socket; watchers see claims and moves only");
                return;
            }
        };
        tokio::spawn(conn);
        while events.next().await.is_some() {
            self.bump();
        }
    }

    /// Networks served.
    pub fn networks(&self) -> &[String] {
        &self.cfg.networks
    }

    /// Pools configured.
    pub fn pools(&self) -> Vec<String> {
        self.cfg.pools.iter().map(|p| p.name.clone()).collect()
    }

    /// Finishes or rolls back the moves a previous run left half done: a device being moved in
    /// goes back to the node (the attach was never answered), one being moved out finishes
    /// coming back.
    pub async fn recover(&self) {
        let mut st = self.state.lock().await;
        let pending: Vec<MoveRecord> = st
            .moves
            .values()
            .filter(|m| m.phase != Phase::In as i32)
            .cloned()
            .collect();
        for m in pending {
            tracing::warn!(device = %m.device_id, sandbox = %m.sandbox_id(), phase = m.phase,
                "finishing a move a previous run left");
            match self.bring_back(&m).await {
                Ok(()) => {
                    if let Err(e) = self.store.delete(MOVES, &m.key()).await {
                        tracing::error!(error = %e, "forget move");
                    } else {
                        st.moves.remove(&m.key());
                    }
                }
                Err(e) => tracing::error!(device = %m.device_id, error = %e, "recovery failed"),
            }
        }
    }

    /// The inventory: the node's devices, those in pods and those gone while allocated, with
    /// who holds them.
    pub async fn inventory(&self) -> Result<Vec<Device>, Status> {
        let st = self.state.lock().await;
        Ok(self.inventory_locked(&st).await?.into_values().collect())
    }

    async fn node_devices(&self) -> Result<BTreeMap<String, (Device, Link)>, Status> {
        let uplinks = inventory::uplinks(&self.nl).await.map_err(kernel)?;
        let links: Vec<Link> = inventory::links(&self.nl)
            .await
            .map_err(kernel)?
            .into_iter()
            .filter(|l| !uplinks.contains(&l.index))
            .collect();
        Ok(inventory::devices(&self.cfg, &self.sys, &links))
    }

    async fn inventory_locked(&self, st: &State) -> Result<BTreeMap<String, Device>, Status> {
        let mut out: BTreeMap<String, Device> = self
            .node_devices()
            .await?
            .into_iter()
            .map(|(k, (d, _))| (k, d))
            .collect();
        for m in st.moves.values() {
            if let Some(d) = &m.device {
                let e = out.entry(m.device_id.clone()).or_insert_with(|| d.clone());
                e.attached_to_sandbox = m.sandbox_id().to_string();
                e.health = DeviceHealth::Healthy as i32;
            }
        }
        for (uid, c) in &st.claims {
            for a in c.response.iter().flat_map(|r| &r.devices) {
                let Some(d) = &a.device else { continue };
                let e = out.entry(d.id.clone()).or_insert_with(|| {
                    let mut gone = d.clone();
                    gone.health = DeviceHealth::Gone as i32;
                    gone.allocated_to_claim.clear();
                    gone
                });
                e.allocated_to_claim = uid.clone();
            }
        }
        for d in out.values_mut() {
            d.driver = self.name.clone();
        }
        Ok(out)
    }

    /// AllocateDevice (validated by the caller).
    pub async fn allocate(
        &self,
        req: AllocateDeviceRequest,
    ) -> Result<AllocateDeviceResponse, Status> {
        let mut st = self.state.lock().await;
        if let Some(c) = st.claims.get(&req.claim_uid) {
            if c.request.as_ref() == Some(&req) {
                return Ok(c.response.clone().unwrap_or_default());
            }
            return Err(field_error(
                Code::AlreadyExists,
                "claim_uid",
                format!(
                    "claim {:?} is allocated with another request",
                    req.claim_uid
                ),
                "CLAIM_EXISTS",
            ));
        }
        for (i, r) in req.requests.iter().enumerate() {
            if !r.config.is_empty() {
                NetConf::parse(&r.config).map_err(|e| {
                    field_error(
                        Code::InvalidArgument,
                        format!("requests[{i}].config"),
                        e,
                        "CONFIG_INVALID",
                    )
                })?;
            }
        }
        let inv: Vec<Device> = self.inventory_locked(&st).await?.into_values().collect();
        let sys = self.sys.clone();
        let devices =
            netlet_sdk::devices::allocate(&req, &inv, &self.pools(), &|a| sys.topology(a))?;
        let resp = AllocateDeviceResponse {
            claim_uid: req.claim_uid.clone(),
            devices,
        };
        let rec = ClaimRecord {
            request: Some(req.clone()),
            response: Some(resp.clone()),
        };
        self.store
            .put(CLAIMS, &req.claim_uid, rec.encode_to_vec())
            .await
            .map_err(unavailable)?;
        st.claims.insert(req.claim_uid, rec);
        self.bump();
        Ok(resp)
    }

    /// ReleaseDevice (validated by the caller): OK for an unknown claim; a claim whose device
    /// is still in a pod is FAILED_PRECONDITION (detach first).
    pub async fn release(&self, claim_uid: &str) -> Result<(), Status> {
        let mut st = self.state.lock().await;
        let Some(c) = st.claims.get(claim_uid) else {
            return Ok(());
        };
        for a in c.response.iter().flat_map(|r| &r.devices) {
            let id = a.device.as_ref().map(|d| d.id.as_str()).unwrap_or("");
            if let Some(m) = st.moves.get(id) {
                return Err(field_error(
                    Code::FailedPrecondition,
                    "claim_uid",
                    format!(
                        "device {id:?} of claim {claim_uid:?} is in sandbox {:?}: detach it first",
                        m.sandbox_id()
                    ),
                    "DEVICE_ATTACHED",
                ));
            }
        }
        self.store
            .delete(CLAIMS, claim_uid)
            .await
            .map_err(unavailable)?;
        st.claims.remove(claim_uid);
        self.bump();
        Ok(())
    }

    /// The pods with devices, for ListAttachments and friends.
    pub async fn pods(&self) -> Vec<PodAttachments> {
        let st = self.state.lock().await;
        let mut by: BTreeMap<String, PodAttachments> = BTreeMap::new();
        for m in st.moves.values().filter(|m| m.phase == Phase::In as i32) {
            let p = by
                .entry(m.sandbox_id().to_string())
                .or_insert_with(|| PodAttachments {
                    sandbox: m.sandbox.clone(),
                    attachments: Vec::new(),
                });
            p.attachments.extend(m.attachment.clone());
        }
        by.into_values().collect()
    }

    /// Moves the device `sel` names into the pod and configures it.
    pub async fn attach(
        &self,
        sandbox: &PodSandbox,
        sel: &NetworkSelection,
        field: &str,
    ) -> Result<Attachment, Status> {
        let f = |name: &str| format!("{field}.{name}");
        if !self.cfg.networks.contains(&sel.network) {
            return Err(field_error(
                Code::FailedPrecondition,
                f("network"),
                format!("this driver does not serve {:?}", sel.network),
                "NETWORK_NOT_SERVED",
            ));
        }
        if sel.device_id.is_empty() {
            return Err(field_error(
                Code::InvalidArgument,
                f("device_id"),
                "this network moves an allocated device into the pod: name it",
                "DEVICE_REQUIRED",
            ));
        }
        let netns = Path::new(&sandbox.netns_path);
        if !netns.exists() {
            return Err(field_error(
                Code::InvalidArgument,
                "sandbox.netns_path",
                format!("{} does not exist", sandbox.netns_path),
                "NETNS_INVALID",
            ));
        }
        let mut st = self.state.lock().await;
        if let Some(m) = st.moves.values().find(|m| {
            m.sandbox_id() == sandbox.id
                && m.network() == sel.network
                && m.ifname() == sel.interface_name
                && m.phase == Phase::In as i32
        }) {
            return Ok(m.attachment.clone().unwrap_or_default());
        }
        let (uid, alloc) = st
            .claims
            .iter()
            .find_map(|(uid, c)| {
                let r = c.response.as_ref()?;
                let a = r
                    .devices
                    .iter()
                    .find(|a| a.device.as_ref().is_some_and(|d| d.id == sel.device_id))?;
                Some((
                    uid.clone(),
                    (c.request.clone().unwrap_or_default(), a.clone()),
                ))
            })
            .ok_or_else(|| {
                field_error(
                    Code::FailedPrecondition,
                    f("device_id"),
                    format!("device {:?} is not allocated", sel.device_id),
                    "DEVICE_NOT_ALLOCATED",
                )
            })?;
        let (creq, a) = alloc;
        if !creq.pod_uids.is_empty() && !creq.pod_uids.contains(&sandbox.uid) {
            return Err(field_error(
                Code::FailedPrecondition,
                f("device_id"),
                format!(
                    "device {:?} is allocated to claim {uid:?}, whose pods do not include {:?}",
                    sel.device_id, sandbox.uid
                ),
                "DEVICE_ALLOCATED_ELSEWHERE",
            ));
        }
        if !creq.sandbox_id.is_empty() && creq.sandbox_id != sandbox.id {
            return Err(field_error(
                Code::FailedPrecondition,
                f("device_id"),
                format!(
                    "device {:?} is allocated to claim {uid:?} for sandbox {:?}",
                    sel.device_id, creq.sandbox_id
                ),
                "DEVICE_ALLOCATED_ELSEWHERE",
            ));
        }
        if let Some(m) = st.moves.get(&sel.device_id) {
            return Err(field_error(
                Code::FailedPrecondition,
                f("device_id"),
                format!(
                    "device {:?} is in sandbox {:?} as {}",
                    sel.device_id,
                    m.sandbox_id(),
                    m.ifname()
                ),
                "DEVICE_IN_USE",
            ));
        }
        let conf = if a.config.is_empty() {
            NetConf::default()
        } else {
            NetConf::parse(&a.config).map_err(Status::internal)?
        };
        let conf = conf
            .under(sel, field)
            .map_err(|(fl, m)| field_error(Code::InvalidArgument, &fl, m, "DEVICE_CONFIG"))?;
        let node = self.node_devices().await?;
        let Some((dev, link)) = node.get(&sel.device_id).cloned() else {
            return Err(field_error(
                Code::FailedPrecondition,
                f("device_id"),
                format!("device {:?} is not on the node", sel.device_id),
                "DEVICE_GONE",
            ));
        };
        let pod = Netlink::connect_in(netns).map_err(|e| {
            field_error(
                Code::InvalidArgument,
                "sandbox.netns_path",
                e.to_string(),
                "NETNS_INVALID",
            )
        })?;
        if has_link(&pod, &sel.interface_name).await {
            return Err(field_error(
                Code::AlreadyExists,
                f("interface_name"),
                format!("the pod has an interface {:?}", sel.interface_name),
                "INTERFACE_EXISTS",
            ));
        }
        let original_addresses = links::addresses(&self.nl, link.index)
            .await
            .map_err(kernel)?;
        let mut rec = MoveRecord {
            device_id: sel.device_id.clone(),
            sandbox: Some(sandbox.clone()),
            selection: Some(sel.clone()),
            device: Some(dev.clone()),
            original_name: link.name.clone(),
            original_mtu: link.mtu,
            original_mac: link.mac.clone(),
            original_up: link.up,
            original_addresses: original_addresses.iter().map(|a| a.to_string()).collect(),
            phase: Phase::MovingIn as i32,
            attachment: None,
        };
        self.store
            .put(MOVES, &rec.key(), rec.encode_to_vec())
            .await
            .map_err(unavailable)?;
        st.moves.insert(rec.key(), rec.clone());
        let moved = async {
            links::down(&self.nl, link.index).await?;
            let ns = std::fs::File::open(netns)
                .map_err(netlet_sdk::netlink::io(format!("open {}", netns.display())))?;
            links::move_to(&self.nl, link.index, &ns, &sel.interface_name).await?;
            crash_point(&self.state_dir, "moved-in");
            self.configure_in_pod(&pod, &sel.interface_name, &conf)
                .await
        }
        .await;
        let (mac, mtu) = match moved {
            Ok(v) => v,
            Err(e) => {
                // Put it back as it was, then answer the error.
                if let Err(r) = self.bring_back(&rec).await {
                    tracing::error!(device = %rec.device_id, error = %r, "rollback failed");
                    return Err(kernel(e));
                }
                let _ = self.store.delete(MOVES, &rec.key()).await;
                st.moves.remove(&rec.key());
                return Err(if e.errno == Some(errno::EEXIST) {
                    field_error(
                        Code::AlreadyExists,
                        f("interface_name"),
                        e.to_string(),
                        "INTERFACE_EXISTS",
                    )
                } else {
                    kernel(e)
                });
            }
        };
        let attachment = Attachment {
            network: sel.network.clone(),
            driver: self.name.clone(),
            interface_name: sel.interface_name.clone(),
            mac,
            mtu,
            ips: conf
                .addresses
                .iter()
                .map(|a| IpConfig {
                    address: a.to_string(),
                    family: if a.addr().is_ipv4() {
                        IpFamily::Ipv4
                    } else {
                        IpFamily::Ipv6
                    } as i32,
                    gateway: String::new(),
                })
                .collect(),
            routes: conf
                .routes
                .iter()
                .map(|r| Route {
                    destination: r.destination.to_string(),
                    gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    metric: r.metric,
                    mtu: 0,
                })
                .collect(),
            dns: None,
            default_route: conf.routes.iter().any(|r| r.destination.prefix_len() == 0),
            host_interface: String::new(),
            host_mac: String::new(),
            device_id: sel.device_id.clone(),
            netns_path: sandbox.netns_path.clone(),
        };
        rec.phase = Phase::In as i32;
        rec.attachment = Some(attachment.clone());
        self.store
            .put(MOVES, &rec.key(), rec.encode_to_vec())
            .await
            .map_err(unavailable)?;
        st.moves.insert(rec.key(), rec);
        self.bump();
        Ok(attachment)
    }

    /// In the pod: MAC and MTU, up, addresses and routes; `lo` up. Returns the interface's
    /// MAC and MTU as the kernel has them.
    async fn configure_in_pod(
        &self,
        pod: &Netlink,
        ifname: &str,
        conf: &NetConf,
    ) -> Result<(String, u32), NlError> {
        let index = links::index_of(pod, ifname, "pod").await?;
        links::configure(pod, index, conf.mtu, conf.mac.as_deref(), true).await?;
        links::configure(pod, 1, None, None, true).await?;
        for a in &conf.addresses {
            pod.add_address(index, a.addr(), a.prefix_len()).await?;
        }
        for r in &conf.routes {
            links::add_route(pod, index, r).await?;
        }
        let now = inventory::links(pod).await?;
        let l = now.iter().find(|l| l.index == index);
        Ok((
            l.map(|l| l.mac.clone()).unwrap_or_default(),
            l.map(|l| l.mtu).unwrap_or_default(),
        ))
    }

    /// DetachPod: moves back the devices of `sandbox_id` the selections match (all when empty).
    pub async fn detach(
        &self,
        sandbox_id: &str,
        selections: &[NetworkSelection],
    ) -> Result<(), Status> {
        let mut st = self.state.lock().await;
        let mine: Vec<MoveRecord> = st
            .moves
            .values()
            .filter(|m| m.sandbox_id() == sandbox_id)
            .filter(|m| {
                selections.is_empty()
                    || selections.iter().any(|s| {
                        s.network == m.network()
                            && (s.interface_name.is_empty() || s.interface_name == m.ifname())
                    })
            })
            .cloned()
            .collect();
        for mut m in mine {
            m.phase = Phase::MovingOut as i32;
            self.store
                .put(MOVES, &m.key(), m.encode_to_vec())
                .await
                .map_err(unavailable)?;
            st.moves.insert(m.key(), m.clone());
            self.bring_back(&m).await.map_err(kernel)?;
            self.store
                .delete(MOVES, &m.key())
                .await
                .map_err(unavailable)?;
            st.moves.remove(&m.key());
            self.bump();
        }
        Ok(())
    }

    /// Puts a device back on the node under its name with its MTU, MAC, addresses and state,
    /// wherever the move left it: in the pod under the pod's name, or already on the node. A
    /// device found in neither place has left with its pod (a virtual one dies with the
    /// namespace): nothing to do.
    async fn bring_back(&self, m: &MoveRecord) -> Result<(), NlError> {
        let netns = m.netns();
        if netns.exists()
            && let Ok(pod) = Netlink::connect_in(&netns)
            && let Ok(Some(index)) = pod.link_index(m.ifname()).await
        {
            links::down(&pod, index).await?;
            links::move_to(&pod, index, &self.node_ns, &m.original_name).await?;
            crash_point(&self.state_dir, "moved-out");
        }
        let Some(index) = self.nl.link_index(&m.original_name).await? else {
            tracing::warn!(device = %m.device_id, name = %m.original_name,
                "device neither in the pod nor on the node: it left with the pod");
            return Ok(());
        };
        let mac = (!m.original_mac.is_empty()).then_some(m.original_mac.as_str());
        links::configure(&self.nl, index, Some(m.original_mtu), mac, m.original_up).await?;
        for a in &m.original_addresses {
            if let Ok(net) = a.parse::<IpNet>() {
                self.nl
                    .add_address(index, net.addr(), net.prefix_len())
                    .await?;
            }
        }
        Ok(())
    }
}
