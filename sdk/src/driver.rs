//! The driver builder: capabilities in, a served unix socket out.

use std::{path::PathBuf, sync::Arc};

use tonic::{Request, Response, Status, service::RoutesBuilder, transport::Server};

use crate::proto::{
    Capability, GetInfoRequest, GetInfoResponse, ProbeRequest, ProbeResponse,
    cluster_server::{Cluster, ClusterServer},
    devices_server::{Devices, DevicesServer},
    identity_server::{Identity, IdentityServer},
    node_server::{Node, NodeServer},
    pods_server::{Pods, PodsServer},
    policy_server::{Policy, PolicyServer},
    services_server::{Services, ServicesServer},
};
use crate::{DEFAULT_MAX_MESSAGE_BYTES, Error, Result, SOCKET_ENV, server};

/// A readiness function for `Identity/Probe`.
pub type ProbeFn = Arc<dyn Fn() -> ProbeResponse + Send + Sync>;

/// A network driver under construction: declare what it is, add one implementation per
/// capability, then [`serve`](Driver::serve).
pub struct Driver {
    name: String,
    version: String,
    networks: Vec<String>,
    socket: Option<PathBuf>,
    socket_mode: u32,
    max_message_bytes: usize,
    capabilities: Vec<Capability>,
    features: Vec<crate::proto::Feature>,
    routes: RoutesBuilder,
    probe: Option<ProbeFn>,
}

macro_rules! capability {
    ($(#[$doc:meta])* $fn:ident, $trait:ident, $server:ident, $cap:expr) => {
        $(#[$doc])*
        pub fn $fn<T: $trait>(mut self, svc: T) -> Self {
            let max = self.max_message_bytes;
            self.routes.add_service(
                $server::new(svc)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            );
            self.capabilities.push($cap);
            self
        }
    };
}

impl Driver {
    /// A driver called `name` (a DNS-1123 label) at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            networks: Vec::new(),
            socket: None,
            socket_mode: 0o660,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            capabilities: Vec::new(),
            features: Vec::new(),
            routes: RoutesBuilder::default(),
            probe: None,
        }
    }

    /// Declares an optional feature the driver has (GetInfo lists exactly those declared; the
    /// host refuses requests that need one the driver lacks).
    pub fn feature(mut self, f: crate::proto::Feature) -> Self {
        self.features.push(f);
        self
    }

    /// Declares a network this driver attaches pods to.
    pub fn network(mut self, name: impl Into<String>) -> Self {
        self.networks.push(name.into());
        self
    }

    /// Serves on `path` instead of `$NETLET_DRIVER_SOCKET`.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// Sets the maximum message size (both directions). Call before adding capabilities.
    pub fn max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// Sets the readiness reported by `Identity/Probe` (default: always ready).
    pub fn probe(mut self, f: impl Fn() -> ProbeResponse + Send + Sync + 'static) -> Self {
        self.probe = Some(Arc::new(f));
        self
    }

    capability!(
        /// Serves the Pods capability.
        pods, Pods, PodsServer, Capability::Pods
    );
    capability!(
        /// Serves the Node capability.
        node, Node, NodeServer, Capability::Node
    );
    capability!(
        /// Serves the Services capability.
        services, Services, ServicesServer, Capability::Services
    );
    capability!(
        /// Serves the Policy capability.
        policy, Policy, PolicyServer, Capability::Policy
    );
    capability!(
        /// Serves the Devices capability.
        devices, Devices, DevicesServer, Capability::Devices
    );
    capability!(
        /// Serves the Cluster capability (the node table; see [`crate::nodes`]).
        cluster, Cluster, ClusterServer, Capability::Cluster
    );

    /// What `Identity/GetInfo` answers.
    pub fn info(&self) -> GetInfoResponse {
        GetInfoResponse {
            name: self.name.clone(),
            vendor_version: self.version.clone(),
            api_versions: netlet_proto::SUPPORTED_API_VERSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            capabilities: self.capabilities.iter().map(|c| *c as i32).collect(),
            services: std::iter::once(netlet_proto::IDENTITY_SERVICE)
                .chain(
                    self.capabilities
                        .iter()
                        .flat_map(|c| netlet_proto::services_of(*c).iter().copied()),
                )
                .map(str::to_string)
                .collect(),
            networks: self.networks.clone(),
            role: crate::proto::EndpointRole::Driver as i32,
            features: Some(crate::proto::Features {
                supported: self.features.iter().map(|f| *f as i32).collect(),
            }),
        }
    }

    /// Serves until SIGTERM/SIGINT.
    pub async fn serve(self) -> Result<()> {
        self.serve_with_shutdown(server::shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves; in-flight calls finish first.
    pub async fn serve_with_shutdown(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let path = match self.socket.take() {
            Some(p) => p,
            None => std::env::var_os(SOCKET_ENV)
                .map(PathBuf::from)
                .ok_or(Error::NoSocket)?,
        };
        let info = self.info();
        let (health, health_svc) = tonic_health::server::health_reporter();
        for s in &info.services {
            health
                .set_service_status(s, tonic_health::ServingStatus::Serving)
                .await;
        }
        let (refl_v1, refl_v1alpha) = server::reflection(&info.services)?;
        let identity = IdentityServer::new(StaticIdentity {
            info: info.clone(),
            probe: self.probe.clone(),
        });
        let mut routes = self.routes;
        routes
            .add_service(identity)
            .add_service(health_svc)
            .add_service(refl_v1)
            .add_service(refl_v1alpha);

        let mut sock = server::bind_unix(&path, self.socket_mode)?;
        let incoming = sock.incoming().ok_or(Error::NoSocket)?;
        tracing::info!(driver = %info.name, socket = %path.display(), capabilities = ?self.capabilities, networks = ?info.networks, "driver serving");
        let res = Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(Error::Transport);
        drop(sock);
        tracing::info!(driver = %info.name, "driver stopped");
        res
    }
}

struct StaticIdentity {
    info: GetInfoResponse,
    probe: Option<ProbeFn>,
}

#[tonic::async_trait]
impl Identity for StaticIdentity {
    async fn get_info(
        &self,
        _req: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let resp = match &self.probe {
            Some(f) => f(),
            None => ProbeResponse {
                ready: true,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }
}
