//! Network policy conformance, the way the upstream network-policy e2e suite and its truth-table
//! tooling work: three namespaces (x, w, z) of three pods (a, b, c), each a real network
//! namespace attached by the bridge driver, serving TCP and UDP on ports 80 and 81 (with named
//! container ports); a probe matrix from every pod to every other pod and port; the expected
//! matrix computed by a model of the policy semantics written here (from the Kubernetes and
//! network-policy-api specifications, over the objects as YAML, sharing no code with netlet).
//! Policies reach the node the way a user writes them: as files in the manifests directory,
//! enforced by the nft driver. As upstream does, a matrix that differs is probed again (for up to
//! a few seconds: the host picks the files up asynchronously) before the scenario fails, and a
//! failing cell names the pair, the port, the expected and the observed verdict.
//!
//! Namespaces are x, w and z: upstream's y is a boolean to YAML 1.1 parsers (kubectl's
//! too) when written bare.
//!
//! Covered: the upstream NetworkPolicy scenarios this kernel can carry (no SCTP) in our own
//! words, the ClusterNetworkPolicy cases of the network-policy-api conformance profile (Admin
//! Deny over a NetworkPolicy allow, Pass, Baseline as the default, priorities, CIDR peers, the
//! v1alpha1 kinds) and dual-stack.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1 as knet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netlet_sdk::client::Clients;
use netlet_sdk::proto::{PodSandbox, PortMapping, Protocol};
use netlet_testbed::harness::{Node, attach, bridge_driver, detach, nft_driver, privileged};
use netlet_testbed::probe::{self, NetNs};

const V4: &str = "10.244.0.0/24";
const V6: &str = "fd00:10:244::/64";
const PROBE: Duration = Duration::from_millis(400);
const CONVERGE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Proto {
    Tcp,
    Udp,
}

/// A port probed: protocol and number. Every pod serves all four, named `serve-<n>-<proto>`.
type Port = (Proto, u16);
const PORTS: [Port; 3] = [(Proto::Tcp, 80), (Proto::Tcp, 81), (Proto::Udp, 80)];
const ALL_PORTS: [Port; 4] = [
    (Proto::Tcp, 80),
    (Proto::Tcp, 81),
    (Proto::Udp, 80),
    (Proto::Udp, 81),
];

struct Pod {
    ns: String,
    name: String,
    labels: BTreeMap<String, String>,
    v4: IpAddr,
    v6: IpAddr,
    netns: NetNs,
}

impl Pod {
    fn id(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
    fn ip(&self, v6: bool) -> IpAddr {
        if v6 { self.v6 } else { self.v4 }
    }
}

async fn start_pod(c: &Clients, ns: &str, name: &str, label: &str) -> Pod {
    let netns = NetNs::create(&format!("np-{ns}-{name}-{}", std::process::id())).unwrap();
    let labels: BTreeMap<String, String> = [("pod".to_string(), label.to_string())].into();
    let mappings = ALL_PORTS
        .iter()
        .map(|(p, n)| PortMapping {
            container_port: u32::from(*n),
            protocol: match p {
                Proto::Tcp => Protocol::Tcp,
                Proto::Udp => Protocol::Udp,
            } as i32,
            name: port_name(*p, *n),
            ..Default::default()
        })
        .collect();
    let sandbox = PodSandbox {
        id: format!("np-{ns}-{name}"),
        name: name.into(),
        namespace: ns.into(),
        uid: format!("{ns}-{name}"),
        netns_path: netns.path.display().to_string(),
        labels: labels.clone().into_iter().collect(),
        port_mappings: mappings,
        ..Default::default()
    };
    let a = attach(c, sandbox, vec![]).await.expect("attach");
    let ips: Vec<IpAddr> = a[0]
        .ips
        .iter()
        .map(|x| probe::ip_of(&x.address).unwrap())
        .collect();
    let v4 = *ips.iter().find(|i| i.is_ipv4()).unwrap();
    let v6 = *ips.iter().find(|i| i.is_ipv6()).unwrap();
    // `[::]` takes IPv4 too (v4-mapped).
    for n in [80, 81] {
        let at = SocketAddr::new("::".parse().unwrap(), n);
        probe::tcp_tagged(&netns.path, at, name).unwrap();
        probe::udp_tagged(&netns.path, at, name).unwrap();
    }
    Pod {
        ns: ns.into(),
        name: name.into(),
        labels,
        v4,
        v6,
        netns,
    }
}

fn port_name(p: Proto, n: u16) -> String {
    format!(
        "serve-{n}-{}",
        match p {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    )
}

/// One connection attempt: answered or not.
fn reach(from: &Path, to: SocketAddr, proto: Proto) -> bool {
    let r = netlet_sdk::netns::run_in(from, move || -> Result<(), String> {
        match proto {
            Proto::Tcp => {
                let mut s = TcpStream::connect_timeout(&to, PROBE).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(PROBE)).map_err(|e| e.to_string())?;
                let mut out = String::new();
                s.read_to_string(&mut out).map_err(|e| e.to_string())?;
                (!out.is_empty()).then_some(()).ok_or("empty".into())
            }
            Proto::Udp => {
                let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
                    .map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(PROBE)).map_err(|e| e.to_string())?;
                s.send_to(b"probe", to).map_err(|e| e.to_string())?;
                let mut buf = [0u8; 128];
                s.recv_from(&mut buf).map_err(|e| e.to_string())?;
                Ok(())
            }
        }
    });
    matches!(r, Ok(Ok(())))
}

