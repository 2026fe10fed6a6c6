//! The Kubernetes API as a source, against a real kube-apiserver and etcd (built from their Go
//! modules; see `testbed/src/k8s.rs`) running in the node's namespace: a Service and its
//! EndpointSlice created through the API reach the nft driver and answer from a pod
//! namespace; a change of the slice and the Service's deletion are followed.

use std::net::SocketAddr;
use std::time::Duration;

use netlet_testbed::harness::{
    Node, attach, attach_default, bridge_driver, nft_driver, privileged, tool, wait_until,
};
use netlet_testbed::k8s::{
    ApiServer, binaries, gateway_api_crds, issue_tls, kubectl, write_kubeconfig,
    write_kubeconfig_with,
};
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

/// A node (bridge and nft drivers) following a real API server in its namespace, with a
/// default route to a namespace of the test's own (as a node's leads to its network): traffic
/// to a ClusterIP without endpoints is routed, then refused by the driver.
struct Cluster {
    apiserver: ApiServer,
    node: Node,
    kubeconfig: std::path::PathBuf,
    _outside: NetNs,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(test: &str, name: &str) -> Option<Cluster> {
        Self::start_with(test, name, "").await
    }

    /// As [`Cluster::start`], with `extra` NodeConfig lines.
    async fn start_with(test: &str, name: &str, extra: &str) -> Option<Cluster> {
        if !privileged(test) || tool("curl", test).is_none() || tool("openssl", test).is_none() {
            return None;
        }
        let (etcd, api) = binaries(test)?;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig);
        let drivers = bridge_driver("bridge", "default", "netlet0", &[V4])
            + &nft_driver("nft", &["--cluster-cidr", V4]);
        let node = Node::start(
            name,
            &drivers,
            &format!(
                "nodeName: {NODE}\nkubeconfig: {}\n{extra}",
                kubeconfig.display()
            ),
        )
        .await;
        let outside = NetNs::create(&format!("netlet-{name}-out-{}", std::process::id())).unwrap();
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
        Some(Cluster {
            apiserver,
            node,
            kubeconfig,
            _outside: outside,
            _dir: dir,
        })
    }
}

/// Pods `web` (10.244.0.10, echoing on 8080, the Service's endpoint) and `client` of the
/// default namespace, attached to `node`.
async fn web_and_client(node: &Node, tag: &str) -> Vec<NetNs> {
    let c = node.host.clients().await;
    let mut pods = Vec::new();
    for (name, ips) in [("web", vec!["10.244.0.10".to_string()]), ("client", vec![])] {
        let ns = NetNs::create(&format!("netlet-{tag}-{name}-{}", std::process::id())).unwrap();
        attach_default(&c, &format!("{tag}-{name}"), name, &ns.path, ips)
            .await
            .expect("attach");
        pods.push(ns);
    }
    probe::tcp_echo(
        Some(&pods[0].path),
        "10.244.0.10:8080".parse().unwrap(),
        1000,
    )
    .unwrap();
    pods
}

