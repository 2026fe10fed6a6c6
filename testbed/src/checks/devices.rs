//! Devices: release of unknown claims is OK, field errors, idempotent allocation, a claim UID
//! reused with another request, an alignment that cannot be met.

use netlet_sdk::proto::{
    AllocateDeviceRequest, Capability, Device, DeviceRequest, ListDevicesRequest,
    ReleaseDeviceRequest, TopologyScope,
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
                let free = free_devices(ctx).await?;
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
                let still_free = free_devices(ctx).await?;
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
        check!(
            "devices/list-invalid-filter",
            Some(Capability::Devices),
            |ctx| {
                expect_code(
                    "ListDevices with kind 99",
                    ctx.clients
                        .devices
                        .clone()
                        .list_devices(ListDevicesRequest {
                            kind: 99,
                            ..Default::default()
                        })
                        .await,
                    Code::InvalidArgument,
                    Some("kind"),
                )?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "devices/claim-reused-with-another-request",
            Some(Capability::Devices),
            |ctx| {
                let free = free_devices(ctx).await?;
                let [a, b, ..] = free.as_slice() else {
                    return Ok(Outcome::Skipped("fewer than two free devices".into()));
                };
                let uid = ctx.unique("claim");
                ctx.created_claim(&uid);
                let claim = |id: &str| AllocateDeviceRequest {
                    claim_uid: uid.clone(),
                    requests: vec![DeviceRequest {
                        name: "nic".into(),
                        device_id: id.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                expect_ok(
                    "AllocateDevice",
                    ctx.clients
                        .devices
                        .clone()
                        .allocate_device(claim(&a.id))
                        .await,
                )?;
                expect_code(
                    "AllocateDevice of the same claim UID for another device",
                    ctx.clients
                        .devices
                        .clone()
                        .allocate_device(claim(&b.id))
                        .await,
                    Code::AlreadyExists,
                    Some("claim_uid"),
                )?;
                if !free_devices(ctx).await?.iter().any(|d| d.id == b.id) {
                    return Err("the refused request took its device".into());
                }
                expect_ok(
                    "ReleaseDevice",
                    ctx.clients
                        .devices
                        .clone()
                        .release_device(ReleaseDeviceRequest { claim_uid: uid })
                        .await,
                )?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "devices/alignment-refused-names-the-constraint",
            Some(Capability::Devices),
            |ctx| {
                // One more device on X's NUMA node than are free there, while enough are free
                // elsewhere: matching devices exist, the alignment cannot be met.
                let free = free_devices(ctx).await?;
                let Some(x) = free
                    .iter()
                    .find(|x| x.numa_node >= 0 && free.iter().any(|d| d.numa_node != x.numa_node))
                else {
                    return Ok(Outcome::Skipped("no free devices on two NUMA nodes".into()));
                };
                let near = free.iter().filter(|d| d.numa_node == x.numa_node).count();
                let uid = ctx.unique("claim");
                ctx.created_claim(&uid);
                let req = AllocateDeviceRequest {
                    claim_uid: uid,
                    requests: vec![DeviceRequest {
                        name: "near".into(),
                        count: near as u32 + 1,
                        align_with_device_id: x.id.clone(),
                        align_scope: TopologyScope::NumaNode as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                expect_code(
                    &format!(
                        "AllocateDevice of {} devices on the NUMA node of {} ({} free there, {} in all)",
                        near + 1,
                        x.id,
                        near,
                        free.len()
                    ),
                    ctx.clients.devices.clone().allocate_device(req).await,
                    Code::FailedPrecondition,
                    Some("requests[0].align_scope"),
                )?;
                if free_devices(ctx).await?.len() != free.len() {
                    return Err("a refused claim holds devices".into());
                }
                Ok(Outcome::Passed)
            }
        ),
    ]
}

/// The free devices.
async fn free_devices(ctx: &crate::conformance::Ctx) -> Result<Vec<Device>, String> {
    Ok(expect_ok(
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
    .devices)
}
