//! containerd end to end: Debian's containerd 1.6 + runc, started on private sockets and
//! directories inside a node namespace, with netlet-cni as its CNI plugin and a pause image built
//! here (no registry is reachable), driven over CRI by `testbed/cri` (cri-probe, built from the
//! k8s.io/cri-api module) as a kubelet would. What the kubelet would see is checked against what
//! netlet handed out.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netlet_testbed::harness::{Node, Proc, bin, bridge_driver, listed, nft_driver, privileged};
use netlet_testbed::probe;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// Finds `name` on PATH; with CI=true its absence fails the test.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {name} is not installed (testbed/run-tests installs containerd and runc)"
        );
        eprintln!("skipped: {name} not installed");
    }
    found
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// containerd with its shims, stopped (and every process of its directories killed) on drop.
struct Containerd {
    _proc: Proc,
    dir: PathBuf,
    socket: PathBuf,
    probe: PathBuf,
}

impl Containerd {
    fn cri(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(&self.probe)
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The runc shims outlive containerd: everything started with our directories goes.
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(self.dir.display().to_string())
            .status();
    }
}

fn ips_of(sandbox: &Value) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = std::iter::once(&sandbox["ip"])
        .chain(sandbox["additionalIps"].as_array().into_iter().flatten())
        .filter_map(|s| s.as_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_runs_pod_sandboxes_through_netlet_cni() {
    if !privileged("containerd_runs_pod_sandboxes_through_netlet_cni") {
        return;
    }
    let (Some(containerd), Some(ctr), Some(_runc)) =
        (tool("containerd"), tool("ctr"), tool("runc"))
    else {
        return;
    };
    let work = tempfile::Builder::new()
        .prefix("netlet-ctrd-")
        .tempdir()
        .unwrap();
    let w = work.path();
    // cri-probe and the pause image, built from testbed/cri.
    let cri_src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cri");
    let probe_bin = w.join("cri-probe");
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&probe_bin)
        .arg(".")
        .current_dir(&cri_src));
    run(Command::new("go")
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(w.join("pause"))
        .arg("./pause")
        .current_dir(&cri_src));
    run(Command::new("python3")
        .arg(cri_src.join("oci_image.py"))
        .arg(w.join("pause"))
        .arg("netlet.local/pause:1")
        .arg(w.join("pause.tar")));

    // The node: netlet with the bridge (dual-stack) and the nft driver.
    let drivers = bridge_driver(
        "bridge",
        "default",
        "netlet0",
        &["10.244.0.0/24", "fd00:10:244::/64"],
    ) + &nft_driver(
        "nft",
        &[
            "--cluster-cidr",
            "10.244.0.0/24",
            "--cluster-cidr",
            "fd00:10:244::/64",
        ],
    );
    let n = Node::start("ctrd", &drivers, "").await;
    n.host.wait_ready("").await;

    // netlet-cni as containerd finds it, with the conflist a user writes (cniVersion 1.0.0:
    // containerd 1.6 reads configs up to 1.0.0).
    let cni_bin = w.join("cni-bin");
    let cni_conf = w.join("cni-conf");
    std::fs::create_dir_all(&cni_bin).unwrap();
    std::fs::create_dir_all(&cni_conf).unwrap();
    std::fs::copy(bin("netlet-cni"), cni_bin.join("netlet")).unwrap();
    // containerd (go-cni) also brings lo up with the reference `loopback` plugin, from the same
    // directory.
    std::fs::copy(
        Path::new(netlet_testbed::harness::CNI_PLUGIN_DIR).join("loopback"),
        cni_bin.join("loopback"),
    )
    .expect("the reference loopback plugin (containernetworking-plugins)");
    std::fs::write(
        cni_conf.join("10-netlet.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "netlet",
            "plugins": [{"type": "netlet", "socket": n.host.socket,
                         "capabilities": {"portMappings": true}}]
        })
        .to_string(),
    )
    .unwrap();
    let socket = w.join("containerd.sock");
    let config = w.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "netlet.local/pause:1"
  # Some machines (VMs, nested containers) refuse a lower oom_score_adj than containerd's own;
  # runc then fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