/// The Service of [`service`] through the API, and its answer from a pod namespace.
async fn serve_and_ask(apiserver: &ApiServer, client: std::path::PathBuf) -> String {
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
    let vip: SocketAddr = "10.96.0.80:80".parse().unwrap();
    wait_until("the Service answers", Duration::from_secs(30), || {
        let client = client.clone();
        async move { probe::tcp_request(&client, vip, "hello").ok() }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_created_through_the_api_answers_from_a_pod() {
    const T: &str = "a_service_created_through_the_api_answers_from_a_pod";
    let Some(cl) = Cluster::start(T, "k8s").await else {
        return;
    };
    let (apiserver, node) = (&cl.apiserver, &cl.node);
    let pods = web_and_client(node, "k8s").await;
    let vip: SocketAddr = "10.96.0.80:80".parse().unwrap();
    let client = pods[1].path.clone();
    let ask = move || probe::tcp_request(&client, vip, "hello");

    // Created through the API: answered from the client pod.
    let answer = serve_and_ask(apiserver, pods[1].path.clone()).await;
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
}

/// Waits until `ask` is refused (the Service exists without a ready endpoint).
async fn until_refused(what: &str, ask: impl Fn() -> Result<String, String> + Clone) {
    wait_until(what, Duration::from_secs(20), || {
        let a = ask.clone();
        async move { a().err().filter(|e| e.contains("refused")) }
    })
    .await;
}

/// Waits until `ask` is answered.
async fn until_answered(what: &str, ask: impl Fn() -> Result<String, String> + Clone) -> String {
    wait_until(what, Duration::from_secs(20), || {
        let a = ask.clone();
        async move { a().ok() }
    })
    .await
}

// Each watch event changes the Services it names and no other: an EndpointSlice relabelled
// from one Service to another leaves the first and joins the second, one deleted leaves its
// Service, a Service the node cannot serve (a node port outside the node's range) is left out
// and named until it is fixed, while the others go on.
#[tokio::test(flavor = "multi_thread")]
async fn each_watch_event_changes_the_services_it_names() {
    const T: &str = "each_watch_event_changes_the_services_it_names";
    let Some(cl) = Cluster::start_with(T, "k8s-ev", "serviceNodePortRange: 30000-30099\n").await
    else {
        return;
    };
    let (apiserver, node) = (&cl.apiserver, &cl.node);
    let pods = web_and_client(node, "k8sev").await;
    let client = pods[1].path.clone();
    let asker = |vip: &str| {
        let vip: SocketAddr = vip.parse().unwrap();
        let client = client.clone();
        move || probe::tcp_request(&client, vip, "hello")
    };
    let (web, other) = (asker("10.96.0.80:80"), asker("10.96.0.81:80"));
    let answer = serve_and_ask(apiserver, pods[1].path.clone()).await;
    assert!(answer.ends_with("|hello"), "{answer}");
    let other_svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"other","namespace":"default"},"spec":{"clusterIP":"10.96.0.81","ports":[{"name":"http","port":80,"targetPort":8080}]}}"#;
    apiserver
        .request(
            "POST",
            "/api/v1/namespaces/default/services",
            Some(other_svc),
        )
        .unwrap();
    until_refused("other: no endpoint yet", other.clone()).await;

    // The slice relabelled to `other`: `web` loses its endpoint, `other` gains it.
    let (_, slice) = service(true);
    let moved = slice.replace(
        r#""kubernetes.io/service-name":"web""#,
        r#""kubernetes.io/service-name":"other""#,
    );
    assert_ne!(moved, slice);
    apiserver
        .request(
            "PUT",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1",
            Some(&moved),
        )
        .unwrap();
    until_refused("web: its slice moved away", web.clone()).await;
    let a = until_answered("other: the moved slice's endpoint", other.clone()).await;
    assert!(a.ends_with("|hello"), "{a}");

    // Deleted: `other` has no endpoint; `web` is still refused, not gone.
    apiserver
        .request(
            "DELETE",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1",
            None,
        )
        .unwrap();
    until_refused("other: its slice deleted", other.clone()).await;
    assert!(web().is_err_and(|e| e.contains("refused")));

    // A NodePort outside this node's range (the API server's is wider): left out and named,
    // `web` unchanged. Fixed: served, and no longer named.
    let node_port = |port: u32| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"np","namespace":"default"}},"spec":{{"type":"NodePort","clusterIP":"10.96.0.82","ports":[{{"name":"http","port":80,"targetPort":8080,"nodePort":{port}}}]}}}}"#
        )
    };
    apiserver
        .request(
            "POST",
            "/api/v1/namespaces/default/services",
            Some(&node_port(30500)),
        )
        .unwrap();
    let named = wait_until("np named as left out", Duration::from_secs(20), || {
        let e = node.host.kubernetes_errors();
        async move { e.into_iter().find(|e| e.contains("default/np")) }
    })
    .await;
    assert!(
        named.starts_with("kubernetes: Service default/np:") && named.contains("30500"),
        "{named}"
    );
    let np = asker("10.96.0.82:80");
    assert!(
        np().is_err_and(|e| !e.contains("refused")),
        "np is not served"
    );
    let mut fixed: serde_json::Value = serde_json::from_str(
        &apiserver
            .request("GET", "/api/v1/namespaces/default/services/np", None)
            .unwrap(),
    )
    .unwrap();
    fixed["spec"]["ports"][0]["nodePort"] = 30050.into();
    apiserver
        .request(
            "PUT",
            "/api/v1/namespaces/default/services/np",
            Some(&fixed.to_string()),
        )
        .unwrap();
    until_refused("np served (no endpoint)", np.clone()).await;
    wait_until("np no longer named", Duration::from_secs(20), || {
        let e = node.host.kubernetes_errors();
        async move { (!e.iter().any(|e| e.contains("default/np"))).then_some(()) }
    })
    .await;
    assert!(web().is_err_and(|e| e.contains("refused")));
}

