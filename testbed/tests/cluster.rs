//! A cluster's network, as a user of two nodes sees it: each node is a network namespace with
//! its own host and bridge driver, both running the same configuration (only the node name and
//! paths differ), on one L2 segment (a veth between them). Node objects (with the podCIDRs
//! kube-controller-manager would allocate) come from each node's manifests directory, standing
//! for the API server. Pods get addresses from their own Node's podCIDRs and reach the pods of
//! the other node with their own addresses (v4 and v6, TCP and UDP); what leaves the cluster
//! is masqueraded; a Node deleted takes its routes with it and comes back with a new address;
//! a host restart keeps the traffic flowing.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use netlet_sdk::proto::{ListNodesRequest, PodSandbox};
use netlet_testbed::harness::{Node, attach, cluster_bridge_driver, privileged, readiness};
use netlet_testbed::probe::{self, NetNs};

/// The cluster-wide setting: pod CIDRs (v4, v6), the same on every node.
const CLUSTER_CIDRS: [&str; 2] = ["10.244.0.0/16", "fd00:10:244::/48"];

/// The bridge driver every node runs: subnets from the node's Node object, masquerade of what
/// leaves the cluster, other nodes reached directly or over the overlay.
fn driver() -> String {
    cluster_bridge_driver(&CLUSTER_CIDRS, "auto")
}

/// A Node object as the API server holds it once kube-controller-manager allocated its CIDRs.
fn node_yaml(name: &str, ip4: &str, ip6: &str, n: u8) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDR: 10.244.{n}.0/24, podCIDRs: [10.244.{n}.0/24, 'fd00:10:244:{n}::/64']}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip4}}}, {{type: InternalIP, address: '{ip6}'}}, {{type: Hostname, address: {name}}}]}}\n---\n"
    )
}

fn write(dir: &Path, text: &str) {
    let tmp = dir.join(".nodes.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("nodes.yaml")).unwrap();
}

fn sandbox(id: &str, netns: &Path) -> PodSandbox {
    PodSandbox {
        id: id.into(),
        name: id.into(),
        namespace: "cluster".into(),
        uid: id.into(),
        netns_path: netns.display().to_string(),
        ..Default::default()
    }
}

async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the host's NetworkReady satisfies `f`.
async fn condition(
    c: &netlet_sdk::client::Clients,
    what: &str,
    f: impl Fn(&netlet_sdk::proto::NetworkReadiness) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = readiness(c).await;
        if f(&r) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within 15 s: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// TCP from `from` to an echo server on `to:port`: the address the server saw, or the error.
async fn tcp(from: &Path, to_ns: &Path, to: IpAddr) -> Result<String, String> {
    let (from, to_ns) = (from.to_path_buf(), to_ns.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let srv = probe::tcp_echo(Some(&to_ns), SocketAddr::new(to, 0), 1)?;
        probe::tcp_request(&from, srv, "x").map(|s| s.trim_end_matches("|x").to_string())
    })
    .await
    .unwrap()
}

/// UDP likewise.
async fn udp(from: &Path, to_ns: &Path, to: IpAddr) -> Result<String, String> {
    let (from, to_ns) = (from.to_path_buf(), to_ns.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let srv = probe::udp_echo(&to_ns, SocketAddr::new(to, 0), 1)?;
        probe::udp_request(&from, srv, "x")
    })
    .await
    .unwrap()
}

