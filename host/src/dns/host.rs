//! How the host feeds its DNS server: the cluster zone from the Services it holds, the address →
//! pod map from its attachments, the DNS policies from its policy view, and the DNS config pods
//! are given.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use netlet_sdk::proto::{DnsConfig, PodAttachments, PodSandbox};

use super::egress::PodKey;
use super::policy::{Client, Policies};
use super::zone::Zone;
use crate::Host;
use crate::policy::{Item, Key, PolicyView};
use crate::services::sources::Source;
use tonic::Status;

/// One Service object as an object source (the manifests, the Kubernetes API) holds it, with
/// its EndpointSlices. Shared, not copied: the Kubernetes source hands over its reflectors' own
/// objects.
#[derive(Debug, Clone)]
pub struct ServiceObject {
    /// The Service.
    pub service: Arc<KService>,
    /// Its EndpointSlices.
    pub slices: Vec<Arc<EndpointSlice>>,
}

/// The Service objects an object source last held, by `(namespace, name)` (kept for the zone
/// changes another source causes).
pub type ServiceObjects = HashMap<(String, String), ServiceObject>;

/// What one object source now holds of some Services (`None`: nothing).
pub type ServiceChanges = (Source, Vec<((String, String), Option<ServiceObject>)>);

/// Services with their slices (a slice names its Service by label), by key.
pub fn group_services(
    services: impl IntoIterator<Item = Arc<KService>>,
    slices: impl IntoIterator<Item = Arc<EndpointSlice>>,
) -> ServiceObjects {
    let mut out: ServiceObjects = services
        .into_iter()
        .map(|s| {
            let key = (
                s.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                s.metadata.name.clone().unwrap_or_default(),
            );
            (
                key,
                ServiceObject {
                    service: s,
                    slices: Vec::new(),
                },
            )
        })
        .collect();
    for s in slices {
        let Some(svc) = crate::services::view::slice_service(&s) else {
            continue;
        };
        if let Some(o) = out.get_mut(&(svc.namespace, svc.name)) {
            o.slices.push(s);
        }
    }
    out
}

/// A Service of the table as the zone needs it: its addresses and named ports (name, protocol
/// in lower case, port).
fn table_records(s: &netlet_sdk::proto::Service) -> (Vec<IpAddr>, Vec<(String, String, u16)>) {
    let ips: Vec<IpAddr> = s
        .cluster_ips
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let ports = s
        .ports
        .iter()
        .filter(|p| !p.name.is_empty())
        .map(|p| {
            let proto = netlet_sdk::proto::Protocol::try_from(p.protocol)
                .ok()
                .filter(|p| *p != netlet_sdk::proto::Protocol::Unspecified)
                .unwrap_or(netlet_sdk::proto::Protocol::Tcp);
            let proto = proto
                .as_str_name()
                .trim_start_matches("PROTOCOL_")
                .to_ascii_lowercase();
            (p.name.clone(), proto, p.port as u16)
        })
        .collect();
    (ips, ports)
}

/// Puts one Service's records in `zone`: from the first object source holding it, else from
/// the table (a Service a socket caller programmed), else none.
fn rezone(
    zone: &mut Zone,
    objects: &BTreeMap<Source, ServiceObjects>,
    table: &netlet_sdk::state::ServiceTable,
    key: &(String, String),
) {
    if let Some(o) = objects.values().find_map(|m| m.get(key)) {
        let slices: Vec<&EndpointSlice> = o.slices.iter().map(|s| s.as_ref()).collect();
        zone.set_object(&o.service, &slices);
    } else if let Some((Some(s), _)) = table.entry(&crate::services::view::key(&key.0, &key.1)) {
        let (ips, ports) = table_records(s);
        zone.add_cluster_ip_service(&key.0, &key.1, &ips, &ports);
    } else {
        zone.remove_service(&key.0, &key.1);
    }
}

impl Host {
    /// Rebuilds the cluster zone: the object sources' Services and EndpointSlices (`m` being
    /// `source`'s now, the others as last read), and the Services socket callers programmed.
    pub async fn refresh_dns_zone(&self, m: Option<(Source, ServiceObjects)>) {
        let Some(dns) = &self.dns else { return };
        let view = self.services.lock().await;
        let all = {
            let mut all = self.dns_objects.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((source, m)) = m {
                all.insert(source, m);
            }
            all
        };
        let mut zone = Zone::new(&dns.config().domain);
        let mut keys: BTreeSet<&(String, String)> = all.values().flat_map(|m| m.keys()).collect();
        let table_keys: Vec<(String, String)> = view
            .table
            .services()
            .filter_map(|s| s.key.as_ref())
            .map(|k| (k.namespace.clone(), k.name.clone()))
            .collect();
        keys.extend(table_keys.iter());
        for key in keys {
            rezone(&mut zone, &all, &view.table, key);
        }
        drop(all);
        drop(view);
        dns.set_zone(zone);
    }

