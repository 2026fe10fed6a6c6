//! NetworkPolicies from the manifests directory: converted with the API's defaults, handed to
//! the drivers that serve Policy, owned against socket callers, bad ones reported with file,
//! object and field while the others stay, and gone with their file.

use std::time::Duration;

use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    ApplyPolicyRequest, ListPoliciesRequest, NetworkPolicy, PolicyKey, PolicyKind,
};
use netlet_testbed::harness::{Host, fixture_driver, wait_until};
use tonic::Code;

const T: Duration = Duration::from_secs(20);

const DENY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
    ports: [{port: 53, protocol: UDP}, {port: dns-tcp}]
";

const BAD: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: wide, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [192.168.0.0/24]}}]}]
";

async fn driver_list(d: &Clients) -> netlet_sdk::proto::ListPoliciesResponse {
    d.policy
        .clone()
        .list_policies(ListPoliciesRequest::default())
        .await
        .map(|r| r.into_inner())
        .unwrap_or_default()
}

async fn driver_policies(d: &Clients) -> Vec<NetworkPolicy> {
    driver_list(d).await.network_policies
}

/// The elements of an address set as the driver holds it.
fn elements(l: &netlet_sdk::proto::ListPoliciesResponse, set: &str) -> Vec<String> {
    l.address_sets
        .iter()
        .find(|s| s.name == set)
        .map(|s| s.elements.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn network_policies_from_manifests_reach_the_policy_driver() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deny.yaml");
    std::fs::write(&file, DENY).unwrap();
    std::fs::write(dir.path().join("bad.yaml"), BAD).unwrap();
    let extra = format!("manifestsDir: {}\n", dir.path().display());
    let h = Host::start(&fixture_driver("pol", "default", &[]), &extra).await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let driver = Clients::connect(&h.dir.path().join("run/drivers/pol.sock"), None)
        .await
        .unwrap();
    let got = wait_until("the manifest's NetworkPolicy at the driver", T, || {
        let d = driver.clone();
        async move {
            let p = driver_policies(&d).await;
            (!p.is_empty()).then_some(p)
        }
    })
    .await;
    // Only the good one; as the API defines it: Ingress and Egress (it has egress rules), every
    // pod of the namespace, egress to kube-system on UDP 53 and the named port.
    assert_eq!(got.len(), 1, "{got:?}");
    let p = &got[0];
    assert_eq!(p.key.as_ref().unwrap().name, "default-deny");
    assert_eq!(p.directions, [1, 2]);
    assert!(p.ingress.is_empty(), "no ingress rule: all ingress denied");
    assert_eq!(p.egress[0].ports[0].port, 53);
    assert_eq!(p.egress[0].ports[1].named_port, "dns-tcp");
    // The bad one is reported with file, object and field.
    let errors = h.manifest_errors();
    let e = errors
        .iter()
        .find(|e| e.contains("NetworkPolicy shop/wide"))
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert!(
        e.contains("bad.yaml") && e.contains("ingress[0].peers[0].ip_block_except[0]:"),
        "{e}"
    );

    // A socket caller cannot overwrite it; its own full sync leaves it alone.
    let key = PolicyKey {
        kind: PolicyKind::NetworkPolicy as i32,
        namespace: "shop".into(),
        name: "default-deny".into(),
    };
    let err = c
        .policy
        .clone()
        .apply_policy(ApplyPolicyRequest {
            generation: 1,
            full_sync: true,
            network_policies: vec![NetworkPolicy {
                key: Some(key.clone()),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().starts_with(
            "network_policies[0].key: shop/default-deny is owned by the manifests source"
        ),
        "{err:?}"
    );
    let mine = NetworkPolicy {
        key: Some(PolicyKey {
            name: "mine".into(),
            ..key.clone()
        }),
        ..Default::default()
    };
    c.policy
        .clone()
        .apply_policy(ApplyPolicyRequest {
            generation: 1,
            full_sync: true,
            network_policies: vec![mine],
            ..Default::default()
        })
        .await
        .unwrap();
    let names = |ps: Vec<NetworkPolicy>| -> Vec<String> {
        let mut n: Vec<String> = ps.into_iter().map(|p| p.key.unwrap().name).collect();
        n.sort();
        n
    };
    wait_until("both at the driver", T, || {
        let d = driver.clone();
        async move { (names(driver_policies(&d).await) == ["default-deny", "mine"]).then_some(()) }
    })
    .await;
    // The file goes: so does its policy; the caller's stays.
    std::fs::remove_file(&file).unwrap();
    wait_until("the manifest's policy gone", T, || {
        let d = driver.clone();
        async move { (names(driver_policies(&d).await) == ["mine"]).then_some(()) }
    })
    .await;
}

/// The address AttachPod gave a pod (its first, without the prefix length).
fn addr(r: netlet_sdk::proto::AttachPodResponse) -> String {
    r.attachments[0].ips[0]
        .address
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn attach_req(
    id: &str,
    namespace: &str,
    labels: &[(&str, &str)],
) -> netlet_sdk::proto::AttachPodRequest {
    netlet_sdk::proto::AttachPodRequest {
        sandbox: Some(netlet_sdk::proto::PodSandbox {
            id: id.into(),
            name: id.into(),
            namespace: namespace.into(),
            netns_path: format!("/var/run/netns/{id}"),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        networks: vec![],
    }
}

// The host resolves a NetworkPolicy's selectors against the pods attached to the node (their
// namespace and labels come with AttachPod): the pods it applies to, and each selector peer's
// pods — a pod selector in the policy's namespace, a namespace selector by the
// `kubernetes.io/metadata.name` label every namespace carries — and follows pods as they come
// and go. The expected addresses are the ones AttachPod answered.
#[tokio::test(flavor = "multi_thread")]
async fn selectors_resolve_to_the_attached_pods_and_follow_them() {
    use netlet_sdk::proto::{LabelSelector, NetworkPolicyPeer, NetworkPolicyRule};
    let h = Host::start(&fixture_driver("pol", "default", &[]), "").await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let driver = Clients::connect(&h.dir.path().join("run/drivers/pol.sock"), None)
        .await
        .unwrap();
    let mut pods = c.pods.clone();
    let web = addr(
        pods.attach_pod(attach_req("w1", "shop", &[("app", "web")]))
            .await
            .unwrap()
            .into_inner(),
    );
    let client = addr(
        pods.attach_pod(attach_req("c1", "shop", &[("role", "client")]))
            .await
            .unwrap()
            .into_inner(),
    );
    let ops = addr(
        pods.attach_pod(attach_req("o1", "ops", &[("role", "monitor")]))
            .await
            .unwrap()
            .into_inner(),
    );
    // Same labels, other namespace: not the pod selector's.
    pods.attach_pod(attach_req("c2", "dev", &[("role", "client")]))
        .await
        .unwrap();
    let labels = |kv: &[(&str, &str)]| LabelSelector {
        match_labels: kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let policy = NetworkPolicy {
        key: Some(PolicyKey {
            kind: PolicyKind::NetworkPolicy as i32,
            namespace: "shop".into(),
            name: "web-ingress".into(),
        }),
        pod_selector: Some(labels(&[("app", "web")])),
        directions: vec![1],
        ingress: vec![NetworkPolicyRule {
            peers: vec![
                NetworkPolicyPeer {
                    pod_selector: Some(labels(&[("role", "client")])),
                    ..Default::default()
                },
                NetworkPolicyPeer {
                    namespace_selector: Some(labels(&[("kubernetes.io/metadata.name", "ops")])),
                    ..Default::default()
                },
            ],
            ports: vec![],
        }],
        ..Default::default()
    };
    c.policy
        .clone()
        .apply_policy(ApplyPolicyRequest {
            generation: 1,
            full_sync: true,
            network_policies: vec![policy],
            ..Default::default()
        })
        .await
        .unwrap();
    // Selectors arrive as shared address sets: the policy names them, the sets hold them.
    let resolved = |l: netlet_sdk::proto::ListPoliciesResponse| {
        let p = l.network_policies.first()?;
        Some((
            elements(&l, &p.selected_set),
            elements(&l, &p.ingress[0].peers[0].address_set),
            elements(&l, &p.ingress[0].peers[1].address_set),
        ))
    };
    let want = (vec![web.clone()], vec![client.clone()], vec![ops.clone()]);
    let d = driver.clone();
    let got = wait_until("the resolved policy at the driver", T, || {
        let d = d.clone();
        async move { resolved(driver_list(&d).await) }
    })
    .await;
    assert_eq!(got, want);
    // The client leaves; a second web pod comes: the driver's policy follows.
    c.pods
        .clone()
        .detach_pod(netlet_sdk::proto::DetachPodRequest {
            sandbox_id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let web2 = addr(
        pods.attach_pod(attach_req("w2", "shop", &[("app", "web")]))
            .await
            .unwrap()
            .into_inner(),
    );
    let mut selected = vec![web.clone(), web2.clone()];
    selected.sort_by_key(|a| a.parse::<std::net::IpAddr>().unwrap());
    let want = (selected, vec![], vec![ops.clone()]);
    let got = wait_until("the policy following the pods", T, || {
        let d = driver.clone();
        let want = want.clone();
        async move { resolved(driver_list(&d).await).filter(|g| *g == want) }
    })
    .await;
    assert_eq!(got, want);
}

// Pods of other nodes and namespaces' labels come from Pod and Namespace objects in the
// manifests directory: a namespace selector matches by the Namespace's labels, and picks the
// remote pods there (addresses from status.podIPs) beside the local ones.
#[tokio::test(flavor = "multi_thread")]
async fn remote_pods_and_namespace_labels_come_from_manifests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cluster.yaml"),
        "apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {team: platform}}
---
apiVersion: v1
kind: Pod
metadata: {name: prom-0, namespace: ops, labels: {app: prom}}
spec: {containers: [{name: c, image: x, ports: [{name: metrics, containerPort: 9090}]}]}
status: {podIP: 10.9.0.5, podIPs: [{ip: 10.9.0.5}, {ip: 'fd00:9::5'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: ops}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-platform, namespace: shop}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: platform}}}]}]
",
    )
    .unwrap();
    let extra = format!("manifestsDir: {}\n", dir.path().display());
    let h = Host::start(&fixture_driver("pol", "default", &[]), &extra).await;
    h.wait_ready("").await;
    let c = h.clients().await;
    let driver = Clients::connect(&h.dir.path().join("run/drivers/pol.sock"), None)
        .await
        .unwrap();
    // A local pod in ops joins the remote one; a pod in shop is the one selected.
    let mut pods = c.pods.clone();
    let local_ops = addr(
        pods.attach_pod(attach_req("o1", "ops", &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    pods.attach_pod(attach_req("s1", "shop", &[]))
        .await
        .unwrap();
    let mut want: Vec<std::net::IpAddr> = vec![
        "10.9.0.5".parse().unwrap(),
        "fd00:9::5".parse().unwrap(),
        local_ops.parse().unwrap(),
    ];
    want.sort();
    let want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
    let got = wait_until("the remote and local ops pods as peers", T, || {
        let d = driver.clone();
        let want = want.clone();
        async move {
            let l = driver_list(&d).await;
            let p = l.network_policies.first()?;
            Some(elements(&l, &p.ingress[0].peers[0].address_set)).filter(|r| *r == want)
        }
    })
    .await;
    assert_eq!(got, want);
    // netletctl shows the policy as drivers are told it.
    let out = std::process::Command::new(netlet_testbed::harness::bin("netletctl"))
        .arg("--socket")
        .arg(&h.socket)
        .args(["-o", "json", "policies"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["networkPolicies"][0];
    assert_eq!(p["name"], "from-platform");
    assert_eq!(p["directions"], serde_json::json!(["INGRESS"]));
    assert_eq!(
        p["ingress"][0]["peers"][0]["addresses"],
        serde_json::json!(want)
    );
}

// The nft driver, on its own socket in a namespace of the test's own, passes the conformance
// checks of what it declares (Services and Policy; it attaches no pods): address sets changed
// by their elements, field errors, epochs, and DNS and hostname questions answered UNAVAILABLE
// (it has no evaluator).
#[test]
fn the_nft_driver_passes_policy_conformance() {
    use netlet_testbed::harness::{Proc, bin, in_netns, privileged};
    if !privileged("the_nft_driver_passes_policy_conformance") {
        return;
    }
    let ns =
        netlet_testbed::probe::NetNs::create(&format!("netlet-nftconf-{}", std::process::id()))
            .unwrap();
    netlet_testbed::probe::link_up(&ns.path, "lo").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nft.sock");
    let sock_arg = sock.display().to_string();
    let _driver = Proc(
        in_netns(Some(&ns.path), &bin("netlet-nft"))
            .args(["--socket", &sock_arg])
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + T;
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "no driver socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = netlet_testbed::harness::conformance(
        in_netns(Some(&ns.path), &bin("netlet-conformance")),
        &sock,
        &["--focus", "^(policy|services|identity)/"],
        &dir.path().join("junit.xml"),
    );
    assert!(
        text.contains("PASS  policy/address-sets-change-by-elements"),
        "{text}"
    );
    assert!(text.contains("PASS  policy/check-invalid-fields"), "{text}");
}
