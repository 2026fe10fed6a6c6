//! netlet-bench: the host's own cost over real unix sockets, printed beside anchors measured in
//! the same run, repeated (`--repeat N`: the median of the N runs, and their range). Not a
//! test: it gates nothing.
//!
//! - anchor: one bare tonic hop — a minimal tonic server (ListDevices answered at once, on a
//!   current-thread runtime like the host's) called over a unix socket by the same client.
//! - (a) routing: ListDevices through the host to the fixture driver (two hops, no store
//!   write), beside the same call straight to the driver (one hop). Target: the host adds no
//!   more than one bare hop. (CheckDns is answered by the host itself: one hop.)
//! - (b) AttachPod + DetachPod through the host with durable store writes. Target: no more than
//!   four bare hops and one fsync (anchor: one 4 KiB write + fsync in the state directory).

use std::{
    io::Write,
    time::{Duration, Instant},
};

use clap::Parser;
use netlet_sdk::{
    client::Clients,
    proto::{
        AttachPodRequest, DetachPodRequest, ListDevicesRequest, ListDevicesResponse, PodSandbox,
        devices_server::{Devices, DevicesServer},
    },
};
use netlet_testbed::harness::{Host, fixture_driver};
use netlet_testbed::stats::{Spread, pct, ratio};

#[derive(Parser)]
#[command(about = "netlet host benchmarks")]
struct Args {
    /// Calls per measurement at concurrency 1.
    #[arg(long, default_value_t = 5000)]
    calls: usize,
    /// Calls per measurement at concurrency 64.
    #[arg(long, default_value_t = 20000)]
    concurrent_calls: usize,
    /// Runs of every measurement; the median and the range are printed.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

/// One run of one measurement.
struct Run {
    p50: Duration,
    p99: Duration,
    rate: f64,
}

async fn measure<F, Fut>(conc: usize, calls: usize, f: F) -> Run
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
    Run {
        p50: pct(&mut all, 0.50),
        p99: pct(&mut all, 0.99),
        rate: all.len() as f64 / took.as_secs_f64(),
    }
}

fn fsync_anchor(dir: &std::path::Path) -> Run {
    let path = dir.join("fsync-probe");
    let mut lat = Vec::new();
    let buf = vec![7u8; 4096];
    let start = Instant::now();
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
    let took = start.elapsed();
    let _ = std::fs::remove_file(&path);
    Run {
        p50: pct(&mut lat, 0.5),
        p99: pct(&mut lat, 0.99),
        rate: 300.0 / took.as_secs_f64(),
    }
}

/// The bare server: ListDevices answered at once (no device), nothing else.
struct Bare;

#[tonic::async_trait]
impl Devices for Bare {
    async fn list_devices(
        &self,
        _: tonic::Request<ListDevicesRequest>,
    ) -> Result<tonic::Response<ListDevicesResponse>, tonic::Status> {
        Ok(tonic::Response::new(ListDevicesResponse::default()))
    }
}

/// Serves [`Bare`] at `socket` on a current-thread runtime of its own thread (as the host runs).
fn bare_server(socket: std::path::PathBuf) {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut sock = netlet_sdk::server::bind_unix(&socket, 0o600).expect("bind");
            let incoming = sock.incoming().expect("listener");
            let _ = ready_tx.send(());
            tonic::transport::Server::builder()
                .add_service(DevicesServer::new(Bare))
                .serve_with_incoming(incoming)
                .await
                .expect("serve");
        });
    });
    ready.recv().expect("bare server started");
}

#[derive(Clone, Copy, PartialEq)]
enum Row {
    Bare,
    Direct,
    Routed,
    AttachDetach,
}

