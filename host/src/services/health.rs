//! Health-check node ports: for each Service with `externalTrafficPolicy: Local` and a
//! `healthCheckNodePort`, an HTTP server on that port (all node addresses, IPv4 and IPv6)
//! answering `200` when this node has endpoints for the Service's external traffic and `503`
//! when it has none, with kube-proxy's JSON body, so load balancers send traffic only to nodes
//! that can serve it.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::json;

use super::sources::ServiceView;

/// One port's Service and its local endpoint count.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

/// Port → what its server answers.
type Shared = Arc<RwLock<HashMap<u16, Entry>>>;

/// The running health-check servers.
#[derive(Default)]
pub struct HealthChecks {
    state: Shared,
    servers: std::sync::Mutex<HashMap<u16, tokio::task::JoinHandle<()>>>,
}

async fn answer(
    State((state, port)): State<(Shared, u16)>,
) -> (StatusCode, Json<serde_json::Value>) {
    let e = state.read().ok().and_then(|s| s.get(&port).cloned());
    match e {
        None => (StatusCode::NOT_FOUND, Json(json!({}))),
        Some(e) => (
            if e.local_endpoints > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            Json(json!({
                "service": {"namespace": e.namespace, "name": e.name},
                "localEndpoints": e.local_endpoints,
                "serviceProxyHealthy": true,
            })),
        ),
    }
}

impl HealthChecks {
    /// Brings the servers in line with the view: new ports served, gone ones stopped, counts
    /// updated.
    pub fn reconcile(&self, view: &ServiceView) {
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
            }
            keep
        });
        for port in want.keys() {
            if servers.contains_key(port) {
                continue;
            }
            let app = Router::new()
                .route("/", get(answer))
                .route("/healthz", get(answer))
                .with_state((self.state.clone(), *port));
            let port = *port;
            servers.insert(
                port,
                tokio::spawn(async move {
                    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => {
                            if let Err(e) = axum::serve(l, app).await {
                                tracing::error!(port, error = %e, "health-check server failed");
                            }
                        }
                        Err(e) => {
                            tracing::error!(port, error = %e, "cannot serve health-check node port")
                        }
                    }
                }),
            );
        }
        if let Ok(mut s) = self.state.write() {
            *s = want;
        }
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