    /// Changes the cluster zone for some Services only: `changes` are what `source` now holds
    /// of each (`None`: nothing), `keys` further Services to look at again (a socket caller's).
    pub async fn update_dns_zone(
        &self,
        changes: Option<ServiceChanges>,
        keys: impl IntoIterator<Item = (String, String)>,
    ) {
        let Some(dns) = &self.dns else { return };
        let mut touched: Vec<(String, String)> = keys.into_iter().collect();
        if touched.is_empty() && changes.as_ref().is_none_or(|(_, c)| c.is_empty()) {
            // An endpoints-only batch: nothing to look at, not even the view's lock.
            return;
        }
        let view = self.services.lock().await;
        let mut all = self.dns_objects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((source, changes)) = changes {
            let mine = all.entry(source).or_default();
            for (key, o) in changes {
                match o {
                    Some(o) => mine.insert(key.clone(), o),
                    None => mine.remove(&key),
                };
                touched.push(key);
            }
        }
        dns.update_zone(|z| {
            for key in &touched {
                rezone(z, &all, &view.table, key);
            }
        });
    }

    /// The DNS client a stored pod is, and its addresses.
    fn dns_client_of(dns: &super::Dns, p: &PodAttachments) -> Option<(Arc<Client>, Vec<IpAddr>)> {
        let s = p.sandbox.as_ref()?;
        let search = p
            .attachments
            .iter()
            .filter_map(|a| a.dns.as_ref())
            .map(|d| d.searches.clone())
            .find(|s| !s.is_empty())
            .or_else(|| {
                s.dns_config
                    .as_ref()
                    .map(|d| d.searches.clone())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| dns.default_search(&s.namespace));
        let client = Arc::new(Client {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            labels: s.labels.clone().into_iter().collect(),
            search: search
                .iter()
                .map(|d| format!("{}.", d.trim_end_matches('.').to_ascii_lowercase()))
                .collect(),
        });
        let ips = p
            .attachments
            .iter()
            .flat_map(|a| &a.ips)
            .filter_map(|ip| ip.address.split('/').next()?.parse::<IpAddr>().ok())
            .collect();
        Some((client, ips))
    }

    /// Builds the address → pod map from all the attachments (at start).
    pub fn refresh_dns_clients(&self) {
        let Some(dns) = &self.dns else { return };
        let pods = match self.store.attachments() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read attachments for the DNS server");
                return;
            }
        };
        let mut map = HashMap::new();
        for p in &pods {
            if let Some((client, ips)) = Self::dns_client_of(dns, p) {
                map.extend(ips.into_iter().map(|ip| (ip, client.clone())));
            }
        }
        dns.set_clients(map);
    }

    /// The DNS server learns a pod's addresses (`Some`) or forgets them (`None`): the pod as
    /// it was stored before (`was`) and as it is now.
    pub fn dns_pod_changed(&self, was: Option<&PodAttachments>, now: Option<&PodAttachments>) {
        let Some(dns) = &self.dns else { return };
        if let Some((_, ips)) = was.and_then(|p| Self::dns_client_of(dns, p)) {
            dns.forget_clients(&ips);
        }
        if let Some((client, ips)) = now.and_then(|p| Self::dns_client_of(dns, p)) {
            dns.add_client(client, &ips);
        }
    }

    /// Hands the DNS server the DnsPolicies of the policy view (and brings the pods' egress by
    /// name in line with them).
    pub async fn refresh_dns_policies(&self) {
        let Some(dns) = &self.dns else { return };
        let view = self.policies.lock().await;
        let list: Vec<_> = view.table.dns_policies().cloned().collect();
        drop(view);
        dns.set_policies(Policies::new(list));
        if let Err(e) = self.refresh_policy_pods(false).await {
            tracing::warn!(error = %e, "egress by name not in line with the DNS policies; retried at the drivers' resync");
        }
    }

    /// The egress-by-name NetworkPolicies the DNS policies call for: one per pod of this node
    /// that a DnsPolicy with `egress_by_name` applies to.
    pub(crate) fn dns_egress_wanted(&self) -> BTreeMap<Key, Item> {
        let Some(dns) = &self.dns else {
            return BTreeMap::new();
        };
        let policies = dns.policies();
        if !policies.any_egress() {
            return BTreeMap::new();
        }
        let cfg = dns.config();
        let servers: BTreeSet<ipnet::IpNet> = cfg
            .listen
            .iter()
            .map(|a| a.ip())
            .chain(cfg.fallback.iter().copied())
            .map(ipnet::IpNet::from)
            .collect();
        dns.clients()
            .into_iter()
            .filter(|c| policies.egress(Some(c)).is_some())
            .map(|c| {
                (
                    crate::policy::egress_key(&c.namespace, &c.name),
                    Item::DnsEgress {
                        namespace: c.namespace.clone(),
                        pod: c.name.clone(),
                        dns: servers.clone(),
                    },
                )
            })
            .collect()
    }

    /// Makes `wanted` the egress-by-name policies and hands the change to the Policy drivers;
    /// a pod already answered keeps its addresses.
    pub(crate) async fn settle_dns_egress(
        &self,
        view: &mut PolicyView,
        wanted: BTreeMap<Key, Item>,
    ) -> Result<(), Status> {
        let Some(dns) = &self.dns else { return Ok(()) };
        let pods: BTreeSet<PodKey> = wanted
            .values()
            .filter_map(|i| match i {
                Item::DnsEgress { namespace, pod, .. } => Some((namespace.clone(), pod.clone())),
                _ => None,
            })
            .collect();
        let prev = view.table.generation();
        let (batch, conflicts) = view.replace(Source::DnsEgress, wanted);
        for c in conflicts {
            tracing::error!(conflict = %c, "egress by name for a pod not enforced");
        }
        if let Some(b) = batch {
            crate::api::policy::push(self, view, prev, &b).await?;
        }
        for ((ns, pod), ips) in dns.egress.cover(&pods) {
            let nets: Vec<ipnet::IpNet> = ips.into_iter().map(ipnet::IpNet::from).collect();
            let prev = view.table.generation();
            if let Some(b) = view.learn(&ns, &pod, &nets, &[]) {
                crate::api::policy::push(self, view, prev, &b).await?;
            }
        }
        Ok(())
    }

    /// Hands the drivers addresses the DNS server answered a pod under egress by name.
    pub(crate) async fn publish_dns_egress(&self, pod: PodKey, ips: Vec<IpAddr>) {
        let nets: Vec<ipnet::IpNet> = ips.into_iter().map(ipnet::IpNet::from).collect();
        let mut view = self.policies.lock().await;
        let prev = view.table.generation();
        if let Some(b) = view.learn(&pod.0, &pod.1, &nets, &[])
            && let Err(e) = crate::api::policy::push(self, &view, prev, &b).await
        {
            tracing::warn!(pod = %format!("{}/{}", pod.0, pod.1), error = %e, "answered addresses not handed to the policy drivers");
        }
    }

    /// Takes the expired answers out of the pods' sets (every second while the host runs).
    pub async fn expire_dns_egress(&self) {
        let Some(dns) = &self.dns else { return };
        // Under the view's lock, so that an address learned again meanwhile is added after it
        // was taken out, never before.
        let mut view = self.policies.lock().await;
        for ((ns, pod), ips) in dns.egress.expire(std::time::Instant::now()) {
            let nets: Vec<ipnet::IpNet> = ips.into_iter().map(ipnet::IpNet::from).collect();
            let prev = view.table.generation();
            if let Some(b) = view.learn(&ns, &pod, &[], &nets)
                && let Err(e) = crate::api::policy::push(self, &view, prev, &b).await
            {
                tracing::warn!(error = %e, "expired answers not taken out of the policy drivers; retried at their resync");
            }
        }
    }

    /// The DNS config a pod gets when the node-local server runs: the node-local address first,
    /// then the fallback (the configured cluster DNS Service, else the runtime's name servers),
    /// the runtime's search list and options (kubelet's defaults when it gave none).
    pub fn pod_dns_config(&self, sandbox: &PodSandbox) -> Option<DnsConfig> {
        let dns = self.dns.as_ref()?;
        let cfg = dns.config();
        let local = cfg.listen.iter().find(|a| a.port() == 53)?.ip();
        let given = sandbox.dns_config.clone().unwrap_or_default();
        let mut nameservers = vec![local.to_string()];
        if cfg.fallback.is_empty() {
            nameservers.extend(
                given
                    .nameservers
                    .iter()
                    .filter(|n| **n != local.to_string())
                    .cloned(),
            );
        } else {
            nameservers.extend(cfg.fallback.iter().map(ToString::to_string));
        }
        nameservers.truncate(3);
        let searches = if given.searches.is_empty() {
            dns.default_search(&sandbox.namespace)
        } else {
            given.searches
        };
        let options = if given.options.is_empty() {
            vec!["ndots:5".to_string()]
        } else {
            given.options
        };
        Some(DnsConfig {
            nameservers,
            searches,
            options,
            domain: given.domain,
        })
    }
}
