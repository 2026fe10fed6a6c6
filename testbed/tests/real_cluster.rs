//! netlet as a user meets it: a real cluster on this machine (`testbed/k8s/cluster.sh`: the API
//! server, controller manager, scheduler and two nodes, each a network namespace with its own
//! containerd and kubelet), netlet installed with `kubectl apply -f deploy/`, and then only
//! kubectl: a Deployment spread over both nodes behind a Service, pods reaching pods and the
//! Service by name from every node with their own addresses, a NetworkPolicy across nodes, the
//! readiness gate, a hostPort. Then a slice of the upstream `[sig-network] [Conformance]` e2e
//! tests (built from k8s.io/kubernetes, the cluster's version) runs against the same cluster;
//! the full runs are `testbed/k8s/e2e.sh`. A second cluster puts each node on a segment of its
//! own behind a router that carries no pod addresses: pods, Services and names across nodes
//! work there through netlet's overlay alone.
//!
//! What is expected comes from Kubernetes itself (the Node's podCIDRs the controller manager
//! allocated, the pods' names and IPs the kubelets report, the Service's ClusterIP the API server
//! allocated), never from netlet.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Mutex;

use netlet_testbed::cluster::{Cluster, Topology};
use netlet_testbed::harness::{privileged, tool};
use serde_json::Value;

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.56";

fn web() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      readinessGates: [{{conditionType: netlet.io/network-programmed}}]
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: web}}}}}}
      containers:
      - name: web
        image: {AGNHOST}
        args: [netexec, --http-port=8080]
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    )
}

