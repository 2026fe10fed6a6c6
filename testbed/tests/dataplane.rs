//! Pod networking for real: the host and bridge drivers inside a namespace standing for the
//! node, pods as namespaces, real packets. Needs root (CI runs as root).

use std::path::Path;
use std::time::Duration;

use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    GarbageCollectRequest, ListAttachmentsRequest, NetworkReadyRequest, NetworkSelection,
    PodSandbox,
};
use netlet_testbed::harness::{
    Node, attach, bin, bridge_driver, detach, listed, privileged, readiness, wait_until,
};
use netlet_testbed::probe::{self, NetNs};
use tonic::Code;

const V4: &str = "10.244.0.0/24";
const V6: &str = "fd00:10:244::/64";
const NET1_V4: &str = "10.245.0.0/24";
const NET1_V6: &str = "fd00:10:245::/64";

fn two_networks() -> String {
    bridge_driver("bridge", "default", "netlet0", &[V4, V6])
        + &bridge_driver("bridge-net1", "net1", "netlet1", &[NET1_V4, NET1_V6])
}

async fn node(tag: &str) -> Node {
    let n = Node::start(tag, &two_networks(), "").await;
    n.host.wait_ready("net1").await;
    n
}

fn sandbox(id: &str, netns: &Path) -> PodSandbox {
    PodSandbox {
        id: id.into(),
        name: id.into(),
        namespace: "dataplane".into(),
        uid: id.into(),
        netns_path: netns.display().to_string(),
        ..Default::default()
    }
}

fn sel(network: &str, ifname: &str) -> NetworkSelection {
    NetworkSelection {
        network: network.into(),
        interface_name: ifname.into(),
        ..Default::default()
    }
}

/// Interfaces of the node that belong to pods (host-side veths and ifbs).
fn pod_links(node: &Node) -> Vec<String> {
    probe::interfaces(&node.netns.path)
        .unwrap()
        .into_keys()
        .filter(|n| n.starts_with("veth") || n.starts_with("bwp"))
        .collect()
}