/// A TCP handshake from `from` to `to`: how it ended.
fn syn(from: &Path, to: SocketAddr) -> Result<(), std::io::ErrorKind> {
    syn_within(from, to, PROBE)
}

fn syn_within(from: &Path, to: SocketAddr, wait: Duration) -> Result<(), std::io::ErrorKind> {
    netlet_sdk::netns::run_in(from, move || {
        TcpStream::connect_timeout(&to, wait)
            .map(|_| ())
            .map_err(|e| e.kind())
    })
    .unwrap_or(Err(std::io::ErrorKind::Other))
}

/// A cell of the matrix: (from, to, port, IPv6).
type Cell = (String, String, Port, bool);

fn probe_matrix(pods: &[Pod], ports: &[Port], v6: bool) -> BTreeMap<Cell, bool> {
    let mut jobs = Vec::new();
    for from in pods {
        for to in pods {
            if from.id() == to.id() {
                continue;
            }
            for &port in ports {
                for fam in [false, true] {
                    if fam && !v6 {
                        continue;
                    }
                    jobs.push((
                        (from.id(), to.id(), port, fam),
                        from.netns.path.clone(),
                        SocketAddr::new(to.ip(fam), port.1),
                    ));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for chunk in jobs.chunks(96) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(cell, from, to)| {
                    let from: PathBuf = from.clone();
                    let to = *to;
                    let p = cell.2.0;
                    (cell.clone(), s.spawn(move || reach(&from, to, p)))
                })
                .collect();
            for (cell, h) in handles {
                out.insert(cell, h.join().unwrap_or(false));
            }
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The model: NetworkPolicy (networking.k8s.io/v1) and ClusterNetworkPolicy
// (policy.networking.k8s.io v1alpha2, plus the v1alpha1 Admin/BaselineAdminNetworkPolicy) as
// their specifications define them.

fn selects(sel: &meta::LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(m) = &sel.match_labels
        && m.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    sel.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.clone().unwrap_or_default();
        let got = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => got.is_some_and(|v| vals.contains(v)),
            "NotIn" => got.is_none_or(|v| !vals.contains(v)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        }
    })
}

struct World<'a> {
    pods: &'a [Pod],
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl World<'_> {
    fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self.ns_labels.get(ns).cloned().unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        l
    }
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let n: ipnet::IpNet = cidr.parse().unwrap();
    n.contains(&ip)
}

fn np_peer(
    w: &World,
    policy_ns: &str,
    p: &knet::NetworkPolicyPeer,
    other: &Pod,
    ip: IpAddr,
) -> bool {
    if let Some(b) = &p.ip_block {
        return in_cidr(ip, &b.cidr) && !b.except.iter().flatten().any(|e| in_cidr(ip, e));
    }
    let ns_ok = match &p.namespace_selector {
        None => other.ns == policy_ns,
        Some(s) => selects(s, &w.ns_labels(&other.ns)),
    };
    ns_ok
        && p.pod_selector
            .as_ref()
            .is_none_or(|s| selects(s, &other.labels))
}

fn np_port(p: &knet::NetworkPolicyPort, port: Port) -> bool {
    let proto = match p.protocol.as_deref().unwrap_or("TCP") {
        "UDP" => Proto::Udp,
        "TCP" => Proto::Tcp,
        _ => return false,
    };
    if proto != port.0 {
        return false;
    }
    // Every pod serves every named port under the same number.
    match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => match p.end_port {
            Some(e) => (*n..=e).contains(&i32::from(port.1)),
            None => *n == i32::from(port.1),
        },
        Some(IntOrString::String(name)) => *name == port_name(port.0, port.1),
    }
}

fn policy_types(p: &knet::NetworkPolicy) -> (bool, bool) {
    let spec = p.spec.clone().unwrap_or_default();
    match &spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, spec.egress.is_some_and(|e| !e.is_empty())),
    }
}

/// NetworkPolicy verdict for one direction: `None` when no policy selects `pod` for it.
/// One direction of one connection, as the policies of `pod` see it: `other` is the peer at
/// `other_ip`; `egress` when `pod` sends.
struct Flow<'a> {
    pod: &'a Pod,
    other: &'a Pod,
    other_ip: IpAddr,
    port: Port,
    egress: bool,
}

