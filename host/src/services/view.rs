//! Where Kubernetes Services and EndpointSlices become this node's view: the proto `Service`
//! and, per endpoint, whether it is local and whether it serves internal (ClusterIP) and
//! external (NodePort, LoadBalancer, external IP) traffic here — kube-proxy's
//! `CategorizeEndpoints` semantics:
//!
//! - readiness: `ready` unset counts as ready; `serving` unset follows `ready`; with
//!   `publishNotReadyAddresses` every endpoint counts as ready;
//! - cluster-wide traffic uses ready endpoints; when none is ready anywhere, the serving and
//!   terminating ones (terminating fallback);
//! - `Local` traffic policies use this node's ready endpoints, else its serving∧terminating ones,
//!   and nothing when there is none here (the driver then drops);
//! - topology: with `trafficDistribution: PreferClose`/`PreferSameZone` (or the
//!   `service.kubernetes.io/topology-mode: Auto` annotation), ready endpoints hinted for this
//!   node's zone — only when every ready endpoint carries zone hints and one names this zone;
//!   `PreferSameNode` prefers node hints the same way, falling back to zones;
//! - headless, ExternalName and `service.kubernetes.io/service-proxy-name` Services are left to
//!   others: [`service`] returns `None` for them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netlet_sdk::proto::{
    Endpoint, EndpointPort, IpFamily, IpFamilyPolicy, Protocol, Service, ServiceKey, ServicePort,
    ServiceType, SessionAffinity, TrafficPolicy,
};

/// Label that hands a Service to another proxy.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Annotation asking for topology-aware routing (before `trafficDistribution`).
pub const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default ClientIP affinity timeout.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// Where this node is.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// Node name (EndpointSlice `nodeName`).
    pub name: String,
    /// Zone (`topology.kubernetes.io/zone`), if known.
    pub zone: String,
}

fn protocol(p: Option<&str>) -> Protocol {
    match p.unwrap_or("TCP") {
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

fn policy(p: Option<&str>) -> TrafficPolicy {
    match p {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}

fn family_of(addr: &str) -> IpFamily {
    if addr.contains(':') {
        IpFamily::Ipv6
    } else {
        IpFamily::Ipv4
    }
}

/// The Service key `namespace/name`.
pub fn key(namespace: &str, name: &str) -> ServiceKey {
    ServiceKey {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// The proto Service for a Kubernetes one, or `None` when this node's proxy must leave it alone
/// (headless, ExternalName, another proxy's, or without a spec).
pub fn service(s: &KService) -> Option<Service> {
    let meta = &s.metadata;
    if meta
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(PROXY_NAME_LABEL))
    {
        return None;
    }
    let spec = s.spec.as_ref()?;
    let kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ExternalName" => return None,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        _ => ServiceType::ClusterIp,
    };
    let mut cluster_ips = spec.cluster_ips.clone().unwrap_or_default();
    if cluster_ips.is_empty()
        && let Some(ip) = &spec.cluster_ip
    {
        cluster_ips.push(ip.clone());
    }
    if cluster_ips.iter().any(|ip| ip == "None") {
        return None;
    }
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let (target_port, target_port_name) = match &p.target_port {
                Some(IntOrString::Int(n)) => (*n as u32, String::new()),
                Some(IntOrString::String(name)) => (0, name.clone()),
                None => (p.port as u32, String::new()),
            };
            ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: protocol(p.protocol.as_deref()) as i32,
                port: p.port as u32,
                node_port: p.node_port.unwrap_or(0) as u32,
                target_port,
                target_port_name,
                app_protocol: p.app_protocol.clone().unwrap_or_default(),
            }
        })
        .collect();
    let affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => SessionAffinity::ClientIp,
        _ => SessionAffinity::None,
    };
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .map(|t| t as u32)
        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    let lb_ips = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| ing.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    let external_facing =
        kind != ServiceType::ClusterIp || spec.external_ips.as_ref().is_some_and(|e| !e.is_empty());
    let mut traffic_distribution = spec.traffic_distribution.clone().unwrap_or_default();
    if traffic_distribution.is_empty()
        && meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOPOLOGY_MODE_ANNOTATION))
            .is_some_and(|m| m.eq_ignore_ascii_case("auto"))
    {
        traffic_distribution = "PreferClose".into();
    }
    Some(Service {
        key: Some(key(
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default(),
        )),
        r#type: kind as i32,
        ip_families: cluster_ips.iter().map(|ip| family_of(ip) as i32).collect(),
        cluster_ips,
        ip_family_policy: match spec.ip_family_policy.as_deref() {
            Some("PreferDualStack") => IpFamilyPolicy::PreferDualStack,
            Some("RequireDualStack") => IpFamilyPolicy::RequireDualStack,
            _ => IpFamilyPolicy::SingleStack,
        } as i32,
        ports,
        external_ips: spec.external_ips.clone().unwrap_or_default(),
        load_balancer_ips: lb_ips,
        load_balancer_source_ranges: spec.load_balancer_source_ranges.clone().unwrap_or_default(),
        internal_traffic_policy: policy(spec.internal_traffic_policy.as_deref()) as i32,
        external_traffic_policy: if external_facing {
            policy(spec.external_traffic_policy.as_deref())
        } else {
            TrafficPolicy::Cluster
        } as i32,
        health_check_node_port: spec.health_check_node_port.unwrap_or(0) as u32,
        session_affinity: affinity as i32,
        session_affinity_timeout_seconds: if affinity == SessionAffinity::ClientIp {
            timeout
        } else {
            0
        },
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        external_name: String::new(),
        traffic_distribution,
    })
}

