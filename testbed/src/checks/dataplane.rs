//! Pods, data plane: pods are fresh network namespaces and real packets cross them. Run the
//! suite inside the namespace that stands for the node (the host's and drivers' namespace) so
//! pod→node and host-side interfaces are seen from the node.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use netlet_sdk::proto::{
    AttachPodRequest, Attachment, Capability, DetachPodRequest, NetworkSelection, PodSandbox,
};

use super::{check, expect_ok};
use crate::conformance::{Check, Ctx, Outcome};
use crate::probe;

/// How soon after DetachPod a pod's interfaces must be gone (pods.proto, DetachPod).
const REAPED_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Pods attached at once by the concurrency check.
pub const CONCURRENT_PODS: usize = 50;

struct Pod {
    netns: PathBuf,
    id: String,
    attachments: Vec<Attachment>,
}

fn selection(network: &str, ifname: &str) -> NetworkSelection {
    NetworkSelection {
        network: network.into(),
        interface_name: ifname.into(),
        ..Default::default()
    }
}

fn request(ctx: &Ctx, netns: &Path, networks: Vec<NetworkSelection>) -> AttachPodRequest {
    let id = ctx.unique("dp-sandbox");
    ctx.created_sandbox(&id);
    AttachPodRequest {
        sandbox: Some(PodSandbox {
            name: id.clone(),
            namespace: "conformance".into(),
            uid: id.clone(),
            netns_path: netns.display().to_string(),
            id,
            ..Default::default()
        }),
        networks,
    }
}

async fn attach(ctx: &Ctx, networks: Vec<NetworkSelection>) -> Result<Pod, Outcome> {
    let netns = PathBuf::from(ctx.pod_netns()?);
    let req = request(ctx, &netns, networks);
    let id = req
        .sandbox
        .as_ref()
        .map(|s| s.id.clone())
        .unwrap_or_default();
    let attachments = expect_ok("AttachPod", ctx.clients.pods.clone().attach_pod(req).await)
        .map_err(Outcome::Failed)?
        .into_inner()
        .attachments;
    Ok(Pod {
        netns,
        id,
        attachments,
    })
}

macro_rules! pod {
    ($ctx:expr, $nets:expr) => {
        match attach($ctx, $nets).await {
            Ok(p) => p,
            Err(o) => return Ok(o),
        }
    };
}

macro_rules! network {
    ($ctx:expr) => {
        match $ctx.network() {
            Some(n) => n,
            None => return Ok(Outcome::Skipped("target declares no network".into())),
        }
    };
}

fn addresses(a: &Attachment) -> Result<Vec<IpAddr>, String> {
    a.ips.iter().map(|c| probe::ip_of(&c.address)).collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
}

