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
use netlet_testbed::harness::{Host, fixture_driver};
use netlet_testbed::stats::{ms, pct};
use prost::Message;

#[derive(Parser)]
#[command(about = "Services through the host at scale")]
struct Args {
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Single changes timed per measurement.
    #[arg(long, default_value_t = 50)]
    changes: usize,
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

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Bytes the host sends a driver for one endpoint change in a Service of `size` endpoints,
/// and the bytes of re-sending that Service's endpoints whole (the Endpoints-object way).
fn delta_bytes(size: usize) -> (usize, usize) {
    let mut v = ServiceView::new(NodeInfo {
        name: "node-0".into(),
        zone: String::new(),
    });
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let eps = args.endpoints;
    let host = Host::start(&fixture_driver("svc", "default", &[]), "nodeName: node-0\n").await;
    host.wait_ready("").await;
    let pid = host.pid().unwrap_or(0);
    let mut s = Session {
        c: host.clients().await,
        generation: 0,
    };
    let rss0 = rss_kib(pid, "VmRSS:");
    let mut rows: Vec<(String, String, String)> = Vec::new();

    for n in [1_000usize, 10_000] {
        let t = load(&mut s, n, eps).await;
        let again = naive(&mut s, n, eps).await;
        rows.push((
            format!("(a) load {n} Services x {eps} endpoints (batches of {BATCH})"),
            ms(t),
            format!("re-send whole table: {}", ms(again)),
        ));
    }
    let rss = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");

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
    let naive_one = naive(&mut s, 10_000, eps).await;
    rows.push((
        "(b) add 1 Service, 10k present (host + driver ack), p50/p99".into(),
        format!("{} / {}", ms(pct(&mut add, 0.5)), ms(pct(&mut add, 0.99))),
        format!("re-send whole table: {}", ms(naive_one)),
    ));
    rows.push((
        "(b) change 1 endpoint, 10k present, p50/p99".into(),
        format!(
            "{} / {}",
            ms(pct(&mut change, 0.5)),
            ms(pct(&mut change, 0.99))
        ),
        format!("re-send whole table: {}", ms(naive_one)),
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
    let listed =
        s.c.services
            .list_services(ListServicesRequest::default())
            .await?
            .into_inner();
    println!(
        "\nnetlet-bench-services (host + no-data-plane Services driver; node generation {}, driver in sync: {})\n",
        listed.node_generation,
        listed.drivers.iter().all(|d| d.in_sync)
    );
    println!("{:<66} {:>22}  anchor (same run)", "measurement", "netlet");
    for (m, ours, anchor) in rows {
        println!("{m:<66} {ours:>22}  {anchor}");
    }
    Ok(())
}
