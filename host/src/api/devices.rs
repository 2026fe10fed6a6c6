//! `Devices`: the inventory is the union of the Devices drivers'; an allocation goes to the
//! driver owning the requested device (or the first with a free match) and is persisted so a
//! repeated allocate answers the same and a release after a host restart reaches the driver.

use netlet_sdk::{
    proto::{
        AllocateDeviceRequest, AllocateDeviceResponse, Capability, Device, ListDevicesRequest,
        ListDevicesResponse, ReleaseDeviceRequest, ReleaseDeviceResponse, WatchDevicesRequest,
        WatchDevicesResponse, devices_server::Devices,
    },
    validate,
};
use tonic::{Code, Request, Response, Status, codegen::BoxStream};

use super::Api;
use crate::error;

/// How much a driver's refusal of an allocation says (the host answers the most telling).
fn rank(c: Code) -> u8 {
    match c {
        Code::FailedPrecondition => 3,
        Code::ResourceExhausted => 2,
        Code::NotFound => 1,
        _ => 0,
    }
}

#[tonic::async_trait]
impl Devices for Api {
    async fn list_devices(
        &self,
        req: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        let req = req.into_inner();
        validate::list_devices("", &req)?;
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
                .list_devices(req.clone())
                .await
                .map_err(|s| error::from_driver(&d, None, s))?;
            devices.extend(resp.into_inner().devices.into_iter().map(|mut dev| {
                dev.driver = d.name.clone();
                dev
            }));
        }
        devices.sort_by(|a, b| (&a.driver, &a.id).cmp(&(&b.driver, &b.id)));
        Ok(Response::new(ListDevicesResponse { devices }))
    }

    async fn watch_devices(
        &self,
        req: Request<WatchDevicesRequest>,
    ) -> Result<Response<BoxStream<WatchDevicesResponse>>, Status> {
        use futures::StreamExt;
        let req = req.into_inner();
        validate::list_devices("filter.", &req.filter.clone().unwrap_or_default())?;
        let drivers = self.0.registry.with_capability(Capability::Devices);
        if drivers.is_empty() {
            return Err(error::nothing_serves("Devices"));
        }
        // Each driver's stream, its messages tagged with the driver, ended by a `None`.
        let mut streams = Vec::new();
        for (i, d) in drivers.iter().enumerate() {
            let s = d
                .clients
                .devices
                .clone()
                .watch_devices(req.clone())
                .await
                .map_err(|s| error::from_driver(d, None, s))?
                .into_inner();
            let name = d.name.clone();
            streams.push(
                s.map(move |m| Some((i, name.clone(), m)))
                    .chain(futures::stream::once(async { None }))
                    .boxed(),
            );
        }
        let shutdown = self.0.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut merged = futures::stream::select_all(streams);
            let mut latest: Vec<Option<Vec<Device>>> = vec![None; drivers.len()];
            let mut sent: Option<Vec<Device>> = None;
            loop {
                let next = tokio::select! {
                    n = merged.next() => n.flatten(),
                    _ = crate::stopped(shutdown.clone()) => {
                        let _ = tx.send(Err(Status::unavailable("host shutting down"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                };
                // A driver's stream ended: the caller watches again.
                let Some((i, name, m)) = next else { return };
                let devices = match m {
                    Ok(r) => r.devices,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                latest[i] = Some(
                    devices
                        .into_iter()
                        .map(|mut d| {
                            d.driver = name.clone();
                            d
                        })
                        .collect(),
                );
                if latest.iter().any(Option::is_none) {
                    continue;
                }
                let mut all: Vec<Device> = latest.iter().flatten().flatten().cloned().collect();
                all.sort_by(|a, b| (&a.driver, &a.id).cmp(&(&b.driver, &b.id)));
                if sent.as_ref() != Some(&all) {
                    let msg = WatchDevicesResponse {
                        devices: all.clone(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    sent = Some(all);
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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
            // The driver holding it tells a repeat from another request under the same UID.
            let owner = existing
                .devices
                .iter()
                .find_map(|a| a.device.as_ref())
                .and_then(|d| self.0.registry.get(&d.driver));
            if let Some(d) = owner {
                d.clients
                    .devices
                    .clone()
                    .allocate_device(req)
                    .await
                    .map_err(|s| error::from_driver(&d, None, s))?;
            }
            return Ok(Response::new(existing));
        }
        let drivers = self.0.registry.with_capability(Capability::Devices);
        if drivers.is_empty() {
            return Err(error::nothing_serves("Devices"));
        }
        let mut last: Option<Status> = None;
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
                // Another driver may own the device or have a free (or an aligned) one; the
                // answer is the most telling refusal: alignment, then exhaustion, then unknown.
                Err(s)
                    if matches!(
                        s.code(),
                        Code::NotFound | Code::ResourceExhausted | Code::FailedPrecondition
                    ) =>
                {
                    if last
                        .as_ref()
                        .is_none_or(|l| rank(s.code()) >= rank(l.code()))
                    {
                        last = Some(s);
                    }
                }
                Err(s) => return Err(error::from_driver(&d, None, s)),
            }
        }
        Err(last.unwrap_or_else(|| {
            netlet_sdk::validate::field_error(
                Code::ResourceExhausted,
                "requests",
                "no free device matches",
                "NO_DEVICE_FREE",
            )
        }))
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
