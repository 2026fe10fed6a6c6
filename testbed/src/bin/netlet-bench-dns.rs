//! netlet-bench-dns: the WebAssembly policy engine and the node-local DNS server, each row with
//! its anchor from the same run.
//!
//! a. A DNS policy decision (per-namespace allow/deny lists with wildcards) in a WebAssembly
//!    module, instantiated from the pool for every call, beside the same rule in native Rust
//!    (the host's built-in lists). Targets: p50 ≤ 3 µs, p99 ≤ 20 µs.
//! b. Cached cluster-name queries per second with `dnsperf` (Debian): netlet's node-local server
//!    with a DNS policy on, beside Unbound (Debian) serving the same records as local data, and
//!    CoreDNS (its file plugin, the same records) when a `coredns` binary is given, all in one
//!    node namespace on this machine. Target: ≥ Unbound, ≥ 3× CoreDNS.
//! c. Queries per lookup of an external name from a pod (glibc, `ndots:5`, the kubelet search
//!    list), without and with server-side search expansion, counted by the node-local server;
//!    the anchor is the same pod's lookups without expansion. Target: 1 query per lookup.
//!
//! Every row is repeated (`--repeat`) and printed as the median with the spread (min–max).
//! Not a test: it gates nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use netlet_host::dns::policy::{Client, Policies};
use netlet_host::wasm::{Limits, ModuleSpec, Modules};
use netlet_sdk::proto::{DnsAction, DnsPolicy, PolicyKey, PolicyKind};
use netlet_testbed::harness::{Node, bin};
use netlet_testbed::stats::pct;

#[derive(Parser)]
#[command(about = "WebAssembly policy decisions and node-local DNS throughput")]
struct Args {
    /// Runs of each row (median and spread printed).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Decisions per run (row a).
    #[arg(long, default_value_t = 20000)]
    calls: usize,
    /// Services in the zone (row b).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Seconds per dnsperf run (row b).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// dnsperf clients (sockets) and threads (row b).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Where the modules are (default `$NETLET_WASM_DIR` or `<target>/wasm-policies`).
    #[arg(long)]
    modules: Option<PathBuf>,
    /// A CoreDNS binary for row b's second anchor.
    #[arg(long, env = "NETLET_COREDNS")]
    coredns: Option<PathBuf>,
    /// Only row a (no namespaces, no servers).
    #[arg(long)]
    engine_only: bool,
}

fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn row_a(args: &Args, dir: &Path) {
    println!(
        "a. DNS policy decision: per-namespace lists (25 patterns), {} calls per run, {} runs",
        args.calls, args.repeat
    );
    let modules = Modules::new(Limits::default()).expect("engine");
    let errors = modules.configure(vec![ModuleSpec {
        name: "lists".into(),
        path: dir.join("dns-namespace-lists.wasm"),
        sha256: None,
        fail_open: false,
    }]);
    assert!(errors.is_empty(), "{errors:?}");
    let allow: Vec<String> = (0..20)
        .map(|i| format!("*.svc{i}.example.com"))
        .chain(["**.svc.cluster.local".to_string()])
        .collect();
    let deny: Vec<String> = (0..4).map(|i| format!("bad{i}.example.com")).collect();
    let settings = serde_json::json!({
        "namespaces": {"shop": {"allow": allow, "deny": deny}},
        "default": "deny",
    })
    .to_string();
    let key = |name: &str| PolicyKey {
        kind: PolicyKind::DnsPolicy as i32,
        namespace: "shop".into(),
        name: name.into(),
    };
    let native = Policies::new([DnsPolicy {
        key: Some(key("native")),
        allow: allow.clone(),
        deny: deny.clone(),
        default_action: DnsAction::Deny as i32,
        ..Default::default()
    }]);
    let wasm = Policies::new([DnsPolicy {
        key: Some(key("wasm")),
        module: "lists".into(),
        module_settings_json: settings,
        ..Default::default()
    }]);
    let client = Client {
        namespace: "shop".into(),
        name: "web-0".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        search: Vec::new(),
    };
    let names = [
        "db.shop.svc.cluster.local.",
        "api.svc7.example.com.",
        "bad2.example.com.",
        "google.com.",
    ];
    // Both must agree on every name before they are timed.
    for n in names {
        let a = native
            .decide(&modules, Some(&client), &"10.244.0.5", n, 1)
            .action;
        let b = wasm
            .decide(&modules, Some(&client), &"10.244.0.5", n, 1)
            .action;
        assert_eq!(a, b, "{n}: native and module disagree");
    }
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = Vec::new();
    for (label, p) in [
        ("native Rust (anchor)", &native),
        ("WebAssembly module", &wasm),
    ] {
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for _ in 0..args.repeat {
            let mut lat = Vec::with_capacity(args.calls);
            for i in 0..args.calls {
                let n = names[i % names.len()];
                let t = Instant::now();
                let d = p.decide(&modules, Some(&client), &"10.244.0.5", n, 1);
                lat.push(t.elapsed());
                std::hint::black_box(d);
            }
            p50s.push(pct(&mut lat, 0.50).as_nanos() as f64 / 1000.0);
            p99s.push(pct(&mut lat, 0.99).as_nanos() as f64 / 1000.0);
        }
        rows.push((label, p50s, p99s));
    }
    println!(
        "   {:<24} {:>22} {:>22}",
        "", "p50 µs (min–max)", "p99 µs (min–max)"
    );
    let mut medians = Vec::new();
    for (label, mut p50, mut p99) in rows {
        let (m50, lo50, hi50) = spread(&mut p50);
        let (m99, lo99, hi99) = spread(&mut p99);
        medians.push((m50, m99));
        println!(
            "   {label:<24} {m50:>8.2} ({lo50:.2}–{hi50:.2}) {m99:>10.2} ({lo99:.2}–{hi99:.2})"
        );
    }
    println!(
        "   module / native: p50 {:.1}×, p99 {:.1}× (targets: module p50 ≤ 3 µs, p99 ≤ 20 µs, instantiation included)",
        medians[1].0 / medians[0].0,
        medians[1].1 / medians[0].1
    );
}

struct Server {
    label: String,
    address: String,
    child: Option<std::process::Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn dnsperf(node: &Node, server: &str, queries: &Path, args: &Args) -> (f64, f64) {
    let out = node
        .command(Path::new("/usr/bin/dnsperf"))
        .args(["-s", server, "-d"])
        .arg(queries)
        .args([
            "-l",
            &args.seconds.to_string(),
            "-c",
            &args.clients.to_string(),
            "-T",
            "2",
            "-q",
            "500",
            "-t",
            "2",
        ])
        .stderr(Stdio::null())
        .output()
        .expect("dnsperf");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("dnsperf output without {label:?}:\n{text}"))
    };
    let lost = field("Queries lost");
    assert!(
        lost < field("Queries sent") * 0.01,
        "more than 1% lost against {server}:\n{text}"
    );
    (
        field("Queries per second"),
        field("Average Latency (s)") * 1e6,
    )
}