/// The endpoints of `slices` (all of one Service), merged by address, with their conditions
/// normalised (unset `ready` = ready, unset `serving` = `ready`) and `local` for `node`.
pub fn endpoints(svc: &Service, slices: &[&EndpointSlice], node: &NodeInfo) -> Vec<Endpoint> {
    let mut by_addr: BTreeMap<String, Endpoint> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let ports: Vec<EndpointPort> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone().unwrap_or_default(),
                    port: p.port? as u32,
                    protocol: protocol(p.protocol.as_deref()) as i32,
                    app_protocol: p.app_protocol.clone().unwrap_or_default(),
                })
            })
            .collect();
        for ep in &slice.endpoints {
            // kube-proxy uses the first address of an endpoint.
            let Some(addr) = ep.addresses.first() else {
                continue;
            };
            let c = ep.conditions.clone().unwrap_or_default();
            let ready = svc.publish_not_ready_addresses || c.ready.unwrap_or(true);
            let serving = svc.publish_not_ready_addresses || c.serving.unwrap_or(ready);
            let terminating = c.terminating.unwrap_or(false);
            let node_name = ep.node_name.clone().unwrap_or_default();
            let hints = ep.hints.clone().unwrap_or_default();
            let e = by_addr.entry(addr.clone()).or_insert_with(|| Endpoint {
                address: addr.clone(),
                family: family_of(addr) as i32,
                // Kept for as long as the Service is: room for this slice's ports only.
                ports: Vec::with_capacity(ports.len()),
                ready,
                serving,
                terminating,
                local: !node.name.is_empty() && node_name == node.name,
                node_name,
                zone: ep.zone.clone().unwrap_or_default(),
                hint_zones: hints
                    .for_zones
                    .iter()
                    .flatten()
                    .map(|z| z.name.clone())
                    .collect(),
                hint_nodes: hints
                    .for_nodes
                    .iter()
                    .flatten()
                    .map(|n| n.name.clone())
                    .collect(),
                hostname: ep.hostname.clone().unwrap_or_default(),
                use_for_internal: false,
                use_for_external: false,
            });
            for p in &ports {
                if !e.ports.contains(p) {
                    e.ports.push(p.clone());
                }
            }
        }
    }
    let mut eps: Vec<Endpoint> = by_addr.into_values().collect();
    categorize(svc, &mut eps, node);
    eps
}

/// Sets `use_for_internal` / `use_for_external` on `eps` for this node.
pub fn categorize(svc: &Service, eps: &mut [Endpoint], node: &NodeInfo) {
    let itp_local = svc.internal_traffic_policy == TrafficPolicy::Local as i32;
    let etp_local = svc.external_traffic_policy == TrafficPolicy::Local as i32;
    let cluster = cluster_set(svc, eps, node);
    let local = local_set(eps);
    for (i, e) in eps.iter_mut().enumerate() {
        e.use_for_internal = if itp_local { local[i] } else { cluster[i] };
        e.use_for_external = if etp_local { local[i] } else { cluster[i] };
    }
}

fn cluster_set(svc: &Service, eps: &[Endpoint], node: &NodeInfo) -> Vec<bool> {
    let topo = topology_filter(svc, eps, node);
    let ready: Vec<bool> = eps
        .iter()
        .map(|e| e.ready && topo.as_ref().is_none_or(|f| f(e)))
        .collect();
    if ready.iter().any(|r| *r) {
        return ready;
    }
    // Terminating fallback: nothing ready anywhere, so serving∧terminating ones.
    eps.iter().map(|e| e.serving && e.terminating).collect()
}

