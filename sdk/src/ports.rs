//! Host ports: which port mappings publish a port on the node, and which collide.

use crate::proto::{PortMapping, Protocol};

/// Whether a mapping publishes a port on the node: it has a `host_port` (0 is a containerPort
/// without hostPort, which the kubelet passes too).
pub fn is_published(pm: &PortMapping) -> bool {
    pm.host_port != 0
}

/// The mappings that publish a port on the node.
pub fn published(mappings: &[PortMapping]) -> Vec<PortMapping> {
    mappings
        .iter()
        .filter(|pm| is_published(pm))
        .cloned()
        .collect()
}

/// What a host port is known by on the node: (host_ip, protocol, host_port), the protocol
/// defaulted to TCP.
pub fn host_port_key(pm: &PortMapping) -> (String, i32, u32) {
    let proto = match Protocol::try_from(pm.protocol) {
        Ok(Protocol::Udp) | Ok(Protocol::Sctp) => pm.protocol,
        _ => Protocol::Tcp as i32,
    };
    (pm.host_ip.clone(), proto, pm.host_port)
}

/// Whether two host ports collide: same protocol and port, and the same address or one of
/// them on every address.
pub fn host_ports_collide(a: &PortMapping, b: &PortMapping) -> bool {
    let (ai, ap, an) = host_port_key(a);
    let (bi, bp, bn) = host_port_key(b);
    ap == bp && an == bn && (ai.is_empty() || bi.is_empty() || ai == bi)
}
