//! Services for real, modeled on the Kubernetes sig-network Service e2e tests: the host with
//! the bridge and nft drivers inside a node namespace, pods as namespaces, an outside client
//! as one more namespace on a veth to the node, and real connections. Services are given to
//! the host through ProgramService on its socket; the host computes the node's view and the
//! nft driver programs nftables. Needs root (CI runs as root).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    Endpoint, EndpointPort, EndpointUpsert, IpFamily, ListAttachmentsRequest, PortMapping,
    ProgramServiceRequest, Protocol, Service, ServiceKey, ServicePort, ServiceType,
    SessionAffinity, TrafficPolicy,
};
use netlet_testbed::harness::{
    Node, attach, bridge_driver, detach, in_netns, nft_driver, privileged, tool,
};
use netlet_testbed::probe::{self, NetNs};

const V4: &str = "10.244.0.0/24";
const V6: &str = "fd00:10:244::/64";
const NODE: &str = "node-a";
const NODE_IP: &str = "192.168.77.1";
const OUTSIDE_IP: &str = "192.168.77.2";
const EXTERNAL_IP: &str = "192.168.99.10";
const LB_IP: &str = "192.168.99.11";
/// Long enough for a connection through the node, short enough for "it is dropped".
const QUICK: Duration = Duration::from_millis(1500);

struct Pod {
    ns: NetNs,
    v4: IpAddr,
    v6: IpAddr,
}

fn key(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: "e2e".into(),
        name: name.into(),
    }
}

fn port(name: &str, proto: Protocol, port: u32, target: u32) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: proto as i32,
        port,
        target_port: target,
        ..Default::default()
    }
}

fn cluster_ip(name: &str, ips: &[&str], ports: Vec<ServicePort>) -> Service {
    Service {
        key: Some(key(name)),
        r#type: ServiceType::ClusterIp as i32,
        cluster_ips: ips.iter().map(|s| s.to_string()).collect(),
        ports,
        internal_traffic_policy: TrafficPolicy::Cluster as i32,
        external_traffic_policy: TrafficPolicy::Cluster as i32,
        ..Default::default()
    }
}

/// An endpoint on `node` with the conditions given and the pod's ports http 8080, alt 8081,
/// dns 5353/udp.
fn ep(ip: IpAddr, node: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
    let p = |name: &str, port: u32, proto: Protocol| EndpointPort {
        name: name.into(),
        port,
        protocol: proto as i32,
        ..Default::default()
    };
    Endpoint {
        address: ip.to_string(),
        family: if ip.is_ipv4() {
            IpFamily::Ipv4
        } else {
            IpFamily::Ipv6
        } as i32,
        ports: vec![
            p("http", 8080, Protocol::Tcp),
            p("alt", 8081, Protocol::Tcp),
            p("dns", 5353, Protocol::Udp),
        ],
        ready,
        serving,
        terminating,
        node_name: node.into(),
        ..Default::default()
    }
}

fn ready(ip: IpAddr) -> Endpoint {
    ep(ip, NODE, true, true, false)
}

/// Gives the host the whole desired set of Services (a full sync of the socket source; the
/// host sends drivers only what changed). Returns once the drivers acknowledged it.
struct Programmer {
    clients: Clients,
    generation: u64,
}

impl Programmer {
    async fn set(&mut self, services: Vec<(Service, Vec<Endpoint>)>) {
        self.try_set(services)
            .await
            .expect("ProgramService on the host");
    }

    async fn try_set(
        &mut self,
        services: Vec<(Service, Vec<Endpoint>)>,
    ) -> Result<(), tonic::Status> {
        self.generation += 1;
        let mut req = ProgramServiceRequest {
            generation: self.generation,
            full_sync: true,
            ..Default::default()
        };
        for (s, eps) in services {
            for e in eps {
                req.endpoint_upserts.push(EndpointUpsert {
                    service: s.key.clone(),
                    endpoint: Some(e),
                });
            }
            req.service_upserts.push(s);
        }
        let r = self.clients.services.clone().program_service(req).await;
        if r.is_err() {
            // Refused: the host's source generation did not move.
            self.generation -= 1;
        }
        r.map(|_| ())
    }
}

/// The outside client: a namespace on a veth to the node, the node's default route pointing
/// at it (as a real node has one; a ClusterIP without endpoints must be routable to be
/// refused).
fn outside_client(node: &Node, tag: &str) -> NetNs {
    let outside = NetNs::create(&format!("netlet-outside-{tag}-{}", std::process::id())).unwrap();
    probe::wire(
        &node.netns.path,
        "ext0",
        &format!("{NODE_IP}/24"),
        &outside.path,
        "eth0",
        &format!("{OUTSIDE_IP}/24"),
    )
    .unwrap();
    probe::add_route(&node.netns.path, "0.0.0.0/0", ip(OUTSIDE_IP)).unwrap();
    outside
}

