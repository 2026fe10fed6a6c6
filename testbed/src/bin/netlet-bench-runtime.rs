//! netlet-bench-runtime: what a kubelet waits for. RunPodSandbox, then StopPodSandbox +
//! RemovePodSandbox, through Debian's containerd 1.6 + runc with netlet-cni (host + bridge
//! driver, dual-stack), beside the same containerd with the CNI reference plugins (bridge +
//! host-local, dual-stack), each in a node namespace of its own, in the same run, the two
//! sides alternating. The times are measured by the CRI client (testbed/cri) around each call.
//! As root; needs containerd, runc, containernetworking-plugins and Go.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use netlet_testbed::harness::{CNI_PLUGIN_DIR, Node, bin, bridge_driver};
use netlet_testbed::probe::{self, NetNs};
use netlet_testbed::runtime::{CONTAINERD2_VERSION, Containerd, Release, build_cri_tools};
use netlet_testbed::stats::{ms, pct};
use serde_json::json;

#[derive(Parser)]
#[command(about = "RunPodSandbox through containerd with netlet-cni vs the CNI reference plugins")]
struct Args {
    /// Sandboxes made and removed per repetition and side.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Repetitions (the sides alternate).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Which containerd: Debian's 1.6, or 2.x built from its Go module (cached in
    /// $NETLET_TOOLS_DIR, default /var/tmp/netlet-tools).
    #[arg(long, default_value = "1.6", value_parser = ["1.6", "2"])]
    containerd: String,
}

fn bench(
    c: &Containerd,
    rounds: usize,
    prefix: &str,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let r = c
        .cri(&[
            "--timeout",
            "10m",
            "bench",
            "--rounds",
            &rounds.to_string(),
            "--prefix",
            prefix,
        ])
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.log()))?;
    let get = |k: &str| -> Vec<Duration> {
        r[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_f64())
            .map(|m| Duration::from_secs_f64(m / 1e3))
            .collect()
    };
    Ok((get("runMs"), get("teardownMs")))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: it makes network namespaces and runs containerd");
    }
    let work = tempfile::Builder::new()
        .prefix("netlet-rtbench-")
        .tempdir()?;
    let w = work.path();
    let (cri_probe, image) = build_cri_tools(w).map_err(anyhow::Error::msg)?;
    let release = match args.containerd.as_str() {
        "2" => Release::built(CONTAINERD2_VERSION).map_err(anyhow::Error::msg)?,
        _ => Release::Debian,
    };
    let cni = |p: &str| Path::new(CNI_PLUGIN_DIR).join(p);

    // netlet: host + bridge driver in a node namespace.
    let node = Node::start(
        "rtbench",
        &bridge_driver(
            "bridge",
            "default",
            "netlet0",
            &["10.244.0.0/24", "fd00:10:244::/64"],
        ),
        "",
    )
    .await;
    node.host.wait_ready("").await;
    let ours = Containerd::start(
        &release,
        &w.join("netlet"),
        Some(&node.netns.path),
        &[("netlet", bin("netlet-cni")), ("loopback", cni("loopback"))],
        &json!({"cniVersion": "1.0.0", "name": "netlet",
                "plugins": [{"type": "netlet", "socket": node.host.socket}]}),
        &cri_probe,
        &image,
    )
    .map_err(anyhow::Error::msg)?;

    // The anchor: the reference bridge + host-local, in a node namespace of its own.
    let ref_ns = NetNs::create(&format!("netlet-rtbench-ref-{}", std::process::id()))
        .map_err(anyhow::Error::msg)?;
    probe::link_up(&ref_ns.path, "lo").map_err(anyhow::Error::msg)?;
    let reference = Containerd::start(
        &release,
        &w.join("reference"),
        Some(&ref_ns.path),
        &[
            ("bridge", cni("bridge")),
            ("host-local", cni("host-local")),
            ("loopback", cni("loopback")),
        ],
        &json!({"cniVersion": "1.0.0", "name": "reference", "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": true,
            "ipam": {"type": "host-local",
                     "ranges": [[{"subnet": "10.245.0.0/24"}], [{"subnet": "fd00:10:245::/64"}]],
                     "dataDir": w.join("ipam")}}]}),
        &cri_probe,
        &image,
    )
    .map_err(anyhow::Error::msg)?;

    // Warm up both (image unpack, first bridge).
    bench(&ours, 3, "warm").context("netlet warm-up")?;
    bench(&reference, 3, "warm").context("reference warm-up")?;
    let (mut o_run, mut o_down, mut r_run, mut r_down) = (vec![], vec![], vec![], vec![]);
    let mut spread = Vec::new();
    for i in 0..args.repeats {
        let (mut a, b) = bench(&ours, args.rounds, &format!("n{i}")).context("netlet")?;
        let (mut c, d) = bench(&reference, args.rounds, &format!("r{i}")).context("reference")?;
        spread.push((pct(&mut a, 0.5), pct(&mut c, 0.5)));
        o_run.extend(a);
        o_down.extend(b);
        r_run.extend(c);
        r_down.extend(d);
    }
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64().max(1e-9);
    println!(
        "\nnetlet-bench-runtime: containerd {} + runc, {} x {} sandboxes per side (dual-stack)\n",
        release.describe(),
        args.repeats,
        args.rounds
    );
    println!(
        "{:<44}{:>22}{:>26}{:>10}",
        "measurement", "netlet-cni", "bridge + host-local", "ratio"
    );
    for (what, ours, theirs) in [
        ("RunPodSandbox, p50 / p99", &mut o_run, &mut r_run),
        (
            "StopPodSandbox + RemovePodSandbox, p50 / p99",
            &mut o_down,
            &mut r_down,
        ),
    ] {
        let (a50, a99) = (pct(ours, 0.5), pct(ours, 0.99));
        let (b50, b99) = (pct(theirs, 0.5), pct(theirs, 0.99));
        println!(
            "{:<44}{:>22}{:>26}{:>9.2}x",
            what,
            format!("{} / {}", ms(a50), ms(a99)),
            format!("{} / {}", ms(b50), ms(b99)),
            ratio(a50, b50)
        );
    }
    let per: Vec<String> = spread
        .iter()
        .map(|(a, b)| format!("{} vs {}", ms(*a), ms(*b)))
        .collect();
    println!("RunPodSandbox p50 per repetition: {}", per.join("; "));
    drop(ours);
    drop(reference);
    Ok(())
}
