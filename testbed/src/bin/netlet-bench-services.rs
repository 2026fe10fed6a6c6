//! netlet-bench-services: the host's side of Services at scale — programming 1k and 10k
//! Services × 10 endpoints through the host into a Services driver, adding one Service and
//! changing one endpoint with 10k present (each beside the naive way, re-sending the whole
//! table, in the same run), the bytes one endpoint change costs for a 10- vs a 1000-endpoint
//! Service, and the host's resident memory.
//!
//! The driver is the no-data-plane fixture: these are the host's costs (view, deltas, fan-out
//! over gRPC, the driver's acknowledgement), not time-to-rule-live, which needs the nftables
//! driver. Not a test: it gates nothing.

use std::time::{Duration, Instant};

use clap::Parser;
use netlet_host::services::sources::{ServiceView, Source, Wanted};
use netlet_host::services::view::NodeInfo;
use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    Endpoint, EndpointPort, EndpointUpsert, IpFamily, ListServicesRequest, ProgramServiceRequest,
    Protocol, Service, ServiceKey, ServicePort, ServiceType,
};
use netlet_testbed::harness::{Host, Node, attach, bridge_driver, fixture_driver, nft_driver};
use netlet_testbed::probe::{self, NetNs};
use netlet_testbed::stats::{Spread, pct, pid_of, ratio, rss_kib};
use prost::Message;