/// A pod namespace attached through the host, serving "<name>" on TCP 8080 (v4 and v6),
/// "<name>-alt" on TCP 8081 and "<name>" on UDP 5353.
async fn start_pod(c: &Clients, name: &str, port_mappings: Vec<PortMapping>) -> Pod {
    let ns = NetNs::create(&format!("netlet-svc-{name}-{}", std::process::id())).unwrap();
    let sandbox = netlet_sdk::proto::PodSandbox {
        id: format!("svc-{name}"),
        name: name.to_string(),
        namespace: "e2e".into(),
        uid: name.to_string(),
        netns_path: ns.path.display().to_string(),
        port_mappings,
        ..Default::default()
    };
    let a = attach(c, sandbox, vec![]).await.expect("attach");
    let ips: Vec<IpAddr> = a[0]
        .ips
        .iter()
        .map(|x| probe::ip_of(&x.address).unwrap())
        .collect();
    let v4 = *ips.iter().find(|i| i.is_ipv4()).unwrap();
    let v6 = *ips.iter().find(|i| i.is_ipv6()).unwrap();
    for addr in [sa(ip("0.0.0.0"), 8080), sa(v6, 8080)] {
        probe::tcp_tagged(&ns.path, addr, name).unwrap();
    }
    probe::tcp_tagged(&ns.path, sa(ip("0.0.0.0"), 8081), &format!("{name}-alt")).unwrap();
    probe::udp_tagged(&ns.path, sa(ip("0.0.0.0"), 5353), name).unwrap();
    Pod { ns, v4, v6 }
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Who answered (the tag) and whom it saw, for one TCP connection.
fn ask(from: &std::path::Path, to: SocketAddr) -> Result<(String, String), String> {
    let out = probe::tcp_read(from, to, QUICK)?;
    let (tag, peer) = out
        .split_once('|')
        .ok_or_else(|| format!("unexpected answer {out:?}"))?;
    Ok((tag.to_string(), peer.to_string()))
}

fn backends(from: &std::path::Path, to: SocketAddr, n: usize) -> Result<Vec<String>, String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(ask(from, to)?.0);
    }
    seen.sort();
    seen.dedup();
    Ok(seen)
}

fn expect(cond: bool, what: impl Into<String>) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what.into()) }
}

