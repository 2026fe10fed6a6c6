//! `Services`: the host keeps the desired Service table and fans batches out to every driver
//! serving Services (deltas to drivers in step, the full table to those that are not).

use netlet_sdk::{
    proto::{
        Capability, ListServicesRequest, ListServicesResponse, ProgramServiceRequest,
        ProgramServiceResponse, services_server::Services,
    },
    validate,
};
use tonic::{Request, Response, Status};

use super::{Api, sync_to_drivers};
use crate::error;

#[tonic::async_trait]
impl Services for Api {
    async fn program_service(
        &self,
        req: Request<ProgramServiceRequest>,
    ) -> Result<Response<ProgramServiceResponse>, Status> {
        let req = req.into_inner();
        validate::program_service(&req)?;
        let drivers = self.0.registry.with_capability(Capability::Services);
        if drivers.is_empty() {
            return Err(error::nothing_serves("Services"));
        }
        // Held across the fan-out: batches reach drivers in generation order.
        let mut table = self.0.services.lock().await;
        let prev = table.generation();
        let applied = table.apply(&req)?;
        sync_to_drivers(
            drivers,
            |d| &d.services_generation,
            prev,
            applied,
            &req,
            || table.full_sync_request(),
            |d, r| async move {
                let resp = d.clients.services.clone().program_service(r).await?;
                Ok(resp.into_inner().applied_generation)
            },
        )
        .await?;
        Ok(Response::new(ProgramServiceResponse {
            applied_generation: applied,
        }))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let req = req.into_inner();
        if !req.namespace.is_empty() {
            validate::dns_label("namespace", &req.namespace)?;
        }
        Ok(Response::new(
            self.0.services.lock().await.list(&req.namespace),
        ))
    }
}
