//! The node-local DNS server with real packets: pods are network namespaces the bridge driver
//! attached, asking with `dig` and glibc (`getent`, Python's getaddrinfo) through the
//! resolv.conf their AttachPod answer gave them (written where `ip netns exec` mounts it); the
//! node's upstream is a stub DNS server in a namespace of its own, wired to the node (the node's
//! default route leads there and nowhere else). Services come from the manifests directory;
//! policies from manifests, with WebAssembly modules built from `wasm-policies/`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netlet_sdk::client::Clients;
use netlet_sdk::proto::{CheckDnsRequest, DnsAction, ListPoliciesRequest, PodSandbox};
use netlet_testbed::harness::{Node, Proc, attach, bin, bridge_driver, privileged, tool, wasm_dir};
use netlet_testbed::probe::{self, NetNs};

const V4: &str = "10.244.0.0/24";
const LOCAL: &str = "169.254.20.10";
const UPSTREAM: &str = "192.0.2.53";
const CONVERGE: Duration = Duration::from_secs(10);

/// The scenarios run one at a time: each times DNS answers and connections on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.1.10, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- {addresses: [10.244.0.50], hostname: db-0, conditions: {ready: true}}
- {addresses: [10.244.0.51], hostname: db-1, conditions: {ready: true}}
- {addresses: [10.244.0.52], hostname: db-2, conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: api.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: yahoo, namespace: com}
spec: {clusterIP: 10.96.2.20, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: internal, namespace: com}
spec: {clusterIP: 10.96.2.30}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
endpoints:
- {addresses: [192.0.2.53], conditions: {ready: true}}
";

/// What a `dig` printed: the last response's status, flags, question and answers.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    question: String,
    /// (name, type, data)
    answers: Vec<(String, String, String)>,
    authority: Vec<(String, String, String)>,
}

impl Dig {
    fn data(&self, t: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answers
            .iter()
            .filter(|a| a.1 == t)
            .map(|a| a.2.clone())
            .collect();
        v.sort();
        v
    }
}

fn parse_dig(out: &str) -> Dig {
    let mut d = Dig::default();
    let mut section = "";
    for line in out.lines() {
        if let Some(h) = line.strip_prefix(";; ->>HEADER<<- ") {
            d = Dig::default();
            d.status = h
                .split("status: ")
                .nth(1)
                .unwrap_or("")
                .split(',')
                .next()
                .unwrap_or("")
                .to_string();
        } else if let Some(f) = line.strip_prefix(";; flags: ") {
            d.flags = f
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
        } else if line.starts_with(";; QUESTION SECTION") {
            section = "q";
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "a";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "auth";
        } else if line.starts_with(";;") || line.trim().is_empty() {
            if line.trim().is_empty() {
                section = "";
            }
        } else if section == "q" {
            d.question = line
                .trim_start_matches(';')
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
        } else if section == "a" || section == "auth" {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                let rec = (f[0].to_string(), f[3].to_string(), f[4..].join(" "));
                if section == "a" {
                    d.answers.push(rec)
                } else {
                    d.authority.push(rec)
                }
            }
        }
    }
    d
}

struct PodNs {
    name: String,
    ip: IpAddr,
    /// The pod's namespace (deleted with it); `None` for the upstream's, which the Env owns.
    _netns: Option<NetNs>,
}

/// Everything the test made; the per-namespace resolv.conf directories go with it.
struct Env {
    node: Node,
    clients: Clients,
    _up: NetNs,
    stub: Option<Proc>,
    man: tempfile::TempDir,
    etc: Vec<PathBuf>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.stub.take() {
            s.terminate();
        }
        for d in &self.etc {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn netns_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// `dig` inside a pod (its resolv.conf applies: `@server` only when given in `args`).
fn dig(pod: &PodNs, args: &[&str]) -> Dig {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.name,
            "dig",
            "+tries=1",
            "+time=3",
            "+noall",
            "+comments",
            "+question",
            "+answer",
            "+authority",
        ])
        .args(args)
        .output()
        .expect("dig");
    parse_dig(&String::from_utf8_lossy(&out.stdout))
}

/// glibc's resolution of `name` (A only) inside a pod: the addresses, or the error.
fn getent(pod: &PodNs, name: &str) -> Result<Vec<String>, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.name, "getent", "ahostsv4", name])
        .output()
        .expect("getent");
    if !out.status.success() {
        return Err(format!("getent {name}: exit {:?}", out.status.code()));
    }
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// The TTL of the first answer to `name` (A).
fn dig_ttl(pod: &PodNs, name: &str) -> u32 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.name,
            "dig",
            "+nosearch",
            "+noall",
            "+answer",
            name,
        ])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

fn metric(env: &Env, name: &str) -> u64 {
    let out = Command::new(bin("netletctl"))
        .arg("--socket")
        .arg(&env.node.host.socket)
        .arg("metrics")
        .output()
        .expect("netletctl metrics");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("netlet_{name}_total ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in:\n{text}"))
}

fn stub_count(up_pod: &PodNs) -> u64 {
    let d = dig(
        up_pod,
        &[&format!("@{UPSTREAM}"), "+tcp", "TXT", "count.stub"],
    );
    d.data("TXT")[0].trim_matches('"').parse().unwrap()
}