/// Creates this node's Node object (with no status: the host reports its conditions).
fn create_node(apiserver: &ApiServer) {
    apiserver
        .request(
            "POST",
            "/api/v1/nodes",
            Some(&format!(
                r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{NODE}"}}}}"#
            )),
        )
        .unwrap();
}

/// The Node's conditions: (NetworkUnavailable, NetletNetworkReady) as (status, reason).
fn node_conditions(apiserver: &ApiServer) -> Option<((String, String), (String, String))> {
    let node: serde_json::Value = serde_json::from_str(
        &apiserver
            .request("GET", &format!("/api/v1/nodes/{NODE}"), None)
            .ok()?,
    )
    .ok()?;
    let of = |kind: &str| {
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
    };
    Some((of("NetworkUnavailable")?, of("NetletNetworkReady")?))
}

/// The node's network state on its Node object, as network plugins report it: available once
/// the drivers are ready, unavailable (with the reason) while the pod network's driver does not
/// answer, available again after.
#[tokio::test(flavor = "multi_thread")]
async fn the_node_object_carries_the_network_state() {
    const T: &str = "the_node_object_carries_the_network_state";
    let Some(cl) = Cluster::start(T, "k8snode").await else {
        return;
    };
    create_node(&cl.apiserver);
    let state = |want: &'static str| {
        let api = &cl.apiserver;
        move || async move { node_conditions(api).filter(|((unavailable, _), _)| unavailable == want) }
    };
    let (_, (ready, reason)) = wait_until(
        "NetworkUnavailable False",
        Duration::from_secs(30),
        state("False"),
    )
    .await;
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "Ready"));

    // The bridge driver stops answering: the pod network is not ready.
    let bridge = cl.node.host.children("netlet-bridge");
    assert_eq!(bridge.len(), 1, "{bridge:?}");
    let pid = nix::unistd::Pid::from_raw(bridge[0]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let ((_, why), (ready, _)) = wait_until(
        "NetworkUnavailable True",
        Duration::from_secs(60),
        state("True"),
    )
    .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!((ready.as_str(), why.as_str()), ("False", "NetletNotReady"));
    wait_until(
        "NetworkUnavailable False again",
        Duration::from_secs(60),
        state("False"),
    )
    .await;
}

/// Attaches pod `namespace/name` in `netns` to the default network with address `ip`.
async fn attach_in(
    c: &netlet_sdk::client::Clients,
    namespace: &str,
    name: &str,
    netns: &std::path::Path,
    ip: &str,
) {
    attach(
        c,
        netlet_sdk::proto::PodSandbox {
            id: format!("{namespace}-{name}"),
            name: name.into(),
            namespace: namespace.into(),
            uid: format!("{namespace}-{name}"),
            netns_path: netns.display().to_string(),
            ..Default::default()
        },
        vec![netlet_sdk::proto::NetworkSelection {
            network: "default".into(),
            interface_name: "eth0".into(),
            ips: vec![ip.into()],
            ..Default::default()
        }],
    )
    .await
    .expect("attach");
}

/// A namespace object with labels.
fn namespace(name: &str, labels: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}","labels":{{{labels}}}}}}}"#
    )
}