#[derive(Parser)]
#[command(about = "Services through the host at scale")]
struct Args {
    /// Services driver: `nft` (the real data plane, in a node namespace with pods) or
    /// `fixture` (no data plane: the host's own costs).
    #[arg(long, default_value = "nft")]
    driver: String,
    /// Connections per new-connection latency sample.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Single changes timed per measurement.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Runs of every measurement; the median and the range are printed.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// Services per ProgramService batch while loading.
const BATCH: usize = 1000;

fn key(i: usize) -> ServiceKey {
    ServiceKey {
        namespace: format!("ns{}", i % 100),
        name: format!("svc{i}"),
    }
}

fn service(i: usize) -> Service {
    Service {
        key: Some(key(i)),
        r#type: ServiceType::ClusterIp as i32,
        cluster_ips: vec![format!("10.96.{}.{}", i / 250, i % 250 + 1)],
        ip_families: vec![IpFamily::Ipv4 as i32],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp as i32,
            port: 80,
            target_port: 8080,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn endpoint(i: usize, j: usize, ready: bool) -> Endpoint {
    let n = i * 64 + j;
    Endpoint {
        address: format!("10.{}.{}.{}", 100 + n / 65536, (n / 256) % 256, n % 256),
        family: IpFamily::Ipv4 as i32,
        ports: vec![EndpointPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp as i32,
            ..Default::default()
        }],
        ready,
        serving: ready,
        node_name: format!("node-{}", j % 3),
        ..Default::default()
    }
}

fn upserts(i: usize, eps: usize) -> Vec<EndpointUpsert> {
    (0..eps)
        .map(|j| EndpointUpsert {
            service: Some(key(i)),
            endpoint: Some(endpoint(i, j, true)),
        })
        .collect()
}

struct Session {
    c: Clients,
    generation: u64,
}

impl Session {
    async fn send(&mut self, mut req: ProgramServiceRequest) -> Duration {
        self.generation += 1;
        req.generation = self.generation;
        let t = Instant::now();
        self.c
            .services
            .program_service(req)
            .await
            .expect("ProgramService");
        t.elapsed()
    }
}

/// Loads `n` Services; returns the time, with the driver acknowledging every batch.
async fn load(s: &mut Session, n: usize, eps: usize) -> Duration {
    let mut took = Duration::ZERO;
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let req = ProgramServiceRequest {
            full_sync: start == 0,
            service_upserts: (start..end).map(service).collect(),
            endpoint_upserts: (start..end).flat_map(|i| upserts(i, eps)).collect(),
            ..Default::default()
        };
        took += s.send(req).await;
    }
    took
}

/// The naive way: the whole table of `n` Services re-sent as full syncs.
async fn naive(s: &mut Session, n: usize, eps: usize) -> Duration {
    load(s, n, eps).await
}

/// Bytes the host sends a driver for one endpoint change in a Service of `size` endpoints,
/// and the bytes of re-sending that Service's endpoints whole (the Endpoints-object way).
fn delta_bytes(size: usize) -> (usize, usize) {
    let mut v = ServiceView::new(
        NodeInfo {
            name: "node-0".into(),
            zone: String::new(),
        },
        1,
    );
    let wanted = |flip: bool| {
        let svc_key = ("ns0".to_string(), "svc0".to_string());
        let w = Wanted {
            service: Some(service(0)),
            endpoints: (0..size)
                .map(|j| {
                    let e = endpoint(0, j, !(flip && j == 0));
                    (e.address.clone(), e)
                })
                .collect(),
        };
        [(svc_key, w)].into()
    };
    v.replace(Source::Manifests, wanted(false));
    let (delta, _) = v.replace(Source::Manifests, wanted(true));
    let whole = ProgramServiceRequest {
        endpoint_upserts: upserts(0, size),
        ..Default::default()
    };
    (
        delta.map(|d| d.encoded_len()).unwrap_or(0),
        whole.encoded_len(),
    )
}

/// Two pods on the node (server and client) and the server's IPv4 address.
async fn pods(node: &Node) -> (NetNs, NetNs, std::net::IpAddr) {
    let c = node.host.clients().await;
    let mut out = Vec::new();
    for name in ["server", "client"] {
        let ns = NetNs::create(&format!("netlet-bench-{name}-{}", std::process::id()))
            .expect("pod netns");
        let a = attach(
            &c,
            netlet_sdk::proto::PodSandbox {
                id: format!("bench-{name}"),
                name: name.into(),
                namespace: "bench".into(),
                uid: name.into(),
                netns_path: ns.path.display().to_string(),
                ..Default::default()
            },
            vec![],
        )
        .await
        .expect("attach");
        let ip = a[0]
            .ips
            .iter()
            .map(|x| probe::ip_of(&x.address).unwrap())
            .find(|i| i.is_ipv4())
            .unwrap();
        out.push((ns, ip));
    }
    let (client, _) = out.pop().unwrap();
    let (server, ip) = out.pop().unwrap();
    probe::tcp_tagged(&server.path, std::net::SocketAddr::new(ip, 8080), "server").expect("server");
    (server, client, ip)
}

/// The Service the latency is measured through: 10.97.0.1:80 -> server:8080.
fn target(server: std::net::IpAddr) -> ProgramServiceRequest {
    let key = ServiceKey {
        namespace: "bench".into(),
        name: "target".into(),
    };
    let mut svc = service(0);
    svc.key = Some(key.clone());
    svc.cluster_ips = vec!["10.97.0.1".into()];
    let mut ep = endpoint(0, 0, true);
    ep.address = server.to_string();
    ep.node_name = "node-0".into();
    ProgramServiceRequest {
        service_upserts: vec![svc],
        endpoint_upserts: vec![EndpointUpsert {
            service: Some(key),
            endpoint: Some(ep),
        }],
        ..Default::default()
    }
}

fn latency(client: &NetNs, to: std::net::SocketAddr, n: usize) -> (Duration, Duration) {
    let answer = probe::tcp_read(&client.path, to, Duration::from_secs(2)).expect("answer");
    assert!(answer.starts_with("server|"), "{to} answered {answer:?}");
    // Warm-up (caches, conntrack, CPU clocks), not counted.
    probe::tcp_latencies(&client.path, to, n).expect("connections");
    let mut l = probe::tcp_latencies(&client.path, to, n).expect("connections");
    (pct(&mut l, 0.5), pct(&mut l, 0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let eps = args.endpoints;
    let nft = args.driver == "nft";
    let mut node = None;
    let mut host = None;
    if nft {
        let drivers = bridge_driver("bridge", "default", "netlet0", &["10.244.0.0/24"])
            + &nft_driver("svc", &["--cluster-cidr", "10.244.0.0/24"]);
        let n = Node::start("bench-svc", &drivers, "nodeName: node-0\n").await;
        n.host.wait_ready("default").await;
        node = Some(n);
    } else {
        let h = Host::start(&fixture_driver("svc", "default", &[]), "nodeName: node-0\n").await;
        h.wait_ready("").await;
        host = Some(h);
    }
    let host_ref: &Host = match (&node, &host) {
        (Some(n), _) => &n.host,
        (None, Some(h)) => h,
        (None, None) => unreachable!("one of them was started"),
    };
    let pid = host_ref.pid().unwrap_or(0);
    let mut s = Session {
        c: host_ref.clients().await,
        generation: 0,
    };
    let rss0 = rss_kib(pid, "VmRSS:");
    let mut pod_nses = None;
    if nft {
        pod_nses = Some(pods(node.as_ref().expect("node")).await);
    }
    // Each figure per run.
    let mut sync: [(Vec<Duration>, Vec<Duration>); 2] = Default::default();
    let mut lat10: Vec<(Duration, Duration)> = Vec::new();
    let mut lat10k: Vec<(Duration, Duration)> = Vec::new();
    let mut direct_lat: Vec<(Duration, Duration)> = Vec::new();
    let mut add_p: Vec<(Duration, Duration)> = Vec::new();
    let mut change_p: Vec<(Duration, Duration)> = Vec::new();
    let mut naive_one: Vec<Duration> = Vec::new();
    let mut rss = 0;
    let mut hwm = 0;
    let mut driver_rss = 0;
    let via = std::net::SocketAddr::new("10.97.0.1".parse()?, 80);
    for _ in 0..args.repeat {
        // (c) with 10 Services (+ the target) programmed.
        if let Some((_, client, server_ip)) = &pod_nses {
            load(&mut s, 10, eps).await;
            s.send(target(*server_ip)).await;
            lat10.push(latency(client, via, args.connections));
        }
        for (i, n) in [1_000usize, 10_000].into_iter().enumerate() {
            let t = load(&mut s, n, eps).await;
            // The naive way: everything removed, everything emitted again.
            let empty = s
                .send(ProgramServiceRequest {
                    full_sync: true,
                    ..Default::default()
                })
                .await;
            let again = naive(&mut s, n, eps).await;
            sync[i].0.push(t);
            sync[i].1.push(empty + again);
        }
        if let Some((_, client, server_ip)) = &pod_nses {
            // The full syncs above replaced it.
            s.send(target(*server_ip)).await;
            lat10k.push(latency(client, via, args.connections));
            let direct = std::net::SocketAddr::new(*server_ip, 8080);
            direct_lat.push(latency(client, direct, args.connections));
        }
        rss = rss_kib(pid, "VmRSS:");
        hwm = rss_kib(pid, "VmHWM:");
        driver_rss = if nft { pid_of("netlet-nft") } else { None }
            .map(|p| rss_kib(p, "VmRSS:"))
            .unwrap_or(0);
        let mut add = Vec::new();
        let mut change = Vec::new();
        for k in 0..args.changes {
            let i = 10_000 + k;
            add.push(
                s.send(ProgramServiceRequest {
                    service_upserts: vec![service(i)],
                    endpoint_upserts: upserts(i, eps),
                    ..Default::default()
                })
                .await,
            );
            change.push(
                s.send(ProgramServiceRequest {
                    endpoint_upserts: vec![EndpointUpsert {
                        service: Some(key(k)),
                        endpoint: Some(endpoint(k, 0, k % 2 == 0)),
                    }],
                    ..Default::default()
                })
                .await,
            );
        }
        add_p.push((pct(&mut add, 0.5), pct(&mut add, 0.99)));
        change_p.push((pct(&mut change, 0.5), pct(&mut change, 0.99)));
        let empty = s
            .send(ProgramServiceRequest {
                full_sync: true,
                ..Default::default()
            })
            .await;
        naive_one.push(empty + naive(&mut s, 10_000, eps).await);
    }
    let sp = |v: &[Duration]| Spread::of(v);
    let p50s = |v: &[(Duration, Duration)]| sp(&v.iter().map(|x| x.0).collect::<Vec<_>>());
    let p99s = |v: &[(Duration, Duration)]| sp(&v.iter().map(|x| x.1).collect::<Vec<_>>());
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for (i, n) in [1_000usize, 10_000].into_iter().enumerate() {
        let ours = sp(&sync[i].0);
        let naive = sp(&sync[i].1);
        rows.push((
            format!("(a) full sync {n} Services x {eps} endpoints (batches of {BATCH})"),
            ours.ms(),
            format!(
                "naive re-emit (drop all + load): {} = {:.1}x{}",
                naive.ms(),
                ratio(naive.median, ours.median),
                if n == 10_000 {
                    format!(
                        "; target <= 1 s: {} (every run: {})",
                        verdict(ours.median <= Duration::from_secs(1)),
                        verdict(ours.max <= Duration::from_secs(1))
                    )
                } else {
                    String::new()
                }
            ),
        ));
    }
    if !lat10.is_empty() {
        let (a50, a99) = (p50s(&lat10), p99s(&lat10));
        let (b50, b99) = (p50s(&lat10k), p99s(&lat10k));
        let (d50, d99) = (p50s(&direct_lat), p99s(&direct_lat));
        rows.push((
            "(c) new connection to a ClusterIP, 11 Services, p50 / p99".into(),
            format!("{} / {}", a50.ms(), a99.ms()),
            format!("straight to the pod: {} / {}", d50.ms(), d99.ms()),
        ));
        rows.push((
            "(c) same, 10k Services programmed, p50 / p99".into(),
            format!("{} / {}", b50.ms(), b99.ms()),
            format!(
                "10k vs 10: {:+.1} % at p50 (target within 10 %: {})",
                (ratio(b50.median, a50.median) - 1.0) * 100.0,
                verdict((ratio(b50.median, a50.median) - 1.0).abs() <= 0.10)
            ),
        ));
    }
    let naive = sp(&naive_one);
    let (add50, add99) = (p50s(&add_p), p99s(&add_p));
    let (ch50, ch99) = (p50s(&change_p), p99s(&change_p));
    rows.push((
        "(b) add 1 Service, 10k present, call to rule live, p50 / p99".into(),
        format!("{} / {}", add50.ms(), add99.ms()),
        format!(
            "naive re-emit of the whole table: {} = {:.0}x; target p99 <= 5 ms: {} (every run: {})",
            naive.ms(),
            ratio(naive.median, add99.median),
            verdict(add99.median <= Duration::from_millis(5)),
            verdict(add99.max <= Duration::from_millis(5))
        ),
    ));
    rows.push((
        "(b) change 1 endpoint, 10k present, p50 / p99".into(),
        format!("{} / {}", ch50.ms(), ch99.ms()),
        format!(
            "naive: {:.0}x; target p99 <= 2 ms: {} (every run: {})",
            ratio(naive.median, ch99.median),
            verdict(ch99.median <= Duration::from_millis(2)),
            verdict(ch99.max <= Duration::from_millis(2))
        ),
    ));
    for size in [10usize, 1000] {
        let (d, whole) = delta_bytes(size);
        rows.push((
            format!("(d) bytes to a driver, 1 endpoint change, {size}-endpoint Service"),
            format!("{d} B"),
            format!("whole endpoint list: {whole} B"),
        ));
    }
    rows.push((
        format!("(e) host memory, 10k Services x {eps} endpoints (RSS / peak)"),
        format!("{} MiB / {} MiB", rss / 1024, hwm / 1024),
        format!("idle host: {} MiB; target <= 150 MiB", rss0 / 1024),
    ));
    if nft {
        rows.push((
            "(e) nft driver memory, same table (RSS)".into(),
            format!("{} MiB", driver_rss / 1024),
            "kube-proxy nftables: 260 MiB peak".into(),
        ));
    }
    let listed =
        s.c.services
            .list_services(ListServicesRequest::default())
            .await?
            .into_inner();
    println!(
        "\nnetlet-bench-services (host + {} driver; node generation {}, driver in sync: {}); median of {} runs (min–max)\n",
        if nft {
            "nft (nftables data plane)"
        } else {
            "no-data-plane fixture"
        },
        listed.node_generation,
        listed.drivers.iter().all(|d| d.in_sync),
        args.repeat
    );
    println!("{:<64} {:>40}  anchor (same run)", "measurement", "netlet");
    for (m, ours, anchor) in rows {
        println!("{m:<64} {ours:>40}  {anchor}");
    }
    Ok(())
}
