//! netlet-load: many concurrent callers of mixed RPCs against a real host and its supervised
//! fixture driver, for a while; resident memory and open descriptors of the host and the
//! driver printed at the start (after a warm-up) and at the end. The target is flat: growth
//! beyond noise is a leak. Exits non-zero when a call failed that should not have, or when
//! `--max-growth-fds` is exceeded (descriptors do not drift with allocator noise).
//!
//! Each caller loops: AttachPod (a sandbox of its own), PodNetworkStatus, ListAttachments
//! (filtered), NetworkReady, GetInfo, Probe, DetachPod; it reconnects every 200 rounds (a
//! new connection each time, as CNI shims do). One more caller sends ProgramService deltas
//! (the socket source is one numbering: one writer).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    AttachPodRequest, DetachPodRequest, Endpoint, EndpointUpsert, GetInfoRequest,
    ListAttachmentsRequest, NetworkReadyRequest, PodNetworkStatusRequest, PodSandbox, ProbeRequest,
    ProgramServiceRequest, Service, ServiceKey,
};
use netlet_testbed::harness::{Host, fixture_driver};
use netlet_testbed::probe::NetNs;

#[derive(Parser)]
#[command(about = "netlet load: concurrent mixed RPCs; memory and descriptors before and after")]
struct Args {
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// How long to run, after the warm-up (e.g. 5m, 30s).
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before the first reading.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Fail when a process's open descriptors grow by more than this.
    #[arg(long, default_value_t = 16)]
    max_growth_fds: i64,
}

/// (resident KiB, open descriptors) of `pid`.
fn usage(pid: i32) -> (i64, i64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(-1);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as i64)
        .unwrap_or(-1);
    (rss, fds)
}

async fn caller(
    socket: &Path,
    netns: String,
    me: usize,
    until: Instant,
    calls: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) {
    let mut round = 0u64;
    let mut c = Clients::connect(socket, None).await.expect("connect");
    while Instant::now() < until {
        if round > 0 && round.is_multiple_of(200) {
            c = Clients::connect(socket, None).await.expect("reconnect");
        }
        let id = format!("load-{me}-{round}");
        let mut ok = true;
        let attach = c
            .pods
            .attach_pod(AttachPodRequest {
                sandbox: Some(PodSandbox {
                    id: id.clone(),
                    name: format!("pod-{me}"),
                    namespace: "load".into(),
                    uid: id.clone(),
                    netns_path: netns.clone(),
                    ..Default::default()
                }),
                networks: vec![],
            })
            .await;
        ok &= attach.is_ok();
        ok &= c
            .pods
            .pod_network_status(PodNetworkStatusRequest {
                sandbox_id: id.clone(),
            })
            .await
            .is_ok();
        ok &= c
            .pods
            .list_attachments(ListAttachmentsRequest {
                namespace: "load".into(),
                ..Default::default()
            })
            .await
            .is_ok();
        ok &= c
            .node
            .network_ready(NetworkReadyRequest::default())
            .await
            .is_ok();
        ok &= c.identity.get_info(GetInfoRequest::default()).await.is_ok();
        ok &= c.identity.probe(ProbeRequest::default()).await.is_ok();
        ok &= c
            .pods
            .detach_pod(DetachPodRequest {
                sandbox_id: id,
                ..Default::default()
            })
            .await
            .is_ok();
        calls.fetch_add(7, Ordering::Relaxed);
        if !ok {
            failures.fetch_add(1, Ordering::Relaxed);
        }
        round += 1;
    }
}

async fn services_writer(
    socket: &Path,
    until: Instant,
    calls: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) {
    let mut c = Clients::connect(socket, None).await.expect("connect");
    let key = ServiceKey {
        namespace: "load".into(),
        name: "web".into(),
    };
    let mut generation = 0u64;
    while Instant::now() < until {
        generation += 1;
        let mut req = ProgramServiceRequest {
            epoch: 1,
            generation,
            full_sync: generation == 1,
            ..Default::default()
        };
        if generation == 1 {
            req.service_upserts.push(Service {
                key: Some(key.clone()),
                cluster_ips: vec!["10.96.0.10".into()],
                ..Default::default()
            });
        }
        req.endpoint_upserts.push(EndpointUpsert {
            service: Some(key.clone()),
            endpoint: Some(Endpoint {
                // A fixed set of 100 endpoints whose readiness flips: the table's size stays
                // the same, so memory that grows is a leak, not data.
                address: format!("10.244.0.{}", generation % 100 + 1),
                ready: (generation / 100).is_multiple_of(2),
                ..Default::default()
            }),
        });
        if c.services.program_service(req).await.is_err() {
            failures.fetch_add(1, Ordering::Relaxed);
        }
        calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Pods need a network namespace of their own: one, shared (the fixture driver makes no
    // interfaces).
    let ns = NetNs::create(&format!("netlet-load-{}", std::process::id()))
        .map_err(|e| anyhow::anyhow!("a network namespace for the pods (root needed): {e}"))?;
    let host = Host::start(&fixture_driver("fixture", "default", &[]), "").await;
    host.wait_ready("").await;
    let host_pid = host.pid().expect("host running") as i32;
    let driver_pid = *host
        .children("netlet-fixture-")
        .first()
        .ok_or_else(|| anyhow::anyhow!("no fixture driver"))?;
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + args.warmup + args.duration;
    let mut tasks = Vec::new();
    for me in 0..args.callers {
        let socket = host.socket.clone();
        let netns = ns.path.display().to_string();
        let (calls, failures) = (calls.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            caller(&socket, netns, me, until, calls, failures).await
        }));
    }
    {
        let socket = host.socket.clone();
        let (calls, failures) = (calls.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            services_writer(&socket, until, calls, failures).await
        }));
    }
    tokio::time::sleep(args.warmup).await;
    let before = [usage(host_pid), usage(driver_pid)];
    let calls_at_warmup = calls.load(Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let after = [usage(host_pid), usage(driver_pid)];
    let total = calls.load(Ordering::Relaxed) - calls_at_warmup;
    let failed = failures.load(Ordering::Relaxed);
    println!(
        "netlet-load: {} callers + 1 ProgramService writer, {:?} after a {:?} warm-up: {total} calls ({:.0}/s), {failed} rounds with a failed call",
        args.callers,
        args.duration,
        args.warmup,
        total as f64 / args.duration.as_secs_f64()
    );
    println!(
        "{:<10} {:>14} {:>14} {:>10} {:>10}",
        "process", "RSS KiB start", "RSS KiB end", "fds start", "fds end"
    );
    let mut worst_fds = 0;
    for (name, b, a) in [
        ("netlet", before[0], after[0]),
        ("fixture", before[1], after[1]),
    ] {
        println!("{name:<10} {:>14} {:>14} {:>10} {:>10}", b.0, a.0, b.1, a.1);
        worst_fds = worst_fds.max(a.1 - b.1);
    }
    anyhow::ensure!(failed == 0, "{failed} rounds had a failed call");
    anyhow::ensure!(
        worst_fds <= args.max_growth_fds,
        "open descriptors grew by {worst_fds} (more than {})",
        args.max_growth_fds
    );
    Ok(())
}