/// TCP and UDP from `from` to every address of `to_att` inside `to`; the server must see the
/// client's own address (no NAT between pods).
async fn exchange(
    from: &Pod,
    from_att: &Attachment,
    to: &Pod,
    to_att: &Attachment,
    port: u16,
) -> Result<(), String> {
    let src = addresses(from_att)?;
    for (i, dst) in addresses(to_att)?.into_iter().enumerate() {
        let (f, t) = (from.netns.clone(), to.netns.clone());
        let port = port + i as u16;
        let want_src = src.iter().find(|s| s.is_ipv4() == dst.is_ipv4()).copied();
        blocking(move || {
            let any: IpAddr = if dst.is_ipv4() {
                "0.0.0.0".parse().unwrap()
            } else {
                "::".parse().unwrap()
            };
            let tcp = probe::tcp_echo(Some(&t), SocketAddr::new(any, port), 1)?;
            let udp = probe::udp_echo(&t, SocketAddr::new(any, port), 1)?;
            for (proto, got) in [
                (
                    "tcp",
                    probe::tcp_request(&f, SocketAddr::new(dst, tcp.port()), "hello")?,
                ),
                (
                    "udp",
                    probe::udp_request(&f, SocketAddr::new(dst, udp.port()), "hello")?,
                ),
            ] {
                let want = format!(
                    "{}|hello",
                    want_src.map(|s| s.to_string()).unwrap_or_default()
                );
                if got != want {
                    return Err(format!(
                        "{proto} to {dst}: server answered {got:?}, want {want:?}"
                    ));
                }
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

async fn verify_inside(pod: &Pod) -> Result<(), String> {
    let ns = pod.netns.clone();
    let (ifaces, routes) =
        blocking(move || Ok((probe::interfaces(&ns)?, probe::default_routes(&ns)?))).await?;
    if !ifaces.get("lo").is_some_and(|l| l.up) {
        return Err(format!("lo is not up in the pod: {ifaces:?}"));
    }
    for a in &pod.attachments {
        let got = ifaces.get(&a.interface_name).ok_or_else(|| {
            format!(
                "interface {} missing in the pod; found {:?}",
                a.interface_name,
                ifaces.keys()
            )
        })?;
        if !got.up {
            return Err(format!("{} is not up", a.interface_name));
        }
        if !got.mac.eq_ignore_ascii_case(&a.mac) {
            return Err(format!(
                "{}: MAC {} but AttachPod reported {}",
                a.interface_name, got.mac, a.mac
            ));
        }
        let want: std::collections::BTreeSet<String> =
            a.ips.iter().map(|c| c.address.clone()).collect();
        if want.is_empty() || got.addresses != want {
            return Err(format!(
                "{}: addresses {:?} but AttachPod reported {:?}",
                a.interface_name, got.addresses, want
            ));
        }
        for r in a
            .routes
            .iter()
            .filter(|r| r.destination == "0.0.0.0/0" || r.destination == "::/0")
        {
            let gw: IpAddr = r
                .gateway
                .parse()
                .map_err(|_| format!("route gateway {:?}", r.gateway))?;
            if !routes
                .iter()
                .any(|d| d.gateway == gw && d.iface == a.interface_name)
            {
                return Err(format!(
                    "default route via {gw} dev {} reported but not present: {routes:?}",
                    a.interface_name
                ));
            }
        }
    }
    Ok(())
}

async fn detach(ctx: &Ctx, id: &str) -> Result<(), String> {
    expect_ok(
        "DetachPod",
        ctx.clients
            .pods
            .clone()
            .detach_pod(DetachPodRequest {
                sandbox_id: id.to_string(),
                ..Default::default()
            })
            .await,
    )
    .map(|_| ())
}

pub fn checks() -> Vec<Check> {
    vec![
        check!(
            "dataplane/interface-matches-attachment",
            Some(Capability::Pods),
            |ctx| {
                let net = network!(ctx);
                let pod = pod!(ctx, vec![selection(&net, "eth0")]);
                if pod.attachments.len() != 1 {
                    return Err(format!(
                        "one network asked, {} attachments answered",
                        pod.attachments.len()
                    ));
                }
                verify_inside(&pod).await?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "dataplane/pod-to-pod-tcp-udp-every-family",
            Some(Capability::Pods),
            |ctx| {
                let net = network!(ctx);
                let a = pod!(ctx, vec![selection(&net, "eth0")]);
                let b = pod!(ctx, vec![selection(&net, "eth0")]);
                exchange(&a, &a.attachments[0], &b, &b.attachments[0], 18080).await?;
                exchange(&b, &b.attachments[0], &a, &a.attachments[0], 18090).await?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "dataplane/existing-interface-is-refused-and-kept",
            Some(Capability::Pods),
            |ctx| {
                // The pod's namespace already has an eth0 the driver did not make: AttachPod is
                // ALREADY_EXISTS naming the interface, and that link is left as it was
                // (pods.proto, AttachPod; the CNI reference plugins refuse too).
                let net = network!(ctx);
                let netns = match ctx.pod_netns() {
                    Ok(p) => PathBuf::from(p),
                    Err(o) => return Ok(o),
                };
                let ns = netns.clone();
                let before = blocking(move || {
                    probe::veth_inside(&ns, "eth0", "theirs0")?;
                    probe::interfaces(&ns)
                })
                .await?;
                let req = request(ctx, &netns, vec![selection(&net, "eth0")]);
                let id = req
                    .sandbox
                    .as_ref()
                    .map(|s| s.id.clone())
                    .unwrap_or_default();
                super::expect_code(
                    "AttachPod into a namespace that has an eth0 already",
                    ctx.clients.pods.clone().attach_pod(req).await,
                    tonic::Code::AlreadyExists,
                    Some("networks[0].interface_name"),
                )?;
                let ns = netns.clone();
                let after = blocking(move || probe::interfaces(&ns)).await?;
                if after.get("eth0").map(|i| &i.mac) != before.get("eth0").map(|i| &i.mac)
                    || !after.contains_key("theirs0")
                {
                    return Err(format!(
                        "the pod's own eth0 was changed: before {before:?}, after {after:?} (contract: a driver never deletes a link it did not make)"
                    ));
                }
                if super::pods::attached_ids(ctx).await?.contains(&id) {
                    return Err(format!("{id} is listed although its attach was refused"));
                }
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "dataplane/missing-netns-is-invalid-argument",
            Some(Capability::Pods),
            |ctx| {
                let net = network!(ctx);
                let missing = PathBuf::from(format!("/run/netns/{}", ctx.unique("missing")));
                let req = request(ctx, &missing, vec![selection(&net, "eth0")]);
                super::expect_code(
                    "AttachPod into a netns_path that does not exist",
                    ctx.clients.pods.clone().attach_pod(req).await,
                    tonic::Code::InvalidArgument,
                    Some("sandbox.netns_path"),
                )?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "dataplane/no-spoofed-sources",
            Some(Capability::Pods),
            |ctx| {
                // A pod sends only with its attachment's addresses (pods.proto, AttachPod,
                // "Identity"): one it gives itself (it has NET_ADMIN in its namespace) gets
                // nothing through, its own still works.
                let net = network!(ctx);
                let a = pod!(ctx, vec![selection(&net, "eth0")]);
                let b = pod!(ctx, vec![selection(&net, "eth0")]);
                let Some(own) = a.attachments[0]
                    .ips
                    .iter()
                    .find(|c| c.address.contains('.'))
                else {
                    return Ok(Outcome::Skipped("the pod has no IPv4 address".into()));
                };
                let own: ipnet::IpNet = own.address.parse().map_err(|e| format!("{e}"))?;
                let Some(to) = b.attachments[0]
                    .ips
                    .iter()
                    .filter_map(|c| probe::ip_of(&c.address).ok())
                    .find(IpAddr::is_ipv4)
                else {
                    return Ok(Outcome::Skipped(
                        "the second pod has no IPv4 address".into(),
                    ));
                };
                // An address of the pod's subnet nobody was given: the last but one.
                let last = own.hosts().last().ok_or("the pod's subnet has no hosts")?;
                let spoofed = match last {
                    IpAddr::V4(v) => IpAddr::from(std::net::Ipv4Addr::from(u32::from(v) - 1)),
                    v6 => v6,
                };
                if [own.addr(), to].contains(&spoofed) {
                    return Ok(Outcome::Skipped(format!("{spoofed} is in use here")));
                }
                let (ans, bns) = (a.netns.clone(), b.netns.clone());
                let (from_own, from_spoofed) = blocking(move || {
                    probe::add_address(&ans, "eth0", &format!("{spoofed}/{}", own.prefix_len()))?;
                    let ask = |src: IpAddr| -> Result<bool, String> {
                        let srv = probe::udp_echo(&bns, SocketAddr::new(to, 0), 1)?;
                        probe::run_in(&ans, move || {
                            let s = std::net::UdpSocket::bind(SocketAddr::new(src, 0)).ok()?;
                            s.set_read_timeout(Some(std::time::Duration::from_millis(700)))
                                .ok()?;
                            s.send_to(b"x", srv).ok()?;
                            s.recv_from(&mut [0u8; 64]).ok()
                        })
                        .map(|r| r.is_some())
                    };
                    Ok::<_, String>((ask(own.addr())?, ask(spoofed)?))
                })
                .await?;
                if !from_own {
                    return Err(format!(
                        "UDP from the pod's own {} to {to} was not answered",
                        own.addr()
                    ));
                }
                if from_spoofed {
                    return Err(format!(
                        "UDP from {spoofed}, an address the pod gave itself, reached {to} and was answered (contract: a pod sends only with its attachment's addresses)"
                    ));
                }
                Ok(Outcome::Passed)
            }
        ),
        check!("dataplane/pod-to-node", Some(Capability::Pods), |ctx| {
            let net = network!(ctx);
            let pod = pod!(ctx, vec![selection(&net, "eth0")]);
            let att = pod.attachments[0].clone();
            for ip in &att.ips {
                let Ok(gw) = ip.gateway.parse::<IpAddr>() else {
                    return Ok(Outcome::Skipped(format!(
                        "{} has no gateway on the node",
                        ip.address
                    )));
                };
                let ns = pod.netns.clone();
                let want = probe::ip_of(&ip.address)?;
                blocking(move || {
                    let srv = probe::tcp_echo(None, SocketAddr::new(gw, 0), 1)
                        .map_err(|e| format!("{e} (run the suite inside the node's namespace)"))?;
                    let got = probe::tcp_request(&ns, srv, "node")?;
                    if got != format!("{want}|node") {
                        return Err(format!("node saw {got:?}, want the pod's {want}"));
                    }
                    Ok(())
                })
                .await?;
            }
            Ok(Outcome::Passed)
        }),
        check!(
            "dataplane/secondary-network-carries-traffic",
            Some(Capability::Pods),
            |ctx| {
                let net = network!(ctx);
                let Some(second) = ctx.secondary_network.clone() else {
                    return Ok(Outcome::Skipped("no --secondary-network given".into()));
                };
                if !ctx.info.networks.contains(&second) {
                    return Ok(Outcome::Skipped(format!(
                        "target does not declare network {second:?}"
                    )));
                }
                let a = pod!(
                    ctx,
                    vec![selection(&net, "eth0"), selection(&second, "net1")]
                );
                let b = pod!(
                    ctx,
                    vec![selection(&net, "eth0"), selection(&second, "net1")]
                );
                for p in [&a, &b] {
                    let names: Vec<&str> = p
                        .attachments
                        .iter()
                        .map(|x| x.interface_name.as_str())
                        .collect();
                    if names != ["eth0", "net1"] {
                        return Err(format!("attachments for eth0+net1 came back as {names:?}"));
                    }
                    verify_inside(p).await?;
                }
                let status = expect_ok(
                    "PodNetworkStatus",
                    ctx.clients
                        .pods
                        .clone()
                        .pod_network_status(netlet_sdk::proto::PodNetworkStatusRequest {
                            sandbox_id: a.id.clone(),
                        })
                        .await,
                )?
                .into_inner();
                let nets: Vec<String> = status
                    .pod
                    .map(|p| p.attachments.into_iter().map(|x| x.network).collect())
                    .unwrap_or_default();
                if nets != [net.clone(), second.clone()] {
                    return Err(format!("PodNetworkStatus lists networks {nets:?}"));
                }
                exchange(&a, &a.attachments[1], &b, &b.attachments[1], 18100).await?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "dataplane/detach-removes-veth-and-frees-addresses",
            Some(Capability::Pods),
            |ctx| {
                let net = network!(ctx);
                let pod = pod!(ctx, vec![selection(&net, "eth0")]);
                let att = pod.attachments[0].clone();
                let host_if = att.host_interface.clone();
                if !host_if.is_empty() && !probe::local_interface_exists(&host_if) {
                    return Ok(Outcome::Skipped(format!(
                        "host interface {host_if} not visible here; run the suite inside the node's namespace"
                    )));
                }
                detach(ctx, &pod.id).await?;
                // A driver may answer before the kernel has deleted the interfaces (that takes
                // tens of milliseconds); they must be gone soon after.
                let deadline = std::time::Instant::now() + REAPED_WITHIN;
                loop {
                    let ns = pod.netns.clone();
                    let left = blocking(move || probe::interfaces(&ns)).await?;
                    let host_left = !host_if.is_empty() && probe::local_interface_exists(&host_if);
                    let pod_left = left.contains_key(&att.interface_name);
                    if !host_left && !pod_left {
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(if host_left {
                            format!(
                                "host interface {host_if} still exists {REAPED_WITHIN:?} after DetachPod"
                            )
                        } else {
                            format!(
                                "{} still in the pod {REAPED_WITHIN:?} after DetachPod",
                                att.interface_name
                            )
                        });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                // The same addresses, asked for statically by a new pod, must be free again.
                if !ctx.has_feature(netlet_sdk::proto::Feature::StaticIps) {
                    return Ok(Outcome::Skipped(
                        "veth and interface gone; whether the addresses are free is asked with static addresses, and the target does not declare FEATURE_STATIC_IPS".into(),
                    ));
                }
                let mut sel = selection(&net, "eth0");
                sel.ips = att.ips.iter().map(|c| c.address.clone()).collect();
                let again = pod!(ctx, vec![sel]);
                let got: Vec<String> = again.attachments[0]
                    .ips
                    .iter()
                    .map(|c| c.address.clone())
                    .collect();
                let want: Vec<String> = att.ips.iter().map(|c| c.address.clone()).collect();
                if got != want {
                    return Err(format!("static re-request of freed {want:?} gave {got:?}"));
                }
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "dataplane/attach-replayed-is-one-attachment",
            Some(Capability::Pods),
            |ctx| {
                let net = network!(ctx);
                let netns = PathBuf::from(match ctx.pod_netns() {
                    Ok(p) => p,
                    Err(o) => return Ok(o),
                });
                let req = request(ctx, &netns, vec![selection(&net, "eth0")]);
                let id = req
                    .sandbox
                    .as_ref()
                    .map(|s| s.id.clone())
                    .unwrap_or_default();
                let mut first = None;
                for i in 0..ctx.replays.max(2) {
                    let got = expect_ok(
                        "AttachPod",
                        ctx.clients.pods.clone().attach_pod(req.clone()).await,
                    )?
                    .into_inner();
                    match &first {
                        None => first = Some(got),
                        Some(f) if *f != got => {
                            return Err(format!(
                                "replay {i} answered differently:\n{f:?}\nvs\n{got:?}"
                            ));
                        }
                        _ => {}
                    }
                }
                let n = super::pods::attached_ids(ctx)
                    .await?
                    .iter()
                    .filter(|s| **s == id)
                    .count();
                if n != 1 {
                    return Err(format!("ListAttachments shows the sandbox {n} times"));
                }
                let ns = netns.clone();
                let ifaces = blocking(move || probe::interfaces(&ns)).await?;
                let names: Vec<&String> = ifaces.keys().filter(|k| *k != "lo").collect();
                if names != ["eth0"] {
                    return Err(format!("pod has interfaces {names:?} after replays"));
                }
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "dataplane/concurrent-attaches-get-distinct-addresses",
            Some(Capability::Pods),
            |ctx| {
                let net = network!(ctx);
                let mut reqs = Vec::new();
                for _ in 0..CONCURRENT_PODS {
                    let netns = PathBuf::from(match ctx.pod_netns() {
                        Ok(p) => p,
                        Err(o) => return Ok(o),
                    });
                    reqs.push(request(ctx, &netns, vec![selection(&net, "eth0")]));
                }
                let calls = reqs.into_iter().map(|r| {
                    let mut c = ctx.clients.pods.clone();
                    async move { c.attach_pod(r).await }
                });
                let mut seen = std::collections::BTreeSet::new();
                for (i, r) in futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .enumerate()
                {
                    let a = expect_ok(&format!("AttachPod #{i}"), r)?.into_inner();
                    for ip in a.attachments.iter().flat_map(|x| &x.ips) {
                        if !seen.insert(ip.address.clone()) {
                            return Err(format!("{} handed out twice", ip.address));
                        }
                    }
                }
                if seen.len() < CONCURRENT_PODS {
                    return Err(format!(
                        "{CONCURRENT_PODS} pods got only {} addresses",
                        seen.len()
                    ));
                }
                Ok(Outcome::Passed)
            }
        ),
    ]
}
