//! Pods: field errors that change nothing, idempotent attach and detach, not-found semantics,
//! garbage collection.

use netlet_sdk::proto::{
    AttachPodRequest, Capability, DetachPodRequest, GarbageCollectRequest, ListAttachmentsRequest,
    NetworkSelection, PodNetworkStatusRequest, PodSandbox, PortMapping, Protocol,
};
use tonic::Code;

use super::{check, expect_code, expect_ok, violation};
use crate::conformance::{Check, Ctx, Outcome};

fn request(ctx: &Ctx, netns: &str, network: &str) -> AttachPodRequest {
    let id = ctx.unique("conf-sandbox");
    AttachPodRequest {
        sandbox: Some(PodSandbox {
            name: id.clone(),
            namespace: "conformance".into(),
            uid: id.clone(),
            netns_path: netns.to_string(),
            id,
            ..Default::default()
        }),
        networks: vec![NetworkSelection {
            network: network.to_string(),
            interface_name: "eth0".into(),
            ..Default::default()
        }],
    }
}

/// A request for a fresh sandbox, detached again at cleanup; returns it with the sandbox id.
fn tracked_request(ctx: &Ctx, netns: &str, network: &str) -> (AttachPodRequest, String) {
    let req = request(ctx, netns, network);
    let id = req
        .sandbox
        .as_ref()
        .map(|s| s.id.clone())
        .unwrap_or_default();
    ctx.created_sandbox(&id);
    (req, id)
}

pub(crate) async fn attached_ids(ctx: &Ctx) -> Result<Vec<String>, String> {
    let pods = expect_ok(
        "ListAttachments",
        ctx.clients
            .pods
            .clone()
            .list_attachments(ListAttachmentsRequest::default())
            .await,
    )?
    .into_inner()
    .pods;
    Ok(pods
        .into_iter()
        .filter_map(|p| p.sandbox.map(|s| s.id))
        .collect())
}

macro_rules! setup {
    ($ctx:ident) => {{
        let Some(net) = $ctx.network() else {
            return Ok(Outcome::Skipped("target declares no network".into()));
        };
        let netns = match $ctx.pod_netns() {
            Ok(p) => p,
            Err(o) => return Ok(o),
        };
        (net, netns)
    }};
}

