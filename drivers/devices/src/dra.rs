//! The DRA path. This node's devices are published as a ResourceSlice (resource.k8s.io/v1, one
//! pool named after the node) for the scheduler to allocate from; the kubelet finds the driver
//! through a registration socket in its plugin registry and calls NodePrepareResources on the
//! driver's endpoint when a pod with a claim comes to the node. Preparing a claim reads its
//! allocation (and the opaque configuration for this driver) from the API server and allocates
//! those devices here, as AllocateDevice would: from then on an attachment may move them into
//! the pod. NodeUnprepareResources releases the claim.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{
    Device as SliceDevice, DeviceAttribute, ResourceClaim, ResourcePool, ResourceSlice,
    ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use netlet_sdk::proto::{AllocateDeviceRequest, Device, DeviceHealth, DeviceKind, DeviceRequest};
use tonic::{Request, Response, Status};

use crate::driver::Devices;

/// The kubelet's services, generated from `proto/`.
pub mod kubelet {
    /// DRA plugin v1.
    pub mod dra {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    /// Plugin registration v1.
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
}

use kubelet::dra::{
    Claim, NodePrepareResourceResponse, NodePrepareResourcesRequest, NodePrepareResourcesResponse,
    NodeUnprepareResourceResponse, NodeUnprepareResourcesRequest, NodeUnprepareResourcesResponse,
    PrepareEntry, UnprepareEntry,
    dra_plugin_server::{DraPlugin, DraPluginServer},
};
use kubelet::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
    registration_server::{Registration, RegistrationServer},
};

/// The plugin type the kubelet's plugin watcher hands to its DRA manager.
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// The DRA plugin service this driver serves, as named in registration.
pub const SERVICE: &str = "v1.DRAPlugin";
/// The standard attribute DRA aligns PCIe roots by (`matchAttribute` constraints).
pub const PCIE_ROOT_ATTRIBUTE: &str = "resource.kubernetes.io/pcieRoot";
/// Field manager of the slices' server-side apply.
const MANAGER: &str = "netlet-devices";

/// Where and as whom the DRA path runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name (the slice's node, the pool's name).
    pub node: String,
    /// The DRA driver name, a DNS subdomain (`dra.netlet.io`).
    pub driver: String,
    /// A kubeconfig file, or `in-cluster`.
    pub kubeconfig: PathBuf,
    /// The kubelet's plugin registry (`/var/lib/kubelet/plugins_registry`).
    pub registry_dir: PathBuf,
    /// Where plugin endpoints live (`/var/lib/kubelet/plugins`).
    pub plugins_dir: PathBuf,
}

/// The DRA side of the driver.
pub struct Dra {
    devices: Arc<Devices>,
    client: kube::Client,
    opts: Options,
}

fn string(v: impl Into<String>) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(v.into()),
        ..Default::default()
    }
}

fn int(v: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(v),
        ..Default::default()
    }
}

fn boolean(v: bool) -> DeviceAttribute {
    DeviceAttribute {
        bool: Some(v),
        ..Default::default()
    }
}

/// The slice's devices: every device of the inventory still on the node or in a pod, with its
/// attributes typed (names without a domain are the driver's).
pub fn slice_devices(inventory: &[Device]) -> Vec<SliceDevice> {
    inventory
        .iter()
        .filter(|d| d.health != DeviceHealth::Gone as i32)
        .map(|d| {
            let mut a: BTreeMap<String, DeviceAttribute> = BTreeMap::new();
            a.insert("pool".into(), string(&d.pool));
            let kind = DeviceKind::try_from(d.kind).unwrap_or(DeviceKind::Unspecified);
            a.insert(
                "kind".into(),
                string(
                    kind.as_str_name()
                        .trim_start_matches("DEVICE_KIND_")
                        .to_ascii_lowercase(),
                ),
            );
            a.insert("ifName".into(), string(&d.interface_name));
            if !d.pci_address.is_empty() {
                a.insert("pciAddress".into(), string(&d.pci_address));
            }
            if d.numa_node >= 0 {
                a.insert("numaNode".into(), int(d.numa_node.into()));
            }
            if !d.pcie_root.is_empty() {
                a.insert(PCIE_ROOT_ATTRIBUTE.into(), string(&d.pcie_root));
            }
            if !d.vendor.is_empty() {
                a.insert("vendor".into(), string(&d.vendor));
            }
            for (key, name) in [
                ("kernel-driver", "kernelDriver"),
                ("mac", "mac"),
                ("pci-vendor", "pciVendor"),
                ("pci-device", "pciDevice"),
                ("physfn", "physfn"),
                ("rdma-device", "rdmaDevice"),
            ] {
                if let Some(v) = d.attributes.get(key) {
                    a.insert(name.into(), string(v));
                }
            }
            for (key, name) in [
                ("mtu", "mtu"),
                ("speed", "speedMbps"),
                ("sriov-totalvfs", "sriovTotalVfs"),
                ("sriov-numvfs", "sriovNumVfs"),
            ] {
                if let Some(v) = d.attributes.get(key).and_then(|v| v.parse::<i64>().ok()) {
                    a.insert(name.into(), int(v));
                }
            }
            for (key, name) in [("rdma", "rdma"), ("virtual", "virtual")] {
                a.insert(
                    name.into(),
                    boolean(d.attributes.get(key).map(String::as_str) == Some("true")),
                );
            }
            SliceDevice {
                name: d.id.clone(),
                attributes: Some(a),
                ..Default::default()
            }
        })
        .collect()
}