/// The node's pod links once the deletions in flight are done (DetachPod answers before the
/// kernel has deleted the veth): none as soon as they are, else what is still there after 10 s.
async fn pod_links_left(node: &Node) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = pod_links(node);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_data_plane_against_host_and_bridge_driver() {
    if !privileged("conformance_data_plane_against_host_and_bridge_driver") {
        return;
    }
    let n = node("conf").await;
    let targets = [
        n.host.socket.clone(),
        n.host.dir.path().join("run/drivers/bridge.sock"),
    ];
    for t in targets {
        let out = n
            .command(&bin("netlet-conformance"))
            .args(["--target", &format!("unix://{}", t.display())])
            .args(["--secondary-network", "net1"])
            // Only bridge drivers run here: Services, Policy and Devices have no driver.
            .args(["--focus", "^(identity|node|pods|dataplane|cluster)/"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let direct = t.ends_with("bridge.sock");
        assert!(
            out.status.success(),
            "{}\n{text}\n{}",
            t.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(" 0 failed"), "{text}");
        for check in [
            "dataplane/interface-matches-attachment",
            "dataplane/pod-to-pod-tcp-udp-every-family",
            "dataplane/pod-to-node",
            "dataplane/no-spoofed-sources",
            "dataplane/detach-removes-veth-and-frees-addresses",
            "dataplane/attach-replayed-is-one-attachment",
            "dataplane/concurrent-attaches-get-distinct-addresses",
        ] {
            assert!(
                text.contains(&format!("PASS  {check}")),
                "{check} did not pass against {}:\n{text}",
                t.display()
            );
        }
        // The node table: the driver's own rules directly, the host's refusal through it.
        let cluster: &[&str] = if direct {
            &[
                "cluster/program-invalid-fields",
                "cluster/generations-deltas-and-replay",
            ]
        } else {
            &["cluster/host-nodes-come-from-sources"]
        };
        for check in cluster {
            assert!(
                text.contains(&format!("PASS  {check}")),
                "{check}:
{text}"
            );
        }
        // net1 is served by another driver: only the host can attach both.
        let multi = "PASS  dataplane/secondary-network-carries-traffic";
        assert_eq!(text.contains(multi), !direct, "{text}");
    }
    assert_eq!(
        pod_links_left(&n).await,
        Vec::<String>::new(),
        "conformance left pod links behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_on_the_second_network_rolls_the_first_back() {
    if !privileged("failure_on_the_second_network_rolls_the_first_back") {
        return;
    }
    let n = node("rollback").await;
    let c = n.host.clients().await;
    let pod = NetNs::create(&format!("netlet-pod-rb-{}", std::process::id())).unwrap();
    let mut bad = sel("net1", "net1");
    bad.ips = vec!["10.99.0.5".into()];
    let err = attach(
        &c,
        sandbox("rb-1", &pod.path),
        vec![sel("default", "eth0"), bad],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("10.99.0.5"), "{err:?}");
    let listed = listed(&c).await;
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(
        pod_links_left(&n).await,
        Vec::<String>::new(),
        "eth0's veth was not rolled back"
    );
    let inside = probe::interfaces(&pod.path).unwrap();
    assert!(!inside.contains_key("eth0"), "{inside:?}");
    // The rolled-back address is free: the same pod attaches cleanly and gets both networks.
    let ok = attach(
        &c,
        sandbox("rb-1", &pod.path),
        vec![sel("default", "eth0"), sel("net1", "net1")],
    )
    .await
    .unwrap();
    assert_eq!(ok.len(), 2);
    detach(&c, "rb-1").await.unwrap();
    assert_eq!(pod_links_left(&n).await, Vec::<String>::new());
}

/// The supervised driver's pid, from the host's pid file (`None` while it is being rewritten).
fn bridge_pid(n: &Node, driver: &str) -> Option<i32> {
    std::fs::read_to_string(n.host.dir.path().join(format!("run/drivers/{driver}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn driver_killed_during_churn_converges_with_nothing_leaked() {
    if !privileged("driver_killed_during_churn_converges_with_nothing_leaked") {
        return;
    }
    let n = node("churn").await;
    let c = n.host.clients().await;
    const PODS: usize = 8;
    let pods: Vec<NetNs> = (0..PODS)
        .map(|i| NetNs::create(&format!("netlet-pod-churn{i}-{}", std::process::id())).unwrap())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let (c, path, stop) = (c.clone(), p.path.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("churn-{i}");
                let _ = attach(&c, sandbox(&id, &path), vec![]).await;
                let _ = detach(&c, &id).await;
                rounds += 1;
            }
            rounds
        }));
    }
    // Let churn run, then kill the driver mid-flight, twice.
    for _ in 0..2 {
        wait_until("churn under way", Duration::from_secs(10), || async {
            let r = c
                .pods
                .clone()
                .list_attachments(ListAttachmentsRequest::default())
                .await
                .ok()?;
            (!r.into_inner().pods.is_empty()).then_some(())
        })
        .await;
        let pid = wait_until("driver pid file", Duration::from_secs(10), || async {
            bridge_pid(&n, "bridge")
        })
        .await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_until("driver restarted", Duration::from_secs(20), || async {
            bridge_pid(&n, "bridge").filter(|p| *p != pid).map(|_| ())
        })
        .await;
    }
    n.host.wait_ready("").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rounds = 0;
    for w in workers {
        rounds += w.await.unwrap();
    }
    assert!(
        rounds as usize > PODS,
        "churn did not run ({rounds} rounds)"
    );
    // The runtime's view: no sandbox is left. Detach each (idempotent) and garbage-collect.
    for i in 0..PODS {
        detach(&c, &format!("churn-{i}")).await.unwrap();
    }
    c.pods
        .clone()
        .garbage_collect(GarbageCollectRequest {
            valid_sandbox_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap();
    let host_view = listed(&c).await;
    assert!(host_view.is_empty(), "host still lists {host_view:?}");
    let driver = Clients::connect(
        &n.host.dir.path().join("run/drivers/bridge.sock"),
        Some(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let driver_view = listed(&driver).await;
    assert!(driver_view.is_empty(), "driver still holds {driver_view:?}");
    assert_eq!(
        pod_links_left(&n).await,
        Vec::<String>::new(),
        "veths leaked on the node"
    );
    for p in &pods {
        let inside = probe::interfaces(&p.path).unwrap();
        assert!(
            !inside.contains_key("eth0"),
            "{} kept eth0",
            p.path.display()
        );
    }
    // Every address is back in the pool (once its veth is deleted: DetachPod answers first).
    let usage = || async {
        let r = readiness(&driver).await;
        r.conditions
            .iter()
            .filter(|c| c.r#type == "AddressesAvailable")
            .map(|c| c.message.clone())
            .collect::<Vec<String>>()
    };
    assert_eq!(usage().await.len(), 2);
    let freed = wait_until(
        "addresses back in the pool",
        Duration::from_secs(10),
        || async {
            let u = usage().await;
            u.iter().all(|m| m.contains(": 0 of ")).then_some(u)
        },
    )
    .await;
    assert_eq!(freed.len(), 2, "{freed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_annotations_become_tbf_qdiscs_and_go_with_the_pod() {
    if !privileged("bandwidth_annotations_become_tbf_qdiscs") {
        return;
    }
    let n = Node::start(
        "bw",
        &bridge_driver("bridge", "default", "netlet0", &[V4, V6]),
        "",
    )
    .await;
    n.host.wait_ready("").await;
    let c = n.host.clients().await;
    let pod = NetNs::create(&format!("netlet-pod-bw-{}", std::process::id())).unwrap();
    let mut sb = sandbox("bw-1", &pod.path);
    sb.annotations
        .insert("kubernetes.io/ingress-bandwidth".into(), "10M".into());
    sb.annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "20M".into());
    let a = attach(&c, sb.clone(), vec![]).await.unwrap().remove(0);
    let veth = a.host_interface.clone();
    let ifb = format!("bwp{}", veth.trim_start_matches("veth"));
    let q = probe::qdiscs(&n.netns.path).unwrap();
    for want in [
        (veth.clone(), "tbf"),
        (veth.clone(), "ingress"),
        (ifb.clone(), "tbf"),
    ] {
        assert!(
            q.iter().any(|(i, k)| *i == want.0 && k == want.1),
            "missing {want:?} in {q:?}"
        );
    }
    // A bad annotation names itself and changes nothing.
    let pod2 = NetNs::create(&format!("netlet-pod-bw2-{}", std::process::id())).unwrap();
    let mut bad = sandbox("bw-2", &pod2.path);
    bad.annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "fast".into());
    let err = attach(&c, bad, vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("kubernetes.io/egress-bandwidth"),
        "{err:?}"
    );
    detach(&c, "bw-1").await.unwrap();
    assert_eq!(
        pod_links_left(&n).await,
        Vec::<String>::new(),
        "veth or ifb left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn masquerade_hides_pods_behind_the_node_off_node_only() {
    if !privileged("masquerade_hides_pods_behind_the_node_off_node_only") {
        return;
    }
    let mut driver = bridge_driver("bridge", "default", "netlet0", &[V4, V6]);
    driver = driver.replacen("\"--subnet\"", "\"--masquerade\",\"--subnet\"", 1);
    assert!(driver.contains("--masquerade"), "{driver}");
    let n = Node::start("masq", &driver, "").await;
    n.host.wait_ready("").await;
    let pid = std::process::id();
    // An outside client on a link of the node that has no route back to the pod CIDR.
    let outside = NetNs::create(&format!("netlet-outside-masq-{pid}")).unwrap();
    probe::wire(
        &n.netns.path,
        "uplink0",
        "192.0.2.1/24",
        &outside.path,
        "out0",
        "192.0.2.2/24",
    )
    .unwrap();
    let c = n.host.clients().await;
    let pod = NetNs::create(&format!("netlet-pod-masq-{pid}")).unwrap();
    let a = attach(&c, sandbox("masq-1", &pod.path), vec![])
        .await
        .unwrap()
        .remove(0);
    let pod_ip = probe::ip_of(&a.ips[0].address).unwrap();
    let (pod_path, out_path) = (pod.path.clone(), outside.path.clone());
    let seen = tokio::task::spawn_blocking(move || {
        let srv = probe::tcp_echo(Some(&out_path), "192.0.2.2:0".parse().unwrap(), 1)?;
        probe::tcp_request(&pod_path, srv, "out")
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        seen, "192.0.2.1|out",
        "off-node traffic leaves as the node's address"
    );
    // Traffic within the pod network (here: to the gateway on the node) keeps the pod's address.
    let (pod_path, node_path) = (pod.path.clone(), n.netns.path.clone());
    let gw: std::net::IpAddr = a.ips[0].gateway.parse().unwrap();
    let seen = tokio::task::spawn_blocking(move || {
        let srv = probe::tcp_echo(Some(&node_path), std::net::SocketAddr::new(gw, 0), 1)?;
        probe::tcp_request(&pod_path, srv, "in")
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(seen, format!("{pod_ip}|in"));
    detach(&c, "masq-1").await.unwrap();
}

/// The bridge driver's own NetworkReady, straight from its socket.
async fn driver_readiness(n: &Node, driver: &str) -> netlet_sdk::proto::NetworkReadiness {
    let d = Clients::connect(
        &n.host.dir.path().join(format!("run/drivers/{driver}.sock")),
        Some(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    readiness(&d).await
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_pool_is_resource_exhausted_and_a_readiness_reason() {
    if !privileged("exhausted_pool_is_resource_exhausted_and_a_readiness_reason") {
        return;
    }
    // A /30 leaves one pod address after the network address, the gateway and broadcast.
    let n = Node::start(
        "exhaust",
        &bridge_driver("bridge", "default", "netlet0", &["10.250.0.0/30"]),
        "",
    )
    .await;
    n.host.wait_ready("").await;
    let c = n.host.clients().await;
    let pid = std::process::id();
    let p1 = NetNs::create(&format!("netlet-pod-ex1-{pid}")).unwrap();
    let p2 = NetNs::create(&format!("netlet-pod-ex2-{pid}")).unwrap();
    let a = attach(&c, sandbox("ex-1", &p1.path), vec![]).await.unwrap();
    assert_eq!(a[0].ips[0].address, "10.250.0.2/30");
    let err = attach(&c, sandbox("ex-2", &p2.path), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("10.250.0.0/30"), "{err:?}");
    let r = driver_readiness(&n, "bridge").await;
    assert!(r.ready && r.reason == "IPAMExhausted", "{r:?}");
    assert!(!probe::interfaces(&p2.path).unwrap().contains_key("eth0"));
    detach(&c, "ex-1").await.unwrap();
    // The address is free once its veth is deleted, shortly after DetachPod answered; an
    // attach meanwhile waits for it instead of failing.
    let again = attach(&c, sandbox("ex-2", &p2.path), vec![]).await.unwrap();
    assert_eq!(again[0].ips[0].address, "10.250.0.2/30");
    detach(&c, "ex-2").await.unwrap();
    wait_until(
        "the pool no longer exhausted",
        Duration::from_secs(10),
        || async { (driver_readiness(&n, "bridge").await.reason.is_empty()).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_store_means_not_ready_with_the_reason() {
    if !privileged("unusable_store_means_not_ready_with_the_reason") {
        return;
    }
    let driver = bridge_driver("bridge", "default", "netlet0", &[V4]).replacen(
        "\"--name\"",
        "\"--state-dir\",\"/proc/netlet-no-such-dir\",\"--name\"",
        1,
    );
    let n = Node::start("nostore", &driver, "").await;
    let c = n.host.clients().await;
    let r = wait_until(
        "driver not ready with a reason",
        Duration::from_secs(20),
        || {
            let mut node = c.node.clone();
            async move {
                let r = node
                    .network_ready(NetworkReadyRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .readiness?;
                r.conditions
                    .iter()
                    .any(|c| c.reason == "IPAMStoreUnavailable")
                    .then_some(r)
            }
        },
    )
    .await;
    assert!(!r.ready, "{r:?}");
    let pod = NetNs::create(&format!("netlet-pod-nostore-{}", std::process::id())).unwrap();
    let err = attach(&c, sandbox("ns-1", &pod.path), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_bridge_is_made_again_with_its_pods_on_it() {
    if !privileged("a_deleted_bridge_is_made_again_with_its_pods_on_it") {
        return;
    }
    let n = Node::start(
        "rebridge",
        &bridge_driver("bridge", "default", "netlet0", &[V4, V6]),
        "",
    )
    .await;
    n.host.wait_ready("").await;
    let c = n.host.clients().await;
    let pid = std::process::id();
    let a_ns = NetNs::create(&format!("netlet-pod-rb-a-{pid}")).unwrap();
    let b_ns = NetNs::create(&format!("netlet-pod-rb-b-{pid}")).unwrap();
    attach(&c, sandbox("rb-a", &a_ns.path), vec![])
        .await
        .unwrap();
    let b = attach(&c, sandbox("rb-b", &b_ns.path), vec![])
        .await
        .unwrap()
        .remove(0);
    let b_ip = probe::ip_of(&b.ips[0].address).unwrap();
    probe::delete_link(&n.netns.path, "netlet0").unwrap();
    // Within a reconcile period the bridge is back, with both pods' veths on it.
    let (a_path, b_path) = (a_ns.path.clone(), b_ns.path.clone());
    let seen = wait_until("pods talk again", Duration::from_secs(15), || {
        let (a_path, b_path) = (a_path.clone(), b_path.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let srv =
                    probe::tcp_echo(Some(&b_path), std::net::SocketAddr::new(b_ip, 0), 1).ok()?;
                probe::tcp_request(&a_path, srv, "again").ok()
            })
            .await
            .ok()
            .flatten()
        }
    })
    .await;
    assert!(seen.ends_with("|again"), "{seen}");
    assert!(readiness(&c).await.ready);
    for id in ["rb-a", "rb-b"] {
        detach(&c, id).await.unwrap();
    }
    assert_eq!(pod_links_left(&n).await, Vec::<String>::new());
}

/// Runs `ip args` inside the namespace at `ns`.
fn ip_in(ns: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.file_name().unwrap().to_str().unwrap(),
            "ip",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// UDP from `from` bound to `src` to an echo at `to` in `to_ns`: whether the echo came back.
fn udp_from(from: &Path, src: std::net::IpAddr, to_ns: &Path, to: std::net::IpAddr) -> bool {
    let srv = probe::udp_echo(to_ns, std::net::SocketAddr::new(to, 0), 1).unwrap();
    probe::run_in(from, move || {
        let s = std::net::UdpSocket::bind(std::net::SocketAddr::new(src, 0)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        s.send_to(b"x", srv).ok()?;
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).ok()
    })
    .unwrap()
    .is_some()
}

/// The attacks a pod with NET_ADMIN/NET_RAW in its own namespace can make on its identity,
/// each against another pod of the node: sending from an address it was not given (IPv4 and
/// IPv6), from a MAC it was not given, and over IPv6 link-local (which no policy matches). Each
/// is dropped at its port; its own addresses keep working. With the bridge driver's
/// anti-spoofing table removed, every attack gets through.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_cannot_send_as_anyone_else() {
    if !privileged("a_pod_cannot_send_as_anyone_else") {
        return;
    }
    let n = node("spoof").await;
    let c = n.host.clients().await;
    let pid = std::process::id();
    let (pa, pb) = (
        NetNs::create(&format!("spoof-a-{pid}")).unwrap(),
        NetNs::create(&format!("spoof-b-{pid}")).unwrap(),
    );
    let a = attach(&c, sandbox("spoof-a", &pa.path), vec![])
        .await
        .unwrap()
        .remove(0);
    let b = attach(&c, sandbox("spoof-b", &pb.path), vec![])
        .await
        .unwrap()
        .remove(0);
    let ip = |x: &netlet_sdk::proto::Attachment, v6: bool| {
        x.ips
            .iter()
            .map(|c| probe::ip_of(&c.address).unwrap())
            .find(|i| i.is_ipv6() == v6)
            .unwrap()
    };
    let (a4, a6, b4, b6) = (ip(&a, false), ip(&a, true), ip(&b, false), ip(&b, true));
    // What the port was given works.
    assert!(udp_from(&pa.path, a4, &pb.path, b4));
    assert!(udp_from(&pa.path, a6, &pb.path, b6));

    // An address it was not given (one no pod holds, as a pod escaping its own egress policy
    // would pick), each family.
    ip_in(&pa.path, &["addr", "add", "10.244.0.250/24", "dev", "eth0"]);
    ip_in(
        &pa.path,
        &["addr", "add", "fd00:10:244::250/64", "dev", "eth0", "nodad"],
    );
    assert!(
        !udp_from(&pa.path, "10.244.0.250".parse().unwrap(), &pb.path, b4),
        "a spoofed IPv4 source got through"
    );
    assert!(
        !udp_from(&pa.path, "fd00:10:244::250".parse().unwrap(), &pb.path, b6),
        "a spoofed IPv6 source got through"
    );
    assert!(
        udp_from(&pa.path, a4, &pb.path, b4),
        "its own address still works"
    );

    // IPv6 link-local to the other pod (fe80::…%eth0), once both addresses are usable.
    let link_local = |ns: &Path| -> Option<String> {
        let out = ip_in(ns, &["-6", "addr", "show", "dev", "eth0", "scope", "link"]);
        (!out.contains("tentative")).then_some(())?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("inet6 "))
            .and_then(|l| l.split('/').next())
            .map(str::to_string)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (_, b_ll) = loop {
        if let (Some(x), Some(y)) = (link_local(&pa.path), link_local(&pb.path)) {
            break (x, y);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no link-local addresses"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let b_ll: std::net::Ipv6Addr = b_ll.parse().unwrap();
    let srv = probe::tcp_echo(Some(&pb.path), "[::]:0".parse().unwrap(), 1).unwrap();
    let port = srv.port();
    let reached = probe::run_in(&pa.path, move || {
        let scope = nix::net::if_::if_nametoindex("eth0").unwrap_or(0);
        let to = std::net::SocketAddr::V6(std::net::SocketAddrV6::new(b_ll, port, 0, scope));
        std::net::TcpStream::connect_timeout(&to, Duration::from_millis(700)).is_ok()
    })
    .unwrap();
    assert!(!reached, "a pod reached another over IPv6 link-local");

    // A MAC it was not given.
    ip_in(
        &pa.path,
        &["link", "set", "eth0", "address", "0a:58:0a:f4:00:fa"],
    );
    assert!(
        !udp_from(&pa.path, a4, &pb.path, b4),
        "a spoofed MAC got through"
    );
    ip_in(&pa.path, &["link", "set", "eth0", "address", &a.mac]);
    assert!(
        udp_from(&pa.path, a4, &pb.path, b4),
        "its own MAC works again"
    );

    // What the guard is, as nft prints it (the reference tool reads back what netlink wrote).
    let out = n
        .command(Path::new("/usr/sbin/nft"))
        .args([
            "list",
            "chain",
            "bridge",
            "netlet-bridge-guard",
            &format!("port-{}", a.host_interface),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        format!("ether saddr != {} drop", a.mac),
        format!("ip saddr {a4} accept"),
        format!("ip6 saddr {a6} accept"),
        format!("arp saddr ip {a4} accept"),
        "ip6 saddr fe80::/10 icmpv6 type nd-neighbor-solicit accept".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} not in:\n{text}");
    }
    detach(&c, "spoof-a").await.unwrap();
    detach(&c, "spoof-b").await.unwrap();
}