fn np_verdict(w: &World, nps: &[knet::NetworkPolicy], f: &Flow) -> Option<bool> {
    let (pod, other, other_ip, port, egress) = (f.pod, f.other, f.other_ip, f.port, f.egress);
    let mut isolated = false;
    let mut allowed = false;
    for p in nps {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let spec = p.spec.clone().unwrap_or_default();
        if ns != pod.ns || !selects(&spec.pod_selector.clone().unwrap_or_default(), &pod.labels) {
            continue;
        }
        let (ing, eg) = policy_types(p);
        if (egress && !eg) || (!egress && !ing) {
            continue;
        }
        isolated = true;
        let rules: Vec<(Vec<knet::NetworkPolicyPeer>, Vec<knet::NetworkPolicyPort>)> = if egress {
            spec.egress
                .iter()
                .flatten()
                .map(|r| {
                    (
                        r.to.clone().unwrap_or_default(),
                        r.ports.clone().unwrap_or_default(),
                    )
                })
                .collect()
        } else {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| {
                    (
                        r.from.clone().unwrap_or_default(),
                        r.ports.clone().unwrap_or_default(),
                    )
                })
                .collect()
        };
        for (peers, ports) in rules {
            let peer_ok =
                peers.is_empty() || peers.iter().any(|x| np_peer(w, ns, x, other, other_ip));
            let port_ok = ports.is_empty() || ports.iter().any(|x| np_port(x, port));
            allowed |= peer_ok && port_ok;
        }
    }
    isolated.then_some(allowed)
}

#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Cnp {
    kind: String,
    metadata: meta::ObjectMeta,
    spec: CnpSpec,
}

#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct CnpSpec {
    tier: Option<String>,
    priority: Option<i32>,
    subject: CnpSubject,
    #[serde(default)]
    ingress: Vec<CnpRule>,
    #[serde(default)]
    egress: Vec<CnpRule>,
}

#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct CnpSubject {
    namespaces: Option<meta::LabelSelector>,
    pods: Option<NsPod>,
}

#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct NsPod {
    namespace_selector: meta::LabelSelector,
    pod_selector: meta::LabelSelector,
}

#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct CnpRule {
    action: String,
    #[serde(default)]
    from: Vec<CnpPeer>,
    #[serde(default)]
    to: Vec<CnpPeer>,
    /// v1alpha2: `[{tcp: {destinationPort: {number: 80}}}]`; v1alpha1 `ports` are not used here.
    #[serde(default)]
    protocols: Vec<serde_json::Value>,
}

#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct CnpPeer {
    namespaces: Option<meta::LabelSelector>,
    pods: Option<NsPod>,
    networks: Option<Vec<String>>,
}

impl Cnp {
    fn tier_rank(&self) -> (u8, i32) {
        match (self.kind.as_str(), self.spec.tier.as_deref()) {
            ("BaselineAdminNetworkPolicy", _) | (_, Some("Baseline")) => {
                (2, self.spec.priority.unwrap_or(1000))
            }
            _ => (0, self.spec.priority.unwrap_or(0)),
        }
    }
    fn subject(&self, w: &World, pod: &Pod) -> bool {
        match (&self.spec.subject.namespaces, &self.spec.subject.pods) {
            (Some(ns), _) => selects(ns, &w.ns_labels(&pod.ns)),
            (_, Some(p)) => {
                selects(&p.namespace_selector, &w.ns_labels(&pod.ns))
                    && selects(&p.pod_selector, &pod.labels)
            }
            _ => false,
        }
    }
}

fn cnp_peer(w: &World, p: &CnpPeer, other: &Pod, ip: IpAddr) -> bool {
    if let Some(ns) = &p.namespaces {
        return selects(ns, &w.ns_labels(&other.ns));
    }
    if let Some(pp) = &p.pods {
        return selects(&pp.namespace_selector, &w.ns_labels(&other.ns))
            && selects(&pp.pod_selector, &other.labels);
    }
    p.networks.iter().flatten().any(|n| in_cidr(ip, n))
}

fn cnp_port(protocols: &[serde_json::Value], port: Port) -> bool {
    protocols.is_empty()
        || protocols.iter().any(|v| {
            let key = match port.0 {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            };
            v.get(key)
                .and_then(|m| m.pointer("/destinationPort/number"))
                .and_then(|n| n.as_u64())
                == Some(u64::from(port.1))
        })
}