pub fn checks() -> Vec<Check> {
    vec![
        check!(
            "pods/attach-invalid-fields",
            Some(Capability::Pods),
            |ctx| {
                let (net, netns) = setup!(ctx);
                let before = attached_ids(ctx).await?;
                type Mutation = fn(&mut AttachPodRequest);
                let cases: Vec<(&str, Mutation)> = vec![
                    ("sandbox", |r| r.sandbox = None),
                    ("sandbox.id", |r| r.sandbox.as_mut().unwrap().id.clear()),
                    ("sandbox.id", |r| {
                        r.sandbox.as_mut().unwrap().id = "bad/id".into()
                    }),
                    ("sandbox.netns_path", |r| {
                        r.sandbox.as_mut().unwrap().netns_path.clear()
                    }),
                    ("sandbox.netns_path", |r| {
                        r.sandbox.as_mut().unwrap().netns_path = "relative/ns".into()
                    }),
                    ("networks[0].network", |r| {
                        r.networks[0].network = "Bad_Net".into()
                    }),
                    ("networks[0].interface_name", |r| {
                        r.networks[0].interface_name = "much-too-long-ifname".into()
                    }),
                    ("networks[0].ips[0]", |r| {
                        r.networks[0].ips = vec!["10.1.2.300".into()]
                    }),
                    ("networks[0].mac", |r| {
                        r.networks[0].mac = "zz:00:00:00:00:01".into()
                    }),
                    ("networks[0].mtu", |r| r.networks[0].mtu = 10),
                ];
                for (field, mutate) in cases {
                    let mut r = request(ctx, &netns, &net);
                    mutate(&mut r);
                    if let Some(s) = &r.sandbox {
                        ctx.created_sandbox(&s.id);
                    }
                    let res = ctx.clients.pods.clone().attach_pod(r).await;
                    expect_code(
                        &format!("AttachPod with bad {field}"),
                        res,
                        Code::InvalidArgument,
                        Some(field),
                    )?;
                }
                let after = attached_ids(ctx).await?;
                if before != after {
                    return Err(violation(
                        "AttachPod with bad fields",
                        format!("the attachments unchanged, {before:?}"),
                        format!("{after:?}"),
                        "bad input changes nothing",
                    ));
                }
                Ok(Outcome::Passed)
            }
        ),
        check!("pods/attach-idempotent", Some(Capability::Pods), |ctx| {
            let (net, netns) = setup!(ctx);
            let (req, id) = tracked_request(ctx, &netns, &net);
            let first = expect_ok(
                "AttachPod",
                ctx.clients.pods.clone().attach_pod(req.clone()).await,
            )?
            .into_inner();
            if first.attachments.len() != 1 {
                return Err(violation(
                    "AttachPod with one network",
                    "1 attachment",
                    first.attachments.len(),
                    "AttachPod answers one attachment per selection",
                ));
            }
            let a = &first.attachments[0];
            if a.network != net
                || a.interface_name != "eth0"
                || a.ips.is_empty()
                || a.mac.is_empty()
            {
                return Err(violation(
                    format!("AttachPod of network {net:?} on eth0"),
                    "the attachment's network, interface eth0, its addresses and MAC",
                    format!("{a:?}"),
                    "Attachment: results keep names",
                ));
            }
            for i in 0..ctx.replays {
                let again = expect_ok(
                    "AttachPod replay",
                    ctx.clients.pods.clone().attach_pod(req.clone()).await,
                )?
                .into_inner();
                if again != first {
                    return Err(violation(
                        format!("the same AttachPod again (replay {i})"),
                        format!("the first answer, {first:?}"),
                        format!("{again:?}"),
                        "AttachPod is idempotent per (sandbox, network, interface)",
                    ));
                }
            }
            let count = attached_ids(ctx)
                .await?
                .iter()
                .filter(|x| **x == id)
                .count();
            if count != 1 {
                return Err(violation(
                    "ListAttachments after replayed AttachPods",
                    "the sandbox once",
                    format!("{count} times"),
                    "N replays are one attachment",
                ));
            }
            let st = expect_ok(
                "PodNetworkStatus",
                ctx.clients
                    .pods
                    .clone()
                    .pod_network_status(PodNetworkStatusRequest {
                        sandbox_id: id.clone(),
                    })
                    .await,
            )?
            .into_inner();
            if st.pod.map(|p| p.attachments) != Some(first.attachments) {
                return Err(violation(
                    "PodNetworkStatus of an attached sandbox",
                    "AttachPod's attachments",
                    "others",
                    "PodNetworkStatus returns the attachments as attached",
                ));
            }
            Ok(Outcome::Passed)
        }),
        check!("pods/detach-idempotent", Some(Capability::Pods), |ctx| {
            let (net, netns) = setup!(ctx);
            let (req, id) = tracked_request(ctx, &netns, &net);
            expect_ok("AttachPod", ctx.clients.pods.clone().attach_pod(req).await)?;
            for _ in 0..ctx.replays {
                let d = DetachPodRequest {
                    sandbox_id: id.clone(),
                    netns_path: netns.clone(),
                    ..Default::default()
                };
                expect_ok("DetachPod", ctx.clients.pods.clone().detach_pod(d).await)?;
            }
            let r = ctx
                .clients
                .pods
                .clone()
                .pod_network_status(PodNetworkStatusRequest {
                    sandbox_id: id.clone(),
                })
                .await;
            expect_code("PodNetworkStatus after detach", r, Code::NotFound, None)?;
            if attached_ids(ctx).await?.contains(&id) {
                return Err(violation(
                    "ListAttachments after DetachPod",
                    "the sandbox gone",
                    "it listed",
                    "DetachPod detaches every network",
                ));
            }
            Ok(Outcome::Passed)
        }),
        check!(
            "pods/attach-accepts-unpublished-port-mappings",
            Some(Capability::Pods),
            |ctx| {
                // The kubelet passes every containerPort as a CRI PortMapping; one without a
                // hostPort has host_port 0 and must not be refused (types.proto PortMapping).
                let (net, netns) = setup!(ctx);
                let (mut req, id) = tracked_request(ctx, &netns, &net);
                if let Some(s) = req.sandbox.as_mut() {
                    s.port_mappings = vec![
                        PortMapping {
                            host_port: 0,
                            container_port: 8080,
                            ..Default::default()
                        },
                        PortMapping {
                            host_port: 0,
                            container_port: 8080,
                            protocol: Protocol::Udp as i32,
                            ..Default::default()
                        },
                    ];
                }
                let what = "AttachPod with port_mappings [{host_port: 0, container_port: 8080} TCP and UDP]";
                expect_ok(what, ctx.clients.pods.clone().attach_pod(req).await)?;
                if !attached_ids(ctx).await?.contains(&id) {
                    return Err(format!("sent {what}: answered OK but {id} is not listed"));
                }
                Ok(Outcome::Passed)
            }
        ),
        check!("pods/attach-defaults", Some(Capability::Pods), |ctx| {
            // No selection means network "default" on eth0 with the default route (pods.proto,
            // AttachPod defaults); a target without "default" refuses, naming the network.
            let (_, netns) = setup!(ctx);
            let (mut req, _) = tracked_request(ctx, &netns, "default");
            req.networks.clear();
            let what = "AttachPod with no networks";
            let res = ctx.clients.pods.clone().attach_pod(req).await;
            if !ctx.info.networks.iter().any(|n| n == "default") {
                expect_code(
                    what,
                    res,
                    Code::FailedPrecondition,
                    Some("networks[0].network"),
                )?;
                return Ok(Outcome::Passed);
            }
            let got = expect_ok(what, res)?.into_inner().attachments;
            let shape: Vec<(&str, &str, bool)> = got
                .iter()
                .map(|a| {
                    (
                        a.network.as_str(),
                        a.interface_name.as_str(),
                        a.default_route,
                    )
                })
                .collect();
            if shape != [("default", "eth0", true)] {
                return Err(violation(
                    what,
                    "one attachment: network default, interface eth0, default route",
                    format!("{shape:?}"),
                    "AttachPod defaults",
                ));
            }
            Ok(Outcome::Passed)
        }),
        check!("pods/detach-unknown-ok", Some(Capability::Pods), |ctx| {
            let d = DetachPodRequest {
                sandbox_id: ctx.unique("never-attached"),
                ..Default::default()
            };
            expect_ok(
                "DetachPod of unknown sandbox",
                ctx.clients.pods.clone().detach_pod(d).await,
            )?;
            let r = ctx
                .clients
                .pods
                .clone()
                .detach_pod(DetachPodRequest::default())
                .await;
            expect_code(
                "DetachPod without sandbox_id",
                r,
                Code::InvalidArgument,
                Some("sandbox_id"),
            )?;
            Ok(Outcome::Passed)
        }),
        check!(
            "pods/status-unknown-not-found",
            Some(Capability::Pods),
            |ctx| {
                let r = ctx
                    .clients
                    .pods
                    .clone()
                    .pod_network_status(PodNetworkStatusRequest {
                        sandbox_id: ctx.unique("never-attached"),
                    })
                    .await;
                expect_code(
                    "PodNetworkStatus of unknown sandbox",
                    r,
                    Code::NotFound,
                    None,
                )?;
                let r = ctx
                    .clients
                    .pods
                    .clone()
                    .pod_network_status(PodNetworkStatusRequest::default())
                    .await;
                expect_code(
                    "PodNetworkStatus without sandbox_id",
                    r,
                    Code::InvalidArgument,
                    Some("sandbox_id"),
                )?;
                Ok(Outcome::Passed)
            }
        ),
        check!("pods/garbage-collect", Some(Capability::Pods), |ctx| {
            let (net, netns) = setup!(ctx);
            // One namespace per pod: a pod's namespace never holds another pod's eth0.
            let drop_ns = match ctx.pod_netns() {
                Ok(p) => p,
                Err(o) => return Ok(o),
            };
            let (keep, keep_id) = tracked_request(ctx, &netns, &net);
            let (drop, drop_id) = tracked_request(ctx, &drop_ns, &net);
            expect_ok("AttachPod", ctx.clients.pods.clone().attach_pod(keep).await)?;
            expect_ok("AttachPod", ctx.clients.pods.clone().attach_pod(drop).await)?;
            let valid: Vec<String> = attached_ids(ctx)
                .await?
                .into_iter()
                .filter(|i| *i != drop_id)
                .collect();
            let req = GarbageCollectRequest {
                valid_sandbox_ids: valid.clone(),
                ..Default::default()
            };
            let removed = expect_ok(
                "GarbageCollect",
                ctx.clients.pods.clone().garbage_collect(req.clone()).await,
            )?
            .into_inner()
            .removed_sandbox_ids;
            if removed != vec![drop_id.clone()] {
                return Err(violation(
                    format!("GarbageCollect with every sandbox but {drop_id} valid"),
                    format!("[{drop_id:?}] removed"),
                    format!("{removed:?}"),
                    "GarbageCollect detaches every sandbox not in valid_sandbox_ids",
                ));
            }
            let again = expect_ok(
                "GarbageCollect replay",
                ctx.clients.pods.clone().garbage_collect(req).await,
            )?
            .into_inner()
            .removed_sandbox_ids;
            if !again.is_empty() {
                return Err(violation(
                    "the same GarbageCollect again",
                    "nothing removed",
                    format!("{again:?}"),
                    "GarbageCollect is idempotent",
                ));
            }
            let ids = attached_ids(ctx).await?;
            if !ids.contains(&keep_id) || ids.contains(&drop_id) {
                return Err(violation(
                    "ListAttachments after GarbageCollect",
                    format!("{keep_id} listed, {drop_id} not"),
                    format!("{ids:?}"),
                    "GarbageCollect keeps the valid sandboxes",
                ));
            }
            let bad = GarbageCollectRequest {
                valid_sandbox_ids: vec![String::new()],
                ..Default::default()
            };
            expect_code(
                "GarbageCollect with empty id",
                ctx.clients.pods.clone().garbage_collect(bad).await,
                Code::InvalidArgument,
                Some("valid_sandbox_ids[0]"),
            )?;
            Ok(Outcome::Passed)
        }),
    ]
}
