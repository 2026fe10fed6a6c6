//! Devices for real: the devices driver under the host inside a namespace standing for the
//! node, "devices" that are veth ends made for the test (this kernel has no dummy devices),
//! their topology from the configuration and a recorded sysfs tree holding a GPU, pods as
//! namespaces. A device is listed, allocated with an alignment, moved into a pod (seen there
//! with its configuration, carrying traffic) and back; a crash in the middle of a move leaves
//! nothing stranded. Needs root (CI runs as root).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    AllocateDeviceRequest, Device, DeviceHealth, DeviceRequest, ListDevicesRequest,
    NetworkSelection, PodSandbox, ReleaseDeviceRequest, TopologyScope, WatchDevicesRequest,
};
use netlet_testbed::harness::{Node, attach, bin, conformance, detach, privileged, wait_until};
use netlet_testbed::probe::{self, NetNs};
use tonic::Code;

/// The GPU of the recorded tree: NUMA node 1, PCIe root pci0000:b0.
const GPU: &str = "0000:b2:00.0";

/// A sysfs tree with one GPU (the devices driver reads the topology of PCI functions it
/// does not own from here), as a node shows it: a function directory under its root complex
/// and the bus's symlink to it.
fn recorded_sysfs(root: &Path) {
    let f = root.join("devices/pci0000:b0/0000:b0:03.0").join(GPU);
    std::fs::create_dir_all(&f).unwrap();
    std::fs::write(f.join("numa_node"), "1\n").unwrap();
    std::fs::write(f.join("vendor"), "0x10de\n").unwrap();
    std::fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
    std::os::unix::fs::symlink(
        format!("../../../devices/pci0000:b0/0000:b0:03.0/{GPU}"),
        root.join("bus/pci/devices").join(GPU),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("class/net")).unwrap();
}

/// Three devices: tdev0 on NUMA node 0, tdev1 and tdev2 on node 1 beside the GPU.
fn config(dir: &Path) -> PathBuf {
    let sys = dir.join("sys");
    recorded_sysfs(&sys);
    let p = dir.join("devices.yaml");
    std::fs::write(
        &p,
        format!(
            "networks: [devices]\n\
             pools:\n- name: test\n  select: {{names: [\"tdev*\"], drivers: [veth]}}\n\
             topology:\n  tdev0: {{numaNode: 0, pcieRoot: \"pci0000:3a\"}}\n  \
             tdev1: {{numaNode: 1, pcieRoot: \"pci0000:b0\"}}\n  \
             tdev2: {{numaNode: 1, pcieRoot: \"pci0000:b0\"}}\n\
             sysfsRoot: {}\n",
            sys.display()
        ),
    )
    .unwrap();
    p
}

