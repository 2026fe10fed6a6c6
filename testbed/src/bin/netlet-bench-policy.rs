//! netlet-bench-policy: network policy at scale through the host into the nft driver, in a node
//! namespace with real pods. 5k pods are known (two local, the rest other nodes' `Pod` objects
//! in 100 namespaces from the manifests directory) and 1k NetworkPolicies applied over the host
//! socket. Rows, each with its anchor from the same run:
//!
//! a. ApplyPolicy → enforced: a policy admitting the client to the isolated server is applied,
//!    and the client's connection attempts (2 ms apart) flip from dropped to answered; beside it,
//!    the same change done the naive way (the driver handed every policy again: a full sync);
//! b. a pod joining a selector: the bytes and set elements the host sends for it with 10 and with
//!    1000 policies naming the selector (flat), beside the naive bytes (every policy naming the
//!    selector re-sent with its addresses inline); and the time from AttachPod to the joined pod's
//!    first answered connection;
//! c. new-connection latency between two pods, no policy vs the 1k applied (target within 10 %);
//! d. host and driver resident memory at 1k policies / 5k pods, beside the same before loading.
//!
//! Not a test: it gates nothing. The machine is noisy: rows repeat and show p50/p99.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;
use netlet_host::netpol::{Cluster, PodInfo};
use netlet_host::policy::PolicyView;
use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    ApplyPolicyRequest, LabelSelector, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicyRule, PodSandbox, PolicyKey, PolicyKind, Protocol,
};
use netlet_testbed::harness::{Node, attach, bridge_driver, detach, nft_driver};
use netlet_testbed::probe::{self, NetNs};
use netlet_testbed::stats::{ms, pct, pid_of, rss_kib};
use prost::Message;

#[derive(Parser)]
#[command(about = "Network policy through the host at scale")]
struct Args {
    /// NetworkPolicies applied.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Pods known (other nodes' Pod objects, plus the local ones).
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    /// Rounds of each timed change.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Connections per latency sample.
    #[arg(long, default_value_t = 300)]
    connections: usize,
}

const SERVER_PORT: u16 = 8080;

fn labels(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn key(ns: &str, name: &str) -> PolicyKey {
    PolicyKey {
        kind: PolicyKind::NetworkPolicy as i32,
        namespace: ns.into(),
        name: name.into(),
    }
}

/// Background policy `i`: in namespace `ns<i % 100>`, for `app: a<i % 50>`, admitting
/// `app: a<(i+1) % 50>` of the namespaces labelled `team: t<i % 10>` on TCP 8080 — and, for
/// the first `naming` of them, the pods labelled `app: joiner` anywhere.
fn background(i: usize, naming: usize) -> NetworkPolicy {
    let mut peers = vec![NetworkPolicyPeer {
        namespace_selector: Some(labels(&[("team", &format!("t{}", i % 10))])),
        pod_selector: Some(labels(&[("app", &format!("a{}", (i + 1) % 50))])),
        ..Default::default()
    }];
    if i < naming {
        peers.push(joiner_peer());
    }
    NetworkPolicy {
        key: Some(key(&format!("ns{}", i % 100), &format!("p{i}"))),
        pod_selector: Some(labels(&[("app", &format!("a{}", i % 50))])),
        directions: vec![1],
        ingress: vec![NetworkPolicyRule {
            peers,
            ports: vec![NetworkPolicyPort {
                protocol: Protocol::Tcp as i32,
                port: u32::from(SERVER_PORT),
                ..Default::default()
            }],
        }],
        ..Default::default()
    }
}

fn joiner_peer() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(labels(&[("app", "joiner")])),
        ..Default::default()
    }
}

/// Isolates the server (no ingress rule).
fn isolate() -> NetworkPolicy {
    NetworkPolicy {
        key: Some(key("bench", "isolate-server")),
        pod_selector: Some(labels(&[("app", "server")])),
        directions: vec![1],
        ..Default::default()
    }
}

/// Admits the client (and joiners) to the server.
fn admit(name: &str) -> NetworkPolicy {
    NetworkPolicy {
        key: Some(key("bench", name)),
        pod_selector: Some(labels(&[("app", "server")])),
        directions: vec![1],
        ingress: vec![NetworkPolicyRule {
            peers: vec![
                NetworkPolicyPeer {
                    pod_selector: Some(labels(&[("app", "client")])),
                    ..Default::default()
                },
                joiner_peer(),
            ],
            ports: vec![],
        }],
        ..Default::default()
    }
}

