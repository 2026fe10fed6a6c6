//! The real `netlet` binary with real driver processes over real unix sockets.

use std::{os::unix::process::CommandExt, process::Command, time::Duration};

use netlet_sdk::{
    client::Clients,
    proto::{
        AttachPodRequest, DetachPodRequest, GetInfoRequest, ListAttachmentsRequest,
        NetworkReadyRequest, NetworkSelection, PodNetworkStatusRequest, PodSandbox,
        ProgramServiceRequest, Service, ServiceKey, WatchNetworkReadyRequest,
    },
};
use netlet_testbed::harness::{
    Host, Proc, bin, fixture_driver, listed, privileged, readiness, wait_until,
};
use tokio_stream::StreamExt;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

fn pod(id: &str, networks: &[(&str, &str)]) -> AttachPodRequest {
    AttachPodRequest {
        sandbox: Some(PodSandbox {
            id: id.into(),
            name: id.into(),
            namespace: "test".into(),
            netns_path: format!("/var/run/netns/{id}"),
            ..Default::default()
        }),
        networks: networks
            .iter()
            .map(|(n, i)| NetworkSelection {
                network: n.to_string(),
                interface_name: i.to_string(),
                ..Default::default()
            })
            .collect(),
    }
}

async fn driver_names(c: &Clients) -> Vec<String> {
    let mut v = c
        .identity
        .clone()
        .get_info(GetInfoRequest::default())
        .await
        .unwrap()
        .into_inner()
        .networks;
    v.sort();
    v
}