/// NetworkPolicies, Namespaces and Pods through the API, enforced on the wire: the server pod's
/// labels come from its Pod object (its sandbox has none), its isolation from a NetworkPolicy
/// admitting one namespace by label; a relabel of the other namespace through the API admits
/// it, and the policy's deletion opens the pod again.
#[tokio::test(flavor = "multi_thread")]
async fn a_network_policy_created_through_the_api_is_enforced() {
    const T: &str = "a_network_policy_created_through_the_api_is_enforced";
    let Some(cl) = Cluster::start(T, "k8snp").await else {
        return;
    };
    let (apiserver, node) = (&cl.apiserver, &cl.node);
    for ns in [
        namespace("shop", ""),
        namespace("team-a", r#""team":"a""#),
        namespace("team-b", r#""team":"b""#),
    ] {
        apiserver
            .request("POST", "/api/v1/namespaces", Some(&ns))
            .unwrap();
    }
    // No controller manager runs: the namespace's default ServiceAccount, which pods need,
    // is made here.
    apiserver
        .request(
            "POST",
            "/api/v1/namespaces/shop/serviceaccounts",
            Some(r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}"#),
        )
        .unwrap();
    // The server's Pod object: labels, its node, and (as its kubelet would report it) its
    // address.
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"server","namespace":"shop","labels":{{"app":"web"}}}},"spec":{{"nodeName":"{NODE}","containers":[{{"name":"c","image":"x","ports":[{{"name":"http","containerPort":8080}}]}}]}}}}"#
    );
    let created = apiserver
        .request("POST", "/api/v1/namespaces/shop/pods", Some(&pod))
        .unwrap();
    let mut obj: serde_json::Value = serde_json::from_str(&created).unwrap();
    obj["status"] = serde_json::json!({"phase": "Running", "podIP": "10.244.0.20", "podIPs": [{"ip": "10.244.0.20"}]});
    apiserver
        .request(
            "PUT",
            "/api/v1/namespaces/shop/pods/server/status",
            Some(&obj.to_string()),
        )
        .unwrap();

    let c = node.host.clients().await;
    let mut netns = Vec::new();
    for (ns, name, ip) in [
        ("shop", "server", "10.244.0.20"),
        ("team-a", "client", "10.244.0.21"),
        ("team-b", "client", "10.244.0.22"),
    ] {
        let n = NetNs::create(&format!("netlet-k8snp-{ns}-{}", std::process::id())).unwrap();
        attach_in(&c, ns, name, &n.path, ip).await;
        netns.push(n);
    }
    let server: SocketAddr = "10.244.0.20:8080".parse().unwrap();
    probe::tcp_echo(Some(&netns[0].path), server, 1000).unwrap();
    let (a, b) = (netns[1].path.clone(), netns[2].path.clone());
    let reach = |from: &std::path::Path| probe::tcp_request(from, server, "hi").is_ok();
    // Until `from` reaches the server (`want`) or is refused by policy (`!want`).
    let until = |what: &'static str, from: &std::path::PathBuf, want: bool| {
        let from = from.clone();
        wait_until(what, Duration::from_secs(30), move || {
            let from = from.clone();
            async move { (reach(&from) == want).then_some(()) }
        })
    };
    assert!(reach(&a) && reach(&b), "open before any policy");

    // Ingress to app=web (the label the Pod object carries) on its named port, from namespaces
    // labelled team=a.
    let policy = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"web-from-a","namespace":"shop"},"spec":{"podSelector":{"matchLabels":{"app":"web"}},"policyTypes":["Ingress"],"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"a"}}}],"ports":[{"port":"http"}]}]}}"#;
    apiserver
        .request(
            "POST",
            "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies",
            Some(policy),
        )
        .unwrap();
    until("team-b refused by the policy", &b, false).await;
    assert!(reach(&a), "team-a is admitted");

    // team-b relabelled team=a through the API: admitted.
    apiserver
        .request(
            "PUT",
            "/api/v1/namespaces/team-b",
            Some(&namespace("team-b", r#""team":"a""#)),
        )
        .unwrap();
    until("relabelled team-b admitted", &b, true).await;

    // The server's labels change in the API (its sandbox never had any): no longer selected,
    // and a policy isolating everything else in the namespace now covers it.
    let deny = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny-others","namespace":"shop"},"spec":{"podSelector":{"matchExpressions":[{"key":"app","operator":"NotIn","values":["web"]}]},"policyTypes":["Ingress"]}}"#;
    apiserver
        .request(
            "POST",
            "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies",
            Some(deny),
        )
        .unwrap();
    assert!(
        reach(&a) && reach(&b),
        "deny-others does not select app=web"
    );
    let mut obj: serde_json::Value = serde_json::from_str(
        &apiserver
            .request("GET", "/api/v1/namespaces/shop/pods/server", None)
            .unwrap(),
    )
    .unwrap();
    obj["metadata"]["labels"] = serde_json::json!({"app": "api"});
    apiserver
        .request(
            "PUT",
            "/api/v1/namespaces/shop/pods/server",
            Some(&obj.to_string()),
        )
        .unwrap();
    until("relabelled server isolated", &a, false).await;

    // Both policies deleted: open again.
    for name in ["web-from-a", "deny-others"] {
        apiserver
            .request(
                "DELETE",
                &format!("/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/{name}"),
                None,
            )
            .unwrap();
    }
    wait_until("open after deletion", Duration::from_secs(30), || {
        let (a, b) = (a.clone(), b.clone());
        async move { (reach(&a) && reach(&b)).then_some(()) }
    })
    .await;
    assert!(
        node.host.kubernetes_errors().is_empty(),
        "{:?}",
        node.host.kubernetes_errors()
    );
}

/// deploy/ applies to a real API server (the CRDs' schemas are accepted and enforced: an object
/// breaking a rule is refused with the rule's message), a ServiceAccount without the binding is
/// refused and the host says so, and the ClusterRole of deploy/ suffices: the host run with the
/// netlet ServiceAccount's token serves a Service, reads DnsPolicies and HostnameGrants,
/// reports on its Node and sets a pod's readiness gate.
#[tokio::test(flavor = "multi_thread")]
async fn deploy_applies_and_its_cluster_role_suffices() {
    const T: &str = "deploy_applies_and_its_cluster_role_suffices";
    let Some(kubectl) = kubectl(T) else { return };
    let Some(mut cl) = Cluster::start(T, "k8sdep").await else {
        return;
    };
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let (crds, manifests) = (
        deploy.join("crds").display().to_string(),
        deploy.join("netlet.yaml").display().to_string(),
    );
    let out = cl
        .apiserver
        .kubectl(&kubectl, &["apply", "-f", &crds, "-f", &manifests])
        .unwrap();
    for created in [
        "customresourcedefinition.apiextensions.k8s.io/dnspolicies.netlet.io created",
        "customresourcedefinition.apiextensions.k8s.io/hostnamegrants.netlet.io created",
        "clusterrole.rbac.authorization.k8s.io/netlet created",
        "daemonset.apps/netlet created",
        "configmap/netlet-config created",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/netlet-hostnames created",
    ] {
        assert!(out.contains(created), "{created}: {out}");
    }
    cl.apiserver
        .kubectl(
            &kubectl,
            &[
                "wait",
                "--for=condition=Established",
                "crd/dnspolicies.netlet.io",
                "crd/hostnamegrants.netlet.io",
            ],
        )
        .unwrap();

    // The schema's rules, enforced by the API server before netlet sees anything.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    for (doc, why) in [
        (
            "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: both, namespace: default}\nspec: {blockShadowing: true, allowShadowing: true}\n",
            "blockShadowing and allowShadowing exclude each other",
        ),
        (
            "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: act, namespace: default}\nspec: {defaultAction: Drop}\n",
            "spec.defaultAction: Unsupported value: \"Drop\"",
        ),
        (
            "apiVersion: netlet.io/v1alpha1\nkind: HostnameGrant\nmetadata: {name: none}\nspec: {namespaces: [shop], hostnames: []}\n",
            "spec.hostnames: Invalid value: 0",
        ),
    ] {
        std::fs::write(&bad, doc).unwrap();
        let err = cl
            .apiserver
            .kubectl(&kubectl, &["apply", "-f", &bad.display().to_string()])
            .expect_err(doc);
        assert!(err.contains(why), "{why}: {err}");
    }

    // A ServiceAccount the ClusterRole is not bound to: refused, and the host says what.
    cl.apiserver
        .kubectl(
            &kubectl,
            &["create", "serviceaccount", "nobody", "-n", "netlet-system"],
        )
        .unwrap();
    let restart = |cl: &mut Cluster, token: &str| {
        cl.node.host.stop_with(nix::sys::signal::Signal::SIGTERM);
        write_kubeconfig_with(&cl.kubeconfig, token);
    };
    let nobody = cl.apiserver.token("netlet-system", "nobody").unwrap();
    restart(&mut cl, &nobody);
    cl.node.host.spawn().await;
    let host = &cl.node.host;
    let refused = wait_until("RBAC refusal reported", Duration::from_secs(30), || async {
        host.kubernetes_errors()
            .into_iter()
            .find(|e| e.contains("watch Service") && e.contains("forbidden"))
    })
    .await;
    assert!(
        refused.contains("system:serviceaccount:netlet-system:nobody")
            && refused.contains("cannot list resource \"services\""),
        "{refused}"
    );

    // The netlet ServiceAccount, bound by deploy/: everything it follows is readable.
    let token = cl.apiserver.token("netlet-system", "netlet").unwrap();
    restart(&mut cl, &token);
    cl.node.host.spawn().await;
    cl.node.host.wait_ready("default").await;
    cl.node.host.wait_driver("nft").await;
    let pods = web_and_client(&cl.node, "k8sdep").await;
    let c = cl.node.host.clients().await;
    let answer = serve_and_ask(&cl.apiserver, pods[1].path.clone()).await;
    assert!(answer.ends_with("|hello"), "{answer}");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: netlet.io/v1alpha1\nkind: DnsPolicy\nmetadata: {name: shop-dns, namespace: default}\nspec: {allow: [api.example.com], defaultAction: Deny}\n---\napiVersion: netlet.io/v1alpha1\nkind: HostnameGrant\nmetadata: {name: shop}\nspec: {namespaces: [shop], hostnames: ['*.shop.example.com']}\n",
    )
    .unwrap();
    cl.apiserver
        .kubectl(&kubectl, &["apply", "-f", &good.display().to_string()])
        .unwrap();
    let policy = c.policy.clone();
    let listed = wait_until(
        "DnsPolicy and HostnameGrant read",
        Duration::from_secs(30),
        || {
            let mut policy = policy.clone();
            async move {
                let l = policy
                    .list_policies(netlet_sdk::proto::ListPoliciesRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                (!l.dns_policies.is_empty() && !l.hostname_grants.is_empty()).then_some(l)
            }
        },
    )
    .await;
    assert_eq!(listed.dns_policies[0].allow, ["api.example.com"]);
    assert_eq!(
        listed.dns_policies[0].default_action,
        netlet_sdk::proto::DnsAction::Deny as i32
    );
    assert_eq!(listed.hostname_grants[0].hostnames, ["*.shop.example.com"]);
    // The ClusterRole lets it report the node's network state on its Node, too.
    create_node(&cl.apiserver);
    let api = &cl.apiserver;
    let ((unavailable, _), _) = wait_until(
        "the node's conditions reported",
        Duration::from_secs(30),
        || async { node_conditions(api) },
    )
    .await;
    assert_eq!(unavailable, "False");
    // ... and set the readiness gate of a pod attached here that asks for it.
    default_service_account(api);
    create_pod(api, "web", true);
    let set = wait_until("the gate set", Duration::from_secs(30), || async {
        gate_of(api, "web")
    })
    .await;
    assert_eq!(set, "True");
    let errors = cl.node.host.kubernetes_errors();
    assert!(errors.is_empty(), "{errors:?}");
}

/// Asks the Service of [`service`] from `client` every 20 ms until stopped; the failures, each
/// with when it happened.
struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Prober {
    fn start(client: std::path::PathBuf, to: SocketAddr) -> Prober {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let start = std::time::Instant::now();
        let thread = std::thread::spawn(move || {
            let (mut asked, mut failed) = (0, Vec::new());
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                asked += 1;
                if let Err(e) = probe::tcp_request(&client, to, "hello") {
                    failed.push(format!("{:?}: {e}", start.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (asked, failed)
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    /// How many were asked, and the failures.
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// As kube-proxy must: with the API server away, and then back with etcd compacted under the
/// host's watches (410 Gone: they relist), the data plane keeps serving without a single
/// failed request, and what changed meanwhile is applied.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_away_and_compacted_nothing_flaps() {
    const T: &str = "the_api_server_away_and_compacted_nothing_flaps";
    let Some(mut cl) = Cluster::start(T, "k8sgone").await else {
        return;
    };
    let pods = web_and_client(&cl.node, "k8sgone").await;
    let answer = serve_and_ask(&cl.apiserver, pods[1].path.clone()).await;
    assert!(answer.ends_with("|hello"), "{answer}");
    let prober = Prober::start(pods[1].path.clone(), "10.96.0.80:80".parse().unwrap());

    // The API server goes away: the host notices and says so, the data plane stays.
    cl.apiserver.stop_api();
    let host = &cl.node.host;
    wait_until(
        "the host reports the API away",
        Duration::from_secs(60),
        || async {
            host.kubernetes_errors()
                .into_iter()
                .find(|e| e.contains("watch Service"))
        },
    )
    .await;
    cl.apiserver.restart_api();
    wait_until(
        "the host follows the API again",
        Duration::from_secs(60),
        || async { host.kubernetes_errors().is_empty().then_some(()) },
    )
    .await;

    // The host frozen while the cluster moves on: a second Service, and etcd compacted past
    // everything the host saw; then the API server restarted so its watch cache starts after
    // the compaction. The host's watches resume from a revision that is gone.
    let pid = nix::unistd::Pid::from_raw(cl.node.host.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let svc2 = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web2","namespace":"default"},"spec":{"clusterIP":"10.96.0.81","ports":[{"name":"http","port":80,"targetPort":8080}]}}"#;
    let slice2 = format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"web2-1","namespace":"default","labels":{{"kubernetes.io/service-name":"web2"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":8080,"protocol":"TCP"}}],"endpoints":[{{"addresses":["10.244.0.10"],"conditions":{{"ready":true}},"nodeName":"{NODE}"}}]}}"#
    );
    cl.apiserver
        .request("POST", "/api/v1/namespaces/default/services", Some(svc2))
        .unwrap();
    cl.apiserver
        .request(
            "POST",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            Some(&slice2),
        )
        .unwrap();
    cl.apiserver.compact_etcd().unwrap();
    cl.apiserver.restart_api();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();

    let client = pods[1].path.clone();
    let vip2: SocketAddr = "10.96.0.81:80".parse().unwrap();
    let answer = wait_until(
        "the Service created meanwhile answers",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move { probe::tcp_request(&client, vip2, "hello").ok() }
        },
    )
    .await;
    assert!(answer.ends_with("|hello"), "{answer}");
    let (asked, failed) = prober.finish();
    assert!(asked > 10, "the prober asked {asked} times");
    assert!(
        failed.is_empty(),
        "{} of {asked} requests failed: {failed:?}",
        failed.len()
    );
    let errors = cl.node.host.kubernetes_errors();
    assert!(errors.is_empty(), "{errors:?}");
}

/// The status of pod `default/name`'s condition `netlet.io/network-programmed`, if it has one.
fn gate_of(api: &ApiServer, name: &str) -> Option<String> {
    let pod: serde_json::Value = serde_json::from_str(
        &api.request(
            "GET",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            None,
        )
        .ok()?,
    )
    .ok()?;
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "netlet.io/network-programmed")
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
}

/// Creates pod `default/name` on this node through the API, listing netlet's readiness gate
/// when `gated`.
fn create_pod(api: &ApiServer, name: &str, gated: bool) {
    let gates = if gated {
        r#","readinessGates":[{"conditionType":"netlet.io/network-programmed"}]"#
    } else {
        ""
    };
    api.request(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"nodeName":"{NODE}","containers":[{{"name":"c","image":"x"}}]{gates}}}}}"#
        )),
    )
    .unwrap();
}

/// No controller manager runs: the default namespace's default ServiceAccount, which pods
/// need, is made here.
fn default_service_account(api: &ApiServer) {
    api.request(
        "POST",
        "/api/v1/namespaces/default/serviceaccounts",
        Some(r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}"#),
    )
    .unwrap();
}

/// A pod that lists netlet's readiness gate gets it set once attached and everything the node
/// wants is in its drivers (so a rollout waits for the network); a pod without the gate is
/// left alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_readiness_gate_turns_true_once_programmed() {
    const T: &str = "the_readiness_gate_turns_true_once_programmed";
    let Some(cl) = Cluster::start(T, "k8sgate").await else {
        return;
    };
    let api = &cl.apiserver;
    default_service_account(api);
    create_pod(api, "gated", true);
    create_pod(api, "plain", false);
    let gate = |name: &'static str| move || async move { gate_of(api, name) };
    // Not attached yet: nothing to say about its network.
    assert_eq!(gate("gated")().await, None);
    let c = cl.node.host.clients().await;
    let mut netns = Vec::new();
    for (i, name) in ["gated", "plain"].into_iter().enumerate() {
        let ns = NetNs::create(&format!("netlet-k8sgate-{name}-{}", std::process::id())).unwrap();
        attach_default(&c, &format!("k8sgate-{i}"), name, &ns.path, vec![])
            .await
            .expect("attach");
        netns.push(ns);
    }
    let set = wait_until("the gate set", Duration::from_secs(30), gate("gated")).await;
    assert_eq!(set, "True");
    assert_eq!(
        gate("plain")().await,
        None,
        "a pod without the gate is left alone"
    );
}

