//! Running real netlet hosts and drivers for tests and benchmarks: binaries found beside the
//! running executable, temporary run/state directories, processes killed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netlet_sdk::client::Clients;

/// Path of a workspace binary (`netlet`, `netlet-fixture-driver`, ...), next to the running
/// test or benchmark in the target directory. Build them first: `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A test that cannot run here (no root, a tool missing) fails, unless whoever runs it opted
/// out with `NETLET_ALLOW_SKIP=1` (never under `CI=true`): then it is a skip, written to
/// `$NETLET_SKIP_LOG` so the test command counts and lists it apart from the passes.
pub fn skip(test: &str, why: &str) {
    let allowed = std::env::var("NETLET_ALLOW_SKIP").as_deref() == Ok("1")
        && std::env::var("CI").as_deref() != Ok("true");
    assert!(
        allowed,
        "{test} cannot run here: {why} (./testbed/run-tests installs what the tests need; NETLET_ALLOW_SKIP=1 skips it instead, outside CI)"
    );
    eprintln!("{test}: skipped: {why}");
    if let Some(log) = std::env::var_os("NETLET_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// Whether privileged (root) tests can run here; when not, [`skip`] decides.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root");
    false
}

/// Finds `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `name` found on PATH; when it is not, [`skip`] decides.
pub fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        skip(test, &format!("{name} is not installed"));
    }
    found
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `netlet-conformance` (`cmd`, e.g. inside a node namespace) against `target` with
/// `args`, writing JUnit XML to `junit`; asserts it passed with 0 failed and a JUnit report of 0
/// failures, and returns its summary.
pub fn conformance(mut cmd: Command, target: &Path, args: &[&str], junit: &Path) -> String {
    let out = cmd
        .arg("--target")
        .arg(format!("unix://{}", target.display()))
        .arg("--junit")
        .arg(junit)
        .args(args)
        .output()
        .expect("run netlet-conformance");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains(" 0 failed"),
        "{}\n{text}\n{}",
        target.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = std::fs::read_to_string(junit).expect("junit written");
    assert!(xml.contains("failures=\"0\""), "{xml}");
    text
}

/// A supervised driver entry for a NodeConfig.
pub fn fixture_driver(name: &str, networks: &str, extra_args: &[&str]) -> String {
    let mut args = vec![
        "--name".to_string(),
        name.to_string(),
        "--networks".to_string(),
        networks.to_string(),
    ];
    args.extend(extra_args.iter().map(|s| s.to_string()));
    format!(
        "- name: {name}\n  command: {}\n  args: {}\n",
        bin("netlet-fixture-driver").display(),
        serde_json::to_string(&args).unwrap_or_default()
    )
}