async fn start_pod(env: &mut Env, ns: &str, name: &str) -> PodNs {
    let netns = NetNs::create(&format!("dns-{ns}-{name}-{}", std::process::id())).unwrap();
    let sandbox = PodSandbox {
        id: format!("dns-{ns}-{name}"),
        name: name.into(),
        namespace: ns.into(),
        uid: format!("{ns}-{name}"),
        netns_path: netns.path.display().to_string(),
        labels: [("app".to_string(), name.to_string())].into(),
        // What kubelet computes with clusterDNS 192.0.2.53 (here: the stub, standing for the
        // cluster DNS Service) and ClusterFirst.
        dns_config: Some(netlet_sdk::proto::DnsConfig {
            nameservers: vec![UPSTREAM.into()],
            searches: vec![
                format!("{ns}.svc.cluster.local"),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
            domain: String::new(),
        }),
        ..Default::default()
    };
    let a = attach(&env.clients, sandbox, vec![]).await.expect("attach");
    let ip = probe::ip_of(&a[0].ips[0].address).unwrap();
    // The DNS config the pod is told: the node-local server first, then its fallback.
    let dns = a[0].dns.clone().expect("attachment carries a DNS config");
    assert_eq!(
        dns.nameservers,
        vec![LOCAL.to_string(), UPSTREAM.to_string()]
    );
    assert_eq!(dns.searches[0], format!("{ns}.svc.cluster.local"));
    assert_eq!(dns.options, vec!["ndots:5".to_string()]);
    // Where `ip netns exec` mounts the namespace's resolv.conf from.
    let name = netns_name(&netns.path);
    let etc = PathBuf::from("/etc/netns").join(&name);
    std::fs::create_dir_all(&etc).unwrap();
    let mut conf = String::new();
    for n in &dns.nameservers {
        conf += &format!("nameserver {n}\n");
    }
    conf += &format!(
        "search {}\noptions {}\n",
        dns.searches.join(" "),
        dns.options.join(" ")
    );
    std::fs::write(etc.join("resolv.conf"), conf).unwrap();
    env.etc.push(etc);
    PodNs {
        name,
        ip,
        _netns: Some(netns),
    }
}

fn write_policy(env: &Env, file: &str, yaml: &str) {
    let tmp = env.man.path().join(format!(".{file}.tmp"));
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, env.man.path().join(file)).unwrap();
}

/// Polls `f` until it holds (the host picks manifest files up asynchronously).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + CONVERGE;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {CONVERGE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn setup() -> Env {
    setup_with("dns", "", "").await
}

