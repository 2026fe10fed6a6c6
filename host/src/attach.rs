//! Multi-network attach with rollback, idempotent detach in reverse, and garbage collection.

use std::sync::Arc;

use netlet_sdk::proto::{
    AttachPodRequest, AttachPodResponse, Attachment, Capability, DetachPodRequest,
    GarbageCollectRequest, HostPorts, NetworkSelection, PodAttachments, PodSandbox,
};
use netlet_sdk::state::is_published;
use netlet_sdk::validate::field_error;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::{Host, error, registry::DriverEntry};

/// The network used when a request names none.
pub const DEFAULT_NETWORK: &str = "default";

/// The contract's defaults for AttachPod's selections (pods.proto), one owner: the SDK.
pub use netlet_sdk::state::with_defaults as normalize;

/// The selection that reproduces an attachment (for detach and for replay to a driver).
pub fn selection_of(a: &Attachment) -> NetworkSelection {
    NetworkSelection {
        network: a.network.clone(),
        interface_name: a.interface_name.clone(),
        ips: a.ips.iter().map(|ip| ip.address.clone()).collect(),
        mac: a.mac.clone(),
        default_route: Some(a.default_route),
        mtu: a.mtu,
        device_id: a.device_id.clone(),
        ..Default::default()
    }
}

/// The host ports of an attached pod (CRI port mappings) with the addresses they lead to: those
/// of the attachment carrying the default route (else the first), one per family. `None` when
/// the pod maps no port or has no address.
pub fn host_ports_of(pod: &PodAttachments) -> Option<HostPorts> {
    let sandbox = pod.sandbox.as_ref()?;
    let port_mappings = netlet_sdk::state::published(&sandbox.port_mappings);
    if port_mappings.is_empty() {
        return None;
    }
    let a = pod
        .attachments
        .iter()
        .find(|a| a.default_route)
        .or_else(|| pod.attachments.first())?;
    let mut pod_ips: Vec<std::net::IpAddr> = Vec::new();
    for ip in &a.ips {
        let addr = ip.address.split('/').next().unwrap_or_default();
        if let Ok(ip) = addr.parse::<std::net::IpAddr>()
            && !pod_ips.iter().any(|p| p.is_ipv4() == ip.is_ipv4())
        {
            pod_ips.push(ip);
        }
    }
    if pod_ips.is_empty() {
        return None;
    }
    Some(HostPorts {
        sandbox_id: sandbox.id.clone(),
        pod: pod_name(sandbox),
        pod_ips: pod_ips.iter().map(ToString::to_string).collect(),
        port_mappings,
    })
}

fn pod_name(s: &PodSandbox) -> String {
    if s.name.is_empty() {
        s.id.clone()
    } else {
        format!("{}/{}", s.namespace, s.name)
    }
}

