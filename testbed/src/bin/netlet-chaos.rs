//! netlet-chaos: pods and Services churned through a real host with the bridge and nft drivers
//! in a node namespace, while the host and each driver are killed with SIGKILL at random
//! points. The program plays the container runtime: it attaches pods (each in a namespace of
//! its own), detaches them, and when a call fails it does what containerd does — DetachPod
//! after a failed AttachPod, retried until it succeeds — and it keeps a Service whose
//! endpoints are its live pods. Afterwards, with no garbage collection run:
//!
//! - every pod it still holds is attached exactly once (host record, driver record, one veth)
//!   with the address it was given, and that address is on the pod's `eth0`;
//! - nothing leaked: no host or driver record, veth or bridge port of a pod it let go, no
//!   nftables element for an address that is no longer an endpoint.
//!
//! Prints faults injected, faults survived (the node ready again), and leaks (target 0); exits
//! non-zero on a leak or a fault not survived. Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    AttachPodRequest, DetachPodRequest, Endpoint, EndpointUpsert, NetworkReadyRequest, PodSandbox,
    ProgramServiceRequest, Service, ServiceKey, ServicePort,
};
use netlet_testbed::harness::{Node, bridge_driver, listed, nft_driver};
use netlet_testbed::probe::{self, NetNs};

