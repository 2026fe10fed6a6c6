//! The Kubernetes API as a source (kube-rs): Services and EndpointSlices of the whole cluster,
//! each kept by a reflector (the watch relists on 410 Gone, follows bookmarks and backs off on
//! errors, as kube-runtime's watcher does), fed into the node's Service view as
//! [`Source::Kubernetes`] and checked with the manifests' rules ([`wanted_of`]). A relist
//! replaces a reflector's store only once it is complete, so while the API server is away or
//! relisting, the data plane keeps its last state, and afterwards only the difference is
//! applied (the view hands drivers deltas).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

use super::manifests::wanted_of;
use super::sources::Source;
use crate::Host;

/// Changes arriving within this long of each other are applied together.
const SETTLE: Duration = Duration::from_millis(20);

/// A client for the API server a kubeconfig file names (its current context).
pub async fn client(path: &Path) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Client::try_from(cfg).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// What a watch stream's events do: an error is logged (the watcher retries with backoff), any
/// event wakes the applier.
fn follow<T>(
    what: &'static str,
    tx: tokio::sync::mpsc::Sender<()>,
) -> impl FnMut(Result<T, watcher::Error>) -> std::future::Ready<()> {
    move |ev| {
        if let Err(e) = ev {
            tracing::warn!(kind = what, error = %e, "Kubernetes watch failed; retrying with backoff");
        }
        let _ = tx.try_send(());
        std::future::ready(())
    }
}

/// Follows the API server until shutdown.
pub async fn watch(host: Arc<Host>, client: Client) {
    let (services, services_w) = reflector::store::<Service>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let s = tokio::spawn(
        reflector(
            services_w,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .for_each(follow("Service", tx.clone())),
    );
    let e = tokio::spawn(
        reflector(
            slices_w,
            watcher(
                Api::<EndpointSlice>::all(client),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .for_each(follow("EndpointSlice", tx)),
    );
    let mut shutdown = std::pin::pin!(crate::stopped(host.shutdown.clone()));
    // Nothing is applied before both have been listed once: an empty store is not "no
    // Services".
    tokio::select! {
        r = async { services.wait_until_ready().await.and(slices.wait_until_ready().await) } => {
            if r.is_err() {
                return;
            }
        }
        () = &mut shutdown => {
            s.abort();
            e.abort();
            return;
        }
    }
    tracing::info!(
        services = services.len(),
        endpoint_slices = slices.len(),
        "Kubernetes API listed"
    );
    loop {
        apply(&host, &services, &slices).await;
        tokio::select! {
            Some(()) = rx.recv() => tokio::time::sleep(SETTLE).await,
            () = &mut shutdown => break,
        }
        while rx.try_recv().is_ok() {}
    }
    s.abort();
    e.abort();
}

async fn apply(
    host: &Host,
    services: &reflector::Store<Service>,
    slices: &reflector::Store<EndpointSlice>,
) {
    let (svcs, eps) = (services.state(), slices.state());
    let (wanted, invalid) = wanted_of(
        svcs.iter().map(|s| ("kubernetes".to_string(), s.as_ref())),
        eps.iter().map(|s| ("kubernetes".to_string(), s.as_ref())),
        &host.settings.node,
        &host.settings.node_port_range,
    );
    for e in &invalid {
        tracing::error!(error = %e, "Kubernetes object left out");
    }
    tracing::debug!(
        services = wanted.len(),
        endpoints = wanted.values().map(|w| w.endpoints.len()).sum::<usize>(),
        "Kubernetes objects applied"
    );
    let mut view = host.services.lock().await;
    let prev = view.table.generation();
    let (delta, conflicts) = view.replace(Source::Kubernetes, wanted);
    for c in conflicts {
        tracing::error!(service = %format!("{}/{}", c.key.namespace, c.key.name), owner = c.owner.as_str(), "Kubernetes Service not applied: another source owns it");
    }
    if let Err(e) = crate::api::services::push(host, &view, prev, delta).await {
        tracing::warn!(error = %e, "Services drivers not brought up to date; retried at their next resync");
    }
}
