//! What the host serves of the contract: the capabilities it routes to drivers and the gRPC
//! services that makes (read by the API, the metrics' method labels and the start-up log).

use netlet_sdk::proto::Capability;

/// Capabilities the host serves (routing them to drivers).
pub const HOST_CAPABILITIES: &[Capability] = &[
    Capability::Node,
    Capability::Pods,
    Capability::Services,
    Capability::Policy,
    Capability::Devices,
    Capability::Cluster,
];

/// Fully qualified names of the netlet services the host serves.
pub fn host_services() -> Vec<String> {
    std::iter::once(netlet_proto::IDENTITY_SERVICE)
        .chain(
            HOST_CAPABILITIES
                .iter()
                .flat_map(|c| netlet_proto::services_of(*c).iter().copied()),
        )
        .map(str::to_string)
        .collect()
}