#[tokio::test(flavor = "multi_thread")]
async fn service_data_plane_conformance() {
    if !privileged("service_data_plane_conformance") {
        return;
    }
    let drivers = bridge_driver("bridge", "default", "netlet0", &[V4, V6])
        + &nft_driver("nft", &["--cluster-cidr", V4, "--cluster-cidr", V6]);
    let node = Node::start("svc", &drivers, &format!("nodeName: {NODE}\n")).await;
    node.host.wait_ready("default").await;
    // The Services driver registers on its own time, after the bridge.
    node.host.wait_driver("nft").await;
    let c = node.host.clients().await;

    // The outside client: a veth to the node; the node's default route points at it (so a
    // ClusterIP is routable, as in a real cluster), and it reaches the external IP via the
    // node. Nothing leaves these namespaces.
    let outside = outside_client(&node, "svc");
    probe::add_route(&outside.path, &format!("{EXTERNAL_IP}/32"), ip(NODE_IP)).unwrap();
    probe::add_route(&outside.path, &format!("{LB_IP}/32"), ip(NODE_IP)).unwrap();

    let mut pods = Vec::new();
    for i in 1..=3 {
        pods.push(start_pod(&c, &format!("p{i}"), vec![]).await);
    }
    let (p1, p2, p3) = (&pods[0], &pods[1], &pods[2]);
    let mut prog = Programmer {
        clients: c.clone(),
        generation: 0,
    };

    let web_ip = ip("10.96.0.10");
    let web = || {
        let mut s = cluster_ip(
            "web",
            &["10.96.0.10"],
            vec![
                port("http", Protocol::Tcp, 80, 0),
                port("alt", Protocol::Tcp, 81, 0),
                port("dns", Protocol::Udp, 53, 0),
            ],
        );
        s.r#type = ServiceType::NodePort as i32;
        s.ports[0].node_port = 30080;
        s.external_ips = vec![EXTERNAL_IP.into()];
        s
    };
    let both = vec![ready(p1.v4), ready(p2.v4)];
    let mut results: Vec<(&str, Result<(), String>)> = Vec::new();

    prog.set(vec![(web(), both.clone())]).await;
    results.push((
        "clusterip-tcp-from-pod-reaches-every-endpoint",
        (|| {
            let seen = backends(&p3.ns.path, sa(web_ip, 80), 30)?;
            expect(seen == ["p1", "p2"], format!("backends seen: {seen:?}"))
        })(),
    ));
    results.push((
        "clusterip-tcp-from-node",
        (|| {
            let (tag, _) = ask(&node.netns.path, sa(web_ip, 80))?;
            expect(tag == "p1" || tag == "p2", format!("answered by {tag}"))
        })(),
    ));
    results.push((
        "clusterip-keeps-pod-client-address",
        (|| {
            let (_, peer) = ask(&p3.ns.path, sa(web_ip, 80))?;
            expect(
                peer == p3.v4.to_string(),
                format!("server saw {peer}, not {}", p3.v4),
            )
        })(),
    ));
    results.push((
        "clusterip-udp-from-pod",
        (|| {
            let out = probe::udp_request(&p3.ns.path, sa(web_ip, 53), "q")?;
            expect(
                out.starts_with("p1|") || out.starts_with("p2|"),
                format!("answer {out:?}"),
            )
        })(),
    ));
    // kube-proxy's "should be able to preserve UDP traffic when server pod cycles": the flow
    // of a client that keeps its source port follows the Service when its endpoint is
    // removed (its conntrack entry flushed), even though the old server still listens.
    let udp_follows = async {
        let sock = probe::udp_socket(&p3.ns.path, true)?;
        let first = probe::udp_ask(&sock, sa(web_ip, 53), "q")?;
        let (gone, stays) = if first.starts_with("p1|") {
            (p1, p2)
        } else {
            (p2, p1)
        };
        prog.set(vec![(web(), vec![ready(stays.v4)])]).await;
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(probe::udp_ask(&sock, sa(web_ip, 53), "q")?);
        }
        prog.set(vec![(web(), both.clone())]).await;
        let stays_tag = if std::ptr::eq(stays, p1) {
            "p1|"
        } else {
            "p2|"
        };
        expect(
            answers.iter().all(|a| a.starts_with(stays_tag)),
            format!(
                "first answer {first:?}; after {} left: {answers:?}",
                gone.v4
            ),
        )
    };
    results.push(("udp-flow-follows-a-removed-endpoint", udp_follows.await));
    results.push((
        "multi-port-service",
        (|| {
            let (tag, _) = ask(&p3.ns.path, sa(web_ip, 81))?;
            expect(tag.ends_with("-alt"), format!("port 81 answered by {tag}"))
        })(),
    ));
    results.push((
        "nodeport-on-node-address-from-outside",
        (|| {
            let (tag, peer) = ask(&outside.path, sa(ip(NODE_IP), 30080))?;
            expect(tag == "p1" || tag == "p2", format!("answered by {tag}"))?;
            // externalTrafficPolicy Cluster: masqueraded.
            expect(
                peer != OUTSIDE_IP,
                format!("server saw the client {peer} under ETP Cluster"),
            )
        })(),
    ));
    results.push((
        "external-ip-from-outside",
        (|| {
            let (tag, _) = ask(&outside.path, sa(ip(EXTERNAL_IP), 80))?;
            expect(tag == "p1" || tag == "p2", format!("answered by {tag}"))
        })(),
    ));
    results.push((
        "nodeport-not-on-other-addresses",
        // A NodePort answers on node addresses, not on the ClusterIP.
        match ask(&p3.ns.path, sa(web_ip, 30080)) {
            Ok(a) => Err(format!("ClusterIP:NodePort answered {a:?}")),
            Err(_) => Ok(()),
        },
    ));

    // Hairpin: a pod reaching itself through its Service.
    results.push(("hairpin-pod-reaches-itself", {
        prog.set(vec![(web(), vec![ready(p1.v4)])]).await;
        (|| {
            let (tag, _) = ask(&p1.ns.path, sa(web_ip, 80))?;
            expect(tag == "p1", format!("answered by {tag}"))
        })()
    }));

    // Session affinity: one backend for every request; off again: spread.
    results.push(("session-affinity-client-ip", {
        let mut s = web();
        s.session_affinity = SessionAffinity::ClientIp as i32;
        s.session_affinity_timeout_seconds = 60;
        prog.set(vec![(s.clone(), both.clone())]).await;
        let sticky = backends(&p3.ns.path, sa(web_ip, 80), 20);
        // The remembered endpoint goes: the client moves to the one left, and stays.
        let left = match sticky.as_ref().map(|s| s.as_slice()) {
            Ok([one]) if one == "p1" => vec![ready(p2.v4)],
            _ => vec![ready(p1.v4)],
        };
        prog.set(vec![(s.clone(), left)]).await;
        let moved = backends(&p3.ns.path, sa(web_ip, 80), 5);
        prog.set(vec![(s, both.clone())]).await;
        let kept = backends(&p3.ns.path, sa(web_ip, 80), 10);
        prog.set(vec![(web(), both.clone())]).await;
        let spread = backends(&p3.ns.path, sa(web_ip, 80), 30);
        (|| {
            let sticky = sticky?;
            expect(sticky.len() == 1, format!("with affinity: {sticky:?}"))?;
            let (moved, kept) = (moved?, kept?);
            expect(
                moved.len() == 1 && moved != sticky,
                format!("after its endpoint went: {moved:?} (was {sticky:?})"),
            )?;
            expect(kept == moved, format!("the first one back: {kept:?}"))?;
            let spread = spread?;
            expect(spread.len() == 2, format!("affinity off: {spread:?}"))
        })()
    }));

    // No endpoints: refused, quickly (not a timeout).
    results.push(("no-endpoints-connection-refused", {
        prog.set(vec![(web(), vec![])]).await;
        let t = Instant::now();
        let r = ask(&p3.ns.path, sa(web_ip, 80));
        let took = t.elapsed();
        let t = Instant::now();
        let from_node = ask(&node.netns.path, sa(web_ip, 80));
        let node_took = t.elapsed();
        (|| {
            let e = r.err().ok_or("answered without endpoints")?;
            expect(e.contains("refused"), format!("pod: {e}"))?;
            expect(
                took < Duration::from_secs(1),
                format!("refusal took {took:?}"),
            )?;
            let e = from_node
                .err()
                .ok_or("answered the node without endpoints")?;
            expect(e.contains("refused"), format!("node: {e}"))?;
            expect(
                node_took < Duration::from_secs(1),
                format!("refusal to the node took {node_took:?}"),
            )
        })()
    }));

    // Terminating fallback: only serving+terminating endpoints left: still served.
    results.push(("terminating-endpoints-serve-when-no-ready-one", {
        prog.set(vec![(web(), vec![ep(p2.v4, NODE, false, true, true)])])
            .await;
        (|| {
            let (tag, _) = ask(&p3.ns.path, sa(web_ip, 80))?;
            expect(tag == "p2", format!("answered by {tag}"))
        })()
    }));

    // internalTrafficPolicy Local with the only endpoint on another node: dropped.
    results.push((
        "internal-traffic-policy-local-drops-without-local-endpoint",
        {
            let mut s = web();
            s.internal_traffic_policy = TrafficPolicy::Local as i32;
            prog.set(vec![(s, vec![ep(p2.v4, "node-b", true, true, false)])])
                .await;
            let r = ask(&p3.ns.path, sa(web_ip, 80));
            (|| {
                let e = r.err().ok_or("answered through a remote endpoint")?;
                expect(
                    !e.contains("refused"),
                    format!("refused instead of dropped: {e}"),
                )
            })()
        },
    ));

    // externalTrafficPolicy Local: the client's address reaches the pod.
    results.push(("external-traffic-policy-local-keeps-client-address", {
        let mut s = web();
        s.external_traffic_policy = TrafficPolicy::Local as i32;
        prog.set(vec![(s, vec![ready(p1.v4)])]).await;
        (|| {
            let (tag, peer) = ask(&outside.path, sa(ip(NODE_IP), 30080))?;
            expect(tag == "p1", format!("answered by {tag}"))?;
            expect(
                peer == OUTSIDE_IP,
                format!("server saw {peer}, not {OUTSIDE_IP}"),
            )?;
            let (tag, _) = ask(&p3.ns.path, sa(ip(EXTERNAL_IP), 80))?;
            expect(tag == "p1", format!("pod to the external IP: {tag}"))
        })()
    }));

    // Dual-stack.
    results.push(("dual-stack-service", {
        let s = cluster_ip(
            "dual",
            &["10.96.0.20", "fd00:96::20"],
            vec![port("http", Protocol::Tcp, 80, 0)],
        );
        prog.set(vec![(s, vec![ready(p1.v4), ready(p1.v6)])]).await;
        (|| {
            let (t4, _) = ask(&p3.ns.path, sa(ip("10.96.0.20"), 80))?;
            let (t6, peer6) = ask(&p3.ns.path, sa(ip("fd00:96::20"), 80))?;
            expect(t4 == "p1" && t6 == "p1", format!("v4 {t4}, v6 {t6}"))?;
            expect(peer6 == p3.v6.to_string(), format!("v6 server saw {peer6}"))
        })()
    }));

    // A second Service asking for the same ClusterIP and port through the socket: refused
    // (ALREADY_EXISTS naming the field), nothing changes, the first keeps serving.
    results.push(("same-clusterip-and-port-refused", {
        prog.set(vec![(web(), vec![ready(p1.v4)])]).await;
        let dup = cluster_ip(
            "dup",
            &["10.96.0.10"],
            vec![port("http", Protocol::Tcp, 80, 0)],
        );
        let r = prog
            .try_set(vec![(web(), vec![ready(p1.v4)]), (dup, vec![ready(p2.v4)])])
            .await;
        let kept = backends(&p3.ns.path, sa(web_ip, 80), 5);
        (|| {
            let e = r.err().ok_or("a second Service got 10.96.0.10:80")?;
            expect(
                e.code() == tonic::Code::AlreadyExists
                    && e.message()
                        .starts_with("service_upserts[1].cluster_ips[0]:")
                    && e.message().contains("held by Service e2e/web"),
                format!("answer: {e:?}"),
            )?;
            let kept = kept?;
            expect(kept == ["p1"], format!("after the refusal: {kept:?}"))
        })()
    }));

    // loadBalancerSourceRanges: the LoadBalancer IP answers the allowed client only; other
    // sources are dropped; the NodePort is not restricted.
    results.push(("load-balancer-source-ranges", {
        let lb = |ranges: &[&str]| {
            let mut s = web();
            s.r#type = ServiceType::LoadBalancer as i32;
            s.load_balancer_ips = vec![LB_IP.into()];
            s.load_balancer_source_ranges = ranges.iter().map(|r| r.to_string()).collect();
            s
        };
        prog.set(vec![(
            lb(&[&format!("{OUTSIDE_IP}/32")]),
            vec![ready(p1.v4)],
        )])
        .await;
        let allowed = ask(&outside.path, sa(ip(LB_IP), 80));
        prog.set(vec![(lb(&["10.0.0.0/8"]), vec![ready(p1.v4)])])
            .await;
        let denied = ask(&outside.path, sa(ip(LB_IP), 80));
        let node_port = ask(&outside.path, sa(ip(NODE_IP), 30080));
        (|| {
            let (tag, _) = allowed?;
            expect(tag == "p1", format!("allowed client answered by {tag}"))?;
            let e = denied
                .err()
                .ok_or("a client outside the ranges was answered")?;
            expect(!e.contains("refused"), format!("refused, not dropped: {e}"))?;
            let (tag, _) = node_port?;
            expect(tag == "p1", format!("NodePort answered by {tag}"))
        })()
    }));

    // Updates and deletions take effect.
    results.push(("endpoint-update-and-service-deletion", {
        prog.set(vec![(web(), vec![ready(p2.v4)])]).await;
        let moved = backends(&p3.ns.path, sa(web_ip, 80), 10);
        prog.set(vec![]).await;
        let gone = ask(&p3.ns.path, sa(web_ip, 80));
        (|| {
            let moved = moved?;
            expect(moved == ["p2"], format!("after the update: {moved:?}"))?;
            expect(gone.is_err(), format!("deleted Service answered: {gone:?}"))
        })()
    }));

    // hostPort: a pod's CRI port mappings, handed over with AttachPod, answer on the node's
    // address from outside (the client's address kept), from the pod itself (hairpin), on
    // the node address they name only; a second pod asking for a held port is refused and
    // not attached; detaching the pod closes them.
    let mapping = |host_port, container_port, protocol: Protocol, host_ip: &str| PortMapping {
        host_port,
        container_port,
        protocol: protocol as i32,
        host_ip: host_ip.to_string(),
        ..Default::default()
    };
    let hp = start_pod(
        &c,
        "hp",
        vec![
            mapping(8088, 8080, Protocol::Tcp, ""),
            mapping(5300, 5353, Protocol::Udp, NODE_IP),
        ],
    )
    .await;
    results.push((
        "host-port-from-outside-keeps-client-address",
        (|| {
            let (tag, peer) = ask(&outside.path, sa(ip(NODE_IP), 8088))?;
            expect(tag == "hp", format!("answered by {tag}"))?;
            expect(
                peer == OUTSIDE_IP,
                format!("server saw {peer}, not {OUTSIDE_IP}"),
            )
        })(),
    ));
    results.push((
        "host-port-on-localhost-from-the-node",
        (|| {
            // As the CNI portmap plugin serves them: 127.0.0.1:<hostPort> on the node reaches
            // the pod (with the node's address, as a loopback source cannot be answered).
            let (tag, peer) = ask(&node.netns.path, sa(ip("127.0.0.1"), 8088))?;
            expect(tag == "hp", format!("answered by {tag}"))?;
            expect(
                !peer.starts_with("127."),
                format!("the pod saw a loopback source {peer}"),
            )?;
            // A mapping bound to one host IP (hostIP) does not answer on localhost.
            let e = probe::udp_request(&node.netns.path, sa(ip("127.0.0.1"), 5300), "q");
            expect(
                e.is_err(),
                format!("UDP 5300, bound to {NODE_IP}, answered on localhost: {e:?}"),
            )
        })(),
    ));
    results.push((
        "host-port-udp-on-its-host-ip",
        (|| {
            let out = probe::udp_request(&outside.path, sa(ip(NODE_IP), 5300), "q")?;
            expect(out.starts_with("hp|"), format!("answer {out:?}"))
        })(),
    ));
    results.push((
        "host-port-hairpin-pod-reaches-itself",
        (|| {
            let (tag, _) = ask(&hp.ns.path, sa(ip(NODE_IP), 8088))?;
            expect(tag == "hp", format!("answered by {tag}"))
        })(),
    ));
    results.push(("host-port-held-is-refused-and-attaches-nothing", {
        let ns = NetNs::create(&format!("netlet-svc-hp2-{}", std::process::id())).unwrap();
        let sandbox = netlet_sdk::proto::PodSandbox {
            id: "svc-hp2".into(),
            name: "hp2".into(),
            namespace: "e2e".into(),
            netns_path: ns.path.display().to_string(),
            port_mappings: vec![mapping(8088, 9090, Protocol::Tcp, NODE_IP)],
            ..Default::default()
        };
        let r = attach(&c, sandbox, vec![]).await;
        let listed = c
            .pods
            .clone()
            .list_attachments(ListAttachmentsRequest::default())
            .await
            .map(|l| l.into_inner().pods);
        (|| {
            let e = r.err().ok_or("a second pod got host port 8088")?;
            expect(
                e.code() == tonic::Code::AlreadyExists
                    && e.message().contains("sandbox.port_mappings[0].host_port"),
                format!("answer: {e:?}"),
            )?;
            let listed = listed.map_err(|e| e.to_string())?;
            expect(
                !listed
                    .iter()
                    .any(|p| p.sandbox.as_ref().is_some_and(|s| s.id == "svc-hp2")),
                "the refused pod is attached",
            )
        })()
    }));
    results.push(("host-port-gone-with-the-pod", {
        let r = detach(&c, "svc-hp").await;
        let after = ask(&outside.path, sa(ip(NODE_IP), 8088));
        (|| {
            r.map_err(|e| format!("detach: {e}"))?;
            expect(after.is_err(), format!("answered after detach: {after:?}"))
        })()
    }));

    let mut report = String::new();
    for (name, r) in &results {
        match r {
            Ok(()) => report.push_str(&format!("PASS  services/{name}\n")),
            Err(e) => report.push_str(&format!("FAIL  services/{name}: {e}\n")),
        }
    }
    println!("{report}");
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{report}");
    drop(pods);
    drop(hp);
}