#[derive(Parser)]
#[command(about = "netlet chaos: kill -9 the host and its drivers during pod and Service churn")]
struct Args {
    /// Pods attached (and most detached again) over the run.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Concurrent runtime workers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Faults injected (SIGKILL of the host, the bridge driver or the nft driver).
    #[arg(long, default_value_t = 30)]
    faults: usize,
    /// Pods each worker keeps at most (the rest are detached as it goes).
    #[arg(long, default_value_t = 6)]
    keep: usize,
    /// Random seed (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A pod the runtime holds: its namespace and the address AttachPod gave it.
struct Held {
    ns: NetNs,
    address: String,
}

/// What the runtime holds, shared by the workers and the Service writer.
type Pods = Arc<Mutex<BTreeMap<String, Held>>>;

const NETWORK_V4: &str = "10.244.0.0/16";

/// Connects, retrying while the host is away.
async fn clients(socket: &Path) -> Clients {
    loop {
        if let Ok(c) = Clients::connect(socket, Some(Duration::from_secs(2))).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// DetachPod until it succeeds (the runtime cannot drop a sandbox whose teardown failed).
async fn detach_until_done(socket: &Path, id: &str) {
    loop {
        let mut c = clients(socket).await;
        match c
            .pods
            .detach_pod(DetachPodRequest {
                sandbox_id: id.to_string(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn worker(
    me: usize,
    socket: PathBuf,
    pods: Pods,
    budget: Arc<Mutex<usize>>,
    keep: usize,
    seed: u64,
) {
    let mut rng = Rng(seed ^ (me as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut mine: Vec<String> = Vec::new();
    loop {
        let attach = {
            let mut b = budget.lock().unwrap();
            if *b == 0 {
                // The churn is over: what this worker holds stays, to be checked.
                return;
            }
            if mine.len() < keep || rng.below(2) == 0 {
                *b -= 1;
                Some(*b)
            } else {
                None
            }
        };
        match attach {
            Some(n) => {
                let id = format!("chaos-{n}");
                let ns = NetNs::create(&format!("netlet-chaos-{}-{n}", std::process::id()))
                    .expect("pod namespace");
                let req = AttachPodRequest {
                    sandbox: Some(PodSandbox {
                        id: id.clone(),
                        name: format!("pod-{n}"),
                        namespace: "chaos".into(),
                        uid: id.clone(),
                        netns_path: ns.path.display().to_string(),
                        ..Default::default()
                    }),
                    networks: vec![],
                };
                let mut c = clients(&socket).await;
                match c.pods.attach_pod(req).await {
                    Ok(r) => {
                        let address = r
                            .into_inner()
                            .attachments
                            .first()
                            .and_then(|a| a.ips.first())
                            .map(|ip| ip.address.clone())
                            .unwrap_or_default();
                        pods.lock()
                            .unwrap()
                            .insert(id.clone(), Held { ns, address });
                        mine.push(id);
                    }
                    Err(_) => {
                        // containerd: a failed ADD is followed by DEL before the sandbox goes.
                        detach_until_done(&socket, &id).await;
                    }
                }
            }
            None => {
                let id = mine.remove(rng.below(mine.len() as u64) as usize);
                detach_until_done(&socket, &id).await;
                pods.lock().unwrap().remove(&id);
            }
        }
    }
}

/// Keeps the Service `chaos/web` at the runtime's live pods as endpoints (full syncs).
async fn services(socket: PathBuf, pods: Pods, stop: Arc<Mutex<bool>>) {
    let mut generation = 0u64;
    let key = ServiceKey {
        namespace: "chaos".into(),
        name: "web".into(),
    };
    while !*stop.lock().unwrap() {
        generation += 1;
        let addresses: Vec<String> = pods
            .lock()
            .unwrap()
            .values()
            .filter_map(|h| h.address.split('/').next().map(String::from))
            .collect();
        let req = ProgramServiceRequest {
            epoch: 1,
            generation,
            full_sync: true,
            service_upserts: vec![Service {
                key: Some(key.clone()),
                cluster_ips: vec!["10.96.0.10".into()],
                ports: vec![ServicePort {
                    port: 80,
                    target_port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            endpoint_upserts: addresses
                .into_iter()
                .map(|a| EndpointUpsert {
                    service: Some(key.clone()),
                    endpoint: Some(Endpoint {
                        address: a,
                        ready: true,
                        serving: true,
                        ..Default::default()
                    }),
                })
                .collect(),
            ..Default::default()
        };
        let mut c = clients(&socket).await;
        let _ = c.services.program_service(req).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the node is ready (the bridge's network) and the nft driver is registered.
async fn ready(socket: &Path) -> bool {
    let Ok(mut c) = Clients::connect(socket, Some(Duration::from_secs(1))).await else {
        return false;
    };
    let Ok(r) = c
        .node
        .network_ready(NetworkReadyRequest {
            network: "default".into(),
        })
        .await
    else {
        return false;
    };
    let r = r.into_inner().readiness.unwrap_or_default();
    r.ready
        && r.conditions.iter().any(|c| {
            c.driver == "nft"
                && c.r#type == "DriverReady"
                && c.status == netlet_sdk::proto::ConditionStatus::True as i32
        })
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The runtime's view against the node's: (leaks, wrong attachments).
async fn inspect(
    node: &Node,
    c: &Clients,
    held: &BTreeMap<String, Held>,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut leaks: Vec<String> = Vec::new();
    let mut wrong: Vec<String> = Vec::new();
    let host_pods = listed(c).await;
    let bridge_sock = node.host.dir.path().join("run/drivers/bridge.sock");
    let bridge_pods = listed(&Clients::connect(&bridge_sock, None).await?).await;
    for (who, listed) in [("host", &host_pods), ("bridge driver", &bridge_pods)] {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in listed {
            let id = p.sandbox.as_ref().map(|s| s.id.clone()).unwrap_or_default();
            let addrs = p
                .attachments
                .iter()
                .flat_map(|a| a.ips.iter().map(|i| i.address.clone()))
                .collect();
            if seen.insert(id.clone(), addrs).is_some() {
                wrong.push(format!("{who}: {id} listed twice"));
            }
        }
        for (id, addrs) in &seen {
            match held.get(id) {
                None => leaks.push(format!("{who} record of {id}, which the runtime let go")),
                Some(h) if addrs != &vec![h.address.clone()] => wrong.push(format!(
                    "{who}: {id} has {addrs:?}, the runtime was given {}",
                    h.address
                )),
                _ => {}
            }
        }
        for id in held.keys() {
            if !seen.contains_key(id) {
                wrong.push(format!(
                    "{who}: {id} is held by the runtime but not attached"
                ));
            }
        }
    }
    for (id, h) in held.iter() {
        match probe::interfaces(&h.ns.path) {
            Ok(ifs)
                if ifs
                    .get("eth0")
                    .is_some_and(|i| i.addresses.contains(&h.address)) => {}
            other => wrong.push(format!(
                "{id}: eth0 does not carry {}: {other:?}",
                h.address
            )),
        }
    }
    let node_ifs = probe::interfaces(&node.netns.path).map_err(anyhow::Error::msg)?;
    let veths = node_ifs.keys().filter(|n| n.starts_with("veth")).count();
    if veths != held.len() {
        leaks.push(format!(
            "{veths} veths on the node for {} pods held",
            held.len()
        ));
    }
    // nftables: addresses of pods let go must not be endpoints any more.
    let ruleset = node
        .command(
            &netlet_testbed::harness::which("nft").ok_or_else(|| anyhow::anyhow!("nft missing"))?,
        )
        .args(["list", "ruleset"])
        .output()?;
    let text = String::from_utf8_lossy(&ruleset.stdout);
    let live: BTreeSet<String> = held
        .values()
        .filter_map(|h| h.address.split('/').next().map(String::from))
        .collect();
    let re = regex::Regex::new(r"\b10\.244\.\d+\.\d+\b(/)?")?;
    let mut stale: BTreeSet<String> = BTreeSet::new();
    for m in re.captures_iter(&text) {
        if m.get(1).is_some() {
            continue; // a CIDR, not an endpoint
        }
        let a = m.get(0).map(|x| x.as_str().to_string()).unwrap_or_default();
        if !live.contains(&a) && a != "10.244.0.1" {
            stale.insert(a);
        }
    }
    for a in stale {
        let line = text
            .lines()
            .find(|l| l.contains(&a))
            .unwrap_or_default()
            .trim()
            .chars()
            .take(160)
            .collect::<String>();
        leaks.push(format!(
            "nftables still holds {a}, no longer an endpoint: {line}"
        ));
    }
    Ok((leaks, wrong))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    println!(
        "netlet-chaos: seed {seed}, {} pods, {} workers, {} faults",
        args.pods, args.concurrency, args.faults
    );
    let drivers = bridge_driver("bridge", "default", "netlet0", &[NETWORK_V4])
        + &nft_driver("nft", &["--cluster-cidr", NETWORK_V4]);
    let mut node = Node::start("chaos", &drivers, "nodeName: node-a\n").await;
    let socket = node.host.socket.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(&socket).await {
        anyhow::ensure!(Instant::now() < deadline, "the node never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pods: Pods = Arc::default();
    let budget = Arc::new(Mutex::new(args.pods));
    let stop = Arc::new(Mutex::new(false));
    let writer = tokio::spawn(services(socket.clone(), pods.clone(), stop.clone()));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|me| {
            tokio::spawn(worker(
                me,
                socket.clone(),
                pods.clone(),
                budget.clone(),
                args.keep,
                seed,
            ))
        })
        .collect();

    // Faults spread over the churn: one each time another share of the pods has been used.
    let mut rng = Rng(seed);
    let (mut injected, mut survived) = (0usize, 0usize);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    while injected < args.faults {
        let used = args.pods - *budget.lock().unwrap();
        let due = (injected + 1) * args.pods / (args.faults + 1);
        if used < due {
            if workers.iter().all(|w| w.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
            continue;
        }
        let kind = ["host", "bridge", "nft"][rng.below(3) as usize];
        match kind {
            "host" => {
                node.host.stop_with(nix::sys::signal::Signal::SIGKILL);
                node.host.spawn().await;
            }
            driver => {
                let comm = if driver == "bridge" {
                    "netlet-bridge"
                } else {
                    "netlet-nft"
                };
                let killed = node.host.children(comm);
                for pid in &killed {
                    kill(*pid);
                }
                // Survived once a new process is there and the node is ready: the host drops
                // the old registration when the process exits, before it starts the next.
                let back = Instant::now() + Duration::from_secs(60);
                while Instant::now() < back
                    && node.host.children(comm).iter().all(|p| killed.contains(p))
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        injected += 1;
        *kinds.entry(kind).or_default() += 1;
        let back = Instant::now() + Duration::from_secs(60);
        while Instant::now() < back && !ready(&socket).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if ready(&socket).await {
            survived += 1;
        } else {
            println!("fault {injected} ({kind}): the node was not ready again within 60 s");
        }
    }
    for w in workers {
        w.await?;
    }
    *stop.lock().unwrap() = true;
    writer.await?;
    // The last Service change and resyncs settle.
    let mut c = clients(&socket).await;
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let l = c
            .services
            .list_services(netlet_sdk::proto::ListServicesRequest::default())
            .await?
            .into_inner();
        if l.drivers.iter().all(|d| d.in_sync) && !l.drivers.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < settle,
            "Services drivers never in sync: {:?}",
            l.drivers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The runtime's view against the node's. The node converges after the last fault (a
    // restarted driver is swept of what the host has no record of): looked at until it has,
    // or for 60 s.
    let held = std::mem::take(&mut *pods.lock().unwrap());
    let converging = Instant::now();
    let (leaks, wrong) = loop {
        let (leaks, wrong) = inspect(&node, &c, &held).await?;
        if (leaks.is_empty() && wrong.is_empty()) || converging.elapsed() > Duration::from_secs(60)
        {
            break (leaks, wrong);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "converged {:?} after the churn and faults ended",
        converging.elapsed()
    );
    println!(
        "faults injected: {injected} ({}), survived: {survived}; pods attached over the run: {}, held at the end: {}",
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.pods,
        held.len()
    );
    println!("leaks: {}", leaks.len());
    for l in &leaks {
        println!("  leak: {l}");
    }
    println!("wrong: {}", wrong.len());
    for w in &wrong {
        println!("  wrong: {w}");
    }
    anyhow::ensure!(
        leaks.is_empty() && wrong.is_empty() && survived == injected,
        "chaos found {} leaks, {} wrong attachments, {} faults not survived",
        leaks.len(),
        wrong.len(),
        injected - survived
    );
    Ok(())
}