fn admin_state(h: &Host) -> serde_json::Value {
    let out = Command::new(bin("netletctl"))
        .args([
            "--socket",
            h.socket.to_str().unwrap(),
            "-o",
            "json",
            "debug",
            "state",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "netletctl debug state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn supervised_driver_is_restarted_after_kill_and_resynced() {
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let h = Host::start(
        &fixture_driver(
            "fixture",
            "default",
            &["--pid-file", pidfile.path().to_str().unwrap()],
        ),
        "",
    )
    .await;
    h.wait_ready("").await;
    let mut c = h.clients().await;
    assert_eq!(driver_names(&c).await, vec!["default".to_string()]);
    c.pods.attach_pod(pod("p1", &[])).await.unwrap();
    c.services
        .program_service(ProgramServiceRequest {
            generation: 1,
            full_sync: true,
            service_upserts: vec![Service {
                key: Some(ServiceKey {
                    namespace: "default".into(),
                    name: "web".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    // The driver is brought to the host's own numbering of the node's table.
    let node_generation = c
        .services
        .list_services(netlet_sdk::proto::ListServicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .node_generation;

    let pid: i32 = std::fs::read_to_string(pidfile.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let driver_sock = h.dir.path().join("run/drivers/fixture.sock");
    // Back, re-registered, and the desired state replayed into the new process.
    wait_until(
        "restarted fixture to hold p1 and the Service again",
        T,
        || {
            let sock = driver_sock.clone();
            let pidfile = pidfile.path().to_path_buf();
            async move {
                let new_pid: i32 = std::fs::read_to_string(&pidfile)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                if new_pid == pid {
                    return None;
                }
                let mut d = Clients::connect(&sock, Some(Duration::from_secs(2)))
                    .await
                    .ok()?;
                let pods = d
                    .pods
                    .list_attachments(ListAttachmentsRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .pods;
                let svcs = d
                    .services
                    .list_services(netlet_sdk::proto::ListServicesRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                (pods.len() == 1
                    && svcs.applied_generation == node_generation
                    && svcs.services.len() == 1)
                    .then_some(())
            }
        },
    )
    .await;
    h.wait_ready("").await;
    let st = admin_state(&h);
    assert_eq!(st["drivers"][0]["restarts"], 1, "{st}");
    let metrics = Command::new(bin("netletctl"))
        .args(["--socket", h.socket.to_str().unwrap(), "metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("netlet_driver_restarts_total{driver=\"fixture\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("netlet_grpc_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("netlet_drivers_registered 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn external_driver_registers_and_deregisters_with_its_socket() {
    let h = Host::start("", "").await;
    let c = h.clients().await;
    // No driver for `default`: not ready, and the reason says so.
    let r = readiness(&c).await;
    assert!(!r.ready);
    assert_eq!(r.reason, "NoDriverForNetwork");
    let mut watch = c
        .node
        .clone()
        .watch_network_ready(WatchNetworkReadyRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap().readiness.unwrap();
    assert!(!first.ready);

    let sock = h.plugin_dir.join("ext.sock");
    let ext = Proc::start(
        &bin("netlet-fixture-driver"),
        &[
            "--name",
            "ext",
            "--networks",
            "default,net1",
            "--socket",
            sock.to_str().unwrap(),
        ],
    );
    // The watch stream reports the change.
    let ready = tokio::time::timeout(T, async {
        while let Some(Ok(m)) = watch.next().await {
            if m.readiness.as_ref().is_some_and(|r| r.ready) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(ready);
    assert_eq!(
        driver_names(&c).await,
        vec!["default".to_string(), "net1".to_string()]
    );
    let st = admin_state(&h);
    assert_eq!(st["drivers"][0]["source"], "external");

    ext.terminate();
    wait_until("deregistration", T, || {
        let c = c.clone();
        async move { driver_names(&c).await.is_empty().then_some(()) }
    })
    .await;
    let r = readiness(&c).await;
    assert!(!r.ready);

    // A driver without a common API version is not registered, and NetworkReady says why.
    let bad = h.plugin_dir.join("future.sock");
    let _future = Proc::start(
        &bin("netlet-fixture-driver"),
        &[
            "--name",
            "future",
            "--api-version",
            "netlet.v9",
            "--socket",
            bad.to_str().unwrap(),
        ],
    );
    let cond = wait_until("NoCommonApiVersion condition", T, || {
        let c = c.clone();
        async move {
            let r = c
                .node
                .clone()
                .network_ready(NetworkReadyRequest::default())
                .await
                .ok()?
                .into_inner()
                .readiness?;
            r.conditions
                .into_iter()
                .find(|c| c.reason == "NoCommonApiVersion")
        }
    })
    .await;
    assert!(cond.message.contains("netlet.v9"), "{cond:?}");
    assert!(driver_names(&c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_network_attach_rolls_back_on_failure() {
    let drivers = fixture_driver("main", "default", &[])
        + &fixture_driver("broken", "net1", &["--fail-attach"]);
    let h = Host::start(&drivers, "").await;
    h.wait_ready("net1").await;
    let mut c = h.clients().await;
    let err = c
        .pods
        .attach_pod(pod("p2", &[("default", ""), ("net1", "")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("net1") && err.message().contains("broken"),
        "{err:?}"
    );
    // The first network was rolled back in its driver, and nothing is recorded.
    let main = Clients::connect(&h.dir.path().join("run/drivers/main.sock"), None)
        .await
        .unwrap();
    let held = listed(&main).await;
    assert!(held.is_empty(), "rolled back: {held:?}");
    assert!(listed(&c).await.is_empty());
    // An unknown network fails before anything is attached.
    let err = c
        .pods
        .attach_pod(pod("p3", &[("default", ""), ("nowhere", "")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("networks[1].network"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn attachments_survive_a_host_restart() {
    let drivers = fixture_driver("main", "default", &[]) + &fixture_driver("second", "net1", &[]);
    let mut h = Host::start(&drivers, "").await;
    h.wait_ready("net1").await;
    let mut c = h.clients().await;
    let attached = c
        .pods
        .attach_pod(pod("p4", &[("default", "eth0"), ("net1", "net1")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(attached.attachments.len(), 2);
    assert_eq!(attached.attachments[1].interface_name, "net1");
    h.stop_with(nix::sys::signal::Signal::SIGKILL);
    h.spawn().await;
    h.wait_ready("net1").await;
    let mut c = h.clients().await;
    let st = c
        .pods
        .pod_network_status(PodNetworkStatusRequest {
            sandbox_id: "p4".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.pod.unwrap().attachments, attached.attachments);
    // Replayed into the freshly started drivers with the same addresses.
    let second = Clients::connect(&h.dir.path().join("run/drivers/second.sock"), None)
        .await
        .unwrap();
    let held = wait_until("replay into second", T, || {
        let mut s = second.clone();
        async move {
            let pods = s
                .pods
                .list_attachments(ListAttachmentsRequest::default())
                .await
                .ok()?
                .into_inner()
                .pods;
            (!pods.is_empty()).then_some(pods)
        }
    })
    .await;
    assert_eq!(held[0].attachments[0].ips, attached.attachments[1].ips);
    c.pods
        .detach_pod(DetachPodRequest {
            sandbox_id: "p4".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = c
        .pods
        .pod_network_status(PodNetworkStatusRequest {
            sandbox_id: "p4".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let held = listed(&second).await;
    assert!(held.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_rejected_and_change_nothing() {
    let h = Host::start(&fixture_driver("main", "default", &[]), "").await;
    h.wait_ready("").await;
    let mut c = h.clients().await;
    c.pods.attach_pod(pod("ok", &[])).await.unwrap();
    let before = c
        .pods
        .list_attachments(ListAttachmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut bad = pod("ok2", &[("default", "")]);
    bad.networks[0].ips = vec!["10.0.0.256/24".into()];
    let err = c.pods.attach_pod(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("networks[0].ips[0]:"), "{err:?}");
    let err = c
        .pods
        .attach_pod(pod("ok", &[("default", ""), ("default", "")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .services
        .program_service(ProgramServiceRequest {
            generation: 1,
            full_sync: true,
            service_upserts: vec![Service::default()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("service_upserts[0].key"),
        "{err:?}"
    );
    assert_eq!(
        c.services
            .list_services(netlet_sdk::proto::ListServicesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .applied_generation,
        0
    );
    let after = c
        .pods
        .list_attachments(ListAttachmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_not_on_the_allow_list_are_denied() {
    if !privileged("callers_not_on_the_allow_list_are_denied") {
        return;
    }
    let h = Host::start(&fixture_driver("main", "default", &[]), "").await;
    h.wait_ready("").await;
    // Let uid 65534 reach the socket through group 0 (mode 0660): only the peer-credential
    // check stands in its way.
    use std::os::unix::fs::PermissionsExt;
    for d in [h.dir.path().to_path_buf(), h.dir.path().join("run")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ctl = h.dir.path().join("netletctl");
    std::fs::copy(bin("netletctl"), &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |uid: Option<u32>| {
        let mut cmd = Command::new(&ctl);
        cmd.args(["--socket", h.socket.to_str().unwrap(), "attachments"]);
        if let Some(u) = uid {
            cmd.uid(u).gid(0);
        }
        cmd.output().unwrap()
    };
    let metrics = || {
        let out = Command::new(bin("netletctl"))
            .args(["--socket", h.socket.to_str().unwrap(), "metrics"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list_series = "method=\"/netlet.v1alpha1.Pods/ListAttachments\"";
    let denied = run(Some(65534));
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("does not have permission"), "{err}");
    assert!(err.contains("uid 65534"), "{err}");
    // Refused before anything is recorded: counted once, no timing series for its call.
    let m = metrics();
    assert!(m.contains("netlet_grpc_requests_denied_total 1"), "{m}");
    assert!(!m.contains(list_series), "{m}");
    let allowed = run(None);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(metrics().contains(list_series));

    // Paths the host does not serve share one label value, whatever an allowed caller sends.
    let channel = netlet_sdk::client::connect_unix(&h.socket, Some(T))
        .await
        .unwrap();
    for i in 0..20 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path: http::uri::PathAndQuery = format!("/x{i}.Made/Up{i}").parse().unwrap();
        let status = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
    }
    let m = metrics();
    assert!(!m.contains("Made/Up"), "{m}");
    assert!(
        m.contains("netlet_grpc_request_duration_seconds_count{method=\"other\",code=\"12\"} 20"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: netlet.io/v1alpha1\nkind: NodeConfig\ndrivers:\n- name: x\n  command: ''\n",
    )
    .unwrap();
    let out = Command::new(bin("netlet"))
        .args(["check-config", "--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(f.to_str().unwrap())
            && err.contains("drivers[0].command")
            && err.contains("required"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_passes_against_host_and_fixture() {
    let h = Host::start(&fixture_driver("main", "default", &[]), "").await;
    h.wait_ready("").await;
    let targets = [h.socket.clone(), h.dir.path().join("run/drivers/main.sock")];
    for t in targets {
        let junit = h.dir.path().join("junit.xml");
        let out = Command::new(bin("netlet-conformance"))
            .args([
                "--target",
                &format!("unix://{}", t.display()),
                "--junit",
                junit.to_str().unwrap(),
                // The fixture has no data plane; tests/dataplane.rs runs those checks against
                // the bridge driver.
                "--skip",
                "^dataplane/",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(" 0 failed"), "{text}");
        // The fixture's devices sit on two NUMA nodes: the alignment check runs, not skips.
        assert!(
            text.contains("PASS  devices/alignment-refused-names-the-constraint"),
            "{text}"
        );
        // The target's role picks the checks meant for it.
        let (mine, other) = if t == h.socket {
            (
                "host-ports-come-only-from-attachpod",
                "host-ports-applied-and-listed",
            )
        } else {
            (
                "host-ports-applied-and-listed",
                "host-ports-come-only-from-attachpod",
            )
        };
        assert!(text.contains(&format!("PASS  services/{mine}")), "{text}");
        assert!(
            text.contains(&format!("SKIP  services/{other}: meant for a")),
            "{text}"
        );
        for check in [
            "services/full-sync-from-a-new-epoch-applies",
            "policy/full-sync-from-a-new-epoch-applies",
        ] {
            assert!(text.contains(&format!("PASS  {check}")), "{text}");
        }
        let xml = std::fs::read_to_string(&junit).unwrap();
        assert!(
            xml.contains("<testcase classname=\"pods\" name=\"attach-idempotent\""),
            "{xml}"
        );
        assert!(xml.contains("failures=\"0\""), "{xml}");
    }
    // A Pods-only driver: the other capabilities answer UNIMPLEMENTED, and the suite checks it.
    let sock = h.plugin_dir.join("podsonly.sock");
    let _d = Proc::start(
        &bin("netlet-fixture-driver"),
        &[
            "--name",
            "podsonly",
            "--networks",
            "net2",
            "--capabilities",
            "pods",
            "--socket",
            sock.to_str().unwrap(),
        ],
    );
    wait_until("podsonly socket", T, || {
        let s = sock.clone();
        async move { tokio::net::UnixStream::connect(&s).await.ok().map(|_| ()) }
    })
    .await;
    let out = Command::new(bin("netlet-conformance"))
        .args([
            "--target",
            &format!("unix://{}", sock.display()),
            "--focus",
            "identity/",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("PASS  identity/unimplemented-when-undeclared"),
        "{text}"
    );
}

/// A Service manifest for `name` in namespace `keep`.
fn service_yaml(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: keep}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
    )
}

/// Names of the Services a driver lists, and its applied (epoch, generation).
async fn driver_services(d: &Clients) -> Option<(Vec<String>, (u64, u64))> {
    let l = d
        .services
        .clone()
        .list_services(netlet_sdk::proto::ListServicesRequest::default())
        .await
        .ok()?
        .into_inner();
    let mut names: Vec<String> = l
        .services
        .iter()
        .filter_map(|s| s.service.as_ref()?.key.as_ref())
        .map(|k| format!("{}/{}", k.namespace, k.name))
        .collect();
    names.sort();
    Some((names, (l.applied_epoch, l.applied_generation)))
}

async fn driver_grants(d: &Clients) -> Option<Vec<String>> {
    let l = d
        .policy
        .clone()
        .list_policies(netlet_sdk::proto::ListPoliciesRequest {})
        .await
        .ok()?
        .into_inner();
    Some(
        l.hostname_grants
            .iter()
            .filter_map(|g| Some(g.key.as_ref()?.name.clone()))
            .collect(),
    )
}

fn grant_batch(epoch: u64, generation: u64, name: &str) -> netlet_sdk::proto::ApplyPolicyRequest {
    use netlet_sdk::proto::{ApplyPolicyRequest, HostnameGrant, PolicyKey, PolicyKind};
    ApplyPolicyRequest {
        epoch,
        generation,
        full_sync: true,
        hostname_grants: vec![HostnameGrant {
            key: Some(PolicyKey {
                kind: PolicyKind::HostnameGrant as i32,
                namespace: String::new(),
                name: name.into(),
            }),
            namespaces: vec!["keep".into()],
            hostnames: vec![format!("{name}.example.com")],
            ..Default::default()
        }],
        ..Default::default()
    }
}

// An external driver keeps running while the host is killed and started again. The new host
// numbers its batches from 1 again; its first full sync must still replace the driver's state
// (before epochs, the driver refused it as older, or took it for a replay at an equal number).
#[tokio::test(flavor = "multi_thread")]
async fn an_external_driver_that_outlives_the_host_converges_to_the_new_host() {
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("a.yaml"),
        service_yaml("a", "10.96.5.1"),
    )
    .unwrap();
    std::fs::write(
        manifests.path().join("b.yaml"),
        service_yaml("b", "10.96.5.2"),
    )
    .unwrap();
    let extra = format!("manifestsDir: {}\n", manifests.path().display());
    let mut h = Host::start("", &extra).await;
    let (_ext, sock) = h.external_fixture("ext", "default", &[]);
    h.wait_ready("").await;
    let d = wait_until("driver socket", T, || {
        let s = sock.clone();
        async move { Clients::connect(&s, None).await.ok() }
    })
    .await;
    let mut c = h.clients().await;
    // Socket callers' Services and policies, in several batches: the driver's generation climbs
    // above anything the next host reaches soon.
    for g in 1..=6u64 {
        c.services
            .program_service(ProgramServiceRequest {
                epoch: 77,
                generation: g,
                full_sync: true,
                service_upserts: vec![Service {
                    key: Some(ServiceKey {
                        namespace: "caller".into(),
                        name: format!("s{g}"),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        c.policy
            .apply_policy(grant_batch(77, g, "old"))
            .await
            .unwrap();
    }
    let (before, applied_before) = wait_until("driver holds a, b and caller/s6", T, || {
        let d = d.clone();
        async move {
            let (names, applied) = driver_services(&d).await?;
            (names == ["caller/s6", "keep/a", "keep/b"]).then_some((names, applied))
        }
    })
    .await;
    assert_eq!(driver_grants(&d).await.unwrap(), ["old"], "{before:?}");

    // The host dies; while it is away the manifests change; it comes back.
    h.stop_with(nix::sys::signal::Signal::SIGKILL);
    std::fs::remove_file(manifests.path().join("b.yaml")).unwrap();
    std::fs::write(
        manifests.path().join("c.yaml"),
        service_yaml("c", "10.96.5.3"),
    )
    .unwrap();
    h.spawn().await;
    let mut c = h.clients().await;

    // The driver converges to the new host: a and c; the callers' Services and grants, which
    // the host does not keep across restarts, are gone; the driver is in the new epoch.
    let applied_after = wait_until("driver holds exactly a and c, in sync", T, || {
        let (d, c) = (d.clone(), c.clone());
        async move {
            let (names, applied) = driver_services(&d).await?;
            let host = c
                .services
                .clone()
                .list_services(netlet_sdk::proto::ListServicesRequest::default())
                .await
                .ok()?
                .into_inner();
            let in_sync = host.drivers.iter().any(|g| g.driver == "ext" && g.in_sync);
            (names == ["keep/a", "keep/c"] && in_sync).then_some(applied)
        }
    })
    .await;
    assert_ne!(
        applied_after.0, applied_before.0,
        "a new host is a new epoch"
    );
    assert!(
        applied_after.1 < applied_before.1,
        "the new host's numbering started again ({applied_after:?} after {applied_before:?}), so the test proves what it means to"
    );
    wait_until("driver drops the old grants", T, || {
        let d = d.clone();
        async move { driver_grants(&d).await?.is_empty().then_some(()) }
    })
    .await;
    // A caller that restarted too starts again at generation 1 in an epoch of its own.
    c.policy
        .apply_policy(grant_batch(78, 1, "new"))
        .await
        .unwrap();
    assert_eq!(driver_grants(&d).await.unwrap(), ["new"]);
}

// DetachPodRequest.networks is honoured on the host: only the named attachments go (their
// drivers are told), the record keeps the rest, and naming one that is gone is OK.
#[tokio::test(flavor = "multi_thread")]
async fn detach_of_some_networks_keeps_the_others() {
    let drivers = fixture_driver("main", "default", &[]) + &fixture_driver("second", "net1", &[]);
    let h = Host::start(&drivers, "").await;
    h.wait_ready("net1").await;
    let mut c = h.clients().await;
    let attached = c
        .pods
        .attach_pod(pod("p6", &[("default", "eth0"), ("net1", "net1")]))
        .await
        .unwrap()
        .into_inner();
    let only_net1 = DetachPodRequest {
        sandbox_id: "p6".into(),
        networks: vec![NetworkSelection {
            network: "net1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    for _ in 0..3 {
        c.pods.detach_pod(only_net1.clone()).await.unwrap();
    }
    let st = c
        .pods
        .pod_network_status(PodNetworkStatusRequest {
            sandbox_id: "p6".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.pod.unwrap().attachments, attached.attachments[..1]);
    let held_by = |name: &'static str| {
        let sock = h.dir.path().join(format!("run/drivers/{name}.sock"));
        async move {
            let mut d = Clients::connect(&sock, None).await.unwrap();
            d.pods
                .list_attachments(ListAttachmentsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .pods
                .len()
        }
    };
    assert_eq!(held_by("second").await, 0, "net1's driver was told");
    assert_eq!(held_by("main").await, 1, "eth0 stays");
    c.pods
        .detach_pod(DetachPodRequest {
            sandbox_id: "p6".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(listed(&c).await.is_empty());
    assert_eq!(held_by("main").await, 0);
}

// Which networks the node needs before it is ready is configured (`requiredNetworks`).
#[tokio::test(flavor = "multi_thread")]
async fn readiness_waits_for_every_required_network() {
    let h = Host::start(
        &fixture_driver("main", "default", &[]),
        "requiredNetworks: [default, storage]\n",
    )
    .await;
    let c = h.clients().await;
    let r = wait_until("default's driver registered and ready", T, || {
        let c = c.clone();
        async move {
            let r = readiness(&c).await;
            r.conditions
                .iter()
                .any(|k| {
                    k.r#type == "NetworkReady"
                        && k.network == "default"
                        && k.status == netlet_sdk::proto::ConditionStatus::True as i32
                })
                .then_some(r)
        }
    })
    .await;
    assert!(!r.ready, "{r:?}");
    assert_eq!(r.reason, "NoDriverForNetwork");
    assert!(r.message.contains("\"storage\""), "{}", r.message);
    let _d = h.external_fixture("storage", "storage", &[]);
    h.wait_ready("").await;
}

// A request that needs an optional feature the driver it would go to lacks is refused by the
// host, naming the field, and reaches no driver; GetInfo of the host lists what its drivers
// have.
#[tokio::test(flavor = "multi_thread")]
async fn requests_needing_a_feature_no_driver_has_are_refused() {
    use netlet_sdk::proto::{
        ApplyPolicyRequest, DnsPolicy, Feature, PolicyKey, PolicyKind, Protocol, ServicePort,
    };
    use tonic_types::StatusExt;
    let h = Host::start(
        &fixture_driver("plain", "default", &["--features", "none"]),
        "",
    )
    .await;
    h.wait_ready("").await;
    let mut c = h.clients().await;
    let info = c
        .identity
        .get_info(GetInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.features.unwrap().supported, Vec::<i32>::new());
    let reason = |e: &tonic::Status| e.get_details_error_info().map(|i| i.reason);

    let mut req = pod("f1", &[("default", "eth0")]);
    req.networks[0].ips = vec!["10.244.0.50".into()];
    let e = c.pods.attach_pod(req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with("networks[0].ips:"), "{e:?}");
    assert!(e.message().contains("FEATURE_STATIC_IPS"), "{e:?}");
    assert_eq!(reason(&e).as_deref(), Some("FEATURE_NOT_SUPPORTED"));
    assert!(listed(&c).await.is_empty(), "nothing attached");
    let mut req = pod("f2", &[("default", "eth0")]);
    req.sandbox.as_mut().unwrap().port_mappings = vec![netlet_sdk::proto::PortMapping {
        host_port: 8080,
        container_port: 80,
        ..Default::default()
    }];
    let e = c.pods.attach_pod(req).await.unwrap_err();
    assert!(
        e.message().starts_with("sandbox.port_mappings[0]:"),
        "{e:?}"
    );

    let e = c
        .services
        .program_service(ProgramServiceRequest {
            generation: 1,
            full_sync: true,
            service_upserts: vec![Service {
                key: Some(ServiceKey {
                    namespace: "default".into(),
                    name: "sctp".into(),
                }),
                cluster_ips: vec!["10.96.9.9".into()],
                ports: vec![ServicePort {
                    port: 9,
                    protocol: Protocol::Sctp as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message()
            .starts_with("service_upserts[0].ports[0].protocol:"),
        "{e:?}"
    );
    // DNS policies are the host's own to evaluate (its DNS server, CheckDns): no driver needs
    // the feature.
    c.policy
        .apply_policy(ApplyPolicyRequest {
            generation: 1,
            full_sync: true,
            dns_policies: vec![DnsPolicy {
                key: Some(PolicyKey {
                    kind: PolicyKind::DnsPolicy as i32,
                    namespace: "default".into(),
                    name: "p".into(),
                }),
                deny: vec!["*.example.com".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("the host takes DNS policies itself");
    let d = c
        .policy
        .check_dns(netlet_sdk::proto::CheckDnsRequest {
            client_address: "10.244.0.9".into(),
            namespace: "default".into(),
            query_name: "a.example.com".into(),
            query_type: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (d.action, d.policy.as_str()),
        (netlet_sdk::proto::DnsAction::Deny as i32, "default/p")
    );
    // Without those, the same driver serves the pod.
    c.pods
        .attach_pod(pod("f3", &[("default", "eth0")]))
        .await
        .unwrap();
    // A driver that has the feature makes it available (and advertised).
    let _d = h.external_fixture("rich", "rich", &[]);
    wait_until("rich registered", T, || {
        let mut c = c.clone();
        async move {
            let info = c
                .identity
                .get_info(GetInfoRequest::default())
                .await
                .ok()?
                .into_inner();
            info.features?
                .supported
                .contains(&(Feature::StaticIps as i32))
                .then_some(())
        }
    })
    .await;
    let mut req = pod("f4", &[("rich", "eth0")]);
    req.networks[0].ips = vec!["10.244.0.50".into()];
    c.pods.attach_pod(req).await.unwrap();
}

// CNI GC is for the network of its configuration: a GC naming net1 removes net1 attachments of
// sandboxes not in its list, and leaves the other networks' attachments alone.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_collect_of_one_network_leaves_the_others() {
    use netlet_sdk::proto::GarbageCollectRequest;
    let drivers = fixture_driver("main", "default", &[]) + &fixture_driver("second", "net1", &[]);
    let h = Host::start(&drivers, "").await;
    h.wait_ready("net1").await;
    let mut c = h.clients().await;
    c.pods
        .attach_pod(pod("only-default", &[("default", "eth0")]))
        .await
        .unwrap();
    c.pods
        .attach_pod(pod("both", &[("default", "eth0"), ("net1", "net1")]))
        .await
        .unwrap();
    let removed = c
        .pods
        .garbage_collect(GarbageCollectRequest {
            valid_sandbox_ids: vec![],
            network: "net1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .removed_sandbox_ids;
    assert_eq!(removed, ["both"]);
    let nets = |id: &str, pods: &[netlet_sdk::proto::PodAttachments]| -> Vec<String> {
        pods.iter()
            .filter(|p| p.sandbox.as_ref().is_some_and(|s| s.id == id))
            .flat_map(|p| p.attachments.iter().map(|a| a.network.clone()))
            .collect()
    };
    let pods = listed(&c).await;
    assert_eq!(nets("only-default", &pods), ["default"]);
    assert_eq!(
        nets("both", &pods),
        ["default"],
        "its net1 attachment only went"
    );
}

// netns_path may be any absolute path: the host refuses one that is the node's or the machine's
// own network namespace, or a file that is not a namespace, before any driver is asked.
#[tokio::test(flavor = "multi_thread")]
async fn attach_refuses_the_nodes_own_namespace_and_non_namespace_files() {
    use tonic_types::StatusExt;
    let h = Host::start(&fixture_driver("main", "default", &[]), "").await;
    h.wait_ready("").await;
    let mut c = h.clients().await;
    let config = h.config.display().to_string();
    for (i, path) in ["/proc/1/ns/net", "/proc/self/ns/net", config.as_str()]
        .into_iter()
        .enumerate()
    {
        let mut req = pod(&format!("ns{i}"), &[("default", "eth0")]);
        req.sandbox.as_mut().unwrap().netns_path = path.to_string();
        let e = c.pods.attach_pod(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{path}: {e:?}");
        assert!(
            e.message().starts_with("sandbox.netns_path:"),
            "{path}: {e:?}"
        );
        assert_eq!(
            e.get_details_error_info().map(|i| i.reason).as_deref(),
            Some("NETNS_INVALID"),
            "{path}"
        );
    }
    assert!(listed(&c).await.is_empty(), "nothing attached");
    let driver = Clients::connect(&h.dir.path().join("run/drivers/main.sock"), None)
        .await
        .unwrap();
    assert!(listed(&driver).await.is_empty(), "no driver was asked");
}

/// The reason of the failed-registration condition for `driver`, once one is reported.
async fn registration_failure(c: &Clients, driver: &str) -> String {
    let c = c.clone();
    let driver = driver.to_string();
    wait_until("a registration failure reported", T, move || {
        let (c, driver) = (c.clone(), driver.clone());
        async move {
            readiness(&c)
                .await
                .conditions
                .into_iter()
                .find(|k| {
                    k.r#type == "DriverRegistered"
                        && k.driver == driver
                        && k.status == netlet_sdk::proto::ConditionStatus::False as i32
                })
                .map(|k| k.reason)
        }
    })
    .await
}

// A plugin-directory socket claiming a name a supervised driver holds is refused with a
// condition, never swapped in; a socket owned by a user the host does not allow is refused.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_sockets_cannot_take_a_name_or_come_from_strangers() {
    let h = Host::start(&fixture_driver("main", "default", &[]), "").await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let _impostor = h.external_fixture("main", "elsewhere", &[]);
    assert_eq!(registration_failure(&c, "main").await, "DriverNameTaken");
    // Still the supervised one: its network is served, the impostor's is not.
    assert_eq!(driver_names(&c).await, ["default"]);
    let r = c
        .node
        .clone()
        .network_ready(NetworkReadyRequest {
            network: "elsewhere".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .readiness
        .unwrap();
    assert_eq!(r.reason, "NoDriverForNetwork");

    // A socket owned by uid 4242 (not in authorization.uids) is not registered.
    let staging = h.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let sock = staging.join("alien.sock");
    let _alien = Proc::start(
        &bin("netlet-fixture-driver"),
        &[
            "--name",
            "alien",
            "--networks",
            "alien",
            "--socket",
            sock.to_str().unwrap(),
        ],
    );
    wait_until("alien socket", T, || {
        let s = sock.clone();
        async move { s.exists().then_some(()) }
    })
    .await;
    nix::unistd::chown(&sock, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
    std::fs::create_dir_all(&h.plugin_dir).unwrap();
    std::fs::rename(&sock, h.plugin_dir.join("alien.sock")).unwrap();
    assert_eq!(
        registration_failure(&c, "alien").await,
        "SocketOwnerNotAllowed"
    );
    assert_eq!(driver_names(&c).await, ["default"]);
}

/// `GET path` over HTTP/1.0 to `addr`; the status line.
fn http_status(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_string()
}

// The admin TCP address, reachable from the network, serves /metrics and /healthz only; the
// state dump stays on the unix socket.
#[tokio::test(flavor = "multi_thread")]
async fn admin_tcp_serves_metrics_and_health_only() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let h = Host::start(
        &fixture_driver("main", "default", &[]),
        &format!("adminAddress: {addr}\n"),
    )
    .await;
    h.wait_ready("").await;
    assert!(http_status(addr, "/metrics").contains(" 200"));
    assert!(http_status(addr, "/healthz").contains(" 200"));
    assert!(http_status(addr, "/debug/state").contains(" 404"));
    assert_eq!(
        admin_state(&h)["drivers"][0]["name"],
        "main",
        "unix socket keeps it"
    );
}

// A caller that gives up while a driver is still answering leaves no half-made pod: the host
// finishes the attach in a task of its own and records it, so host and driver agree, and the
// caller's retry gets the same address.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_gives_up_leaves_no_half_attached_pod() {
    let h = Host::start(
        &fixture_driver("slow", "default", &["--attach-delay-ms", "1500"]),
        "",
    )
    .await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        c.pods.clone().attach_pod(pod("p1", &[])),
    )
    .await;
    assert!(gave_up.is_err(), "the caller gave up before the answer");
    let driver =
        netlet_sdk::client::Clients::connect(&h.dir.path().join("run/drivers/slow.sock"), None)
            .await
            .unwrap();
    let on_host = wait_until("the host's record of p1", T, || {
        let c = c.clone();
        async move {
            let l = listed(&c).await;
            (!l.is_empty()).then_some(l)
        }
    })
    .await;
    let on_driver = listed(&driver).await;
    assert_eq!(on_host.len(), 1);
    assert_eq!(on_driver.len(), 1);
    assert_eq!(
        on_host[0].attachments[0].ips,
        on_driver[0].attachments[0].ips
    );
    let retry = c
        .pods
        .clone()
        .attach_pod(pod("p1", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.attachments[0].ips, on_host[0].attachments[0].ips);
    c.pods
        .clone()
        .detach_pod(DetachPodRequest {
            sandbox_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(listed(&c).await.is_empty() && listed(&driver).await.is_empty());
}

// SIGTERM: the host stops taking calls, lets those in flight finish (here an attach whose
// driver answers after 1.5 s and would die at once on SIGTERM), and only then stops its
// drivers.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_calls_in_flight_before_stopping_drivers() {
    let mut h = Host::start(
        &fixture_driver(
            "slow",
            "default",
            &["--attach-delay-ms", "1500", "--exit-on-sigterm"],
        ),
        "",
    )
    .await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let mut pods = c.pods.clone();
    let call = tokio::spawn(async move { pods.attach_pod(pod("p1", &[])).await });
    // In flight: the driver has made and recorded p1 and holds its answer back.
    let driver =
        netlet_sdk::client::Clients::connect(&h.dir.path().join("run/drivers/slow.sock"), None)
            .await
            .unwrap();
    wait_until("the attach at the driver", T, || {
        let d = driver.clone();
        async move { (!listed(&d).await.is_empty()).then_some(()) }
    })
    .await;
    let pid = h.pid().unwrap();
    let driver_pid = h.children("netlet-fixture-");
    assert_eq!(driver_pid.len(), 1, "{driver_pid:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let answered = call.await.unwrap();
    let a = answered.expect("the attach in flight finished");
    assert_eq!(a.into_inner().attachments.len(), 1);
    let status =
        tokio::task::spawn_blocking(move || h.stop_with(nix::sys::signal::Signal::SIGTERM))
            .await
            .unwrap()
            .expect("the host was running");
    assert!(status.success(), "{status:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", driver_pid[0])).exists(),
        "the driver is stopped with the host"
    );
}

// Hostname grants are decided by the host itself, with no Policy driver: Gateway API matching
// (a wildcard covers one or more labels, never the apex), the namespaces a grant names, and a
// reason for every answer.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_decides_hostname_grants() {
    use netlet_sdk::proto::{
        ApplyPolicyRequest, CheckHostnameRequest, HostnameGrant, PolicyKey, PolicyKind,
    };
    let h = Host::start("", "").await;
    let mut c = h.clients().await;
    let grant = |name: &str, namespaces: &[&str], hostnames: &[&str]| HostnameGrant {
        key: Some(PolicyKey {
            kind: PolicyKind::HostnameGrant as i32,
            namespace: String::new(),
            name: name.into(),
        }),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        hostnames: hostnames.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    c.policy
        .apply_policy(ApplyPolicyRequest {
            generation: 1,
            full_sync: true,
            hostname_grants: vec![
                grant(
                    "shop",
                    &["shop"],
                    &["*.shop.example.com", "shop.example.com"],
                ),
                grant("everyone", &["*"], &["*.apps.example.com"]),
            ],
            ..Default::default()
        })
        .await
        .expect("grants taken without a Policy driver");
    // A grant naming a module nobody configured is refused, naming the field.
    let e = c
        .policy
        .apply_policy(ApplyPolicyRequest {
            generation: 2,
            hostname_grants: vec![HostnameGrant {
                module: "nope".into(),
                ..grant("m", &["*"], &["x.example.com"])
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("hostname_grants[0].module:"),
        "{e:?}"
    );
    for (ns, host, allowed, grant, reason) in [
        (
            "shop",
            "www.shop.example.com",
            true,
            "shop",
            "granted by \"shop\" for \"*.shop.example.com\"",
        ),
        (
            "shop",
            "shop.example.com",
            true,
            "shop",
            "granted by \"shop\" for \"shop.example.com\"",
        ),
        (
            "shop",
            "a.b.shop.example.com",
            true,
            "shop",
            "granted by \"shop\" for \"*.shop.example.com\"",
        ),
        (
            "blog",
            "www.shop.example.com",
            false,
            "",
            "no grant lets namespace \"blog\" use \"www.shop.example.com\" (it is governed by shop)",
        ),
        (
            "blog",
            "blog.apps.example.com",
            true,
            "everyone",
            "granted by \"everyone\" for \"*.apps.example.com\"",
        ),
        (
            "blog",
            "apps.example.com",
            false,
            "",
            "no grant covers \"apps.example.com\" (hostnames.noGrant: deny)",
        ),
    ] {
        let r = c
            .policy
            .check_hostname(CheckHostnameRequest {
                namespace: ns.into(),
                hostname: host.into(),
                object_kind: "HTTPRoute".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.allowed, r.grant.as_str(), r.reason.as_str()),
            (allowed, grant, reason),
            "{ns} {host}"
        );
    }
}

/// `cniConfig:` the runtime's CNI configuration appears only once the node is ready (so a
/// runtime, and the kubelet after it, report the node's network ready only then), with the
/// source's content, and follows a changed source.
#[tokio::test]
async fn the_cni_configuration_is_installed_once_the_node_is_ready() {
    let d = tempfile::tempdir().unwrap();
    let (source, target) = (
        d.path().join("src.conflist"),
        d.path().join("net.d/10-netlet.conflist"),
    );
    std::fs::write(
        &source,
        r#"{"cniVersion": "1.0.0", "name": "netlet", "plugins": [{"type": "netlet"}]}"#,
    )
    .unwrap();
    let extra = format!(
        "cniConfig: {{source: {}, target: {}}}\n",
        source.display(),
        target.display()
    );
    // No driver serves the default network yet: not ready, nothing installed.
    let h = Host::start("", &extra).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = readiness(&h.clients().await).await;
    assert!(!r.ready, "{r:?}");
    assert!(!target.exists(), "installed before the node is ready");
    let (_ext, _sock) = h.external_fixture("ext", "default", &[]);
    h.wait_ready("").await;
    let installed = wait_until("the CNI configuration installed", T, || {
        let t = target.clone();
        async move { std::fs::read_to_string(t).ok() }
    })
    .await;
    assert_eq!(installed, std::fs::read_to_string(&source).unwrap());
    std::fs::write(&source, "changed").unwrap();
    wait_until("the changed configuration installed", T, || {
        let t = target.clone();
        async move { (std::fs::read_to_string(t).ok()? == "changed").then_some(()) }
    })
    .await;
}
