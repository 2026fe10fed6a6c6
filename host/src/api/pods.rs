//! `Pods`: attach orchestration lives in [`crate::attach`]; this module is the gRPC face.

use netlet_sdk::{
    proto::{
        AttachPodRequest, AttachPodResponse, DetachPodRequest, DetachPodResponse,
        GarbageCollectRequest, GarbageCollectResponse, ListAttachmentsRequest,
        ListAttachmentsResponse, PodNetworkStatusRequest, PodNetworkStatusResponse,
        pods_server::Pods,
    },
    state, validate,
};
use tonic::{Request, Response, Status};

use super::Api;
use crate::error;
use netlet_sdk::server::to_completion;

#[tonic::async_trait]
impl Pods for Api {
    async fn attach_pod(
        &self,
        req: Request<AttachPodRequest>,
    ) -> Result<Response<AttachPodResponse>, Status> {
        let req = req.into_inner();
        validate::attach_pod(&req)?;
        let host = self.0.clone();
        Ok(Response::new(
            to_completion(async move { host.attach(req).await }).await?,
        ))
    }

    async fn detach_pod(
        &self,
        req: Request<DetachPodRequest>,
    ) -> Result<Response<DetachPodResponse>, Status> {
        let req = req.into_inner();
        validate::detach_pod(&req)?;
        let host = self.0.clone();
        to_completion(async move { host.detach(&req.sandbox_id, &req.networks).await }).await?;
        Ok(Response::new(DetachPodResponse {}))
    }

    async fn pod_network_status(
        &self,
        req: Request<PodNetworkStatusRequest>,
    ) -> Result<Response<PodNetworkStatusResponse>, Status> {
        let req = req.into_inner();
        validate::sandbox_id("sandbox_id", &req.sandbox_id)?;
        let pod = self
            .0
            .store
            .attachment(&req.sandbox_id)
            .map_err(error::from_store)?
            .ok_or_else(|| state::not_attached(&req.sandbox_id))?;
        Ok(Response::new(PodNetworkStatusResponse { pod: Some(pod) }))
    }

    async fn list_attachments(
        &self,
        req: Request<ListAttachmentsRequest>,
    ) -> Result<Response<ListAttachmentsResponse>, Status> {
        let pods = self.0.store.attachments().map_err(error::from_store)?;
        state::list_attachments(&req.into_inner(), pods).map(Response::new)
    }

    async fn garbage_collect(
        &self,
        req: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectResponse>, Status> {
        let req = req.into_inner();
        validate::garbage_collect(&req)?;
        let host = self.0.clone();
        let removed_sandbox_ids =
            to_completion(async move { host.garbage_collect(&req).await }).await?;
        Ok(Response::new(GarbageCollectResponse {
            removed_sandbox_ids,
        }))
    }
}
