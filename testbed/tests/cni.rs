//! The CNI shim, invoked as containerd invokes a plugin (environment + stdin, one exec per
//! call) on real namespaces, with its results compared to the reference `bridge` +
//! `host-local` plugins' for the same request. Needs root and Debian's
//! `containernetworking-plugins` (./testbed/run-tests installs it).

use std::collections::BTreeSet;
use std::path::Path;

use netlet_testbed::harness::{
    CNI_PLUGIN_DIR, Node, bin, bridge_driver, cni_env, cni_exec, listed, privileged, wait_until,
};
use netlet_testbed::probe::{self, NetNs};
use serde_json::{Value, json};

fn reference_plugins() -> bool {
    let ok = Path::new(CNI_PLUGIN_DIR).join("bridge").is_file();
    if !ok {
        netlet_testbed::harness::skip(
            "cni_shim_speaks_cni",
            &format!("{CNI_PLUGIN_DIR}/bridge missing (containernetworking-plugins)"),
        );
    }
    ok
}

/// Key sets of the result's parts: top level, and the union over the entries of each list.
fn shape(v: &Value) -> Vec<(String, BTreeSet<String>)> {
    let keys = |o: &Value| -> BTreeSet<String> {
        o.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut out = vec![("top".to_string(), keys(v))];
    for part in ["interfaces", "ips", "routes"] {
        let u = v[part]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(&keys)
            .collect();
        out.push((part.to_string(), u));
    }
    out.push(("dns".into(), BTreeSet::new()));
    out
}

fn reference_conf(version: &str, data_dir: &Path) -> String {
    json!({
        "cniVersion": version,
        "name": "reference",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:88::/64"}]],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0", "gw": "fd00:88::1"}]
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn cni_shim_speaks_cni_on_real_namespaces_like_the_reference_plugins() {
    if !privileged("cni_shim_speaks_cni") || !reference_plugins() {
        return;
    }
    let n = Node::start(
        "cni",
        &bridge_driver(
            "bridge",
            "default",
            "netlet0",
            &["10.244.0.0/24", "fd00:10:244::/64"],
        ),
        "",
    )
    .await;
    n.host.wait_ready("").await;
    let shim = bin("netlet-cni");
    let sock = n.host.socket.display().to_string();
    let pid = std::process::id();
    let pod = NetNs::create(&format!("netlet-cni-pod-{pid}")).unwrap();
    let pod_path = pod.path.display().to_string();
    let id = format!("c0ffee{pid}");
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=uid-1"
    );
    let conf_port = |v: &str, host_port: u16| {
        json!({
            "cniVersion": v, "name": "netlet", "type": "netlet", "socket": sock,
            "runtimeConfig": {"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]}
        })
        .to_string()
    };
    let conf = |v: &str| conf_port(v, 8080);

    // VERSION
    let (st, v) = cni_exec(
        None,
        &shim,
        &cni_env("VERSION", "", "", "", ""),
        &conf("1.1.0"),
    );
    assert!(st.success());
    assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));

    // ADD: the interface is in the namespace as reported; CNI_ARGS and port mappings reach the host.
    let (st, res) = cni_exec(
        None,
        &shim,
        &cni_env("ADD", &id, &pod_path, "eth0", &args),
        &conf("1.0.0"),
    );
    assert!(st.success(), "{res}");
    assert_eq!(res["cniVersion"], "1.0.0");
    let pod_if = &res["interfaces"][res["ips"][0]["interface"].as_u64().unwrap() as usize];
    assert_eq!(
        (pod_if["name"].as_str(), pod_if["sandbox"].as_str()),
        (Some("eth0"), Some(pod_path.as_str()))
    );
    let inside = probe::interfaces(&pod.path).unwrap();
    let eth0 = &inside["eth0"];
    assert_eq!(eth0.mac, pod_if["mac"].as_str().unwrap());
    let reported: BTreeSet<String> = res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(eth0.addresses, reported);
    let pods = listed(&n.host.clients().await).await;
    let sb = pods[0].sandbox.clone().unwrap();
    assert_eq!(
        (
            sb.id.as_str(),
            sb.namespace.as_str(),
            sb.name.as_str(),
            sb.uid.as_str()
        ),
        (id.as_str(), "shop", "web-0", "uid-1")
    );
    assert_eq!(sb.port_mappings.len(), 1);
    assert_eq!(
        (
            sb.port_mappings[0].host_port,
            sb.port_mappings[0].container_port
        ),
        (8080, 80)
    );

    // ADD again (a runtime retry): the same result.
    let (st, again) = cni_exec(
        None,
        &shim,
        &cni_env("ADD", &id, &pod_path, "eth0", &args),
        &conf("1.0.0"),
    );
    assert!(st.success());
    assert_eq!(again, res);

    // The reference plugins, same request, in a node namespace of their own.
    let ref_node = NetNs::create(&format!("netlet-cni-refnode-{pid}")).unwrap();
    let ref_pod = NetNs::create(&format!("netlet-cni-refpod-{pid}")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let ref_pod_path = ref_pod.path.display().to_string();
    let bridge = Path::new(CNI_PLUGIN_DIR).join("bridge");
    for version in ["1.0.0", "0.4.0"] {
        let ifname = if version == "1.0.0" { "eth0" } else { "eth1" };
        let (st, want) = cni_exec(
            Some(&ref_node.path),
            &bridge,
            &cni_env("ADD", "ref", &ref_pod_path, ifname, &args),
            &reference_conf(version, data.path()),
        );
        assert!(st.success(), "reference ADD {version}: {want}");
        let ours = if version == "1.0.0" {
            res.clone()
        } else {
            let pod2 = NetNs::create(&format!("netlet-cni-pod04-{pid}")).unwrap();
            let id2 = format!("c0ffee04{pid}");
            // The first pod holds host port 8080: refused, in the spec's error shape.
            let (st, r) = cni_exec(
                None,
                &shim,
                &cni_env("ADD", &id2, &pod2.path.display().to_string(), "eth0", &args),
                &conf("0.4.0"),
            );
            assert!(!st.success(), "{r}");
            assert!(
                r["msg"]
                    .as_str()
                    .is_some_and(|m| m.contains("8080 is held by pod shop/web-0")),
                "{r}"
            );
            let (st, r) = cni_exec(
                None,
                &shim,
                &cni_env("ADD", &id2, &pod2.path.display().to_string(), "eth0", &args),
                &conf_port("0.4.0", 8081),
            );
            assert!(st.success(), "{r}");
            let (st, _) = cni_exec(
                None,
                &shim,
                &cni_env("DEL", &id2, &pod2.path.display().to_string(), "eth0", &args),
                &conf("0.4.0"),
            );
            assert!(st.success());
            r
        };
        assert_eq!(
            shape(&ours),
            shape(&want),
            "{version}: ours {ours:#}\nreference {want:#}"
        );
        let (st, _) = cni_exec(
            Some(&ref_node.path),
            &bridge,
            &cni_env("DEL", "ref", &ref_pod_path, ifname, &args),
            &reference_conf(version, data.path()),
        );
        assert!(st.success());
    }

    // CHECK with prevResult, STATUS, then DEL twice (idempotent), then GC.
    let mut check_conf: Value = serde_json::from_str(&conf("1.0.0")).unwrap();
    check_conf["prevResult"] = res.clone();
    let (st, out) = cni_exec(
        None,
        &shim,
        &cni_env("CHECK", &id, &pod_path, "eth0", &args),
        &check_conf.to_string(),
    );
    assert!(st.success() && out.is_null(), "{out}");
    let (st, out) = cni_exec(
        None,
        &shim,
        &cni_env("STATUS", "", "", "", ""),
        &conf("1.1.0"),
    );
    assert!(st.success() && out.is_null(), "{out}");
    for _ in 0..2 {
        let (st, out) = cni_exec(
            None,
            &shim,
            &cni_env("DEL", &id, &pod_path, "eth0", &args),
            &conf("1.0.0"),
        );
        assert!(st.success() && out.is_null(), "{out}");
    }
    assert!(!probe::interfaces(&pod.path).unwrap().contains_key("eth0"));
    let (st, out) = cni_exec(
        None,
        &shim,
        &cni_env("CHECK", &id, &pod_path, "eth0", &args),
        &conf("1.0.0"),
    );
    assert!(!st.success());
    assert_eq!(out["code"], 3, "{out}");
    let mut gc: Value = serde_json::from_str(&conf("1.1.0")).unwrap();
    gc["cni.dev/valid-attachments"] = json!([]);
    let (st, out) = cni_exec(None, &shim, &cni_env("GC", "", "", "", ""), &gc.to_string());
    assert!(st.success() && out.is_null(), "{out}");
}

#[test]
fn cni_shim_errors_take_the_spec_shape() {
    let shim = bin("netlet-cni");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("netlet.sock").display().to_string();
    let conf = |v: &str| {
        json!({"cniVersion": v, "name": "netlet", "type": "netlet", "socket": missing}).to_string()
    };
    let cases = [
        (
            cni_env("ADD", "c1", "/run/netns/x", "eth0", ""),
            conf("1.1.0"),
            11,
        ),
        (cni_env("STATUS", "", "", "", ""), conf("1.1.0"), 11),
        (
            cni_env("ADD", "c1", "/run/netns/x", "eth0", ""),
            conf("9.9.9"),
            1,
        ),
        (
            cni_env("ADD", "", "/run/netns/x", "eth0", ""),
            conf("1.1.0"),
            4,
        ),
        (
            cni_env("ADD", "c1", "/run/netns/x", "eth0", ""),
            "{not json".to_string(),
            6,
        ),
        (
            cni_env("ADD", "c1", "/run/netns/x", "eth0", ""),
            json!({"cniVersion": "1.1.0", "type": "netlet"}).to_string(),
            7,
        ),
    ];
    for (e, stdin, want) in cases {
        let (st, out) = cni_exec(None, &shim, &e, &stdin);
        assert!(!st.success(), "{e:?} should fail: {out}");
        assert_eq!(out["code"], want, "{e:?}: {out}");
        assert!(out["msg"].as_str().is_some_and(|m| !m.is_empty()), "{out}");
        assert!(out["cniVersion"].is_string(), "{out}");
    }
    // DEL with the host away succeeds (the runtime can remove the sandbox) and leaves the
    // detach for the host, beside its socket.
    let (st, out) = cni_exec(
        None,
        &shim,
        &cni_env("DEL", "c1", "", "eth0", ""),
        &conf("1.0.0"),
    );
    assert!(st.success(), "{out}");
    assert!(dir.path().join("pending-detach/c1").is_file());
}

// Input as containerd 1.6 writes it (go-cni: Go's field names in runtimeConfig), a DEL whose
// configuration does not decode, and a DEL while the host is down: the pod gets its host port,
// and every DEL lets the runtime remove the sandbox while nothing stays attached.
#[tokio::test(flavor = "multi_thread")]
async fn cni_input_as_runtimes_send_it_and_del_always_succeeds() {
    if !privileged("cni_input_as_runtimes_send_it_and_del_always_succeeds") {
        return;
    }
    let mut n = Node::start(
        "cnidel",
        &bridge_driver("bridge", "default", "netlet0", &["10.244.0.0/24"]),
        "",
    )
    .await;
    n.host.wait_ready("").await;
    let shim = bin("netlet-cni");
    let sock = n.host.socket.display().to_string();
    let pid = std::process::id();
    let conf = |port_mappings: Value| {
        json!({"cniVersion": "1.0.0", "name": "netlet", "type": "netlet", "socket": sock,
            "runtimeConfig": {"portMappings": port_mappings}})
        .to_string()
    };
    let go_keys =
        json!([{"HostPort": 12000, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}]);
    let pods: Vec<NetNs> = (0..2)
        .map(|i| NetNs::create(&format!("netlet-cnidel-{i}-{pid}")).unwrap())
        .collect();
    let add = |i: usize| {
        let id = format!("cd{i}{pid}");
        let path = pods[i].path.display().to_string();
        let (st, res) = cni_exec(
            None,
            &shim,
            &cni_env("ADD", &id, &path, "eth0", ""),
            &conf(go_keys.clone()),
        );
        assert!(st.success(), "{res}");
        id
    };
    let first = add(0);
    let c = n.host.clients().await;
    let held = c
        .services
        .clone()
        .list_services(netlet_sdk::proto::ListServicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .host_ports;
    let pm = &held[0].port_mappings[0];
    assert_eq!((pm.host_port, pm.container_port), (12000, 80), "{held:?}");

    // A configuration that does not decode: DEL still detaches by container id.
    let broken = conf(json!([{"HostPort": "twelve thousand"}]));
    let (st, out) = cni_exec(
        None,
        &shim,
        &cni_env("DEL", &first, "", "eth0", ""),
        &broken,
    );
    assert!(st.success(), "{out}");
    assert!(listed(&c).await.is_empty());
    // ADD refuses it, naming the field as the runtime sent it.
    let (st, out) = cni_exec(
        None,
        &shim,
        &cni_env(
            "ADD",
            &first,
            &pods[0].path.display().to_string(),
            "eth0",
            "",
        ),
        &broken,
    );
    assert!(!st.success());
    assert_eq!(out["code"], 7, "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .starts_with("runtimeConfig.portMappings[0].hostPort:"),
        "{out}"
    );

    // The host is down at DEL: DEL succeeds; the host detaches the sandbox when it is back.
    let second = add(1);
    n.host.stop_with(nix::sys::signal::Signal::SIGTERM);
    let (st, out) = cni_exec(
        None,
        &shim,
        &cni_env("DEL", &second, "", "eth0", ""),
        &conf(go_keys.clone()),
    );
    assert!(st.success(), "{out}");
    let pending = n.host.socket.parent().unwrap().join("pending-detach");
    assert!(pending.join(&second).is_file());
    n.host.spawn().await;
    let c = n.host.clients().await;
    wait_until(
        "the pending detach done",
        std::time::Duration::from_secs(20),
        || {
            let (c, pending) = (c.clone(), pending.clone());
            async move {
                let gone = listed(&c).await.is_empty();
                let empty = std::fs::read_dir(&pending).ok()?.next().is_none();
                (gone && empty).then_some(())
            }
        },
    )
    .await;
    let links: Vec<String> = probe::interfaces(&n.netns.path)
        .unwrap()
        .into_keys()
        .filter(|l| l.starts_with("veth"))
        .collect();
    assert!(links.is_empty(), "{links:?}");
}
