//! Services: field errors that change nothing, generation semantics, idempotent replay.

use netlet_sdk::proto::{
    Capability, Endpoint, EndpointUpsert, HostPorts, ListServicesRequest, PortMapping,
    ProgramServiceRequest, Service, ServiceKey, ServicePort, ServiceType,
};
use tonic::Code;

use super::{check, expect_code, expect_ok};
use crate::conformance::{Check, Ctx, Mode, Outcome};

/// (applied epoch, applied generation), and the number of Services in namespace `conformance`.
async fn generation(ctx: &Ctx) -> Result<((u64, u64), usize), String> {
    let l = expect_ok(
        "ListServices",
        ctx.clients
            .services
            .clone()
            .list_services(ListServicesRequest {
                namespace: "conformance".into(),
            })
            .await,
    )?
    .into_inner();
    Ok(((l.applied_epoch, l.applied_generation), l.services.len()))
}

fn service(name: &str) -> (Service, EndpointUpsert) {
    let key = ServiceKey {
        namespace: "conformance".into(),
        name: name.into(),
    };
    (
        Service {
            key: Some(key.clone()),
            r#type: ServiceType::ClusterIp as i32,
            cluster_ips: vec!["10.96.77.7".into()],
            ports: vec![ServicePort {
                port: 80,
                target_port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        },
        EndpointUpsert {
            service: Some(key),
            endpoint: Some(Endpoint {
                address: "10.244.77.7".into(),
                ready: true,
                serving: true,
                ..Default::default()
            }),
        },
    )
}

pub fn checks() -> Vec<Check> {
    vec![
        check!(
            "services/program-invalid-fields",
            Some(Capability::Services),
            |ctx| {
                let before = generation(ctx).await?;
                let ((epoch, g), _) = before;
                let (svc, ep) = service("bad");
                let base = ProgramServiceRequest {
                    epoch,
                    generation: g + 1,
                    full_sync: g == 0,
                    service_upserts: vec![svc],
                    endpoint_upserts: vec![ep],
                    ..Default::default()
                };
                type Mutation = fn(&mut ProgramServiceRequest);
                let cases: Vec<(&str, Mutation)> = vec![
                    ("generation", |r| r.generation = 0),
                    ("service_upserts[0].key", |r| {
                        r.service_upserts[0].key = None
                    }),
                    ("service_upserts[0].key.name", |r| {
                        r.service_upserts[0].key.as_mut().unwrap().name = "Bad_Name".into()
                    }),
                    ("service_upserts[0].cluster_ips[0]", |r| {
                        r.service_upserts[0].cluster_ips = vec!["10.96.0.999".into()]
                    }),
                    ("service_upserts[0].ports[0].port", |r| {
                        r.service_upserts[0].ports[0].port = 70000
                    }),
                    ("endpoint_upserts[0].endpoint.address", |r| {
                        r.endpoint_upserts[0].endpoint.as_mut().unwrap().address = "nope".into()
                    }),
                ];
                for (field, mutate) in cases {
                    let mut r = base.clone();
                    mutate(&mut r);
                    expect_code(
                        &format!("ProgramService with bad {field}"),
                        ctx.clients.services.clone().program_service(r).await,
                        Code::InvalidArgument,
                        Some(field),
                    )?;
                }
                let after = generation(ctx).await?;
                if before != after {
                    return Err(format!(
                        "rejected batches changed state: {before:?} -> {after:?}"
                    ));
                }
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "services/program-idempotent-and-ordered",
            Some(Capability::Services),
            |ctx| {
                let ((epoch, g0), _) = generation(ctx).await?;
                let (svc, ep) = service(&ctx.unique("svc"));
                let key = svc.key.clone();
                let req = ProgramServiceRequest {
                    epoch,
                    generation: g0 + 1,
                    full_sync: g0 == 0,
                    service_upserts: vec![svc],
                    endpoint_upserts: vec![ep],
                    ..Default::default()
                };
                for i in 0..=ctx.replays {
                    let r = expect_ok(
                        "ProgramService",
                        ctx.clients
                            .services
                            .clone()
                            .program_service(req.clone())
                            .await,
                    )?
                    .into_inner();
                    if r.applied_generation != g0 + 1 {
                        return Err(format!(
                            "attempt {i}: applied_generation {} != {}",
                            r.applied_generation,
                            g0 + 1
                        ));
                    }
                }
                let l = expect_ok(
                    "ListServices",
                    ctx.clients
                        .services
                        .clone()
                        .list_services(ListServicesRequest {
                            namespace: "conformance".into(),
                        })
                        .await,
                )?
                .into_inner();
                let found = l
                    .services
                    .iter()
                    .filter(|s| s.service.as_ref().and_then(|s| s.key.clone()) == key)
                    .count();
                if found != 1 {
                    return Err(format!("service listed {found} times"));
                }
                let stale = ProgramServiceRequest {
                    generation: g0,
                    ..req.clone()
                };
                if g0 > 0 {
                    expect_code(
                        "ProgramService with an older generation in the same epoch",
                        ctx.clients.services.clone().program_service(stale).await,
                        Code::FailedPrecondition,
                        Some("generation"),
                    )?;
                }
                let delete = ProgramServiceRequest {
                    epoch,
                    generation: g0 + 2,
                    service_deletes: key.into_iter().collect(),
                    ..Default::default()
                };
                expect_ok(
                    "ProgramService delete",
                    ctx.clients.services.clone().program_service(delete).await,
                )?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "services/full-sync-from-a-new-epoch-applies",
            Some(Capability::Services),
            |ctx| {
                // A sender that restarted (a new epoch) numbers its batches from 1 again: its
                // full sync applies whatever the generation applied before, and replaces it.
                let ((old_epoch, g0), _) = generation(ctx).await?;
                let epoch = old_epoch.wrapping_add(1).max(1);
                let (svc, ep) = service(&ctx.unique("epoch"));
                let key = svc.key.clone();
                let sync = ProgramServiceRequest {
                    epoch,
                    generation: 1,
                    full_sync: true,
                    service_upserts: vec![svc],
                    endpoint_upserts: vec![ep],
                    ..Default::default()
                };
                let what = format!(
                    "ProgramService full sync, epoch {epoch}, generation 1, onto epoch {old_epoch} generation {g0}"
                );
                let r = expect_ok(
                    &what,
                    ctx.clients
                        .services
                        .clone()
                        .program_service(sync.clone())
                        .await,
                )?
                .into_inner();
                if (r.applied_epoch, r.applied_generation) != (epoch, 1) {
                    return Err(format!(
                        "sent {what}: expected applied (epoch {epoch}, generation 1), got ({}, {}) (contract: a full sync from another epoch always applies)",
                        r.applied_epoch, r.applied_generation
                    ));
                }
                let ((e1, g1), n1) = generation(ctx).await?;
                if (e1, g1) != (epoch, 1) || n1 != 1 {
                    return Err(format!(
                        "sent {what}: expected ListServices at (epoch {epoch}, generation 1) with exactly its 1 Service in namespace conformance, got ({e1}, {g1}) with {n1} (contract: a full sync replaces everything)"
                    ));
                }
                // The same batch again is a replay.
                expect_ok(
                    "the same full sync again",
                    ctx.clients.services.clone().program_service(sync).await,
                )?;
                // A delta from the old epoch is refused, naming `epoch`, and changes nothing.
                let stale = ProgramServiceRequest {
                    epoch: old_epoch,
                    generation: 2,
                    service_deletes: key.clone().into_iter().collect(),
                    ..Default::default()
                };
                expect_code(
                    "ProgramService delta from the previous epoch",
                    ctx.clients.services.clone().program_service(stale).await,
                    Code::FailedPrecondition,
                    Some("epoch"),
                )?;
                if generation(ctx).await? != ((epoch, 1), 1) {
                    return Err("a refused delta changed the Services (contract: FAILED_PRECONDITION changes nothing)".into());
                }
                // A delta in the new epoch applies.
                let delete = ProgramServiceRequest {
                    epoch,
                    generation: 2,
                    service_deletes: key.into_iter().collect(),
                    ..Default::default()
                };
                expect_ok(
                    "ProgramService delta in the new epoch",
                    ctx.clients.services.clone().program_service(delete).await,
                )?;
                let (_, n) = generation(ctx).await?;
                if n != 0 {
                    return Err(format!(
                        "sent a delta deleting the only Service in the new epoch: expected 0 Services, got {n}"
                    ));
                }
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "services/host-ports-come-only-from-attachpod",
            Some(Capability::Services),
            only Mode::Host,
            |ctx| {
                // On the host, host ports are the port mappings of attached pods: a caller of
                // ProgramService cannot send them (services.proto, "On the host").
                let ((epoch, g), _) = generation(ctx).await?;
                let req = ProgramServiceRequest {
                    epoch,
                    generation: g + 1,
                    full_sync: g == 0,
                    host_port_upserts: vec![host_ports("conf-hp")],
                    ..Default::default()
                };
                expect_code(
                    "ProgramService with host_port_upserts to the host",
                    ctx.clients.services.clone().program_service(req).await,
                    Code::InvalidArgument,
                    Some("host_port_upserts"),
                )?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "services/host-ports-applied-and-listed",
            Some(Capability::Services),
            only Mode::Driver,
            |ctx| {
                // On a driver, host ports arrive in ProgramService like Services and are
                // listed back until deleted.
                let ((epoch, g), _) = generation(ctx).await?;
                let hp = host_ports(&ctx.unique("hp"));
                let services = ctx.clients.services.clone();
                let listed = || {
                    let mut services = services.clone();
                    async move {
                        expect_ok(
                            "ListServices",
                            services
                                .list_services(ListServicesRequest::default())
                                .await,
                        )
                        .map(|l| l.into_inner().host_ports)
                    }
                };
                expect_ok(
                    "ProgramService with one host_port_upsert",
                    ctx.clients
                        .services
                        .clone()
                        .program_service(ProgramServiceRequest {
                            epoch,
                            generation: g + 1,
                            full_sync: g == 0,
                            host_port_upserts: vec![hp.clone()],
                            ..Default::default()
                        })
                        .await,
                )?;
                if !listed().await?.contains(&hp) {
                    return Err("sent a host_port_upsert: ListServices.host_ports does not list it (contract: ListServices returns what is programmed)".into());
                }
                expect_ok(
                    "ProgramService deleting it",
                    ctx.clients
                        .services
                        .clone()
                        .program_service(ProgramServiceRequest {
                            epoch,
                            generation: g + 2,
                            host_port_deletes: vec![hp.sandbox_id.clone()],
                            ..Default::default()
                        })
                        .await,
                )?;
                if listed()
                    .await?
                    .iter()
                    .any(|h| h.sandbox_id == hp.sandbox_id)
                {
                    return Err("sent a host_port_delete: still listed".into());
                }
                Ok(Outcome::Passed)
            }
        ),
    ]
}

fn host_ports(sandbox_id: &str) -> HostPorts {
    HostPorts {
        sandbox_id: sandbox_id.into(),
        pod: format!("conformance/{sandbox_id}"),
        pod_ips: vec!["10.244.77.9".into()],
        port_mappings: vec![PortMapping {
            host_port: 30777,
            container_port: 8080,
            ..Default::default()
        }],
    }
}