/// The opaque configuration for this driver that applies to `request`: the last entry naming
/// it or naming no request (class entries come before the claim's), as JSON.
fn config_for(
    configs: &[k8s_openapi::api::resource::v1::DeviceAllocationConfiguration],
    driver: &str,
    request: &str,
) -> Vec<u8> {
    configs
        .iter()
        .filter(|c| {
            c.requests
                .as_ref()
                .is_none_or(|r| r.is_empty() || r.iter().any(|x| x == request))
        })
        .filter_map(|c| c.opaque.as_ref().filter(|o| o.driver == driver))
        .next_back()
        .and_then(|o| serde_json::to_vec(&o.parameters.0).ok())
        .unwrap_or_default()
}

impl Dra {
    /// Connects to the API server.
    pub async fn new(devices: Arc<Devices>, opts: Options) -> anyhow::Result<Arc<Self>> {
        let cfg = if opts.kubeconfig == std::path::Path::new("in-cluster") {
            kube::Config::incluster()?
        } else {
            let kc = kube::config::Kubeconfig::read_from(&opts.kubeconfig)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        };
        Ok(Arc::new(Self {
            devices,
            client: kube::Client::try_from(cfg)?,
            opts,
        }))
    }

    fn slice_name(&self) -> String {
        format!("{}-{}", self.opts.node, self.opts.driver)
    }

