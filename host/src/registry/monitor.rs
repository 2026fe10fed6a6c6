//! Health monitoring: probes each registered driver periodically (Node/NetworkReady when the
//! driver serves Node, else Identity/Probe), records its readiness, and deregisters an external
//! driver whose probes keep failing. Supervised drivers are not deregistered here: their
//! supervisor sees the process exit and restarts it.

use std::{sync::Arc, time::SystemTime};

use netlet_sdk::proto::{Capability, NetworkReadyRequest, ProbeRequest};

use super::{DriverEntry, Health, Registry, Source};

async fn probe(entry: &DriverEntry) -> Result<Health, tonic::Status> {
    if entry.has(Capability::Node) {
        let r = entry
            .clients
            .node
            .clone()
            .network_ready(NetworkReadyRequest::default())
            .await?
            .into_inner()
            .readiness
            .unwrap_or_default();
        Ok(Health {
            ready: r.ready,
            reason: r.reason,
            message: r.message,
            conditions: r.conditions,
            since: None,
        })
    } else {
        let r = entry
            .clients
            .identity
            .clone()
            .probe(ProbeRequest {})
            .await?
            .into_inner();
        Ok(Health {
            ready: r.ready,
            reason: r.reason,
            message: r.message,
            conditions: Vec::new(),
            since: None,
        })
    }
}

fn still_registered(reg: &Registry, entry: &DriverEntry) -> bool {
    reg.get(&entry.name).is_some_and(|e| e.epoch == entry.epoch)
}

/// Starts the monitor of one registration; it ends when the registration does.
pub fn spawn(reg: Arc<Registry>, entry: Arc<DriverEntry>) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        let mut tick = tokio::time::interval(reg.options().probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !still_registered(&reg, &entry) {
                return;
            }
            let mut next = match probe(&entry).await {
                Ok(h) => {
                    failures = 0;
                    h
                }
                Err(status) => {
                    failures += 1;
                    tracing::warn!(driver = %entry.name, failures, error = %status, "driver probe failed");
                    if entry.source == Source::External
                        && failures >= reg.options().probe_failure_threshold
                    {
                        reg.deregister(&entry.name, Some(entry.epoch), "probe failed repeatedly");
                        return;
                    }
                    Health {
                        ready: false,
                        reason: "ProbeFailed".into(),
                        message: format!("probe failed {failures} time(s): {}", status.message()),
                        ..Default::default()
                    }
                }
            };
            let changed = {
                let Ok(mut h) = entry.health.lock() else {
                    return;
                };
                next.since = if h.ready == next.ready && h.since.is_some() {
                    h.since
                } else {
                    Some(SystemTime::now())
                };
                let changed = h.ready != next.ready
                    || h.reason != next.reason
                    || h.message != next.message
                    || h.conditions.len() != next.conditions.len()
                    || h.conditions
                        .iter()
                        .zip(&next.conditions)
                        .any(|(a, b)| a.status != b.status || a.reason != b.reason);
                *h = next;
                changed
            };
            if changed {
                reg.notify();
            }
        }
    });
}
