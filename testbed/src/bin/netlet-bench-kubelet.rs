//! `netlet-bench-kubelet [--pods 50] [--services 10]`: a cluster's network as the kubelet and
//! a pod see it, netlet beside the reference CNI plugins (bridge, host-local, portmap, routes
//! between the nodes by hand) with kube-proxy in nftables mode, in the same run: each on a
//! two-node cluster of its own (`testbed/k8s/cluster.sh`: real kube-apiserver, controller
//! manager, scheduler, containerd and kubelets), one after the other.
//!
//! - pod created → Running with its IP: `--pods` pods created at once (the scheduler spreads
//!   them), each timed from its first appearance to its first Running-with-IP in one watch of
//!   the API server (both instants seen by the same stream);
//! - Service created → answering from a pod on another node: a client on node-a asks a fixed
//!   ClusterIP over and over (curl, 50 ms timeout: the resolution) before the Service exists;
//!   timed from the moment `kubectl apply` of the Service starts to the client's first answer
//!   from the server on node-b (the same clock: one machine); the apply's own time printed
//!   apart.

use std::collections::HashMap;
use std::io::BufRead;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use netlet_testbed::cluster::{Cluster, Topology};
use netlet_testbed::stats::{ms, pct, ratio};

#[derive(Parser)]
struct Args {
    /// Pods created at once.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Services created one after the other.
    #[arg(long, default_value_t = 10)]
    services: usize,
}

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.56";
const PAUSE: &str = "registry.k8s.io/pause:3.10.1";

struct Figures {
    pod_running: Vec<Duration>,
    service_live: Vec<Duration>,
    create_call: Vec<Duration>,
}

fn pod(name: &str, node: Option<&str>, image: &str, args: &str, labels: &str) -> String {
    let node = node
        .map(|n| format!("\n  nodeName: {n}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{{labels}}}}}\nspec:{node}\n  containers:\n  - name: c\n    image: {image}\n    args: [{args}]\n---\n"
    )
}

fn measure(c: &Cluster, a: &Args) -> Result<Figures, String> {
    c.kubectl(&["create", "namespace", "bench"])?;
    c.eventually("the bench namespace's service account", 60, || {
        c.kubectl(&["-n", "bench", "get", "serviceaccount", "default"])
    });
    // Pods: one watch, every line timestamped as it arrives.
    let mut watch = c
        .kubectl_child(&[
            "-n",
            "bench",
            "get",
            "pods",
            "-w",
            "--output-watch-events",
            "-o",
            "jsonpath={.object.metadata.name} {.object.status.phase} {.object.status.podIP}{\"\\n\"}",
        ])
        .map_err(|e| e.to_string())?;
    let out = watch.stdout.take().ok_or("no watch output")?;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut yaml = String::new();
    for i in 0..a.pods {
        // The pause image: what a pod's start costs beyond its network stays small and the
        // same for both.
        yaml += &pod(&format!("p{i}"), None, PAUSE, "", "app: bench");
    }
    c.apply(&yaml)?;
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while running.len() < a.pods {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = rx
            .recv_timeout(left)
            .map_err(|_| format!("{} of {} pods Running within 300 s", running.len(), a.pods))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = f.first() else { continue };
        seen.entry(name.to_string()).or_insert(at);
        if f.get(1) == Some(&"Running") && f.get(2).is_some_and(|ip| !ip.is_empty()) {
            running.entry(name.to_string()).or_insert(at);
        }
    }
    let _ = watch.kill();
    let pod_running = running.iter().map(|(n, t)| *t - seen[n]).collect();

    // Services: a server on node-b, a client on node-a.
    c.apply(
        &(pod(
            "server",
            Some("node-b"),
            AGNHOST,
            "netexec, --http-port=8080",
            "app: server",
        ) + &pod("client", Some("node-a"), AGNHOST, "pause", "app: client")),
    )?;
    c.kubectl(&[
        "-n",
        "bench",
        "wait",
        "--for=condition=Ready",
        "pod/server",
        "pod/client",
        "--timeout=120s",
    ])?;
    let mut service_live = Vec::new();
    let mut create_call = Vec::new();
    for i in 0..a.services {
        let ip = format!("10.96.200.{}", 10 + i);
        let script = format!(
            "until curl -s -m 0.05 -o /dev/null http://{ip}/hostname; do :; done; echo $EPOCHREALTIME"
        );
        let (live, call) = std::thread::scope(|s| -> Result<(Duration, Duration), String> {
            let asker = s.spawn(|| c.exec("bench", "client", &["bash", "-c", &script]));
            std::thread::sleep(Duration::from_millis(700));
            let t0 = SystemTime::now();
            let started = Instant::now();
            c.apply(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: bench}}\nspec: {{clusterIP: {ip}, selector: {{app: server}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
            ))?;
            let call = started.elapsed();
            let answered: f64 = asker
                .join()
                .map_err(|_| "client thread")??
                .trim()
                .parse()
                .map_err(|e| format!("client time: {e}"))?;
            let t0 = t0
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            Ok((Duration::from_secs_f64((answered - t0).max(0.0)), call))
        })?;
        service_live.push(live);
        create_call.push(call);
    }
    Ok(Figures {
        pod_running,
        service_live,
        create_call,
    })
}

fn main() {
    let a = Args::parse();
    let mut results = Vec::new();
    for (name, network) in [("bn", "netlet"), ("br", "reference")] {
        let c =
            Cluster::start(name, 2, network, Topology::Segment).unwrap_or_else(|e| panic!("{e}"));
        let f = measure(&c, &a).unwrap_or_else(|e| panic!("{network}: {e}\n{}", c.logs()));
        drop(c);
        results.push((network, f));
    }
    println!(
        "netlet-bench-kubelet: 2 nodes, real kube-apiserver/kubelet/containerd 1.6, {} pods, {} Services",
        a.pods, a.services
    );
    println!(
        "| measure | netlet p50 / p99 | reference (bridge + kube-proxy nftables) p50 / p99 | netlet ÷ reference (p50) |"
    );
    println!("|---|---|---|---|");
    let row = |what: &str, f: fn(&Figures) -> &Vec<Duration>| {
        let (mut n, mut r) = (f(&results[0].1).clone(), f(&results[1].1).clone());
        let (n50, r50) = (pct(&mut n, 0.5), pct(&mut r, 0.5));
        println!(
            "| {what} | {} / {} | {} / {} | {:.2} |",
            ms(n50),
            ms(pct(&mut n, 0.99)),
            ms(r50),
            ms(pct(&mut r, 0.99)),
            ratio(n50, r50)
        );
    };
    row("pod created → Running with its IP", |f| &f.pod_running);
    row(
        "Service created → answering from node-b (client on node-a)",
        |f| &f.service_live,
    );
    row("of which the `kubectl apply` of the Service", |f| {
        &f.create_call
    });
}
