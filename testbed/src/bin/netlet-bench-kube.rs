//! netlet-bench-kube: netlet beside kube-proxy (nftables mode), both following one real API
//! server holding 10k Services × 10 endpoints, each in a node namespace of its own, from the
//! same run: the time from a Service created in the API to its rule live on the node, from an
//! endpoint change to live, a full sync after a restart (from an empty data plane), resident
//! memory and CPU seconds.
//!
//! Topology: a control-plane namespace runs etcd and kube-apiserver (listening on
//! 192.0.2.1/.5); node A runs the netlet host with the bridge and nft drivers, node B runs
//! kube-proxy; each node has pods `web` (10.244.0.10) and `web2` (10.244.0.11) answering
//! with their own address (node A's attached by netlet, node B's on a plain Linux bridge), and a
//! default route to the control plane (which answers unknown destinations at once with ICMP, so
//! a probe of a ClusterIP with no rule yet fails fast). Probes connect from the node itself, as
//! a host-network client does. Binaries: `testbed/k8s/build.sh`. Not a test: it gates nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use netlet_testbed::harness::{Node, attach, bridge_driver, in_netns, nft_driver};
use netlet_testbed::k8s::{ApiServer, bin_dir, write_kubeconfig_at};
use netlet_testbed::probe::{self, NetNs};
use netlet_testbed::stats::{ms, pct, rss_kib};

#[derive(Parser)]
#[command(about = "netlet beside kube-proxy, following one API server")]
struct Args {
    /// Services in the API.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Services created one by one, timed.
    #[arg(long, default_value_t = 20)]
    creates: usize,
    /// Endpoint changes, timed.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Full syncs after a restart, timed.
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    /// Pods in the API (other nodes' pods, which netlet follows for policy peers).
    #[arg(long, default_value_t = 5_000)]
    pods: usize,
}

const WEB: &str = "10.244.0.10";
const WEB2: &str = "10.244.0.11";
const PID: fn() -> u32 = std::process::id;

fn cluster_ip(i: usize) -> String {
    format!("10.96.{}.{}", 10 + i / 250, i % 250 + 1)
}

fn service_json(i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc{i}"), "namespace": "default"},
        "spec": {"clusterIP": cluster_ip(i), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    })
}

/// Service `i`'s slice: `endpoints` made-up addresses, or the one pod `real`.
fn slice_json(i: usize, endpoints: usize, real: Option<&str>) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = match real {
        Some(ip) => vec![serde_json::json!({"addresses": [ip], "conditions": {"ready": true}})],
        None => (0..endpoints)
            .map(|j| {
                let n = i * 16 + j;
                // As the EndpointSlice controller writes them: the pod's node and a reference
                // to the pod.
                serde_json::json!({
                    "addresses": [format!("10.{}.{}.{}", 100 + n / 65536, (n / 256) % 256, n % 256)],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": format!("node-{}", n % 50),
                    "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("svc{i}-{j}"), "uid": format!("{:08x}-0000-4000-8000-{n:012x}", i)},
                })
            })
            .collect(),
    };
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc{i}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": format!("svc{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    })
}

/// Node B's pods: a Linux bridge with `web` and `web2` on it.
fn plain_pods(node: &Path) -> Vec<NetNs> {
    probe::bridge(node, "br0", "10.244.0.1/24").unwrap();
    [WEB, WEB2]
        .into_iter()
        .enumerate()
        .map(|(i, addr)| {
            let ns = NetNs::create(&format!("netlet-bk-b{i}-{}", PID())).unwrap();
            probe::onto_bridge(
                node,
                "br0",
                &format!("w{i}"),
                &ns.path,
                &format!("{addr}/24"),
                "10.244.0.1".parse().unwrap(),
            )
            .unwrap();
            ns
        })
        .collect()
}

