//! Node: readiness with typed conditions, field validation, and the watch stream.

use netlet_sdk::proto::{
    Capability, ConditionStatus, NetworkReadyRequest, WatchNetworkReadyRequest,
};
use tokio_stream::StreamExt;
use tonic::Code;

use super::{check, expect_code, expect_ok};
use crate::conformance::{Check, Outcome};

pub fn checks() -> Vec<Check> {
    vec![
        check!(
            "node/network-ready-conditions",
            Some(Capability::Node),
            |ctx| {
                let r = expect_ok(
                    "NetworkReady",
                    ctx.clients
                        .node
                        .clone()
                        .network_ready(NetworkReadyRequest::default())
                        .await,
                )?
                .into_inner()
                .readiness
                .ok_or("readiness missing")?;
                if !r.ready && r.reason.is_empty() {
                    return Err("not ready without a reason".into());
                }
                for c in &r.conditions {
                    if c.r#type.is_empty() || c.status == ConditionStatus::Unspecified as i32 {
                        return Err(format!("condition without type or status: {c:?}"));
                    }
                    if c.status == ConditionStatus::False as i32 && c.reason.is_empty() {
                        return Err(format!("false condition without reason: {c:?}"));
                    }
                }
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "node/network-ready-invalid-network",
            Some(Capability::Node),
            |ctx| {
                let r = ctx
                    .clients
                    .node
                    .clone()
                    .network_ready(NetworkReadyRequest {
                        network: "Not_A_Label".into(),
                    })
                    .await;
                expect_code("NetworkReady", r, Code::InvalidArgument, Some("network"))?;
                Ok(Outcome::Passed)
            }
        ),
        check!("node/watch-first-snapshot", Some(Capability::Node), |ctx| {
            let now = expect_ok(
                "NetworkReady",
                ctx.clients
                    .node
                    .clone()
                    .network_ready(NetworkReadyRequest::default())
                    .await,
            )?
            .into_inner()
            .readiness
            .ok_or("readiness missing")?;
            let stream = ctx
                .clients
                .node
                .clone()
                .watch_network_ready(WatchNetworkReadyRequest::default())
                .await;
            let mut stream = expect_ok("WatchNetworkReady", stream)?.into_inner();
            let first = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .map_err(|_| "no first snapshot within 5s".to_string())?
                .ok_or("stream ended")?
                .map_err(|s| format!("stream error: {s}"))?
                .readiness
                .ok_or("readiness missing")?;
            if first.ready != now.ready {
                return Err(format!(
                    "first snapshot ready={} but NetworkReady says {}",
                    first.ready, now.ready
                ));
            }
            Ok(Outcome::Passed)
        }),
    ]
}