/// The README's walk-through: a Service and its EndpointSlice in a manifest file, a pod with a
/// fixed address serving it, another pod reaching it by the ClusterIP; then the file edited to
/// no endpoints, and the connection is refused.
#[tokio::test(flavor = "multi_thread")]
async fn service_from_a_manifest_is_reached_from_a_pod() {
    if !privileged("service_from_a_manifest_is_reached_from_a_pod") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let drivers = bridge_driver("bridge", "default", "netlet0", &[V4, V6])
        + &nft_driver("nft", &["--cluster-cidr", V4]);
    let extra = format!("nodeName: {NODE}\nmanifestsDir: {}\n", dir.path().display());
    let node = Node::start("manifest", &drivers, &extra).await;
    node.host.wait_ready("default").await;
    // The Services driver registers on its own time, after the bridge.
    node.host.wait_driver("nft").await;
    let _outside = outside_client(&node, "manifest");
    let c = node.host.clients().await;
    let mut pods = Vec::new();
    for (name, ips) in [("web", vec!["10.244.0.10".to_string()]), ("client", vec![])] {
        let ns = NetNs::create(&format!("netlet-mf-{name}-{}", std::process::id())).unwrap();
        netlet_testbed::harness::attach_default(&c, &format!("mf-{name}"), name, &ns.path, ips)
            .await
            .expect("attach");
        pods.push(ns);
    }
    probe::tcp_tagged(&pods[0].path, sa(ip("10.244.0.10"), 8080), "web").unwrap();
    let manifest = |ready: bool| {
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.0.80
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
  - addresses: [10.244.0.10]
    conditions: {{ready: {ready}}}
    nodeName: {NODE}
"#
        )
    };
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, manifest(true)).unwrap();
    let client = pods[1].path.clone();
    let answer =
        netlet_testbed::harness::wait_until("the Service answers", Duration::from_secs(10), || {
            let client = client.clone();
            async move { ask(&client, sa(ip("10.96.0.80"), 80)).ok() }
        })
        .await;
    assert_eq!(answer.0, "web");
    std::fs::write(&file, manifest(false)).unwrap();
    let refused = netlet_testbed::harness::wait_until(
        "no endpoints: refused",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move {
                ask(&client, sa(ip("10.96.0.80"), 80))
                    .err()
                    .filter(|e| e.contains("refused"))
            }
        },
    )
    .await;
    assert!(refused.contains("refused"));

    // A second file asking for the same ClusterIP and port (web-alt, port 8081): reported;
    // the first keeps it, also through a restart of the nft driver (whose full sync would list
    // the second first, by name); when the first file goes, the second takes over.
    probe::tcp_tagged(&pods[0].path, sa(ip("10.244.0.10"), 8081), "web-alt").unwrap();
    std::fs::write(&file, manifest(true)).unwrap();
    let second = dir.path().join("a-web.yaml");
    std::fs::write(
        &second,
        manifest(true)
            .replace("name: web,", "name: a-web,")
            .replace("web-1", "a-web-1")
            .replace("service-name: web}", "service-name: a-web}")
            .replace("port: 8080", "port: 8081")
            .replace("targetPort: 8080", "targetPort: 8081"),
    )
    .unwrap();
    let errors = netlet_testbed::harness::wait_until(
        "the conflict reported",
        Duration::from_secs(10),
        || {
            let out = node
                .command(&netlet_testbed::harness::bin("netletctl"))
                .arg("--socket")
                .arg(&node.host.socket)
                .arg("--admin-socket")
                .arg(&node.host.admin_socket)
                .args(["debug", "state"])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let e: Vec<String> = v["services"]["manifestErrors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .filter(|x| x.contains("held by"))
                .collect();
            async move { (!e.is_empty()).then_some(e) }
        },
    )
    .await;
    assert!(
        errors[0].ends_with("default/a-web: 10.96.0.80 TCP 80 is held by default/web"),
        "{errors:?}"
    );
    let client2 = client.clone();
    let first = netlet_testbed::harness::wait_until("web answers", Duration::from_secs(10), || {
        let client = client2.clone();
        async move { ask(&client, sa(ip("10.96.0.80"), 80)).ok() }
    })
    .await;
    assert_eq!(first.0, "web", "the first keeps it");
    let nft = node.host.children("netlet-nft");
    assert_eq!(nft.len(), 1, "one supervised nft driver: {nft:?}");
    let killed = nft[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    netlet_testbed::harness::wait_until("the nft driver back", Duration::from_secs(20), || {
        let again = node.host.children("netlet-nft");
        async move { (again.len() == 1 && again[0] != killed).then_some(()) }
    })
    .await;
    node.host.wait_ready("").await;
    // The Services driver registers on its own time, after the bridge.
    node.host.wait_driver("nft").await;
    // Its full sync has reached it once the Service answers again (its table was rebuilt).
    let client2 = client.clone();
    let after = netlet_testbed::harness::wait_until(
        "the Service answers after the restart",
        Duration::from_secs(20),
        || {
            let client = client2.clone();
            async move { ask(&client, sa(ip("10.96.0.80"), 80)).ok() }
        },
    )
    .await;
    assert_eq!(after.0, "web", "the holder the host names keeps it");
    std::fs::remove_file(&file).unwrap();
    let taken_over =
        netlet_testbed::harness::wait_until("web2 takes over", Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                ask(&client, sa(ip("10.96.0.80"), 80))
                    .ok()
                    .filter(|a| a.0 == "web-alt")
            }
        })
        .await;
    assert_eq!(taken_over.0, "web-alt");
}