fn local_set(eps: &[Endpoint]) -> Vec<bool> {
    let ready: Vec<bool> = eps.iter().map(|e| e.local && e.ready).collect();
    if ready.iter().any(|r| *r) {
        return ready;
    }
    eps.iter()
        .map(|e| e.local && e.serving && e.terminating)
        .collect()
}

type Filter = Box<dyn Fn(&Endpoint) -> bool>;

/// The topology filter for cluster traffic, or `None` when topology does not apply.
fn topology_filter(svc: &Service, eps: &[Endpoint], node: &NodeInfo) -> Option<Filter> {
    let mode = svc.traffic_distribution.as_str();
    if !matches!(mode, "PreferClose" | "PreferSameZone" | "PreferSameNode") {
        return None;
    }
    let ready: Vec<&Endpoint> = eps.iter().filter(|e| e.ready).collect();
    if mode == "PreferSameNode"
        && !node.name.is_empty()
        && ready.iter().all(|e| !e.hint_nodes.is_empty())
        && ready.iter().any(|e| e.hint_nodes.contains(&node.name))
    {
        let name = node.name.clone();
        return Some(Box::new(move |e: &Endpoint| e.hint_nodes.contains(&name)));
    }
    if node.zone.is_empty()
        || !ready.iter().all(|e| !e.hint_zones.is_empty())
        || !ready.iter().any(|e| e.hint_zones.contains(&node.zone))
    {
        return None;
    }
    let zone = node.zone.clone();
    Some(Box::new(move |e: &Endpoint| e.hint_zones.contains(&zone)))
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(key(
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        name,
    ))
}

