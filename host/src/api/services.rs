//! `Services`: callers of the host socket are one source of Services among others
//! ([`crate::services::sources`]); the node's table is fanned out to every driver serving
//! Services (deltas to drivers in step, the full table to those that are not).

use netlet_sdk::{
    parts::MAX_BATCH_BYTES,
    proto::{
        Capability, DriverGeneration, ListServicesRequest, ListServicesResponse,
        ProgramServiceRequest, ProgramServiceResponse, services_server::Services,
    },
    validate,
};
use tonic::{Request, Response, Status};

use super::{Api, sync_to_drivers};
use crate::services::sources::ServiceView;
use crate::{Host, error};

/// What follows every change of the view: the health-check node ports are brought in line, and
/// every Services driver is brought to the view's table (`delta` from `prev` to drivers that had
/// `prev`, the full table to the others).
pub(crate) async fn push(
    host: &Host,
    view: &ServiceView,
    prev: u64,
    delta: Option<ProgramServiceRequest>,
) -> Result<(), Status> {
    host.health_checks.reconcile(view);
    let drivers = host.registry.with_capability(Capability::Services);
    let now = view.table.generation();
    if drivers.is_empty() || now == 0 {
        return Ok(());
    }
    let delta = delta.unwrap_or(ProgramServiceRequest {
        generation: now,
        ..Default::default()
    });
    sync_to_drivers(
        drivers,
        |d| &d.services_generation,
        prev,
        now,
        &delta,
        || view.table.full_sync_parts(MAX_BATCH_BYTES),
        super::program_service,
    )
    .await
}

#[tonic::async_trait]
impl Services for Api {
    async fn program_service(
        &self,
        req: Request<ProgramServiceRequest>,
    ) -> Result<Response<ProgramServiceResponse>, Status> {
        let req = req.into_inner();
        validate::program_service(&req)?;
        if !req.host_port_upserts.is_empty() || !req.host_port_deletes.is_empty() {
            let field = if req.host_port_upserts.is_empty() {
                "host_port_deletes"
            } else {
                "host_port_upserts"
            };
            return Err(validate::invalid(
                field,
                "host ports come from the port mappings of pods attached with AttachPod; the host does not take them from callers",
            ));
        }
        for (i, s) in req.service_upserts.iter().enumerate() {
            crate::services::view::check_node_ports(
                &format!("service_upserts[{i}]."),
                s,
                &self.0.settings.node_port_range,
            )?;
        }
        let drivers = self.0.registry.with_capability(Capability::Services);
        if drivers.is_empty() {
            return Err(error::nothing_serves("Services"));
        }
        crate::features::check_services(&req, &drivers)?;
        // Held across the fan-out: batches reach drivers in generation order.
        let mut view = self.0.services.lock().await;
        let prev = view.table.generation();
        let (applied, delta) = view.apply_socket(&req)?;
        // The Services whose names may change: the batch's, and any a claim let in or out.
        let keys: Vec<(String, String)> = [&req]
            .into_iter()
            .chain(delta.as_ref())
            .flat_map(|r| {
                r.service_upserts
                    .iter()
                    .filter_map(|s| s.key.as_ref())
                    .chain(&r.service_deletes)
            })
            .map(|k| (k.namespace.clone(), k.name.clone()))
            .collect();
        let pushed = push(&self.0, &view, prev, delta).await;
        drop(view);
        // The zone holds Services, not endpoints: an endpoints-only batch leaves it as it is;
        // a delta changes the zone for its Services only.
        if req.full_sync {
            self.0.refresh_dns_zone(None).await;
        } else {
            self.0.update_dns_zone(None, keys).await;
        }
        pushed?;
        Ok(Response::new(ProgramServiceResponse::from(applied)))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let req = req.into_inner();
        validate::list_services(&req)?;
        let view = self.0.services.lock().await;
        let node_generation = view.table.generation();
        let drivers = self
            .0
            .registry
            .with_capability(Capability::Services)
            .into_iter()
            .map(|d| {
                let g = d.services_generation.lock().map(|g| *g).unwrap_or(0);
                DriverGeneration {
                    driver: d.name.clone(),
                    acknowledged_generation: g,
                    in_sync: g == node_generation,
                }
            })
            .collect();
        let listed = view.table.list(&req.namespace);
        let socket = view.socket_applied();
        Ok(Response::new(ListServicesResponse {
            applied_generation: socket.generation,
            applied_epoch: socket.epoch,
            services: listed.services,
            node_generation,
            drivers,
            host_ports: listed.host_ports,
        }))
    }
}
