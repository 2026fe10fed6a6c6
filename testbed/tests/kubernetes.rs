//! The Kubernetes API as a source, against a real kube-apiserver and etcd (built from their Go
//! modules; see `testbed/src/k8s.rs`) running in the node's namespace: a Service and its
//! EndpointSlice created through the API reach the nft driver and answer from a pod
//! namespace; a change of the slice and the Service's deletion are followed.

use std::net::SocketAddr;
use std::time::Duration;

use netlet_testbed::harness::{
    Node, attach_default, bridge_driver, nft_driver, privileged, tool, wait_until,
};
use netlet_testbed::k8s::{ApiServer, binaries, write_kubeconfig};
use netlet_testbed::probe::{self, NetNs};

const V4: &str = "10.244.0.0/24";
const NODE: &str = "node-k8s";

fn service(ready: bool) -> (String, String) {
    (
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.96.0.80","ports":[{"name":"http","port":80,"targetPort":8080}]}}"#.to_string(),
        format!(
            r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"web-1","namespace":"default","labels":{{"kubernetes.io/service-name":"web"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":8080,"protocol":"TCP"}}],"endpoints":[{{"addresses":["10.244.0.10"],"conditions":{{"ready":{ready}}},"nodeName":"{NODE}"}}]}}"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_created_through_the_api_answers_from_a_pod() {
    const T: &str = "a_service_created_through_the_api_answers_from_a_pod";
    if !privileged(T) || tool("curl", T).is_none() || tool("openssl", T).is_none() {
        return;
    }
    let Some((etcd, api)) = binaries(T) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig);
    let drivers = bridge_driver("bridge", "default", "netlet0", &[V4])
        + &nft_driver("nft", &["--cluster-cidr", V4]);
    let node = Node::start(
        "k8s",
        &drivers,
        &format!("nodeName: {NODE}\nkubeconfig: {}\n", kubeconfig.display()),
    )
    .await;
    // The node's default route leads to a namespace of the test's own (as a node's leads to its
    // network): traffic to a ClusterIP without endpoints is routed, then refused by the driver.
    let outside = NetNs::create(&format!("netlet-k8s-out-{}", std::process::id())).unwrap();
    probe::wire(
        &node.netns.path,
        "ext0",
        "192.0.2.1/24",
        &outside.path,
        "eth0",
        "192.0.2.2/24",
    )
    .unwrap();
    probe::add_route(&node.netns.path, "0.0.0.0/0", "192.0.2.2".parse().unwrap()).unwrap();
    let apiserver = ApiServer::start(&node, &etcd, &api);
    node.host.wait_ready("default").await;
    node.host.wait_driver("nft").await;
    let c = node.host.clients().await;
    let mut pods = Vec::new();
    for (name, ips) in [("web", vec!["10.244.0.10".to_string()]), ("client", vec![])] {
        let ns = NetNs::create(&format!("netlet-k8s-{name}-{}", std::process::id())).unwrap();
        attach_default(&c, &format!("k8s-{name}"), name, &ns.path, ips)
            .await
            .expect("attach");
        pods.push(ns);
    }
    let backend: SocketAddr = "10.244.0.10:8080".parse().unwrap();
    probe::tcp_echo(Some(&pods[0].path), backend, 1000).unwrap();
    let vip: SocketAddr = "10.96.0.80:80".parse().unwrap();
    let client = pods[1].path.clone();
    let ask = move || probe::tcp_request(&client, vip, "hello");

    // Created through the API: answered from the client pod.
    let (svc, slice) = service(true);
    apiserver
        .request("POST", "/api/v1/namespaces/default/services", Some(&svc))
        .unwrap();
    apiserver
        .request(
            "POST",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            Some(&slice),
        )
        .unwrap();
    let a = ask.clone();
    let answer = wait_until("the Service answers", Duration::from_secs(20), || {
        let a = a.clone();
        async move { a().ok() }
    })
    .await;
    assert!(answer.ends_with("|hello"), "{answer}");

    // The endpoint turns not ready: no endpoint, refused.
    let (_, not_ready) = service(false);
    apiserver
        .request(
            "PUT",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1",
            Some(&not_ready),
        )
        .unwrap();
    let a = ask.clone();
    let refused = wait_until(
        "no ready endpoint: refused",
        Duration::from_secs(20),
        || {
            let a = a.clone();
            async move { a().err().filter(|e| e.contains("refused")) }
        },
    )
    .await;
    assert!(refused.contains("refused"));

    // Deleted through the API: the ClusterIP no longer answers at all.
    apiserver
        .request("DELETE", "/api/v1/namespaces/default/services/web", None)
        .unwrap();
    let a = ask.clone();
    let gone = wait_until("the Service gone", Duration::from_secs(20), || {
        let a = a.clone();
        async move { a().err().filter(|e| !e.contains("refused")) }
    })
    .await;
    assert!(!gone.is_empty());
    drop(apiserver);
}
