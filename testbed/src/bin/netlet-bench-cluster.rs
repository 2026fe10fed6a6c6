//! netlet-bench-cluster: the cluster network, measured. Nodes are network namespaces on one
//! underlay (10.100.0.0/16), each running a host with the bridge driver as deploy/ configures it,
//! all following one real kube-apiserver (in node A's namespace).
//!
//! 1. A Node object created in the API → the first packet from a pod on node A reaches a pod
//!    on that node (node B deleted and created again each round), with a few nodes and again
//!    with `--nodes` Node objects present: per change, the cost must not grow with the cluster.
//!    The API write itself is printed beside it.
//! 2. One TCP stream between two pods on two nodes, the direct route (pair A–B) and the VXLAN
//!    overlay (pair C–D, `--routing overlay`), beside the same stream over a plain veth
//!    between two namespaces (the anchor): throughput and round-trip latency.
//! 3. Node A's host and bridge driver with `--nodes` Node objects: resident memory, and CPU
//!    seconds spent taking them in.
//!
//! Binaries: `testbed/k8s/build.sh`. Not a test: it gates nothing. Every figure is the median of
//! `--repeat` runs with the smallest and largest.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use netlet_testbed::harness::{Node, attach, bench_sandbox, cluster_bridge_driver};
use netlet_testbed::k8s::{ApiServer, binaries, write_kubeconfig_at};
use netlet_testbed::probe::{self, NetNs};
use netlet_testbed::stats::{Spread, ms, pct, rss_kib};

#[derive(Parser)]
#[command(about = "netlet's cluster network: Node → first packet, direct and overlay paths")]
struct Args {
    /// Node objects in the API for the large case.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Node created → first packet, rounds per case.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Repeats of the path measurements.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// MiB per throughput run.
    #[arg(long, default_value_t = 256)]
    mib: usize,
}

const CLUSTER: [&str; 1] = ["10.244.0.0/16"];
const PORT: u16 = 7000;

fn underlay(i: usize) -> String {
    format!("10.100.{}.{}", i / 250, i % 250 + 1)
}

/// Node `name` with pod CIDR 10.244.`n`.0/24 (or, past 250, in 10.128.0.0/9) at `addr`, as
/// kubelet registers it (status included) once kube-controller-manager allocated its CIDR.
fn node_json(name: &str, n: usize, addr: &str) -> String {
    let cidr = if n < 250 {
        format!("10.244.{n}.0/24")
    } else {
        format!("10.{}.{}.0/24", 128 + n / 256, n % 256)
    };
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": addr}]}
    })
    .to_string()
}

