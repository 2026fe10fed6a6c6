//! The gRPC face of the bridge driver: Pods and Node.

use std::sync::Arc;

use netlet_sdk::proto::{
    AttachPodRequest, AttachPodResponse, Attachment, DetachPodRequest, DetachPodResponse,
    GarbageCollectRequest, GarbageCollectResponse, ListAttachmentsRequest, ListAttachmentsResponse,
    NetworkReadyRequest, NetworkReadyResponse, NetworkSelection, PodNetworkStatusRequest,
    PodNetworkStatusResponse, PodSandbox, WatchNetworkReadyRequest, WatchNetworkReadyResponse,
    node_server::Node, pods_server::Pods,
};
use netlet_sdk::{pods, state, validate};
use tonic::{Request, Response, Status};

use crate::driver::Bridge;

/// Serves [`Bridge`] over gRPC.
#[derive(Clone)]
pub struct Api(pub Arc<Bridge>);

impl pods::PodNetworks for Bridge {
    async fn attach_one(
        this: &Arc<Self>,
        sandbox: &PodSandbox,
        sel: &NetworkSelection,
        field: &str,
    ) -> Result<Attachment, Status> {
        this.attach(sandbox, sel, field).await
    }

    async fn detach_some(
        this: &Arc<Self>,
        sandbox_id: &str,
        only: &[NetworkSelection],
    ) -> Result<(), Status> {
        this.detach(sandbox_id, only).await
    }
}

#[tonic::async_trait]
impl Pods for Api {
    async fn attach_pod(
        &self,
        req: Request<AttachPodRequest>,
    ) -> Result<Response<AttachPodResponse>, Status> {
        pods::attach_pod(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn detach_pod(
        &self,
        req: Request<DetachPodRequest>,
    ) -> Result<Response<DetachPodResponse>, Status> {
        pods::detach_pod(&self.0, req.into_inner()).await?;
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
        let pods = self.0.pods()?;
        pods::garbage_collect(&self.0, req.into_inner(), pods)
            .await
            .map(Response::new)
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