fn driver_entry(config: &Path, crash_at: Option<&str>, extra: &[String]) -> String {
    let env = crash_at
        .map(|c| format!("  env: [{{name: NETLET_DEVICES_CRASH_AT, value: {c}}}]\n"))
        .unwrap_or_default();
    let mut args = vec![
        "--name".to_string(),
        "devices".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    args.extend_from_slice(extra);
    format!(
        "- name: devices\n  command: {}\n  args: {}\n{env}",
        bin("netlet-devices").display(),
        serde_json::to_string(&args).unwrap()
    )
}

/// The node with its devices: `tdevN` (the device) paired with `tpeerN` (its far end, on the
/// node, 192.168.7N.1/24), both up, with fixed MACs.
async fn node(tag: &str, dir: &Path, crash_at: Option<&str>, extra: &[String]) -> Node {
    let n = Node::start(tag, &driver_entry(&config(dir), crash_at, extra), "").await;
    for i in 0..3 {
        probe::veth_inside(&n.netns.path, &format!("tdev{i}"), &format!("tpeer{i}")).unwrap();
        ip(
            &n.netns.path,
            &format!("link set tdev{i} address 02:00:00:00:0{i}:01"),
        );
        probe::add_address(
            &n.netns.path,
            &format!("tpeer{i}"),
            &format!("192.168.7{i}.1/24"),
        )
        .unwrap();
    }
    n.host.wait_driver("devices").await;
    n
}

/// `ip` inside `netns` (the reference tool reads what the kernel holds); stdout.
fn ip(netns: &Path, args: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One link as `ip -j link show` reports it: (name, MAC, MTU, up).
fn link(netns: &Path, name: &str) -> Option<(String, String, u64, bool)> {
    let all: serde_json::Value = serde_json::from_str(&ip(netns, "-j link show")).unwrap();
    all.as_array()?
        .iter()
        .find(|l| l["ifname"] == name)
        .map(|l| {
            (
                l["ifname"].as_str().unwrap_or("").to_string(),
                l["address"].as_str().unwrap_or("").to_string(),
                l["mtu"].as_u64().unwrap_or(0),
                l["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "UP")),
            )
        })
}

async fn list(c: &Clients, free_only: bool) -> Vec<Device> {
    c.devices
        .clone()
        .list_devices(ListDevicesRequest {
            free_only,
            ..Default::default()
        })
        .await
        .expect("ListDevices")
        .into_inner()
        .devices
}

fn near_gpu(uid: &str, count: u32) -> AllocateDeviceRequest {
    AllocateDeviceRequest {
        claim_uid: uid.into(),
        claim_namespace: "ml".into(),
        claim_name: uid.into(),
        requests: vec![DeviceRequest {
            name: "nic".into(),
            pool: "test".into(),
            count,
            align_with_pci_address: GPU.into(),
            align_scope: TopologyScope::NumaNode as i32,
            config: br#"{"mtu": 1400, "addresses": ["192.168.71.2/24"],
                         "routes": [{"destination": "10.99.0.0/16", "gateway": "192.168.71.1"}]}"#
                .to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn sandbox(id: &str, netns: &Path) -> PodSandbox {
    PodSandbox {
        id: id.into(),
        name: id.into(),
        namespace: "ml".into(),
        uid: id.into(),
        netns_path: netns.display().to_string(),
        ..Default::default()
    }
}

fn with_device(device: &str, ifname: &str) -> NetworkSelection {
    NetworkSelection {
        network: "devices".into(),
        interface_name: ifname.into(),
        device_id: device.into(),
        ..Default::default()
    }
}

fn reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info()
        .map(|e| e.reason)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_is_listed_allocated_near_a_gpu_moved_into_a_pod_and_back() {
    if !privileged("a_device_is_listed_allocated_near_a_gpu_moved_into_a_pod_and_back") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = node("devices", dir.path(), None, &[]).await;
    let c = n.host.clients().await;

    // Listed with the topology the configuration gives, healthy while the far end is up.
    let devs = list(&c, false).await;
    let brief: Vec<_> = devs
        .iter()
        .map(|d| {
            (
                d.id.as_str(),
                d.numa_node,
                d.pcie_root.as_str(),
                d.pool.as_str(),
            )
        })
        .collect();
    assert_eq!(
        brief,
        [
            ("tdev0", 0, "pci0000:3a", "test"),
            ("tdev1", 1, "pci0000:b0", "test"),
            ("tdev2", 1, "pci0000:b0", "test"),
        ]
    );
    assert!(devs.iter().all(|d| d.driver == "devices"
        && d.health == DeviceHealth::Healthy as i32
        && d.attributes.get("kernel-driver").map(String::as_str) == Some("veth")));
    // A device going down, and one coming and leaving, show at once in a listing, and
    // reach a watcher (the whole inventory each time it changes).
    let mut watch = c
        .devices
        .clone()
        .watch_devices(WatchDevicesRequest {
            filter: Some(ListDevicesRequest {
                pool: "test".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("WatchDevices")
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().devices;
    assert_eq!(first, devs, "the watch starts with the inventory");
    let mut next_change = async || {
        tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a change reaches the watcher")
            .expect("watch stream")
            .expect("watch open")
            .devices
    };
    ip(&n.netns.path, "link set tpeer2 down");
    let d2 = list(&c, false).await;
    assert_eq!(d2[2].health, DeviceHealth::Down as i32, "{:?}", d2[2]);
    let mut seen = next_change().await;
    while seen[2].health != DeviceHealth::Down as i32 {
        seen = next_change().await;
    }
    ip(&n.netns.path, "link set tpeer2 up");
    probe::veth_inside(&n.netns.path, "tdev9", "tpeer9").unwrap();
    assert_eq!(list(&c, false).await.len(), 4);
    while next_change().await.len() != 4 {}
    probe::delete_link(&n.netns.path, "tdev9").unwrap();
    assert_eq!(list(&c, false).await.len(), 3);
    while next_change().await.len() != 3 {}
    drop(watch);

    // The contract's device checks, through the host.
    let text = conformance(
        n.command(&bin("netlet-conformance")),
        &n.host.socket,
        &["--focus", "^(devices|identity)/"],
        &dir.path().join("junit.xml"),
    );
    for c in [
        "allocate-idempotent",
        "claim-reused-with-another-request",
        "alignment-refused-names-the-constraint",
        "list-invalid-filter",
    ] {
        assert!(text.contains(&format!("PASS  devices/{c}")), "{text}");
    }
    assert_eq!(
        list(&c, true).await.len(),
        3,
        "the checks released what they took"
    );

    // Allocated on the GPU's NUMA node: tdev1.
    let a = c
        .devices
        .clone()
        .allocate_device(near_gpu("claim-a", 1))
        .await
        .expect("allocate near the GPU")
        .into_inner();
    let got: Vec<_> = a
        .devices
        .iter()
        .map(|d| d.device.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(got, ["tdev1"]);
    // The same claim again: the same answer. Another request under its UID: refused.
    let again = c
        .devices
        .clone()
        .allocate_device(near_gpu("claim-a", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, a);
    let e = c
        .devices
        .clone()
        .allocate_device(near_gpu("claim-a", 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // Two more near the GPU: only tdev2 is left there. Refused naming the constraint, and
    // nothing is held.
    let e = c
        .devices
        .clone()
        .allocate_device(near_gpu("claim-b", 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().starts_with("requests[0].align_scope: ")
            && e.message().contains("NUMA node 1")
            && e.message().contains(GPU),
        "{}",
        e.message()
    );
    assert_eq!(reason(&e), "ALIGNMENT_UNSATISFIABLE");
    let free: Vec<String> = list(&c, true).await.into_iter().map(|d| d.id).collect();
    assert_eq!(free, ["tdev0", "tdev2"]);

    // Into a pod: under the pod's name, with the claim's configuration, carrying traffic to
    // its far end on the node; gone from the node meanwhile.
    let pod = NetNs::create(&format!("netlet-devpod-{}", std::process::id())).unwrap();
    let before = link(&n.netns.path, "tdev1").unwrap();
    let att = attach(
        &c,
        sandbox("pod-a", &pod.path),
        vec![with_device("tdev1", "eth0")],
    )
    .await
    .expect("attach with the device");
    assert_eq!(att.len(), 1);
    assert_eq!(
        (
            att[0].device_id.as_str(),
            att[0].driver.as_str(),
            att[0].mtu
        ),
        ("tdev1", "devices", 1400)
    );
    assert_eq!(att[0].ips[0].address, "192.168.71.2/24");
    let inside = link(&pod.path, "eth0").expect("eth0 in the pod");
    assert_eq!(
        (inside.1.as_str(), inside.2, inside.3),
        (before.1.as_str(), 1400, true)
    );
    assert!(
        link(&n.netns.path, "tdev1").is_none(),
        "tdev1 left the node"
    );
    let routes = ip(&pod.path, "route show");
    assert!(
        routes.contains("10.99.0.0/16 via 192.168.71.1 dev eth0"),
        "{routes}"
    );
    let echo = probe::tcp_echo(
        Some(&n.netns.path),
        "192.168.71.1:0".parse::<SocketAddr>().unwrap(),
        1,
    )
    .unwrap();
    let heard = probe::tcp_request(&pod.path, echo, "through the device").unwrap();
    assert_eq!(heard, "192.168.71.2|through the device");
    let listed = list(&c, false).await;
    assert_eq!(listed[1].attached_to_sandbox, "pod-a");
    assert_eq!(listed[1].allocated_to_claim, "claim-a");
    // What an operator sees.
    let out = Command::new(bin("netletctl"))
        .arg("--socket")
        .arg(&n.host.socket)
        .arg("devices")
        .output()
        .expect("netletctl devices");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("tdev1 "))
        .unwrap_or_else(|| panic!("no tdev1 row: {text}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [
            "tdev1",
            "devices",
            "test",
            "NIC",
            "tdev1",
            "-",
            "1",
            "pci0000:b0",
            "HEALTHY",
            "claim-a",
            "pod-a"
        ],
        "{text}"
    );
    // Released while in a pod: refused, the pod keeps it.
    let e = c
        .devices
        .clone()
        .release_device(ReleaseDeviceRequest {
            claim_uid: "claim-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Two pods race for one device: one gets it, the other is refused and left as it was.
    c.devices
        .clone()
        .allocate_device(AllocateDeviceRequest {
            claim_uid: "claim-c".into(),
            requests: vec![DeviceRequest {
                name: "nic".into(),
                device_id: "tdev0".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("allocate tdev0");
    // Two claims racing for one device: one holds it, the other is refused.
    let race = |uid: &'static str| {
        let mut d = c.devices.clone();
        async move {
            d.allocate_device(AllocateDeviceRequest {
                claim_uid: uid.into(),
                requests: vec![DeviceRequest {
                    name: "nic".into(),
                    device_id: "tdev2".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
        }
    };
    let (r1, r2) = tokio::join!(race("race-1"), race("race-2"));
    let codes = [&r1, &r2].map(|r| r.as_ref().err().map(|e| e.code()));
    assert!(
        codes == [None, Some(Code::ResourceExhausted)]
            || codes == [Some(Code::ResourceExhausted), None],
        "{r1:?} {r2:?}"
    );
    let holder = if r1.is_ok() { "race-1" } else { "race-2" };
    assert_eq!(list(&c, false).await[2].allocated_to_claim, holder);
    c.devices
        .clone()
        .release_device(ReleaseDeviceRequest {
            claim_uid: holder.into(),
        })
        .await
        .unwrap();

    let p1 = NetNs::create(&format!("netlet-devpod1-{}", std::process::id())).unwrap();
    let p2 = NetNs::create(&format!("netlet-devpod2-{}", std::process::id())).unwrap();
    let (r1, r2) = tokio::join!(
        attach(
            &c,
            sandbox("pod-1", &p1.path),
            vec![with_device("tdev0", "net1")]
        ),
        attach(
            &c,
            sandbox("pod-2", &p2.path),
            vec![with_device("tdev0", "net1")]
        ),
    );
    let (won, lost, loser_ns) = match (&r1, &r2) {
        (Ok(_), Err(e)) => ("pod-1", e, &p2.path),
        (Err(e), Ok(_)) => ("pod-2", e, &p1.path),
        other => panic!("exactly one pod gets the device: {other:?}"),
    };
    assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
    assert_eq!(reason(lost), "DEVICE_IN_USE");
    assert!(link(loser_ns, "net1").is_none());
    detach(&c, won).await.unwrap();
    assert!(link(&n.netns.path, "tdev0").is_some());

    // Detached: back on the node under its name, with its MAC, MTU and state.
    detach(&c, "pod-a").await.expect("detach");
    assert!(link(&pod.path, "eth0").is_none());
    assert_eq!(link(&n.netns.path, "tdev1"), Some(before));
    c.devices
        .clone()
        .release_device(ReleaseDeviceRequest {
            claim_uid: "claim-a".into(),
        })
        .await
        .expect("release");
    c.devices
        .clone()
        .release_device(ReleaseDeviceRequest {
            claim_uid: "never-allocated".into(),
        })
        .await
        .expect("releasing an unknown claim is OK");
    let free: Vec<String> = list(&c, true).await.into_iter().map(|d| d.id).collect();
    assert_eq!(free, ["tdev1", "tdev2"]);
    // An interface the node's default route leaves by is its uplink, never a device.
    ip(&n.netns.path, "route add default dev tdev2");
    let ids: Vec<String> = list(&c, false).await.into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["tdev0", "tdev1"]);
    ip(&n.netns.path, "route del default dev tdev2");
    assert_eq!(list(&c, false).await.len(), 3);
}

/// A driver that dies at `crash_at` in the middle of a move: once it is back (the host
/// restarts it) and the runtime has had its answer, the device is on the node as it was.
async fn crash_in_a_move(crash_at: &str) {
    let dir = tempfile::tempdir().unwrap();
    let n = node(
        &format!("devcrash-{crash_at}"),
        dir.path(),
        Some(crash_at),
        &[],
    )
    .await;
    let c = n.host.clients().await;
    c.devices
        .clone()
        .allocate_device(near_gpu("claim-x", 1))
        .await
        .expect("allocate");
    let before = link(&n.netns.path, "tdev1").unwrap();
    let pod = NetNs::create(&format!(
        "netlet-devcrash-{crash_at}-{}",
        std::process::id()
    ))
    .unwrap();
    let r = attach(
        &c,
        sandbox("pod-x", &pod.path),
        vec![with_device("tdev1", "eth0")],
    )
    .await;
    match crash_at {
        "moved-in" => {
            assert!(r.is_err(), "the driver died in the middle: {r:?}");
        }
        _ => {
            r.expect("attach");
            let e = detach(&c, "pod-x").await;
            assert!(e.is_err(), "the driver died in the middle: {e:?}");
            // The pod is still attached for the host (which gives a restarted driver its
            // attachments back); the runtime retries DetachPod until it is answered.
            let c2 = c.clone();
            wait_until("DetachPod answered", Duration::from_secs(30), || {
                let c = c2.clone();
                async move { detach(&c, "pod-x").await.ok() }
            })
            .await;
        }
    }
    // Back on the node with its name and settings once the restarted driver has recovered.
    wait_until("device back on the node", Duration::from_secs(30), || {
        let (node, before) = (n.netns.path.clone(), before.clone());
        async move { (link(&node, "tdev1") == Some(before)).then_some(()) }
    })
    .await;
    assert!(link(&pod.path, "eth0").is_none());
    n.host.wait_driver("devices").await;
    let listed = list(&c, false).await;
    assert_eq!(listed[1].attached_to_sandbox, "", "{:?}", listed[1]);
    assert_eq!(listed[1].allocated_to_claim, "claim-x");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_while_moving_a_device_in_leaves_it_on_the_node() {
    if !privileged("a_crash_while_moving_a_device_in_leaves_it_on_the_node") {
        return;
    }
    crash_in_a_move("moved-in").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_while_moving_a_device_out_finishes_the_move() {
    if !privileged("a_crash_while_moving_a_device_out_finishes_the_move") {
        return;
    }
    crash_in_a_move("moved-out").await;
}

/// The dra-probe (testbed/dra): the kubelet's own client code for plugin registration and the
/// DRA plugin service, built into `dir`.
fn dra_probe(dir: &Path) -> PathBuf {
    let out = dir.join("dra-probe");
    let st = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("dra"))
        .status()
        .expect("go build dra-probe");
    assert!(st.success(), "go build dra-probe");
    out
}

fn probe_json(probe: &Path, netns: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(probe)
        .args(args)
        .output()
        .expect("dra-probe");
    assert!(
        out.status.success(),
        "dra-probe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dra-probe JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_claim_reaches_the_node_through_the_kubelet_s_dra_protocol() {
    let test = "a_resource_claim_reaches_the_node_through_the_kubelet_s_dra_protocol";
    if !privileged(test) {
        return;
    }
    let Some((etcd, api_bin)) = netlet_testbed::k8s::binaries(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    netlet_testbed::k8s::write_kubeconfig(&kubeconfig);
    let (registry, plugins) = (dir.path().join("registry"), dir.path().join("plugins"));
    let extra: Vec<String> = [
        "--node-name",
        "node-a",
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--kubelet-registry-dir",
        &registry.display().to_string(),
        "--kubelet-plugins-dir",
        &plugins.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let n = node("dra", dir.path(), None, &extra).await;
    let api = netlet_testbed::k8s::ApiServer::start(&n, &etcd, &api_bin);
    let node_obj: serde_json::Value = serde_json::from_str(
        &api.request(
            "POST",
            "/api/v1/nodes",
            Some(r#"{"metadata":{"name":"node-a"}}"#),
        )
        .unwrap(),
    )
    .unwrap();
    let c = n.host.clients().await;
    let probe = dra_probe(dir.path());

    // The node's devices as a ResourceSlice, typed, the NUMA node and PCIe root as DRA aligns.
    const SLICE: &str = "/apis/resource.k8s.io/v1/resourceslices/node-a-dra.netlet.io";
    let slice = |want: usize| {
        let api = &api;
        async move {
            wait_until("the ResourceSlice", Duration::from_secs(60), || async {
                let v: serde_json::Value =
                    serde_json::from_str(&api.request("GET", SLICE, None).ok()?).ok()?;
                (v["spec"]["devices"].as_array()?.len() == want).then_some(v)
            })
            .await
        }
    };
    let s = slice(3).await;
    assert_eq!(s["spec"]["driver"], "dra.netlet.io");
    assert_eq!(s["spec"]["nodeName"], "node-a");
    assert_eq!(s["spec"]["pool"]["name"], "node-a");
    let d1 = &s["spec"]["devices"][1];
    assert_eq!(d1["name"], "tdev1");
    assert_eq!(d1["attributes"]["numaNode"]["int"], 1);
    assert_eq!(
        d1["attributes"]["resource.kubernetes.io/pcieRoot"]["string"],
        "pci0000:b0"
    );
    assert_eq!(d1["attributes"]["kernelDriver"]["string"], "veth");
    // A device leaving the node leaves the slice, in a new pool generation.
    let g0 = s["spec"]["pool"]["generation"].as_i64().unwrap();
    probe::delete_link(&n.netns.path, "tdev2").unwrap();
    let s2 = slice(2).await;
    assert!(
        s2["spec"]["pool"]["generation"].as_i64().unwrap() > g0,
        "{s2}"
    );
    // Owned by the Node, so it goes with it.
    let owner = &s2["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["uid"]),
        (
            &"Node".into(),
            &"node-a".into(),
            &node_obj["metadata"]["uid"]
        ),
        "{s2}"
    );

    // Registration, checked as the kubelet checks it.
    let reg = probe_json(
        &probe,
        &n.netns.path,
        &[
            "register",
            &registry
                .join("dra.netlet.io-reg.sock")
                .display()
                .to_string(),
        ],
    );
    assert_eq!(reg["accepted"], true, "{reg}");
    let endpoint = plugins.join("dra.netlet.io/dra.sock").display().to_string();
    assert_eq!(reg["endpoint"], endpoint.as_str());

    // A claim, allocated as the scheduler would (its status written), with this driver's
    // opaque configuration.
    api.request(
        "POST",
        "/api/v1/namespaces",
        Some(r#"{"metadata":{"name":"ml"}}"#),
    )
    .unwrap();
    let created: serde_json::Value = serde_json::from_str(
        &api.request(
            "POST",
            "/apis/resource.k8s.io/v1/namespaces/ml/resourceclaims",
            Some(r#"{"metadata":{"name":"nic"},"spec":{"devices":{"requests":[{"name":"nic","exactly":{"deviceClassName":"netlet-nic"}}]}}}"#),
        )
        .unwrap(),
    )
    .unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let mut claim = created.clone();
    claim["status"] = serde_json::json!({"reservedFor": [{"resource": "pods", "name": "pod-d", "uid": "pod-d"}],
        "allocation": {"devices": {
        "results": [{"request": "nic", "driver": "dra.netlet.io", "pool": "node-a", "device": "tdev1"}],
        "config": [{"source": "FromClaim", "requests": ["nic"], "opaque": {"driver": "dra.netlet.io",
            "parameters": {"mtu": 1400, "addresses": ["192.168.71.2/24"]}}}]}}});
    api.request(
        "PUT",
        "/apis/resource.k8s.io/v1/namespaces/ml/resourceclaims/nic/status",
        Some(&claim.to_string()),
    )
    .unwrap();

    // NodePrepareResources: the device, and the claim allocated on the node.
    let prepared = probe_json(
        &probe,
        &n.netns.path,
        &["prepare", &endpoint, "ml", "nic", &uid],
    );
    assert_eq!(prepared["error"], "", "{prepared}");
    assert_eq!(
        prepared["devices"],
        serde_json::json!([{"requestNames": ["nic"], "pool": "node-a", "device": "tdev1", "cdiDeviceIds": null}])
    );
    let again = probe_json(
        &probe,
        &n.netns.path,
        &["prepare", &endpoint, "ml", "nic", &uid],
    );
    assert_eq!(again, prepared, "preparing twice gives the same devices");
    let listed = list(&c, false).await;
    assert_eq!(listed[1].allocated_to_claim, uid);
    // A claim that is not what the kubelet says, or not allocated: an error for that claim.
    let wrong = probe_json(
        &probe,
        &n.netns.path,
        &["prepare", &endpoint, "ml", "nic", "not-its-uid"],
    );
    assert!(
        wrong["error"].as_str().unwrap().contains("has UID"),
        "{wrong}"
    );

    // Only a pod the claim is reserved for may take the device; that pod gets it with the
    // claim's configuration.
    let pod = NetNs::create(&format!("netlet-drapod-{}", std::process::id())).unwrap();
    let other = attach(
        &c,
        sandbox("pod-e", &pod.path),
        vec![with_device("tdev1", "net1")],
    )
    .await
    .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert_eq!(reason(&other), "DEVICE_ALLOCATED_ELSEWHERE");
    let att = attach(
        &c,
        sandbox("pod-d", &pod.path),
        vec![with_device("tdev1", "net1")],
    )
    .await
    .expect("attach the claimed device");
    assert_eq!(
        (att[0].mtu, att[0].ips[0].address.as_str()),
        (1400, "192.168.71.2/24")
    );
    assert_eq!(link(&pod.path, "net1").map(|l| l.2), Some(1400));
    // Unprepared while in the pod: an error, the claim kept; after the pod: released.
    let busy = probe_json(
        &probe,
        &n.netns.path,
        &["unprepare", &endpoint, "ml", "nic", &uid],
    );
    assert!(busy["error"].as_str().unwrap().contains("detach"), "{busy}");
    detach(&c, "pod-d").await.unwrap();
    let done = probe_json(
        &probe,
        &n.netns.path,
        &["unprepare", &endpoint, "ml", "nic", &uid],
    );
    assert_eq!(done["error"], "", "{done}");
    assert_eq!(list(&c, false).await[1].allocated_to_claim, "");
    let unknown = probe_json(
        &probe,
        &n.netns.path,
        &["unprepare", &endpoint, "ml", "gone", "no-such-uid"],
    );
    assert_eq!(unknown["error"], "", "an unknown claim unprepares fine");
}
