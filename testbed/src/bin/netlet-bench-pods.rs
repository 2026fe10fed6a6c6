//! netlet-bench-pods: the cost of attaching and detaching a pod, for real (veth into a fresh
//! namespace, dual-stack addresses, routes), through the host and the bridge driver, beside the
//! CNI reference plugins `bridge` + `host-local` invoked exactly as a runtime does (environment
//! and stdin, one exec per call) — same machine, same run. Also the netlet-cni shim (one exec per
//! call, forwarding to the host), which is what today's runtimes would run.
//!
//! Each side runs in a namespace of its own standing for the node; pods are namespaces created
//! up front (a runtime creates the namespace before calling the network plugin, too). Not a
//! test: it gates nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use netlet_sdk::client::Clients;
use netlet_sdk::proto::{AttachPodRequest, DetachPodRequest};
use netlet_testbed::harness::{
    CNI_PLUGIN_DIR, Node, attach_detach_rounds, bench_sandbox, bin, bridge_driver, cni_env,
    cni_exec,
};
use netlet_testbed::probe::NetNs;
use netlet_testbed::stats::{Spread, ms, pct, ratio};
use serde_json::json;

#[derive(Parser)]
#[command(about = "pod attach/detach: netlet vs the CNI reference plugins")]
struct Args {
    /// Attach+detach rounds per path at concurrency 1.
    #[arg(long, default_value_t = 300)]
    rounds: usize,
    /// Pods attached at once for the throughput rows.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Pods per throughput run.
    #[arg(long, default_value_t = 200)]
    burst: usize,
    /// Runs of every measurement; the median and the range are printed.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// One run of a row: p50, p99, operations per second.
type Run = (Duration, Duration, f64);

/// Per row (path, operation), each run.
#[derive(Default)]
struct Rows(Vec<(&'static str, &'static str, Vec<Run>)>);

impl Rows {
    fn add(&mut self, name: &'static str, op: &'static str, v: &mut [Duration]) {
        let run = (
            pct(v, 0.5),
            pct(v, 0.99),
            v.len() as f64 / v.iter().sum::<Duration>().as_secs_f64(),
        );
        match self.0.iter_mut().find(|(n, o, _)| *n == name && *o == op) {
            Some((_, _, runs)) => runs.push(run),
            None => self.0.push((name, op, vec![run])),
        }
    }
    fn p50(&self, name: &str, op: &str) -> Vec<Duration> {
        self.0
            .iter()
            .filter(|(n, o, _)| *n == name && *o == op)
            .flat_map(|(_, _, r)| r.iter().map(|x| x.0))
            .collect()
    }
}

struct Lat {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// What a runtime passes in `CNI_ARGS`.
const CNI_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p";

/// One CNI call (ADD or DEL) as a runtime makes it, timed.
fn cni_call(
    node: Option<&Path>,
    plugin: &Path,
    cmd: &str,
    id: &str,
    netns: &Path,
    conf: &str,
) -> Duration {
    let ns = netns.display().to_string();
    let t = Instant::now();
    let (st, out) = cni_exec(node, plugin, &cni_env(cmd, id, &ns, "eth0", CNI_ARGS), conf);
    let took = t.elapsed();
    assert!(st.success(), "{} {cmd}: {out}", plugin.display());
    took
}

async fn grpc_rounds(c: &Clients, pods: &[NetNs], rounds: usize) -> Lat {
    let (add, del) = attach_detach_rounds(c, pods, rounds, "g", &[]).await;
    Lat { add, del }
}

fn exec_rounds(
    node: Option<&Path>,
    plugin: &Path,
    conf: &str,
    pods: &[NetNs],
    rounds: usize,
    tag: &str,
) -> Lat {
    let mut lat = Lat {
        add: vec![],
        del: vec![],
    };
    for i in 0..rounds {
        let p = &pods[i % pods.len()];
        let id = format!("{tag}{i}");
        lat.add
            .push(cni_call(node, plugin, "ADD", &id, &p.path, conf));
        lat.del
            .push(cni_call(node, plugin, "DEL", &id, &p.path, conf));
    }
    lat
}

/// Attaches `burst` pods `conc` at a time, then detaches them; returns attaches per second.
async fn grpc_throughput(n: &Node, pods: &[NetNs], conc: usize, burst: usize) -> f64 {
    let c = n.host.clients().await;
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(conc));
    let t = Instant::now();
    let tasks: Vec<_> = (0..burst)
        .map(|i| {
            let (c, sem, path) = (c.clone(), sem.clone(), pods[i].path.clone());
            tokio::spawn(async move {
                let _p = sem.acquire_owned().await;
                c.pods
                    .clone()
                    .attach_pod(AttachPodRequest {
                        sandbox: Some(bench_sandbox(&format!("t{i}"), &path)),
                        networks: vec![],
                    })
                    .await
                    .expect("AttachPod");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("attach task");
    }
    let rate = burst as f64 / t.elapsed().as_secs_f64();
    for i in 0..burst {
        c.pods
            .clone()
            .detach_pod(DetachPodRequest {
                sandbox_id: format!("t{i}"),
                ..Default::default()
            })
            .await
            .expect("DetachPod");
    }
    rate
}

fn exec_throughput(
    node: Option<&Path>,
    plugin: &Path,
    conf: &str,
    pods: &[NetNs],
    conc: usize,
    burst: usize,
    tag: &str,
) -> f64 {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..conc {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= burst {
                        return;
                    }
                    cni_call(
                        node,
                        plugin,
                        "ADD",
                        &format!("{tag}{i}"),
                        &pods[i].path,
                        conf,
                    );
                }
            });
        }
    });
    let rate = burst as f64 / t.elapsed().as_secs_f64();
    for (i, p) in pods.iter().enumerate().take(burst) {
        cni_call(node, plugin, "DEL", &format!("{tag}{i}"), &p.path, conf);
    }
    rate
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bridge_plugin = PathBuf::from(CNI_PLUGIN_DIR).join("bridge");
    anyhow::ensure!(
        bridge_plugin.is_file(),
        "{} missing: apt-get install containernetworking-plugins",
        bridge_plugin.display()
    );
    let pid = std::process::id();
    let pool = args.burst.max(args.concurrency).max(16);
    let pods: Vec<NetNs> = (0..pool)
        .map(|i| NetNs::create(&format!("netlet-bench-pod{i}-{pid}")).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;

    // netlet: host + bridge driver in their node namespace.
    let n = Node::start(
        "bench",
        &bridge_driver(
            "bridge",
            "default",
            "netlet0",
            &["10.244.0.0/22", "fd00:10:244::/64"],
        ),
        "",
    )
    .await;
    n.host.wait_ready("").await;
    let shim_conf =
        json!({"cniVersion": "1.0.0", "name": "netlet", "type": "netlet", "socket": n.host.socket})
            .to_string();
    // The reference plugins in a node namespace of their own.
    let ref_node =
        NetNs::create(&format!("netlet-bench-refnode-{pid}")).map_err(anyhow::Error::msg)?;
    let data = tempfile::tempdir()?;
    let ref_conf = json!({
        "cniVersion": "1.0.0", "name": "reference", "type": "bridge", "bridge": "cni0", "isGateway": true,
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.88.0.0/22"}], [{"subnet": "fd00:88::/64"}]],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
    })
    .to_string();

    let via_host = n.host.clients().await;
    let direct = Clients::connect(&n.host.dir.path().join("run/drivers/bridge.sock"), None).await?;
    // Warm-up: bridges exist, caches are hot, binaries are in the page cache.
    grpc_rounds(&via_host, &pods, 20).await;
    exec_rounds(None, &bin("netlet-cni"), &shim_conf, &pods, 5, "w");
    exec_rounds(
        Some(&ref_node.path),
        &bridge_plugin,
        &ref_conf,
        &pods,
        5,
        "w",
    );

    const HOST: &str = "netlet: AttachPod/DetachPod via host (gRPC)";
    const DIRECT: &str = "  of which: bridge driver alone (no host)";
    const SHIM: &str = "netlet-cni shim exec -> host";
    const REF: &str = "anchor: CNI bridge + host-local exec";
    const EXEC: &str = "anchor: exec of cat (any exec plugin's floor)";
    let mut rows = Rows::default();
    let mut rates: Vec<(f64, f64, f64)> = Vec::new();
    for _ in 0..args.repeat {
        let mut g = grpc_rounds(&via_host, &pods, args.rounds).await;
        rows.add(HOST, "attach", &mut g.add);
        rows.add(HOST, "detach", &mut g.del);
        let mut d = grpc_rounds(&direct, &pods, args.rounds).await;
        rows.add(DIRECT, "attach", &mut d.add);
        rows.add(DIRECT, "detach", &mut d.del);
        let mut s = exec_rounds(
            None,
            &bin("netlet-cni"),
            &shim_conf,
            &pods,
            args.rounds,
            "s",
        );
        rows.add(SHIM, "ADD", &mut s.add);
        rows.add(SHIM, "DEL", &mut s.del);
        let mut r = exec_rounds(
            Some(&ref_node.path),
            &bridge_plugin,
            &ref_conf,
            &pods,
            args.rounds,
            "r",
        );
        rows.add(REF, "ADD", &mut r.add);
        rows.add(REF, "DEL", &mut r.del);
        let mut x = exec_rounds(
            None,
            Path::new("/bin/cat"),
            &shim_conf,
            &pods,
            args.rounds,
            "x",
        );
        rows.add(EXEC, "exec", &mut x.add);
        let g_rate = grpc_throughput(&n, &pods, args.concurrency, args.burst).await;
        let s_rate = exec_throughput(
            None,
            &bin("netlet-cni"),
            &shim_conf,
            &pods,
            args.concurrency,
            args.burst,
            "st",
        );
        let r_rate = exec_throughput(
            Some(&ref_node.path),
            &bridge_plugin,
            &ref_conf,
            &pods,
            args.concurrency,
            args.burst,
            "rt",
        );
        rates.push((g_rate, s_rate, r_rate));
    }

    println!(
        "\nnetlet-bench-pods: attach = veth into a fresh netns + IPv4 + IPv6 + routes, same run, {} rounds per path; median of {} runs (min–max)\n",
        args.rounds, args.repeat
    );
    println!(
        "{:<44} {:<7} {:>22} {:>22} {:>8} {:>11}",
        "path", "op", "p50", "p99", "ops/s", "CNI/netlet"
    );
    let anchor = |op: &str| {
        let op = if matches!(op, "attach" | "ADD" | "exec") {
            "ADD"
        } else {
            "DEL"
        };
        Spread::of(&rows.p50(REF, op)).median
    };
    for (name, op, runs) in &rows.0 {
        let p50 = Spread::of(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
        let p99 = Spread::of(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
        let mut rate: Vec<f64> = runs.iter().map(|r| r.2).collect();
        rate.sort_by(f64::total_cmp);
        println!(
            "{:<44} {:<7} {:>22} {:>22} {:>8.0} {:>10.1}×",
            name,
            op,
            p50.ms(),
            p99.ms(),
            rate[rate.len() / 2],
            ratio(anchor(op), p50.median)
        );
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (g_rate, s_rate, r_rate) = (
        med(rates.iter().map(|r| r.0).collect()),
        med(rates.iter().map(|r| r.1).collect()),
        med(rates.iter().map(|r| r.2).collect()),
    );
    println!(
        "\nattaches/s with {} at once ({} pods, median of {} runs): netlet gRPC {g_rate:.0}, netlet-cni {s_rate:.0}, CNI reference {r_rate:.0} ({:.1}x, {:.1}x)",
        args.concurrency,
        args.burst,
        args.repeat,
        g_rate / r_rate,
        s_rate / r_rate
    );
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let ga = Spread::of(&rows.p50(HOST, "attach")).median;
    let gd = Spread::of(&rows.p50(HOST, "detach")).median;
    let sa = Spread::of(&rows.p50(SHIM, "ADD")).median;
    let xa = Spread::of(&rows.p50(EXEC, "exec")).median;
    let (ra, rd) = (anchor("ADD"), anchor("DEL"));
    println!(
        "target attach p50 <= 2 ms and >= 10x CNI ADD: {} ({}), {:.1}x ({})",
        ms(ga),
        verdict(ga <= Duration::from_millis(2)),
        ratio(ra, ga),
        verdict(ratio(ra, ga) >= 10.0)
    );
    println!(
        "target detach p50 <= 2 ms and >= 10x CNI DEL: {} ({}), {:.1}x ({})",
        ms(gd),
        verdict(gd <= Duration::from_millis(2)),
        ratio(rd, gd),
        verdict(ratio(rd, gd) >= 10.0)
    );
    println!(
        "target shim ADD within 1 ms of the gRPC attach: +{} ({}); of which exec alone {}",
        ms(sa.saturating_sub(ga)),
        verdict(sa.saturating_sub(ga) <= Duration::from_millis(1)),
        ms(xa)
    );
    println!(
        "target attaches/s at {} >= 10x the reference: {:.1}x ({})",
        args.concurrency,
        g_rate / r_rate,
        verdict(g_rate / r_rate >= 10.0)
    );
    Ok(())
}
