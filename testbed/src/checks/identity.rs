//! Identity: a valid GetInfo, a version we share, Probe, and UNIMPLEMENTED for what is not
//! declared.

use netlet_sdk::proto::{
    Capability, GetInfoRequest, ListDevicesRequest, ListPoliciesRequest, ListServicesRequest,
    NetworkReadyRequest, PodNetworkStatusRequest, ProbeRequest,
};
use tonic::Code;

use super::{check, expect_code, expect_ok};
use crate::conformance::{Check, Outcome};

pub fn checks() -> Vec<Check> {
    vec![
        check!("identity/get-info-valid", None, |ctx| {
            let i = expect_ok(
                "GetInfo",
                ctx.clients
                    .identity
                    .clone()
                    .get_info(GetInfoRequest::default())
                    .await,
            )?
            .into_inner();
            netlet_sdk::validate::dns_label("name", &i.name)
                .map_err(|s| s.message().to_string())?;
            if i.vendor_version.is_empty() {
                return Err("vendor_version is empty".into());
            }
            if i.api_versions.is_empty() {
                return Err("api_versions is empty".into());
            }
            if !i
                .services
                .iter()
                .any(|s| s == netlet_proto::IDENTITY_SERVICE)
            {
                return Err(format!(
                    "services {:?} lacks {}",
                    i.services,
                    netlet_proto::IDENTITY_SERVICE
                ));
            }
            for c in &i.capabilities {
                let cap =
                    Capability::try_from(*c).map_err(|_| format!("unknown capability {c}"))?;
                if cap == Capability::Unspecified {
                    return Err("CAPABILITY_UNSPECIFIED listed".into());
                }
                for s in netlet_proto::services_of(cap) {
                    if !i.services.iter().any(|x| x == s) {
                        return Err(format!(
                            "declares {} but services lacks {s}",
                            cap.as_str_name()
                        ));
                    }
                }
            }
            if i.capabilities.contains(&(Capability::Pods as i32)) && i.networks.is_empty() {
                return Err("declares CAPABILITY_PODS but no network".into());
            }
            Ok(Outcome::Passed)
        }),
        check!("identity/version-negotiation", None, |ctx| {
            let i = &ctx.info;
            match netlet_proto::negotiate_version(
                netlet_proto::SUPPORTED_API_VERSIONS,
                &i.api_versions,
            ) {
                Some(_) => Ok(Outcome::Passed),
                None => Err(format!(
                    "no common API version: target {:?}, suite {:?}",
                    i.api_versions,
                    netlet_proto::SUPPORTED_API_VERSIONS
                )),
            }
        }),
        check!("identity/probe", None, |ctx| {
            for _ in 0..ctx.replays {
                let p = expect_ok(
                    "Probe",
                    ctx.clients.identity.clone().probe(ProbeRequest {}).await,
                )?
                .into_inner();
                if !p.ready && p.reason.is_empty() {
                    return Err("Probe not ready without a reason".into());
                }
            }
            Ok(Outcome::Passed)
        }),
        check!("identity/unimplemented-when-undeclared", None, |ctx| {
            let declared = |c: Capability| ctx.info.capabilities.contains(&(c as i32));
            let mut tried = Vec::new();
            let c = &ctx.clients;
            if !declared(Capability::Node) {
                expect_code(
                    "Node/NetworkReady",
                    c.node
                        .clone()
                        .network_ready(NetworkReadyRequest::default())
                        .await,
                    Code::Unimplemented,
                    None,
                )?;
                tried.push("Node");
            }
            if !declared(Capability::Pods) {
                let r = c
                    .pods
                    .clone()
                    .pod_network_status(PodNetworkStatusRequest {
                        sandbox_id: "conformance".into(),
                    })
                    .await;
                expect_code("Pods/PodNetworkStatus", r, Code::Unimplemented, None)?;
                tried.push("Pods");
            }
            if !declared(Capability::Services) {
                expect_code(
                    "Services/ListServices",
                    c.services
                        .clone()
                        .list_services(ListServicesRequest::default())
                        .await,
                    Code::Unimplemented,
                    None,
                )?;
                tried.push("Services");
            }
            if !declared(Capability::Policy) {
                expect_code(
                    "Policy/ListPolicies",
                    c.policy.clone().list_policies(ListPoliciesRequest {}).await,
                    Code::Unimplemented,
                    None,
                )?;
                tried.push("Policy");
            }
            if !declared(Capability::Devices) {
                expect_code(
                    "Devices/ListDevices",
                    c.devices
                        .clone()
                        .list_devices(ListDevicesRequest::default())
                        .await,
                    Code::Unimplemented,
                    None,
                )?;
                tried.push("Devices");
            }
            if !declared(Capability::Cluster) {
                expect_code(
                    "Cluster/ListNodes",
                    c.cluster
                        .clone()
                        .list_nodes(netlet_sdk::proto::ListNodesRequest::default())
                        .await,
                    Code::Unimplemented,
                    None,
                )?;
                tried.push("Cluster");
            }
            if tried.is_empty() {
                Ok(Outcome::Skipped("target declares every capability".into()))
            } else {
                Ok(Outcome::Passed)
            }
        }),
    ]
}
