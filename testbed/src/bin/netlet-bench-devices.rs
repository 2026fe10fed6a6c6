//! netlet-bench-devices: the cost of attaching a pod with a device (the devices driver moves an
//! allocated netdev into the pod's namespace and configures its MTU, address and a route) and
//! of detaching it (moved back, its settings restored), through the host; beside, from the
//! same run, a plain veth attach through the same host (the bridge driver) and the CNI
//! reference plugin for the same job, `host-device` with `static` IPAM, invoked as a runtime
//! does. Devices are veth ends made for the run (the kernel here has no dummy devices). Not a
//! test: it gates nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use netlet_sdk::proto::{AllocateDeviceRequest, DeviceRequest, NetworkSelection};
use netlet_testbed::harness::{
    CNI_PLUGIN_DIR, Node, attach_detach_rounds, bin, bridge_driver, cni_env, cni_exec,
};
use netlet_testbed::probe::{self, NetNs};
use netlet_testbed::stats::{Spread, pct, ratio};
use serde_json::json;

#[derive(Parser)]
#[command(about = "pod attach/detach with a device: netlet vs plain veth vs CNI host-device")]
struct Args {
    /// Attach+detach rounds per path.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Runs of every measurement; the median and the range are printed.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// Attach+detach rounds with the CNI reference plugin, one exec per call, inside `node`.
fn cni_rounds(node: &Path, conf: &str, pods: &[NetNs], n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let plugin = PathBuf::from(CNI_PLUGIN_DIR).join("host-device");
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("c{i}");
        let ns = pods[i % pods.len()].path.display().to_string();
        for (cmd, out) in [("ADD", &mut add), ("DEL", &mut del)] {
            let t = Instant::now();
            let (st, res) = cni_exec(
                Some(node),
                &plugin,
                &cni_env(cmd, &id, &ns, "eth0", "IgnoreUnknown=1"),
                conf,
            );
            out.push(t.elapsed());
            assert!(st.success(), "host-device {cmd}: {res}");
        }
    }
    (add, del)
}

/// A row (path, operation) with each run's (p50, p99).
type Row = (&'static str, &'static str, Vec<(Duration, Duration)>);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pid = std::process::id();
    let pods: Vec<NetNs> = (0..16)
        .map(|i| {
            NetNs::create(&format!("netlet-benchdev-pod{i}-{pid}")).map_err(anyhow::Error::msg)
        })
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("devices.yaml");
    std::fs::write(
        &cfg,
        "networks: [devices]\npools:\n- name: bench\n  select: {names: [\"bdev*\"]}\n",
    )?;
    let drivers = bridge_driver(
        "bridge",
        "default",
        "netlet0",
        &["10.244.0.0/22", "fd00:10:244::/64"],
    ) + &format!(
        "- name: devices\n  command: {}\n  args: [--config, {}]\n",
        bin("netlet-devices").display(),
        cfg.display()
    );
    let n = Node::start("benchdev", &drivers, "").await;
    probe::veth_inside(&n.netns.path, "bdev0", "bpeer0").map_err(anyhow::Error::msg)?;
    probe::add_address(&n.netns.path, "bpeer0", "192.168.90.1/24").map_err(anyhow::Error::msg)?;
    n.host.wait_ready("").await;
    n.host.wait_driver("devices").await;
    let c = n.host.clients().await;
    c.devices
        .clone()
        .allocate_device(AllocateDeviceRequest {
            claim_uid: "bench".into(),
            requests: vec![DeviceRequest {
                name: "nic".into(),
                device_id: "bdev0".into(),
                config: br#"{"mtu": 1400, "addresses": ["192.168.90.2/24"],
                    "routes": [{"destination": "10.90.0.0/16", "gateway": "192.168.90.1"}]}"#
                    .to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await?;
    let device = [NetworkSelection {
        network: "devices".into(),
        interface_name: "eth0".into(),
        device_id: "bdev0".into(),
        ..Default::default()
    }];
    // The reference plugin's node, with its own device.
    let ref_node =
        NetNs::create(&format!("netlet-benchdev-ref-{pid}")).map_err(anyhow::Error::msg)?;
    probe::veth_inside(&ref_node.path, "rdev0", "rpeer0").map_err(anyhow::Error::msg)?;
    probe::add_address(&ref_node.path, "rpeer0", "192.168.91.1/24").map_err(anyhow::Error::msg)?;
    let ref_conf = json!({
        "cniVersion": "1.0.0", "name": "hostdev", "type": "host-device", "device": "rdev0",
        "ipam": {"type": "static", "addresses": [{"address": "192.168.91.2/24"}],
                 "routes": [{"dst": "10.91.0.0/16", "gw": "192.168.91.1"}]}
    })
    .to_string();
    // Warm-up.
    attach_detach_rounds(&c, &pods, 10, "w", &device).await;
    attach_detach_rounds(&c, &pods, 10, "v", &[]).await;
    cni_rounds(&ref_node.path, &ref_conf, &pods, 5);

    const DEV: &str = "netlet: device moved in/out via host";
    const VETH: &str = "anchor: plain veth via the same host";
    const REF: &str = "anchor: CNI host-device + static exec";
    let mut runs: Vec<Row> = Vec::new();
    let mut add = |name: &'static str, op: &'static str, v: &mut Vec<Duration>| {
        let r = (pct(v, 0.5), pct(v, 0.99));
        match runs.iter_mut().find(|(n, o, _)| *n == name && *o == op) {
            Some((_, _, x)) => x.push(r),
            None => runs.push((name, op, vec![r])),
        }
    };
    for _ in 0..args.repeat {
        let (mut a, mut d) = attach_detach_rounds(&c, &pods, args.rounds, "d", &device).await;
        add(DEV, "attach", &mut a);
        add(DEV, "detach", &mut d);
        let (mut a, mut d) = attach_detach_rounds(&c, &pods, args.rounds, "p", &[]).await;
        add(VETH, "attach", &mut a);
        add(VETH, "detach", &mut d);
        let (mut a, mut d) = cni_rounds(&ref_node.path, &ref_conf, &pods, args.rounds);
        add(REF, "attach", &mut a);
        add(REF, "detach", &mut d);
    }
    println!(
        "\nnetlet-bench-devices: {} attach+detach rounds per path; median of {} runs (min–max)\n",
        args.rounds, args.repeat
    );
    println!(
        "{:<40} {:<7} {:>22} {:>22} {:>10} {:>12}",
        "path", "op", "p50", "p99", "veth/this", "CNI/this"
    );
    let median = |name: &str, op: &str| {
        let v: Vec<Duration> = runs
            .iter()
            .filter(|(n, o, _)| *n == name && *o == op)
            .flat_map(|(_, _, r)| r.iter().map(|x| x.0))
            .collect();
        Spread::of(&v).median
    };
    for (name, op, r) in &runs {
        let p50 = Spread::of(&r.iter().map(|x| x.0).collect::<Vec<_>>());
        let p99 = Spread::of(&r.iter().map(|x| x.1).collect::<Vec<_>>());
        println!(
            "{:<40} {:<7} {:>22} {:>22} {:>9.2}× {:>11.1}×",
            name,
            op,
            p50.ms(),
            p99.ms(),
            ratio(median(VETH, op), p50.median),
            ratio(median(REF, op), p50.median)
        );
    }
    Ok(())
}
