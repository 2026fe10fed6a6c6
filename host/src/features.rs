//! Optional features (GetInfo `features`): a request that needs a feature is refused when the
//! driver it would go to lacks it, rather than half-served. One place decides what needs what.

use std::sync::Arc;

use netlet_sdk::proto::{
    ApplyPolicyRequest, Capability, Feature, NetworkSelection, PodSandbox, ProgramServiceRequest,
    Protocol, SessionAffinity,
};
use netlet_sdk::validate::field_error;
use tonic::{Code, Status};

use crate::registry::{DriverEntry, Registry};

/// The reason of a refusal for a missing feature.
pub const REASON: &str = "FEATURE_NOT_SUPPORTED";

fn lacking(field: String, driver: &DriverEntry, f: Feature) -> Status {
    field_error(
        Code::FailedPrecondition,
        field,
        format!(
            "driver {:?} does not declare {}",
            driver.name,
            f.as_str_name()
        ),
        REASON,
    )
}

/// The features one selection of AttachPod needs, with the field that asks.
pub fn needed_by_selection(
    i: usize,
    sel: &NetworkSelection,
    sandbox: &PodSandbox,
) -> Vec<(String, Feature)> {
    let mut out = Vec::new();
    if !sel.ips.is_empty() {
        out.push((format!("networks[{i}].ips"), Feature::StaticIps));
    }
    if !sel.mac.is_empty() {
        out.push((format!("networks[{i}].mac"), Feature::StaticMac));
    }
    if !sel.device_id.is_empty() {
        out.push((format!("networks[{i}].device_id"), Feature::Devices));
    }
    if !sel.routes.is_empty() {
        out.push((format!("networks[{i}].routes"), Feature::Routes));
    }
    let limited = sel.bandwidth.as_ref().is_some_and(|b| {
        b.ingress_bps != 0
            || b.egress_bps != 0
            || b.ingress_burst_bits != 0
            || b.egress_burst_bits != 0
    });
    if limited {
        out.push((format!("networks[{i}].bandwidth"), Feature::Bandwidth));
    } else if sandbox
        .annotations
        .keys()
        .any(|k| k == "kubernetes.io/ingress-bandwidth" || k == "kubernetes.io/egress-bandwidth")
        && sel.default_route.unwrap_or(i == 0)
    {
        out.push(("sandbox.annotations".into(), Feature::Bandwidth));
    }
    out
}

/// Checks one selection against the driver it goes to.
pub fn check_selection(
    i: usize,
    sel: &NetworkSelection,
    sandbox: &PodSandbox,
    driver: &DriverEntry,
) -> Result<(), Status> {
    for (field, f) in needed_by_selection(i, sel, sandbox) {
        if !driver.has_feature(f) {
            return Err(lacking(field, driver, f));
        }
    }
    Ok(())
}

/// Checks a pod's published host ports against the Services drivers registered (none
/// registered: they get the ports when one registers).
pub fn check_host_ports(s: &PodSandbox, registry: &Registry) -> Result<(), Status> {
    let Some(i) = s
        .port_mappings
        .iter()
        .position(netlet_sdk::state::is_published)
    else {
        return Ok(());
    };
    every(
        &registry.with_capability(Capability::Services),
        format!("sandbox.port_mappings[{i}]"),
        Feature::HostPorts,
    )
}

fn every(drivers: &[Arc<DriverEntry>], field: String, f: Feature) -> Result<(), Status> {
    match drivers.iter().find(|d| !d.has_feature(f)) {
        Some(d) => Err(lacking(field, d, f)),
        None => Ok(()),
    }
}

/// Checks a ProgramService batch from a socket caller against every Services driver.
pub fn check_services(
    req: &ProgramServiceRequest,
    drivers: &[Arc<DriverEntry>],
) -> Result<(), Status> {
    for (i, s) in req.service_upserts.iter().enumerate() {
        if let Some(j) = s
            .ports
            .iter()
            .position(|p| p.protocol == Protocol::Sctp as i32)
        {
            every(
                drivers,
                format!("service_upserts[{i}].ports[{j}].protocol"),
                Feature::Sctp,
            )?;
        }
        if s.session_affinity == SessionAffinity::ClientIp as i32 {
            every(
                drivers,
                format!("service_upserts[{i}].session_affinity"),
                Feature::SessionAffinity,
            )?;
        }
    }
    Ok(())
}

/// Refused unless some driver has `f`: the Policy drivers share the work by kind (one
/// enforces NetworkPolicies in the kernel, another answers DNS questions), and every one is
/// sent every policy, each acting on the kinds it has the feature for.
fn some(drivers: &[Arc<DriverEntry>], field: String, f: Feature) -> Result<(), Status> {
    match drivers.iter().find(|d| d.has_feature(f)) {
        Some(_) => Ok(()),
        None => match drivers.first() {
            Some(d) => Err(lacking(field, d, f)),
            None => Ok(()),
        },
    }
}

/// Checks an ApplyPolicy batch: each policy kind needs a Policy driver with its feature.
pub fn check_policies(
    req: &ApplyPolicyRequest,
    drivers: &[Arc<DriverEntry>],
) -> Result<(), Status> {
    if !req.network_policies.is_empty() {
        some(
            drivers,
            "network_policies[0]".into(),
            Feature::NetworkPolicy,
        )?;
    }
    if !req.cluster_network_policies.is_empty() {
        some(
            drivers,
            "cluster_network_policies[0]".into(),
            Feature::ClusterNetworkPolicy,
        )?;
    }
    // Egress by name is enforced with NetworkPolicies of the host's own.
    if let Some(i) = req.dns_policies.iter().position(|p| p.egress_by_name) {
        some(
            drivers,
            format!("dns_policies[{i}].egress_by_name"),
            Feature::NetworkPolicy,
        )?;
    }
    // DNS policies and hostname grants the host evaluates itself (its DNS server, CheckDns,
    // CheckHostname); drivers with those features get them too.
    Ok(())
}

/// What the host lists in GetInfo: the features some registered driver has.
pub fn advertised(registry: &Registry) -> Vec<i32> {
    let all = [
        Feature::StaticIps,
        Feature::StaticMac,
        Feature::Bandwidth,
        Feature::Sctp,
        Feature::SessionAffinity,
        Feature::HostPorts,
        Feature::NetworkPolicy,
        Feature::DnsPolicy,
        Feature::HostnameGrants,
        Feature::ClusterNetworkPolicy,
        Feature::Devices,
        Feature::Routes,
    ];
    let drivers = registry.drivers();
    all.into_iter()
        .filter(|f| {
            drivers
                .iter()
                .any(|d| d.has(capability_of(*f)) && d.has_feature(*f))
        })
        .map(|f| f as i32)
        .collect()
}

/// The capability a feature belongs to.
fn capability_of(f: Feature) -> Capability {
    match f {
        Feature::StaticIps
        | Feature::StaticMac
        | Feature::Bandwidth
        | Feature::Devices
        | Feature::Routes => Capability::Pods,
        Feature::Sctp | Feature::SessionAffinity | Feature::HostPorts => Capability::Services,
        Feature::NetworkPolicy
        | Feature::ClusterNetworkPolicy
        | Feature::DnsPolicy
        | Feature::HostnameGrants => Capability::Policy,
        Feature::Unspecified => Capability::Unspecified,
    }
}
