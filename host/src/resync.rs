//! Replay of the full desired state to a driver after every (re)registration: the Service and
//! policy tables as full syncs, and the stored attachments of the networks it serves (AttachPod
//! is idempotent, and the stored addresses are requested again so none changes).

use std::sync::{Arc, Weak};

use netlet_sdk::parts::MAX_BATCH_BYTES;
use netlet_sdk::proto::{AttachPodRequest, Capability, DetachPodRequest, ListAttachmentsRequest};

use crate::{
    Host,
    api::{self, send, send_parts},
    attach::selection_of,
    registry::DriverEntry,
};

/// Installs the replay hook on the host's registry.
pub(crate) fn install(host: &Arc<Host>) {
    let weak: Weak<Host> = Arc::downgrade(host);
    host.registry
        .on_register(Arc::new(move |d: Arc<DriverEntry>| {
            let weak = weak.clone();
            tokio::spawn(async move {
                if let Some(host) = weak.upgrade() {
                    replay(&host, &d).await;
                }
            });
        }));
}

async fn replay(host: &Host, d: &Arc<DriverEntry>) {
    // A full sync in the host's epoch, even of an empty table: a driver that outlived an
    // earlier host drops what this one does not want.
    // Services and policies only once their sources are read: an empty full sync now would
    // take away what the driver still serves and enforces from before a host restart.
    let loaded = host.sources_loaded();
    // The node table first: a pod network that takes its subnets from this node's entry can
    // only rebuild the pods replayed below once it has it.
    if d.has(Capability::Cluster) {
        let _ = crate::cluster::fanout::sync(&host.nodes, d).await;
    }
    if d.has(Capability::Services) && loaded {
        let view = host.services.lock().await;
        let r = send_parts(
            d,
            view.table.full_sync_parts(MAX_BATCH_BYTES),
            &api::program_service,
        )
        .await;
        record(d, &d.services_generation, "Services", r);
    }
    if d.has(Capability::Policy) && loaded {
        let view = host.policies.lock().await;
        let r = send(d, view.table.full_sync_request(), &api::apply_policy).await;
        record(d, &d.policy_generation, "Policy", r);
    }
    if d.has(Capability::Pods) {
        let pods = match host.store.attachments() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(driver = %d.name, error = %e, "cannot read attachments for replay");
                return;
            }
        };
        let mut replayed = 0usize;
        for pod in pods {
            // Under the sandbox's lock, and only if it is still attached: a detach that ran
            // since the list was read must not be undone by a late replay.
            let id = pod
                .sandbox
                .as_ref()
                .map(|s| s.id.clone())
                .unwrap_or_default();
            let _guard = host.lock_key(&format!("sandbox/{id}")).await;
            let Ok(Some(pod)) = host.store.attachment(&id) else {
                continue;
            };
            for a in pod
                .attachments
                .iter()
                .filter(|a| a.driver == d.name || d.serves_network(&a.network))
            {
                let req = AttachPodRequest {
                    sandbox: pod.sandbox.clone(),
                    networks: vec![selection_of(a)],
                };
                match d.clients.pods.clone().attach_pod(req).await {
                    Ok(_) => replayed += 1,
                    Err(e) => {
                        tracing::warn!(driver = %d.name, network = %a.network, sandbox = ?pod.sandbox.as_ref().map(|s| &s.id), error = %e, "attachment replay failed")
                    }
                }
            }
        }
        if replayed > 0 {
            tracing::info!(driver = %d.name, attachments = replayed, "attachments replayed");
        }
        sweep_orphans(host, d).await;
    }
}

/// Records what a driver acknowledged of a replay (0 when it failed: the next batch is a full
/// sync again).
fn record(
    d: &DriverEntry,
    generation: &std::sync::Mutex<u64>,
    what: &str,
    r: Result<u64, tonic::Status>,
) {
    let applied = r.unwrap_or_else(|e| {
        tracing::warn!(driver = %d.name, error = %e, "{what} replay failed");
        0
    });
    if let Ok(mut g) = generation.lock() {
        *g = applied;
    }
}

/// Detaches, on `d`, the sandboxes it holds that the host has no record of: an attach whose
/// answer was lost when the driver died, or a rollback that could not reach it. Each is
/// re-checked under the sandbox's lock, so an attach in flight (which holds it until its
/// record is committed) is never mistaken for an orphan.
async fn sweep_orphans(host: &Host, d: &DriverEntry) {
    let pods = match d
        .clients
        .pods
        .clone()
        .list_attachments(ListAttachmentsRequest::default())
        .await
    {
        Ok(r) => r.into_inner().pods,
        // A driver that does not list its attachments keeps no state to sweep.
        Err(e) if e.code() == tonic::Code::Unimplemented => return,
        Err(e) => {
            tracing::warn!(driver = %d.name, error = %e, "cannot list the driver's attachments");
            return;
        }
    };
    for id in pods.into_iter().filter_map(|p| p.sandbox.map(|s| s.id)) {
        let _guard = host.lock_key(&format!("sandbox/{id}")).await;
        let known = match host.store.attachment(&id) {
            Ok(rec) => rec.is_some_and(|p| {
                p.attachments
                    .iter()
                    .any(|a| a.driver == d.name || d.serves_network(&a.network))
            }),
            Err(_) => true,
        };
        if known {
            continue;
        }
        let r = d
            .clients
            .pods
            .clone()
            .detach_pod(DetachPodRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => {
                tracing::warn!(driver = %d.name, sandbox = %id, "detached an attachment the host had no record of")
            }
            Err(e) => {
                tracing::warn!(driver = %d.name, sandbox = %id, error = %e, "orphan detach failed")
            }
        }
    }
}
