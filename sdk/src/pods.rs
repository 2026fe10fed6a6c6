//! A driver's AttachPod, DetachPod and GarbageCollect from what it does for one selection:
//! the contract's defaults, order, rollback of a pod half attached, completion when the caller
//! gives up, and garbage collection over its records ([`crate::state`]).

use std::future::Future;
use std::sync::Arc;

use tonic::Status;

use crate::proto::{
    AttachPodRequest, AttachPodResponse, Attachment, DetachPodRequest, GarbageCollectRequest,
    GarbageCollectResponse, NetworkSelection, PodAttachments, PodSandbox,
};
use crate::server::to_completion;
use crate::{state, validate};

/// What a driver does for one selection of one pod.
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
}

/// AttachPod: validated, every selection in order, those done detached again when one fails,
/// run to its end even when the caller goes.
pub async fn attach_pod<D: PodNetworks>(
    d: &Arc<D>,
    req: AttachPodRequest,
) -> Result<AttachPodResponse, Status> {
    validate::attach_pod(&req)?;
    let d = d.clone();
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
    Ok(AttachPodResponse { attachments })
}

/// DetachPod: validated, run to its end even when the caller goes.
pub async fn detach_pod<D: PodNetworks>(d: &Arc<D>, req: DetachPodRequest) -> Result<(), Status> {
    validate::detach_pod(&req)?;
    let d = d.clone();
    to_completion(async move { D::detach_some(&d, &req.sandbox_id, &req.networks).await }).await
}

/// GarbageCollect over the driver's records `pods`: the stale sandboxes detached (from the
/// request's network only, when it names one).
pub async fn garbage_collect<D: PodNetworks>(
    d: &Arc<D>,
    req: GarbageCollectRequest,
    pods: impl IntoIterator<Item = PodAttachments>,
) -> Result<GarbageCollectResponse, Status> {
    let stale = state::stale_sandboxes(&req, pods)?;
    let only = state::gc_selection(&req);
    let d = d.clone();
    let ids = stale.clone();
    to_completion(async move {
        for id in &ids {
            D::detach_some(&d, id, &only).await?;
        }
        Ok(())
    })
    .await?;
    Ok(GarbageCollectResponse {
        removed_sandbox_ids: stale,
    })
}
