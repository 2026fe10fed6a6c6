//! `Node`: aggregated network readiness, and its change stream.

use netlet_sdk::proto::{
    NetworkReadiness, NetworkReadyRequest, NetworkReadyResponse, WatchNetworkReadyRequest,
    WatchNetworkReadyResponse, node_server::Node,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, codegen::BoxStream};

use super::Api;

/// Readiness without timestamps, to tell a real change from a re-computation.
fn same(a: &NetworkReadiness, b: &NetworkReadiness) -> bool {
    let strip = |r: &NetworkReadiness| {
        let mut r = r.clone();
        for c in &mut r.conditions {
            c.last_transition_time = None;
        }
        r
    };
    strip(a) == strip(b)
}

#[tonic::async_trait]
impl Node for Api {
    async fn network_ready(
        &self,
        req: Request<NetworkReadyRequest>,
    ) -> Result<Response<NetworkReadyResponse>, Status> {
        let req = req.into_inner();
        netlet_sdk::validate::optional_network("network", &req.network)?;
        Ok(Response::new(NetworkReadyResponse {
            readiness: Some(self.0.readiness(&req.network)),
        }))
    }

    async fn watch_network_ready(
        &self,
        req: Request<WatchNetworkReadyRequest>,
    ) -> Result<Response<BoxStream<WatchNetworkReadyResponse>>, Status> {
        let network = req.into_inner().network;
        netlet_sdk::validate::optional_network("network", &network)?;
        let host = self.0.clone();
        let mut changes = host.registry.subscribe();
        let shutdown = host.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut last: Option<NetworkReadiness> = None;
            loop {
                let now = host.readiness(&network);
                if last.as_ref().is_none_or(|l| !same(l, &now)) {
                    let msg = WatchNetworkReadyResponse {
                        readiness: Some(now.clone()),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = crate::stopped(shutdown.clone()) => {
                        let _ = tx.send(Err(Status::unavailable("host shutting down"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