    /// Publishes the slice, and again whenever the inventory changes (a new pool generation
    /// each time); a failed write is retried.
    pub async fn publish(self: Arc<Self>) {
        let api: Api<ResourceSlice> = Api::all(self.client.clone());
        let mut changed = self.devices.subscribe();
        let mut generation = match api.get_opt(&self.slice_name()).await {
            Ok(Some(s)) => s.spec.pool.generation,
            _ => 0,
        };
        let mut published: Option<(Vec<SliceDevice>, Option<OwnerReference>)> = None;
        let mut owner: Option<OwnerReference> = None;
        loop {
            changed.borrow_and_update();
            let devices = match self.devices.inventory().await {
                Ok(inv) => slice_devices(&inv),
                Err(e) => {
                    tracing::warn!(error = %e, "inventory for the ResourceSlice");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Owned by the Node object (when there is one), so deleting the node deletes its
            // slice; looked up until found.
            if owner.is_none() {
                owner = self.node_owner().await;
            }
            if published.as_ref() != Some(&(devices.clone(), owner.clone())) {
                let slice = ResourceSlice {
                    metadata: ObjectMeta {
                        name: Some(self.slice_name()),
                        owner_references: owner.clone().map(|o| vec![o]),
                        ..Default::default()
                    },
                    spec: ResourceSliceSpec {
                        driver: self.opts.driver.clone(),
                        node_name: Some(self.opts.node.clone()),
                        pool: ResourcePool {
                            name: self.opts.node.clone(),
                            generation: generation + 1,
                            resource_slice_count: 1,
                        },
                        devices: Some(devices.clone()),
                        ..Default::default()
                    },
                };
                let mut value = serde_json::to_value(&slice).unwrap_or_default();
                value["apiVersion"] = "resource.k8s.io/v1".into();
                value["kind"] = "ResourceSlice".into();
                let pp = PatchParams::apply(MANAGER).force();
                match api
                    .patch(&self.slice_name(), &pp, &Patch::Apply(&value))
                    .await
                {
                    Ok(s) => {
                        generation = s.spec.pool.generation;
                        tracing::info!(
                            devices = devices.len(),
                            generation,
                            "ResourceSlice published"
                        );
                        published = Some((devices, owner.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "publish ResourceSlice; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// A reference to this node's Node object, if the API server has it.
    async fn node_owner(&self) -> Option<OwnerReference> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let n = nodes.get_opt(&self.opts.node).await.ok().flatten()?;
        Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.opts.node.clone(),
            uid: n.metadata.uid?,
            controller: Some(true),
            ..Default::default()
        })
    }

    /// Prepares one claim: its allocation for this driver, read from the API server, allocated
    /// here. The devices the kubelet is told of.
    async fn prepare(&self, c: &Claim) -> Result<Vec<kubelet::dra::Device>, String> {
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &c.namespace);
        let claim = api
            .get(&c.name)
            .await
            .map_err(|e| format!("get ResourceClaim {}/{}: {e}", c.namespace, c.name))?;
        if claim.metadata.uid.as_deref() != Some(c.uid.as_str()) {
            return Err(format!(
                "ResourceClaim {}/{} has UID {:?}, not {:?}",
                c.namespace,
                c.name,
                claim.metadata.uid.unwrap_or_default(),
                c.uid
            ));
        }
        let pod_uids: Vec<String> = claim
            .status
            .as_ref()
            .and_then(|s| s.reserved_for.as_ref())
            .into_iter()
            .flatten()
            .filter(|r| r.resource == "pods" && r.api_group.as_deref().unwrap_or("").is_empty())
            .map(|r| r.uid.clone())
            .collect();
        let alloc = claim
            .status
            .and_then(|s| s.allocation)
            .and_then(|a| a.devices)
            .ok_or_else(|| format!("ResourceClaim {}/{} is not allocated", c.namespace, c.name))?;
        let configs = alloc.config.unwrap_or_default();
        let mine: Vec<_> = alloc
            .results
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.driver == self.opts.driver)
            .collect();
        if let Some(r) = mine.iter().find(|r| r.pool != self.opts.node) {
            return Err(format!(
                "device {:?} of pool {:?} is not this node's ({:?})",
                r.device, r.pool, self.opts.node
            ));
        }
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        let req = AllocateDeviceRequest {
            claim_uid: c.uid.clone(),
            claim_namespace: c.namespace.clone(),
            claim_name: c.name.clone(),
            requests: mine
                .iter()
                .map(|r| DeviceRequest {
                    name: r.request.clone(),
                    device_id: r.device.clone(),
                    config: config_for(&configs, &self.opts.driver, &r.request),
                    ..Default::default()
                })
                .collect(),
            sandbox_id: String::new(),
            pod_uids,
        };
        netlet_sdk::validate::allocate_device(&req).map_err(|s| s.message().to_string())?;
        self.devices
            .allocate(req)
            .await
            .map_err(|s| s.message().to_string())?;
        Ok(mine
            .into_iter()
            .map(|r| kubelet::dra::Device {
                request_names: vec![r.request],
                pool_name: r.pool,
                device_name: r.device,
                cdi_device_ids: Vec::new(),
            })
            .collect())
    }

    /// Serves the DRA plugin on its endpoint and registration in the kubelet's registry, until
    /// the process stops.
    pub async fn serve(self: Arc<Self>) -> anyhow::Result<()> {
        let endpoint = self
            .opts
            .plugins_dir
            .join(&self.opts.driver)
            .join("dra.sock");
        let reg = self
            .opts
            .registry_dir
            .join(format!("{}-reg.sock", self.opts.driver));
        let mut ep_sock = netlet_sdk::server::bind_unix(&endpoint, 0o600)?;
        let mut reg_sock = netlet_sdk::server::bind_unix(&reg, 0o600)?;
        let plugin = tonic::transport::Server::builder()
            .add_service(DraPluginServer::new(Plugin(self.clone())))
            .serve_with_incoming(
                ep_sock
                    .incoming()
                    .ok_or_else(|| anyhow::anyhow!("socket"))?,
            );
        let registration = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(Registrar {
                info: PluginInfo {
                    r#type: PLUGIN_TYPE.into(),
                    name: self.opts.driver.clone(),
                    endpoint: endpoint.display().to_string(),
                    supported_versions: vec![SERVICE.into()],
                },
            }))
            .serve_with_incoming(
                reg_sock
                    .incoming()
                    .ok_or_else(|| anyhow::anyhow!("socket"))?,
            );
        tokio::try_join!(plugin, registration)?;
        Ok(())
    }
}

struct Plugin(Arc<Dra>);

#[tonic::async_trait]
impl DraPlugin for Plugin {
    async fn node_prepare_resources(
        &self,
        req: Request<NodePrepareResourcesRequest>,
    ) -> Result<Response<NodePrepareResourcesResponse>, Status> {
        let mut claims = Vec::new();
        for c in req.into_inner().claims {
            let r = match self.0.prepare(&c).await {
                Ok(devices) => NodePrepareResourceResponse {
                    devices,
                    error: String::new(),
                },
                Err(error) => {
                    tracing::warn!(claim = %c.uid, %error, "NodePrepareResources");
                    NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    }
                }
            };
            claims.push(PrepareEntry {
                key: c.uid,
                value: Some(r),
            });
        }
        Ok(Response::new(NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<NodeUnprepareResourcesRequest>,
    ) -> Result<Response<NodeUnprepareResourcesResponse>, Status> {
        let mut claims = Vec::new();
        for c in req.into_inner().claims {
            let error = match self.0.devices.release(&c.uid).await {
                Ok(()) => String::new(),
                Err(s) => s.message().to_string(),
            };
            claims.push(UnprepareEntry {
                key: c.uid,
                value: Some(NodeUnprepareResourceResponse { error }),
            });
        }
        Ok(Response::new(NodeUnprepareResourcesResponse { claims }))
    }
}

struct Registrar {
    info: PluginInfo,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _req: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!(driver = %self.info.name, "registered with the kubelet");
        } else {
            tracing::error!(driver = %self.info.name, error = %s.error, "the kubelet refused the registration");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1::{
        DeviceAllocationConfiguration, OpaqueDeviceConfiguration,
    };
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;

    #[test]
    fn slice_attributes_are_typed() {
        let d = Device {
            id: "ens1f0v0".into(),
            kind: DeviceKind::SriovVf as i32,
            interface_name: "ens1f0v0".into(),
            pci_address: "0000:3b:00.2".into(),
            numa_node: 0,
            pcie_root: "pci0000:3a".into(),
            pool: "vfs".into(),
            health: DeviceHealth::Healthy as i32,
            attributes: [
                ("mtu".to_string(), "9000".to_string()),
                ("rdma".to_string(), "true".to_string()),
                ("physfn".to_string(), "0000:3b:00.0".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let unknown = Device {
            id: "eno1".into(),
            numa_node: -1,
            health: DeviceHealth::Healthy as i32,
            ..Default::default()
        };
        let gone = Device {
            id: "old".into(),
            health: DeviceHealth::Gone as i32,
            ..Default::default()
        };
        let s = slice_devices(&[d, unknown, gone]);
        assert_eq!(s.len(), 2, "a device gone from the node is not offered");
        let a = s[0].attributes.as_ref().unwrap();
        assert_eq!(a["numaNode"].int, Some(0));
        assert_eq!(a[PCIE_ROOT_ATTRIBUTE].string.as_deref(), Some("pci0000:3a"));
        assert_eq!(a["kind"].string.as_deref(), Some("sriov_vf"));
        assert_eq!(a["mtu"].int, Some(9000));
        assert_eq!(a["rdma"].bool, Some(true));
        assert_eq!(a["physfn"].string.as_deref(), Some("0000:3b:00.0"));
        let b = s[1].attributes.as_ref().unwrap();
        assert!(
            !b.contains_key("numaNode"),
            "unknown NUMA node is left out, not 0"
        );
        assert!(!b.contains_key(PCIE_ROOT_ATTRIBUTE));
    }

    #[test]
    fn the_claim_s_configuration_wins_over_the_class_s() {
        let opaque = |driver: &str, mtu: u32| OpaqueDeviceConfiguration {
            driver: driver.into(),
            parameters: RawExtension(serde_json::json!({"mtu": mtu})),
        };
        let cfg = |source: &str, requests: Option<Vec<&str>>, o| DeviceAllocationConfiguration {
            source: source.into(),
            requests: requests.map(|r| r.into_iter().map(String::from).collect()),
            opaque: Some(o),
        };
        let configs = [
            cfg("FromClass", None, opaque("dra.netlet.io", 1500)),
            cfg(
                "FromClaim",
                Some(vec!["nic"]),
                opaque("dra.netlet.io", 9000),
            ),
            cfg("FromClaim", Some(vec!["nic"]), opaque("gpu.example.com", 1)),
        ];
        assert_eq!(
            config_for(&configs, "dra.netlet.io", "nic"),
            br#"{"mtu":9000}"#
        );
        assert_eq!(
            config_for(&configs, "dra.netlet.io", "other"),
            br#"{"mtu":1500}"#
        );
        assert!(config_for(&configs, "x.example.com", "nic").is_empty());
    }
}
