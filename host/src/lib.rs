//! netlet-host: the node host. It serves `netlet.v1alpha1` on a unix socket, registers and
//! supervises network drivers, routes each call to the driver that can serve it, orchestrates
//! multi-network pod attachment with rollback, and keeps what must survive a restart in an
//! embedded database.
//!
//! `bin/netlet.rs` and `bin/netletctl.rs` are thin shells over this library.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod attach;
pub mod auth;
pub mod cluster;
pub mod cni_config;
pub mod config;
pub mod crd;
pub mod dns;
pub mod error;
pub mod features;
pub mod grants;
pub mod hostnames;
pub mod metrics;
pub mod netpol;
pub mod pending_detach;
pub mod policy;
pub mod registry;
mod resync;
pub mod served;
pub mod services;
pub mod store;
pub mod wasm;
pub mod webhook;

use std::sync::Arc;

use netlet_sdk::{
    proto::{
        Capability, NetworkReadiness, cluster_server::ClusterServer, devices_server::DevicesServer,
        identity_server::IdentityServer, node_server::NodeServer, pods_server::PodsServer,
        policy_server::PolicyServer, services_server::ServicesServer,
    },
    server,
    state::{KeyGuard, KeyLocks},
};
use tokio::sync::watch;
use tonic::transport::Server;

use crate::{
    auth::{AllowList, AuthLayer},
    config::Settings,
    metrics::{Metrics, MetricsLayer},
    registry::{Registry, condition},
    services::sources::Source,
    store::Store,
};

/// How long calls in flight at SIGTERM may take to finish before the host stops its drivers
/// and exits (kubelet's default grace period is 30 s).
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// Those of `addresses` that are a cluster IP of a Service in `table` with no ready endpoint:
/// taken over by the node-local DNS server with nobody else serving them.
fn unserved_cluster_ips(
    table: &netlet_sdk::state::ServiceTable,
    addresses: &[std::net::IpAddr],
) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    for svc in table.services() {
        let Some(key) = &svc.key else { continue };
        let ready = table
            .entry(key)
            .is_some_and(|(_, eps)| eps.values().any(|e| e.ready));
        if ready {
            continue;
        }
        for ip in &svc.cluster_ips {
            if let Ok(ip) = ip.parse::<std::net::IpAddr>()
                && addresses.contains(&ip)
                && !out.contains(&ip)
            {
                out.push(ip);
            }
        }
    }
    out
}

