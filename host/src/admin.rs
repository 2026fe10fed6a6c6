//! The admin HTTP endpoint on a unix socket beside the gRPC one: `/metrics`, `/healthz`, and
//! `/debug/state`, a JSON dump of the host's state; and optionally on TCP for Prometheus, with
//! `/metrics` and `/healthz` only.

use std::sync::Arc;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use netlet_sdk::{proto::Capability, server::BoundSocket};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{Error, Host, Result, config::Settings};

/// The bound admin listeners.
pub struct Listeners {
    unix: BoundSocket,
    tcp: Option<tokio::net::TcpListener>,
}

/// Binds the admin unix socket (mode 0660) and the optional TCP address.
pub async fn bind(settings: &Settings) -> Result<Listeners> {
    let unix = netlet_sdk::server::bind_unix(&settings.admin_socket, 0o660)?;
    let tcp = match settings.admin_address {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(Error::Admin)?,
        ),
    };
    Ok(Listeners { unix, tcp })
}

fn capability_name(c: i32) -> String {
    Capability::try_from(c)
        .map(|c| {
            c.as_str_name()
                .trim_start_matches("CAPABILITY_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| format!("unknown({c})"))
}

/// The JSON state dump.
pub async fn state(host: &Host) -> Value {
    let readiness = host.readiness("");
    let drivers: Vec<Value> = host
        .registry
        .drivers()
        .iter()
        .map(|d| {
            let h = d.health();
            json!({
                "name": d.name,
                "source": d.source,
                "socket": d.socket,
                "vendorVersion": d.info.vendor_version,
                "apiVersion": d.api_version,
                "capabilities": d.info.capabilities.iter().map(|c| capability_name(*c)).collect::<Vec<_>>(),
                "networks": d.info.networks,
                "ready": h.ready,
                "reason": h.reason,
                "message": h.message,
                "restarts": host.metrics.restarts_of(&d.name),
                "servicesGeneration": d.services_generation.lock().map(|g| *g).unwrap_or(0),
                "policyGeneration": d.policy_generation.lock().map(|g| *g).unwrap_or(0),
            })
        })
        .collect();
    let conditions: Vec<Value> = readiness
        .conditions
        .iter()
        .map(|c| {
            json!({
                "type": c.r#type,
                "status": c.status().as_str_name().trim_start_matches("CONDITION_STATUS_"),
                "reason": c.reason,
                "message": c.message,
                "network": c.network,
                "driver": c.driver,
            })
        })
        .collect();
    let attachments = host.store.attachments().map(|a| a.len()).unwrap_or(0);
    let (svc_gen, svc_count) = {
        let v = host.services.lock().await;
        (v.table.generation(), v.table.len())
    };
    let errors = host
        .source_errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    let errors_of =
        |s: crate::services::sources::Source| errors.get(&s).cloned().unwrap_or_default();
    let (manifest_errors, kubernetes_errors) = (
        errors_of(crate::services::sources::Source::Manifests),
        errors_of(crate::services::sources::Source::Kubernetes),
    );
    let policy_gen = host.policies.lock().await.table.generation();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "socket": host.settings.socket,
        "pluginDir": host.settings.plugin_dir,
        "stateDir": host.settings.state_dir,
        "readiness": {
            "ready": readiness.ready,
            "reason": readiness.reason,
            "message": readiness.message,
            "conditions": conditions,
        },
        "drivers": drivers,
        "attachments": attachments,
        "services": { "generation": svc_gen, "count": svc_count, "manifestErrors": manifest_errors, "kubernetesErrors": kubernetes_errors },
        "policies": { "generation": policy_gen },
    })
}

async fn metrics(State(host): State<Arc<Host>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        {
            let text = host.metrics.encode();
            let extra = crate::dns::metrics_text(host.dns.as_deref(), &host.modules);
            match text.rfind("# EOF") {
                Some(i) => format!("{}{extra}{}", &text[..i], &text[i..]),
                None => text + &extra,
            }
        },
    )
}

/// The process answers: it is alive. Network readiness is /debug/state's (and NetworkReady's)
/// business.
async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn debug_state(State(host): State<Arc<Host>>) -> impl IntoResponse {
    Json(state(&host).await)
}

/// The router of the unix socket: metrics, health and the state dump.
pub fn router(host: Arc<Host>) -> Router {
    scrape_router(host.clone()).merge(
        Router::new()
            .route("/debug/state", get(debug_state))
            .with_state(host),
    )
}

/// The router of the TCP address, reachable from the network: `/metrics` and `/healthz` only
/// (the state dump names pods, sockets and errors: it stays on the unix socket).
pub fn scrape_router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(host)
}

/// Serves until shutdown.
pub async fn serve(mut l: Listeners, host: Arc<Host>, shutdown: watch::Receiver<bool>) {
    let app = router(host.clone());
    let tcp = l.tcp.take().map(|t| {
        let app = scrape_router(host);
        let s = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(t, app)
                .with_graceful_shutdown(crate::stopped(s))
                .await
            {
                tracing::error!(error = %e, "admin TCP endpoint failed");
            }
        })
    });
    if let Some(listener) = l.unix.take_listener()
        && let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(crate::stopped(shutdown))
            .await
    {
        tracing::error!(error = %e, "admin endpoint failed");
    }
    if let Some(t) = tcp {
        let _ = t.await;
    }
    drop(l);
}
