//! The gRPC face of the bridge driver: Pods (through the SDK's [`pods::PodsService`]), Node and
//! Cluster.

use std::sync::Arc;

use netlet_sdk::proto::{
    Attachment, ListNodesRequest, ListNodesResponse, NetworkReadyRequest, NetworkReadyResponse,
    NetworkSelection, PodAttachments, PodSandbox, ProgramNodesRequest, ProgramNodesResponse,
    WatchNetworkReadyRequest, WatchNetworkReadyResponse, cluster_server::Cluster,
    node_server::Node,
};
use netlet_sdk::{pods, validate};
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

    async fn records(this: &Arc<Self>) -> Result<Vec<PodAttachments>, Status> {
        this.pods()
    }
}

#[tonic::async_trait]
impl Node for Api {
    async fn network_ready(
        &self,
        req: Request<NetworkReadyRequest>,
    ) -> Result<Response<NetworkReadyResponse>, Status> {
        let network = req.into_inner().network;
        validate::network_ready_filter(&network, &self.0.network_names())?;
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

#[tonic::async_trait]
impl Cluster for Api {
    async fn program_nodes(
        &self,
        req: Request<ProgramNodesRequest>,
    ) -> Result<Response<ProgramNodesResponse>, Status> {
        Ok(Response::new(
            self.0.program_nodes(&req.into_inner()).await?,
        ))
    }

    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(self.0.cluster_nodes().await))
    }
}