/// Resolves once `rx` turns true (shutdown began).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Host errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The state store.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Sockets, reflection, serving.
    #[error(transparent)]
    Serve(#[from] netlet_sdk::Error),
    /// The admin endpoint.
    #[error("admin endpoint: {0}")]
    Admin(#[source] std::io::Error),
}

/// Result with the host [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shared state of a running host.
pub struct Host {
    /// Settings in force.
    pub settings: Settings,
    /// Registered drivers.
    pub registry: Arc<Registry>,
    /// The embedded database.
    pub store: Store,
    /// Desired Services (replayed to drivers).
    pub services: tokio::sync::Mutex<services::sources::ServiceView>,
    /// Health-check node ports of `externalTrafficPolicy: Local` Services.
    pub health_checks: services::health::HealthChecks,
    /// Per object source (manifests, Kubernetes): what did not load or apply, with why (the
    /// last good content stays in effect).
    pub source_errors: std::sync::Mutex<std::collections::BTreeMap<Source, Vec<String>>>,
    /// Per object source: pods of other nodes, namespaces' labels and nodes, for policy
    /// selectors (see [`Host::cluster_objects`]).
    pub source_clusters: std::sync::Mutex<std::collections::BTreeMap<Source, netpol::Cluster>>,
    /// The cluster's nodes (sent to drivers that route between them).
    pub nodes: Arc<cluster::Nodes>,
    /// Desired policies (replayed to drivers).
    pub policies: tokio::sync::Mutex<policy::PolicyView>,
    /// The object sources (the manifests directory, the Kubernetes API) read once so far.
    /// Until every one the node's config names is, no Services or Policy driver is sent a
    /// full sync: what a driver kept from before a host restart goes on serving and enforcing
    /// instead of an empty table (no flap). See [`Host::sources_loaded`].
    pub sources_read: std::sync::Mutex<std::collections::BTreeSet<Source>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The WebAssembly policy modules.
    pub modules: Arc<wasm::Modules>,
    /// The node-local DNS server, when configured.
    pub dns: Option<Arc<dns::Dns>>,
    /// Per object source: its Service objects, for the DNS zone.
    pub dns_objects: std::sync::Mutex<std::collections::BTreeMap<Source, dns::ServiceObjects>>,
    /// Per object source: the hostnames its objects claim (with what the webhook admitted).
    pub claims: hostnames::Claims,
    /// The hostname grants of one policy generation (see [`Host::hostname_grants`]).
    pub grant_snapshot: std::sync::Mutex<(u64, Arc<Vec<netlet_sdk::proto::HostnameGrant>>)>,
    /// True once shutdown began (the drain: no new calls; watches end).
    pub shutdown: watch::Receiver<bool>,
    locks: KeyLocks,
}

impl Host {
    /// How many object sources the node's config names.
    fn sources_configured(&self) -> usize {
        usize::from(self.settings.manifests_dir.is_some())
            + usize::from(self.settings.kubeconfig.is_some())
    }

    /// Whether every object source of the node's config has been read once.
    pub fn sources_loaded(&self) -> bool {
        self.sources_read
            .lock()
            .is_ok_and(|r| r.len() >= self.sources_configured())
    }

    /// Records `source` as read; true when that read was the last one outstanding (the
    /// drivers may now have their first full sync).
    pub fn source_read(&self, source: Source) -> bool {
        self.sources_read
            .lock()
            .is_ok_and(|mut r| r.insert(source) && r.len() == self.sources_configured())
    }

    /// What every object source holds for policy selectors, merged: namespaces' labels,
    /// nodes, and other nodes' pods (one source's list is shared, not copied).
    pub fn cluster_objects(&self) -> netpol::Cluster {
        let Ok(all) = self.source_clusters.lock() else {
            return netpol::Cluster::default();
        };
        let mut it = all.values();
        let Some(first) = it.next() else {
            return netpol::Cluster::default();
        };
        let mut c = first.clone();
        let mut remote: Option<Vec<netpol::PodInfo>> = None;
        for other in it {
            c.namespaces.extend(other.namespaces.clone());
            c.nodes.extend(other.nodes.iter().cloned());
            remote
                .get_or_insert_with(|| c.remote.as_ref().clone())
                .extend(other.remote.iter().cloned());
        }
        if let Some(r) = remote {
            c.remote = Arc::new(r);
        }
        c
    }

    /// Locks `key` (a sandbox, a claim) until the guard drops.
    pub async fn lock_key(&self, key: &str) -> KeyGuard<'_> {
        self.locks.lock(key).await
    }

    /// Aggregated readiness: ready when the driver of every required network (`requiredNetworks`,
    /// default `default`) and of `network`, if given, is registered and ready. Conditions per driver and network, plus registration failures.
    pub fn readiness(&self, network: &str) -> NetworkReadiness {
        let mut conditions = Vec::new();
        for d in self.registry.drivers() {
            let h = d.health();
            let reason = if h.ready { "Ready" } else { h.reason.as_str() };
            conditions.push(condition(
                "DriverRegistered",
                true,
                "Registered",
                format!("{:?} driver, API {}", d.source, d.api_version),
                "",
                &d.name,
                None,
            ));
            conditions.push(condition(
                "DriverReady",
                h.ready,
                reason,
                h.message.clone(),
                "",
                &d.name,
                h.since,
            ));
            if d.has(Capability::Pods) {
                for net in &d.info.networks {
                    conditions.push(condition(
                        "NetworkReady",
                        h.ready,
                        reason,
                        h.message.clone(),
                        net,
                        &d.name,
                        h.since,
                    ));
                }
            }
            conditions.extend(h.conditions.into_iter().map(|mut c| {
                if c.driver.is_empty() {
                    c.driver = d.name.clone();
                }
                c
            }));
        }
        conditions.extend(self.registry.failures());
        conditions.extend(self.health_checks.conditions());
        let mut wanted: Vec<&str> = self
            .settings
            .required_networks
            .iter()
            .map(String::as_str)
            .collect();
        if !network.is_empty() && !wanted.contains(&network) {
            wanted.push(network);
        }
        let mut out = NetworkReadiness {
            ready: true,
            conditions,
            ..Default::default()
        };
        for net in wanted {
            let (reason, message) = match self.registry.driver_for_network(net) {
                None => (
                    "NoDriverForNetwork".to_string(),
                    format!("no registered driver serves network {net:?}"),
                ),
                Some(d) => {
                    let h = d.health();
                    if h.ready {
                        continue;
                    }
                    (
                        "DriverNotReady".to_string(),
                        format!(
                            "driver {:?} of network {net:?} is not ready: {}: {}",
                            d.name, h.reason, h.message
                        ),
                    )
                }
            };
            if out.ready {
                out.ready = false;
                out.reason = reason;
                out.message = message;
            } else {
                out.message = format!("{}; {message}", out.message);
            }
        }
        out
    }
}