const ROWS: [(Row, &str); 4] = [
    (Row::Bare, "anchor: bare tonic hop (ListDevices)"),
    (Row::Direct, "ListDevices straight to the driver (1 hop)"),
    (Row::Routed, "(a) ListDevices routed by the host (2 hops)"),
    (
        Row::AttachDetach,
        "(b) AttachPod+DetachPod via host, durable",
    ),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = Host::start(&fixture_driver("bench", "default", &[]), "").await;
    host.wait_ready("").await;
    let via_host = host.clients().await;
    let direct = Clients::connect(&host.dir.path().join("run/drivers/bench.sock"), None).await?;
    let bare_dir = tempfile::tempdir()?;
    let bare_sock = bare_dir.path().join("bare.sock");
    bare_server(bare_sock.clone());
    let bare = Clients::connect(&bare_sock, None).await?;
    let mut runs: Vec<(Row, usize, Vec<Run>)> = Vec::new();
    let mut fsyncs = Vec::new();
    let mut next_pod = 0usize;
    for _ in 0..args.repeat {
        for (conc, calls) in [(1, args.calls), (64, args.concurrent_calls)] {
            for (row, _) in ROWS {
                let run = match row {
                    Row::AttachDetach => {
                        let c = via_host.clone();
                        let base = next_pod;
                        next_pod += calls + 200;
                        measure(conc, (calls / 5).max(conc), move |i| {
                            let mut pods = c.pods.clone();
                            async move {
                                let id = format!("bench-{}", base.wrapping_add(i));
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
                        })
                        .await
                    }
                    _ => {
                        let clients = match row {
                            Row::Bare => bare.clone(),
                            Row::Direct => direct.clone(),
                            _ => via_host.clone(),
                        };
                        measure(conc, calls, move |_| {
                            let mut d = clients.devices.clone();
                            async move {
                                d.list_devices(ListDevicesRequest::default())
                                    .await
                                    .expect("ListDevices");
                            }
                        })
                        .await
                    }
                };
                match runs.iter_mut().find(|(r, c, _)| *r == row && *c == conc) {
                    Some((_, _, v)) => v.push(run),
                    None => runs.push((row, conc, vec![run])),
                }
            }
        }
        fsyncs.push(fsync_anchor(&host.state_dir));
    }
    let spread = |row: Row, conc: usize, f: fn(&Run) -> Duration| {
        let v: Vec<Duration> = runs
            .iter()
            .filter(|(r, c, _)| *r == row && *c == conc)
            .flat_map(|(_, _, v)| v.iter().map(f))
            .collect();
        Spread::of(&v)
    };
    let rate = |row: Row, conc: usize| {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|(r, c, _)| *r == row && *c == conc)
            .flat_map(|(_, _, v)| v.iter().map(|r| r.rate))
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "\nnetlet-bench (host + fixture driver over unix sockets, same run; median of {} runs, (min–max))\n",
        args.repeat
    );
    println!(
        "{:<44} {:>4} {:>22} {:>22} {:>10} {:>9}",
        "measurement", "conc", "p50", "p99", "calls/s", "p50/bare"
    );
    let bare50 = |conc| spread(Row::Bare, conc, |r| r.p50).median;
    for conc in [1, 64] {
        for (row, name) in ROWS {
            let p50 = spread(row, conc, |r| r.p50);
            println!(
                "{:<44} {:>4} {:>22} {:>22} {:>10.0} {:>8.1}×",
                name,
                conc,
                p50.us(),
                spread(row, conc, |r| r.p99).us(),
                rate(row, conc),
                ratio(p50.median, bare50(conc))
            );
        }
    }
    let f50 = Spread::of(&fsyncs.iter().map(|r| r.p50).collect::<Vec<_>>());
    let f99 = Spread::of(&fsyncs.iter().map(|r| r.p99).collect::<Vec<_>>());
    println!(
        "{:<44} {:>4} {:>22} {:>22} {:>10} {:>9}",
        "anchor: 4 KiB write + fsync in state dir",
        1,
        f50.us(),
        f99.us(),
        "-",
        "-"
    );
    // The targets, per run (the figures of one run against that run's anchors), then overall.
    let per_run = |row: Row, conc: usize| -> Vec<Duration> {
        runs.iter()
            .filter(|(r, c, _)| *r == row && *c == conc)
            .flat_map(|(_, _, v)| v.iter().map(|r| r.p50))
            .collect()
    };
    let (bare1, direct1, routed1, ad1) = (
        per_run(Row::Bare, 1),
        per_run(Row::Direct, 1),
        per_run(Row::Routed, 1),
        per_run(Row::AttachDetach, 1),
    );
    let added: Vec<f64> = (0..bare1.len())
        .map(|i| ratio(routed1[i].saturating_sub(direct1[i]), bare1[i]))
        .collect();
    let budget: Vec<f64> = (0..bare1.len())
        .map(|i| ratio(ad1[i], bare1[i] * 4 + fsyncs[i].p50))
        .collect();
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "\n(a) the host's hop at c=1: routed - direct = {} bare hops at p50 (median; each run: {}); target <= 1: {}",
        format_args!("{:.2}", median(&added)),
        show(&added),
        if median(&added) <= 1.0 {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "(b) attach+detach at c=1 = {:.2} x (4 bare hops + 1 fsync) at p50 (median; each run: {}); target <= 1: {}",
        median(&budget),
        show(&budget),
        if median(&budget) <= 1.0 {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "group commit: {:.0} pairs/s at c=64 vs {:.0} at c=1 ({:.1}x)",
        rate(Row::AttachDetach, 64),
        rate(Row::AttachDetach, 1),
        rate(Row::AttachDetach, 64) / rate(Row::AttachDetach, 1)
    );
    Ok(())
}
