//! The reference Go driver (sdk/go/cmd/netlet-ptp), built from the Go SDK and proto/ alone,
//! runs the conformance suite, data plane included: directly, and through the host beside a
//! Rust bridge driver serving the second network.

use std::path::{Path, PathBuf};
use std::process::Command;

use netlet_testbed::harness::{Node, bin, bridge_driver, conformance, privileged};
use netlet_testbed::probe;

/// Builds netlet-ptp into `out`. With CI=true a missing Go toolchain fails the test.
fn build_go_driver(out: &Path) -> Option<PathBuf> {
    let go_sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdk/go");
    let exe = out.join("netlet-ptp");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg("./cmd/netlet-ptp")
        .current_dir(&go_sdk)
        .output();
    match built {
        Ok(o) if o.status.success() => Some(exe),
        Ok(o) => panic!("go build failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            netlet_testbed::harness::skip(
                "go_driver_passes_conformance_directly_and_through_the_host",
                &format!("the Go toolchain cannot run: {e}"),
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn go_driver_passes_conformance_directly_and_through_the_host() {
    if !privileged("go_driver_passes_conformance_directly_and_through_the_host") {
        return;
    }
    let build_dir = tempfile::tempdir().unwrap();
    let Some(ptp) = build_go_driver(build_dir.path()) else {
        return;
    };
    let drivers = format!(
        "- name: ptp\n  command: {}\n  args: [\"--network\", \"default\", \"--subnet\", \"10.250.0.0/24\"]\n",
        ptp.display()
    ) + &bridge_driver("bridge-net1", "net1", "netlet1", &["10.245.0.0/24"]);
    let n = Node::start("go", &drivers, "").await;
    n.host.wait_ready("net1").await;
    let targets = [
        n.host.socket.clone(),
        n.host.dir.path().join("run/drivers/ptp.sock"),
    ];
    for t in targets {
        let direct = t.ends_with("ptp.sock");
        let text = conformance(
            n.command(&bin("netlet-conformance")),
            &t,
            // Services, Policy and Devices have no driver here.
            &[
                "--secondary-network",
                "net1",
                "--focus",
                "^(identity|node|pods|dataplane)/",
            ],
            &n.host.dir.path().join("go-junit.xml"),
        );
        if direct {
            assert!(text.contains("(ptp 0.1.0-go, Driver)"), "{text}");
        }
        for check in [
            "pods/attach-invalid-fields",
            "pods/garbage-collect",
            "dataplane/interface-matches-attachment",
            "dataplane/pod-to-pod-tcp-udp-every-family",
            "dataplane/pod-to-node",
            "dataplane/no-spoofed-sources",
            "dataplane/existing-interface-is-refused-and-kept",
            "dataplane/detach-removes-veth-and-frees-addresses",
            "dataplane/attach-replayed-is-one-attachment",
            "dataplane/concurrent-attaches-get-distinct-addresses",
        ] {
            assert!(
                text.contains(&format!("PASS  {check}")),
                "{check} did not pass against {}:\n{text}",
                t.display()
            );
        }
        // eth0 from the Go driver and net1 from the Rust bridge, in one pod, through the host.
        let multi = "PASS  dataplane/secondary-network-carries-traffic";
        assert_eq!(text.contains(multi), !direct, "{text}");
    }
    let left: Vec<String> = probe::interfaces(&n.netns.path)
        .unwrap()
        .into_keys()
        .filter(|l| l.starts_with("ptp") || l.starts_with("veth"))
        .collect();
    assert!(
        left.is_empty(),
        "conformance left pod links behind: {left:?}"
    );
}
