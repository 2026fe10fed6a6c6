//! The driver registry: which drivers are registered, what they serve, whether they are ready.
//!
//! Drivers arrive two ways: [`supervisor`] starts configured processes and restarts them with
//! backoff; [`plugin_dir`] registers sockets that appear in the plugin directory. Both go through
//! [`Registry::register`] (GetInfo, version negotiation, network claims) and [`monitor`] probes
//! each registered driver for readiness.

pub mod monitor;
pub mod plugin_dir;
pub mod supervisor;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use netlet_sdk::{
    client::{Clients, connect_unix},
    proto::{Capability, Condition, ConditionStatus, GetInfoRequest, GetInfoResponse},
};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// How a driver came to be registered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Started and supervised by the host.
    Supervised,
    /// Appeared in the plugin directory.
    External,
}

/// Readiness of a driver as last probed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Ready to serve.
    pub ready: bool,
    /// CamelCase reason when not ready.
    pub reason: String,
    /// Detail.
    pub message: String,
    /// Conditions the driver reported through Node/NetworkReady.
    pub conditions: Vec<Condition>,
    /// When `ready` last changed.
    pub since: Option<SystemTime>,
}

/// A registered driver.
#[derive(Debug)]
pub struct DriverEntry {
    /// Registry name (from GetInfo).
    pub name: String,
    /// Socket path.
    pub socket: PathBuf,
    /// How it was registered.
    pub source: Source,
    /// What it said in GetInfo.
    pub info: GetInfoResponse,
    /// The API version negotiated.
    pub api_version: String,
    /// Clients over one channel, with the call deadline set.
    pub clients: Clients,
    /// Registration epoch, to tell a re-registered driver from the old one.
    pub epoch: u64,
    /// Last probed health.
    pub health: Mutex<Health>,
    /// Services generation this driver has applied (0: needs a full sync).
    pub services_generation: Mutex<u64>,
    /// Policy generation this driver has applied (0: needs a full sync).
    pub policy_generation: Mutex<u64>,
    /// Node table generation this driver has applied (0: needs a full sync).
    pub cluster_generation: Mutex<u64>,
    /// Held while a node table batch is on its way to this driver (one at a time).
    pub cluster_sync: tokio::sync::Mutex<()>,
}

impl DriverEntry {
    /// Whether the driver declared `cap`.
    pub fn has(&self, cap: Capability) -> bool {
        self.info.capabilities.contains(&(cap as i32))
    }

    /// Whether it has an optional feature: as declared, or every one when its GetInfo has no
    /// `features` (a driver written before features existed).
    pub fn has_feature(&self, f: netlet_sdk::proto::Feature) -> bool {
        self.info
            .features
            .as_ref()
            .is_none_or(|fs| fs.supported.contains(&(f as i32)))
    }

    /// Whether it attaches pods to `network`.
    pub fn serves_network(&self, network: &str) -> bool {
        self.has(Capability::Pods) && self.info.networks.iter().any(|n| n == network)
    }

    /// Current health snapshot.
    pub fn health(&self) -> Health {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

/// Why registering a driver failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The socket did not answer.
    #[error("connect {socket}: {source}")]
    Connect {
        /// Socket.
        socket: String,
        /// Cause.
        #[source]
        source: netlet_sdk::Error,
    },
    /// GetInfo failed.
    #[error("GetInfo: {0}")]
    GetInfo(#[source] tonic::Status),
    /// GetInfo answered something unusable.
    #[error("GetInfo: {0}")]
    BadInfo(String),
    /// No API version in common.
    #[error("no common API version: driver supports {theirs:?}, host supports {ours:?}")]
    Version {
        /// Driver's versions.
        theirs: Vec<String>,
        /// Host's versions.
        ours: Vec<String>,
    },
    /// Another driver is registered under this name from another socket.
    #[error("driver name {name:?} is taken by the driver at {holder}; not swapped in")]
    NameTaken {
        /// The name.
        name: String,
        /// The socket of the driver that has it.
        holder: String,
    },
    /// The socket belongs to a user the host does not allow.
    #[error("{socket} belongs to uid {uid}, which is not allowed (authorization.uids)")]
    SocketOwner {
        /// Socket.
        socket: String,
        /// Its owner.
        uid: u32,
    },
    /// Another driver already serves one of its networks.
    #[error("network {network:?} is already served by driver {other:?}")]
    NetworkConflict {
        /// The network.
        network: String,
        /// The driver that has it.
        other: String,
    },
}

impl RegisterError {
    /// CamelCase reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            RegisterError::Connect { .. } => "DriverUnreachable",
            RegisterError::GetInfo(_) | RegisterError::BadInfo(_) => "InvalidDriverInfo",
            RegisterError::Version { .. } => "NoCommonApiVersion",
            RegisterError::NetworkConflict { .. } => "NetworkConflict",
            RegisterError::NameTaken { .. } => "DriverNameTaken",
            RegisterError::SocketOwner { .. } => "SocketOwnerNotAllowed",
        }
    }
}

