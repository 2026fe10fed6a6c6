//! The only part that sends the node table to drivers (those that declare CAPABILITY_CLUSTER):
//! woken by the table's generation, it sends each driver what changed since the generation the
//! driver applied, or the whole table (in parts when large) when it applied none or refused a
//! delta; a driver that failed is tried again every [`RETRY`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use netlet_sdk::parts::{MAX_BATCH_BYTES, split};
use netlet_sdk::proto::{Capability, ProgramNodesRequest};
use tokio::sync::watch;
use tonic::Status;

use super::Nodes;
use crate::registry::{DriverEntry, Registry};

/// How soon a driver that failed a batch is tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// Runs until `stop` turns true.
pub async fn run(nodes: Arc<Nodes>, registry: Arc<Registry>, stop: watch::Receiver<bool>) {
    let mut generation = nodes.subscribe();
    let mut stop = std::pin::pin!(crate::stopped(stop));
    loop {
        let drivers = registry.with_capability(Capability::Cluster);
        let results = join_all(drivers.iter().map(|d| sync(&nodes, d))).await;
        let failed = results.iter().any(Result::is_err);
        tokio::select! {
            r = generation.changed() => if r.is_err() { return },
            () = tokio::time::sleep(RETRY), if failed => {}
            () = &mut stop => return,
        }
    }
}

async fn send(d: &DriverEntry, req: ProgramNodesRequest) -> Result<u64, Status> {
    let mut applied = 0;
    for part in split(req, MAX_BATCH_BYTES) {
        applied = d
            .clients
            .cluster
            .clone()
            .program_nodes(part)
            .await?
            .into_inner()
            .applied_generation;
    }
    Ok(applied)
}

/// Brings one driver up to the table's generation (one batch at a time per driver).
pub async fn sync(nodes: &Nodes, d: &Arc<DriverEntry>) -> Result<(), Status> {
    let _one = d.cluster_sync.lock().await;
    let have = d.cluster_generation.lock().map(|g| *g).unwrap_or(0);
    let Some(req) = nodes.since(have) else {
        return Ok(());
    };
    let delta = !req.full_sync;
    let res = match send(d, req).await {
        // A driver that refuses a delta (it restarted, or lost its state) gets the whole table.
        Err(s) if delta && s.code() == tonic::Code::FailedPrecondition => {
            tracing::info!(driver = %d.name, reason = %s.message(), "node table delta refused; sending a full sync");
            send(d, nodes.full_sync()).await
        }
        other => other,
    };
    if let Ok(mut g) = d.cluster_generation.lock() {
        *g = *res.as_ref().unwrap_or(&0);
    }
    res.map(|_| ()).map_err(|s| {
        tracing::warn!(driver = %d.name, error = %s, "node table not applied; trying again");
        crate::error::from_fanout(d, s)
    })
}
