//! The gRPC face of the devices driver: Devices, Pods (attachments that move a device, through
//! the SDK's [`pods::PodsService`]) and Node.

use std::sync::Arc;

use netlet_sdk::proto::{
    AllocateDeviceRequest, AllocateDeviceResponse, Device, ListDevicesRequest, ListDevicesResponse,
    NetworkReadiness, NetworkReadyRequest, NetworkReadyResponse, NetworkSelection,
    ReleaseDeviceRequest, ReleaseDeviceResponse, WatchDevicesRequest, WatchDevicesResponse,
    devices_server::Devices as DevicesApi, node_server::Node,
};
use netlet_sdk::{pods, server::to_completion, validate};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::driver::Devices;

/// Serves [`Devices`] over gRPC.
#[derive(Clone)]
pub struct Api(pub Arc<Devices>);

/// The inventory through a ListDevices filter.
fn filtered(all: Vec<Device>, req: &ListDevicesRequest) -> Vec<Device> {
    all.into_iter()
        .filter(|d| netlet_sdk::devices::listed(d, req))
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

    async fn records(this: &Arc<Self>) -> Result<Vec<netlet_sdk::proto::PodAttachments>, Status> {
        Ok(this.pods().await)
    }
}

#[tonic::async_trait]
impl Node for Api {
    async fn network_ready(
        &self,
        req: Request<NetworkReadyRequest>,
    ) -> Result<Response<NetworkReadyResponse>, Status> {
        let network = req.into_inner().network;
        validate::network_ready_filter(&network, self.0.networks())?;
        Ok(Response::new(NetworkReadyResponse {
            readiness: Some(NetworkReadiness {
                ready: true,
                ..Default::default()
            }),
        }))
    }
}
