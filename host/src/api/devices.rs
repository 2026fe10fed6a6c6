//! `Devices`: the inventory is the union of the Devices drivers'; an allocation goes to the
//! driver owning the requested device (or the first with a free match) and is persisted so a
//! repeated allocate answers the same and a release after a host restart reaches the driver.

use netlet_sdk::{
    proto::{
        AllocateDeviceRequest, AllocateDeviceResponse, Capability, ListDevicesRequest,
        ListDevicesResponse, ReleaseDeviceRequest, ReleaseDeviceResponse, devices_server::Devices,
    },
    validate,
};
use tonic::{Code, Request, Response, Status};

use super::Api;
use crate::error;

#[tonic::async_trait]
impl Devices for Api {
    async fn list_devices(
        &self,
        req: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        let req = req.into_inner();
        let drivers = self.0.registry.with_capability(Capability::Devices);
        if drivers.is_empty() {
            return Err(error::nothing_serves("Devices"));
        }
        let mut devices = Vec::new();
        for d in drivers {
            let resp = d
                .clients
                .devices
                .clone()
                .list_devices(req)
                .await
                .map_err(|s| error::from_driver(&d, None, s))?;
            devices.extend(resp.into_inner().devices.into_iter().map(|mut dev| {
                dev.driver = d.name.clone();
                dev
            }));
        }
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(ListDevicesResponse { devices }))
    }

    async fn allocate_device(
        &self,
        req: Request<AllocateDeviceRequest>,
    ) -> Result<Response<AllocateDeviceResponse>, Status> {
        let req = req.into_inner();
        validate::allocate_device(&req)?;
        let _guard = self.0.lock_key(&format!("claim/{}", req.claim_uid)).await;
        if let Some(existing) = self
            .0
            .store
            .claim(&req.claim_uid)
            .map_err(error::from_store)?
        {
            return Ok(Response::new(existing));
        }
        let drivers = self.0.registry.with_capability(Capability::Devices);
        if drivers.is_empty() {
            return Err(error::nothing_serves("Devices"));
        }
        let mut last = netlet_sdk::validate::field_error(
            tonic::Code::ResourceExhausted,
            "requests",
            "no free device matches",
            "NO_DEVICE_FREE",
        );
        for d in drivers {
            match d.clients.devices.clone().allocate_device(req.clone()).await {
                Ok(resp) => {
                    let mut alloc = resp.into_inner();
                    for a in &mut alloc.devices {
                        if let Some(dev) = &mut a.device {
                            dev.driver = d.name.clone();
                        }
                    }
                    if let Err(e) = self.0.store.put_claim(&alloc).await {
                        // Not recorded means not allocated: give it back.
                        let _ = d
                            .clients
                            .devices
                            .clone()
                            .release_device(ReleaseDeviceRequest {
                                claim_uid: req.claim_uid.clone(),
                            })
                            .await;
                        return Err(error::from_store(e));
                    }
                    return Ok(Response::new(alloc));
                }
                // Another driver may own the device or have a free one.
                Err(s) if matches!(s.code(), Code::NotFound | Code::ResourceExhausted) => last = s,
                Err(s) => return Err(error::from_driver(&d, None, s)),
            }
        }
        Err(last)
    }

    async fn release_device(
        &self,
        req: Request<ReleaseDeviceRequest>,
    ) -> Result<Response<ReleaseDeviceResponse>, Status> {
        let req = req.into_inner();
        validate::release_device(&req)?;
        let _guard = self.0.lock_key(&format!("claim/{}", req.claim_uid)).await;
        let Some(alloc) = self
            .0
            .store
            .claim(&req.claim_uid)
            .map_err(error::from_store)?
        else {
            return Ok(Response::new(ReleaseDeviceResponse {}));
        };
        let mut owners: Vec<String> = alloc
            .devices
            .iter()
            .filter_map(|a| a.device.as_ref().map(|d| d.driver.clone()))
            .collect();
        owners.dedup();
        for name in owners {
            let d = self.0.registry.get(&name).ok_or_else(|| {
                Status::unavailable(format!(
                    "driver {name:?} holding claim {:?} is not registered",
                    req.claim_uid
                ))
            })?;
            d.clients
                .devices
                .clone()
                .release_device(req.clone())
                .await
                .map_err(|s| error::from_driver(&d, None, s))?;
        }
        self.0
            .store
            .delete_claim(&req.claim_uid)
            .await
            .map_err(error::from_store)?;
        Ok(Response::new(ReleaseDeviceResponse {}))
    }
}