/// The node's routes with the bridge driver's protocol, as `ip route` prints them.
fn routes(node: &Node) -> String {
    let mut out = String::new();
    for f in ["-4", "-6"] {
        let o = node
            .command(Path::new("/usr/sbin/ip"))
            .args([f, "route", "show", "proto", "147"])
            .output()
            .unwrap();
        out += &String::from_utf8_lossy(&o.stdout);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_on_one_segment() {
    if !privileged("two_nodes_on_one_segment") {
        return;
    }
    let pid = std::process::id();
    let (man_a, man_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let extra =
        |name: &str, dir: &Path| format!("nodeName: {name}\nmanifestsDir: {}\n", dir.display());
    let mut a = Node::start("cl-a", &driver(), &extra("node-a", man_a.path())).await;
    let b = Node::start("cl-b", &driver(), &extra("node-b", man_b.path())).await;
    // The segment between them.
    probe::wire(
        &a.netns.path,
        "ul0",
        "192.0.2.11/24",
        &b.netns.path,
        "ul0",
        "192.0.2.12/24",
    )
    .unwrap();
    probe::add_address(&a.netns.path, "ul0", "2001:db8::11/64").unwrap();
    probe::add_address(&b.netns.path, "ul0", "2001:db8::12/64").unwrap();
    let (ca, cb) = (a.host.clients().await, b.host.clients().await);

    // No Node object yet: not ready with the typed reason, attaches refused with UNAVAILABLE.
    condition(&ca, "PodCIDRPending reported", |r| {
        !r.ready && r.conditions.iter().any(|c| c.reason == "PodCIDRPending")
    })
    .await;
    let early = NetNs::create(&format!("cl-early-{pid}")).unwrap();
    let e = attach(&ca, sandbox("early", &early.path), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    // The Node objects arrive (the same objects on both nodes, as from one API server).
    let nodes = node_yaml("node-a", "192.0.2.11", "2001:db8::11", 1)
        + &node_yaml("node-b", "192.0.2.12", "2001:db8::12", 2);
    write(man_a.path(), &nodes);
    write(man_b.path(), &nodes);
    a.host.wait_ready("default").await;
    b.host.wait_ready("default").await;
    // The host hands the table to drivers and lists it.
    let listed = ca
        .cluster
        .clone()
        .list_nodes(ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let names: Vec<(&str, bool)> = listed.iter().map(|n| (n.name.as_str(), n.local)).collect();
    assert_eq!(names, [("node-a", true), ("node-b", false)]);

    let pa = NetNs::create(&format!("cl-pa-{pid}")).unwrap();
    let pb = NetNs::create(&format!("cl-pb-{pid}")).unwrap();
    let att_a = attach(&ca, sandbox("pa", &pa.path), vec![])
        .await
        .unwrap()
        .remove(0);
    let att_b = attach(&cb, sandbox("pb", &pb.path), vec![])
        .await
        .unwrap()
        .remove(0);
    let ip = |a: &netlet_sdk::proto::Attachment, v6: bool| -> IpAddr {
        a.ips
            .iter()
            .map(|c| probe::ip_of(&c.address).unwrap())
            .find(|i| i.is_ipv6() == v6)
            .unwrap()
    };
    let (a4, a6, b4, b6) = (
        ip(&att_a, false),
        ip(&att_a, true),
        ip(&att_b, false),
        ip(&att_b, true),
    );
    let within = |ip: IpAddr, cidr: &str| cidr.parse::<ipnet::IpNet>().unwrap().contains(&ip);
    assert!(
        within(a4, "10.244.1.0/24") && within(a6, "fd00:10:244:1::/64"),
        "{a4} {a6}"
    );
    assert!(
        within(b4, "10.244.2.0/24") && within(b6, "fd00:10:244:2::/64"),
        "{b4} {b6}"
    );

    // Pod to pod across the nodes, each way, with the sender's own address.
    assert_eq!(tcp(&pa.path, &pb.path, b4).await, Ok(a4.to_string()));
    assert_eq!(tcp(&pb.path, &pa.path, a4).await, Ok(b4.to_string()));
    assert_eq!(tcp(&pa.path, &pb.path, b6).await, Ok(a6.to_string()));
    assert_eq!(udp(&pa.path, &pb.path, b4).await, Ok(format!("{a4}|x")));
    assert_eq!(udp(&pb.path, &pa.path, a6).await, Ok(format!("{b6}|x")));
    let r = routes(&a);
    assert!(r.contains("10.244.2.0/24 via 192.0.2.12"), "{r}");
    assert!(r.contains("fd00:10:244:2::/64 via 2001:db8::12"), "{r}");

    // Leaving the cluster: masqueraded to the node's address.
    let out = NetNs::create(&format!("cl-out-{pid}")).unwrap();
    probe::wire(
        &a.netns.path,
        "ext0",
        "198.51.100.1/24",
        &out.path,
        "ext0",
        "198.51.100.2/24",
    )
    .unwrap();
    assert_eq!(
        tcp(&pa.path, &out.path, "198.51.100.2".parse().unwrap()).await,
        Ok("198.51.100.1".to_string())
    );

    // A host restart (kill -9): the data plane stays while the host is away, and after.
    a.host.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(tcp(&pa.path, &pb.path, b4).await, Ok(a4.to_string()));
    a.host.spawn().await;
    a.host.wait_ready("default").await;
    let ca = a.host.clients().await;
    condition(&ca, "the node table sent again", |r| {
        r.conditions
            .iter()
            .any(|c| c.r#type == "NodesRouted" && c.reason == "AllNodesRouted")
    })
    .await;
    assert_eq!(tcp(&pa.path, &pb.path, b4).await, Ok(a4.to_string()));
    assert!(routes(&a).contains("10.244.2.0/24 via 192.0.2.12"));

    // node-b deleted: its routes go, and its pods are out of reach.
    write(
        man_a.path(),
        &node_yaml("node-a", "192.0.2.11", "2001:db8::11", 1),
    );
    eventually("node-b's routes gone", || {
        !routes(&a).contains("10.244.2.0/24")
    })
    .await;
    assert!(tcp(&pa.path, &pb.path, b4).await.is_err());
    // Back with a new address: routes through it.
    probe::add_address(&b.netns.path, "ul0", "192.0.2.13/24").unwrap();
    write(
        man_a.path(),
        &(node_yaml("node-a", "192.0.2.11", "2001:db8::11", 1)
            + &node_yaml("node-b", "192.0.2.13", "2001:db8::12", 2)),
    );
    eventually("node-b routed through its new address", || {
        routes(&a).contains("10.244.2.0/24 via 192.0.2.13")
    })
    .await;
    assert_eq!(tcp(&pa.path, &pb.path, b4).await, Ok(a4.to_string()));
    drop((ca, cb));
}

/// Sends `bytes` over TCP from `from` to a sink in `to_ns` at `to`; the count the sink read.
async fn bulk(from: &Path, to_ns: &Path, to: IpAddr, bytes: usize) -> Result<usize, String> {
    use std::io::{Read, Write};
    let (from, to_ns) = (from.to_path_buf(), to_ns.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let l = probe::run_in(&to_ns, move || {
            std::net::TcpListener::bind(SocketAddr::new(to, 0))
        })?
        .map_err(|e| e.to_string())?;
        let at = l.local_addr().map_err(|e| e.to_string())?;
        let sink = std::thread::spawn(move || -> Result<usize, String> {
            let (mut c, _) = l.accept().map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            loop {
                match c.read(&mut buf) {
                    Ok(0) => return Ok(n),
                    Ok(k) => n += k,
                    Err(e) => return Err(format!("after {n} bytes: {e}")),
                }
            }
        });
        probe::run_in(&from, move || -> Result<(), String> {
            let mut s = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            s.set_write_timeout(Some(Duration::from_secs(10))).ok();
            let chunk = vec![7u8; 65536];
            let mut left = bytes;
            while left > 0 {
                let k = left.min(chunk.len());
                s.write_all(&chunk[..k]).map_err(|e| format!("send: {e}"))?;
                left -= k;
            }
            Ok(())
        })??;
        sink.join().map_err(|_| "sink panicked".to_string())?
    })
    .await
    .unwrap()
}

/// Three nodes across a router (two subnets): node-a and node-b share a segment (direct
/// routes), node-c sits behind the router (VXLAN overlay, chosen per peer). Pods reach each
/// other both ways with their own addresses, a large transfer crosses the overlay (the MTU
/// leaves room for the encapsulation: no black hole), and each piece is needed: without the
/// overlay's forwarding entry, or the direct route, the traffic stops.
#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_across_a_router() {
    if !privileged("three_nodes_across_a_router") {
        return;
    }
    let pid = std::process::id();
    let router = NetNs::create(&format!("cl-r-{pid}")).unwrap();
    probe::link_up(&router.path, "lo").unwrap();
    probe::bridge(&router.path, "lan", "192.0.2.1/24").unwrap();
    probe::add_address(&router.path, "lan", "2001:db8:1::1/64").unwrap();
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ] {
        let ok = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                router.path.file_name().unwrap().to_str().unwrap(),
            ])
            .args(["sysctl", "-qw", &format!("{k}={v}")])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let extra = format!(
            "nodeName: {name}\nmanifestsDir: {}\n",
            dirs[i].path().display()
        );
        nodes.push(Node::start(&format!("cl3-{i}"), &driver(), &extra).await);
    }
    // node-a and node-b on the router's LAN; node-c on a subnet of its own behind it.
    for (i, n) in nodes.iter().take(2).enumerate() {
        let four = format!("192.0.2.1{}/24", i + 1);
        probe::onto_bridge(
            &router.path,
            "lan",
            &format!("p{i}"),
            &n.netns.path,
            &four,
            "192.0.2.1".parse().unwrap(),
        )
        .unwrap();
        probe::add_address(&n.netns.path, "eth0", &format!("2001:db8:1::1{}/64", i + 1)).unwrap();
        probe::add_route(&n.netns.path, "::/0", "2001:db8:1::1".parse().unwrap()).unwrap();
    }
    let c = &nodes[2];
    probe::wire(
        &router.path,
        "toc",
        "198.51.100.1/24",
        &c.netns.path,
        "ul0",
        "198.51.100.13/24",
    )
    .unwrap();
    probe::add_address(&router.path, "toc", "2001:db8:2::1/64").unwrap();
    probe::add_address(&c.netns.path, "ul0", "2001:db8:2::13/64").unwrap();
    probe::add_route(&c.netns.path, "0.0.0.0/0", "198.51.100.1".parse().unwrap()).unwrap();
    probe::add_route(&c.netns.path, "::/0", "2001:db8:2::1".parse().unwrap()).unwrap();

    let all = node_yaml("node-a", "192.0.2.11", "2001:db8:1::11", 1)
        + &node_yaml("node-b", "192.0.2.12", "2001:db8:1::12", 2)
        + &node_yaml("node-c", "198.51.100.13", "2001:db8:2::13", 3);
    for d in &dirs {
        write(d.path(), &all);
    }
    let mut pods = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        n.host.wait_ready("default").await;
        let c = n.host.clients().await;
        condition(&c, "every other node routed", |r| {
            r.conditions
                .iter()
                .any(|c| c.r#type == "NodesRouted" && c.reason == "AllNodesRouted")
        })
        .await;
        let ns = NetNs::create(&format!("cl3-p{i}-{pid}")).unwrap();
        let att = attach(&c, sandbox(&format!("p{i}"), &ns.path), vec![])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(att.mtu, 1450, "room for the overlay's 50 bytes");
        let v4 = probe::ip_of(&att.ips[0].address).unwrap();
        let v6 = probe::ip_of(&att.ips[1].address).unwrap();
        pods.push((ns, v4, v6));
    }
    let (a, b, cc) = (&pods[0], &pods[1], &pods[2]);
    // Direct within the LAN, the overlay to node-c.
    let ra = routes(&nodes[0]);
    assert!(ra.contains("10.244.2.0/24 via 192.0.2.12"), "{ra}");
    assert!(
        ra.contains("10.244.3.0/24 via 10.244.3.0 dev netlet.vx4 onlink"),
        "{ra}"
    );
    assert!(
        ra.lines().any(
            |l| l.starts_with("fd00:10:244:3::/64 via fd00:10:244:3:: dev netlet.vx6")
                && l.contains("onlink")
        ),
        "{ra}"
    );
    for (from, to) in [(a, b), (b, a), (a, cc), (cc, a), (b, cc), (cc, b)] {
        assert_eq!(
            tcp(&from.0.path, &to.0.path, to.1).await,
            Ok(from.1.to_string())
        );
        assert_eq!(
            tcp(&from.0.path, &to.0.path, to.2).await,
            Ok(from.2.to_string())
        );
    }
    assert_eq!(
        udp(&a.0.path, &cc.0.path, cc.1).await,
        Ok(format!("{}|x", a.1))
    );
    // 8 MiB through the overlay, each family.
    const BIG: usize = 8 << 20;
    assert_eq!(bulk(&a.0.path, &cc.0.path, cc.1, BIG).await, Ok(BIG));
    assert_eq!(bulk(&cc.0.path, &a.0.path, a.2, BIG).await, Ok(BIG));

    // Each piece is needed: the overlay's forwarding entry for node-c...
    let mac = {
        let o = nodes[0]
            .command(Path::new("/usr/sbin/bridge"))
            .args(["fdb", "show", "dev", "netlet.vx4"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let line = text
            .lines()
            .find(|l| l.contains("dst 198.51.100.13"))
            .unwrap_or_else(|| panic!("no forwarding entry for node-c: {text}"))
            .to_string();
        line.split_whitespace().next().unwrap().to_string()
    };
    let del = nodes[0]
        .command(Path::new("/usr/sbin/bridge"))
        .args([
            "fdb",
            "del",
            &mac,
            "dev",
            "netlet.vx4",
            "dst",
            "198.51.100.13",
            "self",
        ])
        .status()
        .unwrap();
    assert!(del.success());
    assert!(
        tcp(&a.0.path, &cc.0.path, cc.1).await.is_err(),
        "no tunnel entry, no traffic"
    );
    // ...and the direct route to node-b.
    let del = nodes[0]
        .command(Path::new("/usr/sbin/ip"))
        .args(["route", "del", "10.244.2.0/24", "via", "192.0.2.12"])
        .status()
        .unwrap();
    assert!(del.success());
    assert!(
        tcp(&a.0.path, &b.0.path, b.1).await.is_err(),
        "no route, no traffic"
    );
    // A full sync (after a restart of node-a's host) puts both back.
    let mut na = nodes.remove(0);
    na.host.stop_with(nix::sys::signal::Signal::SIGTERM);
    na.host.spawn().await;
    na.host.wait_ready("default").await;
    let ca = na.host.clients().await;
    condition(&ca, "routed again", |r| {
        r.conditions
            .iter()
            .any(|c| c.r#type == "NodesRouted" && c.reason == "AllNodesRouted")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while tcp(&a.0.path, &cc.0.path, cc.1).await.is_err() {
        assert!(Instant::now() < deadline, "node-c not reached again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tcp(&a.0.path, &b.0.path, b.1).await, Ok(a.1.to_string()));
}

/// A Node object with the pod CIDRs kube-controller-manager allocates, as JSON for the API
/// server (its addresses go to the status afterwards, as kubelet reports them).
fn node_json(name: &str, n: u8) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}},"spec":{{"podCIDR":"10.244.{n}.0/24","podCIDRs":["10.244.{n}.0/24","fd00:10:244:{n}::/64"]}}}}"#
    )
}

/// The same two nodes following one real kube-apiserver (in node-a's namespace, reached by
/// node-b over the segment): the node table comes from the Node objects, one event at a time;
/// a Node deleted takes its routes, a Node recreated with other pod CIDRs and address is routed
/// there and its node's new pods get addresses from its new CIDRs.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_following_the_api_server() {
    const T: &str = "two_nodes_following_the_api_server";
    if !privileged(T) || netlet_testbed::harness::tool("curl", T).is_none() {
        return;
    }
    let Some(kubectl) = netlet_testbed::k8s::kubectl(T) else {
        return;
    };
    let Some((etcd, api)) = netlet_testbed::k8s::binaries(T) else {
        return;
    };
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let (kc_a, kc_b) = (dir.path().join("kc-a"), dir.path().join("kc-b"));
    netlet_testbed::k8s::write_kubeconfig(&kc_a);
    netlet_testbed::k8s::write_kubeconfig_at(&kc_b, "https://192.0.2.11:6443", None);
    let extra = |name: &str, kc: &Path| format!("nodeName: {name}\nkubeconfig: {}\n", kc.display());
    let mut a = Node::start("clk-a", &driver(), &extra("node-a", &kc_a)).await;
    let b = Node::start("clk-b", &driver(), &extra("node-b", &kc_b)).await;
    probe::wire(
        &a.netns.path,
        "ul0",
        "192.0.2.11/24",
        &b.netns.path,
        "ul0",
        "192.0.2.12/24",
    )
    .unwrap();
    let mut apiserver =
        netlet_testbed::k8s::ApiServer::start_in(&a.netns.path, &etcd, &api, "192.0.2.11");
    let (ca, cb) = (a.host.clients().await, b.host.clients().await);
    condition(&cb, "PodCIDRPending until the Node exists", |r| {
        r.conditions.iter().any(|c| c.reason == "PodCIDRPending")
    })
    .await;

    let create = |apiserver: &netlet_testbed::k8s::ApiServer, name: &str, ip: &str, n: u8| {
        apiserver
            .request("POST", "/api/v1/nodes", Some(&node_json(name, n)))
            .unwrap();
        let status = format!(
            r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}},{{"type":"Hostname","address":"{name}"}}]}}}}"#
        );
        apiserver
            .kubectl(
                &kubectl,
                &[
                    "patch",
                    "node",
                    name,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &status,
                ],
            )
            .unwrap();
    };
    create(&apiserver, "node-a", "192.0.2.11", 1);
    create(&apiserver, "node-b", "192.0.2.12", 2);
    a.host.wait_ready("default").await;
    b.host.wait_ready("default").await;
    let pa = NetNs::create(&format!("clk-pa-{pid}")).unwrap();
    let pb = NetNs::create(&format!("clk-pb-{pid}")).unwrap();
    let ip4 = |att: netlet_sdk::proto::Attachment| probe::ip_of(&att.ips[0].address).unwrap();
    let a4 = ip4(attach(&ca, sandbox("pa", &pa.path), vec![])
        .await
        .unwrap()
        .remove(0));
    let b4 = ip4(attach(&cb, sandbox("pb", &pb.path), vec![])
        .await
        .unwrap()
        .remove(0));
    assert!(
        a4.to_string().starts_with("10.244.1.") && b4.to_string().starts_with("10.244.2."),
        "{a4} {b4}"
    );
    eventually("node-a routes node-b's pods", || {
        routes(&a).contains("10.244.2.0/24 via 192.0.2.12")
    })
    .await;
    assert_eq!(tcp(&pa.path, &pb.path, b4).await, Ok(a4.to_string()));
    assert_eq!(tcp(&pb.path, &pa.path, a4).await, Ok(b4.to_string()));

    // node-a's host restarts while the API server is away: its new bridge driver is not told
    // an empty cluster (the source has not been listed), so the routes stay and traffic flows.
    apiserver.stop_api();
    a.host.stop_with(nix::sys::signal::Signal::SIGKILL);
    a.host.spawn().await;
    let ca = a.host.clients().await;
    condition(&ca, "the new bridge driver registered", |r| {
        r.conditions.iter().any(|c| {
            c.r#type == "DriverRegistered"
                && c.driver == "bridge"
                && c.status == netlet_sdk::proto::ConditionStatus::True as i32
        })
    })
    .await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            tcp(&pa.path, &pb.path, b4).await,
            Ok(a4.to_string()),
            "traffic between nodes while the host is back but the API server is not"
        );
        assert!(routes(&a).contains("10.244.2.0/24 via 192.0.2.12"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    apiserver.restart_api();
    a.host.wait_ready("default").await;

    // node-b deleted: gone from node-a's table and routes.
    apiserver
        .kubectl(&kubectl, &["delete", "node", "node-b"])
        .unwrap();
    eventually("node-b's routes gone", || {
        !routes(&a).contains("10.244.2.0/24")
    })
    .await;
    assert!(tcp(&pa.path, &pb.path, b4).await.is_err());
    // Recreated with another pod CIDR and address: routed there; node-b's new pods take it.
    probe::add_address(&b.netns.path, "ul0", "192.0.2.13/24").unwrap();
    create(&apiserver, "node-b", "192.0.2.13", 5);
    eventually("node-b routed at its new CIDR and address", || {
        routes(&a).contains("10.244.5.0/24 via 192.0.2.13")
    })
    .await;
    let pb2 = NetNs::create(&format!("clk-pb2-{pid}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let b5 = loop {
        let ip = match attach(&cb, sandbox("pb2", &pb2.path), vec![]).await {
            Ok(mut a) => ip4(a.remove(0)),
            // node-b's host has not seen its recreated Node yet (PodCIDRPending): the refusal
            // a runtime retries.
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => panic!("attach on the recreated node-b: {e:?}"),
        };
        if ip.to_string().starts_with("10.244.5.") {
            break ip;
        }
        // Attached before node-b's new entry arrived: detach and try again.
        netlet_testbed::harness::detach(&cb, "pb2").await.unwrap();
        assert!(
            Instant::now() < deadline,
            "node-b's pods never got its new CIDR: {ip}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(tcp(&pa.path, &pb2.path, b5).await, Ok(a4.to_string()));
    let listed = cb
        .cluster
        .clone()
        .list_nodes(ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let b_entry = listed.iter().find(|n| n.name == "node-b").unwrap();
    assert_eq!(b_entry.pod_cidrs, ["10.244.5.0/24", "fd00:10:244:5::/64"]);
    assert!(b_entry.local);
    drop(apiserver);
}

/// Pod `name` of namespace `shop` labelled `app: name` attached through `c`, echoing on TCP 80.
async fn shop_pod(
    c: &netlet_sdk::client::Clients,
    tag: &str,
    name: &str,
) -> (NetNs, IpAddr, IpAddr) {
    let ns = NetNs::create(&format!("{tag}-{name}-{}", std::process::id())).unwrap();
    let mut sb = sandbox(name, &ns.path);
    sb.namespace = "shop".into();
    sb.labels = [("app".to_string(), name.to_string())].into();
    let att = attach(c, sb, vec![]).await.unwrap().remove(0);
    let ips: Vec<IpAddr> = att
        .ips
        .iter()
        .map(|x| probe::ip_of(&x.address).unwrap())
        .collect();
    (ns, ips[0], ips[1])
}

/// What the API server would hold of a pod on another node (its labels, node and addresses).
fn pod_yaml(name: &str, node: &str, ips: [IpAddr; 2]) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: x}}]}}\nstatus: {{phase: Running, podIP: '{}', podIPs: [{{ip: '{}'}}, {{ip: '{}'}}]}}\n---\n",
        ips[0], ips[0], ips[1]
    )
}

