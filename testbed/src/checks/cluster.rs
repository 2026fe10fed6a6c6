//! Cluster: the node table's field errors that change nothing, its generation rules, replay;
//! on the host, nodes come from its sources only.
//!
//! The nodes sent here are on 198.18.0.0/15 (the benchmarking range: on no link of a test
//! node, so a driver routes none of them) with pod CIDRs in 10.250.0.0/16; each check ends
//! with an empty full sync in an epoch of its own (the host's next batch is then refused and
//! answered with a full sync, as the contract says).

use netlet_sdk::proto::{Capability, ClusterNode, ListNodesRequest, ProgramNodesRequest};
use tonic::Code;

use super::{check, expect_code, expect_ok, violation};
use crate::conformance::{Check, Ctx, Mode, Outcome};

fn node(name: &str, i: u8) -> ClusterNode {
    ClusterNode {
        name: name.into(),
        addresses: vec![format!("198.18.0.{i}")],
        pod_cidrs: vec![format!("10.250.{i}.0/24")],
        local: false,
    }
}

/// An epoch nobody else uses (only equality matters).
fn epoch(ctx: &Ctx) -> u64 {
    let n = ctx.unique("epoch");
    netlet_sdk::hash::fnv1a(n.as_bytes()) | 1
}

async fn listed(ctx: &Ctx) -> Result<(u64, Vec<String>), String> {
    let l = expect_ok(
        "ListNodes",
        ctx.clients
            .cluster
            .clone()
            .list_nodes(ListNodesRequest::default())
            .await,
    )?
    .into_inner();
    Ok((l.generation, l.nodes.into_iter().map(|n| n.name).collect()))
}

async fn program(ctx: &Ctx, what: &str, r: ProgramNodesRequest) -> Result<u64, String> {
    expect_ok(what, ctx.clients.cluster.clone().program_nodes(r).await)
        .map(|r| r.into_inner().applied_generation)
}

/// Leaves the driver with an empty table in an epoch of its own.
async fn clear(ctx: &Ctx) -> Result<(), String> {
    let r = ProgramNodesRequest {
        epoch: epoch(ctx),
        generation: 1,
        full_sync: true,
        ..Default::default()
    };
    program(ctx, "ProgramNodes empty full sync (cleanup)", r).await?;
    Ok(())
}

