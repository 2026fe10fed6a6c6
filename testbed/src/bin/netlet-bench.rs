//! netlet-bench: host overhead over real unix sockets, printed as a table beside the anchors
//! measured in the same run. Not a test: it gates nothing.
//!
//! (a) routing: CheckDns through the host to the no-op fixture driver (two gRPC hops, no store
//!     write); anchor: the same call straight to the driver (one hop).
//! (b) AttachPod + DetachPod through the host with durable store writes; anchor: one
//!     write+fsync of 4 KiB in the state directory.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use clap::Parser;
use netlet_sdk::{
    client::Clients,
    proto::{AttachPodRequest, CheckDnsRequest, DetachPodRequest, PodSandbox},
};
use netlet_testbed::harness::{Host, fixture_driver};
use netlet_testbed::stats::{pct, us};

#[derive(Parser)]
#[command(about = "netlet host benchmarks")]
struct Args {
    /// Calls per measurement at concurrency 1.
    #[arg(long, default_value_t = 5000)]
    calls: usize,
    /// Calls per measurement at concurrency 64.
    #[arg(long, default_value_t = 20000)]
    concurrent_calls: usize,
}

struct Row {
    name: String,
    conc: usize,
    p50: Duration,
    p99: Duration,
    rate: f64,
    target: &'static str,
}

async fn measure<F, Fut>(name: &str, conc: usize, calls: usize, target: &'static str, f: F) -> Row
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    // Warm up connections and caches.
    for i in 0..100 {
        f(usize::MAX - i).await;
    }
    let start = Instant::now();
    let per = calls / conc;
    let tasks: Vec<_> = (0..conc)
        .map(|w| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    f(w * per + i).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let took = start.elapsed();
    Row {
        name: name.to_string(),
        conc,
        p50: pct(&mut all, 0.50),
        p99: pct(&mut all, 0.99),
        rate: all.len() as f64 / took.as_secs_f64(),
        target,
    }
}

fn fsync_anchor(dir: &std::path::Path) -> (Duration, Duration) {
    let path = dir.join("fsync-probe");
    let mut lat = Vec::new();
    let buf = vec![7u8; 4096];
    for _ in 0..300 {
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fsync");
        lat.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    (pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = Host::start(&fixture_driver("bench", "default", &[]), "").await;
    host.wait_ready("").await;
    let via_host = host.clients().await;
    let direct = Clients::connect(&host.dir.path().join("run/drivers/bench.sock"), None).await?;
    let dns = CheckDnsRequest {
        client_address: "10.244.0.5".into(),
        query_name: "example.com.".into(),
        ..Default::default()
    };
    let mut rows = Vec::new();
    for (conc, calls) in [(1, args.calls), (64, args.concurrent_calls)] {
        for (label, clients, target) in [
            (
                "anchor: CheckDns straight to driver (1 hop)",
                direct.clone(),
                "-",
            ),
            (
                "(a) CheckDns routed by host (2 hops)",
                via_host.clone(),
                if conc == 1 { "p99 ≤ 150 µs" } else { "-" },
            ),
        ] {
            let req = dns.clone();
            rows.push(
                measure(label, conc, calls, target, move |_| {
                    let mut p = clients.policy.clone();
                    let req = req.clone();
                    async move {
                        p.check_dns(req).await.expect("CheckDns");
                    }
                })
                .await,
            );
        }
        let c = via_host.clone();
        let calls = (calls / 5).max(conc);
        rows.push(
            measure(
                "(b) AttachPod+DetachPod via host, durable",
                conc,
                calls,
                if conc == 1 { "p99 ≤ 1 ms" } else { "-" },
                move |i| {
                    let mut pods = c.pods.clone();
                    async move {
                        let id = format!("bench-{i}");
                        pods.attach_pod(AttachPodRequest {
                            sandbox: Some(PodSandbox {
                                id: id.clone(),
                                netns_path: format!("/var/run/netns/{id}"),
                                ..Default::default()
                            }),
                            networks: vec![],
                        })
                        .await
                        .expect("AttachPod");
                        pods.detach_pod(DetachPodRequest {
                            sandbox_id: id,
                            ..Default::default()
                        })
                        .await
                        .expect("DetachPod");
                    }
                },
            )
            .await,
        );
    }
    let (f50, f99) = fsync_anchor(&host.state_dir);
    println!("\nnetlet-bench (host + fixture driver over unix sockets, same run)\n");
    println!(
        "{:<46} {:>5} {:>10} {:>10} {:>12}  target",
        "measurement", "conc", "p50", "p99", "calls/s"
    );
    for r in &rows {
        println!(
            "{:<46} {:>5} {:>10} {:>10} {:>12.0}  {}",
            r.name,
            r.conc,
            us(r.p50),
            us(r.p99),
            r.rate,
            r.target
        );
    }
    println!(
        "{:<46} {:>5} {:>10} {:>10} {:>12}  -",
        "anchor: 4 KiB write + fsync in state dir",
        1,
        us(f50),
        us(f99),
        "-"
    );
    let get = |name: &str, conc: usize| {
        rows.iter()
            .find(|r| r.name.starts_with(name) && r.conc == conc)
    };
    if let (Some(a), Some(d)) = (get("(a)", 1), get("anchor: CheckDns", 1)) {
        println!(
            "\nrouting overhead of the host at c=1: p50 {} over the direct call ({:.2}x)",
            us(a.p50.saturating_sub(d.p50)),
            a.p50.as_secs_f64() / d.p50.as_secs_f64()
        );
    }
    if let Some(b) = get("(b)", 1) {
        println!(
            "attach+detach at c=1 = {:.1} fsyncs at p50 (two durable commits per pair)",
            b.p50.as_secs_f64() / f50.as_secs_f64()
        );
    }
    if let (Some(b1), Some(b64)) = (get("(b)", 1), get("(b)", 64)) {
        println!(
            "group commit: {:.0} pairs/s at c=64 vs {:.0} at c=1 ({:.1}x)",
            b64.rate,
            b1.rate,
            b64.rate / b1.rate
        );
    }
    Ok(())
}