/// The first matching rule's action in one tier (0 Admin, 2 Baseline), if any.
fn tier_verdict(w: &World, cnps: &[Cnp], tier: u8, f: &Flow) -> Option<String> {
    let (pod, other, other_ip, port, egress) = (f.pod, f.other, f.other_ip, f.port, f.egress);
    let mut ps: Vec<&Cnp> = cnps
        .iter()
        .filter(|c| c.tier_rank().0 == tier && c.subject(w, pod))
        .collect();
    ps.sort_by_key(|c| (c.tier_rank().1, c.metadata.name.clone()));
    for c in ps {
        let rules = if egress {
            &c.spec.egress
        } else {
            &c.spec.ingress
        };
        for r in rules {
            let peers = if egress { &r.to } else { &r.from };
            if peers.iter().any(|p| cnp_peer(w, p, other, other_ip)) && cnp_port(&r.protocols, port)
            {
                return Some(match r.action.as_str() {
                    "Allow" => "Accept".to_string(),
                    a => a.to_string(),
                });
            }
        }
    }
    None
}

fn direction(w: &World, nps: &[knet::NetworkPolicy], cnps: &[Cnp], f: &Flow) -> bool {
    match tier_verdict(w, cnps, 0, f).as_deref() {
        Some("Accept") => return true,
        Some("Deny") => return false,
        _ => {}
    }
    if let Some(v) = np_verdict(w, nps, f) {
        return v;
    }
    !matches!(tier_verdict(w, cnps, 2, f).as_deref(), Some("Deny"))
}