/// Echoes every byte on every connection to `addr:PORT` in `netns`.
fn echo(netns: &Path, addr: IpAddr) {
    let at = SocketAddr::new(addr, PORT);
    let l = probe::run_in(netns, move || TcpListener::bind(at))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let _ = c.set_nodelay(true);
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n.min(1)]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Connects from `netns` to `to` until it works; how long since `from`.
fn until_reached(netns: &Path, to: SocketAddr, from: Instant) -> Duration {
    probe::run_in(netns, move || {
        loop {
            if TcpStream::connect_timeout(&to, Duration::from_millis(5)).is_ok() {
                return from.elapsed();
            }
            assert!(
                from.elapsed() < Duration::from_secs(60),
                "{to} never reached"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    })
    .unwrap()
}

/// Connects from `netns` to `to` until it fails (the route is gone).
fn until_unreached(netns: &Path, to: SocketAddr) {
    probe::run_in(netns, move || {
        let t = Instant::now();
        while TcpStream::connect_timeout(&to, Duration::from_millis(20)).is_ok() {
            assert!(t.elapsed() < Duration::from_secs(60), "{to} still reached");
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .unwrap()
}

/// One TCP stream from `netns` to `to`: (Gbit/s for `mib` MiB, round trips of one byte).
fn stream(netns: &Path, to: SocketAddr, mib: usize) -> (f64, Vec<Duration>) {
    probe::run_in(netns, move || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        c.set_nodelay(true).unwrap();
        let mut one = [0u8; 1];
        let mut rtts = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t = Instant::now();
            c.write_all(&[1]).unwrap();
            c.read_exact(&mut one).unwrap();
            rtts.push(t.elapsed());
        }
        // The bulk: the echo answers one byte per read, drained on a thread of its own.
        let mut r = c.try_clone().unwrap();
        let drain = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while r.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        let chunk = vec![7u8; 1 << 20];
        let t = Instant::now();
        for _ in 0..mib {
            c.write_all(&chunk).unwrap();
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        drain.join().unwrap();
        let gbits = (mib as f64 * 8.0 * 1.048576e6) / 1e9 / t.elapsed().as_secs_f64();
        (gbits, rtts)
    })
    .unwrap()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

struct Cluster {
    nodes: Vec<Node>,
    api: ApiServer,
    _dir: tempfile::TempDir,
    _switch: NetNs,
}

/// Four nodes on one switch (a bridge in a namespace of its own), A and B routing `auto`
/// (direct here), C and D `overlay`; the API server in A's namespace.
async fn cluster() -> Cluster {
    let (etcd, api) = binaries("netlet-bench-cluster").expect("testbed/k8s/build.sh first");
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let switch = NetNs::create(&format!("nbc-sw-{pid}")).unwrap();
    probe::link_up(&switch.path, "lo").unwrap();
    probe::bridge(&switch.path, "sw", "10.100.255.254/16").unwrap();
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let kc = dir.path().join(format!("kc-{name}"));
        write_kubeconfig_at(&kc, &format!("https://{}:6443", underlay(0)), None);
        let routing = if i < 2 { "auto" } else { "overlay" };
        let extra = format!("nodeName: node-{name}\nkubeconfig: {}\n", kc.display());
        let n = Node::start(
            &format!("nbc-{name}"),
            &cluster_bridge_driver(&CLUSTER, routing),
            &extra,
        )
        .await;
        probe::onto_bridge(
            &switch.path,
            "sw",
            &format!("p{i}"),
            &n.netns.path,
            &format!("{}/16", underlay(i)),
            "10.100.255.254".parse().unwrap(),
        )
        .unwrap();
        nodes.push(n);
    }
    let api = ApiServer::start_in(&nodes[0].netns.path, &etcd, &api, &underlay(0));
    Cluster {
        nodes,
        api,
        _dir: dir,
        _switch: switch,
    }
}

fn create(api: &ApiServer, name: &str, n: usize, addr: &str) -> Duration {
    let t = Instant::now();
    api.request("POST", "/api/v1/nodes", Some(&node_json(name, n, addr)))
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    t.elapsed()
}

/// Rounds of: node-b deleted (until pod A cannot reach pod B), created again → pod B reached.
/// (Node created → first packet, the API write).
fn first_packets(
    api: &ApiServer,
    pod_a: &Path,
    b: SocketAddr,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut first, mut write) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        api.request("DELETE", "/api/v1/nodes/node-b", None).unwrap();
        until_unreached(pod_a, b);
        let t = Instant::now();
        write.push(create(api, "node-b", 2, &underlay(1)));
        first.push(until_reached(pod_a, b, t));
    }
    (first, write)
}

fn row(what: &str, v: &mut [Duration], anchor: &mut [Duration]) {
    let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
    println!(
        "| {what} | {} | {} | {} | {} |",
        ms(p50),
        ms(p99),
        ms(pct(anchor, 0.5)),
        ms(p50.saturating_sub(pct(anchor, 0.5)))
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    let cl = cluster().await;
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        create(&cl.api, &format!("node-{name}"), i + 1, &underlay(i));
    }
    // A pod per node, echoing.
    let pid = std::process::id();
    let mut pods = Vec::new();
    for (i, n) in cl.nodes.iter().enumerate() {
        n.host.wait_ready("default").await;
        let c = n.host.clients().await;
        let ns = NetNs::create(&format!("nbc-p{i}-{pid}")).unwrap();
        let a = attach(&c, bench_sandbox(&format!("p{i}"), &ns.path), vec![])
            .await
            .unwrap()
            .remove(0);
        let ip = probe::ip_of(&a.ips[0].address).unwrap();
        echo(&ns.path, ip);
        pods.push((ns, SocketAddr::new(ip, PORT)));
    }
    let (pa, b) = (pods[0].0.path.clone(), pods[1].1);
    until_reached(&pa, b, Instant::now());

    println!(
        "## Node created → first packet from a pod here to a pod there (rounds: {})\n",
        args.rounds
    );
    println!("| Node objects | p50 | p99 | the API write (p50) | beyond the write (p50) |");
    println!("|---|---|---|---|---|");
    let (mut small, mut small_w) = first_packets(&cl.api, &pa, b, args.rounds);
    row("4", &mut small, &mut small_w);
    // A cluster's worth of Node objects (on the underlay: every one routed by node A).
    let host_a = cl.nodes[0].host.pid().unwrap_or(0);
    let bridge_a = netlet_testbed::harness::children_of(host_a as i32, "netlet-bridge")
        .first()
        .copied()
        .unwrap_or(0) as u32;
    let (rss0, brss0, cpu0, bcpu0) = (
        rss_kib(host_a, "VmRSS:"),
        rss_kib(bridge_a, "VmRSS:"),
        cpu_seconds(host_a),
        cpu_seconds(bridge_a),
    );
    let t = Instant::now();
    for k in 0..args.nodes {
        create(&cl.api, &format!("node-x{k}"), 250 + k, &underlay(10 + k));
    }
    // Taken in once the last one is routed on node A.
    let last_cidr = format!(
        "10.{}.{}.0/24",
        128 + (250 + args.nodes - 1) / 256,
        (250 + args.nodes - 1) % 256
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let o = cl.nodes[0]
            .command(Path::new("/usr/sbin/ip"))
            .args(["route", "show", &last_cidr])
            .output()
            .unwrap();
        if !o.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{last_cidr} never routed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let taken_in = t.elapsed();
    let (mut large, mut large_w) = first_packets(&cl.api, &pa, b, args.rounds);
    row(&format!("{}", args.nodes + 4), &mut large, &mut large_w);
    // Beyond the API write (which grows with etcd's size, not netlet's work).
    let beyond = |v: &mut [Duration], w: &mut [Duration]| pct(v, 0.5).saturating_sub(pct(w, 0.5));
    let (p_small, p_large) = (
        beyond(&mut small, &mut small_w),
        beyond(&mut large, &mut large_w),
    );
    println!(
        "\nnetlet's share per change (beyond the write) with {} vs 4 Node objects: {:.2}× (flat is ~1×); p99 target ≤ 100 ms: {}",
        args.nodes + 4,
        p_large.as_secs_f64() / p_small.as_secs_f64().max(1e-9),
        if pct(&mut large, 0.99) <= Duration::from_millis(100)
            && pct(&mut small, 0.99) <= Duration::from_millis(100)
        {
            "met"
        } else {
            "missed"
        }
    );
    println!("\n## Node A with {} Node objects\n", args.nodes + 4);
    println!("| process | RSS before | RSS after | CPU s taking them in |");
    println!("|---|---|---|---|");
    println!(
        "| host | {} MiB | {} MiB | {:.2} |",
        rss0 / 1024,
        rss_kib(host_a, "VmRSS:") / 1024,
        cpu_seconds(host_a) - cpu0
    );
    println!(
        "| bridge driver | {} MiB | {} MiB | {:.2} |",
        brss0 / 1024,
        rss_kib(bridge_a, "VmRSS:") / 1024,
        cpu_seconds(bridge_a) - bcpu0
    );
    println!(
        "\n({} Node objects written and all routed in {})",
        args.nodes,
        ms(taken_in)
    );

    // Paths.
    let anchor_a = NetNs::create(&format!("nbc-va-{pid}")).unwrap();
    let anchor_b = NetNs::create(&format!("nbc-vb-{pid}")).unwrap();
    probe::wire(
        &anchor_a.path,
        "eth0",
        "10.99.0.1/24",
        &anchor_b.path,
        "eth0",
        "10.99.0.2/24",
    )
    .unwrap();
    probe::link_up(&anchor_a.path, "lo").unwrap();
    echo(&anchor_b.path, "10.99.0.2".parse().unwrap());
    let paths: [(&str, PathBuf, SocketAddr); 3] = [
        (
            "anchor: plain veth between two namespaces",
            anchor_a.path.clone(),
            SocketAddr::new("10.99.0.2".parse().unwrap(), PORT),
        ),
        ("direct route (node A → node B)", pa.clone(), b),
        (
            "VXLAN overlay (node C → node D)",
            pods[2].0.path.clone(),
            pods[3].1,
        ),
    ];
    println!(
        "\n## One TCP stream, pod to pod on two nodes ({} MiB per run, {} runs)\n",
        args.mib, args.repeat
    );
    println!("| path | Gbit/s | vs anchor | RTT p50 | RTT p99 |");
    println!("|---|---|---|---|---|");
    let mut anchor_gbits = 0.0;
    for (what, from, to) in paths {
        let (mut gb, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.repeat {
            let (g, mut rtts) = stream(&from, to, args.mib);
            gb.push(g);
            p50s.push(pct(&mut rtts, 0.5));
            p99s.push(pct(&mut rtts, 0.99));
        }
        gb.sort_by(f64::total_cmp);
        let med = gb[gb.len() / 2];
        if anchor_gbits == 0.0 {
            anchor_gbits = med;
        }
        println!(
            "| {what} | {med:.2} ({:.2}–{:.2}) | {:.2}× | {} | {} |",
            gb[0],
            gb[gb.len() - 1],
            med / anchor_gbits,
            Spread::of(&p50s).us(),
            Spread::of(&p99s).us(),
        );
    }
}