/// The remote pods and namespaces as manifests: files of at most 1000 documents (the loader
/// refuses more in one file).
fn write_cluster(dir: &std::path::Path, pods: usize) -> std::io::Result<()> {
    let mut docs: Vec<String> = (0..100)
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: t{}}}}}\n",
                n % 10
            )
        })
        .collect();
    docs.extend((0..pods).map(|i| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{}, labels: {{app: a{}}}}}\nstatus: {{podIP: 10.50.{}.{}}}\n",
            i % 100,
            i % 50,
            i / 250,
            i % 250 + 1
        )
    }));
    for (k, chunk) in docs.chunks(1000).enumerate() {
        std::fs::write(dir.join(format!("cluster-{k}.yaml")), chunk.join("---\n"))?;
    }
    Ok(())
}

/// The same cluster as the host's resolution sees it.
fn cluster_model(pods: usize) -> Cluster {
    Cluster {
        pods: Vec::new(),
        remote: std::sync::Arc::new(
            (0..pods)
                .map(|i| PodInfo {
                    namespace: format!("ns{}", i % 100),
                    name: format!("p{i}"),
                    labels: HashMap::from([("app".to_string(), format!("a{}", i % 50))]),
                    addresses: vec![
                        format!("10.50.{}.{}", i / 250, i % 250 + 1)
                            .parse()
                            .unwrap(),
                    ],
                    ..Default::default()
                })
                .collect(),
        ),
        namespaces: (0..100)
            .map(|n| {
                (
                    format!("ns{n}"),
                    HashMap::from([("team".to_string(), format!("t{}", n % 10))]),
                )
            })
            .collect(),
        nodes: Vec::new(),
    }
}

/// (bytes of the host's batch, set elements it changes, naive bytes) when one pod labelled
/// `app: joiner` arrives and `naming` of the policies name that selector.
fn join_bytes(policies: usize, pods: usize, naming: usize) -> (usize, usize, usize) {
    let mut v = PolicyView::new(1);
    let batch = ApplyPolicyRequest {
        epoch: 1,
        generation: 1,
        full_sync: true,
        network_policies: (0..policies).map(|i| background(i, naming)).collect(),
        ..Default::default()
    };
    v.apply_socket(&batch).expect("valid batch");
    let mut c = cluster_model(pods);
    v.set_cluster(c.clone());
    c.pods.push(PodInfo {
        namespace: "bench".into(),
        name: "joiner".into(),
        labels: HashMap::from([("app".to_string(), "joiner".to_string())]),
        addresses: vec!["10.244.0.200".parse().unwrap()],
        local: true,
        ..Default::default()
    });
    let delta = v.set_cluster(c).unwrap_or_default();
    let elements: usize = delta
        .address_set_changes
        .iter()
        .map(|c| c.add.len() + c.remove.len())
        .sum();
    // The naive way: every policy naming the selector sent again, its peers' addresses inline.
    let naive = ApplyPolicyRequest {
        network_policies: (0..naming)
            .map(|i| {
                let mut p = background(i, naming);
                for peer in &mut p.ingress[0].peers {
                    peer.resolved_addresses = vec!["10.244.0.200".into()];
                }
                p
            })
            .collect(),
        ..Default::default()
    };
    (delta.encoded_len(), elements, naive.encoded_len())
}

struct Pod {
    ns: NetNs,
    ip: IpAddr,
}

