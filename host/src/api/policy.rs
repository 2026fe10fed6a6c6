//! `Policy`: the desired policy table, fanned out like Services. DNS policies and hostname
//! grants are evaluated by the host itself (its node-local DNS server, `CheckDns`,
//! `CheckHostname`), with the WebAssembly modules they name.

use netlet_sdk::{
    parts::{MAX_BATCH_BYTES, split},
    proto::{
        ApplyPolicyRequest, ApplyPolicyResponse, Capability, CheckDnsRequest, CheckDnsResponse,
        CheckHostnameRequest, CheckHostnameResponse, ListPoliciesRequest, ListPoliciesResponse,
        policy_server::Policy,
    },
    validate,
};
use tonic::{Request, Response, Status};

use super::{Api, sync_to_drivers};
use crate::error;

/// Hands a batch of the policy table (`prev` → the table's generation) to every driver that
/// serves Policy; a driver that refuses it gets the full table.
pub(crate) async fn push(
    host: &crate::Host,
    view: &crate::policy::PolicyView,
    prev: u64,
    out: &ApplyPolicyRequest,
) -> Result<(), Status> {
    let drivers = host.registry.with_capability(Capability::Policy);
    if drivers.is_empty() {
        return Ok(());
    }
    let table = &view.table;
    sync_to_drivers(
        drivers,
        |d| &d.policy_generation,
        prev,
        table.generation(),
        out,
        || split(table.full_sync_request(), MAX_BATCH_BYTES),
        super::apply_policy,
    )
    .await
}

#[tonic::async_trait]
impl Policy for Api {
    async fn apply_policy(
        &self,
        req: Request<ApplyPolicyRequest>,
    ) -> Result<Response<ApplyPolicyResponse>, Status> {
        let req = req.into_inner();
        validate::apply_policy(&req)?;
        let drivers = self.0.registry.with_capability(Capability::Policy);
        let host_only = req.network_policies.is_empty()
            && req.cluster_network_policies.is_empty()
            && req.address_sets.is_empty()
            && req.address_set_changes.is_empty()
            && req.address_set_deletes.is_empty();
        if drivers.is_empty() && !host_only {
            return Err(error::nothing_serves("Policy"));
        }
        crate::features::check_policies(&req, &drivers)?;
        if let Err((i, field, why)) =
            crate::dns::policy::Policies::check_modules(&self.0.modules, &req.dns_policies)
        {
            return Err(validate::invalid(format!("dns_policies[{i}].{field}"), why));
        }
        if let Err((i, field, why)) =
            crate::grants::check_modules(&self.0.modules, &req.hostname_grants)
        {
            return Err(validate::invalid(
                format!("hostname_grants[{i}].{field}"),
                why,
            ));
        }
        let selectors =
            !req.network_policies.is_empty() || !req.cluster_network_policies.is_empty();
        if selectors && !self.0.policies.lock().await.has_network_policies() {
            // The first policies with selectors: the view starts following the pods now (it
            // does from then on, at every attach, detach and manifest change). A driver that
            // misses this gets the batch below (or a full sync) anyway.
            let _ = self.0.refresh_policy_pods(true).await;
        }
        let t0 = std::time::Instant::now();
        let mut view = self.0.policies.lock().await;
        let locked = t0.elapsed();
        let prev = view.table.generation();
        let (applied, out) = view.apply_socket(&req)?;
        let viewed = t0.elapsed();
        if let Some(out) = out {
            push(&self.0, &view, prev, &out).await?;
        }
        drop(view);
        if !req.dns_policies.is_empty() || req.full_sync || !req.deletes.is_empty() {
            self.0.refresh_dns_policies().await;
        }
        tracing::debug!(
            lock_us = locked.as_micros() as u64,
            view_us = (viewed - locked).as_micros() as u64,
            total_us = t0.elapsed().as_micros() as u64,
            "policies applied"
        );
        Ok(Response::new(ApplyPolicyResponse::from(applied)))
    }

    async fn check_dns(
        &self,
        req: Request<CheckDnsRequest>,
    ) -> Result<Response<CheckDnsResponse>, Status> {
        let req = req.into_inner();
        validate::check_dns(&req)?;
        Ok(Response::new(self.0.check_dns(&req).await))
    }

    async fn check_hostname(
        &self,
        req: Request<CheckHostnameRequest>,
    ) -> Result<Response<CheckHostnameResponse>, Status> {
        let req = req.into_inner();
        validate::check_hostname(&req)?;
        Ok(Response::new(self.0.check_hostname(&req).await))
    }

    async fn list_policies(
        &self,
        _req: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let mut list = self.0.policies.lock().await.list();
        list.modules = crate::grants::module_list(&self.0.modules);
        list.hostname_claims = self.0.hostname_audit().await;
        Ok(Response::new(list))
    }
}
