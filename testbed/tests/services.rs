//! The host's Service view from a manifests directory: loaded, edited, broken, conflicting with
//! another source, deleted — and what reaches a Services driver.

use std::time::Duration;

use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    ListServicesRequest, ListServicesResponse, ProgramServiceRequest, Service, ServiceKey,
};
use netlet_testbed::harness::{Host, bin, fixture_driver, wait_until};
use tonic::Code;

const T: Duration = Duration::from_secs(20);

fn manifest(ready: bool) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIPs: [10.96.0.10]
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- {{addresses: [10.244.0.5], nodeName: node-a, conditions: {{ready: {ready}}}}}
- {{addresses: [10.244.1.7], nodeName: node-b, conditions: {{ready: true}}}}
"#
    )
}

async fn list(c: &Clients) -> ListServicesResponse {
    c.services
        .clone()
        .list_services(ListServicesRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// (address, local, use_for_internal) of the one Service listed.
fn endpoints(l: &ListServicesResponse) -> Vec<(String, bool, bool)> {
    l.services
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(|e| (e.address.clone(), e.local, e.use_for_internal))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_become_the_node_view_and_deltas_reach_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, manifest(true)).unwrap();
    let extra = format!("nodeName: node-a\nmanifestsDir: {}\n", dir.path().display());
    let h = Host::start(&fixture_driver("svc", "default", &[]), &extra).await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let driver = Clients::connect(&h.dir.path().join("run/drivers/svc.sock"), None)
        .await
        .unwrap();
    let l = wait_until("manifest loaded", T, || {
        let c = c.clone();
        async move {
            let l = list(&c).await;
            (!l.services.is_empty()).then_some(l)
        }
    })
    .await;
    assert_eq!(
        endpoints(&l),
        [
            ("10.244.0.5".to_string(), true, true),
            ("10.244.1.7".to_string(), false, true)
        ]
    );
    let svc = l.services[0].service.clone().unwrap();
    assert_eq!(svc.ports[0].target_port_name, "http");
    // The driver has what the node has, at the node's generation.
    let synced = |want: u64| {
        let (c, d) = (c.clone(), driver.clone());
        async move {
            let l = list(&c).await;
            let dl = list(&d).await;
            (l.node_generation >= want
                && l.drivers.iter().all(|g| g.in_sync)
                && dl.applied_generation == l.node_generation)
                .then_some((l, dl))
        }
    };
    let (l, dl) = wait_until("driver in sync", T, || synced(1)).await;
    assert_eq!(endpoints(&dl), endpoints(&l));
    assert_eq!(l.drivers[0].driver, "svc");
    // netletctl shows the same, with the driver's acknowledged generation.
    let out = std::process::Command::new(bin("netletctl"))
        .arg("--socket")
        .arg(&h.socket)
        .arg("services")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "driver svc: acknowledged {} (in sync)",
            l.node_generation
        )),
        "{text}"
    );
    assert!(
        text.contains("shop/web") && text.contains("2/2/2"),
        "{text}"
    );

    // An edit becomes a delta: the local endpoint goes not-ready.
    std::fs::write(&file, manifest(false)).unwrap();
    let g = l.node_generation;
    let (l, dl) = wait_until("edit applied", T, || synced(g + 1)).await;
    assert_eq!(
        endpoints(&l),
        [
            ("10.244.0.5".to_string(), true, false),
            ("10.244.1.7".to_string(), false, true)
        ]
    );
    assert_eq!(endpoints(&dl), endpoints(&l));

    // A broken file keeps its last good content.
    std::fs::write(&file, "kind: Service\nspec: [oops\n").unwrap();
    let errors = wait_until("manifest error reported", T, || {
        let out = std::process::Command::new(bin("netletctl"))
            .arg("--socket")
            .arg(&h.socket)
            .arg("--admin-socket")
            .arg(&h.admin_socket)
            .args(["debug", "state"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let e = v["services"]["manifestErrors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        async move { (!e.is_empty()).then_some(e) }
    })
    .await;
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .starts_with(&file.display().to_string()),
        "{errors:?}"
    );
    assert_eq!(list(&c).await.services.len(), 1, "last good content stays");

    // Another source cannot overwrite a Service the manifests own.
    let err = c
        .services
        .clone()
        .program_service(ProgramServiceRequest {
            generation: list(&c).await.applied_generation + 1,
            full_sync: true,
            service_upserts: vec![Service {
                key: Some(ServiceKey {
                    namespace: "shop".into(),
                    name: "web".into(),
                }),
                cluster_ips: vec!["10.96.0.99".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .starts_with("service_upserts[0].key: shop/web is owned by the manifests source"),
        "{err:?}"
    );

    // Deleting the file deletes the Service, on the node and in the driver.
    // (The generation is read first: the host may apply the deletion before a later read.)
    let g = list(&c).await.node_generation;
    std::fs::remove_file(&file).unwrap();
    let (l, dl) = wait_until("deletion applied", T, || synced(g + 1)).await;
    assert!(
        l.services.is_empty() && dl.services.is_empty(),
        "{l:?} {dl:?}"
    );
}

fn http_get(port: u16) -> Option<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1)?;
    Some((code, serde_json::from_str(body).ok()?))
}

/// A port in the default node port range (30000-32767) that nothing holds now.
fn free_node_port() -> u16 {
    let seed = std::process::id() as u16;
    (0..2768u16)
        .map(|i| 30000 + (seed.wrapping_add(i.wrapping_mul(7919))) % 2768)
        .find(|p| std::net::TcpListener::bind(("::", *p)).is_ok())
        .expect("a free port in 30000-32767")
}

fn lb_manifest(ready: bool, port: u16) -> String {
    manifest(ready).replace(
        "  clusterIPs: [10.96.0.10]\n",
        &format!(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {port}\n  clusterIPs: [10.96.0.10]\n"
        ),
    )
}

/// The `HealthCheckNodePort` conditions of the node's readiness: (status, reason, message).
async fn health_conditions(c: &Clients) -> Vec<(i32, String, String)> {
    netlet_testbed::harness::readiness(c)
        .await
        .conditions
        .into_iter()
        .filter(|x| x.r#type == "HealthCheckNodePort")
        .map(|x| (x.status, x.reason, x.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_check_node_port_answers_with_the_local_endpoint_count() {
    let port = free_node_port();
    // Another process holds the port when the Service arrives: the host retries and says so.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lb.yaml");
    std::fs::write(&file, lb_manifest(true, port)).unwrap();
    let extra = format!("nodeName: node-a\nmanifestsDir: {}\n", dir.path().display());
    let h = Host::start(&fixture_driver("svc", "default", &[]), &extra).await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let held = wait_until("the failed bind in readiness", T, || {
        let c = c.clone();
        async move {
            let v = health_conditions(&c).await;
            (!v.is_empty()).then_some(v)
        }
    })
    .await;
    assert_eq!(held.len(), 1, "{held:?}");
    let (status, reason, message) = &held[0];
    assert_eq!(
        (*status, reason.as_str()),
        (
            netlet_sdk::proto::ConditionStatus::False as i32,
            "BindFailed"
        )
    );
    assert!(
        message.contains(&format!(
            "health-check node port {port} of Service shop/web"
        )),
        "{message}"
    );
    drop(squatter);
    let (code, body) = wait_until(
        "health check served once the port is free",
        T,
        || async move { http_get(port).filter(|(c, _)| *c == 200) },
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["localEndpoints"], 1);
    assert_eq!(body["serviceProxyHealthy"], true);
    assert_eq!(body["service"]["name"], "web");
    assert!(health_conditions(&c).await.is_empty());
    // The local endpoint goes not-ready: the node has nothing for external traffic.
    std::fs::write(&file, lb_manifest(false, port)).unwrap();
    let (_, body) = wait_until("503 once nothing is local", T, || async move {
        http_get(port).filter(|(c, _)| *c == 503)
    })
    .await;
    assert_eq!(body["localEndpoints"], 0);
    drop(h);
}

/// With local endpoints but no Services driver that has applied the node's table (here: the
/// only one is not ready), the node must not attract traffic: 503, `serviceProxyHealthy` false.
#[tokio::test(flavor = "multi_thread")]
async fn health_check_node_port_is_unavailable_until_a_services_driver_is_in_sync() {
    let port = free_node_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lb.yaml"), lb_manifest(true, port)).unwrap();
    let extra = format!("nodeName: node-a\nmanifestsDir: {}\n", dir.path().display());
    let h = Host::start(
        &fixture_driver("svc", "default", &["--not-ready", "DataPlaneDown"]),
        &extra,
    )
    .await;
    let (code, body) = wait_until("health check served", T, || async move { http_get(port) }).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["localEndpoints"], 1);
    assert_eq!(body["serviceProxyHealthy"], false);
    drop(h);
}

/// Node ports outside the node's range are refused on the socket, naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn node_ports_outside_the_range_are_refused() {
    let h = Host::start(
        &fixture_driver("svc", "default", &[]),
        "serviceNodePortRange: 31000-31999\n",
    )
    .await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let svc = |node_port: u32, health: u32| Service {
        key: Some(ServiceKey {
            namespace: "shop".into(),
            name: "web".into(),
        }),
        r#type: netlet_sdk::proto::ServiceType::LoadBalancer as i32,
        cluster_ips: vec!["10.96.0.10".into()],
        ports: vec![netlet_sdk::proto::ServicePort {
            port: 80,
            node_port,
            ..Default::default()
        }],
        external_traffic_policy: netlet_sdk::proto::TrafficPolicy::Local as i32,
        health_check_node_port: health,
        ..Default::default()
    };
    let send = |s: Service| {
        let mut c = c.services.clone();
        async move {
            c.program_service(ProgramServiceRequest {
                generation: 1,
                full_sync: true,
                service_upserts: vec![s],
                ..Default::default()
            })
            .await
        }
    };
    for (s, field) in [
        (svc(30080, 0), "service_upserts[0].ports[0].node_port"),
        (
            svc(31080, 32000),
            "service_upserts[0].health_check_node_port",
        ),
        (
            svc(31080, 70000),
            "service_upserts[0].health_check_node_port",
        ),
    ] {
        let e = send(s).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(&format!("{field}: ")), "{e:?}");
    }
    assert!(list(&c).await.services.is_empty(), "nothing applied");
    send(svc(31080, 31081)).await.unwrap();
    assert_eq!(list(&c).await.services.len(), 1);
}

/// A full sync larger than 4 MiB reaches a driver that accepts 4 MiB messages (grpc-go's and
/// grpcio's default): the host sends it in parts, and the driver applies them as one.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_sync_over_4_mib_reaches_a_driver_limited_to_4_mib() {
    use netlet_sdk::proto::{Endpoint, EndpointUpsert};
    let h = Host::start(&fixture_driver("main", "default", &[]), "").await;
    h.wait_ready("").await;
    let mut c = h.clients().await;
    // 40 namespaces x 100 Services x 40 endpoints, sent by a caller in batches of one namespace.
    let (namespaces, services, endpoints) = (40usize, 100usize, 40usize);
    let mut total_bytes = 0;
    for ns in 0..namespaces {
        let mut req = ProgramServiceRequest {
            epoch: 1,
            generation: ns as u64 + 1,
            full_sync: ns == 0,
            ..Default::default()
        };
        for s in 0..services {
            let key = ServiceKey {
                namespace: format!("ns{ns}"),
                name: format!("svc{s}"),
            };
            req.service_upserts.push(Service {
                key: Some(key.clone()),
                cluster_ips: vec![format!(
                    "10.{}.{}.{}",
                    96 + ns / 20,
                    (ns % 20) * 10 + s / 250,
                    s % 250 + 1
                )],
                ports: vec![netlet_sdk::proto::ServicePort {
                    port: 80,
                    target_port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            });
            for e in 0..endpoints {
                req.endpoint_upserts.push(EndpointUpsert {
                    service: Some(key.clone()),
                    endpoint: Some(Endpoint {
                        address: format!("10.{}.{}.{}", 128 + ns, s, e + 1),
                        ready: true,
                        serving: true,
                        ..Default::default()
                    }),
                });
            }
        }
        total_bytes += prost::Message::encoded_len(&req);
        c.services.program_service(req).await.unwrap();
    }
    assert!(
        total_bytes > 5 * 1024 * 1024,
        "the test needs a table over 4 MiB: {total_bytes}"
    );
    // A second driver, limited to 4 MiB, registers now: its full sync is the whole table.
    let (_d, sock) = h.external_fixture(
        "small",
        "small",
        &[
            "--capabilities",
            "services",
            "--max-message-bytes",
            "4194304",
        ],
    );
    wait_until("the 4 MiB driver in sync", T, || {
        let mut c = c.clone();
        async move {
            let l = c
                .services
                .list_services(ListServicesRequest::default())
                .await
                .ok()?
                .into_inner();
            l.drivers
                .iter()
                .any(|d| d.driver == "small" && d.in_sync)
                .then_some(())
        }
    })
    .await;
    let mut d = Clients::connect(&sock, None).await.unwrap();
    for ns in [0, namespaces / 2, namespaces - 1] {
        let l = d
            .services
            .list_services(ListServicesRequest {
                namespace: format!("ns{ns}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(l.services.len(), services, "ns{ns}");
        assert!(
            l.services.iter().all(|s| s.endpoints.len() == endpoints),
            "ns{ns}"
        );
    }
}

/// A driver whose state changed under the host (here: another sender's full sync) refuses the
/// host's next delta for its epoch; the host answers with a full sync at once and the driver
/// holds the node's whole table again.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_delta_is_answered_with_a_full_sync() {
    let h = Host::start(&fixture_driver("main", "default", &[]), "").await;
    h.wait_ready("").await;
    let mut c = h.clients().await;
    let svc = |name: &str, ip: &str| Service {
        key: Some(ServiceKey {
            namespace: "shop".into(),
            name: name.into(),
        }),
        cluster_ips: vec![ip.into()],
        ..Default::default()
    };
    c.services
        .program_service(ProgramServiceRequest {
            epoch: 1,
            generation: 1,
            full_sync: true,
            service_upserts: vec![svc("a", "10.96.1.1")],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut d = Clients::connect(&h.dir.path().join("run/drivers/main.sock"), None)
        .await
        .unwrap();
    d.services
        .program_service(ProgramServiceRequest {
            epoch: 999,
            generation: 1,
            full_sync: true,
            ..Default::default()
        })
        .await
        .unwrap();
    c.services
        .program_service(ProgramServiceRequest {
            epoch: 1,
            generation: 2,
            service_upserts: vec![svc("b", "10.96.1.2")],
            ..Default::default()
        })
        .await
        .unwrap();
    let l = d
        .services
        .list_services(ListServicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = l
        .services
        .iter()
        .filter_map(|s| Some(s.service.as_ref()?.key.as_ref()?.name.clone()))
        .collect();
    assert_eq!(names, ["a", "b"]);
    let host = list(&c).await;
    assert_eq!(l.applied_generation, host.node_generation);
    assert!(host.drivers.iter().all(|g| g.in_sync), "{:?}", host.drivers);
}

/// One bad manifest object (a ClusterIP of 10.96.0.300) is left out and reported with file,
/// object and field; every other Service reaches the driver and keeps being updated. Before,
/// the driver refused the whole batch and no Service was programmed.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_manifest_object_never_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), manifest(true)).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: shop}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let extra = format!("nodeName: node-a\nmanifestsDir: {}\n", dir.path().display());
    let h = Host::start(&fixture_driver("svc", "default", &[]), &extra).await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let driver = Clients::connect(&h.dir.path().join("run/drivers/svc.sock"), None)
        .await
        .unwrap();
    let ready_of = |l: &ListServicesResponse| -> Vec<(String, bool)> {
        l.services
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| (e.address.clone(), e.ready)))
            .collect()
    };
    let (d, c2) = (driver.clone(), c.clone());
    wait_until("the good Service programmed", T, move || {
        let (d, c) = (d.clone(), c2.clone());
        async move {
            let dl = list(&d).await;
            let in_sync = list(&c).await.drivers.iter().all(|g| g.in_sync);
            (dl.services.len() == 1 && in_sync).then_some(())
        }
    })
    .await;
    let errors = h.manifest_errors();
    let e = errors
        .iter()
        .find(|e| e.contains("shop/bad"))
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert!(
        e.starts_with(&bad.display().to_string()) && e.contains("cluster_ips[0]"),
        "{e}"
    );
    // And it keeps being updated.
    std::fs::write(dir.path().join("web.yaml"), manifest(false)).unwrap();
    wait_until("the update programmed", T, || {
        let d = driver.clone();
        async move {
            let dl = list(&d).await;
            ready_of(&dl)
                .contains(&("10.244.0.5".to_string(), false))
                .then_some(())
        }
    })
    .await;
}