/// A command for `program`, run inside `netns` (through `netlet-netns-exec`) when given.
pub fn in_netns(netns: Option<&Path>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new(bin("netlet-netns-exec"));
            c.arg(ns).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Where the test command built the WebAssembly policy modules (`$NETLET_WASM_DIR`, else
/// `$CARGO_TARGET_DIR/wasm-policies`); fails when they are not there.
pub fn wasm_dir() -> PathBuf {
    let dir = std::env::var_os("NETLET_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("wasm-policies")
        });
    assert!(
        dir.join("dns-block-log.wasm").exists(),
        "{}: modules not built (the test command builds them)",
        dir.display()
    );
    dir
}

/// A supervised bridge-driver entry: `network` on `bridge` with `subnets`.
pub fn bridge_driver(name: &str, network: &str, bridge: &str, subnets: &[&str]) -> String {
    let mut args = vec!["--name", name, "--network", network, "--bridge", bridge];
    for s in subnets {
        args.extend(["--subnet", s]);
    }
    format!(
        "- name: {name}\n  command: {}\n  args: {}\n",
        bin("netlet-bridge").display(),
        serde_json::to_string(&args).unwrap_or_default()
    )
}

/// A supervised bridge-driver entry as every node of a cluster runs it: network `default` on
/// `netlet0`, its pod CIDRs from the node's Node object, masquerading what leaves
/// `cluster_cidrs`, other nodes reached as `routing` says (auto, direct, overlay).
pub fn cluster_bridge_driver(cluster_cidrs: &[&str], routing: &str) -> String {
    let mut args = vec![
        "--name",
        "bridge",
        "--network",
        "default",
        "--bridge",
        "netlet0",
        "--pod-cidrs-from-node",
        "--masquerade",
        "--routing",
        routing,
    ];
    for c in cluster_cidrs {
        args.extend(["--cluster-cidr", c]);
    }
    format!(
        "- name: bridge\n  command: {}\n  args: {}\n",
        bin("netlet-bridge").display(),
        serde_json::to_string(&args).unwrap_or_default()
    )
}

/// `program` run under what the environment variable `var` names, for a benchmark's heap
/// profile (e.g. `/usr/bin/env LD_PRELOAD=… DUMP_HEAPTRACK_OUTPUT=…`: a wrapper that execs,
/// so the process found by name is the program itself): the command to run and the arguments
/// that come before the program's own. Without `var`, the program alone.
fn under(var: &str, program: PathBuf) -> (PathBuf, Vec<String>) {
    let wrapper = std::env::var(var).unwrap_or_default();
    let mut words = wrapper.split_whitespace().map(String::from);
    match words.next() {
        Some(first) => {
            let mut args: Vec<String> = words.collect();
            args.push(program.display().to_string());
            (PathBuf::from(first), args)
        }
        None => (program, Vec::new()),
    }
}

/// A supervised nft (Services) driver entry with `args`; run under `NETLET_NFT_UNDER` when set
/// (see [`under`]; `NETLET_HOST_UNDER` does the same for the host).
pub fn nft_driver(name: &str, args: &[&str]) -> String {
    let (command, mut all) = under("NETLET_NFT_UNDER", bin("netlet-nft"));
    all.extend(
        ["--name", name]
            .into_iter()
            .chain(args.iter().copied())
            .map(String::from),
    );
    let command = command.display();
    format!(
        "- name: {name}\n  command: {command}\n  args: {}\n",
        serde_json::to_string(&all).unwrap_or_default()
    )
}

/// A namespace standing for the node, with a host (and its drivers) running inside: no route
/// leaves it. The host stops before the namespace goes.
pub struct Node {
    /// The host.
    pub host: Host,
    /// The node's namespace.
    pub netns: crate::probe::NetNs,
}

impl Node {
    /// A fresh node namespace `netlet-node-<tag>-<pid>` with `lo` up, and a host in it.
    pub async fn start(tag: &str, drivers: &str, extra: &str) -> Node {
        let netns =
            crate::probe::NetNs::create(&format!("netlet-node-{tag}-{}", std::process::id()))
                .expect("create node netns");
        // A node's own connections to its own addresses (and the resets and ICMP errors
        // netfilter sends it) go through lo.
        crate::probe::link_up(&netns.path, "lo").expect("lo up in the node");
        let host = Host::start_in(Some(&netns.path), drivers, extra).await;
        Node { host, netns }
    }

    /// A command run inside the node's namespace.
    pub fn command(&self, program: &Path) -> Command {
        in_netns(Some(&self.netns.path), program)
    }
}

/// A running `netlet serve` in its own temporary directories.
pub struct Host {
    /// Root of the temporary directories (kept alive with the host).
    pub dir: tempfile::TempDir,
    /// gRPC socket.
    pub socket: PathBuf,
    /// Admin socket.
    pub admin_socket: PathBuf,
    /// Plugin directory.
    pub plugin_dir: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// Config file.
    pub config: PathBuf,
    /// Namespace the host runs in (`None`: the test's own).
    pub netns: Option<PathBuf>,
    child: Option<Child>,
}

impl Host {
    /// Writes a NodeConfig with `drivers` (YAML list items) and `extra` top-level lines, and
    /// starts the host. Probes run every 100 ms so tests converge fast, unless `extra` sets
    /// `probeInterval` itself.
    pub async fn start(drivers: &str, extra: &str) -> Host {
        Self::start_in(None, drivers, extra).await
    }

    /// As [`Host::start`], with the host (and so its supervised drivers) inside `netns`.
    pub async fn start_in(netns: Option<&Path>, drivers: &str, extra: &str) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("netlet-test-")
            .tempdir()
            .expect("tempdir");
        let run = dir.path().join("run");
        let config = dir.path().join("node.yaml");
        let drivers = if drivers.is_empty() {
            "drivers: []\n".to_string()
        } else {
            format!("drivers:\n{drivers}")
        };
        let probe = if extra.lines().any(|l| l.starts_with("probeInterval:")) {
            ""
        } else {
            "probeInterval: 100ms\n"
        };
        std::fs::write(
            &config,
            format!(
                "apiVersion: netlet.io/v1alpha1\nkind: NodeConfig\n{probe}driverCallTimeout: 5s\n{extra}{drivers}"
            ),
        )
        .expect("write config");
        let mut h = Host {
            socket: run.join("netlet.sock"),
            admin_socket: run.join("netlet-admin.sock"),
            plugin_dir: run.join("plugins"),
            state_dir: dir.path().join("state"),
            config,
            dir,
            netns: netns.map(Path::to_path_buf),
            child: None,
        };
        h.spawn().await;
        h
    }

    /// (Re)starts the host process with the same directories and config.
    pub async fn spawn(&mut self) {
        // Under a profiler when `NETLET_HOST_UNDER` names one (see [`under`]).
        let (program, before) = under("NETLET_HOST_UNDER", bin("netlet"));
        let child = in_netns(self.netns.as_deref(), &program)
            .args(before)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--plugin-dir")
            .arg(&self.plugin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .expect("spawn netlet");
        self.child = Some(child);
        let sock = self.socket.clone();
        wait_until("host socket", Duration::from_secs(20), || {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(&sock)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }

    /// Starts an external fixture driver `name` serving `networks`, with its socket in the
    /// plugin directory (the host registers it from there); returns it and its socket.
    pub fn external_fixture(&self, name: &str, networks: &str, extra: &[&str]) -> (Proc, PathBuf) {
        std::fs::create_dir_all(&self.plugin_dir).expect("plugin dir");
        let sock = self.plugin_dir.join(format!("{name}.sock"));
        let sock_arg = sock.display().to_string();
        let mut args = vec![
            "--name",
            name,
            "--networks",
            networks,
            "--socket",
            &sock_arg,
        ];
        args.extend(extra);
        (Proc::start(&bin("netlet-fixture-driver"), &args), sock)
    }

    /// Clients to the host.
    pub async fn clients(&self) -> Clients {
        Clients::connect(&self.socket, Some(Duration::from_secs(10)))
            .await
            .expect("connect host")
    }

    /// Waits until NetworkReady for `network` (plus default) says ready.
    pub async fn wait_ready(&self, network: &str) {
        let c = self.clients().await;
        wait_until("NetworkReady", Duration::from_secs(20), || {
            let mut node = c.node.clone();
            let network = network.to_string();
            async move {
                let r = node
                    .network_ready(netlet_sdk::proto::NetworkReadyRequest { network })
                    .await
                    .ok()?
                    .into_inner()
                    .readiness?;
                r.ready.then_some(())
            }
        })
        .await;
    }

    /// Waits until driver `name` is registered and ready (NetworkReady's `DriverReady`
    /// condition): network readiness covers the drivers of networks only, not a Services or
    /// Policy driver that registers after them.
    pub async fn wait_driver(&self, name: &str) {
        let c = self.clients().await;
        wait_until(
            &format!("driver {name} ready"),
            Duration::from_secs(20),
            || {
                let mut node = c.node.clone();
                let name = name.to_string();
                async move {
                    let r = node
                        .network_ready(netlet_sdk::proto::NetworkReadyRequest::default())
                        .await
                        .ok()?
                        .into_inner()
                        .readiness?;
                    r.conditions
                        .iter()
                        .any(|c| {
                            c.r#type == "DriverReady"
                                && c.driver == name
                                && c.status == netlet_sdk::proto::ConditionStatus::True as i32
                        })
                        .then_some(())
                }
            },
        )
        .await;
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The manifest files and objects `netletctl debug state` reports as not loaded.
    pub fn manifest_errors(&self) -> Vec<String> {
        self.source_errors("manifestErrors")
    }

    /// The Kubernetes objects `netletctl debug state` reports as left out.
    pub fn kubernetes_errors(&self) -> Vec<String> {
        self.source_errors("kubernetesErrors")
    }

    fn source_errors(&self, field: &str) -> Vec<String> {
        let out = Command::new(bin("netletctl"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(["debug", "state"])
            .output()
            .expect("netletctl debug state");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["services"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect()
    }

    /// The host's child processes whose command name (`/proc/PID/comm`, 15 characters at
    /// most) is `comm`: its supervised drivers of that program.
    pub fn children(&self, comm: &str) -> Vec<i32> {
        let Some(host) = self.pid() else {
            return Vec::new();
        };
        children_of(host as i32, comm)
    }

    /// Sends `sig` and waits for the process to end.
    pub fn stop_with(&mut self, sig: nix::sys::signal::Signal) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        child.wait().ok()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // SIGTERM first so the host stops its supervised drivers too.
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The children of `parent` whose command name is `comm`.
pub fn children_of(parent: i32, comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces and parentheses; it ends at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map(|x| x.1).unwrap_or_default();
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) && name == comm {
            out.push(pid);
        }
    }
    out
}

/// A driver process started by a test (external drivers), killed on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `program` with `args`.
    pub fn start(program: &Path, args: &[&str]) -> Proc {
        Proc(
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display())),
        )
    }

    /// SIGTERM and wait.
    pub fn terminate(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where Debian's `containernetworking-plugins` puts the reference CNI plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The `CNI_*` environment of one call.
pub fn cni_env<'a>(
    cmd: &'a str,
    id: &'a str,
    netns: &'a str,
    ifname: &'a str,
    args: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", args),
    ]
}

/// Invokes a CNI plugin exactly as a runtime does: one exec, `CNI_*` in the environment, the
/// network configuration on stdin; inside `netns` when given. Returns the exit status and the
/// parsed stdout (`Null` when empty).
pub fn cni_exec(
    netns: Option<&Path>,
    plugin: &Path,
    env: &[(&str, &str)],
    stdin: &str,
) -> (std::process::ExitStatus, serde_json::Value) {
    use std::io::Write;
    let mut cmd = in_netns(netns, plugin);
    cmd.env_clear()
        .env("CNI_PATH", CNI_PLUGIN_DIR)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("exec {}: {e}", plugin.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait plugin");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} printed non-JSON ({e}): {text}", plugin.display()))
    };
    (out.status, v)
}

/// NetworkReady (all networks) from `c`.
pub async fn readiness(c: &Clients) -> netlet_sdk::proto::NetworkReadiness {
    c.node
        .clone()
        .network_ready(netlet_sdk::proto::NetworkReadyRequest::default())
        .await
        .expect("NetworkReady")
        .into_inner()
        .readiness
        .unwrap_or_default()
}

/// Every attachment `c` lists.
pub async fn listed(c: &Clients) -> Vec<netlet_sdk::proto::PodAttachments> {
    c.pods
        .clone()
        .list_attachments(netlet_sdk::proto::ListAttachmentsRequest::default())
        .await
        .expect("ListAttachments")
        .into_inner()
        .pods
}

/// AttachPod of `sandbox` to `networks` (empty: `default`); the attachments.
pub async fn attach(
    c: &Clients,
    sandbox: netlet_sdk::proto::PodSandbox,
    networks: Vec<netlet_sdk::proto::NetworkSelection>,
) -> Result<Vec<netlet_sdk::proto::Attachment>, tonic::Status> {
    c.pods
        .clone()
        .attach_pod(netlet_sdk::proto::AttachPodRequest {
            sandbox: Some(sandbox),
            networks,
        })
        .await
        .map(|r| r.into_inner().attachments)
}

/// AttachPod of pod `name` of namespace `default` (sandbox `id`, in `netns`) to network
/// `default` as `eth0`, asking for `ips` (empty: any).
pub async fn attach_default(
    c: &Clients,
    id: &str,
    name: &str,
    netns: &Path,
    ips: Vec<String>,
) -> Result<Vec<netlet_sdk::proto::Attachment>, tonic::Status> {
    attach(
        c,
        netlet_sdk::proto::PodSandbox {
            id: id.into(),
            name: name.into(),
            namespace: "default".into(),
            uid: name.into(),
            netns_path: netns.display().to_string(),
            ..Default::default()
        },
        vec![netlet_sdk::proto::NetworkSelection {
            network: "default".into(),
            interface_name: "eth0".into(),
            ips,
            ..Default::default()
        }],
    )
    .await
}

/// DetachPod of sandbox `id`.
pub async fn detach(c: &Clients, id: &str) -> Result<(), tonic::Status> {
    c.pods
        .clone()
        .detach_pod(netlet_sdk::proto::DetachPodRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// A benchmark's sandbox `id` (its name and uid too) of namespace `bench`, in `netns`.
pub fn bench_sandbox(id: &str, netns: &Path) -> netlet_sdk::proto::PodSandbox {
    netlet_sdk::proto::PodSandbox {
        id: id.into(),
        name: id.into(),
        namespace: "bench".into(),
        uid: id.into(),
        netns_path: netns.display().to_string(),
        ..Default::default()
    }
}

/// `n` AttachPod+DetachPod rounds through `c`, sandbox `<tag><i>` in `pods` round robin, with
/// `networks` (empty: the default network) each time; the attach and the detach latencies.
pub async fn attach_detach_rounds(
    c: &Clients,
    pods: &[crate::probe::NetNs],
    n: usize,
    tag: &str,
    networks: &[netlet_sdk::proto::NetworkSelection],
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut add, mut del) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let id = format!("{tag}{i}");
        let t = Instant::now();
        c.pods
            .clone()
            .attach_pod(netlet_sdk::proto::AttachPodRequest {
                sandbox: Some(bench_sandbox(&id, &pods[i % pods.len()].path)),
                networks: networks.to_vec(),
            })
            .await
            .expect("AttachPod");
        add.push(t.elapsed());
        let t = Instant::now();
        c.pods
            .clone()
            .detach_pod(netlet_sdk::proto::DetachPodRequest {
                sandbox_id: id,
                ..Default::default()
            })
            .await
            .expect("DetachPod");
        del.push(t.elapsed());
    }
    (add, del)
}