fn expected(
    w: &World,
    nps: &[knet::NetworkPolicy],
    cnps: &[Cnp],
    ports: &[Port],
    v6: bool,
) -> BTreeMap<Cell, bool> {
    let mut out = BTreeMap::new();
    for from in w.pods {
        for to in w.pods {
            if from.id() == to.id() {
                continue;
            }
            for &port in ports {
                for fam in [false, true] {
                    if fam && !v6 {
                        continue;
                    }
                    let out_of = Flow {
                        pod: from,
                        other: to,
                        other_ip: to.ip(fam),
                        port,
                        egress: true,
                    };
                    let into = Flow {
                        pod: to,
                        other: from,
                        other_ip: from.ip(fam),
                        port,
                        egress: false,
                    };
                    let ok = direction(w, nps, cnps, &out_of) && direction(w, nps, cnps, &into);
                    out.insert((from.id(), to.id(), port, fam), ok);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

struct Suite {
    node: Node,
    clients: Clients,
    dir: tempfile::TempDir,
    pods: Vec<Pod>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    report: Vec<String>,
}

impl Suite {
    fn write_namespaces(&self) {
        let docs: Vec<String> = self
            .ns_labels
            .iter()
            .map(|(n, l)| {
                format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}, labels: {}}}\n",
                    serde_json::to_string(l).unwrap()
                )
            })
            .collect();
        std::fs::write(self.dir.path().join("namespaces.yaml"), docs.join("---\n")).unwrap();
    }

    fn pod(&self, id: &str) -> &Pod {
        self.pods.iter().find(|p| p.id() == id).unwrap()
    }

    /// Puts `yaml` (policy documents) in place of the previous scenario's and checks the
    /// matrix against the model until it agrees or CONVERGE passes.
    fn scenario(&mut self, name: &str, yaml: &str, ports: &[Port], v6: bool) {
        let mut nps = Vec::new();
        let mut cnps = Vec::new();
        for doc in yaml.split("\n---\n").filter(|d| !d.trim().is_empty()) {
            let v: serde_json::Value = netlet_sdk::yaml::from_str(doc).unwrap();
            match v["kind"].as_str() {
                Some("NetworkPolicy") => nps.push(serde_json::from_value(v).unwrap()),
                Some(_) => cnps.push(serde_json::from_value(v).unwrap()),
                None => panic!("{name}: no kind"),
            }
        }
        let want = expected(
            &World {
                pods: &self.pods,
                ns_labels: self.ns_labels.clone(),
            },
            &nps,
            &cnps,
            ports,
            v6,
        );
        let file = self.dir.path().join("policies.yaml");
        let tmp = self.dir.path().join(".policies.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let started = Instant::now();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let got = probe_matrix(&self.pods, ports, v6);
            let wrong: Vec<String> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(*v))
                .map(|((f, t, p, fam), v)| {
                    format!(
                        "{f} -> {t} {:?}/{}{}: expected {}, observed {}",
                        p.0,
                        p.1,
                        if *fam { " (IPv6)" } else { "" },
                        if *v { "allowed" } else { "denied" },
                        if *v { "denied" } else { "allowed" }
                    )
                })
                .collect();
            if wrong.is_empty() {
                let denied = want.values().filter(|v| !**v).count();
                self.report.push(format!(
                    "{name}: {} cells ({denied} denied) agree after {:?} ({rounds} matrix probe(s))",
                    want.len(),
                    started.elapsed()
                ));
                return;
            }
            if started.elapsed() > CONVERGE {
                let errors = self.node.host.manifest_errors();
                panic!(
                    "scenario {name}: {} cell(s) differ from the model:\n{}\nmanifest errors: {errors:?}",
                    wrong.len(),
                    wrong.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Waits until the host's NetworkPolicies include (or no longer include) `name`; the host
/// answers ListPolicies once its drivers have been handed the change.
async fn wait_policy(c: &Clients, name: &str, present: bool) {
    netlet_testbed::harness::wait_until(
        &format!("policy {name} present: {present}"),
        CONVERGE,
        || {
            let mut c = c.policy.clone();
            async move {
                let l = c
                    .list_policies(netlet_sdk::proto::ListPoliciesRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                let has = l
                    .network_policies
                    .iter()
                    .any(|p| p.key.as_ref().is_some_and(|k| k.name == name));
                (has == present).then_some(())
            }
        },
    )
    .await;
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}\n",
        indent(spec)
    )
}

fn cnp(name: &str, tier: &str, priority: u32, spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n{}\n",
        indent(spec)
    )
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn docs(d: &[String]) -> String {
    d.join("---\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn network_policy_truth_table() {
    if !privileged("network_policy_truth_table") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let drivers = bridge_driver("bridge", "default", "netlet0", &[V4, V6])
        + &nft_driver("nft", &["--cluster-cidr", V4, "--cluster-cidr", V6]);
    let node = Node::start(
        "np",
        &drivers,
        &format!("manifestsDir: {}\n", dir.path().display()),
    )
    .await;
    node.host.wait_ready("default").await;
    let clients = node.host.clients().await;
    let mut pods = Vec::new();
    for ns in ["x", "w", "z"] {
        for p in ["a", "b", "c"] {
            pods.push(start_pod(&clients, ns, p, p).await);
        }
    }
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> = ["x", "w", "z"]
        .iter()
        .map(|n| (n.to_string(), [("ns".to_string(), n.to_string())].into()))
        .collect();
    let mut s = Suite {
        node,
        clients,
        dir,
        pods,
        ns_labels,
        report: Vec::new(),
    };
    s.write_namespaces();
    let p = &PORTS;
    let ip = |s: &Suite, id: &str| s.pod(id).v4.to_string();

    // Nothing applies: everything reaches everything.
    s.scenario("no policy", "", p, false);
    // Default deny, then allow-all over it.
    s.scenario(
        "deny all ingress",
        &np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]"),
        p,
        false,
    );
    s.scenario(
        "deny all egress",
        &np("x", "deny", "podSelector: {}\npolicyTypes: [Egress]"),
        p,
        false,
    );
    s.scenario(
        "deny all ingress and egress",
        &np(
            "x",
            "deny",
            "podSelector: {}\npolicyTypes: [Ingress, Egress]",
        ),
        p,
        false,
    );
    s.scenario(
        "allow all ingress beside a deny",
        &docs(&[
            np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]"),
            np("x", "allow", "podSelector: {}\ningress: [{}]"),
        ]),
        p,
        false,
    );
    // Peers.
    s.scenario(
        "allow from a namespace",
        &np(
            "x",
            "from-w",
            "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: w}}}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "allow from a pod of its namespace",
        &np(
            "x",
            "from-b",
            "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "allow from a pod in a namespace (pod AND namespace)",
        &np(
            "x",
            "and",
            "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: w}}, podSelector: {matchLabels: {pod: b}}}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "allow from pod OR namespace",
        &np(
            "x",
            "or",
            "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: w}}}, {podSelector: {matchLabels: {pod: b}}}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "allow from any namespace's pod c (empty namespace selector)",
        &np(
            "x",
            "any-ns",
            "podSelector: {}\ningress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "match expressions",
        &np(
            "x",
            "expr",
            "podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}\ningress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x, w]}]}, podSelector: {matchExpressions: [{key: pod, operator: Exists}]}}]}]",
        ),
        p,
        false,
    );
    let except = ip(&s, "w/b");
    s.scenario(
        "ipBlock with except",
        &np(
            "x",
            "block",
            &format!(
                "podSelector: {{matchLabels: {{pod: a}}}}\ningress: [{{from: [{{ipBlock: {{cidr: {V4}, except: [{except}/32]}}}}]}}]"
            ),
        ),
        p,
        false,
    );
    let only = ip(&s, "z/c");
    s.scenario(
        "egress to one address (ipBlock /32)",
        &np(
            "x",
            "to-zc",
            &format!("podSelector: {{}}\npolicyTypes: [Egress]\negress: [{{to: [{{ipBlock: {{cidr: {only}/32}}}}]}}]"),
        ),
        p,
        false,
    );
    // Ports.
    s.scenario(
        "egress to the DNS-like port only (UDP 80, any destination)",
        &np(
            "x",
            "dns-only",
            "podSelector: {}\npolicyTypes: [Egress]\negress: [{ports: [{protocol: UDP, port: 80}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "allow one port from a namespace",
        &np(
            "x",
            "port",
            "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: w}}}], ports: [{port: 81}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "UDP only",
        &np(
            "x",
            "udp",
            "podSelector: {}\ningress: [{ports: [{protocol: UDP, port: 81}, {protocol: UDP, port: 80}]}]",
        ),
        &ALL_PORTS,
        false,
    );
    s.scenario(
        "ingress on a named port",
        &np(
            "x",
            "named",
            "podSelector: {}\ningress: [{ports: [{port: serve-81-tcp}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "ingress from a namespace on a named port",
        &np(
            "x",
            "named-ns",
            "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: serve-80-tcp}, {port: serve-80-udp, protocol: UDP}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "egress on a named port",
        &np(
            "x",
            "named-egress",
            "podSelector: {}\npolicyTypes: [Egress]\negress: [{ports: [{port: serve-80-udp, protocol: UDP}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "endPort range covering both ports",
        &np(
            "x",
            "range",
            "podSelector: {}\ningress: [{ports: [{port: 79, endPort: 81}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "endPort range covering one",
        &np(
            "x",
            "range",
            "podSelector: {}\ningress: [{ports: [{port: 81, endPort: 90}]}]",
        ),
        p,
        false,
    );
    // Several policies, updates and deletion.
    s.scenario(
        "two policies unioned",
        &docs(&[
            np(
                "x",
                "from-w-80",
                "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: w}}}], ports: [{port: 80}]}]",
            ),
            np(
                "x",
                "from-z-81",
                "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 81}]}]",
            ),
        ]),
        p,
        false,
    );
    s.scenario(
        "a policy updated (from w becomes from z)",
        &np(
            "x",
            "from-w-80",
            "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 80}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "policies in two namespaces, both directions",
        &docs(&[
            np(
                "x",
                "egress-to-w",
                "podSelector: {}\npolicyTypes: [Egress]\negress: [{to: [{namespaceSelector: {matchLabels: {ns: w}}}]}]",
            ),
            np(
                "w",
                "ingress-from-x-b",
                "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: b}}}]}]",
            ),
        ]),
        p,
        false,
    );
    s.scenario(
        "client-side egress deny with server-side allow",
        &docs(&[
            np(
                "x",
                "deny-egress",
                "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]",
            ),
            np(
                "w",
                "allow-from-x",
                "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]",
            ),
        ]),
        p,
        false,
    );
    s.scenario(
        "policyTypes left out with egress rules (both directions)",
        &np(
            "x",
            "implicit",
            "podSelector: {matchLabels: {pod: c}}\negress: [{to: [{podSelector: {}}]}]",
        ),
        p,
        false,
    );
    // The rest of the upstream list: egress with except, a block and an exception overlapping
    // across peers, SCTP never taken for TCP, the namespace name label, egress ranges, allow-all
    // egress beside a deny.
    let (wa, wb) = (ip(&s, "w/a"), ip(&s, "w/b"));
    s.scenario(
        "egress to a block with an exception",
        &np(
            "x",
            "egress-except",
            &format!(
                "podSelector: {{}}\npolicyTypes: [Egress]\negress: [{{to: [{{ipBlock: {{cidr: {V4}, except: ['{wa}/32']}}}}]}}]"
            ),
        ),
        p,
        false,
    );
    s.scenario(
        "an address in one peer's exception and another peer's block is allowed",
        &np(
            "x",
            "overlap",
            &format!(
                "podSelector: {{}}\ningress: [{{from: [{{ipBlock: {{cidr: {V4}, except: ['{wb}/32']}}}}, {{ipBlock: {{cidr: '{wb}/32'}}}}], ports: [{{port: 80}}]}}]"
            ),
        ),
        p,
        false,
    );
    s.scenario(
        "a policy allowing only SCTP isolates and admits no TCP or UDP",
        &np(
            "x",
            "sctp",
            "podSelector: {}\ningress: [{ports: [{protocol: SCTP, port: 80}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "the namespace name label, matchLabels",
        &np(
            "x",
            "by-name",
            "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "the namespace name label, matchExpressions",
        &np(
            "x",
            "by-name-expr",
            "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [z]}]}}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "egress endPort range",
        &np(
            "x",
            "egress-range",
            "podSelector: {}\npolicyTypes: [Egress]\negress: [{ports: [{port: 81, endPort: 100}]}]",
        ),
        p,
        false,
    );
    s.scenario(
        "allow-all egress beside an egress deny",
        &docs(&[
            np("x", "deny-egress", "podSelector: {}\npolicyTypes: [Egress]"),
            np(
                "x",
                "allow-egress",
                "podSelector: {}\npolicyTypes: [Egress]\negress: [{}]",
            ),
        ]),
        p,
        false,
    );
    s.scenario("all policies deleted", "", p, false);

    // Pods and namespaces joining and leaving selectors.
    let allow_b = np(
        "x",
        "from-b",
        "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]",
    );
    s.scenario("allow from every pod b", &allow_b, p, false);
    let joined = start_pod(&s.clients, "z", "d", "b").await;
    s.pods.push(joined);
    s.scenario("a new pod labelled b joins the peers", &allow_b, p, false);
    detach(&s.clients, "np-z-d").await.unwrap();
    s.pods.pop();
    s.scenario("the pod leaves", &allow_b, p, false);
    let team = np(
        "x",
        "team",
        "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]",
    );
    s.scenario("a namespace selector nobody matches", &team, p, false);
    s.ns_labels
        .get_mut("z")
        .unwrap()
        .insert("team".into(), "blue".into());
    s.write_namespaces();
    s.scenario("namespace z labelled: it joins", &team, p, false);
    s.ns_labels.get_mut("z").unwrap().remove("team");
    s.write_namespaces();

    // ClusterNetworkPolicy: the admin tiers around NetworkPolicy.
    let allow_all_x = np("x", "allow-all", "podSelector: {}\ningress: [{}]");
    s.scenario(
        "Admin Deny overrides a NetworkPolicy allow",
        &docs(&[
            allow_all_x.clone(),
            cnp(
                "deny-w-to-x",
                "Admin",
                10,
                "subject: {namespaces: {matchLabels: {ns: x}}}\ningress: [{name: deny-w, action: Deny, from: [{namespaces: {matchLabels: {ns: w}}}]}]",
            ),
        ]),
        p,
        false,
    );
    s.scenario(
        "Pass hands over to NetworkPolicy",
        &docs(&[
            // The NetworkPolicy admits w on port 80 only: what Pass leaves it to decide (an
            // Accept would admit port 81 too).
            np(
                "x",
                "from-w",
                "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: w}}}], ports: [{port: 80}]}]",
            ),
            cnp(
                "pass-w",
                "Admin",
                5,
                "subject: {namespaces: {matchLabels: {ns: x}}}\ningress: [{name: pass-w, action: Pass, from: [{namespaces: {matchLabels: {ns: w}}}]}]",
            ),
            cnp(
                "deny-all",
                "Admin",
                50,
                "subject: {namespaces: {matchLabels: {ns: x}}}\ningress: [{name: deny, action: Deny, from: [{namespaces: {}}]}]",
            ),
        ]),
        p,
        false,
    );
    s.scenario(
        "Admin priorities: Accept at 10 before Deny at 20",
        &docs(&[
            cnp(
                "accept-z",
                "Admin",
                10,
                "subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}\ningress: [{name: z, action: Accept, from: [{namespaces: {matchLabels: {ns: z}}}]}]",
            ),
            cnp(
                "deny-rest",
                "Admin",
                20,
                "subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}\ningress: [{name: all, action: Deny, from: [{namespaces: {}}]}]",
            ),
        ]),
        p,
        false,
    );
    s.scenario(
        "Admin priorities swapped",
        &docs(&[
            cnp(
                "accept-z",
                "Admin",
                30,
                "subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}\ningress: [{name: z, action: Accept, from: [{namespaces: {matchLabels: {ns: z}}}]}]",
            ),
            cnp(
                "deny-rest",
                "Admin",
                20,
                "subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}\ningress: [{name: all, action: Deny, from: [{namespaces: {}}]}]",
            ),
        ]),
        p,
        false,
    );
    let baseline = cnp(
        "baseline-deny",
        "Baseline",
        10,
        "subject: {namespaces: {matchLabels: {ns: x}}}\ningress: [{name: deny, action: Deny, from: [{namespaces: {}}]}]",
    );
    s.scenario("Baseline deny as the default", &baseline, p, false);
    s.scenario(
        "a NetworkPolicy decides before the Baseline",
        &docs(&[
            baseline.clone(),
            np(
                "x",
                "from-w",
                "podSelector: {matchLabels: {pod: b}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: w}}}]}]",
            ),
        ]),
        p,
        false,
    );
    let target = ip(&s, "w/b");
    s.scenario(
        "Admin egress Deny to a CIDR, on one port",
        &cnp(
            "deny-net",
            "Admin",
            1,
            &format!(
                "subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\negress: [{{name: net, action: Deny, to: [{{networks: ['{target}/32']}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}]"
            ),
        ),
        p,
        false,
    );
    s.scenario(
        "v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy",
        &docs(&[
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: allow-z}\nspec:\n  priority: 3\n  subject: {namespaces: {matchLabels: {ns: w}}}\n  ingress: [{action: Allow, from: [{namespaces: {matchLabels: {ns: z}}}]}]\n".to_string(),
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  subject: {namespaces: {matchLabels: {ns: w}}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n".to_string(),
        ]),
        p,
        false,
    );

    // Dual-stack: selectors cover both families, ipBlocks their own.
    let b6 = s.pod("w/a").v6;
    s.scenario(
        "dual-stack: namespace peer and an IPv6 ipBlock",
        &np(
            "x",
            "dual",
            &format!(
                "podSelector: {{}}\ningress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}}}, {{ipBlock: {{cidr: '{b6}/128'}}}}]}}]"
            ),
        ),
        &[(Proto::Tcp, 80), (Proto::Udp, 80)],
        true,
    );
    s.scenario("the end: nothing applies", "", p, true);

    // No unprotected window: a pod a policy selects is governed from its first packet. With
    // a policy isolating pods labelled `fresh` (both directions), a pod so labelled is
    // attached and probed the moment AttachPod returns, before anything serves in it: a SYN
    // to it must be dropped (a timeout), where an unprotected pod answers at once with a
    // reset (refused); and what it sends must not be answered.
    s.scenario(
        "isolation for pods labelled fresh (none yet)",
        &np(
            "x",
            "fresh",
            "podSelector: {matchLabels: {pod: fresh}}\npolicyTypes: [Ingress, Egress]",
        ),
        p,
        false,
    );
    // The matrix cannot tell (no fresh pod yet): wait for the host to hold the policy.
    wait_policy(&s.clients, "fresh", true).await;
    let fresh_ns = NetNs::create(&format!("np-fresh-{}", std::process::id())).unwrap();
    let sandbox = PodSandbox {
        id: "np-x-fresh".into(),
        name: "fresh".into(),
        namespace: "x".into(),
        uid: "x-fresh".into(),
        netns_path: fresh_ns.path.display().to_string(),
        labels: [("pod".to_string(), "fresh".to_string())].into(),
        ..Default::default()
    };
    let a = attach(&s.clients, sandbox, vec![]).await.expect("attach");
    let fresh: IpAddr = probe::ip_of(&a[0].ips[0].address).unwrap();
    let from_a = s.pod("x/a").netns.path.clone();
    let to_fresh = SocketAddr::new(fresh, 80);
    let inbound = syn(&from_a, to_fresh);
    let outbound = reach(
        &fresh_ns.path,
        SocketAddr::new(s.pod("x/a").v4, 80),
        Proto::Tcp,
    );
    assert_eq!(
        inbound,
        Err(std::io::ErrorKind::TimedOut),
        "the first SYN to a new isolated pod is dropped, not refused"
    );
    assert!(
        !outbound,
        "the first connection from a new isolated pod is not answered"
    );
    // The control: without the policy the same probe is refused at once (nothing serves).
    s.scenario("isolation lifted", "", p, false);
    wait_policy(&s.clients, "fresh", false).await;
    let refused = syn(&from_a, to_fresh);
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));
    detach(&s.clients, "np-x-fresh").await.unwrap();
    s.report.push(
        "a new isolated pod: its first inbound SYN dropped, its first connection unanswered".into(),
    );

    // Fail closed: the verdicts live in the kernel, so while the nft driver and then the host
    // restart (SIGKILL both), a pair the policy denies stays denied throughout, probed without
    // pause; after each restart the whole matrix agrees again.
    let deny = np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]");
    s.scenario(
        "deny all ingress to x, before the restarts",
        &deny,
        p,
        false,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let from = s.pod("w/a").netns.path.clone();
        let to = SocketAddr::new(s.pod("x/a").v4, 80);
        std::thread::spawn(move || {
            let (mut tries, mut through) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tries += 1;
                // A short wait per attempt: many attempts across the restarts.
                if syn_within(&from, to, Duration::from_millis(50)).is_ok() {
                    through += 1;
                }
            }
            (tries, through)
        })
    };
    let old_nft = s.node.host.children("netlet-nft");
    assert_eq!(old_nft.len(), 1, "one supervised nft driver");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_nft[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    netlet_testbed::harness::wait_until("a new nft driver", CONVERGE, || {
        let fresh = {
            let now = s.node.host.children("netlet-nft");
            now.len() == 1 && now != old_nft
        };
        async move { fresh.then_some(()) }
    })
    .await;
    s.node.host.wait_ready("").await;
    s.scenario("after the nft driver restarted", &deny, p, false);
    s.node.host.stop_with(nix::sys::signal::Signal::SIGKILL);
    s.node.host.spawn().await;
    s.node.host.wait_ready("default").await;
    s.clients = s.node.host.clients().await;
    s.scenario("after the host restarted", &deny, p, false);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (tries, through) = prober.join().unwrap();
    assert_eq!(
        through, 0,
        "{through} of {tries} connections the policy denies got through during the restarts"
    );
    s.report.push(format!(
        "restarts of the nft driver and the host: {tries} probes of a denied pair, none through"
    ));

    for line in &s.report {
        println!("{line}");
    }
}