/// A long nftables transaction does not stall the driver: Probe is answered again and again
/// while a full sync of thousands of Services is being programmed (the netlink work runs off
/// the driver's async runtime thread).
#[tokio::test(flavor = "multi_thread")]
async fn a_long_transaction_does_not_stall_probe() {
    if !privileged("a_long_transaction_does_not_stall_probe") {
        return;
    }
    let node = Node::start(
        "stall",
        &nft_driver("nft", &["--cluster-cidr", V4]),
        "requiredNetworks: []\n",
    )
    .await;
    let sock = node.host.dir.path().join("run/drivers/nft.sock");
    let driver = netlet_testbed::harness::wait_until(
        "the nft driver serving",
        Duration::from_secs(20),
        || {
            let sock = sock.clone();
            async move { Clients::connect(&sock, None).await.ok() }
        },
    )
    .await;
    let (services, endpoints) = (4000u32, 10u32);
    let mut req = ProgramServiceRequest {
        epoch: 1,
        generation: 1,
        full_sync: true,
        ..Default::default()
    };
    for i in 0..services {
        let s = cluster_ip(
            &format!("s{i}"),
            &[&format!("10.96.{}.{}", i / 250, i % 250 + 1)],
            vec![port("http", Protocol::Tcp, 80, 8080)],
        );
        for j in 0..endpoints {
            req.endpoint_upserts.push(EndpointUpsert {
                service: s.key.clone(),
                endpoint: Some(ready(ip(&format!(
                    "10.245.{}.{}",
                    (i * endpoints + j) / 250 % 250,
                    (i * endpoints + j) % 250 + 1
                )))),
            });
        }
        req.service_upserts.push(s);
    }
    let mut services_client = driver.services.clone();
    let started = Instant::now();
    let program = tokio::spawn(async move { services_client.program_service(req).await });
    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    while !program.is_finished() {
        let t = Instant::now();
        driver
            .identity
            .clone()
            .probe(netlet_sdk::proto::ProbeRequest::default())
            .await
            .unwrap();
        slowest = slowest.max(t.elapsed());
        if !program.is_finished() {
            answered += 1;
        }
    }
    program.await.unwrap().expect("the full sync applied");
    let took = started.elapsed();
    println!(
        "full sync of {services} Services took {took:?}; {answered} probes answered meanwhile, slowest {slowest:?}"
    );
    assert!(
        answered >= 10,
        "{answered} probes answered during a {took:?} transaction"
    );
}

