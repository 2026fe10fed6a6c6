//! A driver's Pods service from what it does for one selection: [`PodsService`] answers
//! AttachPod, DetachPod, PodNetworkStatus, ListAttachments and GarbageCollect with the
//! contract's defaults, order, rollback of a pod half attached, completion when the caller gives
//! up, and garbage collection over the driver's records ([`crate::state`]).

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::{
    AttachPodRequest, AttachPodResponse, Attachment, DetachPodRequest, DetachPodResponse,
    GarbageCollectRequest, GarbageCollectResponse, ListAttachmentsRequest, ListAttachmentsResponse,
    NetworkSelection, PodAttachments, PodNetworkStatusRequest, PodNetworkStatusResponse,
    PodSandbox, pods_server::Pods,
};
use crate::server::to_completion;
use crate::{state, validate};

/// What a driver does for one selection of one pod, and what it has attached.
pub trait PodNetworks: Send + Sync + 'static {
    /// Attaches `sandbox` to the one selection `sel` (defaults filled in); `field` names it in
    /// errors (`networks[1]`).
    fn attach_one(
        this: &Arc<Self>,
        sandbox: &PodSandbox,
        sel: &NetworkSelection,
        field: &str,
    ) -> impl Future<Output = Result<Attachment, Status>> + Send;

    /// Detaches the attachments of `sandbox_id` that `only` matches (all when empty).
    fn detach_some(
        this: &Arc<Self>,
        sandbox_id: &str,
        only: &[NetworkSelection],
    ) -> impl Future<Output = Result<(), Status>> + Send;

    /// The pods attached, with their attachments.
    fn records(
        this: &Arc<Self>,
    ) -> impl Future<Output = Result<Vec<PodAttachments>, Status>> + Send;
}

/// The Pods service of a [`PodNetworks`] driver.
pub struct PodsService<D>(pub Arc<D>);

#[tonic::async_trait]
impl<D: PodNetworks> Pods for PodsService<D> {
    /// Validated, every selection in order, those done detached again when one fails, run to
    /// its end even when the caller goes.
    async fn attach_pod(
        &self,
        req: Request<AttachPodRequest>,
    ) -> Result<Response<AttachPodResponse>, Status> {
        let req = req.into_inner();
        validate::attach_pod(&req)?;
        let d = self.0.clone();
        let attachments = to_completion(async move {
            let sandbox = req.sandbox.unwrap_or_default();
            let nets = state::with_defaults(req.networks);
            let mut done: Vec<NetworkSelection> = Vec::new();
            let mut out = Vec::new();
            for (i, sel) in nets.iter().enumerate() {
                match D::attach_one(&d, &sandbox, sel, &format!("networks[{i}]")).await {
                    Ok(a) => {
                        done.push(sel.clone());
                        out.push(a);
                    }
                    Err(e) => {
                        if !done.is_empty()
                            && let Err(r) = D::detach_some(&d, &sandbox.id, &done).await
                        {
                            tracing::error!(sandbox = %sandbox.id, error = %r, "rollback failed");
                        }
                        return Err(e);
                    }
                }
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(AttachPodResponse { attachments }))
    }

    /// Validated, run to its end even when the caller goes.
    async fn detach_pod(
        &self,
        req: Request<DetachPodRequest>,
    ) -> Result<Response<DetachPodResponse>, Status> {
        let req = req.into_inner();
        validate::detach_pod(&req)?;
        let d = self.0.clone();
        to_completion(async move { D::detach_some(&d, &req.sandbox_id, &req.networks).await })
            .await?;
        Ok(Response::new(DetachPodResponse {}))
    }

    async fn pod_network_status(
        &self,
        req: Request<PodNetworkStatusRequest>,
    ) -> Result<Response<PodNetworkStatusResponse>, Status> {
        state::pod_network_status(&req.into_inner(), D::records(&self.0).await?).map(Response::new)
    }

    async fn list_attachments(
        &self,
        req: Request<ListAttachmentsRequest>,
    ) -> Result<Response<ListAttachmentsResponse>, Status> {
        state::list_attachments(&req.into_inner(), D::records(&self.0).await?).map(Response::new)
    }

    /// The stale sandboxes among the records detached (from the request's network only, when
    /// it names one).
    async fn garbage_collect(
        &self,
        req: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectResponse>, Status> {
        let req = req.into_inner();
        let stale = state::stale_sandboxes(&req, D::records(&self.0).await?)?;
        let only = state::gc_selection(&req);
        let d = self.0.clone();
        let ids = stale.clone();
        to_completion(async move {
            for id in &ids {
                D::detach_some(&d, id, &only).await?;
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(GarbageCollectResponse {
            removed_sandbox_ids: stale,
        }))
    }
}