impl Host {
    /// The pods policy selectors resolve against: this node's, from its attachments
    /// (namespace, name, labels and addresses come with AttachPod).
    fn policy_cluster(&self) -> Option<crate::netpol::Cluster> {
        let pods = match self.store.attachments() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read attachments to resolve policies");
                return None;
            }
        };
        let pods: Vec<crate::netpol::PodInfo> = pods
            .iter()
            .filter_map(|p| {
                let s = p.sandbox.as_ref()?;
                Some(crate::netpol::PodInfo {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    labels: s.labels.clone().into_iter().collect(),
                    addresses: p
                        .attachments
                        .iter()
                        .flat_map(|a| &a.ips)
                        .filter_map(|ip| ip.address.split('/').next()?.parse().ok())
                        .collect(),
                    ports: s
                        .port_mappings
                        .iter()
                        .filter(|m| !m.name.is_empty())
                        .filter_map(|m| {
                            let proto = netlet_sdk::proto::Protocol::try_from(m.protocol)
                                .ok()
                                .filter(|p| *p != netlet_sdk::proto::Protocol::Unspecified)
                                .unwrap_or(netlet_sdk::proto::Protocol::Tcp);
                            Some((
                                m.name.clone(),
                                (proto, u16::try_from(m.container_port).ok()?),
                            ))
                        })
                        .collect(),
                    local: true,
                })
            })
            .collect();
        // Pods of other nodes and namespaces' labels from the object sources (shared, not copied);
        // an address this node attached is this node's pod, whatever a Pod object says.
        let mut cluster = self.cluster_objects();
        // A local pod's Pod object, when a source has one, is the truth about its labels (the
        // sandbox's are as of its creation; a relabel changes only the object) and adds the
        // named ports.
        let mut pods = pods;
        let index: std::collections::HashMap<(&str, &str), usize> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.namespace.as_str(), p.name.as_str()), i))
            .collect();
        let found: Vec<(usize, &crate::netpol::PodInfo)> = cluster
            .remote
            .iter()
            .filter_map(|o| Some((*index.get(&(o.namespace.as_str(), o.name.as_str()))?, o)))
            .collect();
        drop(index);
        for (i, obj) in found {
            pods[i].labels = obj.labels.clone();
            for (n, p) in &obj.ports {
                pods[i].ports.entry(n.clone()).or_insert(*p);
            }
        }
        cluster.pods = pods;
        Some(cluster)
    }

    /// Brings the policies' resolved selectors in line with the attached pods and hands the
    /// NetworkPolicies whose resolution changed to the Policy drivers. `always`: also when no
    /// NetworkPolicy is wanted yet (before one is applied).
    /// An error when a Policy driver did not take the change (it gets a full sync at its next
    /// resync).
    /// The pods' egress-by-name NetworkPolicies (see [`crate::policy::Item::DnsEgress`]) follow
    /// too.
    pub(crate) async fn refresh_policy_pods(&self, always: bool) -> Result<(), Status> {
        let egress = self.dns_egress_wanted();
        let mut view = self.policies.lock().await;
        if !always && !view.has_network_policies() && egress.is_empty() {
            return Ok(());
        }
        let Some(cluster) = self.policy_cluster() else {
            return Err(Status::unavailable("cannot read the attachments"));
        };
        let prev = view.table.generation();
        // Until every object source is read, drivers keep what they enforce (their first
        // full sync follows the last source's first read).
        if let Some(batch) = view.set_cluster(cluster).filter(|_| self.sources_loaded())
            && let Err(e) = crate::api::policy::push(self, &view, prev, &batch).await
        {
            tracing::warn!(error = %e, "policy drivers not brought up to date with the pods; retried at their resync");
            return Err(e);
        }
        self.settle_dns_egress(&mut view, egress).await
    }

    async fn detach_one(
        &self,
        driver: &DriverEntry,
        sandbox_id: &str,
        netns_path: &str,
        sel: NetworkSelection,
    ) -> Result<(), Status> {
        let network = sel.network.clone();
        driver
            .clients
            .pods
            .clone()
            .detach_pod(DetachPodRequest {
                sandbox_id: sandbox_id.to_string(),
                netns_path: netns_path.to_string(),
                networks: vec![sel],
            })
            .instrument(tracing::info_span!("detach", driver = %driver.name, network = %network))
            .await
            .map(|_| ())
            .map_err(|s| error::from_driver(driver, Some(&network), s))
    }

    async fn rollback(
        &self,
        sandbox: &PodSandbox,
        done: Vec<(NetworkSelection, Arc<DriverEntry>)>,
    ) {
        for (sel, d) in done.into_iter().rev() {
            let net = sel.network.clone();
            if let Err(e) = self
                .detach_one(&d, &sandbox.id, &sandbox.netns_path, sel)
                .await
            {
                // The driver keeps its own record; GC or a later detach finishes the job.
                tracing::error!(network = %net, driver = %d.name, error = %e, "rollback detach failed");
            }
        }
    }

    /// Hands a pod's host ports (or their removal) to the drivers serving Services. A driver
    /// that fails is brought up to date at its next resync (a full sync), as for every change
    /// of the Service table.
    async fn hand_host_ports(&self, sandbox_id: &str, ports: Option<HostPorts>) {
        let mut view = self.services.lock().await;
        let prev = view.table.generation();
        let Some(delta) = view.set_host_ports(sandbox_id, ports) else {
            return;
        };
        if let Err(e) = crate::api::services::push(self, &view, prev, Some(delta)).await {
            tracing::warn!(error = %e, "host ports not handed to every Services driver yet; retried at its resync");
        }
    }

    /// AttachPod: all requested networks, in order, or none.
    pub async fn attach(&self, req: AttachPodRequest) -> Result<AttachPodResponse, Status> {
        let sandbox = req
            .sandbox
            .ok_or_else(|| netlet_sdk::validate::invalid("sandbox", "required"))?;
        let span = tracing::info_span!("attach", pod = %pod_name(&sandbox), sandbox = %sandbox.id);
        async move {
            let selections = normalize(req.networks);
            let _guard = self.lock_key(&format!("sandbox/{}", sandbox.id)).await;
            if let Some(existing) = self
                .store
                .attachment(&sandbox.id)
                .map_err(error::from_store)?
            {
                let same = existing.attachments.len() == selections.len()
                    && existing.attachments.iter().zip(&selections).all(|(a, s)| {
                        a.network == s.network && a.interface_name == s.interface_name
                    });
                if same {
                    return Ok(AttachPodResponse {
                        attachments: existing.attachments,
                    });
                }
                return Err(field_error(
                    Code::AlreadyExists,
                    "sandbox.id",
                    format!(
                        "{:?} is already attached to other networks; detach it first",
                        sandbox.id
                    ),
                    "SANDBOX_ATTACHED_DIFFERENTLY",
                ));
            }
            // Host ports another pod holds: refused before anything is made (pods with host
            // ports attach one at a time, so two cannot both pass the check). Pods without
            // any never touch the Service view.
            // Never the node's or the machine's own namespace, never a file that is not one:
            // a driver would reconfigure (or delete links in) whatever it is pointed at.
            if let Some(why) =
                netlet_sdk::netns::unusable_for_a_pod(std::path::Path::new(&sandbox.netns_path))
            {
                return Err(field_error(
                    Code::InvalidArgument,
                    "sandbox.netns_path",
                    why,
                    "NETNS_INVALID",
                ));
            }
            crate::features::check_host_ports(&sandbox, &self.registry)?;
            let has_ports = sandbox.port_mappings.iter().any(is_published);
            let _ports_guard = if has_ports {
                let guard = self.lock_key("host-ports").await;
                self.services.lock().await.check_host_ports(
                    &sandbox.id,
                    "sandbox.port_mappings",
                    &sandbox.port_mappings,
                )?;
                Some(guard)
            } else {
                None
            };
            // Resolve every network before touching anything.
            let mut plan = Vec::with_capacity(selections.len());
            for (i, sel) in selections.into_iter().enumerate() {
                let d = self
                    .registry
                    .driver_for_network(&sel.network)
                    .ok_or_else(|| {
                        field_error(
                            Code::FailedPrecondition,
                            format!("networks[{i}].network"),
                            format!("no registered driver serves network {:?}", sel.network),
                            "NETWORK_NOT_SERVED",
                        )
                    })?;
                crate::features::check_selection(i, &sel, &sandbox, &d)?;
                plan.push((sel, d));
            }
            let mut done: Vec<(NetworkSelection, Arc<DriverEntry>)> = Vec::new();
            let mut attachments = Vec::new();
            for (i, (sel, d)) in plan.into_iter().enumerate() {
                let call = d
                    .clients
                    .pods
                    .clone()
                    .attach_pod(AttachPodRequest {
                        sandbox: Some(sandbox.clone()),
                        networks: vec![sel.clone()],
                    })
                    .instrument(
                        tracing::info_span!("driver", driver = %d.name, network = %sel.network),
                    )
                    .await;
                let net = sel.network.clone();
                let result = match call {
                    Ok(resp) => resp
                        .into_inner()
                        .attachments
                        .into_iter()
                        .next()
                        .ok_or_else(|| {
                            Status::internal(format!(
                                "network {net:?} (driver {:?}): AttachPod answered no attachment",
                                d.name
                            ))
                        }),
                    Err(s) => Err(error::from_driver_at(&d, Some(&net), Some(i), s)),
                };
                // Whatever the driver answered, it may have done something: roll back this one
                // too on failure (detach is idempotent).
                done.push((sel.clone(), d.clone()));
                match result {
                    Ok(mut a) => {
                        a.network = sel.network.clone();
                        a.driver = d.name.clone();
                        if a.interface_name.is_empty() {
                            a.interface_name = sel.interface_name.clone();
                        }
                        if a.netns_path.is_empty() {
                            a.netns_path = sandbox.netns_path.clone();
                        }
                        attachments.push(a);
                    }
                    Err(e) => {
                        tracing::warn!(network = %net, error = %e, "attach failed; rolling back");
                        self.rollback(&sandbox, done).await;
                        return Err(e);
                    }
                }
            }
            // With the node-local DNS server, the pod is told to use it (then its fallback).
            if let Some(cfg) = self.pod_dns_config(&sandbox) {
                for a in &mut attachments {
                    a.dns = Some(cfg.clone());
                }
            }
            let record = PodAttachments {
                sandbox: Some(sandbox.clone()),
                attachments,
            };
            if let Err(e) = self.store.put_attachment(&record).await {
                self.rollback(&sandbox, done).await;
                return Err(error::from_store(e));
            }
            tracing::info!(networks = record.attachments.len(), "pod attached");
            self.dns_pod_changed(None, Some(&record));
            if has_ports {
                self.hand_host_ports(&sandbox.id, host_ports_of(&record))
                    .await;
            }
            // The pod's policies are in the kernel before the runtime hears of its network (and
            // starts its containers): a pod a policy selects is governed from its first packet.
            // When the Policy drivers cannot take the change, the attach is undone (fail closed).
            if let Err(e) = self.refresh_policy_pods(false).await {
                tracing::warn!(error = %e, "policies for the pod not in place; rolling back");
                self.rollback(&sandbox, done).await;
                if let Err(se) = self.store.delete_attachment(&sandbox.id).await {
                    tracing::error!(error = %se, "cannot remove the rolled-back attachment record");
                }
                if has_ports {
                    self.hand_host_ports(&sandbox.id, None).await;
                }
                self.dns_pod_changed(Some(&record), None);
                let _ = self.refresh_policy_pods(false).await;
                return Err(Status::unavailable(format!(
                    "the pod's network policies could not be put in place (retry): {}",
                    e.message()
                )));
            }
            Ok(AttachPodResponse {
                attachments: record.attachments,
            })
        }
        .instrument(span)
        .await
    }

    /// DetachPod: the attachments `only` names (every one when empty), in reverse order;
    /// unknown sandboxes, and selections matching no attachment, are OK. A selection matches the
    /// attachments of its network, and of its interface when it names one. The record keeps
    /// what stays attached.
    pub async fn detach(&self, sandbox_id: &str, only: &[NetworkSelection]) -> Result<(), Status> {
        let span = tracing::info_span!("detach", sandbox = %sandbox_id);
        async move {
            let _guard = self.lock_key(&format!("sandbox/{sandbox_id}")).await;
            let Some(record) = self
                .store
                .attachment(sandbox_id)
                .map_err(error::from_store)?
            else {
                return Ok(());
            };
            let netns = record
                .sandbox
                .as_ref()
                .map(|s| s.netns_path.clone())
                .unwrap_or_default();
            let chosen = |a: &Attachment| {
                only.is_empty()
                    || only.iter().any(|s| {
                        s.network == a.network
                            && (s.interface_name.is_empty() || s.interface_name == a.interface_name)
                    })
            };
            let mut rest = record.clone();
            rest.attachments.retain(|a| !chosen(a));
            if rest.attachments.len() == record.attachments.len() {
                return Ok(());
            }
            for a in record.attachments.iter().rev().filter(|a| chosen(a)) {
                let d = self
                    .registry
                    .get(&a.driver)
                    .or_else(|| self.registry.driver_for_network(&a.network))
                    .ok_or_else(|| {
                        Status::unavailable(format!(
                            "network {:?}: driver {:?} is not registered; retry when it is back",
                            a.network, a.driver
                        ))
                    })?;
                self.detach_one(&d, sandbox_id, &netns, selection_of(a))
                    .await?;
            }
            let published = record
                .sandbox
                .as_ref()
                .is_some_and(|s| s.port_mappings.iter().any(is_published));
            if rest.attachments.is_empty() {
                self.store
                    .forget_attachment(sandbox_id)
                    .await
                    .map_err(error::from_store)?;
                if published {
                    self.hand_host_ports(sandbox_id, None).await;
                }
                tracing::info!("pod detached");
            } else {
                self.store
                    .put_attachment(&rest)
                    .await
                    .map_err(error::from_store)?;
                if published {
                    // The host ports follow the pod's remaining addresses (or go with them).
                    self.hand_host_ports(sandbox_id, host_ports_of(&rest)).await;
                }
                tracing::info!(
                    networks = rest.attachments.len(),
                    "pod partly detached; the rest stays"
                );
            }
            // A detached pod's addresses leave the sets; a driver that misses it is brought up to
            // date at its resync (the pod is gone either way).
            self.dns_pod_changed(
                Some(&record),
                (!rest.attachments.is_empty()).then_some(&rest),
            );
            let _ = self.refresh_policy_pods(false).await;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// GarbageCollect: detaches every stored sandbox not in `valid`.
    pub async fn garbage_collect(
        &self,
        req: &GarbageCollectRequest,
    ) -> Result<Vec<String>, Status> {
        let valid = &req.valid_sandbox_ids;
        let stale = netlet_sdk::state::stale_sandboxes(
            req,
            self.store.attachments().map_err(error::from_store)?,
        )?;
        let only = netlet_sdk::state::gc_selection(req);
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for id in stale {
            match self.detach(&id, &only).await {
                Ok(()) => removed.push(id),
                Err(e) => failed.push(format!("{id}: {}", e.message())),
            }
        }
        // Drivers may hold sandboxes the host never recorded (an attach whose answer was lost);
        // they keep what the runtime still has and what the host still holds.
        let mut keep: Vec<String> = valid.to_vec();
        keep.extend(
            self.store
                .attachments()
                .map_err(error::from_store)?
                .into_iter()
                .filter_map(|p| p.sandbox.map(|s| s.id)),
        );
        for d in self
            .registry
            .drivers()
            .into_iter()
            .filter(|d| d.has(Capability::Pods))
        {
            let r = d
                .clients
                .pods
                .clone()
                .garbage_collect(GarbageCollectRequest {
                    valid_sandbox_ids: keep.clone(),
                    network: String::new(),
                })
                .await;
            match r {
                Ok(resp) => {
                    for id in resp.into_inner().removed_sandbox_ids {
                        if !removed.contains(&id) {
                            removed.push(id);
                        }
                    }
                }
                Err(e) => failed.push(format!("driver {}: {}", d.name, e.message())),
            }
        }
        if failed.is_empty() {
            Ok(removed)
        } else {
            Err(Status::unavailable(format!(
                "garbage collection incomplete (removed {removed:?}): {}",
                failed.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_lead_to_the_default_route_attachment() {
        use netlet_sdk::proto::{IpConfig, PortMapping};
        let att = |net: &str, default_route, ips: &[&str]| Attachment {
            network: net.into(),
            default_route,
            ips: ips
                .iter()
                .map(|a| IpConfig {
                    address: a.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut pod = PodAttachments {
            sandbox: Some(PodSandbox {
                id: "s1".into(),
                name: "web".into(),
                namespace: "shop".into(),
                port_mappings: vec![PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            attachments: vec![
                att("storage", false, &["192.168.50.5/24"]),
                att(
                    "default",
                    true,
                    &["10.244.0.5/24", "fd00::5/64", "10.244.0.6/24"],
                ),
            ],
        };
        let hp = host_ports_of(&pod).unwrap();
        assert_eq!(
            (hp.sandbox_id.as_str(), hp.pod.as_str()),
            ("s1", "shop/web")
        );
        assert_eq!(hp.pod_ips, ["10.244.0.5", "fd00::5"], "one per family");
        // A containerPort without a hostPort (host_port 0) publishes nothing.
        let unpublished = PortMapping {
            host_port: 0,
            container_port: 9090,
            ..Default::default()
        };
        pod.sandbox
            .as_mut()
            .unwrap()
            .port_mappings
            .push(unpublished.clone());
        assert_eq!(host_ports_of(&pod).unwrap().port_mappings.len(), 1);
        pod.sandbox.as_mut().unwrap().port_mappings = vec![unpublished];
        assert_eq!(host_ports_of(&pod), None);
        pod.sandbox.as_mut().unwrap().port_mappings.clear();
        assert_eq!(host_ports_of(&pod), None);
    }

    #[test]
    fn defaults_fill_in() {
        let n = normalize(vec![]);
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].network.as_str(), n[0].interface_name.as_str()),
            ("default", "eth0")
        );
        assert_eq!(n[0].default_route, Some(true));
        let n = normalize(vec![
            NetworkSelection {
                network: "default".into(),
                ..Default::default()
            },
            NetworkSelection {
                network: "storage".into(),
                ..Default::default()
            },
        ]);
        assert_eq!(n[1].interface_name, "net1");
        assert_eq!(n[1].default_route, Some(false));
    }
}