async fn pod(c: &Clients, name: &str, app: &str) -> Pod {
    let ns = NetNs::create(&format!("netlet-bpol-{name}-{}", std::process::id())).expect("netns");
    let a = attach(
        c,
        PodSandbox {
            id: format!("bpol-{name}"),
            name: name.into(),
            namespace: "bench".into(),
            uid: name.into(),
            netns_path: ns.path.display().to_string(),
            labels: [("app".to_string(), app.to_string())].into(),
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
    Pod { ns, ip }
}

struct Caller {
    c: Clients,
    generation: u64,
}

impl Caller {
    async fn apply(&mut self, mut req: ApplyPolicyRequest) -> Duration {
        self.generation += 1;
        req.generation = self.generation;
        let t = Instant::now();
        self.c
            .policy
            .clone()
            .apply_policy(req)
            .await
            .expect("ApplyPolicy");
        t.elapsed()
    }
}

/// Connection attempts from `from` to `to`, 2 ms apart, until one is answered: when.
fn until_answered(from: &NetNs, to: SocketAddr, since: Instant) -> Duration {
    netlet_sdk::netns::run_in(&from.path, move || {
        loop {
            if TcpStream::connect_timeout(&to, Duration::from_millis(2)).is_ok() {
                return since.elapsed();
            }
            if since.elapsed() > Duration::from_secs(10) {
                return Duration::from_secs(10);
            }
        }
    })
    .expect("probe")
}

fn latency(client: &NetNs, to: SocketAddr, n: usize) -> (Duration, Duration) {
    probe::tcp_latencies(&client.path, to, n).expect("warm-up");
    let mut l = probe::tcp_latencies(&client.path, to, n).expect("connections");
    (pct(&mut l, 0.5), pct(&mut l, 0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let drivers = bridge_driver("bridge", "default", "netlet0", &["10.244.0.0/24"])
        + &nft_driver("nft", &["--cluster-cidr", "10.244.0.0/24"]);
    let node = Node::start(
        "bench-pol",
        &drivers,
        &format!("manifestsDir: {}\n", dir.path().display()),
    )
    .await;
    node.host.wait_ready("default").await;
    let c = node.host.clients().await;
    let host_pid = node.host.pid().unwrap_or(0);
    let driver_pid = pid_of("netlet-nft").unwrap_or(0);
    let server = pod(&c, "server", "server").await;
    let client = pod(&c, "client", "client").await;
    probe::tcp_tagged(
        &server.ns.path,
        SocketAddr::new(server.ip, SERVER_PORT),
        "server",
    )
    .map_err(anyhow::Error::msg)?;
    let to = SocketAddr::new(server.ip, SERVER_PORT);
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // (c) with no policy.
    let (l50_0, l99_0) = latency(&client.ns, to, args.connections);
    let (h0, d0) = (rss_kib(host_pid, "VmRSS:"), rss_kib(driver_pid, "VmRSS:"));

    // Load: the cluster from manifests, then the policies over the socket.
    write_cluster(dir.path(), args.pods)?;
    let mut caller = Caller {
        c: c.clone(),
        generation: 0,
    };
    let mut all: Vec<NetworkPolicy> = (0..args.policies).map(|i| background(i, 10)).collect();
    all.push(isolate());
    all.push(admit("admit-client"));
    // The Pod objects are read asynchronously: apply again until the host has seen them (its
    // sets hold at least what the same policies resolve to over the remote pods alone).
    let want = {
        let mut v = PolicyView::new(1);
        v.apply_socket(&ApplyPolicyRequest {
            epoch: 1,
            generation: 1,
            full_sync: true,
            network_policies: all.clone(),
            ..Default::default()
        })
        .expect("valid batch");
        v.set_cluster(cluster_model(args.pods));
        v.list()
            .address_sets
            .iter()
            .map(|s| s.elements.len())
            .sum::<usize>()
    };
    let t = Instant::now();
    let load = loop {
        let d = caller
            .apply(ApplyPolicyRequest {
                full_sync: true,
                network_policies: all.clone(),
                ..Default::default()
            })
            .await;
        let l = c
            .policy
            .clone()
            .list_policies(netlet_sdk::proto::ListPoliciesRequest::default())
            .await?
            .into_inner();
        if l.address_sets
            .iter()
            .map(|s| s.elements.len())
            .sum::<usize>()
            >= want
        {
            break d;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "pods never loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    rows.push((
        format!(
            "load {} policies, {} pods known (one ApplyPolicy)",
            args.policies, args.pods
        ),
        ms(load),
        String::new(),
    ));

    // (c) with the policies: the server isolated, the client admitted.
    let (l50, l99) = latency(&client.ns, to, args.connections);
    rows.push((
        format!(
            "(c) new connection client→server, {} policies, p50/p99",
            args.policies + 2
        ),
        format!("{} / {}", ms(l50), ms(l99)),
        format!(
            "no policy: {} / {} ({:+.1} % at p50; target within 10 %)",
            ms(l50_0),
            ms(l99_0),
            (l50.as_secs_f64() / l50_0.as_secs_f64() - 1.0) * 100.0
        ),
    ));

    // (a) ApplyPolicy → enforced, and the naive way.
    let mut rpc = Vec::new();
    let mut flip = Vec::new();
    let mut naive = Vec::new();
    let driver = Clients::connect(&node.host.dir.path().join("run/drivers/nft.sock"), None).await?;
    let mut driver_generation = 1u64 << 40;
    for r in 0..args.rounds {
        // Back to denied: the admitting policy goes.
        caller
            .apply(ApplyPolicyRequest {
                deletes: vec![admit("admit-client").key.unwrap_or_default()],
                ..Default::default()
            })
            .await;
        let since = Instant::now();
        let done = caller
            .apply(ApplyPolicyRequest {
                network_policies: vec![admit("admit-client")],
                ..Default::default()
            })
            .await;
        rpc.push(done);
        flip.push(until_answered(&client.ns, to, since));
        if r < 5 {
            // The naive way: the driver handed the whole (resolved) table again.
            let mut full = driver
                .policy
                .clone()
                .list_policies(netlet_sdk::proto::ListPoliciesRequest::default())
                .await?
                .into_inner();
            driver_generation += 1;
            let req = ApplyPolicyRequest {
                epoch: full.applied_epoch + 1,
                generation: driver_generation,
                full_sync: true,
                network_policies: std::mem::take(&mut full.network_policies),
                address_sets: std::mem::take(&mut full.address_sets),
                ..Default::default()
            };
            let t = Instant::now();
            driver.policy.clone().apply_policy(req).await?;
            naive.push(t.elapsed());
        }
    }
    rows.push((
        "(a) ApplyPolicy → enforced (first answered connection), p50/p99".into(),
        format!("{} / {}", ms(pct(&mut flip, 0.5)), ms(pct(&mut flip, 0.99))),
        format!(
            "ApplyPolicy answered: {} / {}; naive (full re-emit to the driver): {} / {}; kube-network-policies publishes ~300 ms",
            ms(pct(&mut rpc, 0.5)),
            ms(pct(&mut rpc, 0.99)),
            ms(pct(&mut naive, 0.5)),
            ms(pct(&mut naive, 0.99))
        ),
    ));
    // The driver now holds a table of another epoch than the host's: the host's next delta
    // is refused and it sends a full sync, as after a driver restart.

    // (b) a pod joining a selector.
    let mut join = Vec::new();
    for r in 0..args.rounds.min(20) {
        let since = Instant::now();
        let j = pod(&c, &format!("joiner{r}"), "joiner").await;
        join.push(until_answered(&j.ns, to, since));
        detach(&c, &format!("bpol-joiner{r}")).await?;
    }
    let (b10, e10, n10) = join_bytes(args.policies, args.pods, 10);
    let (b1k, e1k, n1k) = join_bytes(args.policies, args.pods, args.policies);
    rows.push((
        "(b) a pod joins a selector 10 policies name: bytes / set elements sent".into(),
        format!("{b10} B / {e10}"),
        format!("naive (the 10 policies re-sent): {n10} B"),
    ));
    rows.push((
        format!(
            "(b) a pod joins a selector {} policies name: bytes / set elements sent",
            args.policies
        ),
        format!("{b1k} B / {e1k}"),
        format!("naive (the {} policies re-sent): {n1k} B", args.policies),
    ));
    rows.push((
        "(b) AttachPod of a joining pod → its first answered connection, p50/p99".into(),
        format!("{} / {}", ms(pct(&mut join, 0.5)), ms(pct(&mut join, 0.99))),
        "includes the attach (veth, addresses) and the policy change".into(),
    ));

    // (d) memory.
    let (h1, d1) = (rss_kib(host_pid, "VmRSS:"), rss_kib(driver_pid, "VmRSS:"));
    rows.push((
        format!(
            "(d) RSS at {} policies / {} pods: host, nft driver",
            args.policies, args.pods
        ),
        format!(
            "{:.1} MiB, {:.1} MiB",
            h1 as f64 / 1024.0,
            d1 as f64 / 1024.0
        ),
        format!(
            "before loading: {:.1} MiB, {:.1} MiB",
            h0 as f64 / 1024.0,
            d0 as f64 / 1024.0
        ),
    ));

    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!("{:w$}  {:>22}  anchor (same run)", "measure", "netlet");
    for (m, v, a) in rows {
        println!("{m:w$}  {v:>22}  {a}");
    }
    Ok(())
}
