//! netlet-fixture-driver: a TEST FIXTURE with no data plane. It speaks the whole contract with
//! in-memory state so the host, the conformance suite and the benchmarks can be exercised
//! without touching the kernel. Addresses it hands out come from 198.18.0.0/15 (RFC 2544,
//! benchmarking) and are never configured anywhere. Real drivers live in `drivers/`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use clap::Parser;
use netlet_sdk::{
    Driver,
    parts::Parts,
    proto::{
        AllocateDeviceRequest, AllocateDeviceResponse, ApplyPolicyRequest, ApplyPolicyResponse,
        AttachPodRequest, AttachPodResponse, Attachment, CheckDnsRequest, CheckDnsResponse,
        CheckHostnameRequest, CheckHostnameResponse, DetachPodRequest, DetachPodResponse, Device,
        DeviceKind, DnsAction, GarbageCollectRequest, GarbageCollectResponse, IpConfig, IpFamily,
        ListAttachmentsRequest, ListAttachmentsResponse, ListDevicesRequest, ListDevicesResponse,
        ListPoliciesRequest, ListPoliciesResponse, ListServicesRequest, ListServicesResponse,
        NetworkReadiness, NetworkReadyRequest, NetworkReadyResponse, PodAttachments,
        PodNetworkStatusRequest, PodNetworkStatusResponse, ProgramServiceRequest,
        ProgramServiceResponse, ReleaseDeviceRequest, ReleaseDeviceResponse, Route,
        WatchNetworkReadyRequest, WatchNetworkReadyResponse, devices_server::Devices,
        node_server::Node, pods_server::Pods, policy_server::Policy, services_server::Services,
    },
    state::{self, PolicyTable, ServiceTable},
    tonic::{self, Request, Response, Status},
    validate,
};

#[derive(Parser, Debug)]
#[command(about = "Test fixture driver (no data plane)")]
struct Args {
    /// Driver name.
    #[arg(long, default_value = "fixture")]
    name: String,
    /// Networks served (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "default")]
    networks: Vec<String>,
    /// Capabilities served: pods,node,services,policy,devices.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pods,node,services,policy,devices"
    )]
    capabilities: Vec<String>,
    /// Socket (default: $NETLET_DRIVER_SOCKET).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Fail every AttachPod with UNAVAILABLE (to exercise rollback).
    #[arg(long)]
    fail_attach: bool,
    /// Advertise this API version instead of the real one (to exercise negotiation).
    #[arg(long)]
    api_version: Option<String>,
    /// Write the process id here once serving.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Optional features declared (static-ips, static-mac, bandwidth, sctp, session-affinity,
    /// host-ports, network-policy, dns-policy, hostname-grants, cluster-network-policy), or
    /// `none`. It records
    /// whatever it is sent either way: this is what a driver would lack.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "static-ips,static-mac,bandwidth,sctp,session-affinity,host-ports,network-policy,dns-policy,hostname-grants,cluster-network-policy"
    )]
    features: Vec<String>,
    /// Largest message accepted or sent (grpc-go and grpcio default to 4 MiB).
    #[arg(long, default_value_t = netlet_sdk::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Report not ready with this reason.
    #[arg(long)]
    not_ready: Option<String>,
    /// Answer AttachPod this late (ms), after the attachment is made and recorded.
    #[arg(long, default_value_t = 0)]
    attach_delay_ms: u64,
    /// Exit at once on SIGTERM, dropping calls in flight (as a driver without a drain would).
    #[arg(long)]
    exit_on_sigterm: bool,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, PodAttachments>,
    next_host: u32,
    services: ServiceTable,
    policies: PolicyTable,
    service_parts: Parts<ProgramServiceRequest>,
    policy_parts: Parts<ApplyPolicyRequest>,
    claims: BTreeMap<String, AllocateDeviceResponse>,
    /// The request each claim was allocated with.
    claim_requests: BTreeMap<String, AllocateDeviceRequest>,
}