/// Answers every connection to `addr` in `netns` with `addr`'s address.
fn serve_identity(netns: &Path, addr: &str) {
    let at: SocketAddr = format!("{addr}:8080").parse().unwrap();
    let l = probe::run_in(netns, move || TcpListener::bind(at))
        .unwrap()
        .unwrap();
    let me = addr.to_string();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(me.as_bytes());
        }
    });
}

/// Connects to `vip` from `netns` every millisecond until `want` answers; how long since
/// `from` that took.
fn until_answered(netns: PathBuf, vip: SocketAddr, want: &'static str, from: Instant) -> Duration {
    until_answered_within(netns, vip, want, from, Duration::from_secs(120))
}

/// As [`until_answered`], giving up after `within` (a full sync of a large cluster: kube-proxy's
/// first `nft -f` of 10k Services × 10 endpoints takes minutes here).
fn until_answered_within(
    netns: PathBuf,
    vip: SocketAddr,
    want: &'static str,
    from: Instant,
    within: Duration,
) -> Duration {
    probe::run_in(&netns, move || {
        let deadline = from + within;
        loop {
            // A SYN lost while a rule lands costs at most this (a connection between
            // namespaces is set up in well under a millisecond).
            if let Ok(mut s) = TcpStream::connect_timeout(&vip, Duration::from_millis(20)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut out = String::new();
                if s.read_to_string(&mut out).is_ok() && out == want {
                    return from.elapsed();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{vip} never answered from {want}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    })
    .unwrap()
}

/// Both nodes probed at once from `from`.
fn both(
    a: &Path,
    b: &Path,
    vip: SocketAddr,
    want: &'static str,
    from: Instant,
) -> (Duration, Duration) {
    let (a, b) = (a.to_path_buf(), b.to_path_buf());
    let ta = std::thread::spawn(move || until_answered(a, vip, want, from));
    let tb = std::thread::spawn(move || until_answered(b, vip, want, from));
    (ta.join().unwrap(), tb.join().unwrap())
}

/// CPU seconds (user + system) a process has spent.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn row(what: &str, a: &mut [Duration], b: &mut [Duration]) {
    let (a50, a99, b50, b99) = (pct(a, 0.5), pct(a, 0.99), pct(b, 0.5), pct(b, 0.99));
    println!(
        "{what:<38} {:>10} {:>10}   {:>10} {:>10}   {:>6.1}×",
        ms(a50),
        ms(a99),
        ms(b50),
        ms(b99),
        b50.as_secs_f64() / a50.as_secs_f64().max(1e-9)
    );
}

/// Creates every object through the API, 32 requests in flight (a kube-rs client inside the
/// control plane's namespace).
fn load(cp: &Path, kubeconfig: PathBuf, objects: Vec<(&'static str, serde_json::Value)>) {
    with_client(cp, kubeconfig, move |client| async move {
        futures::stream::iter(objects)
            .map(|(path, body)| {
                let client = client.clone();
                async move {
                    let req = http::Request::post(path)
                        .header("content-type", "application/json")
                        .body(serde_json::to_vec(&body).unwrap())
                        .unwrap();
                    client
                        .request_text(req)
                        .await
                        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    });
}

/// Runs `f` with a kube-rs client for `kubeconfig`, inside namespace `cp`, on a runtime of its
/// own; returns when `f` does.
fn with_client<F: std::future::Future<Output = ()>>(
    cp: &Path,
    kubeconfig: PathBuf,
    f: impl FnOnce(kube::Client) -> F + Send + 'static,
) {
    probe::run_in(cp, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap();
            f(kube::Client::try_from(cfg).unwrap()).await
        });
    })
    .unwrap();
}

/// When a watch (a kube-rs watcher, as netlet's and kube-proxy's) saw each change: (when, the
/// object's name, its first endpoint address for a slice).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Instant, String, String)>>>;

/// Watches Services and EndpointSlices from the control plane's namespace and records when each
/// change arrives: the floor under any follower of the API.
fn watch_delivery(cp: &Path, kubeconfig: PathBuf) -> Seen {
    let seen = Seen::default();
    let out = seen.clone();
    let cp = cp.to_path_buf();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        with_client(&cp, kubeconfig, move |client| async move {
            use kube::runtime::watcher;
            let services = watcher(
                kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(
                    client.clone(),
                    "default",
                ),
                watcher::Config::default(),
            )
            .filter_map(|e| async move {
                match e {
                    Ok(watcher::Event::Apply(s)) => {
                        Some((s.metadata.name.unwrap_or_default(), String::new()))
                    }
                    Ok(watcher::Event::InitDone) => Some((String::new(), String::new())),
                    _ => None,
                }
            })
            .boxed();
            let slices = watcher(
                kube::Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
                    client, "default",
                ),
                watcher::Config::default(),
            )
            .filter_map(|e| async move {
                match e {
                    Ok(watcher::Event::Apply(s)) => Some((
                        s.metadata.name.unwrap_or_default(),
                        s.endpoints
                            .first()
                            .and_then(|e| e.addresses.first().cloned())
                            .unwrap_or_default(),
                    )),
                    _ => None,
                }
            })
            .boxed();
            let mut all = futures::stream::select(services, slices);
            while let Some((name, addr)) = all.next().await {
                if name.is_empty() {
                    let _ = ready_tx.send(());
                    continue;
                }
                out.lock().unwrap().push((Instant::now(), name, addr));
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the delivery watch listed");
    seen
}

/// When the watch saw `name` (with first address `addr`, for a slice) change after `from`.
fn delivered(seen: &Seen, name: &str, addr: &str, from: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((at, ..)) = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(at, n, a)| *at >= from && n == name && (addr.is_empty() || a == addr))
        {
            return *at - from;
        }
        assert!(Instant::now() < deadline, "the watch never saw {name}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

const SERVICES: &str = "/api/v1/namespaces/default/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

/// A process killed when dropped (kube-proxy, even when the benchmark fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kube_proxy(node: &Path, bin: &Path, kubeconfig: &Path, log: &Path) -> Killed {
    in_netns(Some(node), bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--proxy-mode",
            "nftables",
            "--hostname-override",
            "node-b",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--conntrack-max-per-core",
            "0",
            "--metrics-bind-address",
            "127.0.0.1:10249",
            "--healthz-bind-address",
            "127.0.0.1:10256",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .map(Killed)
        .expect("kube-proxy")
}

fn delete_tables(node: &Path, tables: &[&str]) {
    for t in tables {
        let _ = in_netns(Some(node), Path::new("/usr/sbin/nft"))
            .args(["delete", "table"])
            .args(t.split(' '))
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let bins = bin_dir();
    let (etcd, api, kp) = (
        bins.join("etcd"),
        bins.join("kube-apiserver"),
        bins.join("kube-proxy"),
    );
    for b in [&etcd, &api, &kp] {
        assert!(b.is_file(), "{}: run testbed/k8s/build.sh", b.display());
    }
    let dir = tempfile::tempdir().unwrap();
    let cp_name = format!("netlet-bk-cp-{}", PID());
    let cp = NetNs::create(&cp_name).unwrap();
    probe::link_up(&cp.path, "lo").unwrap();
    // Unknown destinations are refused at once (ICMP unrate-limited), not left to time out.
    probe::run_in(&cp.path, || {
        // Forwarding on, so a packet for an address it has no route to gets "network
        // unreachable" back instead of being dropped.
        for (k, v) in [
            ("ip_forward", "1"),
            ("icmp_ratelimit", "0"),
            ("icmp_msgs_per_sec", "1000000"),
            ("icmp_msgs_burst", "100000"),
        ] {
            std::fs::write(format!("/proc/sys/net/ipv4/{k}"), v)?;
        }
        std::io::Result::Ok(())
    })
    .unwrap()
    .unwrap();
    // A connection to a ClusterIP no node has a rule for yet is reset at once.
    let rules = dir.path().join("cp.nft");
    std::fs::write(
        &rules,
        "table inet bench {\n chain reset_unknown {\n  type filter hook forward priority 0;\n  ip daddr 10.96.0.0/12 reject with tcp reset\n }\n}\n",
    )
    .unwrap();
    let ok = in_netns(Some(&cp.path), Path::new("/usr/sbin/nft"))
        .arg("-f")
        .arg(&rules)
        .status()
        .expect("nft");
    assert!(ok.success(), "nft in the control plane");
    // ... routed there (towards a neighbour that does not exist) so the forward hook sees it.
    probe::veth_inside(&cp.path, "unknown0", "unknown1").unwrap();
    probe::link_up(&cp.path, "unknown1").unwrap();
    probe::add_address(&cp.path, "unknown0", "203.0.113.1/24").unwrap();
    probe::add_route(&cp.path, "10.96.0.0/12", "203.0.113.2".parse().unwrap()).unwrap();
    let (kc_a, kc_b, kc_cp) = (
        dir.path().join("a.kubeconfig"),
        dir.path().join("b.kubeconfig"),
        dir.path().join("cp.kubeconfig"),
    );
    write_kubeconfig_at(&kc_a, "https://192.0.2.1:6443", None);
    write_kubeconfig_at(&kc_b, "https://192.0.2.5:6443", None);
    write_kubeconfig_at(&kc_cp, "https://127.0.0.1:6443", None);

    // Node A: netlet, probing its drivers as deployed (deploy/netlet.yaml), not at the tests'
    // 100 ms.
    let drivers = bridge_driver("bridge", "default", "netlet0", &["10.244.0.0/24"])
        + &nft_driver("nft", &["--cluster-cidr", "10.244.0.0/24"]);
    let mut node_a = Node::start(
        "bk-a",
        &drivers,
        &format!(
            "nodeName: node-a\nkubeconfig: {}\nprobeInterval: 2s\n",
            kc_a.display()
        ),
    )
    .await;
    probe::wire(
        &cp.path,
        "va",
        "192.0.2.1/30",
        &node_a.netns.path,
        "cp0",
        "192.0.2.2/30",
    )
    .unwrap();
    probe::add_route(
        &node_a.netns.path,
        "0.0.0.0/0",
        "192.0.2.1".parse().unwrap(),
    )
    .unwrap();
    // Node B: kube-proxy.
    let b_name = format!("netlet-bk-b-{}", PID());
    let node_b = NetNs::create(&b_name).unwrap();
    probe::link_up(&node_b.path, "lo").unwrap();
    probe::wire(
        &cp.path,
        "vb",
        "192.0.2.5/30",
        &node_b.path,
        "cp0",
        "192.0.2.6/30",
    )
    .unwrap();
    probe::add_route(&node_b.path, "0.0.0.0/0", "192.0.2.5".parse().unwrap()).unwrap();
    let pods_b = plain_pods(&node_b.path);

    let apiserver = ApiServer::start_in(&cp.path, &etcd, &api, "192.0.2.1");
    node_a.host.wait_ready("default").await;
    node_a.host.wait_driver("nft").await;
    let c = node_a.host.clients().await;
    let mut pods_a = Vec::new();
    for (i, addr) in [WEB, WEB2].into_iter().enumerate() {
        let ns = NetNs::create(&format!("netlet-bk-a{i}-{}", PID())).unwrap();
        attach(
            &c,
            netlet_sdk::proto::PodSandbox {
                id: format!("bk-{i}"),
                name: format!("web{i}"),
                namespace: "default".into(),
                uid: format!("bk-{i}"),
                netns_path: ns.path.display().to_string(),
                ..Default::default()
            },
            vec![netlet_sdk::proto::NetworkSelection {
                network: "default".into(),
                interface_name: "eth0".into(),
                ips: vec![addr.into()],
                ..Default::default()
            }],
        )
        .await
        .expect("attach");
        pods_a.push(ns);
    }
    for (pods, _) in [(&pods_a, "a"), (&pods_b, "b")] {
        serve_identity(&pods[0].path, WEB);
        serve_identity(&pods[1].path, WEB2);
    }
    // The Node objects, with the addresses their kubelets would report (kube-proxy waits up to
    // 30 s for its node's).
    for (n, addr) in [("node-a", "192.0.2.2"), ("node-b", "192.0.2.6")] {
        let created = apiserver
            .request(
                "POST",
                "/api/v1/nodes",
                Some(&serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}).to_string()),
            )
            .unwrap();
        let mut node: serde_json::Value = serde_json::from_str(&created).unwrap();
        node["status"] = serde_json::json!({"addresses": [{"type": "InternalIP", "address": addr}, {"type": "Hostname", "address": n}]});
        apiserver
            .request(
                "PUT",
                &format!("/api/v1/nodes/{n}/status"),
                Some(&node.to_string()),
            )
            .unwrap();
    }

    // The cluster: N Services × E endpoints; the last one (the probe) has the pod `web`.
    let n = args.services;
    let t = Instant::now();
    let mut objects = Vec::new();
    for i in 0..n {
        let real = (i == n - 1).then_some(WEB);
        objects.push((SLICES, slice_json(i, args.endpoints, real)));
        objects.push((SERVICES, service_json(i)));
    }
    load(&cp.path, kc_cp.clone(), objects);
    println!(
        "loaded {n} Services × {} endpoints into the API in {:.1} s",
        args.endpoints,
        t.elapsed().as_secs_f64()
    );
    let probe_vip: SocketAddr = format!("{}:80", cluster_ip(n - 1)).parse().unwrap();
    // The pods of a cluster that size, on other nodes (no controller manager runs: the
    // namespace's default ServiceAccount, which pods need, is made here).
    apiserver
        .request(
            "POST",
            "/api/v1/namespaces/default/serviceaccounts",
            Some(r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}"#),
        )
        .unwrap();
    let t = Instant::now();
    let pods: Vec<(&'static str, serde_json::Value)> = (0..args.pods)
        .map(|i| {
            (
                "/api/v1/namespaces/default/pods",
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("pod{i}"), "labels": {"app": format!("app{}", i % 100)}},
                    "spec": {"nodeName": format!("node-{}", i % 50), "containers": [{"name": "c", "image": "registry.example/app:1", "ports": [{"name": "http", "containerPort": 8080}]}]}
                }),
            )
        })
        .collect();
    load(&cp.path, kc_cp.clone(), pods);
    println!(
        "loaded {} Pods into the API in {:.1} s",
        args.pods,
        t.elapsed().as_secs_f64()
    );

    // Full sync after a restart, from an empty data plane: each side alone, in turn.
    let kp_log = dir.path().join("kube-proxy.log");
    let (mut sync_a, mut sync_b) = (Vec::new(), Vec::new());
    let mut kube_proxy_child: Option<Killed> = None;
    let mut listed_rss = Vec::new();
    for _ in 0..args.restarts {
        node_a.host.stop_with(nix::sys::signal::Signal::SIGTERM);
        delete_tables(&node_a.netns.path, &["ip netlet-nft", "ip6 netlet-nft"]);
        let t = Instant::now();
        node_a.host.spawn().await;
        sync_a.push(until_answered(node_a.netns.path.clone(), probe_vip, WEB, t));
        if let Some(pid) = node_a.host.pid() {
            listed_rss.push(rss_kib(pid, "VmRSS:"));
        }
        drop(kube_proxy_child.take());
        delete_tables(&node_b.path, &["ip kube-proxy", "ip6 kube-proxy"]);
        let t = Instant::now();
        kube_proxy_child = Some(kube_proxy(&node_b.path, &kp, &kc_b, &kp_log));
        let nb = node_b.path.clone();
        let within = Duration::from_secs(900);
        match std::panic::catch_unwind(move || until_answered_within(nb, probe_vip, WEB, t, within))
        {
            Ok(d) => sync_b.push(d),
            Err(_) => {
                let log = std::fs::read_to_string(&kp_log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("kube-proxy's log, last lines:");
                tail.iter().rev().for_each(|l| eprintln!("  {l}"));
                panic!("kube-proxy never synced");
            }
        }
    }
    let kp_pid = kube_proxy_child.as_ref().unwrap().0.id();
    let host_pid = node_a.host.pid().unwrap();
    let nft_pid = node_a
        .host
        .children("netlet-nft")
        .first()
        .copied()
        .unwrap_or(0) as u32;
    let seen = watch_delivery(&cp.path, kc_cp.clone());
    // What each side spends doing nothing (probes, timers, its watches' keep-alives), over an
    // idle stretch right before the timed phase: taken off the phase's CPU to leave what the
    // changes cost.
    const IDLE: Duration = Duration::from_secs(20);
    let cpu_now = || {
        (
            cpu_seconds(host_pid) + cpu_seconds(nft_pid),
            cpu_seconds(kp_pid),
        )
    };
    let idle0 = cpu_now();
    std::thread::sleep(IDLE);
    let cpu0 = cpu_now();
    let idle_rate = (
        (cpu0.0 - idle0.0) / IDLE.as_secs_f64(),
        (cpu0.1 - idle0.1) / IDLE.as_secs_f64(),
    );
    let t_phase = Instant::now();

    // One Service created in the API → live on each node.
    let (mut create_a, mut create_b, mut api_write) = (Vec::new(), Vec::new(), Vec::new());
    let (mut create_seen, mut change_seen, mut change_write) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..args.creates {
        let i = n + k;
        apiserver
            .request(
                "POST",
                SLICES,
                Some(&slice_json(i, 1, Some(WEB)).to_string()),
            )
            .unwrap();
        // kube-proxy syncs at most once a second (its --min-sync-period); spaced so each create
        // is its own sync on both sides.
        std::thread::sleep(Duration::from_millis(1100));
        let t = Instant::now();
        apiserver
            .request("POST", SERVICES, Some(&service_json(i).to_string()))
            .unwrap();
        api_write.push(t.elapsed());
        let vip: SocketAddr = format!("{}:80", cluster_ip(i)).parse().unwrap();
        let (a, b) = both(&node_a.netns.path, &node_b.path, vip, WEB, t);
        create_a.push(a);
        create_b.push(b);
        create_seen.push(delivered(&seen, &format!("svc{i}"), "", t));
    }
    // The probe Service's endpoint moves between web and web2 → live on each node.
    let (mut change_a, mut change_b) = (Vec::new(), Vec::new());
    for k in 0..args.changes {
        let to = if k % 2 == 0 { WEB2 } else { WEB };
        std::thread::sleep(Duration::from_millis(1100));
        let t = Instant::now();
        apiserver
            .request(
                "PUT",
                &format!("{SLICES}/svc{}-1", n - 1),
                Some(&slice_json(n - 1, 1, Some(to)).to_string()),
            )
            .unwrap();
        change_write.push(t.elapsed());
        let (a, b) = both(&node_a.netns.path, &node_b.path, probe_vip, to, t);
        change_a.push(a);
        change_b.push(b);
        change_seen.push(delivered(&seen, &format!("svc{}-1", n - 1), to, t));
    }
    let phase = t_phase.elapsed().as_secs_f64();
    // Beyond the floor: each change's time to live less the time a bare watch took to see it
    // (the API write, etcd, the watch cache and the delivery), paired per change.
    let beyond = |live: &[Duration], floor: &[Duration]| -> Vec<Duration> {
        live.iter()
            .zip(floor)
            .map(|(l, f)| l.saturating_sub(*f))
            .collect()
    };
    let mut floor_rows = [
        (
            "Service created",
            create_seen.clone(),
            beyond(&create_a, &create_seen),
            beyond(&create_b, &create_seen),
        ),
        (
            "endpoint changed",
            change_seen.clone(),
            beyond(&change_a, &change_seen),
            beyond(&change_b, &change_seen),
        ),
    ];
    let cpu = {
        let now = cpu_now();
        (now.0 - cpu0.0, now.1 - cpu0.1)
    };

    println!();
    println!(
        "{n} Services × {} endpoints and {} Pods in one kube-apiserver (Kubernetes v1.34.4, etcd v3.6.5); netlet (host + nft driver) on node A, kube-proxy --proxy-mode nftables on node B",
        args.endpoints, args.pods
    );
    println!(
        "{:<38} {:>10} {:>10}   {:>10} {:>10}   {:>7}",
        "", "netlet p50", "p99", "k-proxy p50", "p99", "k-p/nl"
    );
    row(
        &format!("Service created → live (n={})", args.creates),
        &mut create_a,
        &mut create_b,
    );
    row(
        &format!("endpoint changed → live (n={})", args.changes),
        &mut change_a,
        &mut change_b,
    );
    row(
        &format!("full sync after restart (n={})", args.restarts),
        &mut sync_a,
        &mut sync_b,
    );
    println!(
        "(the API write itself, inside each create: p50 {}, p99 {}; inside each change: p50 {}, p99 {})",
        ms(pct(&mut api_write, 0.5)),
        ms(pct(&mut api_write, 0.99)),
        ms(pct(&mut change_write, 0.5)),
        ms(pct(&mut change_write, 0.99)),
    );
    println!(
        "{:<38} {:>10} {:>10}   {:>10} {:>10}   {:>10} {:>10}",
        "beyond a bare watch's delivery",
        "watch p50",
        "p99",
        "netlet p50",
        "p99",
        "k-proxy p50",
        "p99"
    );
    for (what, floor, a, b) in &mut floor_rows {
        println!(
            "{what:<38} {:>10} {:>10}   {:>10} {:>10}   {:>10} {:>10}",
            ms(pct(floor, 0.5)),
            ms(pct(floor, 0.99)),
            ms(pct(a, 0.5)),
            ms(pct(a, 0.99)),
            ms(pct(b, 0.5)),
            ms(pct(b, 0.99)),
        );
    }
    let (rss_a, rss_nft, rss_b) = (
        rss_kib(host_pid, "VmRSS:"),
        rss_kib(nft_pid, "VmRSS:"),
        rss_kib(kp_pid, "VmRSS:"),
    );
    println!(
        "resident memory: netlet {} MiB (host {} + nft driver {}), kube-proxy {} MiB ({:.2}×)",
        (rss_a + rss_nft) / 1024,
        rss_a / 1024,
        rss_nft / 1024,
        rss_b / 1024,
        (rss_a + rss_nft) as f64 / rss_b.max(1) as f64
    );
    println!(
        "netlet host resident right after its initial list and full sync: {} MiB (each restart: {:?} MiB)",
        listed_rss.iter().max().copied().unwrap_or(0) / 1024,
        listed_rss.iter().map(|k| k / 1024).collect::<Vec<_>>()
    );
    println!(
        "CPU seconds over the {phase:.0} s of creates and changes: netlet {:.2}, kube-proxy {:.2} ({:.2}×)",
        cpu.0,
        cpu.1,
        cpu.0 / cpu.1.max(1e-9)
    );
    let changes = (
        (cpu.0 - idle_rate.0 * phase).max(0.0),
        (cpu.1 - idle_rate.1 * phase).max(0.0),
    );
    println!(
        "  of which above idle (idle: netlet {:.1} ms/s, kube-proxy {:.1} ms/s over {} s before): netlet {:.2}, kube-proxy {:.2} ({:.2}×)",
        idle_rate.0 * 1e3,
        idle_rate.1 * 1e3,
        IDLE.as_secs(),
        changes.0,
        changes.1,
        changes.0 / changes.1.max(1e-9)
    );
    drop(kube_proxy_child);
    drop(apiserver);
    drop(node_a);
}
