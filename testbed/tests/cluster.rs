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
use netlet_testbed::harness::{Node, attach, bin, privileged, readiness};
use netlet_testbed::probe::{self, NetNs};

/// The cluster-wide setting: pod CIDRs (v4, v6), the same on every node.
const CLUSTER_CIDRS: [&str; 2] = ["10.244.0.0/16", "fd00:10:244::/48"];

/// The bridge driver every node runs: subnets from the node's Node object, masquerade of what
/// leaves the cluster.
fn driver() -> String {
    let mut args = vec![
        "--name",
        "bridge",
        "--network",
        "default",
        "--bridge",
        "netlet0",
        "--pod-cidrs-from-node",
        "--masquerade",
    ];
    for c in CLUSTER_CIDRS {
        args.extend(["--cluster-cidr", c]);
    }
    format!(
        "- name: bridge\n  command: {}\n  args: {}\n",
        bin("netlet-bridge").display(),
        serde_json::to_string(&args).unwrap()
    )
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
