//! containerd end to end: Debian's containerd 1.6 and a containerd 2.x built from its Go
//! module, each with runc, started on private sockets and directories inside a node namespace, with netlet-cni as its CNI plugin and a pause image built
//! here (no registry is reachable), driven over CRI by `testbed/cri` (cri-probe, built from the
//! k8s.io/cri-api module) as a kubelet would. What the kubelet would see is checked against what
//! netlet handed out.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use netlet_testbed::harness::{
    CNI_PLUGIN_DIR, Node, bin, bridge_driver, listed, nft_driver, privileged, tool,
};
use netlet_testbed::{probe, runtime};
use serde_json::Value;

/// The files containerd keeps for sandbox `id` under its root (resolv.conf, hostname, ...).
fn sandbox_files(root: &Path, id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p.parent().is_some_and(|d| d.ends_with(id)) {
                out.push(p);
            }
        }
    }
    out
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
async fn containerd_1_6_runs_pod_sandboxes_through_netlet_cni() {
    if !privileged("containerd_1_6_runs_pod_sandboxes_through_netlet_cni") {
        return;
    }
    let t = "containerd_1_6_runs_pod_sandboxes_through_netlet_cni";
    if tool("containerd", t).is_none() || tool("ctr", t).is_none() || tool("runc", t).is_none() {
        return;
    }
    end_to_end(runtime::Release::Debian, "ctrd16").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_2_runs_pod_sandboxes_through_netlet_cni() {
    if !privileged("containerd_2_runs_pod_sandboxes_through_netlet_cni") {
        return;
    }
    let t = "containerd_2_runs_pod_sandboxes_through_netlet_cni";
    if tool("go", t).is_none() || tool("runc", t).is_none() {
        return;
    }
    let release = runtime::Release::built(runtime::CONTAINERD2_VERSION)
        .unwrap_or_else(|e| panic!("building containerd {}: {e}", runtime::CONTAINERD2_VERSION));
    end_to_end(release, "ctrd2").await;
}

/// What a kubelet sees of netlet through `release`, in a node namespace `netlet-node-<tag>-*`.
async fn end_to_end(release: runtime::Release, tag: &str) {
    let work = tempfile::Builder::new()
        .prefix("netlet-ctrd-")
        .tempdir()
        .unwrap();
    let w = work.path();
    let (probe_bin, image) = runtime::build_cri_tools(w).unwrap();

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
    let mut n = Node::start(tag, &drivers, "").await;
    n.host.wait_ready("").await;

    // netlet-cni as containerd finds it, beside the reference loopback plugin (containerd
    // brings lo up with it), and the conflist a user writes: cniVersion 1.0.0 for containerd
    // 1.6 (it reads configs up to 1.0.0), 1.1.0 for 2.x.
    let version = match release {
        runtime::Release::Debian => "1.0.0",
        runtime::Release::Built { .. } => "1.1.0",
    };
    let conflist = serde_json::json!({
        "cniVersion": version, "name": "netlet",
        "plugins": [{"type": "netlet", "socket": n.host.socket,
                     "capabilities": {"portMappings": true}}]
    });
    let plugins = [
        ("netlet", bin("netlet-cni")),
        ("loopback", Path::new(CNI_PLUGIN_DIR).join("loopback")),
    ];
    let mut ctrd = runtime::Containerd::start(
        &release,
        &w.join("containerd"),
        Some(&n.netns.path),
        &plugins,
        &conflist,
        &probe_bin,
        &image,
    )
    .unwrap();

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
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctrd.log()));
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

    // The DNS config and the hostname the kubelet asked for reach the sandbox's files.
    let files = sandbox_files(&w.join("containerd").join("root"), &id);
    let read = |name: &str| {
        files
            .iter()
            .find(|p| p.ends_with(name))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_else(|| panic!("no {name} for {id}: {files:?}"))
    };
    let resolv = read("resolv.conf");
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("ndots:5"), "{resolv}");
    assert_eq!(read("hostname").trim(), "web");

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

    // containerd restarts (its shims and sandboxes keep running): the sandbox is as it was.
    ctrd.kill();
    ctrd.spawn().unwrap();
    let again = ctrd.cri(&["status", &id]).unwrap();
    assert_eq!(
        (&again["state"], ips_of(&again)),
        (&web["state"], ips_of(&web)),
        "{again}"
    );

    // The netlet host is killed and started again with sandboxes running: it still holds them
    // (from its store) and they can be removed afterwards.
    n.host.stop_with(nix::sys::signal::Signal::SIGKILL);
    // While it is away, a new sandbox fails with the CNI's "try again later"...
    let refused = ctrd.cri(&[
        "run",
        "--name",
        "late",
        "--namespace",
        "shop",
        "--uid",
        "uid-late",
    ]);
    let e = refused.expect_err("a sandbox made while the host is down");
    assert!(
        e.contains("netlet host") && e.contains("unreachable"),
        "{e}"
    );
    n.host.spawn().await;
    n.host.wait_ready("").await;
    // ... and succeeds when it is retried.
    let late = ctrd
        .cri(&[
            "run",
            "--name",
            "late",
            "--namespace",
            "shop",
            "--uid",
            "uid-late",
        ])
        .unwrap_or_else(|e| panic!("retried RunPodSandbox: {e}"));
    let c = n.host.clients().await;
    let held: Vec<String> = listed(&c)
        .await
        .into_iter()
        .filter_map(|p| p.sandbox.map(|s| s.id))
        .collect();
    assert!(held.contains(&id), "{held:?}");
    assert_eq!(held.len(), ids.len() + 2, "{held:?}");
    let late_id = late["id"].as_str().unwrap().to_string();

    // StopPodSandbox + RemovePodSandbox free everything: no attachment, no veth, no host port.
    for sandbox in [&id, &late_id]
        .into_iter()
        .chain(ids.iter().map(|(i, _)| i))
    {
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

/// The DaemonSet's image as a user builds it (deploy/build-image.sh, from the binaries built
/// here), imported into a real containerd with `ctr images import` and run: every binary the
/// DaemonSet and its init container use is there and starts, under the name deploy/ gives.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemonset_image_imports_and_runs() {
    let t = "the_daemonset_image_imports_and_runs";
    if !privileged(t) || tool("containerd", t).is_none() || tool("ctr", t).is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let version = env!("CARGO_PKG_VERSION");
    let deploy = std::fs::read_to_string(root.join("deploy/netlet.yaml")).unwrap();
    assert_eq!(
        deploy.matches(&format!("image: netlet:{version}")).count(),
        2,
        "the DaemonSet and its init container name the image of this version"
    );
    let work = tempfile::Builder::new()
        .prefix("netlet-img-")
        .tempdir()
        .unwrap();
    let w = work.path();
    let out = std::process::Command::new("bash")
        .arg(root.join("deploy/build-image.sh"))
        .arg("--debug")
        .arg(w.join("image"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        archive.ends_with(&format!("netlet-{version}.oci.tar")),
        "{archive}"
    );

    let (probe_bin, pause) = runtime::build_cri_tools(w).unwrap();
    let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": "none", "plugins": [{"type": "loopback"}]});
    let plugins = [("loopback", Path::new(CNI_PLUGIN_DIR).join("loopback"))];
    let ctrd = runtime::Containerd::start(
        &runtime::Release::Debian,
        &w.join("containerd"),
        None,
        &plugins,
        &conflist,
        &probe_bin,
        &pause,
    )
    .unwrap();
    let ctr = |args: &[&str]| {
        let o = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&ctrd.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (ok, text) = ctr(&["images", "import", &archive]);
    assert!(ok, "{text}");
    let image = format!("docker.io/library/netlet:{version}");
    let (ok, text) = ctr(&["images", "ls", "-q"]);
    assert!(ok && text.lines().any(|l| l == image), "{text}");
    for (i, cmd) in [
        vec!["netlet", "--version"],
        vec!["netletctl", "--version"],
        vec!["netlet-bridge", "--version"],
        vec!["netlet-nft", "--version"],
        vec!["netlet-devices", "--version"],
        // The init container's shell and tools, and the shim it installs.
        vec![
            "sh",
            "-c",
            "cp /usr/local/bin/netlet-cni /tmp/x && mv /tmp/x /tmp/y && ls /tmp/y",
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("img-{}-{i}", std::process::id());
        let mut args = vec!["run", "--rm", &image, &id];
        args.extend(cmd.iter().copied());
        let (ok, text) = ctr(&args);
        assert!(ok, "{cmd:?}: {text}");
        if cmd[0] == "sh" {
            assert_eq!(text.trim(), "/tmp/y");
        } else {
            assert!(text.contains(version), "{cmd:?}: {text}");
        }
    }
}