/// Services of a shape already in use (the same traffic handling and endpoint count) are data:
/// adding 40 of them, and changing an endpoint, leaves the table's chains as `nft` lists them,
/// so the kernel has no jump graph to check again; the Services are in the maps.
#[tokio::test(flavor = "multi_thread")]
async fn services_of_a_known_shape_add_no_chain() {
    if !privileged("services_of_a_known_shape_add_no_chain") {
        return;
    }
    let Some(nft) = tool("nft", "services_of_a_known_shape_add_no_chain") else {
        return;
    };
    let node = Node::start(
        "shape",
        &nft_driver("nft", &["--cluster-cidr", V4]),
        &format!("nodeName: {NODE}\n"),
    )
    .await;
    node.host.wait_driver("nft").await;
    let mut prog = Programmer {
        clients: node.host.clients().await,
        generation: 0,
    };
    let svc = |i: usize| {
        cluster_ip(
            &format!("s{i}"),
            &[&format!("10.96.1.{i}")],
            vec![port("http", Protocol::Tcp, 80, 8080)],
        )
    };
    let eps = |i: usize, second: u8| {
        vec![
            ready(ip(&format!("10.244.0.{i}"))),
            ready(ip(&format!("10.244.{second}.{i}"))),
        ]
    };
    let nft_out = |args: &[&str]| {
        let out = in_netns(Some(&node.netns.path), &nft)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "nft {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let chains = || {
        let out = nft_out(&["list", "table", "ip", "netlet-nft"]);
        out.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("chain "))
            .map(|l| l.trim_end_matches(" {").to_string())
            .collect::<Vec<_>>()
    };
    prog.set(vec![(svc(1), eps(1, 1))]).await;
    let before = chains();
    assert!(
        before.iter().any(|c| c.starts_with("chain class-ip-")),
        "the Service's class chain: {before:?}"
    );
    prog.set((1..=40).map(|i| (svc(i), eps(i, 1))).collect())
        .await;
    // One endpoint of each moves (same count).
    prog.set((1..=40).map(|i| (svc(i), eps(i, 2))).collect())
        .await;
    assert_eq!(chains(), before, "chains changed");
    let mut sv = svc(41);
    sv.session_affinity = SessionAffinity::ClientIp as i32;
    sv.r#type = ServiceType::NodePort as i32;
    sv.ports[0].node_port = 30041;
    sv.external_traffic_policy = TrafficPolicy::Local as i32;
    prog.set(
        (1..=41)
            .map(|i| (if i == 41 { sv.clone() } else { svc(i) }, eps(i, 2)))
            .collect(),
    )
    .await;
    let t = in_netns(Some(&node.netns.path), &nft)
        .args(["list", "table", "ip", "netlet-nft"])
        .output()
        .unwrap();
    std::fs::write(
        "/tmp/table.txt",
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&t.stdout),
            String::from_utf8_lossy(&t.stderr)
        ),
    )
    .unwrap();
    let mut all = String::new();
    for ch in [
        "services",
        "fronts",
        "fronts-nodeports",
        "local-shortcuts",
        "local-shortcuts-nodeports",
        "class-ip-notfrom-10800-2",
        "class-nodeport-none-10800-2",
        "class-local-ip-notfrom-10800-2",
        "class-local-nodeport-notfrom-10800-2",
        "class-ip-notfrom-0-2",
    ] {
        let t = in_netns(Some(&node.netns.path), &nft)
            .args(["list", "chain", "ip", "netlet-nft", ch])
            .output()
            .unwrap();
        all += &format!(
            "== {ch}\n{}\n{}",
            String::from_utf8_lossy(&t.stdout),
            String::from_utf8_lossy(&t.stderr)
        );
    }
    std::fs::write("/tmp/chains.txt", all).unwrap();
    // The class's set holds the fronts; nft lists the whole table (operators read it).
    let class = before
        .iter()
        .find_map(|c| c.strip_prefix("chain class-ip-"))
        .map(|c| format!("class-ip-{c}"))
        .unwrap();
    let fronts = nft_out(&["list", "set", "ip", "netlet-nft", &class]);
    let listed = (1..=40)
        .filter(|i| fronts.contains(&format!("10.96.1.{i} . tcp . 80")))
        .count();
    assert_eq!(listed, 40, "{fronts}");
    // Every kind of class lists too (operators read the ruleset with nft): ClientIP affinity,
    // a NodePort, externalTrafficPolicy Local's shortcut.
    let mut sticky = svc(41);
    sticky.r#type = ServiceType::NodePort as i32;
    sticky.ports[0].node_port = 30041;
    sticky.session_affinity = SessionAffinity::ClientIp as i32;
    sticky.external_traffic_policy = TrafficPolicy::Local as i32;
    prog.set(
        (1..=41)
            .map(|i| (if i == 41 { sticky.clone() } else { svc(i) }, eps(i, 2)))
            .collect(),
    )
    .await;
    let table = nft_out(&["list", "table", "ip", "netlet-nft"]);
    for want in [
        "update @affinity-ip",
        "goto class-nodeport-none-10800-2",
        "goto class-local-nodeport-notfrom-10800-2",
    ] {
        assert!(table.contains(want), "{want} not in\n{table}");
    }
    let endpoints = nft_out(&["list", "map", "ip", "netlet-nft", "endpoints-ip"]);
    assert!(
        endpoints.contains("10.244.2.40 . 8080") && !endpoints.contains("10.244.1.40 . 8080"),
        "{endpoints}"
    );
}
