//! The gRPC face of the bridge driver: Pods and Node.

use std::sync::Arc;

use netlet_sdk::proto::{
    AttachPodRequest, AttachPodResponse, DetachPodRequest, DetachPodResponse,
    GarbageCollectRequest, GarbageCollectResponse, ListAttachmentsRequest, ListAttachmentsResponse,
    NetworkReadyRequest, NetworkReadyResponse, NetworkSelection, PodNetworkStatusRequest,
    PodNetworkStatusResponse, WatchNetworkReadyRequest, WatchNetworkReadyResponse,
    node_server::Node, pods_server::Pods,
};
use netlet_sdk::{server::to_completion, state, validate};
use tonic::{Request, Response, Status};

use crate::driver::Bridge;

/// Serves [`Bridge`] over gRPC.
#[derive(Clone)]
pub struct Api(pub Arc<Bridge>);

#[tonic::async_trait]
impl Pods for Api {
    async fn attach_pod(
        &self,
        req: Request<AttachPodRequest>,
    ) -> Result<Response<AttachPodResponse>, Status> {
        let req = req.into_inner();
        validate::attach_pod(&req)?;
        let bridge = self.0.clone();
        // Finished (or rolled back) even when the host gives up on the call.
        let attachments = to_completion(async move {
            let sandbox = req.sandbox.unwrap_or_default();
            let nets = netlet_sdk::state::with_defaults(req.networks);
            let mut done: Vec<NetworkSelection> = Vec::new();
            let mut attachments = Vec::new();
            for (i, sel) in nets.iter().enumerate() {
                match bridge
                    .attach(&sandbox, sel, &format!("networks[{i}]"))
                    .await
                {
                    Ok(a) => {
                        let mut s = sel.clone();
                        s.interface_name = a.interface_name.clone();
                        done.push(s);
                        attachments.push(a);
                    }
                    Err(e) => {
                        if !done.is_empty()
                            && let Err(r) = bridge.detach(&sandbox.id, &done).await
                        {
                            tracing::error!(sandbox = %sandbox.id, error = %r, "rollback failed");
                        }
                        return Err(e);
                    }
                }
            }
            Ok(attachments)
        })
        .await?;
        Ok(Response::new(AttachPodResponse { attachments }))
    }

    async fn detach_pod(
        &self,
        req: Request<DetachPodRequest>,
    ) -> Result<Response<DetachPodResponse>, Status> {
        let req = req.into_inner();
        validate::detach_pod(&req)?;
        let bridge = self.0.clone();
        to_completion(async move { bridge.detach(&req.sandbox_id, &req.networks).await }).await?;
        Ok(Response::new(DetachPodResponse {}))
    }

    async fn pod_network_status(
        &self,
        req: Request<PodNetworkStatusRequest>,
    ) -> Result<Response<PodNetworkStatusResponse>, Status> {
        state::pod_network_status(&req.into_inner(), self.0.pods()?).map(Response::new)
    }

    async fn list_attachments(
        &self,
        req: Request<ListAttachmentsRequest>,
    ) -> Result<Response<ListAttachmentsResponse>, Status> {
        state::list_attachments(&req.into_inner(), self.0.pods()?).map(Response::new)
    }

    async fn garbage_collect(
        &self,
        req: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectResponse>, Status> {
        let req = req.into_inner();
        let stale = state::stale_sandboxes(&req, self.0.pods()?)?;
        let only = state::gc_selection(&req);
        let bridge = self.0.clone();
        let ids = stale.clone();
        to_completion(async move {
            for id in &ids {
                bridge.detach(id, &only).await?;
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(GarbageCollectResponse {
            removed_sandbox_ids: stale,
        }))
    }
}

#[tonic::async_trait]
impl Node for Api {
    async fn network_ready(
        &self,
        req: Request<NetworkReadyRequest>,
    ) -> Result<Response<NetworkReadyResponse>, Status> {
        let network = req.into_inner().network;
        validate::optional_network("network", &network)?;
        if !network.is_empty() && !self.0.network_names().contains(&network) {
            return Err(validate::field_error(
                tonic::Code::NotFound,
                "network",
                format!("this driver does not serve {network:?}"),
                "NETWORK_NOT_SERVED",
            ));
        }
        Ok(Response::new(NetworkReadyResponse {
            readiness: Some(self.0.readiness()),
        }))
    }

    async fn watch_network_ready(
        &self,
        req: Request<WatchNetworkReadyRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<WatchNetworkReadyResponse>>, Status> {
        let network = req.into_inner().network;
        validate::optional_network("network", &network)?;
        let mut rx = self.0.watch();
        let (tx, out) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let now = rx.borrow_and_update().clone();
                if tx
                    .send(Ok(WatchNetworkReadyResponse {
                        readiness: Some(now),
                    }))
                    .await
                    .is_err()
                    || rx.changed().await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}