/// A pod running agnhost's netexec on node `node`, with `labels`, and optionally a hostPort.
fn pod(name: &str, node: &str, labels: &str, host_port: Option<u16>) -> String {
    let port = host_port
        .map(|p| format!("\n    ports: [{{containerPort: 8080, hostPort: {p}}}]"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  containers:
  - name: c
    image: {AGNHOST}
    args: [netexec, --http-port=8080]{port}
"#
    )
}

/// One cluster at a time in this binary: each takes the machine's cores.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

struct PodInfo {
    name: String,
    node: String,
    /// The primary IP (`status.podIP`).
    ip: IpAddr,
    /// Every IP, one per family (`status.podIPs`).
    ips: Vec<IpAddr>,
}

fn pods(c: &Cluster, selector: &str) -> Vec<PodInfo> {
    c.get(&["pods", "-n", "default", "-l", selector])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PodInfo {
            name: p["metadata"]["name"].as_str().unwrap().to_string(),
            node: p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
            ip: p["status"]["podIP"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            ips: p["status"]["podIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["ip"].as_str()?.parse().ok())
                .collect(),
        })
        .collect()
}

/// `curl` from pod `from`: the body, or the error.
fn curl(c: &Cluster, from: &str, url: &str) -> Result<String, String> {
    c.exec("default", from, &["curl", "-sS", "-m", "3", url])
        .map(|s| s.trim().to_string())
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Test `t`'s cluster (`prefix` and the process id its name), wired as `topology`, once no
/// other test of this binary holds one; `None` when the test cannot run here. The guard comes
/// first so that the cluster, declared after it, is taken down before it is released.
fn start(
    t: &str,
    prefix: &str,
    topology: Topology,
) -> Option<(std::sync::MutexGuard<'static, ()>, Cluster)> {
    if !privileged(t)
        || tool("containerd", t).is_none()
        || tool("nsenter", t).is_none()
        || tool("go", t).is_none()
    {
        return None;
    }
    let one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("{prefix}{}", std::process::id() % 10000);
    Some((one, Cluster::up(t, &name, 2, topology)?))
}

/// The nodes, once Ready, each with its own v4 and v6 pod CIDRs from the controller manager
/// and netlet's condition (reported every 2 s: it may follow Ready by as much).
fn nodes_ready(c: &Cluster) -> Value {
    c.eventually("NetworkUnavailable False on every node", 30, || {
        let nodes = c.get(&["nodes"]);
        let all = nodes["items"].as_array().cloned().unwrap_or_default();
        let reported = all.iter().all(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False")
        });
        if reported && all.len() == 2 {
            Ok(())
        } else {
            Err(format!("{nodes}"))
        }
    });
    let nodes = c.get(&["nodes"]);
    let mut cidrs = BTreeSet::new();
    for n in nodes["items"].as_array().unwrap() {
        let conds = n["status"]["conditions"].as_array().unwrap();
        let cond = |t: &str| {
            conds
                .iter()
                .find(|c| c["type"] == t)
                .map(|c| c["status"].as_str().unwrap_or("").to_string())
        };
        assert_eq!(cond("Ready").as_deref(), Some("True"), "{n}");
        assert_eq!(cond("NetworkUnavailable").as_deref(), Some("False"), "{n}");
        for cidr in n["spec"]["podCIDRs"].as_array().unwrap() {
            assert!(
                cidrs.insert(cidr.as_str().unwrap().to_string()),
                "{cidr} twice"
            );
        }
    }
    assert_eq!(cidrs.len(), 4, "a v4 and a v6 pod CIDR per node: {cidrs:?}");
    nodes
}

fn node_cidrs(nodes: &Value, node: &str) -> Vec<ipnet::IpNet> {
    nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["metadata"]["name"] == node)
        .map(|n| {
            n["spec"]["podCIDRs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// A Deployment over both nodes behind a Service. Its pods carry netlet's readiness gate: the
/// rollout finishes only once the host marked each pod's network programmed. Each pod has an
/// address of each family from its node's podCIDRs.
fn roll_out_web(c: &Cluster, nodes: &Value) -> Vec<PodInfo> {
    c.apply(&web()).unwrap();
    c.kubectl(&["rollout", "status", "deployment/web", "--timeout=180s"])
        .unwrap_or_else(|e| panic!("web did not roll out: {e}\n{}", c.logs()));
    let web = pods(c, "app=web");
    assert_eq!(web.len(), 4);
    let on: BTreeSet<&str> = web.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(on.len(), 2, "spread over both nodes");
    for p in &web {
        assert_eq!(p.ips.len(), 2, "{}: {:?}", p.name, p.ips);
        for ip in &p.ips {
            assert!(
                node_cidrs(nodes, &p.node).iter().any(|n| n.contains(ip)),
                "{} ({ip}) outside its node {}'s podCIDRs",
                p.name,
                p.node
            );
        }
        let gate = c.get(&["pod", "-n", "default", &p.name]);
        let programmed = gate["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "netlet.io/network-programmed" && c["status"] == "True");
        assert!(programmed && ready(&gate), "{}: {gate}", p.name);
    }
    web
}

/// Pod to pod across nodes, each way, over each family: the answer comes from the pod asked,
/// and it saw the asker's own address of that family (no NAT between pods).
fn pod_to_pod_across_nodes(c: &Cluster, web: &[PodInfo]) {
    for from in web {
        for to in web.iter().filter(|to| to.node != from.node) {
            for ip in &to.ips {
                let at = std::net::SocketAddr::new(*ip, 8080);
                let name = curl(c, &from.name, &format!("http://{at}/hostname")).unwrap();
                assert_eq!(name, to.name, "{} → {at}", from.name);
                let seen = curl(c, &from.name, &format!("http://{at}/clientip")).unwrap();
                let seen_ip: IpAddr = seen
                    .rsplit_once(':')
                    .unwrap()
                    .0
                    .trim_matches(['[', ']'])
                    .parse()
                    .unwrap();
                let own = from.ips.iter().find(|a| a.is_ipv4() == ip.is_ipv4());
                assert_eq!(Some(&seen_ip), own, "{} → {at}", from.name);
            }
        }
    }
}

/// The Service by name from both nodes: the name resolves (netlet's DNS on the cluster DNS
/// IP, no CoreDNS) to the ClusterIP the API server allocated, and the answers come from pods
/// of both nodes. Returns the ClusterIP.
fn service_by_name_from_each_node(c: &Cluster, web: &[PodInfo]) -> String {
    let svc = c.get(&["service", "-n", "default", "web"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let names: BTreeSet<&str> = web.iter().map(|p| p.name.as_str()).collect();
    let on: BTreeSet<&str> = web.iter().map(|p| p.node.as_str()).collect();
    for node in &on {
        let from = web.iter().find(|p| p.node == *node).unwrap();
        let resolved = c
            .exec(
                "default",
                &from.name,
                &["dig", "+short", "web.default.svc.cluster.local"],
            )
            .unwrap();
        assert_eq!(resolved.trim(), cluster_ip, "from {}", from.name);
        let mut answered = BTreeSet::new();
        for _ in 0..24 {
            let who = curl(c, &from.name, "http://web/hostname").unwrap();
            assert!(names.contains(who.as_str()), "{who} is not a web pod");
            answered.insert(web.iter().find(|p| p.name == who).unwrap().node.clone());
        }
        assert_eq!(
            answered.len(),
            2,
            "from {node}: answers from {answered:?} only"
        );
    }
    cluster_ip
}

#[test]
fn a_real_cluster_through_kubectl_then_the_upstream_conformance_slice() {
    let t = "a_real_cluster_through_kubectl_then_the_upstream_conformance_slice";
    let Some((_one, c)) = start(t, "r", Topology::Segment) else {
        return;
    };
    let nodes = nodes_ready(&c);
    let web = roll_out_web(&c, &nodes);
    pod_to_pod_across_nodes(&c, &web);
    let cluster_ip = service_by_name_from_each_node(&c, &web);
    let names: BTreeSet<&str> = web.iter().map(|p| p.name.as_str()).collect();

    // A NetworkPolicy across nodes: web admits pods labelled role=client, nobody else. Two
    // pods on the other node from web-a, one labelled, one not; both reach web before.
    let target = &web[0];
    let other = web
        .iter()
        .find(|p| p.node != target.node)
        .unwrap()
        .node
        .clone();
    c.apply(
        &(pod("client-ok", &other, "role: client", None)
            + "---\n"
            + &pod("client-no", &other, "role: other", None)),
    )
    .unwrap();
    c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/client-ok",
        "pod/client-no",
        "--timeout=120s",
    ])
    .unwrap();
    let url = format!("http://{}:8080/hostname", target.ip);
    for client in ["client-ok", "client-no"] {
        assert_eq!(
            curl(&c, client, &url).unwrap(),
            target.name,
            "{client} before"
        );
    }
    c.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-clients, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 8080}]}]\n",
    )
    .unwrap();
    c.eventually(
        "the policy isolates web from client-no",
        30,
        || match curl(&c, "client-no", &url) {
            Err(_) => Ok(()),
            Ok(s) => Err(format!("client-no still answered: {s}")),
        },
    );
    assert_eq!(
        curl(&c, "client-ok", &url).unwrap(),
        target.name,
        "client-ok after"
    );
    // Through the Service too.
    assert!(
        names.contains(
            curl(&c, "client-ok", "http://web/hostname")
                .unwrap()
                .as_str()
        )
    );
    assert!(curl(&c, "client-no", "http://web/hostname").is_err());
    c.kubectl(&["delete", "networkpolicy", "web-clients"])
        .unwrap();
    c.eventually("client-no admitted again", 30, || {
        curl(&c, "client-no", &url)
    });

    // A hostPort: answered on its node's address from outside the cluster (the control
    // plane's namespace stands for the outside).
    c.apply(&pod("hostport", "node-a", "app: hostport", Some(30081)))
        .unwrap();
    c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/hostport",
        "--timeout=120s",
    ])
    .unwrap();
    let node_a_ip = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["metadata"]["name"] == "node-a")
        .and_then(|n| {
            n["status"]["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["type"] == "InternalIP")
                .map(|a| a["address"].as_str().unwrap().to_string())
        })
        .unwrap();
    let outside = c.eventually("the hostPort answers on node-a's address", 30, || {
        let o = Command::new("nsenter")
            .arg(format!("--net={}", c.control_plane_netns().display()))
            .args(["curl", "-sS", "-m", "3"])
            .arg(format!("http://{node_a_ip}:30081/hostname"))
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).to_string())
        }
    });
    assert_eq!(outside, "hostport");

    // The DaemonSet rolled to a new image (node by node, each host stopped and a new one
    // started) while a pod on node-a looks the Service up and asks it every 20 ms: every lookup
    // and every request answered (the Service's rules stay in the kernel while no host runs;
    // the cluster DNS IP is held and a query sent meanwhile is retried into the new host).
    for node in ["node-a", "node-b"] {
        c.ctr(
            node,
            &[
                "images",
                "tag",
                "--force",
                "docker.io/library/netlet:0.1.0",
                "docker.io/library/netlet:0.1.0-rollout",
            ],
        )
        .unwrap();
    }
    c.apply(&pod("client", "node-a", "role: client", None))
        .unwrap();
    c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=120s",
    ])
    .unwrap();
    let script = format!(
        "ok=0; failed=0; dns=0; n=0; while [ ! -e /tmp/stop ]; do n=$((n+1)); \
         if getent hosts web.default.svc.cluster.local >/dev/null; then :; else dns=$((dns+1)); fi; \
         if curl -s -m 2 -o /dev/null http://{cluster_ip}/hostname; then ok=$((ok+1)); else failed=$((failed+1)); fi; \
         sleep 0.02; done; echo \"$n $ok $failed $dns\""
    );
    let (counts, rollout) = std::thread::scope(|s| {
        let asker = s.spawn(|| c.exec("default", "client", &["bash", "-c", &script]));
        std::thread::sleep(std::time::Duration::from_secs(2));
        let rolled = std::time::Instant::now();
        c.kubectl(&[
            "-n",
            "netlet-system",
            "set",
            "image",
            "daemonset/netlet",
            "netlet=netlet:0.1.0-rollout",
            "install-cni=netlet:0.1.0-rollout",
        ])
        .unwrap();
        c.kubectl(&[
            "-n",
            "netlet-system",
            "rollout",
            "status",
            "daemonset/netlet",
            "--timeout=300s",
        ])
        .unwrap_or_else(|e| panic!("the DaemonSet did not roll: {e}\n{}", c.logs()));
        let rollout = rolled.elapsed();
        std::thread::sleep(std::time::Duration::from_secs(2));
        c.exec("default", "client", &["touch", "/tmp/stop"])
            .unwrap();
        (asker.join().unwrap().unwrap(), rollout)
    });
    let n: Vec<u64> = counts
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    eprintln!(
        "rolling update of netlet ({rollout:.1?}): {} rounds, {} requests answered, {} failed, {} failed DNS lookups",
        n[0], n[1], n[2], n[3]
    );
    assert!(n[0] > 50, "the client asked: {counts}");
    assert_eq!(
        (n[2], n[3]),
        (0, 0),
        "failed requests, failed lookups across the rollout"
    );

    // The upstream suite's slice (the full run: testbed/k8s/e2e.sh).
    let e2e = netlet_testbed::k8s::bin_dir().join("e2e.test");
    assert!(
        e2e.is_file(),
        "{}: not built (testbed/k8s/build.sh --e2e)",
        e2e.display()
    );
    let report = tempfile::tempdir().unwrap();
    let out = c.e2e(&["--ginkgo.focus", CI_SLICE], report.path());
    let log = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("Ran ") || l.contains("Passed") || l.starts_with("[FAIL]"))
        .collect();
    eprintln!("upstream e2e slice: {summary:?}");
    assert!(
        out.status.success(),
        "upstream e2e slice failed:\n{}\n{}",
        &log[log.len().saturating_sub(20000)..],
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains(&format!("Ran {CI_SLICE_TESTS} of ")),
        "the slice ran other than {CI_SLICE_TESTS} tests: {summary:?}"
    );
}