#[derive(Clone)]
struct Fixture {
    name: String,
    fail_attach: bool,
    not_ready: Option<String>,
    attach_delay: std::time::Duration,
    state: Arc<Mutex<State>>,
}

impl Fixture {
    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, Status> {
        self.state
            .lock()
            .map_err(|_| Status::internal("state lock poisoned"))
    }
}

fn inventory() -> Vec<Device> {
    (0..4)
        .map(|i| Device {
            id: format!("fixture-vf{i}"),
            kind: DeviceKind::SriovVf as i32,
            interface_name: format!("fxvf{i}"),
            pci_address: format!("0000:3b:00.{}", i + 2),
            numa_node: i / 2,
            pcie_root: format!("pci0000:{}", if i < 2 { "3a" } else { "5d" }),
            vendor: "fixture".into(),
            ..Default::default()
        })
        .collect()
}

#[tonic::async_trait]
impl Pods for Fixture {
    async fn attach_pod(
        &self,
        req: Request<AttachPodRequest>,
    ) -> Result<Response<AttachPodResponse>, Status> {
        let req = req.into_inner();
        validate::attach_pod(&req)?;
        if self.fail_attach {
            return Err(Status::unavailable("fixture configured to fail AttachPod"));
        }
        let sandbox = req.sandbox.unwrap_or_default();
        let out = {
            let mut st = self.state()?;
            let nets = state::with_defaults(req.networks);
            let mut out = Vec::new();
            for sel in nets {
                let existing = st.pods.get(&sandbox.id).and_then(|p| {
                    p.attachments
                        .iter()
                        .find(|a| a.network == sel.network)
                        .cloned()
                });
                if let Some(a) = existing {
                    out.push(a);
                    continue;
                }
                let address = match sel.ips.first() {
                    Some(ip) => ip.split('/').next().unwrap_or_default().to_string(),
                    None => {
                        st.next_host += 1;
                        let n = st.next_host;
                        format!("198.18.{}.{}", (n >> 8) & 0xff, n & 0xff)
                    }
                };
                let n = st.next_host;
                let a = Attachment {
                    network: sel.network.clone(),
                    driver: self.name.clone(),
                    interface_name: if sel.interface_name.is_empty() {
                        "eth0".into()
                    } else {
                        sel.interface_name.clone()
                    },
                    mac: if sel.mac.is_empty() {
                        format!("02:fe:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff)
                    } else {
                        sel.mac.clone()
                    },
                    mtu: if sel.mtu == 0 { 1500 } else { sel.mtu },
                    ips: vec![IpConfig {
                        address: format!("{address}/15"),
                        family: IpFamily::Ipv4 as i32,
                        gateway: "198.18.0.1".into(),
                    }],
                    routes: vec![Route {
                        destination: "0.0.0.0/0".into(),
                        gateway: "198.18.0.1".into(),
                        ..Default::default()
                    }],
                    default_route: sel.default_route.unwrap_or(true),
                    netns_path: sandbox.netns_path.clone(),
                    ..Default::default()
                };
                let entry = st
                    .pods
                    .entry(sandbox.id.clone())
                    .or_insert_with(|| PodAttachments {
                        sandbox: Some(sandbox.clone()),
                        attachments: vec![],
                    });
                entry.attachments.push(a.clone());
                out.push(a);
            }
            out
        };
        if self.attach_delay > std::time::Duration::ZERO {
            // The work is done and recorded; only the answer is late.
            tokio::time::sleep(self.attach_delay).await;
        }
        Ok(Response::new(AttachPodResponse { attachments: out }))
    }

    async fn detach_pod(
        &self,
        req: Request<DetachPodRequest>,
    ) -> Result<Response<DetachPodResponse>, Status> {
        let req = req.into_inner();
        validate::detach_pod(&req)?;
        let mut st = self.state()?;
        if let Some(p) = st.pods.get_mut(&req.sandbox_id) {
            if req.networks.is_empty() {
                p.attachments.clear();
            } else {
                p.attachments
                    .retain(|a| !req.networks.iter().any(|n| n.network == a.network));
            }
            if p.attachments.is_empty() {
                st.pods.remove(&req.sandbox_id);
            }
        }
        Ok(Response::new(DetachPodResponse {}))
    }

    async fn pod_network_status(
        &self,
        req: Request<PodNetworkStatusRequest>,
    ) -> Result<Response<PodNetworkStatusResponse>, Status> {
        let pods = self.state()?.pods.values().cloned().collect::<Vec<_>>();
        state::pod_network_status(&req.into_inner(), pods).map(Response::new)
    }

    async fn list_attachments(
        &self,
        req: Request<ListAttachmentsRequest>,
    ) -> Result<Response<ListAttachmentsResponse>, Status> {
        let pods = self.state()?.pods.values().cloned().collect::<Vec<_>>();
        state::list_attachments(&req.into_inner(), pods).map(Response::new)
    }

    async fn garbage_collect(
        &self,
        req: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectResponse>, Status> {
        let mut st = self.state()?;
        let req = req.into_inner();
        let stale = state::stale_sandboxes(&req, st.pods.values().cloned())?;
        for k in &stale {
            if req.network.is_empty() {
                st.pods.remove(k);
            } else if let Some(p) = st.pods.get_mut(k) {
                p.attachments.retain(|a| a.network != req.network);
                if p.attachments.is_empty() {
                    st.pods.remove(k);
                }
            }
        }
        Ok(Response::new(GarbageCollectResponse {
            removed_sandbox_ids: stale,
        }))
    }
}

#[tonic::async_trait]
impl Node for Fixture {
    async fn network_ready(
        &self,
        req: Request<NetworkReadyRequest>,
    ) -> Result<Response<NetworkReadyResponse>, Status> {
        validate::optional_network("network", &req.into_inner().network)?;
        let readiness = match &self.not_ready {
            None => NetworkReadiness {
                ready: true,
                ..Default::default()
            },
            Some(reason) => NetworkReadiness {
                ready: false,
                reason: reason.clone(),
                message: "fixture configured not ready".into(),
                conditions: vec![],
            },
        };
        Ok(Response::new(NetworkReadyResponse {
            readiness: Some(readiness),
        }))
    }

    async fn watch_network_ready(
        &self,
        req: Request<WatchNetworkReadyRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<WatchNetworkReadyResponse>>, Status> {
        let network = req.into_inner().network;
        let now = self
            .network_ready(Request::new(NetworkReadyRequest { network }))
            .await?
            .into_inner();
        // The fixture's readiness never changes: one snapshot, then the stream stays open.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            if tx
                .send(Ok(WatchNetworkReadyResponse {
                    readiness: now.readiness,
                }))
                .await
                .is_ok()
            {
                tx.closed().await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tonic::async_trait]
impl Services for Fixture {
    async fn program_service(
        &self,
        req: Request<ProgramServiceRequest>,
    ) -> Result<Response<ProgramServiceResponse>, Status> {
        let req = req.into_inner();
        validate::program_service(&req)?;
        let mut st = self.state()?;
        // A part of a full sync is kept until the last; then they apply as one.
        let applied = match st.service_parts.offer(req)? {
            Some(req) => st.services.apply(&req)?,
            None => st.services.applied(),
        };
        Ok(Response::new(ProgramServiceResponse::from(applied)))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        Ok(Response::new(
            self.state()?.services.list(&req.into_inner().namespace),
        ))
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    let pattern = pattern.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.ends_with(&format!(".{suffix}")),
        None => name == pattern,
    }
}

#[tonic::async_trait]
impl Policy for Fixture {
    async fn apply_policy(
        &self,
        req: Request<ApplyPolicyRequest>,
    ) -> Result<Response<ApplyPolicyResponse>, Status> {
        let req = req.into_inner();
        validate::apply_policy(&req)?;
        let mut st = self.state()?;
        let applied = match st.policy_parts.offer(req)? {
            Some(req) => st.policies.apply(&req)?,
            None => st.policies.applied(),
        };
        Ok(Response::new(ApplyPolicyResponse::from(applied)))
    }

    async fn check_dns(
        &self,
        req: Request<CheckDnsRequest>,
    ) -> Result<Response<CheckDnsResponse>, Status> {
        let req = req.into_inner();
        validate::check_dns(&req)?;
        let st = self.state()?;
        for p in st.policies.dns_policies() {
            let Some(key) = &p.key else { continue };
            if !req.namespace.is_empty() && key.namespace != req.namespace {
                continue;
            }
            let name = format!("{}/{}", key.namespace, key.name);
            if p.deny.iter().any(|d| matches(d, &req.query_name)) {
                return Ok(Response::new(CheckDnsResponse {
                    action: DnsAction::Deny as i32,
                    policy: name,
                    reason: "denied by pattern".into(),
                    ..Default::default()
                }));
            }
            if p.allow.iter().any(|a| matches(a, &req.query_name)) {
                return Ok(Response::new(CheckDnsResponse {
                    action: DnsAction::Allow as i32,
                    policy: name,
                    reason: "allowed by pattern".into(),
                    ..Default::default()
                }));
            }
        }
        Ok(Response::new(CheckDnsResponse {
            action: DnsAction::Allow as i32,
            policy: String::new(),
            reason: "no policy matched".into(),
            ..Default::default()
        }))
    }

    async fn check_hostname(
        &self,
        req: Request<CheckHostnameRequest>,
    ) -> Result<Response<CheckHostnameResponse>, Status> {
        let req = req.into_inner();
        validate::check_hostname(&req)?;
        let st = self.state()?;
        for g in st.policies.hostname_grants() {
            let ns_ok = g.namespaces.iter().any(|n| n == "*" || *n == req.namespace);
            if ns_ok && g.hostnames.iter().any(|h| matches(h, &req.hostname)) {
                return Ok(Response::new(CheckHostnameResponse {
                    allowed: true,
                    grant: g.key.as_ref().map(|k| k.name.clone()).unwrap_or_default(),
                    reason: "granted".into(),
                    ..Default::default()
                }));
            }
        }
        Ok(Response::new(CheckHostnameResponse {
            allowed: false,
            grant: String::new(),
            reason: "no grant matches".into(),
            ..Default::default()
        }))
    }

    async fn list_policies(
        &self,
        _req: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        Ok(Response::new(self.state()?.policies.list()))
    }
}

impl Fixture {
    /// The inventory with the claims holding each device.
    fn listed(&self, st: &State) -> Vec<Device> {
        inventory()
            .into_iter()
            .map(|mut d| {
                d.driver = self.name.clone();
                if let Some(c) = st.claims.values().find(|c| {
                    c.devices
                        .iter()
                        .any(|a| a.device.as_ref().is_some_and(|x| x.id == d.id))
                }) {
                    d.allocated_to_claim = c.claim_uid.clone();
                }
                d
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Devices for Fixture {
    async fn list_devices(
        &self,
        req: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        let req = req.into_inner();
        validate::list_devices("", &req)?;
        let st = self.state()?;
        let devices = self
            .listed(&st)
            .into_iter()
            .filter(|d| netlet_sdk::devices::listed(d, &req))
            .collect();
        Ok(Response::new(ListDevicesResponse { devices }))
    }

    async fn allocate_device(
        &self,
        req: Request<AllocateDeviceRequest>,
    ) -> Result<Response<AllocateDeviceResponse>, Status> {
        let req = req.into_inner();
        validate::allocate_device(&req)?;
        let mut st = self.state()?;
        if let Some(c) = st.claims.get(&req.claim_uid) {
            if st.claim_requests.get(&req.claim_uid) != Some(&req) {
                return Err(validate::field_error(
                    tonic::Code::AlreadyExists,
                    "claim_uid",
                    format!(
                        "claim {:?} is allocated with another request",
                        req.claim_uid
                    ),
                    "CLAIM_EXISTS",
                ));
            }
            return Ok(Response::new(c.clone()));
        }
        let inv = self.listed(&st);
        // No PCI functions besides its own: alignment is with inventory devices only.
        let devices = netlet_sdk::devices::allocate(&req, &inv, &[], &|_| None)?;
        let out = AllocateDeviceResponse {
            claim_uid: req.claim_uid.clone(),
            devices,
        };
        st.claim_requests.insert(req.claim_uid.clone(), req.clone());
        st.claims.insert(req.claim_uid.clone(), out.clone());
        Ok(Response::new(out))
    }

    async fn release_device(
        &self,
        req: Request<ReleaseDeviceRequest>,
    ) -> Result<Response<ReleaseDeviceResponse>, Status> {
        let req = req.into_inner();
        validate::release_device(&req)?;
        let mut st = self.state()?;
        st.claims.remove(&req.claim_uid);
        st.claim_requests.remove(&req.claim_uid);
        Ok(Response::new(ReleaseDeviceResponse {}))
    }
}

/// Identity with a different API version: serves only GetInfo/Probe.
struct OtherVersion(String, String);

#[tonic::async_trait]
impl netlet_sdk::proto::identity_server::Identity for OtherVersion {
    async fn get_info(
        &self,
        _req: Request<netlet_sdk::proto::GetInfoRequest>,
    ) -> Result<Response<netlet_sdk::proto::GetInfoResponse>, Status> {
        Ok(Response::new(netlet_sdk::proto::GetInfoResponse {
            name: self.0.clone(),
            vendor_version: "0.0.0".into(),
            api_versions: vec![self.1.clone()],
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    netlet_sdk::init_tracing();
    let args = Args::parse();
    if let Some(p) = &args.pid_file {
        std::fs::write(p, std::process::id().to_string())?;
    }
    let socket = match args.socket.clone() {
        Some(s) => s,
        None => std::env::var_os(netlet_sdk::SOCKET_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| anyhow::anyhow!("--socket or ${} required", netlet_sdk::SOCKET_ENV))?,
    };
    if let Some(v) = args.api_version {
        // Speak only Identity, with a foreign version: the host must refuse to register us.
        let mut sock = netlet_sdk::server::bind_unix(&socket, 0o660)?;
        let incoming = sock
            .incoming()
            .ok_or_else(|| anyhow::anyhow!("no listener"))?;
        tonic::transport::Server::builder()
            .add_service(netlet_sdk::proto::identity_server::IdentityServer::new(
                OtherVersion(args.name, v),
            ))
            .serve_with_incoming_shutdown(incoming, netlet_sdk::server::shutdown_signal())
            .await?;
        return Ok(());
    }
    let fx = Fixture {
        name: args.name.clone(),
        fail_attach: args.fail_attach,
        not_ready: args.not_ready.clone(),
        attach_delay: std::time::Duration::from_millis(args.attach_delay_ms),
        state: Arc::new(Mutex::new(State::default())),
    };
    if args.exit_on_sigterm {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            term.recv().await;
            std::process::exit(0);
        });
    }
    let mut d = Driver::new(&args.name, env!("CARGO_PKG_VERSION"))
        .socket(socket)
        .max_message_bytes(args.max_message_bytes);
    for n in &args.networks {
        d = d.network(n);
    }
    for f in args.features.iter().filter(|f| *f != "none") {
        let name = format!("FEATURE_{}", f.to_ascii_uppercase().replace('-', "_"));
        let feature = netlet_sdk::proto::Feature::from_str_name(&name)
            .ok_or_else(|| anyhow::anyhow!("unknown feature {f:?}"))?;
        d = d.feature(feature);
    }
    for c in &args.capabilities {
        d = match c.as_str() {
            "pods" => d.pods(fx.clone()),
            "node" => d.node(fx.clone()),
            "services" => d.services(fx.clone()),
            "policy" => d.policy(fx.clone()),
            "devices" => d.devices(fx.clone()),
            other => anyhow::bail!("unknown capability {other:?}"),
        };
    }
    d.serve().await?;
    Ok(())
}