pub fn checks() -> Vec<Check> {
    vec![
        check!(
            "cluster/program-invalid-fields",
            Some(Capability::Cluster),
            only Mode::Driver,
            |ctx| {
                let e = epoch(ctx);
                let first = ProgramNodesRequest {
                    epoch: e,
                    generation: 1,
                    full_sync: true,
                    upserts: vec![node("conf-a", 1)],
                    ..Default::default()
                };
                program(ctx, "ProgramNodes full sync of one node", first).await?;
                type Mutation = fn(&mut ProgramNodesRequest);
                let cases: Vec<(&str, Mutation)> = vec![
                    ("generation", |r| r.generation = 0),
                    ("upserts[0].name", |r| r.upserts[0].name = "Not_A_Name".into()),
                    ("upserts[0].addresses[0]", |r| {
                        r.upserts[0].addresses[0] = "198.18.0.300".into()
                    }),
                    ("upserts[0].addresses[1]", |r| {
                        r.upserts[0].addresses.push("198.18.0.9".into())
                    }),
                    ("upserts[0].pod_cidrs[0]", |r| {
                        r.upserts[0].pod_cidrs[0] = "10.250.2.1/24".into()
                    }),
                    ("deletes[0]", |r| r.deletes.push("Not_A_Name".into())),
                ];
                for (field, mutate) in cases {
                    let mut r = ProgramNodesRequest {
                        epoch: e,
                        generation: 2,
                        upserts: vec![node("conf-b", 2)],
                        ..Default::default()
                    };
                    mutate(&mut r);
                    expect_code(
                        &format!("ProgramNodes with a bad {field}"),
                        ctx.clients.cluster.clone().program_nodes(r).await,
                        Code::InvalidArgument,
                        Some(field),
                    )?;
                }
                let (g, names) = listed(ctx).await?;
                if (g, names.as_slice()) != (1, ["conf-a".to_string()].as_slice()) {
                    return Err(violation(
                        "ProgramNodes batches with bad fields",
                        "nothing changed (generation 1, [conf-a])",
                        format!("generation {g}, {names:?}"),
                        "an invalid request changes nothing",
                    ));
                }
                clear(ctx).await?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "cluster/generations-deltas-and-replay",
            Some(Capability::Cluster),
            only Mode::Driver,
            |ctx| {
                let e = epoch(ctx);
                let full = ProgramNodesRequest {
                    epoch: e,
                    generation: 1,
                    full_sync: true,
                    upserts: vec![node("conf-a", 1), node("conf-b", 2)],
                    ..Default::default()
                };
                program(ctx, "ProgramNodes full sync of conf-a, conf-b", full).await?;
                let delta = ProgramNodesRequest {
                    epoch: e,
                    generation: 2,
                    upserts: vec![node("conf-c", 3)],
                    deletes: vec!["conf-a".into(), "conf-never-there".into()],
                    ..Default::default()
                };
                for i in 0..=ctx.replays {
                    let what = format!("ProgramNodes delta (send {})", i + 1);
                    let g = program(ctx, &what, delta.clone()).await?;
                    if g != 2 {
                        return Err(violation(what, "applied_generation 2", g, "replay is OK"));
                    }
                }
                let (g, names) = listed(ctx).await?;
                if g != 2 || names != ["conf-b", "conf-c"] {
                    return Err(violation(
                        "a delta adding conf-c and deleting conf-a (and an unknown node)",
                        "generation 2, [conf-b, conf-c] sorted by name",
                        format!("generation {g}, {names:?}"),
                        "ListNodes lists the table, sorted",
                    ));
                }
                let stale = ProgramNodesRequest {
                    epoch: e,
                    generation: 1,
                    ..Default::default()
                };
                expect_code(
                    "ProgramNodes with an older generation",
                    ctx.clients.cluster.clone().program_nodes(stale).await,
                    Code::FailedPrecondition,
                    Some("generation"),
                )?;
                let other = ProgramNodesRequest {
                    epoch: e ^ 2,
                    generation: 3,
                    ..Default::default()
                };
                expect_code(
                    "ProgramNodes delta from another epoch",
                    ctx.clients.cluster.clone().program_nodes(other).await,
                    Code::FailedPrecondition,
                    Some("epoch"),
                )?;
                clear(ctx).await?;
                let (_, names) = listed(ctx).await?;
                if !names.is_empty() {
                    return Err(violation(
                        "an empty full sync from a new epoch",
                        "an empty table",
                        format!("{names:?}"),
                        "a full sync replaces the table",
                    ));
                }
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "cluster/host-nodes-come-from-sources",
            Some(Capability::Cluster),
            only Mode::Host,
            |ctx| {
                let r = ProgramNodesRequest {
                    epoch: 1,
                    generation: 1,
                    full_sync: true,
                    upserts: vec![node("conf-a", 1)],
                    ..Default::default()
                };
                expect_code(
                    "ProgramNodes to the host",
                    ctx.clients.cluster.clone().program_nodes(r).await,
                    Code::FailedPrecondition,
                    None,
                )?;
                let (_, names) = listed(ctx).await?;
                if names.contains(&"conf-a".to_string()) {
                    return Err(violation(
                        "ProgramNodes to the host",
                        "no change to its table",
                        format!("{names:?}"),
                        "the host's nodes come from its sources",
                    ));
                }
                let mut sorted = names.clone();
                sorted.sort();
                if sorted != names {
                    return Err(violation("ListNodes", "names sorted", format!("{names:?}"), "ListNodes sorts by name"));
                }
                Ok(Outcome::Passed)
            }
        ),
    ]
}
