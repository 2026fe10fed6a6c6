//! Services: field errors that change nothing, generation semantics, idempotent replay.

use netlet_sdk::proto::{
    Capability, Endpoint, EndpointUpsert, ListServicesRequest, ProgramServiceRequest, Service,
    ServiceKey, ServicePort, ServiceType,
};
use tonic::Code;

use super::{check, expect_code, expect_ok};
use crate::conformance::{Check, Ctx, Outcome};

async fn generation(ctx: &Ctx) -> Result<(u64, usize), String> {
    let l = expect_ok(
        "ListServices",
        ctx.clients
            .services
            .clone()
            .list_services(ListServicesRequest::default())
            .await,
    )?
    .into_inner();
    Ok((l.applied_generation, l.services.len()))
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
                let (svc, ep) = service("bad");
                let base = ProgramServiceRequest {
                    generation: before.0 + 1,
                    full_sync: before.0 == 0,
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
                let (g0, _) = generation(ctx).await?;
                let (svc, ep) = service(&ctx.unique("svc"));
                let key = svc.key.clone();
                let req = ProgramServiceRequest {
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
                        "ProgramService with an older generation",
                        ctx.clients.services.clone().program_service(stale).await,
                        Code::FailedPrecondition,
                        None,
                    )?;
                }
                let delete = ProgramServiceRequest {
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
    ]
}
