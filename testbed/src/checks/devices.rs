//! Devices: release of unknown claims is OK, field errors, idempotent allocation.

use netlet_sdk::proto::{
    AllocateDeviceRequest, Capability, DeviceRequest, ListDevicesRequest, ReleaseDeviceRequest,
};
use tonic::Code;

use super::{check, expect_code, expect_ok};
use crate::conformance::{Check, Outcome};

pub fn checks() -> Vec<Check> {
    vec![
        check!(
            "devices/release-unknown-ok",
            Some(Capability::Devices),
            |ctx| {
                for _ in 0..ctx.replays {
                    expect_ok(
                        "ReleaseDevice of unknown claim",
                        ctx.clients
                            .devices
                            .clone()
                            .release_device(ReleaseDeviceRequest {
                                claim_uid: ctx.unique("no-claim"),
                            })
                            .await,
                    )?;
                }
                expect_code(
                    "ReleaseDevice without claim_uid",
                    ctx.clients
                        .devices
                        .clone()
                        .release_device(ReleaseDeviceRequest::default())
                        .await,
                    Code::InvalidArgument,
                    Some("claim_uid"),
                )?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "devices/allocate-invalid-fields",
            Some(Capability::Devices),
            |ctx| {
                let r = AllocateDeviceRequest {
                    requests: vec![DeviceRequest {
                        name: "nic".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                expect_code(
                    "AllocateDevice without claim_uid",
                    ctx.clients.devices.clone().allocate_device(r).await,
                    Code::InvalidArgument,
                    Some("claim_uid"),
                )?;
                let r = AllocateDeviceRequest {
                    claim_uid: ctx.unique("claim"),
                    ..Default::default()
                };
                expect_code(
                    "AllocateDevice without requests",
                    ctx.clients.devices.clone().allocate_device(r).await,
                    Code::InvalidArgument,
                    Some("requests"),
                )?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "devices/allocate-idempotent",
            Some(Capability::Devices),
            |ctx| {
                let free = expect_ok(
                    "ListDevices",
                    ctx.clients
                        .devices
                        .clone()
                        .list_devices(ListDevicesRequest {
                            free_only: true,
                            ..Default::default()
                        })
                        .await,
                )?
                .into_inner()
                .devices;
                let Some(dev) = free.first() else {
                    return Ok(Outcome::Skipped("no free device in the inventory".into()));
                };
                let uid = ctx.unique("claim");
                ctx.created_claim(&uid);
                let req = AllocateDeviceRequest {
                    claim_uid: uid.clone(),
                    requests: vec![DeviceRequest {
                        name: "nic".into(),
                        device_id: dev.id.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let first = expect_ok(
                    "AllocateDevice",
                    ctx.clients
                        .devices
                        .clone()
                        .allocate_device(req.clone())
                        .await,
                )?
                .into_inner();
                if first.devices.len() != 1
                    || first.devices[0].device.as_ref().map(|d| &d.id) != Some(&dev.id)
                {
                    return Err(format!("allocation {first:?} is not device {}", dev.id));
                }
                for _ in 0..ctx.replays {
                    let again = expect_ok(
                        "AllocateDevice replay",
                        ctx.clients
                            .devices
                            .clone()
                            .allocate_device(req.clone())
                            .await,
                    )?
                    .into_inner();
                    if again != first {
                        return Err("replayed allocation differs".into());
                    }
                }
                let still_free = expect_ok(
                    "ListDevices",
                    ctx.clients
                        .devices
                        .clone()
                        .list_devices(ListDevicesRequest {
                            free_only: true,
                            ..Default::default()
                        })
                        .await,
                )?
                .into_inner()
                .devices;
                if still_free.iter().any(|d| d.id == dev.id) {
                    return Err("allocated device still listed as free".into());
                }
                for _ in 0..ctx.replays {
                    expect_ok(
                        "ReleaseDevice",
                        ctx.clients
                            .devices
                            .clone()
                            .release_device(ReleaseDeviceRequest {
                                claim_uid: uid.clone(),
                            })
                            .await,
                    )?;
                }
                Ok(Outcome::Passed)
            }
        ),
    ]
}
