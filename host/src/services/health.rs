//! Health-check node ports: for each Service with `externalTrafficPolicy: Local` and a
//! `healthCheckNodePort`, an HTTP server on that port (all node addresses, IPv4 and IPv6)
//! answering `200` when this node has endpoints for the Service's external traffic *and* a
//! ready Services driver has applied the node's current table (kube-proxy's
//! `serviceProxyHealthy`), `503` otherwise, with kube-proxy's
//! JSON body, so load balancers send traffic only to nodes that can serve it.
//!
//! A port that cannot be bound (another process holds it) is retried with backoff; until it is
//! served, the node's readiness carries a `HealthCheckNodePort` condition saying so.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use netlet_sdk::proto::{Capability, Condition};
use serde_json::json;

use super::sources::ServiceView;
use crate::registry::{Registry, condition};

/// One port's Service and its local endpoint count.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

/// A port that could not be bound yet: its Service, the error, since when.
#[derive(Debug, Clone)]
struct BindFailure {
    service: String,
    error: String,
    since: SystemTime,
}

/// The node table's generation as the servers know it: the current one, the one before it,
/// and when it changed.
#[derive(Debug, Clone, Copy)]
struct Generations {
    now: u64,
    before: u64,
    changed: Instant,
}

/// What the servers answer from.
struct Shared {
    entries: RwLock<HashMap<u16, Entry>>,
    generations: Mutex<Generations>,
    registry: Arc<Registry>,
    bind_failures: RwLock<BTreeMap<u16, BindFailure>>,
}

/// How long a driver that had applied the table before a change still counts as in sync while
/// the change reaches it (a change is pushed at once; a health check that lands in between
/// must not take the node out of a load balancer).
const SYNC_GRACE: Duration = Duration::from_secs(5);

impl Shared {
    /// Whether a ready Services driver has applied the node's current table (or the one before
    /// it, within [`SYNC_GRACE`] of the change).
    fn proxy_healthy(&self) -> bool {
        let Ok(g) = self.generations.lock().map(|g| *g) else {
            return false;
        };
        let recent = g.changed.elapsed() < SYNC_GRACE;
        self.registry
            .with_capability(Capability::Services)
            .iter()
            .any(|d| {
                d.health().ready
                    && d.services_generation
                        .lock()
                        .is_ok_and(|a| *a == g.now || (recent && *a == g.before))
            })
    }
}

/// Retries of a failed bind: first after this, doubling up to [`BIND_RETRY_MAX`].
const BIND_RETRY_FIRST: Duration = Duration::from_millis(500);
const BIND_RETRY_MAX: Duration = Duration::from_secs(30);

/// The running health-check servers.
pub struct HealthChecks {
    shared: Arc<Shared>,
    servers: std::sync::Mutex<HashMap<u16, tokio::task::JoinHandle<()>>>,
}

async fn answer(
    State((shared, port)): State<(Arc<Shared>, u16)>,
) -> (StatusCode, Json<serde_json::Value>) {
    let e = shared
        .entries
        .read()
        .ok()
        .and_then(|s| s.get(&port).cloned());
    match e {
        None => (StatusCode::NOT_FOUND, Json(json!({}))),
        Some(e) => {
            let healthy = shared.proxy_healthy();
            (
                if e.local_endpoints > 0 && healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                Json(json!({
                    "service": {"namespace": e.namespace, "name": e.name},
                    "localEndpoints": e.local_endpoints,
                    "serviceProxyHealthy": healthy,
                })),
            )
        }
    }
}

/// Binds `port` on every address, retrying with backoff while it fails (each failure recorded
/// for readiness), then serves until aborted.
async fn serve(shared: Arc<Shared>, port: u16, service: String) {
    let app = Router::new()
        .route("/", get(answer))
        .route("/healthz", get(answer))
        .with_state((shared.clone(), port));
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let mut wait = BIND_RETRY_FIRST;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(port, service, error = %e, retry_in = ?wait, "cannot serve health-check node port");
                if let Ok(mut f) = shared.bind_failures.write() {
                    let since = f.get(&port).map_or_else(SystemTime::now, |x| x.since);
                    f.insert(
                        port,
                        BindFailure {
                            service: service.clone(),
                            error: e.to_string(),
                            since,
                        },
                    );
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(BIND_RETRY_MAX);
            }
        }
    };
    if let Ok(mut f) = shared.bind_failures.write()
        && f.remove(&port).is_some()
    {
        tracing::info!(port, service, "health-check node port served");
    }
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(port, error = %e, "health-check server failed");
    }
}

impl HealthChecks {
    /// No servers yet; drivers' sync state is read from `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            shared: Arc::new(Shared {
                entries: Default::default(),
                generations: Mutex::new(Generations {
                    now: 0,
                    before: 0,
                    changed: Instant::now(),
                }),
                registry,
                bind_failures: Default::default(),
            }),
            servers: Default::default(),
        }
    }

    /// Brings the servers in line with the view: new ports served, gone ones stopped, counts
    /// and the table's generation updated.
    pub fn reconcile(&self, view: &ServiceView) {
        let now = view.table.generation();
        if let Ok(mut g) = self.shared.generations.lock()
            && g.now != now
        {
            *g = Generations {
                now,
                before: g.now,
                changed: Instant::now(),
            };
        }
        let want: HashMap<u16, Entry> = view
            .health_checks()
            .into_iter()
            .map(|(port, key, local_endpoints)| {
                (
                    port,
                    Entry {
                        namespace: key.namespace,
                        name: key.name,
                        local_endpoints,
                    },
                )
            })
            .collect();
        let Ok(mut servers) = self.servers.lock() else {
            return;
        };
        servers.retain(|port, h| {
            let keep = want.contains_key(port);
            if !keep {
                h.abort();
                if let Ok(mut f) = self.shared.bind_failures.write() {
                    f.remove(port);
                }
            }
            keep
        });
        for (port, e) in &want {
            servers.entry(*port).or_insert_with(|| {
                tokio::spawn(serve(
                    self.shared.clone(),
                    *port,
                    format!("{}/{}", e.namespace, e.name),
                ))
            });
        }
        if let Ok(mut s) = self.shared.entries.write() {
            *s = want;
        }
    }

    /// Readiness conditions: one `HealthCheckNodePort` (False, `BindFailed`) per port not
    /// served yet.
    pub fn conditions(&self) -> Vec<Condition> {
        let Ok(f) = self.shared.bind_failures.read() else {
            return Vec::new();
        };
        f.iter()
            .map(|(port, b)| {
                condition(
                    "HealthCheckNodePort",
                    false,
                    "BindFailed",
                    format!(
                        "health-check node port {port} of Service {} is not served: {}; retrying",
                        b.service, b.error
                    ),
                    "",
                    "",
                    Some(b.since),
                )
            })
            .collect()
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        if let Ok(s) = self.servers.lock() {
            for h in s.values() {
                h.abort();
            }
        }
    }
}