/// The API server asks the hostname webhook as `deploy/` registers it (its rules, failure
/// policies and match condition; the client config pointed at the host with the test's CA):
/// an HTTPRoute a grant allows is created, one whose name another namespace holds or no grant
/// covers is refused with netlet's reason; a Service reaches the webhook only with the
/// external-dns annotation; with the host gone, routes wait (Fail) and Services do not
/// (Ignore).
#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_asks_the_hostname_webhook() {
    const T: &str = "the_api_server_asks_the_hostname_webhook";
    let Some(kubectl) = kubectl(T) else { return };
    let Some(gateway) = gateway_api_crds(T) else {
        return;
    };
    if tool("openssl", T).is_none() {
        return;
    }
    let tls = tempfile::tempdir().unwrap();
    let (ca, cert, key) = issue_tls(tls.path(), "api");
    let Some(mut cl) = Cluster::start_with(
        T,
        "k8shn",
        &format!(
            "hostnames:\n  noGrant: deny\n  webhook: {{listen: \"127.0.0.1:9443\", certFile: {}, keyFile: {}}}\n",
            cert.display(),
            key.display()
        ),
    )
    .await
    else {
        return;
    };
    let api = &cl.apiserver;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    api.kubectl(
        &kubectl,
        &[
            "apply",
            "-f",
            &deploy.join("crds").display().to_string(),
            "-f",
            &gateway
                .join("gateway.networking.k8s.io_httproutes.yaml")
                .display()
                .to_string(),
        ],
    )
    .unwrap();
    api.kubectl(
        &kubectl,
        &[
            "wait",
            "--for=condition=Established",
            "crd/hostnamegrants.netlet.io",
            "crd/httproutes.gateway.networking.k8s.io",
        ],
    )
    .unwrap();
    // deploy/'s registration, reaching the host at its address with the test's CA.
    let text = std::fs::read_to_string(deploy.join("netlet.yaml")).unwrap();
    let mut hook = netlet_sdk::yaml::documents::<serde_json::Value>(&text)
        .unwrap()
        .into_iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .expect("deploy/ registers the webhook");
    hook["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let ca_bundle = std::process::Command::new("openssl")
        .args(["base64", "-A", "-in"])
        .arg(&ca)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap();
    for w in hook["webhooks"].as_array_mut().unwrap() {
        w["clientConfig"] =
            serde_json::json!({"url": "https://127.0.0.1:9443/validate", "caBundle": ca_bundle});
    }
    api.request(
        "POST",
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        Some(&hook.to_string()),
    )
    .unwrap();
    for ns in ["team-a", "team-b"] {
        api.request(
            "POST",
            "/api/v1/namespaces",
            Some(&format!(
                r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{ns}"}}}}"#
            )),
        )
        .unwrap();
    }
    api.request(
        "POST",
        "/apis/netlet.io/v1alpha1/hostnamegrants",
        Some(r#"{"apiVersion":"netlet.io/v1alpha1","kind":"HostnameGrant","metadata":{"name":"shop"},"spec":{"namespaces":["team-a","team-b"],"hostnames":["shop.example.com"]}}"#),
    )
    .unwrap();
    let route = |ns: &str, name: &str, host: &str| {
        (
            format!("/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes"),
            format!(
                r#"{{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"parentRefs":[{{"name":"gw"}}],"hostnames":["{host}"]}}}}"#
            ),
        )
    };
    // Once the host has the grant: team-a's route is created.
    let (path, body) = route("team-a", "shop", "shop.example.com");
    wait_until(
        "team-a's HTTPRoute admitted",
        Duration::from_secs(60),
        || {
            let r = api.request("POST", &path, Some(&body));
            async move { r.ok() }
        },
    )
    .await;
    // team-b's is refused: team-a holds the name.
    let (path, body) = route("team-b", "shop", "shop.example.com");
    let e = api.request("POST", &path, Some(&body)).unwrap_err();
    assert!(
        e.contains(r#"admission webhook \"hostnames.netlet.io\" denied the request: netlet: hostname \"shop.example.com\": \"shop.example.com\" is held by team-a/HTTPRoute/shop since"#),
        "{e}"
    );
    // No grant covers it.
    let (path, body) = route("team-b", "blog", "blog.example.org");
    let e = api.request("POST", &path, Some(&body)).unwrap_err();
    assert!(
        e.contains(r#"no grant covers \"blog.example.org\" (hostnames.noGrant: deny)"#),
        "{e}"
    );
    let service = |name: &str, annotated: bool| {
        let a = if annotated {
            r#","annotations":{"external-dns.alpha.kubernetes.io/hostname":"shop.example.com"}"#
        } else {
            ""
        };
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}","namespace":"team-b"{a}}},"spec":{{"ports":[{{"port":80}}]}}}}"#
        )
    };
    let services = "/api/v1/namespaces/team-b/services";
    api.request("POST", services, Some(&service("plain", false)))
        .unwrap();
    let e = api
        .request("POST", services, Some(&service("published", true)))
        .unwrap_err();
    assert!(e.contains("is held by team-a/HTTPRoute/shop"), "{e}");

    // The host gone: a route waits (failurePolicy Fail), a Service does not (Ignore).
    cl.node.host.stop_with(nix::sys::signal::Signal::SIGTERM);
    let api = &cl.apiserver;
    let (path, body) = route("team-a", "later", "shop.example.com");
    let e = api.request("POST", &path, Some(&body)).unwrap_err();
    assert!(
        e.contains(r#"failed calling webhook \"hostnames.netlet.io\""#),
        "{e}"
    );
    api.request("POST", services, Some(&service("published", true)))
        .unwrap();
}