/// Registry settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Deadline of host→driver calls.
    pub call_timeout: Duration,
    /// Probe period.
    pub probe_interval: Duration,
    /// Failed probes before an external driver is deregistered.
    pub probe_failure_threshold: u32,
    /// Max message size.
    pub max_message_bytes: usize,
}

/// What runs after every (re)registration.
pub type OnRegister = Arc<dyn Fn(Arc<DriverEntry>) + Send + Sync>;

/// The registry; shared behind an `Arc`.
pub struct Registry {
    opts: Options,
    drivers: RwLock<BTreeMap<String, Arc<DriverEntry>>>,
    /// Registration failures by driver (or socket) name, shown as conditions.
    failures: Mutex<HashMap<String, Condition>>,
    changes: watch::Sender<u64>,
    epoch: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
    resync: Mutex<Option<OnRegister>>,
}

/// A condition with the current time as transition time.
pub fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    network: &str,
    driver: &str,
    since: Option<SystemTime>,
) -> Condition {
    Condition {
        r#type: kind.to_string(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        } as i32,
        reason: reason.to_string(),
        message: message.into(),
        network: network.to_string(),
        driver: driver.to_string(),
        last_transition_time: Some(since.unwrap_or_else(SystemTime::now).into()),
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(opts: Options, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            opts,
            drivers: RwLock::new(BTreeMap::new()),
            failures: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
            epoch: 0.into(),
            metrics,
            resync: Mutex::new(None),
        })
    }

    /// Settings.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Sets what runs after every (re)registration: the replay of desired state.
    pub fn on_register(&self, f: OnRegister) {
        if let Ok(mut r) = self.resync.lock() {
            *r = Some(f);
        }
    }

    /// A receiver that changes whenever registrations or health change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn notify(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Every registered driver, by name.
    pub fn drivers(&self) -> Vec<Arc<DriverEntry>> {
        self.drivers
            .read()
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One driver by name.
    pub fn get(&self, name: &str) -> Option<Arc<DriverEntry>> {
        self.drivers.read().ok()?.get(name).cloned()
    }

    /// The driver attaching pods to `network`.
    pub fn driver_for_network(&self, network: &str) -> Option<Arc<DriverEntry>> {
        self.drivers()
            .into_iter()
            .find(|d| d.serves_network(network))
    }

    /// Drivers that declared `cap`.
    pub fn with_capability(&self, cap: Capability) -> Vec<Arc<DriverEntry>> {
        self.drivers().into_iter().filter(|d| d.has(cap)).collect()
    }

    /// Registration failures as conditions.
    pub fn failures(&self) -> Vec<Condition> {
        let mut v: Vec<_> = self
            .failures
            .lock()
            .map(|f| f.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.driver.cmp(&b.driver));
        v
    }

    /// Records that `name` could not be registered.
    pub fn record_failure(&self, name: &str, err: &RegisterError) {
        tracing::warn!(driver = name, reason = err.reason(), error = %err, "driver not registered");
        if let Ok(mut f) = self.failures.lock() {
            f.insert(
                name.to_string(),
                condition(
                    "DriverRegistered",
                    false,
                    err.reason(),
                    err.to_string(),
                    "",
                    name,
                    None,
                ),
            );
        }
        self.notify();
    }

    /// Clears a recorded failure.
    pub fn clear_failure(&self, name: &str) {
        let removed = self
            .failures
            .lock()
            .map(|mut f| f.remove(name).is_some())
            .unwrap_or(false);
        if removed {
            self.notify();
        }
    }

    /// Connects to `socket`, calls GetInfo, negotiates the version, checks network claims and
    /// registers the driver (replacing an earlier registration under the same name). Starts its
    /// health monitor and the desired-state replay.
    pub async fn register(
        self: &Arc<Self>,
        socket: &Path,
        source: Source,
        expected_name: Option<&str>,
    ) -> Result<Arc<DriverEntry>, RegisterError> {
        let channel = connect_unix(socket, Some(self.opts.call_timeout))
            .await
            .map_err(|source| RegisterError::Connect {
                socket: socket.display().to_string(),
                source,
            })?;
        let mut clients = Clients::new(channel, self.opts.max_message_bytes);
        let info = clients
            .identity
            .get_info(GetInfoRequest {
                caller_api_versions: netlet_proto::SUPPORTED_API_VERSIONS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            })
            .await
            .map_err(RegisterError::GetInfo)?
            .into_inner();
        if netlet_sdk::validate::dns_label("name", &info.name).is_err() {
            return Err(RegisterError::BadInfo(format!(
                "name {:?} is not a DNS-1123 label",
                info.name
            )));
        }
        if let Some(expected) = expected_name
            && expected != info.name
        {
            return Err(RegisterError::BadInfo(format!(
                "driver calls itself {:?} but was configured as {expected:?}",
                info.name
            )));
        }
        let api_version = netlet_proto::negotiate_version(
            netlet_proto::SUPPORTED_API_VERSIONS,
            &info.api_versions,
        )
        .ok_or_else(|| RegisterError::Version {
            theirs: info.api_versions.clone(),
            ours: netlet_proto::SUPPORTED_API_VERSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        })?
        .to_string();
        let entry = {
            let mut drivers = self
                .drivers
                .write()
                .map_err(|_| RegisterError::BadInfo("registry lock poisoned".into()))?;
            // A name is held by the socket that registered it (the same driver restarting keeps
            // its socket); another socket claiming it, above all a supervised driver's, is
            // refused, never swapped in.
            if let Some(holder) = drivers.get(&info.name)
                && holder.socket != socket
            {
                return Err(RegisterError::NameTaken {
                    name: info.name.clone(),
                    holder: holder.socket.display().to_string(),
                });
            }
            for net in &info.networks {
                if let Some(other) = drivers
                    .values()
                    .find(|d| d.name != info.name && d.serves_network(net))
                {
                    return Err(RegisterError::NetworkConflict {
                        network: net.clone(),
                        other: other.name.clone(),
                    });
                }
            }
            let entry = Arc::new(DriverEntry {
                name: info.name.clone(),
                socket: socket.to_path_buf(),
                source,
                api_version,
                clients,
                epoch: self
                    .epoch
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1,
                health: Mutex::new(Health {
                    ready: false,
                    reason: "NotProbedYet".into(),
                    message: "registered, first probe pending".into(),
                    ..Default::default()
                }),
                services_generation: Mutex::new(0),
                cluster_generation: Mutex::new(0),
                cluster_sync: tokio::sync::Mutex::new(()),
                policy_generation: Mutex::new(0),
                info,
            });
            drivers.insert(entry.name.clone(), entry.clone());
            entry
        };
        self.clear_failure(&entry.name);
        self.metrics.set_registered(self.drivers().len());
        tracing::info!(
            driver = %entry.name,
            source = ?entry.source,
            api_version = %entry.api_version,
            networks = ?entry.info.networks,
            capabilities = ?entry.info.capabilities().collect::<Vec<_>>(),
            "driver registered"
        );
        self.notify();
        monitor::spawn(self.clone(), entry.clone());
        let resync = self.resync.lock().ok().and_then(|r| r.clone());
        if let Some(f) = resync {
            f(entry.clone());
        }
        Ok(entry)
    }

    /// Removes `name` if it is still the registration `epoch` (or any, when `None`).
    pub fn deregister(&self, name: &str, epoch: Option<u64>, why: &str) -> bool {
        let removed = self
            .drivers
            .write()
            .map(|mut d| match d.get(name) {
                Some(e) if epoch.is_none_or(|ep| ep == e.epoch) => d.remove(name).is_some(),
                _ => false,
            })
            .unwrap_or(false);
        if removed {
            tracing::info!(driver = name, why, "driver deregistered");
            self.metrics.set_registered(self.drivers().len());
            self.notify();
        }
        removed
    }
}
