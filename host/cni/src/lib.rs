//! The CNI shim's pure part: its input (stdin and the `CNI_*` environment) and the requests
//! it makes of the host, apart from the process and the socket (`main.rs`), so tests and
//! fuzzers reach them.

#![forbid(unsafe_code)]

pub mod input;
pub mod spec;

use netlet_sdk::proto::{
    AttachPodRequest, BandwidthLimits, NetworkSelection, PodSandbox, PortMapping, Protocol,
};
use spec::{Env, NetConf};

/// A CNI port mapping's protocol (TCP unless it says UDP or SCTP).
pub fn protocol(p: &str) -> i32 {
    match p.to_ascii_lowercase().as_str() {
        "udp" => Protocol::Udp as i32,
        "sctp" => Protocol::Sctp as i32,
        _ => Protocol::Tcp as i32,
    }
}

/// The AttachPod request of an ADD for `network`.
pub fn attach_request(env: &Env, conf: &NetConf, network: &str) -> AttachPodRequest {
    let arg = |k: &str| env.args.get(k).cloned().unwrap_or_default();
    let rc = &conf.runtime_config;
    let bandwidth = rc.bandwidth.as_ref().map(|b| BandwidthLimits {
        ingress_bps: b.ingress_rate,
        ingress_burst_bits: b.ingress_burst,
        egress_bps: b.egress_rate,
        egress_burst_bits: b.egress_burst,
    });
    AttachPodRequest {
        sandbox: Some(PodSandbox {
            id: env.container_id.clone(),
            name: arg("K8S_POD_NAME"),
            namespace: arg("K8S_POD_NAMESPACE"),
            uid: arg("K8S_POD_UID"),
            netns_path: env.netns.clone(),
            port_mappings: rc
                .port_mappings
                .iter()
                .map(|p| PortMapping {
                    host_port: p.host_port,
                    container_port: p.container_port,
                    protocol: protocol(&p.protocol),
                    host_ip: p.host_ip.clone(),
                    name: String::new(),
                })
                .collect(),
            ..Default::default()
        }),
        networks: vec![NetworkSelection {
            network: network.to_string(),
            interface_name: env.ifname.clone(),
            ips: rc.ips.clone(),
            mac: rc.mac.clone().unwrap_or_default(),
            bandwidth,
            ..Default::default()
        }],
    }
}