/// A node named `name` with the bridge driver and `more` drivers; `dns` adds lines to the
/// config's `dns:` section.
async fn setup_with(name: &str, more: &str, dns: &str) -> Env {
    let man = tempfile::tempdir().unwrap();
    std::fs::write(man.path().join("services.yaml"), SERVICES).unwrap();
    let w = wasm_dir();
    let extra = format!(
        "manifestsDir: {}\ndns:\n  upstreams: [\"{UPSTREAM}\"]\n{dns}policyModules:\n- {{name: blocklog, file: {}}}\n- {{name: loop, file: {}}}\n",
        man.path().display(),
        w.join("dns-block-log.wasm").display(),
        w.join("hostile-loop.wasm").display(),
    );
    let node = Node::start(
        name,
        &(bridge_driver("bridge", "default", "netlet0", &[V4]) + more),
        &extra,
    )
    .await;
    node.host.wait_ready("default").await;
    // The upstream's namespace, wired to the node; the node's default route leads there.
    let up = NetNs::create(&format!("{name}-up-{}", std::process::id())).unwrap();
    probe::wire(
        &node.netns.path,
        "up0",
        "192.0.2.1/24",
        &up.path,
        "node0",
        &format!("{UPSTREAM}/24"),
    )
    .unwrap();
    probe::link_up(&up.path, "lo").unwrap();
    probe::add_route(&node.netns.path, "0.0.0.0/0", "192.0.2.1".parse().unwrap()).ok();
    probe::add_route(&up.path, V4, "192.0.2.1".parse().unwrap()).unwrap();
    let fwd = node
        .command(Path::new("/usr/sbin/sysctl"))
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .status()
        .unwrap();
    assert!(fwd.success());
    let stub = Command::new(bin("netlet-netns-exec"))
        .arg(&up.path)
        .arg(bin("netlet-dns-stub"))
        .args(["--listen", &format!("{UPSTREAM}:53")])
        .args(["--record", "api.example.com A 203.0.113.10 60"])
        .args(["--record", "yahoo.com A 203.0.113.20 60"])
        .args(["--record", "other.example.org A 203.0.113.30 60"])
        .args(["--record", "tracker.ads.example.org A 203.0.113.40 60"])
        .args(["--record", "brief.example.com A 203.0.113.11 1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let clients = node.host.clients().await;
    let env = Env {
        node,
        clients,
        _up: up,
        stub: Some(Proc(stub)),
        man,
        etc: Vec::new(),
    };
    // The stub is up once it answers.
    eventually("stub upstream answers", || {
        dig(
            &upstream(&env),
            &[&format!("@{UPSTREAM}"), "+tcp", "TXT", "count.stub"],
        )
        .status
            == "NOERROR"
    });
    env
}

/// The upstream's namespace, to ask the stub from.
fn upstream(env: &Env) -> PodNs {
    PodNs {
        name: netns_name(&env._up.path),
        ip: UPSTREAM.parse().unwrap(),
        _netns: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn node_local_dns() {
    if !privileged("node_local_dns")
        || tool("dig", "node_local_dns").is_none()
        || tool("getent", "node_local_dns").is_none()
    {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = setup().await;
    let shop = start_pod(&mut env, "shop", "client").await;
    let blog = start_pod(&mut env, "blog", "reader").await;
    let slow = start_pod(&mut env, "slow", "s").await;
    let up = upstream(&env);

    // Cluster names, as the Kubernetes DNS specification defines them.
    let d = dig(&shop, &["+nosearch", "web.shop.svc.cluster.local"]);
    assert_eq!(
        (d.status.as_str(), d.data("A")),
        ("NOERROR", vec!["10.96.1.10".to_string()]),
        "{d:?}"
    );
    assert!(
        d.flags.contains(&"aa".to_string()),
        "cluster answers are authoritative: {d:?}"
    );
    let d = dig(&shop, &["+nosearch", "db.shop.svc.cluster.local"]);
    assert_eq!(
        d.data("A"),
        vec!["10.244.0.50", "10.244.0.51"],
        "headless: ready endpoints only"
    );
    let d = dig(&shop, &["+nosearch", "db-1.db.shop.svc.cluster.local"]);
    assert_eq!(d.data("A"), vec!["10.244.0.51"]);
    let d = dig(
        &shop,
        &["+nosearch", "SRV", "_pg._tcp.db.shop.svc.cluster.local"],
    );
    assert_eq!(
        d.data("SRV"),
        vec![
            "0 50 5432 db-0.db.shop.svc.cluster.local.",
            "0 50 5432 db-1.db.shop.svc.cluster.local."
        ]
    );
    let d = dig(
        &shop,
        &["+nosearch", "SRV", "_http._tcp.web.shop.svc.cluster.local"],
    );
    assert_eq!(d.data("SRV"), vec!["0 100 80 web.shop.svc.cluster.local."]);
    let d = dig(&shop, &["+nosearch", "ext.shop.svc.cluster.local"]);
    assert_eq!(d.data("CNAME"), vec!["api.example.com."]);
    assert_eq!(
        d.data("A"),
        vec!["203.0.113.10"],
        "the ExternalName target resolved too"
    );
    let d = dig(&shop, &["-x", "10.96.1.10"]);
    assert_eq!(d.data("PTR"), vec!["web.shop.svc.cluster.local."]);
    let d = dig(&shop, &["+nosearch", "nope.shop.svc.cluster.local"]);
    assert_eq!(d.status, "NXDOMAIN");
    assert_eq!(
        d.authority.first().map(|a| (a.0.as_str(), a.1.as_str())),
        Some(("cluster.local.", "SOA")),
        "{d:?}"
    );
    let d = dig(&shop, &["+nosearch", "shop.svc.cluster.local"]);
    assert_eq!(
        (d.status.as_str(), d.answers.len()),
        ("NOERROR", 0),
        "an empty non-terminal is NODATA"
    );
    let d = dig(&shop, &["+nosearch", "TXT", "dns-version.cluster.local"]);
    assert_eq!(d.data("TXT"), vec!["\"1.1.0\""]);
    // Over TCP too.
    let d = dig(&shop, &["+tcp", "+nosearch", "web.shop.svc.cluster.local"]);
    assert_eq!(d.data("A"), vec!["10.96.1.10"]);
    // glibc through the pod's resolv.conf, short name and search list.
    assert_eq!(getent(&shop, "web").unwrap(), vec!["10.96.1.10"]);

    // Upstream names through the cache: the second lookup never reaches the upstream, and the
    // TTL counts down from the upstream's.
    let before = stub_count(&up);
    let d = dig(&shop, &["+nosearch", "other.example.org"]);
    assert_eq!(d.data("A"), vec!["203.0.113.30"]);
    let after_first = stub_count(&up);
    assert_eq!(
        after_first,
        before + 1,
        "one upstream exchange for the first lookup"
    );
    eventually("the cached TTL counts down", || {
        dig_ttl(&shop, "other.example.org") < 60
    });
    for _ in 0..5 {
        let d = dig(&shop, &["+nosearch", "other.example.org"]);
        assert_eq!(d.data("A"), vec!["203.0.113.30"]);
        let ttl: u32 = dig_ttl(&shop, "other.example.org");
        assert!(
            (1..60).contains(&ttl),
            "cached TTL {ttl} counts down from 60"
        );
    }
    assert_eq!(
        stub_count(&up),
        after_first,
        "cached: no more upstream exchanges"
    );
    // Negative answers are cached too; cluster-suffix misses never go upstream.
    let before = stub_count(&up);
    for _ in 0..3 {
        assert_eq!(
            dig(&shop, &["+nosearch", "missing.example.com"]).status,
            "NXDOMAIN"
        );
        assert_eq!(
            dig(
                &shop,
                &["+nosearch", "missing.example.com.shop.svc.cluster.local"]
            )
            .status,
            "NXDOMAIN"
        );
    }
    assert_eq!(stub_count(&up), before + 1);

    // The com/yahoo shadow: namespace "com" has a Service "yahoo", and yahoo.com exists
    // publicly. A pod's search walk must reach the public name.
    let d = dig(&blog, &["+nosearch", "yahoo.com.svc.cluster.local"]);
    assert_eq!(
        d.status, "NXDOMAIN",
        "the cluster name shadowing yahoo.com is refused: {d:?}"
    );
    assert_eq!(
        getent(&blog, "yahoo.com").unwrap(),
        vec!["203.0.113.20"],
        "the public yahoo.com, not 10.96.2.20"
    );
    // A Service in "com" whose public counterpart does not exist is answered.
    let d = dig(&blog, &["+nosearch", "internal.com.svc.cluster.local"]);
    assert_eq!(d.data("A"), vec!["10.96.2.30"]);
    assert!(metric(&env, "dns_shadowed") >= 1);
    // A namespace may opt out (it relies on the shadow): its pods get the Service, the others
    // still do not.
    let legacy = start_pod(&mut env, "legacy", "old").await;
    write_policy(
        &env,
        "dns-legacy.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: legacy-dns, namespace: legacy}\nspec:\n  allowShadowing: true\n",
    );
    eventually("namespace legacy opted out of shadow blocking", || {
        dig(&legacy, &["+nosearch", "yahoo.com.svc.cluster.local"]).data("A") == vec!["10.96.2.20"]
    });
    assert_eq!(
        dig(&blog, &["+nosearch", "yahoo.com.svc.cluster.local"]).status,
        "NXDOMAIN"
    );

    // DNS policy: namespace shop may resolve cluster names and api.example.com only.
    write_policy(
        &env,
        "dns-shop.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: shop-dns, namespace: shop}\nspec:\n  allow: [\"**.svc.cluster.local\", \"api.example.com\"]\n  defaultAction: Deny\n",
    );
    eventually("shop's policy denies other.example.org", || {
        dig(&shop, &["+nosearch", "other.example.org"]).status == "NXDOMAIN"
    });
    assert_eq!(
        dig(&shop, &["+nosearch", "api.example.com"]).data("A"),
        vec!["203.0.113.10"]
    );
    assert_eq!(
        dig(&shop, &["+nosearch", "web.shop.svc.cluster.local"]).data("A"),
        vec!["10.96.1.10"]
    );
    assert_eq!(
        dig(&blog, &["+nosearch", "other.example.org"]).data("A"),
        vec!["203.0.113.30"],
        "blog has no policy"
    );
    let check = |ip: IpAddr, name: &str| {
        let mut c = env.clients.policy.clone();
        let name = name.to_string();
        async move {
            c.check_dns(CheckDnsRequest {
                client_address: ip.to_string(),
                query_name: name,
                query_type: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let r = check(shop.ip, "other.example.org").await;
    assert_eq!(
        (
            DnsAction::try_from(r.action).unwrap(),
            r.policy.as_str(),
            r.reason.as_str()
        ),
        (
            DnsAction::Deny,
            "shop/shop-dns",
            "no pattern matched; default deny"
        )
    );
    let r = check(shop.ip, "api.example.com").await;
    assert_eq!(
        (DnsAction::try_from(r.action).unwrap(), r.reason.as_str()),
        (DnsAction::Allow, "allowed by \"api.example.com\"")
    );

    // A module: namespace blog blocks ad trackers (REFUSED) and logs, and expands search lists
    // in the server.
    write_policy(
        &env,
        "dns-blog.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: blog-dns, namespace: blog}\nspec:\n  module: blocklog\n  moduleSettings: {block: [\"*.ads.example.org\"], code: refused}\n  serverSideSearch: true\n",
    );
    eventually("blog's module refuses trackers", || {
        dig(&blog, &["+nosearch", "tracker.ads.example.org"]).status == "REFUSED"
    });
    assert_eq!(
        dig(&blog, &["+nosearch", "other.example.org"]).data("A"),
        vec!["203.0.113.30"]
    );
    let r = check(blog.ip, "tracker.ads.example.org").await;
    assert_eq!(
        (
            DnsAction::try_from(r.action).unwrap(),
            r.policy.as_str(),
            r.module.as_str(),
            r.reason.as_str()
        ),
        (
            DnsAction::Refuse,
            "blog/blog-dns",
            "blocklog",
            "blocked by \"*.ads.example.org\""
        )
    );
    let list = env
        .clients
        .policy
        .clone()
        .list_policies(ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner();
    let m = list
        .modules
        .iter()
        .find(|m| m.name == "blocklog")
        .expect("module listed");
    assert_eq!(m.world, "dns-policy");
    assert_eq!(
        m.sha256,
        netlet_host::wasm::file_sha256(&wasm_dir().join("dns-block-log.wasm")).unwrap()
    );
    assert!(m.counters.as_ref().unwrap().deny >= 2, "{m:?}");
    let out = Command::new(bin("netletctl"))
        .arg("--socket")
        .arg(&env.node.host.socket)
        .args(["policies", "-o", "json"])
        .output()
        .expect("netletctl policies");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("netletctl policies -o json");
    let listed = v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "blocklog")
        .cloned()
        .unwrap();
    assert_eq!(
        (listed["world"].as_str(), listed["sha256"].as_str()),
        (Some("dns-policy"), Some(m.sha256.as_str()))
    );
    assert!(
        v["dnsPolicies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "blog-dns" && p["module"] == "blocklog")
    );

    // Server-side search: one round trip for blog's pod, the whole walk for shop's.
    let q0 = metric(&env, "dns_queries");
    assert_eq!(
        getent(&blog, "other.example.org").unwrap(),
        vec!["203.0.113.30"]
    );
    let blog_queries = metric(&env, "dns_queries") - q0;
    let d = dig(&blog, &["+search", "other.example.org"]);
    assert_eq!(
        d.question, "other.example.org.blog.svc.cluster.local.",
        "answered at the first try: {d:?}"
    );
    assert_eq!(d.data("CNAME"), vec!["other.example.org."]);
    assert_eq!(d.data("A"), vec!["203.0.113.30"]);
    let q1 = metric(&env, "dns_queries");
    assert_eq!(
        getent(&shop, "api.example.com").unwrap(),
        vec!["203.0.113.10"]
    );
    let shop_queries = metric(&env, "dns_queries") - q1;
    eprintln!(
        "queries for one lookup with ndots:5: {blog_queries} with server-side search, {shop_queries} without"
    );
    assert_eq!(blog_queries, 1);
    assert_eq!(shop_queries, 4, "the three search domains, then the name");

    // A hostile module: the endless loop is stopped at its deadline; the policy fails closed,
    // and every other query is answered meanwhile.
    write_policy(
        &env,
        "dns-slow.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: slow-dns, namespace: slow}\nspec:\n  module: loop\n  failureAction: Refuse\n",
    );
    eventually("slow's module fails closed", || {
        dig(&slow, &["+nosearch", "api.example.com"]).status == "REFUSED"
    });
    let r = check(slow.ip, "api.example.com").await;
    assert!(
        r.reason
            .starts_with("module failed (deadline of 1ms exceeded)"),
        "{r:?}"
    );
    assert_eq!(
        dig(&shop, &["+nosearch", "web.shop.svc.cluster.local"]).data("A"),
        vec!["10.96.1.10"]
    );
    // Fail open instead.
    write_policy(
        &env,
        "dns-slow.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: slow-dns, namespace: slow}\nspec:\n  module: loop\n  failureAction: Allow\n",
    );
    eventually("slow's module fails open", || {
        dig(&slow, &["+nosearch", "api.example.com"]).data("A") == vec!["203.0.113.10"]
    });

    // A bad DnsPolicy is reported with its field, and the others stay in force.
    write_policy(
        &env,
        "dns-bad.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: bad, namespace: blog}\nspec:\n  allow: [\"a.**.b\"]\n",
    );
    eventually("the bad policy is reported", || {
        env.node.host.manifest_errors().iter().any(|e| {
            e.contains("DnsPolicy bad: allow[0]")
                && e.contains("\"**\" must be the whole leftmost label")
        })
    });
    assert_eq!(
        dig(&blog, &["+nosearch", "tracker.ads.example.org"]).status,
        "REFUSED"
    );

    // A host restart: a pod resolving in a loop loses no lookup (the fallback name server
    // answers while the node-local one is down), and the node-local server is back at once.
    let script = "import socket, time\nend = time.time() + 6\nok = fail = 0\nwhile time.time() < end:\n    try:\n        socket.getaddrinfo('api.example.com', 80, socket.AF_INET)\n        ok += 1\n    except Exception as e:\n        fail += 1\n    time.sleep(0.01)\nprint(ok, fail)\n";
    let looper = Command::new("ip")
        .args(["netns", "exec", &shop.name, "python3", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Timed steps of the scenario (the loop runs 6 s): resolving through the node-local
    // server, then with it gone for a second, then back.
    std::thread::sleep(Duration::from_millis(1500));
    env.node.host.stop_with(nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(1000));
    let t0 = Instant::now();
    env.node.host.spawn().await;
    let mut back = None;
    while t0.elapsed() < Duration::from_secs(10) {
        if dig(
            &shop,
            &[
                "+nosearch",
                "+time=1",
                &format!("@{LOCAL}"),
                "web.shop.svc.cluster.local",
            ],
        )
        .data("A")
            == vec!["10.96.1.10"]
        {
            back = Some(t0.elapsed());
            break;
        }
    }
    let out = looper.wait_with_output().unwrap();
    let counts: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    eprintln!(
        "restart: lookups ok {} failed {}; node-local DNS answering {:?} after the restart began",
        counts[0], counts[1], back
    );
    assert!(counts[0] > 50, "the loop ran: {counts:?}");
    assert_eq!(counts[1], 0, "no lookup failed across the restart");
    assert!(back.is_some(), "the node-local server came back");
}

/// An echo server on `port` of every address in `netns`: each connection is served on a thread
/// of its own until the peer closes it.
fn echo_server(netns: &Path, port: u16) {
    let l = probe::run_in(netns, move || {
        std::net::TcpListener::bind(("0.0.0.0", port))
    })
    .unwrap()
    .unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 256];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A TCP connection from inside a pod (the socket stays in the pod's namespace).
fn connect(pod: &PodNs, to: std::net::SocketAddr) -> Result<std::net::TcpStream, String> {
    let netns = pod._netns.as_ref().map(|n| n.path.clone()).expect("a pod");
    probe::run_in(&netns, move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_millis(1500))
            .map_err(|e| format!("connect {to}: {e}"))
    })?
}

/// Whether `msg` comes back over `c`.
fn echoes(c: &mut std::net::TcpStream, msg: &str) -> bool {
    use std::io::{Read, Write};
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; msg.len()];
    c.write_all(msg.as_bytes()).is_ok() && c.read_exact(&mut buf).is_ok() && buf == msg.as_bytes()
}

/// Whether a pod reaches the echo server at `ip` (a new connection).
fn reaches(pod: &PodNs, ip: &str) -> bool {
    match connect(pod, format!("{ip}:8080").parse().unwrap()) {
        Ok(mut c) => echoes(&mut c, "ping"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_by_name() {
    if !privileged("egress_by_name")
        || tool("dig", "egress_by_name").is_none()
        || tool("getent", "egress_by_name").is_none()
    {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = setup_with(
        "dnsegr",
        &netlet_testbed::harness::nft_driver("nft", &["--cluster-cidr", V4]),
        "",
    )
    .await;
    let web = start_pod(&mut env, "shop", "web").await;
    let free = start_pod(&mut env, "blog", "free").await;
    // The names' addresses live in the upstream's namespace, behind the node.
    let up = env._up.path.clone();
    for a in ["203.0.113.10/32", "203.0.113.11/32", "203.0.113.30/32"] {
        probe::add_address(&up, "lo", a).unwrap();
    }
    probe::add_route(
        &env.node.netns.path,
        "203.0.113.0/24",
        UPSTREAM.parse().unwrap(),
    )
    .unwrap();
    echo_server(&up, 8080);
    assert!(
        reaches(&web, "203.0.113.30"),
        "no policy yet: the wire is open"
    );

    write_policy(
        &env,
        "egress.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: shop-egress, namespace: shop}\nspec:\n  allow: [\"**.svc.cluster.local\", \"api.example.com\", \"brief.example.com\"]\n  defaultAction: Deny\n  egressByName: true\n  egressMinTtlSeconds: 1\n",
    );
    // The host's own NetworkPolicy for the pod, in the drivers' table.
    let mut pc = env.clients.policy.clone();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let l = pc
            .list_policies(ListPoliciesRequest {})
            .await
            .unwrap()
            .into_inner();
        if l.network_policies.iter().any(|p| {
            p.key
                .as_ref()
                .is_some_and(|k| k.namespace == "shop" && k.name == "dns-egress-web")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no dns-egress-web in {l:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !reaches(&web, "203.0.113.30"),
        "egress by name: an address never answered is closed"
    );
    assert!(
        !reaches(&web, "203.0.113.10"),
        "nor api.example.com's before the pod asked"
    );
    assert!(
        reaches(&free, "203.0.113.30"),
        "a pod no policy selects is not affected"
    );

    // Resolved, then reachable at once: the drivers held the address before the answer left.
    assert_eq!(
        getent(&web, "api.example.com").unwrap(),
        vec!["203.0.113.10"]
    );
    assert!(
        reaches(&web, "203.0.113.10"),
        "api.example.com after asking"
    );
    // A name the policy denies gives no address and opens nothing.
    assert!(getent(&web, "other.example.org").is_err());
    assert!(!reaches(&web, "203.0.113.30"));
    // Cluster names still resolve (the DNS servers stay reachable).
    assert_eq!(getent(&web, "web").unwrap(), vec!["10.96.1.10"]);

    // A 1 s TTL: allowed for a second or so, then new connections are closed again; a
    // connection made in time lives on.
    assert_eq!(
        getent(&web, "brief.example.com").unwrap(),
        vec!["203.0.113.11"]
    );
    let mut kept = connect(&web, "203.0.113.11:8080".parse().unwrap())
        .expect("brief.example.com reachable right after the answer");
    assert!(echoes(&mut kept, "first"));
    eventually("the answer's TTL runs out", || {
        !reaches(&web, "203.0.113.11")
    });
    assert!(
        echoes(&mut kept, "still here"),
        "an established connection outlives the answer"
    );
    // Asking again opens it again.
    assert_eq!(
        getent(&web, "brief.example.com").unwrap(),
        vec!["203.0.113.11"]
    );
    assert!(reaches(&web, "203.0.113.11"));

    // Without egress by name the pod's NetworkPolicy goes, and with it the restriction.
    write_policy(
        &env,
        "egress.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: shop-egress, namespace: shop}\nspec:\n  defaultAction: Allow\n",
    );
    eventually("egress by name lifted", || reaches(&web, "203.0.113.30"));
}

/// The packet counters of the node's `inet nlcheck` table, by the comment of their rule.
fn counters(env: &Env) -> std::collections::BTreeMap<String, u64> {
    let out = env
        .node
        .command(Path::new("/usr/sbin/nft"))
        .args(["list", "table", "inet", "nlcheck"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            let n = l
                .split("counter packets ")
                .nth(1)?
                .split_whitespace()
                .next()?;
            let c = l.split("comment \"").nth(1)?.trim_end_matches('"');
            Some((c.to_string(), n.parse().ok()?))
        })
        .collect()
}

/// Loads `ruleset` with `nft -f -` in the node's namespace.
fn nft_load(env: &Env, ruleset: &str) {
    let mut nft = env
        .node
        .command(Path::new("/usr/sbin/nft"))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
    }
    assert!(nft.wait().unwrap().success(), "nft -f: {ruleset}");
}

#[tokio::test(flavor = "multi_thread")]
async fn notrack_and_cluster_dns_takeover() {
    const CLUSTER_DNS: &str = "10.96.0.10";
    if !privileged("notrack_and_cluster_dns_takeover")
        || tool("dig", "notrack_and_cluster_dns_takeover").is_none()
        || tool("nft", "notrack_and_cluster_dns_takeover").is_none()
    {
        return;
    }
    let _serial = SERIAL.lock().await;
    // The cluster DNS Service (kube-dns, 10.96.0.10, its endpoint the stub) is programmed by the
    // nft driver; the host also listens on its IP: taken over on this node.
    let mut env = setup_with(
        "dnstko",
        &netlet_testbed::harness::nft_driver("nft", &["--cluster-cidr", V4]),
        &format!("  listen: [\"{LOCAL}\", \"{CLUSTER_DNS}\"]\n"),
    )
    .await;
    let pod = start_pod(&mut env, "shop", "asker").await;
    eventually("the nft driver programs the cluster DNS Service", || {
        let out = env
            .node
            .command(Path::new("/usr/sbin/nft"))
            .args(["list", "table", "ip", "netlet-nft"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(CLUSTER_DNS)
    });
    // Counters of what DNS packets reach the node's input hook as: untracked or new.
    let check = "table inet nlcheck {\n  chain input {\n    type filter hook input priority 0;\n    meta l4proto udp th dport 53 ct state untracked counter comment \"untracked\"\n    meta l4proto udp th dport 53 ct state new counter comment \"new\"\n  }\n}\n";
    nft_load(&env, check);

    // Both addresses answer cluster names: the Service's DNAT never saw the packets.
    for server in [LOCAL, CLUSTER_DNS] {
        for _ in 0..5 {
            let d = dig(
                &pod,
                &[
                    "+nosearch",
                    &format!("@{server}"),
                    "web.shop.svc.cluster.local",
                ],
            );
            assert_eq!(d.data("A"), vec!["10.96.1.10"], "@{server}: {d:?}");
        }
    }
    let c = counters(&env);
    assert!(
        c["untracked"] >= 10,
        "every query reached the server untracked: {c:?}"
    );
    assert_eq!(c["new"], 0, "no conntrack entry for DNS: {c:?}");

    // A graceful stop gives the cluster DNS IP back to the Service: pods reach the cluster DNS
    // (the stub) through it, as if the node-local server had never been there.
    env.node.host.stop_with(nix::sys::signal::Signal::SIGTERM);
    let lo = env
        .node
        .command(Path::new("/usr/sbin/ip"))
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .unwrap();
    let lo = String::from_utf8_lossy(&lo.stdout).into_owned();
    assert!(!lo.contains(&format!("{CLUSTER_DNS}/")), "{lo}");
    assert!(
        lo.contains(&format!("{LOCAL}/")),
        "the link-local address stays (refused at once, not a timeout): {lo}"
    );
    let tables = env
        .node
        .command(Path::new("/usr/sbin/nft"))
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("netlet-dns"));
    let d = dig(
        &pod,
        &["+nosearch", &format!("@{CLUSTER_DNS}"), "api.example.com"],
    );
    assert_eq!(
        d.data("A"),
        vec!["203.0.113.10"],
        "the Service's endpoint answers: {d:?}"
    );
    let d = dig(
        &pod,
        &[
            "+nosearch",
            &format!("@{CLUSTER_DNS}"),
            "web.shop.svc.cluster.local",
        ],
    );
    assert_ne!(
        d.data("A"),
        vec!["10.96.1.10"],
        "not the node-local server: {d:?}"
    );

    // Back: taken over again.
    env.node.host.spawn().await;
    let answered = |pod: &PodNs| {
        dig(
            pod,
            &[
                "+nosearch",
                "+time=1",
                &format!("@{CLUSTER_DNS}"),
                "web.shop.svc.cluster.local",
            ],
        )
        .data("A")
            == vec!["10.96.1.10"]
    };
    eventually("the cluster DNS IP answered on the node again", || {
        answered(&pod)
    });

    // The node-local server is the cluster's DNS (no endpoint behind kube-dns, as deploy/
    // runs it): a graceful stop (a DaemonSet's rolling update) holds the IP, and a query sent
    // while the host is away goes unanswered rather than refused, so its retry reaches the
    // next host and the lookup succeeds.
    let services = SERVICES
        .split("---\n")
        .filter(|d| !d.contains("name: kube-dns-1"))
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(env.man.path().join("services.yaml"), services).unwrap();
    eventually("kube-dns without endpoints on the node", || {
        let out = env
            .node
            .command(Path::new("/usr/sbin/nft"))
            .args(["list", "table", "ip", "netlet-nft"])
            .output()
            .unwrap();
        !String::from_utf8_lossy(&out.stdout).contains("192.0.2.53")
    });
    env.node.host.stop_with(nix::sys::signal::Signal::SIGTERM);
    let lo = env
        .node
        .command(Path::new("/usr/sbin/ip"))
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .unwrap();
    let lo = String::from_utf8_lossy(&lo.stdout).into_owned();
    assert!(lo.contains(&format!("{CLUSTER_DNS}/")), "held: {lo}");
    // The rules are what nft(8) makes of the same rules written by hand (loaded into a scratch
    // table and listed the same way).
    let rules = |table: &str| -> Vec<String> {
        let out = env
            .node
            .command(Path::new("/usr/sbin/nft"))
            .args(["list", "chain", "inet", table, "hold"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("ip "))
            .map(str::to_string)
            .collect()
    };
    let reference = "table inet nlref {\n  chain hold {\n    type filter hook output priority 0;\n    ip saddr 10.96.0.10 icmp type destination-unreachable icmp code port-unreachable drop\n    ip saddr 10.96.0.10 tcp sport 53 tcp flags & rst != 0 drop\n  }\n}\n";
    nft_load(&env, reference);
    let (ours, theirs) = (rules("netlet-dns"), rules("nlref"));
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(ours, theirs);
    let deleted = env
        .node
        .command(Path::new("/usr/sbin/nft"))
        .args(["delete", "table", "inet", "nlref"])
        .status()
        .unwrap();
    assert!(deleted.success());
    // One query, one try, sent while nothing listens: it waits (no refusal) and its answer
    // comes from the host started meanwhile.
    let name = pod.name.clone();
    let asked = std::thread::spawn(move || {
        let started = Instant::now();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "dig",
                "+tries=2",
                "+time=3",
                "+short",
                "+nosearch",
            ])
            .arg(format!("@{CLUSTER_DNS}"))
            .arg("web.shop.svc.cluster.local")
            .output()
            .unwrap();
        // dig notes the first try's timeout on a line of its own before the answer.
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let answer = stdout.lines().last().unwrap_or("").trim().to_string();
        (answer, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    env.node.host.spawn().await;
    let (answer, took) = asked.join().unwrap();
    assert_eq!(
        answer, "10.96.1.10",
        "the lookup across the restart (took {took:?})"
    );
}

/// A tenant's Services a pod then asks for: aliases that loop or run long, and a headless
/// Service whose answer does not fit a DNS message.
fn hostile_services(big: usize) -> String {
    let ext = |name: &str, to: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: tenant}}\nspec: {{type: ExternalName, externalName: {to}}}\n---\n"
        )
    };
    let svc = |n: &str| format!("{n}.tenant.svc.cluster.local");
    let mut y = String::new();
    // One naming itself; two naming each other.
    y += &ext("self", &svc("self"));
    y += &ext("ping", &svc("pong"));
    y += &ext("pong", &svc("ping"));
    // A chain of twelve ending in a public name (longer than any resolver follows), and one
    // of three that does (what a user may well build).
    for i in 0..12 {
        let to = if i == 11 {
            "api.example.com".to_string()
        } else {
            svc(&format!("long{}", i + 1))
        };
        y += &ext(&format!("long{i}"), &to);
    }
    for i in 0..3 {
        let to = if i == 2 {
            "api.example.com".to_string()
        } else {
            svc(&format!("short{}", i + 1))
        };
        y += &ext(&format!("short{i}"), &to);
    }
    y += "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: tenant}\nspec: {clusterIP: None}\n---\n";
    y += "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: big-1, namespace: tenant, labels: {kubernetes.io/service-name: big}}\naddressType: IPv4\nendpoints:\n";
    for i in 0..big {
        y += &format!(
            "- {{addresses: [10.250.{}.{}], conditions: {{ready: true}}}}\n",
            i / 250,
            i % 250 + 1
        );
    }
    y
}

/// Attacks from a pod's namespace on the node-local DNS server with what any tenant may
/// create: an ExternalName naming itself, two naming each other, a long alias chain, and a
/// headless Service too large for one TCP message. None of them may take the server (or the
/// host) down; each is answered as CoreDNS answers it.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_do_not_take_dns_down() {
    if !privileged("hostile_names_do_not_take_dns_down")
        || tool("dig", "hostile_names_do_not_take_dns_down").is_none()
    {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = setup_with("dnsatk", "", "").await;
    let pod = start_pod(&mut env, "tenant", "attacker").await;
    let pid = env.node.host.pid().expect("host running");
    // 4500 endpoints: 4500 A records of 16 bytes each pass the 65,535 bytes a TCP message holds.
    write_policy(&env, "hostile.yaml", &hostile_services(4500));
    eventually("the tenant's Services are served", || {
        dig(
            &pod,
            &["+nosearch", "CNAME", "self.tenant.svc.cluster.local"],
        )
        .data("CNAME")
            == vec!["self.tenant.svc.cluster.local."]
    });

    for tcp in [false, true] {
        let t = if tcp { "+tcp" } else { "+notcp" };
        for name in ["self", "ping", "pong", "long0"] {
            let q = format!("{name}.tenant.svc.cluster.local");
            let d = dig(&pod, &["+nosearch", t, &q]);
            assert_eq!(d.status, "SERVFAIL", "{q} ({t}): {d:?}");
        }
        // A short chain still resolves: three aliases, then the public name's address.
        let d = dig(&pod, &["+nosearch", t, "short0.tenant.svc.cluster.local"]);
        assert_eq!(d.status, "NOERROR", "{d:?}");
        assert_eq!(
            d.data("CNAME"),
            vec![
                "api.example.com.",
                "short1.tenant.svc.cluster.local.",
                "short2.tenant.svc.cluster.local.",
            ],
            "{d:?}"
        );
        assert_eq!(d.data("A"), vec!["203.0.113.10"], "{d:?}");
    }
    // Asked again and again, from the same pod: still answered, the host never restarts.
    for _ in 0..20 {
        assert_eq!(
            dig(&pod, &["+nosearch", "self.tenant.svc.cluster.local"]).status,
            "SERVFAIL"
        );
    }
    assert!(metric(&env, "dns_alias_loops") >= 28);

    // Too large for TCP: answered truncated (TC), never with a wrapped length.
    let d = dig(
        &pod,
        &[
            "+nosearch",
            "+tcp",
            "+ignore",
            "big.tenant.svc.cluster.local",
        ],
    );
    assert_eq!(d.status, "NOERROR", "{d:?}");
    assert!(d.flags.contains(&"tc".to_string()), "{d:?}");
    // Connections held open without a query: a pod gets 16 at most, the rest are closed at
    // once, and another pod's TCP query is still answered.
    let held = probe::run_in(
        &PathBuf::from("/run/netns").join(&pod.name),
        || -> Vec<Option<std::net::TcpStream>> {
            (0..20)
                .map(|_| {
                    std::net::TcpStream::connect_timeout(
                        &format!("{LOCAL}:53").parse().unwrap(),
                        Duration::from_secs(2),
                    )
                    .ok()
                })
                .collect()
        },
    )
    .unwrap();
    let open: Vec<bool> = held
        .iter()
        .map(|c| {
            use std::io::Read;
            let Some(c) = c else { return false };
            c.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            // Closed by the server: EOF at once; held: nothing to read until the idle deadline.
            !matches!((&*c).read(&mut [0u8; 1]), Ok(0))
        })
        .collect();
    let n = open.iter().filter(|o| **o).count();
    assert!(
        (1..=16).contains(&n),
        "a pod holds at most 16 DNS-over-TCP connections: {open:?}"
    );
    let other = start_pod(&mut env, "tenant", "bystander").await;
    let d = dig(&other, &["+nosearch", "+tcp", "web.shop.svc.cluster.local"]);
    assert_eq!(d.data("A"), vec!["10.96.1.10"], "{d:?}");
    assert!(metric(&env, "dns_tcp_refused") >= 4);
    drop(held);

    // Everything else is still served by the same process.
    let d = dig(&pod, &["+nosearch", "web.shop.svc.cluster.local"]);
    assert_eq!(d.data("A"), vec!["10.96.1.10"], "{d:?}");
    assert_eq!(env.node.host.pid(), Some(pid));
    assert!(
        Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z "),
        "the host is still running"
    );
    assert_eq!(metric(&env, "dns_panics"), 0);
}

// Issue: cluster names never depend on the outside. A Service in a namespace named like a
// public suffix (`shop`, `com`) is answered at once whether or not the node's upstream can be
// reached; a public name the upstream once said exists stays protected while it is away.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_names_never_wait_for_the_upstream() {
    const T: &str = "cluster_names_never_wait_for_the_upstream";
    if !privileged(T) || tool("dig", T).is_none() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = setup_with("dnsup", "", "").await;
    let pod = start_pod(&mut env, "blog", "reader").await;
    // With the upstream there: yahoo.com exists, so the Service yahoo in namespace com does
    // not answer for it.
    eventually(
        "yahoo.com.svc.cluster.local refused while yahoo.com exists",
        || dig(&pod, &["+nosearch", "yahoo.com.svc.cluster.local"]).status == "NXDOMAIN",
    );
    // The upstream goes away: its link down, its packets lost (a timeout, not a refusal).
    probe::link_down(&env._up.path, "node0").unwrap();
    // A Service created now in namespace shop (a public suffix) whose name was never asked
    // upstream: answered at once.
    write_policy(
        &env,
        "api.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {clusterIP: 10.96.1.40, ports: [{name: http, port: 80}]}\n",
    );
    eventually("api.shop is in the zone", || {
        dig(&pod, &["+nosearch", "api.shop.svc.cluster.local"]).status != "SERVFAIL"
    });
    // dig gives up after one second (the upstream's own timeout is 2 s): an answer that waited
    // for the upstream never arrives.
    for name in ["api.shop.svc.cluster.local", "web.shop.svc.cluster.local"] {
        let d = dig(&pod, &["+nosearch", "+tries=1", "+time=1", name]);
        assert_eq!(d.status, "NOERROR", "{name}: {d:?}");
        assert_eq!(d.data("A").len(), 1, "{name}: {d:?}");
    }
    // What the upstream said before it went away still holds: yahoo.com stays protected.
    let d = dig(
        &pod,
        &[
            "+nosearch",
            "+tries=1",
            "+time=1",
            "yahoo.com.svc.cluster.local",
        ],
    );
    assert_eq!(d.status, "NXDOMAIN", "{d:?}");
}