/// Refuses node ports and a health-check node port outside `range` (the node's
/// `serviceNodePortRange`): `INVALID_ARGUMENT` naming the field after `prefix`.
pub fn check_node_ports(
    prefix: &str,
    s: &Service,
    range: &std::ops::RangeInclusive<u32>,
) -> Result<(), tonic::Status> {
    let outside = |field: String, port: u32| {
        netlet_sdk::validate::invalid(
            field,
            format!(
                "{port} is outside the node port range {}-{}",
                range.start(),
                range.end()
            ),
        )
    };
    for (j, p) in s.ports.iter().enumerate() {
        if p.node_port != 0 && !range.contains(&p.node_port) {
            return Err(outside(
                format!("{prefix}ports[{j}].node_port"),
                p.node_port,
            ));
        }
    }
    if s.health_check_node_port != 0 && !range.contains(&s.health_check_node_port) {
        return Err(outside(
            format!("{prefix}health_check_node_port"),
            s.health_check_node_port,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node-a";

    fn node() -> NodeInfo {
        NodeInfo {
            name: NODE.into(),
            zone: "zone-a".into(),
        }
    }

    fn svc(yaml: &str) -> Option<Service> {
        service(&netlet_sdk::yaml::from_str::<KService>(yaml).unwrap())
    }

    const WEB: &str = r#"
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ipFamilyPolicy: RequireDualStack
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
  sessionAffinity: ClientIP
  externalIPs: [192.0.2.10]
"#;

    /// One endpoint: (address, node, ready, serving, terminating, zone hints, node hints).
    type Ep<'a> = (
        &'a str,
        &'a str,
        Option<bool>,
        Option<bool>,
        Option<bool>,
        &'a [&'a str],
        &'a [&'a str],
    );

    fn slice(name: &str, eps: &[Ep]) -> EndpointSlice {
        let endpoints: Vec<serde_json::Value> = eps
            .iter()
            .map(|(a, n, r, s, t, zh, nh)| {
                serde_json::json!({
                    "addresses": [a], "nodeName": n,
                    "conditions": {"ready": r, "serving": s, "terminating": t},
                    "hints": {"forZones": zh.iter().map(|z| serde_json::json!({"name": z})).collect::<Vec<_>>(),
                              "forNodes": nh.iter().map(|z| serde_json::json!({"name": z})).collect::<Vec<_>>()},
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    /// A ready endpoint on `node` with zone hints.
    fn zoned<'a>(addr: &'a str, node: &'a str, zones: &'a [&'a str]) -> Ep<'a> {
        (addr, node, Some(true), None, None, zones, &[])
    }

    fn used(eps: &[Endpoint]) -> (Vec<&str>, Vec<&str>) {
        (
            eps.iter()
                .filter(|e| e.use_for_internal)
                .map(|e| e.address.as_str())
                .collect(),
            eps.iter()
                .filter(|e| e.use_for_external)
                .map(|e| e.address.as_str())
                .collect(),
        )
    }

    fn with(base: &str, extra: &str) -> Service {
        svc(&format!("{base}{extra}")).unwrap()
    }

    #[test]
    fn service_fields_come_across() {
        let s = svc(WEB).unwrap();
        assert_eq!(s.key, Some(key("shop", "web")));
        assert_eq!(s.r#type, ServiceType::NodePort as i32);
        assert_eq!(s.cluster_ips, ["10.96.0.10", "fd00:96::10"]);
        assert_eq!(
            s.ip_families,
            [IpFamily::Ipv4 as i32, IpFamily::Ipv6 as i32]
        );
        assert_eq!(s.ip_family_policy, IpFamilyPolicy::RequireDualStack as i32);
        assert_eq!(
            (s.ports[0].target_port, s.ports[0].target_port_name.as_str()),
            (0, "http")
        );
        assert_eq!(
            (s.ports[1].protocol, s.ports[1].target_port),
            (Protocol::Udp as i32, 5353)
        );
        assert_eq!(s.ports[0].node_port, 30080);
        assert_eq!(
            s.session_affinity_timeout_seconds,
            DEFAULT_AFFINITY_TIMEOUT_SECONDS
        );
        assert_eq!(s.external_ips, ["192.0.2.10"]);
    }

    #[test]
    fn headless_external_name_and_other_proxies_are_left_alone() {
        assert!(svc("metadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}").is_none());
        assert!(
            svc("metadata: {name: e}\nspec: {type: ExternalName, externalName: example.com}")
                .is_none()
        );
        assert!(svc(&format!(
            "metadata: {{name: o, labels: {{{PROXY_NAME_LABEL}: other}}}}\nspec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}]}}"
        ))
        .is_none());
    }

    #[test]
    fn ready_endpoints_serve_and_not_ready_ones_do_not() {
        let s = svc(WEB).unwrap();
        let sl = slice(
            "a",
            &[
                ("10.0.0.1", NODE, Some(true), None, None, &[], &[]),
                ("10.0.0.2", "node-b", None, None, None, &[], &[]),
                (
                    "10.0.0.3",
                    "node-b",
                    Some(false),
                    Some(false),
                    None,
                    &[],
                    &[],
                ),
            ],
        );
        let eps = endpoints(&s, &[&sl], &node());
        assert_eq!(
            used(&eps),
            (vec!["10.0.0.1", "10.0.0.2"], vec!["10.0.0.1", "10.0.0.2"])
        );
        assert!(eps[0].local && !eps[1].local);
        assert_eq!(eps[0].ports.len(), 2, "named ports come from the slice");
    }

    #[test]
    fn terminating_fallback_only_when_nothing_is_ready() {
        let s = svc(WEB).unwrap();
        let term = slice(
            "a",
            &[
                (
                    "10.0.0.1",
                    "node-b",
                    Some(false),
                    Some(true),
                    Some(true),
                    &[],
                    &[],
                ),
                (
                    "10.0.0.2",
                    "node-b",
                    Some(false),
                    Some(false),
                    Some(true),
                    &[],
                    &[],
                ),
            ],
        );
        assert_eq!(used(&endpoints(&s, &[&term], &node())).0, ["10.0.0.1"]);
        let plus_ready = slice(
            "b",
            &[("10.0.0.9", "node-b", Some(true), None, None, &[], &[])],
        );
        assert_eq!(
            used(&endpoints(&s, &[&term, &plus_ready], &node())).0,
            ["10.0.0.9"]
        );
    }

    #[test]
    fn local_policies_use_this_nodes_endpoints_only() {
        let s = with(
            WEB,
            "  internalTrafficPolicy: Local\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
        );
        assert_eq!(s.health_check_node_port, 32000);
        let sl = slice(
            "a",
            &[
                ("10.0.0.1", NODE, Some(true), None, None, &[], &[]),
                ("10.0.0.2", "node-b", Some(true), None, None, &[], &[]),
            ],
        );
        assert_eq!(
            used(&endpoints(&s, &[&sl], &node())),
            (vec!["10.0.0.1"], vec!["10.0.0.1"])
        );
        // None here: nothing to use (the driver drops), even though node-b has one.
        let remote = slice(
            "a",
            &[("10.0.0.2", "node-b", Some(true), None, None, &[], &[])],
        );
        assert_eq!(used(&endpoints(&s, &[&remote], &node())), (vec![], vec![]));
        // A local serving∧terminating one is used when no local one is ready.
        let term = slice(
            "a",
            &[
                (
                    "10.0.0.1",
                    NODE,
                    Some(false),
                    Some(true),
                    Some(true),
                    &[],
                    &[],
                ),
                ("10.0.0.2", "node-b", Some(true), None, None, &[], &[]),
            ],
        );
        assert_eq!(used(&endpoints(&s, &[&term], &node())).1, ["10.0.0.1"]);
        // externalTrafficPolicy only applies to externally reachable Services.
        let plain = svc("metadata: {name: p}\nspec: {clusterIP: 10.96.0.2, externalTrafficPolicy: Local, ports: [{port: 80}]}").unwrap();
        assert_eq!(plain.external_traffic_policy, TrafficPolicy::Cluster as i32);
    }

    #[test]
    fn publish_not_ready_addresses_counts_everything_ready() {
        let s = with(WEB, "  publishNotReadyAddresses: true\n");
        let sl = slice(
            "a",
            &[(
                "10.0.0.3",
                "node-b",
                Some(false),
                Some(false),
                None,
                &[],
                &[],
            )],
        );
        assert_eq!(used(&endpoints(&s, &[&sl], &node())).0, ["10.0.0.3"]);
    }

    #[test]
    fn topology_hints_apply_only_when_every_ready_endpoint_has_them() {
        let s = with(WEB, "  trafficDistribution: PreferClose\n");
        let hinted = slice(
            "a",
            &[
                zoned("10.0.0.1", "node-b", &["zone-a"]),
                zoned("10.0.0.2", "node-c", &["zone-b"]),
            ],
        );
        assert_eq!(used(&endpoints(&s, &[&hinted], &node())).0, ["10.0.0.1"]);
        let partly = slice(
            "a",
            &[
                zoned("10.0.0.1", "node-b", &["zone-a"]),
                zoned("10.0.0.2", "node-c", &[]),
            ],
        );
        assert_eq!(
            used(&endpoints(&s, &[&partly], &node())).0,
            ["10.0.0.1", "10.0.0.2"]
        );
        let no_zone = NodeInfo {
            name: NODE.into(),
            zone: String::new(),
        };
        assert_eq!(used(&endpoints(&s, &[&hinted], &no_zone)).0.len(), 2);
        // Without trafficDistribution (or the annotation) hints are ignored.
        assert_eq!(
            used(&endpoints(&svc(WEB).unwrap(), &[&hinted], &node()))
                .0
                .len(),
            2
        );
        let annotated = svc(&WEB.replace(
            "metadata: {name: web, namespace: shop}",
            &format!("metadata: {{name: web, namespace: shop, annotations: {{{TOPOLOGY_MODE_ANNOTATION}: Auto}}}}"),
        ))
        .unwrap();
        assert_eq!(
            used(&endpoints(&annotated, &[&hinted], &node())).0,
            ["10.0.0.1"]
        );
    }

    #[test]
    fn prefer_same_node_uses_node_hints_then_zones() {
        let s = with(WEB, "  trafficDistribution: PreferSameNode\n");
        let sl = slice(
            "a",
            &[
                (
                    "10.0.0.1",
                    NODE,
                    Some(true),
                    None,
                    None,
                    &["zone-a"],
                    &[NODE],
                ),
                (
                    "10.0.0.2",
                    "node-b",
                    Some(true),
                    None,
                    None,
                    &["zone-a"],
                    &["node-b"],
                ),
            ],
        );
        assert_eq!(used(&endpoints(&s, &[&sl], &node())).0, ["10.0.0.1"]);
        let other = NodeInfo {
            name: "node-z".into(),
            zone: "zone-a".into(),
        };
        assert_eq!(
            used(&endpoints(&s, &[&sl], &other)).0.len(),
            2,
            "no node hint for node-z: zones"
        );
    }

    #[test]
    fn several_slices_merge_by_address() {
        let s = svc(WEB).unwrap();
        let a = slice("a", &[("10.0.0.1", NODE, Some(true), None, None, &[], &[])]);
        let b = slice(
            "b",
            &[
                ("10.0.0.1", NODE, Some(true), None, None, &[], &[]),
                ("10.0.0.2", NODE, Some(true), None, None, &[], &[]),
            ],
        );
        let eps = endpoints(&s, &[&a, &b], &node());
        assert_eq!(eps.len(), 2);
        assert_eq!(slice_service(&a), Some(key("shop", "web")));
    }
}
