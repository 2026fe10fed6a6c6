//! The gRPC face of the devices driver: Devices, Pods (attachments that move a device) and
//! Node.

use std::sync::Arc;

use netlet_sdk::proto::{
    AllocateDeviceRequest, AllocateDeviceResponse, AttachPodRequest, AttachPodResponse,
    DetachPodRequest, DetachPodResponse, DeviceKind, GarbageCollectRequest, GarbageCollectResponse,
    ListAttachmentsRequest, ListAttachmentsResponse, ListDevicesRequest, ListDevicesResponse,
    NetworkReadiness, NetworkReadyRequest, NetworkReadyResponse, NetworkSelection,
    PodNetworkStatusRequest, PodNetworkStatusResponse, ReleaseDeviceRequest, ReleaseDeviceResponse,
    devices_server::Devices as DevicesApi, node_server::Node, pods_server::Pods,
};
use netlet_sdk::proto::{Device, WatchDevicesRequest, WatchDevicesResponse};
use netlet_sdk::{pods, server::to_completion, state, validate};
use tonic::codegen::BoxStream;
use tonic::{Code, Request, Response, Status};

use crate::driver::Devices;

/// Serves [`Devices`] over gRPC.
#[derive(Clone)]
pub struct Api(pub Arc<Devices>);

/// The inventory through a ListDevices filter.
fn filtered(all: Vec<Device>, req: &ListDevicesRequest) -> Vec<Device> {
    all.into_iter()
        .filter(|d| req.kind == DeviceKind::Unspecified as i32 || d.kind == req.kind)
        .filter(|d| !req.free_only || d.allocated_to_claim.is_empty())
        .filter(|d| req.pool.is_empty() || d.pool == req.pool)
        .collect()
}

#[tonic::async_trait]
impl DevicesApi for Api {
    async fn list_devices(
        &self,
        req: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        let req = req.into_inner();
        validate::list_devices("", &req)?;
        let devices = filtered(self.0.inventory().await?, &req);
        Ok(Response::new(ListDevicesResponse { devices }))
    }

    async fn watch_devices(
        &self,
        req: Request<WatchDevicesRequest>,
    ) -> Result<Response<BoxStream<WatchDevicesResponse>>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        validate::list_devices("filter.", &filter)?;
        let d = self.0.clone();
        let mut changed = d.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<Vec<Device>> = None;
            loop {
                changed.borrow_and_update();
                match d.inventory().await {
                    Ok(all) => {
                        let now = filtered(all, &filter);
                        if last.as_ref() != Some(&now) {
                            let msg = WatchDevicesResponse {
                                devices: now.clone(),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                            last = Some(now);
                        }
                    }
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn allocate_device(
        &self,
        req: Request<AllocateDeviceRequest>,
    ) -> Result<Response<AllocateDeviceResponse>, Status> {
        let req = req.into_inner();
        validate::allocate_device(&req)?;
        let d = self.0.clone();
        to_completion(async move { d.allocate(req).await })
            .await
            .map(Response::new)
    }

    async fn release_device(
        &self,
        req: Request<ReleaseDeviceRequest>,
    ) -> Result<Response<ReleaseDeviceResponse>, Status> {
        let req = req.into_inner();
        validate::release_device(&req)?;
        let d = self.0.clone();
        to_completion(async move { d.release(&req.claim_uid).await }).await?;
        Ok(Response::new(ReleaseDeviceResponse {}))
    }
}

impl pods::PodNetworks for Devices {
    async fn attach_one(
        this: &Arc<Self>,
        sandbox: &netlet_sdk::proto::PodSandbox,
        sel: &NetworkSelection,
        field: &str,
    ) -> Result<netlet_sdk::proto::Attachment, Status> {
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
        state::pod_network_status(&req.into_inner(), self.0.pods().await).map(Response::new)
    }

    async fn list_attachments(
        &self,
        req: Request<ListAttachmentsRequest>,
    ) -> Result<Response<ListAttachmentsResponse>, Status> {
        state::list_attachments(&req.into_inner(), self.0.pods().await).map(Response::new)
    }

    async fn garbage_collect(
        &self,
        req: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectResponse>, Status> {
        let pods = self.0.pods().await;
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
        if !network.is_empty() && !self.0.networks().contains(&network) {
            return Err(validate::field_error(
                Code::NotFound,
                "network",
                format!("this driver does not serve {network:?}"),
                "NETWORK_NOT_SERVED",
            ));
        }
        Ok(Response::new(NetworkReadyResponse {
            readiness: Some(NetworkReadiness {
                ready: true,
                ..Default::default()
            }),
        }))
    }
}