"#,
            root = w.join("root").display(),
            state = w.join("state").display(),
            socket = socket.display(),
            bin = cni_bin.display(),
            conf = cni_conf.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(w.join("containerd.log")).unwrap();
    let child = n
        .command(&containerd)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd");
    let ctrd = Containerd {
        _proc: Proc(child),
        dir: w.to_path_buf(),
        socket: socket.clone(),
        probe: probe_bin,
    };
    let deadline = Instant::now() + T;
    while ctrd.cri(&["version"]).is_err() {
        assert!(
            Instant::now() < deadline,
            "containerd did not serve CRI: {}",
            std::fs::read_to_string(w.join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run(Command::new(&ctr)
        .arg("--address")
        .arg(&socket)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(w.join("pause.tar")));

    // RunPodSandbox with a hostPort: the kubelet sees the addresses netlet handed out.
    let c = n.host.clients().await;
    let web = ctrd
        .cri(&[
            "run",
            "--name",
            "web",
            "--namespace",
            "shop",
            "--uid",
            "uid-web",
            "--hostport",
            "12000:80",
            "--hostname",
            "web",
            "--dns-server",
            "10.96.0.10",
        ])
        .unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox: {e}\n{}",
                std::fs::read_to_string(w.join("containerd.log")).unwrap_or_default()
            )
        });
    let id = web["id"].as_str().unwrap().to_string();
    assert_eq!(web["state"], "SANDBOX_READY", "{web}");
    let pods = listed(&c).await;
    let pod = pods
        .iter()
        .find(|p| p.sandbox.as_ref().is_some_and(|s| s.id == id))
        .unwrap_or_else(|| panic!("netlet has no attachment for sandbox {id}: {pods:?}"));
    let sb = pod.sandbox.clone().unwrap();
    assert_eq!((sb.namespace.as_str(), sb.name.as_str()), ("shop", "web"));
    let mut handed: Vec<IpAddr> = pod.attachments[0]
        .ips
        .iter()
        .map(|i| probe::ip_of(&i.address).unwrap())
        .collect();
    handed.sort();
    assert_eq!(ips_of(&web), handed, "PodSandboxStatus vs netlet: {web}");
    assert!(handed.iter().any(IpAddr::is_ipv4) && handed.iter().any(IpAddr::is_ipv6));

    // The hostPort answers on the node's address and on localhost.
    let pod_ns = PathBuf::from(&sb.netns_path);
    probe::tcp_tagged(&pod_ns, "0.0.0.0:80".parse().unwrap(), "web").unwrap();
    let node_ip: IpAddr = "10.244.0.1".parse().unwrap();
    for to in [node_ip, "127.0.0.1".parse().unwrap()] {
        let answer = probe::tcp_read(
            &n.netns.path,
            SocketAddr::new(to, 12000),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("hostPort 12000 on {to}: {e}"));
        assert!(answer.starts_with("web|"), "{to}: {answer}");
    }

    // Many sandboxes at once get distinct addresses.
    let ids: Vec<(String, Vec<IpAddr>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let ctrd = &ctrd;
                s.spawn(move || {
                    let name = format!("many-{i}");
                    let uid = format!("uid-many-{i}");
                    let v = ctrd
                        .cri(&["run", "--name", &name, "--namespace", "shop", "--uid", &uid])
                        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"));
                    (v["id"].as_str().unwrap().to_string(), ips_of(&v))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<IpAddr> = ids.iter().flat_map(|(_, ips)| ips.clone()).collect();
    all.extend(handed.iter().copied());
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "an address handed out twice: {ids:?}");

    // StopPodSandbox + RemovePodSandbox free everything: no attachment, no veth, no host port.
    for sandbox in std::iter::once(&id).chain(ids.iter().map(|(i, _)| i)) {
        ctrd.cri(&["stop", sandbox]).unwrap();
        ctrd.cri(&["remove", sandbox]).unwrap();
    }
    assert!(listed(&c).await.is_empty(), "attachments left");
    let links: Vec<String> = probe::interfaces(&n.netns.path)
        .unwrap()
        .into_keys()
        .filter(|l| l.starts_with("veth"))
        .collect();
    assert!(links.is_empty(), "veths left: {links:?}");
    let gone = probe::tcp_read(
        &n.netns.path,
        SocketAddr::new(node_ip, 12000),
        Duration::from_secs(2),
    );
    assert!(gone.is_err(), "hostPort still answers: {gone:?}");
}