/// Packets node `node`'s overlay device `dev` has sent (`None` while it does not exist).
fn overlay_sent(c: &Cluster, node: &str, dev: &str) -> Option<u64> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", c.node_netns(node).display()))
        .args(["ip", "-j", "-s", "link", "show", "dev", dev])
        .output()
        .ok()?;
    let links: Value = serde_json::from_slice(&out.stdout).ok()?;
    links[0]["stats64"]["tx"]["packets"].as_u64()
}

#[test]
fn a_routed_cluster_carries_pods_services_and_names_over_the_overlay() {
    let t = "a_routed_cluster_carries_pods_services_and_names_over_the_overlay";
    let Some((_one, c)) = start(t, "o", Topology::Routed) else {
        return;
    };
    let nodes = nodes_ready(&c);
    let web = roll_out_web(&c, &nodes);

    // The router between the nodes' segments drops every packet from or to a pod address, so
    // what crosses now crosses inside netlet's overlay: each node's VXLAN device of each
    // family sends while the pods talk.
    let devices = ["netlet.vx4", "netlet.vx6"];
    let before: Vec<Option<u64>> = ["node-a", "node-b"]
        .iter()
        .flat_map(|n| devices.iter().map(|d| overlay_sent(&c, n, d)))
        .collect();
    pod_to_pod_across_nodes(&c, &web);
    let after: Vec<Option<u64>> = ["node-a", "node-b"]
        .iter()
        .flat_map(|n| devices.iter().map(|d| overlay_sent(&c, n, d)))
        .collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let (node, dev) = (["node-a", "node-b"][i / 2], devices[i % 2]);
        match (b, a) {
            (Some(b), Some(a)) => assert!(a > b, "{node} {dev} sent nothing: {b} → {a}"),
            _ => panic!("{node}: no {dev} ({b:?} → {a:?})"),
        }
    }

    // Services and names across the router: the ClusterIP answered from both nodes' pods.
    service_by_name_from_each_node(&c, &web);
}

/// The upstream tests CI runs (the full `[sig-network] [Conformance]` set takes longer than
/// CI has): pod-to-pod over HTTP and UDP, a Service's endpoints, DNS for Services.
const CI_SLICE: &str = r"\[sig-network\] (Networking Granular Checks: Pods should function for intra-pod communication: (http|udp)|Services should serve a basic endpoint from pods|DNS should provide DNS for services) \[";
const CI_SLICE_TESTS: usize = 4;