/// Runs the host until `stop` resolves (SIGTERM/SIGINT in the binary).
pub async fn run(
    settings: Settings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let store = Store::open(&settings.state_dir)?;
    let registry = Registry::new(
        registry::Options {
            call_timeout: settings.driver_call_timeout,
            probe_interval: settings.probe_interval,
            probe_failure_threshold: settings.probe_failure_threshold,
            max_message_bytes: settings.max_message_bytes,
        },
        metrics.clone(),
    );
    // Two steps at shutdown: `draining` (the socket stops accepting; watches, manifests and
    // pending detaches stop; calls in flight finish, within DRAIN_DEADLINE), then `stopping`
    // (supervised drivers, the plugin directory and the admin endpoint stop).
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Host ports of the pods attached before a restart are handed to drivers again.
    // This incarnation's epoch: every batch to drivers carries it, so a driver that outlived an
    // earlier host takes this one's first full sync whatever its generation.
    let epoch = netlet_sdk::generation::new_epoch();
    let mut service_view = services::sources::ServiceView::new(settings.node.clone(), epoch);
    for pod in store.attachments()? {
        if let (Some(s), Some(hp)) = (&pod.sandbox, attach::host_ports_of(&pod)) {
            service_view.set_host_ports(&s.id, Some(hp));
        }
    }
    let modules =
        Arc::new(wasm::Modules::new(settings.wasm.clone()).map_err(|e| {
            Error::Admin(std::io::Error::other(format!("WebAssembly engine: {e}")))
        })?);
    for (name, why) in modules.configure(settings.policy_modules.clone()) {
        tracing::warn!(module = %name, %why, "policy module not loaded; its policies apply their failure verdict until it loads");
    }
    let dns = settings
        .dns
        .clone()
        .map(|c| dns::Dns::new(c, modules.clone()));
    let host = Arc::new(Host {
        modules: modules.clone(),
        dns: dns.clone(),
        dns_objects: Default::default(),
        claims: Default::default(),
        grant_snapshot: Default::default(),
        settings: settings.clone(),
        registry: registry.clone(),
        store,
        services: tokio::sync::Mutex::new(service_view),
        source_errors: Default::default(),
        source_clusters: Default::default(),
        health_checks: services::health::HealthChecks::new(registry.clone()),
        policies: tokio::sync::Mutex::new(policy::PolicyView::new(epoch)),
        nodes: Arc::new(cluster::Nodes::new(epoch)),
        sources_read: Default::default(),
        metrics: metrics.clone(),
        shutdown: shutdown_rx.clone(),
        locks: KeyLocks::default(),
    });
    // The node table waits for every source of Node objects before drivers get it.
    host.nodes.expect(
        [
            settings.manifests_dir.as_ref().map(|_| Source::Manifests),
            settings.kubeconfig.as_ref().map(|_| Source::Kubernetes),
        ]
        .into_iter()
        .flatten(),
    );
    resync::install(&host);

    let mut grpc_sock = server::bind_unix(&settings.socket, 0o660)?;
    let admin = admin::bind(&settings).await?;

    let mut tasks = Vec::new();
    for d in &settings.drivers {
        tasks.push(tokio::spawn(registry::supervisor::supervise(
            d.clone(),
            settings.driver_socket_dir.clone(),
            settings.state_dir.join("drivers").join(&d.name),
            registry.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(registry::plugin_dir::watch_dir(
        settings.plugin_dir.clone(),
        registry.clone(),
        settings.authorization.uids.clone(),
        stop_rx.clone(),
    )));
    if let Some(dir) = settings.manifests_dir.clone() {
        tasks.push(tokio::spawn(services::manifests::watch(host.clone(), dir)));
    }
    if let Some((source, target)) = settings.cni_config.clone() {
        let h = host.clone();
        tasks.push(tokio::spawn(cni_config::keep_installed(
            source,
            target,
            move || h.readiness("").ready,
            stopped(host.shutdown.clone()),
        )));
    }
    if let Some(kc) = settings.kubeconfig.clone() {
        let client = services::kube::client(&kc)
            .await
            .map_err(|e| Error::Admin(std::io::Error::other(format!("kubeconfig: {e}"))))?;
        tasks.push(tokio::spawn(services::kube::report_node(
            host.clone(),
            client.clone(),
        )));
        tasks.push(tokio::spawn(services::kube::watch(host.clone(), client)));
    }
    if let Some((listen, cert, key)) = settings.webhook.clone() {
        let (listener, cert) = webhook::bind(listen, &cert, &key)
            .await
            .map_err(|e| Error::Admin(std::io::Error::other(format!("webhook: {e}"))))?;
        let h = host.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = webhook::serve(h, listener, cert).await {
                tracing::error!(error = %e, "hostname admission webhook stopped");
            }
        }));
    }
    tasks.push(tokio::spawn(pending_detach::watch(host.clone())));
    tasks.push(tokio::spawn(cluster::fanout::run(
        host.nodes.clone(),
        registry.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(wasm::watch(modules.clone(), stop_rx.clone())));
    let mut dns_added = Vec::new();
    let mut dns_tasks = Vec::new();
    if let Some(d) = &dns {
        if settings.dns_assign_addresses {
            dns_added = dns::assign_addresses(&d.config().listen)
                .await
                .map_err(|e| Error::Admin(std::io::Error::other(format!("DNS: {e}"))))?;
        }
        if settings.dns_notrack {
            let ips: Vec<std::net::IpAddr> = d.config().listen.iter().map(|a| a.ip()).collect();
            tokio::task::spawn_blocking(move || dns::notrack::program(&ips))
                .await
                .map_err(|e| Error::Admin(std::io::Error::other(format!("DNS NOTRACK: {e}"))))?
                .map_err(|e| Error::Admin(std::io::Error::other(format!("DNS NOTRACK: {e}"))))?;
        }
        let weak = Arc::downgrade(&host);
        d.egress.set_publish(Box::new(move |pod, ips| {
            let weak = weak.clone();
            Box::pin(async move {
                if let Some(h) = weak.upgrade() {
                    h.publish_dns_egress(pod, ips).await;
                }
            })
        }));
        let weak = Arc::downgrade(&host);
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut stop = std::pin::pin!(stopped(stop));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = &mut stop => return,
                }
                let Some(h) = weak.upgrade() else { return };
                h.expire_dns_egress().await;
            }
        }));
        host.refresh_dns_clients();
        host.refresh_dns_policies().await;
        if settings.manifests_dir.is_none() {
            host.refresh_dns_zone(None).await;
        }
        // Its loops serve until the end (pods ask it while the host drains) and are stopped
        // after the other tasks.
        dns_tasks = dns::serve(d.clone())
            .await
            .map_err(|e| Error::Admin(std::io::Error::other(e.to_string())))?;
        tracing::info!(listen = ?d.config().listen, upstreams = ?d.config().upstreams, "node-local DNS serving");
    }
    tasks.push(tokio::spawn(admin::serve(
        admin,
        host.clone(),
        stop_rx.clone(),
    )));

    let names = api::host_services();
    let (health, health_svc) = tonic_health::server::health_reporter();
    for s in &names {
        health
            .set_service_status(s, tonic_health::ServingStatus::Serving)
            .await;
    }
    let (refl_v1, refl_v1alpha) = server::reflection(&names)?;
    let max = settings.max_message_bytes;
    let a = api::Api(host.clone());
    macro_rules! limited {
        ($server:ident) => {
            $server::new(a.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max)
        };
    }
    let allow = Arc::new(AllowList {
        uids: settings.authorization.uids.iter().copied().collect(),
        gids: settings.authorization.gids.iter().copied().collect(),
    });
    // Outermost first: a caller is authorised before anything about its request is recorded.
    let layers = tower::ServiceBuilder::new()
        .layer(AuthLayer(allow, metrics.clone()))
        .layer(MetricsLayer(metrics.clone()));
    let incoming = grpc_sock.incoming().ok_or(netlet_sdk::Error::NoSocket)?;
    tokio::spawn(async move {
        stop.await;
        let _ = shutdown_tx.send(true);
    });
    let mut graceful = shutdown_rx.clone();
    let draining = shutdown_rx.clone();
    tracing::info!(socket = %settings.socket.display(), admin = %settings.admin_socket.display(), plugin_dir = %settings.plugin_dir.display(), state_dir = %settings.state_dir.display(), drivers = settings.drivers.len(), "netlet serving");
    let served = Server::builder()
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
        .layer(layers)
        .add_service(limited!(IdentityServer))
        .add_service(limited!(NodeServer))
        .add_service(limited!(PodsServer))
        .add_service(limited!(ServicesServer))
        .add_service(limited!(PolicyServer))
        .add_service(limited!(DevicesServer))
        .add_service(limited!(ClusterServer))
        .add_service(health_svc)
        .add_service(refl_v1)
        .add_service(refl_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = graceful.wait_for(|s| *s).await;
        });
    let served = tokio::select! {
        r = served => r.map_err(netlet_sdk::Error::Transport),
        () = async {
            stopped(draining).await;
            tokio::time::sleep(DRAIN_DEADLINE).await;
        } => {
            tracing::warn!(deadline = ?DRAIN_DEADLINE, "calls still in flight at the drain deadline are dropped");
            Ok(())
        }
    };
    tracing::info!("drained; stopping drivers");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    drop(grpc_sock);
    for t in dns_tasks {
        t.abort();
        let _ = t.await;
    }
    if let Some(d) = &dns {
        let listen: Vec<std::net::IpAddr> = d.config().listen.iter().map(|a| a.ip()).collect();
        let held = if settings.dns_notrack {
            unserved_cluster_ips(&host.services.lock().await.table, &listen)
        } else {
            Vec::new()
        };
        dns::release_addresses(&dns_added, settings.dns_notrack, &held).await;
    }
    tracing::info!("netlet stopped");
    served?;
    Ok(())
}