/// Two nodes on one segment (node-a 192.0.2.11 / 2001:db8::11, node-b .12 / ::12), each with
/// the bridge driver (`routing`) and the nft driver, their manifests directories holding both
/// Node objects; ready.
struct Pair {
    a: Node,
    b: Node,
    man_a: tempfile::TempDir,
    _man_b: tempfile::TempDir,
}

async fn pair(tag: &str, routing: &str) -> Pair {
    let (man_a, man_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let drivers = cluster_bridge_driver(&CLUSTER_CIDRS, routing)
        + &netlet_testbed::harness::nft_driver(
            "nft",
            &[
                "--cluster-cidr",
                CLUSTER_CIDRS[0],
                "--cluster-cidr",
                CLUSTER_CIDRS[1],
            ],
        );
    let extra =
        |name: &str, dir: &Path| format!("nodeName: {name}\nmanifestsDir: {}\n", dir.display());
    let a = Node::start(
        &format!("{tag}-a"),
        &drivers,
        &extra("node-a", man_a.path()),
    )
    .await;
    let b = Node::start(
        &format!("{tag}-b"),
        &drivers,
        &extra("node-b", man_b.path()),
    )
    .await;
    probe::wire(
        &a.netns.path,
        "ul0",
        "192.0.2.11/24",
        &b.netns.path,
        "ul0",
        "192.0.2.12/24",
    )
    .unwrap();
    probe::add_address(&a.netns.path, "ul0", "2001:db8::11/64").unwrap();
    probe::add_address(&b.netns.path, "ul0", "2001:db8::12/64").unwrap();
    let nodes = node_yaml("node-a", "192.0.2.11", "2001:db8::11", 1)
        + &node_yaml("node-b", "192.0.2.12", "2001:db8::12", 2);
    write(man_a.path(), &nodes);
    write(man_b.path(), &nodes);
    a.host.wait_ready("default").await;
    b.host.wait_ready("default").await;
    a.host.wait_driver("nft").await;
    Pair {
        a,
        b,
        man_a,
        _man_b: man_b,
    }
}

/// A NetworkPolicy on node-a admitting to `server` only pods labelled `app: client`, which run
/// on node-b: the client is admitted, over the direct route and over the overlay (the pods'
/// own addresses arrive, so policy sees who sent), and nobody else from that node is.
async fn policy_across_nodes(routing: &str, tag: &str) {
    let Pair {
        a,
        b,
        man_a,
        _man_b,
    } = pair(tag, routing).await;
    let (ca, cb) = (a.host.clients().await, b.host.clients().await);
    let server = shop_pod(&ca, tag, "server").await;
    let client = shop_pod(&cb, tag, "client").await;
    let other = shop_pod(&cb, tag, "other").await;
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-clients, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n";
    // node-a's sources: the Nodes, node-b's pods as the API server holds them, the policy.
    std::fs::write(
        man_a.path().join("objects.yaml"),
        pod_yaml("client", "node-b", [client.1, client.2])
            + &pod_yaml("other", "node-b", [other.1, other.2])
            + policy,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tcp(&other.0.path, &server.0.path, server.1).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the policy never isolated the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for v6 in [false, true] {
        let (to, from_client, from_other) = if v6 {
            (server.2, client.2, other.2)
        } else {
            (server.1, client.1, other.1)
        };
        assert_eq!(
            tcp(&client.0.path, &server.0.path, to).await,
            Ok(from_client.to_string()),
            "the client on the other node is admitted ({routing})"
        );
        let denied = tcp(&other.0.path, &server.0.path, to).await;
        assert!(
            denied.is_err(),
            "{from_other} admitted: {denied:?} ({routing})"
        );
    }
    let r = routes(&a);
    let over = if routing == "overlay" {
        "dev netlet.vx4"
    } else {
        "via 192.0.2.12"
    };
    assert!(r.contains(over), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_admits_a_pod_of_another_node_over_the_route() {
    if !privileged("a_policy_admits_a_pod_of_another_node_over_the_route") {
        return;
    }
    policy_across_nodes("direct", "clpd").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_admits_a_pod_of_another_node_over_the_overlay() {
    if !privileged("a_policy_admits_a_pod_of_another_node_over_the_overlay") {
        return;
    }
    policy_across_nodes("overlay", "clpo").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_whose_endpoint_is_on_the_other_node_over_the_route() {
    if !privileged("services_whose_endpoint_is_on_the_other_node_over_the_route") {
        return;
    }
    services_across_nodes("direct", "clsvd").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_whose_endpoint_is_on_the_other_node_over_the_overlay() {
    if !privileged("services_whose_endpoint_is_on_the_other_node_over_the_overlay") {
        return;
    }
    services_across_nodes("overlay", "clsvo").await;
}

/// A ClusterIP and a NodePort whose only endpoint is a pod on the other node: a pod here reaches
/// the ClusterIP (the endpoint sees the pod's own address), and a client outside the cluster
/// reaches the NodePort on this node's address (masqueraded to this node, so the answer comes
/// back the way it went), each over the path between the nodes that `routing` makes.
async fn services_across_nodes(routing: &str, tag: &str) {
    let pid = std::process::id();
    let Pair {
        a,
        b,
        man_a,
        _man_b,
    } = pair(tag, routing).await;
    // A client outside the cluster, on a link of node-a only.
    let out = NetNs::create(&format!("{tag}-out-{pid}")).unwrap();
    probe::wire(
        &a.netns.path,
        "ext0",
        "198.51.100.1/24",
        &out.path,
        "ext0",
        "198.51.100.2/24",
    )
    .unwrap();
    let (ca, cb) = (a.host.clients().await, b.host.clients().await);
    let client = shop_pod(&ca, tag, "client").await;
    let web = shop_pod(&cb, tag, "web").await;
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec: {{type: NodePort, clusterIP: 10.96.0.80, ports: [{{name: http, port: 80, targetPort: 7000, nodePort: 30080}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 7000, protocol: TCP}}]\nendpoints: [{{addresses: ['{}'], conditions: {{ready: true}}, nodeName: node-b}}]\n",
        web.1
    );
    std::fs::write(man_a.path().join("web.yaml"), service).unwrap();
    // The endpoint answers with who it saw, for as many connections as asked.
    let l = probe::run_in(&web.0.path, move || {
        std::net::TcpListener::bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 7000))
    })
    .unwrap()
    .unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(
                c.peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default()
                    .as_bytes(),
            );
        }
    });
    let ask = |from: std::path::PathBuf, to: SocketAddr| async move {
        tokio::task::spawn_blocking(move || probe::tcp_read(&from, to, Duration::from_secs(2)))
            .await
            .unwrap()
    };
    let vip = SocketAddr::new(IpAddr::from([10, 96, 0, 80]), 80);
    let deadline = Instant::now() + Duration::from_secs(15);
    let seen = loop {
        match ask(client.0.path.clone(), vip).await {
            Ok(s) => break s,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the ClusterIP never answered: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        seen,
        client.1.to_string(),
        "the endpoint sees the client pod's own address"
    );
    let node_port = SocketAddr::new(IpAddr::from([198, 51, 100, 1]), 30080);
    // Masqueraded to node-a's address on the way out: its underlay address, or over the
    // overlay its VTEP (its pod CIDR's network address, as flannel's vxlan backend does).
    let node_a = if routing == "overlay" {
        "10.244.1.0"
    } else {
        "192.0.2.11"
    };
    assert_eq!(
        ask(out.path.clone(), node_port).await,
        Ok(node_a.to_string()),
        "externalTrafficPolicy Cluster: masqueraded to node-a, answered through it"
    );
}