fn wait_answering(node: &Node, server: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = node
            .command(Path::new("/usr/bin/dig"))
            .args([&format!("@{server}"), "+short", "+time=1", "+tries=1", name])
            .output()
            .expect("dig");
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{server} does not answer {name}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn row_b(args: &Args) {
    println!(
        "b. cached cluster-name queries: {} Services, dnsperf {} s × {} clients, {} runs per server",
        args.services, args.seconds, args.clients, args.repeat
    );
    let tmp = tempfile::tempdir().unwrap();
    let man = tmp.path().join("manifests");
    std::fs::create_dir_all(&man).unwrap();
    let mut yaml = String::new();
    let mut records = Vec::new();
    let mut queries = String::new();
    for i in 0..args.services {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let ns = format!("ns{}", i % 10);
        yaml += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec: {{clusterIP: {ip}}}\n"
        );
        records.push((format!("svc{i}.{ns}.svc.cluster.local"), ip));
        queries += &format!("svc{i}.{ns}.svc.cluster.local A\n");
    }
    // Policy on: every client (the load generator is no pod: the cluster-wide policy applies).
    yaml += "---\napiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: cluster-names}\nspec:\n  allow: [\"**.svc.cluster.local\"]\n  defaultAction: Deny\n";
    std::fs::write(man.join("services.yaml"), yaml).unwrap();
    let qfile = tmp.path().join("queries.txt");
    std::fs::write(&qfile, queries).unwrap();
    let extra = format!(
        "manifestsDir: {}\ndns:\n  listen: [\"169.254.20.10:53\"]\n  upstreams: []\n",
        man.display()
    );
    let node = Node::start("bdns", "", &extra).await;

    let mut servers = vec![Server {
        label: "netlet (policy on)".into(),
        address: "169.254.20.10".into(),
        child: None,
    }];
    // Unbound with the same records as local data.
    let uconf = tmp.path().join("unbound.conf");
    let mut u = String::from(
        "server:\n  interface: 127.0.0.11\n  port: 53\n  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  directory: \"\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  num-threads: 2\n  so-reuseport: yes\n  access-control: 0.0.0.0/0 allow\n  module-config: \"iterator\"\n  do-ip6: no\n  local-zone: \"cluster.local.\" static\n",
    );
    for (n, ip) in &records {
        u += &format!("  local-data: \"{n}. 5 IN A {ip}\"\n");
    }
    u += "remote-control:\n  control-enable: no\n";
    std::fs::write(&uconf, u).unwrap();
    let unbound = node
        .command(Path::new("/usr/sbin/unbound"))
        .args(["-d", "-c"])
        .arg(&uconf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unbound");
    servers.push(Server {
        label: "Unbound (anchor)".into(),
        address: "127.0.0.11".into(),
        child: Some(unbound),
    });
    if let Some(coredns) = &args.coredns {
        let zone = tmp.path().join("cluster.local.db");
        let mut z = String::from(
            "$ORIGIN cluster.local.\n@ 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n",
        );
        for (n, ip) in &records {
            z += &format!("{n}. 5 IN A {ip}\n");
        }
        std::fs::write(&zone, z).unwrap();
        let corefile = tmp.path().join("Corefile");
        std::fs::write(
            &corefile,
            format!(
                "cluster.local:53 {{\n  bind 127.0.0.12\n  file {}\n}}\n",
                zone.display()
            ),
        )
        .unwrap();
        let c = node
            .command(coredns)
            .arg("-conf")
            .arg(&corefile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coredns");
        servers.push(Server {
            label: "CoreDNS file (anchor)".into(),
            address: "127.0.0.12".into(),
            child: Some(c),
        });
    }
    for s in &servers {
        wait_answering(&node, &s.address, &records[0].0);
    }
    let mut results = Vec::new();
    for s in &servers {
        let (mut qps, mut lat) = (Vec::new(), Vec::new());
        for _ in 0..args.repeat {
            let (q, l) = dnsperf(&node, &s.address, &qfile, args);
            qps.push(q);
            lat.push(l);
        }
        let (mq, lq, hq) = spread(&mut qps);
        let (ml, _, _) = spread(&mut lat);
        println!(
            "   {:<24} {mq:>9.0} qps ({lq:.0}–{hq:.0}), mean latency {ml:.0} µs",
            s.label
        );
        results.push((s.label.clone(), mq));
    }
    for (label, q) in &results[1..] {
        println!("   netlet / {label}: {:.2}×", results[0].1 / q);
    }
    if args.coredns.is_none() {
        println!("   (no CoreDNS binary given: --coredns or NETLET_COREDNS)");
    }
    drop(servers);
}

/// The node-local server's count of queries received.
fn queries_received(node: &Node) -> u64 {
    let out = std::process::Command::new(bin("netletctl"))
        .arg("--socket")
        .arg(&node.host.socket)
        .arg("metrics")
        .output()
        .expect("netletctl metrics");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("netlet_dns_queries_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("netlet_dns_queries_total")
}

async fn row_c(args: &Args) {
    const LOOKUPS: usize = 200;
    println!(
        "c. queries per lookup of api.example.com from a pod (glibc getaddrinfo, ndots:5), {LOOKUPS} lookups per run, {} runs",
        args.repeat
    );
    let tmp = tempfile::tempdir().unwrap();
    let man = tmp.path().join("manifests");
    std::fs::create_dir_all(&man).unwrap();
    // Namespace "expand" has server-side search; "plain" has not.
    std::fs::write(
        man.join("dns.yaml"),
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: expand, namespace: expand}\nspec:\n  serverSideSearch: true\n",
    )
    .unwrap();
    let extra = format!(
        "manifestsDir: {}\ndns:\n  listen: [\"169.254.20.10:53\"]\n  upstreams: [\"127.0.0.53\"]\n",
        man.display()
    );
    let node = Node::start(
        "bdnsc",
        &netlet_testbed::harness::bridge_driver("bridge", "default", "netlet0", &["10.244.0.0/24"]),
        &extra,
    )
    .await;
    node.host.wait_ready("default").await;
    // The node's upstream: a stub in the node's namespace.
    let _stub = Server {
        label: "stub".into(),
        address: "127.0.0.53".into(),
        child: Some(
            node.command(&bin("netlet-dns-stub"))
                .args(["--listen", "127.0.0.53:53"])
                .args(["--record", "api.example.com A 203.0.113.10 300"])
                .stdout(Stdio::null())
                .spawn()
                .expect("netlet-dns-stub"),
        ),
    };
    let clients = node.host.clients().await;
    let mut rows = Vec::new();
    for ns in ["plain", "expand"] {
        let netns =
            netlet_testbed::probe::NetNs::create(&format!("bdnsc-{ns}-{}", std::process::id()))
                .unwrap();
        let sandbox = netlet_sdk::proto::PodSandbox {
            id: format!("bdnsc-{ns}"),
            name: "client".into(),
            namespace: ns.into(),
            uid: format!("bdnsc-{ns}"),
            netns_path: netns.path.display().to_string(),
            ..Default::default()
        };
        let a = netlet_testbed::harness::attach(&clients, sandbox, vec![])
            .await
            .expect("attach");
        let dns = a[0].dns.clone().expect("a DNS config");
        let name = netns
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let etc = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver {}\nsearch {}\noptions {}\n",
                dns.nameservers[0],
                dns.searches.join(" "),
                dns.options.join(" ")
            ),
        )
        .unwrap();
        let script = format!(
            "import socket, time\nt = time.perf_counter()\nfor _ in range({LOOKUPS}):\n    socket.getaddrinfo('api.example.com', 80, socket.AF_INET, socket.SOCK_STREAM)\nprint((time.perf_counter() - t) / {LOOKUPS} * 1e6)\n"
        );
        let (mut per, mut micros) = (Vec::new(), Vec::new());
        for _ in 0..args.repeat {
            let before = queries_received(&node);
            // `ip netns exec` (not netlet-netns-exec): it mounts /etc/netns/<name>/resolv.conf
            // over /etc/resolv.conf, the file glibc's resolver reads.
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &name, "python3", "-c", &script])
                .output()
                .expect("python3");
            assert!(
                out.status.success(),
                "lookups from {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let after = queries_received(&node);
            per.push((after - before) as f64 / LOOKUPS as f64);
            micros.push(
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<f64>()
                    .unwrap(),
            );
        }
        let _ = std::fs::remove_dir_all(&etc);
        let (mq, lq, hq) = spread(&mut per);
        let (mt, lt, ht) = spread(&mut micros);
        let label = if ns == "plain" {
            "client-side search (anchor)"
        } else {
            "server-side search"
        };
        println!(
            "   {label:<28} {mq:>5.2} queries/lookup ({lq:.2}–{hq:.2}), {mt:>7.0} µs/lookup ({lt:.0}–{ht:.0})"
        );
        rows.push(mq);
        netlet_testbed::harness::detach(&clients, &format!("bdnsc-{ns}"))
            .await
            .ok();
    }
    println!(
        "   queries per lookup: {:.2} → {:.2} (target: 1)",
        rows[0], rows[1]
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = args.modules.clone().unwrap_or_else(|| {
        std::env::var_os("NETLET_WASM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        bin("netlet")
                            .parent()
                            .unwrap()
                            .parent()
                            .unwrap()
                            .to_path_buf()
                    })
                    .join("wasm-policies")
            })
    });
    row_a(&args, &dir);
    if !args.engine_only {
        row_b(&args).await;
        row_c(&args).await;
    }
}
