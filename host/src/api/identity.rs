//! `Identity`: the host describes itself like any driver (the host is a driver of drivers).

use netlet_sdk::proto::{
    Capability, EndpointRole, Features, GetInfoRequest, GetInfoResponse, ProbeRequest,
    ProbeResponse, identity_server::Identity,
};
use tonic::{Request, Response, Status};

use super::Api;
use crate::served::{HOST_CAPABILITIES, host_services};

#[tonic::async_trait]
impl Identity for Api {
    async fn get_info(
        &self,
        _req: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        let mut networks: Vec<String> = self
            .0
            .registry
            .drivers()
            .iter()
            .filter(|d| d.has(Capability::Pods))
            .flat_map(|d| d.info.networks.clone())
            .collect();
        networks.sort();
        networks.dedup();
        // The host serves every capability itself (its own views: attachments, Services,
        // policies, devices); calls that need a driver answer UNAVAILABLE while none serves
        // them, never UNIMPLEMENTED.
        Ok(Response::new(GetInfoResponse {
            name: "netlet".into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            api_versions: netlet_proto::SUPPORTED_API_VERSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            capabilities: HOST_CAPABILITIES.iter().map(|c| *c as i32).collect(),
            services: host_services(),
            networks,
            role: EndpointRole::Host as i32,
            features: Some(Features {
                supported: crate::features::advertised(&self.0.registry),
            }),
        }))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let r = self.0.readiness("");
        Ok(Response::new(ProbeResponse {
            ready: r.ready,
            reason: r.reason,
            message: r.message,
        }))
    }
}
