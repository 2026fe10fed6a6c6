//! The node configuration: YAML, Kubernetes style (`apiVersion: netlet.io/v1alpha1`,
//! `kind: NodeConfig`), validated with errors naming the file, the field and why.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Where the node name comes from when the NodeConfig does not say (the DaemonSet sets it
/// from the pod's `spec.nodeName`).
pub const NODE_NAME_ENV: &str = "NETLET_NODE_NAME";

/// The configuration used when `netlet serve` gets no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default-config.yaml");

/// Source name of the embedded default in error messages.
pub const EMBEDDED_NAME: &str = "<embedded default config>";

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("config {file}: {source}")]
    Read {
        /// File.
        file: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// YAML did not parse or did not match the schema.
    #[error("config {file}: field `{field}`: {message}")]
    Parse {
        /// File.
        file: String,
        /// Path of the field, e.g. `drivers[0].command`.
        field: String,
        /// Why.
        message: String,
    },
    /// A value is not acceptable.
    #[error("config {file}: field `{field}`: {message}")]
    Invalid {
        /// File.
        file: String,
        /// Path of the field.
        field: String,
        /// Why.
        message: String,
    },
}

/// Result with the config [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `NodeConfig` document.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// Must be `netlet.io/v1alpha1`.
    pub api_version: String,
    /// Must be `NodeConfig`.
    pub kind: String,
    /// gRPC socket (flag `--socket` wins).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Admin HTTP socket; default `<socket dir>/netlet-admin.sock`.
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
    /// Optional TCP address for Prometheus to scrape the admin endpoint, e.g. `127.0.0.1:9966`.
    #[serde(default)]
    pub admin_address: Option<String>,
    /// Directory watched for external driver sockets (flag `--plugin-dir` wins).
    #[serde(default)]
    pub plugin_dir: Option<PathBuf>,
    /// Directory of the embedded database (flag `--state-dir` wins).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Who may call the API.
    #[serde(default)]
    pub authorization: Authorization,
    /// Deadline of every host→driver call, e.g. `5s`.
    #[serde(default)]
    pub driver_call_timeout: Option<String>,
    /// How often drivers are probed, e.g. `2s`.
    #[serde(default)]
    pub probe_interval: Option<String>,
    /// Consecutive failed probes after which an external driver is deregistered.
    #[serde(default)]
    pub probe_failure_threshold: Option<u32>,
    /// Maximum gRPC message size in bytes, both directions.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// This node's name, as EndpointSlices name it (`nodeName`); default: `$NETLET_NODE_NAME`
    /// (the DaemonSet sets it from `spec.nodeName`), else the hostname.
    #[serde(default)]
    pub node_name: Option<String>,
    /// This node's zone (`topology.kubernetes.io/zone`), for topology-aware routing.
    #[serde(default)]
    pub node_zone: Option<String>,
    /// Directory of Service and EndpointSlice manifests, watched (flag `--manifests` wins).
    #[serde(default)]
    pub manifests_dir: Option<PathBuf>,
    /// A kubeconfig file: Services and EndpointSlices are then also read from the Kubernetes
    /// API (flag `--kubeconfig` wins).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Networks whose driver must be registered and ready before the node is ready
    /// (NetworkReady); default `[default]`. Empty: the node is ready with no pod network.
    #[serde(default)]
    pub required_networks: Option<Vec<String>>,
    /// The range node ports and health-check node ports are taken from, as kube-apiserver's
    /// `--service-node-port-range` (`FIRST-LAST`); default `30000-32767`. A Service asking
    /// for one outside it is refused (socket) or left out and reported (manifests).
    #[serde(default)]
    pub service_node_port_range: Option<String>,
    /// Drivers the host starts and supervises.
    #[serde(default)]
    pub drivers: Vec<DriverConfig>,
    /// The node-local DNS server; off when absent.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// WebAssembly policy modules DnsPolicies and HostnameGrants may name.
    #[serde(default)]
    pub policy_modules: Vec<PolicyModuleConfig>,
    /// Limits of the WebAssembly engine.
    #[serde(default)]
    pub wasm: Option<WasmConfig>,
    /// Hostname claims: what a name no grant covers gets, and the admission webhook.
    #[serde(default)]
    pub hostnames: Option<HostnamesConfig>,
    /// The container runtime's CNI configuration, installed once the node is ready.
    #[serde(default)]
    pub cni_config: Option<CniConfigFile>,
}

/// `cniConfig:` of the NodeConfig: the file `source` is copied to `target` (the runtime's CNI
/// configuration directory) once the node's network is ready, and again whenever `target`
/// differs from `source` while it is ready; it is never removed (pods keep being torn down
/// through the shim while the host restarts).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniConfigFile {
    /// The configuration to install (e.g. from the DaemonSet's ConfigMap).
    pub source: PathBuf,
    /// Where the runtime reads it (e.g. `/host/etc/cni/net.d/10-netlet.conflist`).
    pub target: PathBuf,
}

/// `hostnames:` of the NodeConfig.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnamesConfig {
    /// What a hostname no grant covers gets: `deny` (the default), `allow`, or `audit`
    /// (allowed, the violation said as a warning and listed by the audit).
    #[serde(default)]
    pub no_grant: Option<String>,
    /// The validating admission webhook; off when absent.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

/// `hostnames.webhook:` of the NodeConfig.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    /// `IP:PORT` to serve HTTPS on. Required.
    pub listen: String,
    /// PEM certificate chain (read again whenever the file changes). Required.
    pub cert_file: PathBuf,
    /// PEM private key (read again whenever the file changes). Required.
    pub key_file: PathBuf,
}

/// `dns:` of the NodeConfig.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsConfig {
    /// Addresses to serve on (`IP` or `IP:PORT`); default `169.254.20.10:53`.
    #[serde(default)]
    pub listen: Option<Vec<String>>,
    /// Put the listen addresses on the node's loopback device (default true), as NodeLocal
    /// DNSCache puts its address on a device of its own.
    #[serde(default)]
    pub assign_addresses: Option<bool>,
    /// Take DNS packets to and from the listen addresses out of conntrack (default true), as
    /// NodeLocal DNSCache does with NOTRACK; a listen address that is the cluster DNS Service's
    /// IP is then answered on this node (taken over) instead of being DNATed.
    #[serde(default)]
    pub notrack: Option<bool>,
    /// The cluster domain; default `cluster.local`.
    #[serde(default)]
    pub cluster_domain: Option<String>,
    /// Upstream servers (`IP` or `IP:PORT`, asked over TCP); default: the `nameserver` lines of
    /// the node's `/etc/resolv.conf`.
    #[serde(default)]
    pub upstreams: Option<Vec<String>>,
    /// Name servers pods get after the node-local one (the cluster DNS Service's IP), their
    /// fallback while the node-local server is down.
    #[serde(default)]
    pub fallback_nameservers: Option<Vec<String>>,
    /// Expand pods' search lists in the server (default false; a DnsPolicy may turn it on).
    #[serde(default)]
    pub server_side_search: Option<bool>,
    /// Refuse cluster names that shadow public ones (default true).
    #[serde(default)]
    pub block_shadowing: Option<bool>,
    /// Cache entries kept at most (default 100000).
    #[serde(default)]
    pub cache_entries: Option<usize>,
    /// Longest a positive answer is cached (default 5m).
    #[serde(default)]
    pub max_ttl: Option<String>,
    /// Longest a negative answer is cached (default 30s).
    #[serde(default)]
    pub negative_ttl: Option<String>,
    /// How long expired answers are served while upstreams are down (default 1h).
    #[serde(default)]
    pub serve_stale: Option<String>,
    /// Deadline of an upstream exchange (default 2s).
    #[serde(default)]
    pub upstream_timeout: Option<String>,
}

/// One entry of `policyModules:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyModuleConfig {
    /// Name policies use.
    pub name: String,
    /// The component file (relative to the config file's directory).
    pub file: PathBuf,
    /// Expected sha256 of the file (64 hex digits).
    #[serde(default)]
    pub sha256: Option<String>,
    /// `closed` (default: a failing module denies) or `open`.
    #[serde(default)]
    pub failure: Option<String>,
}

/// `wasm:` of the NodeConfig.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmConfig {
    /// Deadline of one call (default 1ms).
    #[serde(default)]
    pub deadline: Option<String>,
    /// Memory one call may use, in bytes (default 16777216).
    #[serde(default)]
    pub memory_limit_bytes: Option<usize>,
}

/// Peer-credential allow-list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// Allowed user ids.
    #[serde(default = "root_only")]
    pub uids: Vec<u32>,
    /// Allowed group ids.
    #[serde(default)]
    pub gids: Vec<u32>,
}

fn root_only() -> Vec<u32> {
    vec![0]
}

impl Default for Authorization {
    fn default() -> Self {
        Self {
            uids: root_only(),
            gids: Vec::new(),
        }
    }
}

/// A supervised driver.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriverConfig {
    /// Registry name; a DNS-1123 label, unique.
    pub name: String,
    /// Program; a bare name is looked up beside the `netlet` binary, then in `PATH`.
    pub command: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: Vec<EnvVar>,
}

/// One environment variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// The configuration with defaults applied and values checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC socket.
    pub socket: PathBuf,
    /// Admin socket.
    pub admin_socket: PathBuf,
    /// Optional admin TCP address.
    pub admin_address: Option<std::net::SocketAddr>,
    /// Plugin directory.
    pub plugin_dir: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// Where supervised drivers' sockets go.
    pub driver_socket_dir: PathBuf,
    /// Allow-list.
    pub authorization: Authorization,
    /// Host→driver deadline.
    pub driver_call_timeout: Duration,
    /// Probe period.
    pub probe_interval: Duration,
    /// Failed probes before an external driver is dropped.
    pub probe_failure_threshold: u32,
    /// Max message size.
    pub max_message_bytes: usize,
    /// Supervised drivers.
    pub drivers: Vec<DriverConfig>,
    /// This node's name and zone.
    pub node: crate::services::view::NodeInfo,
    /// Manifests directory, if any.
    pub manifests_dir: Option<PathBuf>,
    /// The kubeconfig of the Kubernetes API source, when on.
    pub kubeconfig: Option<PathBuf>,
    /// Networks the node needs before it is ready.
    pub required_networks: Vec<String>,
    /// Where node ports and health-check node ports must lie.
    pub node_port_range: std::ops::RangeInclusive<u32>,
    /// The node-local DNS server, when on.
    pub dns: Option<crate::dns::Config>,
    /// Whether the DNS listen addresses are put on the loopback device.
    pub dns_assign_addresses: bool,
    /// Whether DNS packets to and from the listen addresses skip conntrack.
    pub dns_notrack: bool,
    /// WebAssembly policy modules.
    pub policy_modules: Vec<crate::wasm::ModuleSpec>,
    /// Limits of the WebAssembly engine.
    pub wasm: crate::wasm::Limits,
    /// What a hostname no grant covers gets.
    pub no_grant: crate::hostnames::NoGrant,
    /// The hostname admission webhook: where it listens, its certificate and key files.
    pub webhook: Option<(std::net::SocketAddr, PathBuf, PathBuf)>,
    /// The CNI configuration installed once the node is ready: (source, target).
    pub cni_config: Option<(PathBuf, PathBuf)>,
}

/// Command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--plugin-dir`.
    pub plugin_dir: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--admin-socket`.
    pub admin_socket: Option<PathBuf>,
    /// `--manifests`.
    pub manifests_dir: Option<PathBuf>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
}

/// `FIRST-LAST`, both ports, FIRST <= LAST.
fn parse_port_range(r: &str) -> Option<std::ops::RangeInclusive<u32>> {
    let (a, b) = r.trim().split_once('-')?;
    let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (1 <= a && a <= b && b <= 65535).then_some(a..=b)
}

/// Parses a document; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<NodeConfig> {
    netlet_sdk::yaml::from_str(text).map_err(|e| Error::Parse {
        file: file.to_string(),
        field: e.field,
        message: e.message,
    })
}

/// Reads and parses `path`, or the embedded default when `None`.
pub fn load(path: Option<&Path>) -> Result<(String, NodeConfig)> {
    match path {
        Some(p) => {
            let file = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|source| Error::Read {
                file: file.clone(),
                source,
            })?;
            let cfg = parse(&file, &text)?;
            Ok((file, cfg))
        }
        None => Ok((
            EMBEDDED_NAME.to_string(),
            parse(EMBEDDED_NAME, EMBEDDED_DEFAULT)?,
        )),
    }
}

fn is_dns_label(v: &str) -> bool {
    netlet_sdk::validate::dns_label("", v).is_ok()
}

impl NodeConfig {
    /// Validates and applies defaults and overrides.
    pub fn settings(self, file: &str, o: Overrides) -> Result<Settings> {
        let invalid = |field: &str, message: String| Error::Invalid {
            file: file.to_string(),
            field: field.to_string(),
            message,
        };
        if self.api_version != "netlet.io/v1alpha1" {
            return Err(invalid(
                "apiVersion",
                format!(
                    "{:?} is not supported; use netlet.io/v1alpha1",
                    self.api_version
                ),
            ));
        }
        if self.kind != "NodeConfig" {
            return Err(invalid(
                "kind",
                format!("{:?}: expected NodeConfig", self.kind),
            ));
        }
        let duration = |field: &str, v: &Option<String>, default: Duration| -> Result<Duration> {
            match v {
                None => Ok(default),
                Some(s) => match humantime::parse_duration(s) {
                    Ok(d) if !d.is_zero() => Ok(d),
                    Ok(_) => Err(invalid(field, "must be greater than zero".into())),
                    Err(e) => Err(invalid(
                        field,
                        format!("{s:?} is not a duration like 5s: {e}"),
                    )),
                },
            }
        };
        let driver_call_timeout = duration(
            "driverCallTimeout",
            &self.driver_call_timeout,
            Duration::from_secs(10),
        )?;
        let probe_interval = duration(
            "probeInterval",
            &self.probe_interval,
            Duration::from_secs(2),
        )?;
        let probe_failure_threshold = self.probe_failure_threshold.unwrap_or(3);
        if probe_failure_threshold == 0 {
            return Err(invalid(
                "probeFailureThreshold",
                "must be at least 1".into(),
            ));
        }
        let max_message_bytes = self
            .max_message_bytes
            .unwrap_or(netlet_sdk::DEFAULT_MAX_MESSAGE_BYTES);
        if !(4096..=256 * 1024 * 1024).contains(&max_message_bytes) {
            return Err(invalid(
                "maxMessageBytes",
                format!("{max_message_bytes} is outside 4096..=268435456"),
            ));
        }
        let admin_address = match &self.admin_address {
            None => None,
            Some(a) => Some(a.parse().map_err(|e| {
                invalid(
                    "adminAddress",
                    format!("{a:?} is not an address like 127.0.0.1:9966: {e}"),
                )
            })?),
        };
        if self.authorization.uids.is_empty() && self.authorization.gids.is_empty() {
            return Err(invalid(
                "authorization",
                "allows nobody: list at least one uid or gid".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, d) in self.drivers.iter().enumerate() {
            if !is_dns_label(&d.name) {
                return Err(invalid(
                    &format!("drivers[{i}].name"),
                    format!("{:?} is not a DNS-1123 label", d.name),
                ));
            }
            if !names.insert(d.name.as_str()) {
                return Err(invalid(
                    &format!("drivers[{i}].name"),
                    format!("{:?} is used twice", d.name),
                ));
            }
            if d.command.trim().is_empty() {
                return Err(invalid(&format!("drivers[{i}].command"), "required".into()));
            }
            for (j, e) in d.env.iter().enumerate() {
                if e.name.is_empty() || e.name.contains('=') {
                    return Err(invalid(
                        &format!("drivers[{i}].env[{j}].name"),
                        "must be non-empty without '='".into(),
                    ));
                }
            }
        }
        let required_networks = self
            .required_networks
            .unwrap_or_else(|| vec![crate::attach::DEFAULT_NETWORK.to_string()]);
        for (i, n) in required_networks.iter().enumerate() {
            if !is_dns_label(n) {
                return Err(invalid(
                    &format!("requiredNetworks[{i}]"),
                    format!("{n:?} is not a DNS-1123 label"),
                ));
            }
        }
        let node_port_range = match &self.service_node_port_range {
            None => 30000..=32767,
            Some(r) => parse_port_range(r).ok_or_else(|| {
                invalid(
                    "serviceNodePortRange",
                    format!("{r:?} is not FIRST-LAST with 1 <= FIRST <= LAST <= 65535"),
                )
            })?,
        };
        let wasm_cfg = self.wasm.clone().unwrap_or_default();
        let wasm = crate::wasm::Limits {
            deadline: duration(
                "wasm.deadline",
                &wasm_cfg.deadline,
                Duration::from_millis(1),
            )?,
            memory: wasm_cfg.memory_limit_bytes.unwrap_or(16 << 20),
            ..Default::default()
        };
        if wasm.memory < 1 << 16 || wasm.memory > 1 << 30 {
            return Err(invalid(
                "wasm.memoryLimitBytes",
                "must be between 65536 and 1073741824".into(),
            ));
        }
        let base = Path::new(file)
            .parent()
            .filter(|p| p.is_dir())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut policy_modules = Vec::new();
        let mut module_names = HashSet::new();
        for (i, m) in self.policy_modules.iter().enumerate() {
            let f = |k: &str| format!("policyModules[{i}].{k}");
            if netlet_sdk::validate::dns_label(&f("name"), &m.name).is_err() {
                return Err(invalid(
                    &f("name"),
                    format!("{:?} is not a DNS-1123 label", m.name),
                ));
            }
            if !module_names.insert(m.name.clone()) {
                return Err(invalid(&f("name"), format!("{:?} is given twice", m.name)));
            }
            if let Some(d) = &m.sha256
                && !(d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(invalid(&f("sha256"), "not 64 hex digits".into()));
            }
            let fail_open = match m.failure.as_deref() {
                None | Some("closed") => false,
                Some("open") => true,
                Some(other) => {
                    return Err(invalid(
                        &f("failure"),
                        format!("{other:?}: expected open or closed"),
                    ));
                }
            };
            policy_modules.push(crate::wasm::ModuleSpec {
                name: m.name.clone(),
                path: base.join(&m.file),
                sha256: m.sha256.clone(),
                fail_open,
            });
        }
        let dns_assign_addresses = self
            .dns
            .as_ref()
            .and_then(|d| d.assign_addresses)
            .unwrap_or(true);
        let dns_notrack = self.dns.as_ref().and_then(|d| d.notrack).unwrap_or(true);
        let dns = match &self.dns {
            None => None,
            Some(d) => Some(dns_settings(d, &invalid, &duration)?),
        };
        let hn = self.hostnames.clone().unwrap_or_default();
        let no_grant = match &hn.no_grant {
            None => Default::default(),
            Some(m) => m
                .parse()
                .map_err(|e: String| invalid("hostnames.noGrant", e))?,
        };
        let webhook = match hn.webhook {
            None => None,
            Some(w) => {
                let listen = w.listen.parse().map_err(|_| {
                    invalid(
                        "hostnames.webhook.listen",
                        format!("{:?} is not IP:PORT", w.listen),
                    )
                })?;
                Some((listen, base.join(w.cert_file), base.join(w.key_file)))
            }
        };
        let cni_config = match &self.cni_config {
            None => None,
            Some(c) => {
                for (field, p) in [
                    ("cniConfig.source", &c.source),
                    ("cniConfig.target", &c.target),
                ] {
                    if !p.is_absolute() || p.file_name().is_none() {
                        return Err(invalid(
                            field,
                            format!("{} is not an absolute file path", p.display()),
                        ));
                    }
                }
                Some((c.source.clone(), c.target.clone()))
            }
        };
        let socket = o
            .socket
            .or(self.socket)
            .unwrap_or_else(|| PathBuf::from("/run/netlet/netlet.sock"));
        let run_dir = socket.parent().map(Path::to_path_buf).unwrap_or_default();
        let admin_socket = o
            .admin_socket
            .or(self.admin_socket)
            .unwrap_or_else(|| run_dir.join("netlet-admin.sock"));
        Ok(Settings {
            driver_socket_dir: run_dir.join("drivers"),
            socket,
            admin_socket,
            admin_address,
            plugin_dir: o
                .plugin_dir
                .or(self.plugin_dir)
                .unwrap_or_else(|| PathBuf::from("/run/netlet/plugins")),
            state_dir: o
                .state_dir
                .or(self.state_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/netlet")),
            authorization: self.authorization,
            driver_call_timeout,
            probe_interval,
            probe_failure_threshold,
            max_message_bytes,
            drivers: self.drivers,
            node: crate::services::view::NodeInfo {
                name: self
                    .node_name
                    .or_else(|| std::env::var(NODE_NAME_ENV).ok().filter(|n| !n.is_empty()))
                    .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
                    .unwrap_or_default(),
                zone: self.node_zone.unwrap_or_default(),
            },
            manifests_dir: o.manifests_dir.or(self.manifests_dir),
            kubeconfig: o.kubeconfig.or(self.kubeconfig),
            required_networks,
            node_port_range,
            dns,
            dns_assign_addresses,
            dns_notrack,
            policy_modules,
            wasm,
            no_grant,
            webhook,
            cni_config,
        })
    }
}

fn socket_addr(v: &str, port: u16) -> Option<std::net::SocketAddr> {
    v.parse().ok().or_else(|| {
        v.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, port))
    })
}

/// Parses a duration field, defaulting when absent.
type DurationField<'a> = &'a dyn Fn(&str, &Option<String>, Duration) -> Result<Duration>;

fn dns_settings(
    d: &DnsConfig,
    invalid: &dyn Fn(&str, String) -> Error,
    duration: DurationField<'_>,
) -> Result<crate::dns::Config> {
    let mut c = crate::dns::Config::default();
    if let Some(l) = &d.listen {
        c.listen = Vec::new();
        for (i, a) in l.iter().enumerate() {
            c.listen.push(socket_addr(a, 53).ok_or_else(|| {
                invalid(
                    &format!("dns.listen[{i}]"),
                    format!("{a:?} is not IP or IP:PORT"),
                )
            })?);
        }
    }
    if let Some(dom) = &d.cluster_domain {
        let dom = dom.trim_end_matches('.');
        if dom.is_empty()
            || dom
                .split('.')
                .any(|l| netlet_sdk::validate::dns_label("", l).is_err())
        {
            return Err(invalid(
                "dns.clusterDomain",
                format!("{dom:?} is not a domain name"),
            ));
        }
        c.domain = dom.to_string();
    }
    c.upstreams = match &d.upstreams {
        Some(u) => {
            let mut out = Vec::new();
            for (i, a) in u.iter().enumerate() {
                out.push(socket_addr(a, 53).ok_or_else(|| {
                    invalid(
                        &format!("dns.upstreams[{i}]"),
                        format!("{a:?} is not IP or IP:PORT"),
                    )
                })?);
            }
            out
        }
        None => crate::dns::resolv_conf_upstreams(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        )
        .into_iter()
        .filter(|a| !c.listen.iter().any(|l| l.ip() == a.ip()))
        .collect(),
    };
    for (i, a) in d.fallback_nameservers.iter().flatten().enumerate() {
        c.fallback.push(a.parse().map_err(|_| {
            invalid(
                &format!("dns.fallbackNameservers[{i}]"),
                format!("{a:?} is not an IP address"),
            )
        })?);
    }
    if c.fallback.len() > 2 {
        return Err(invalid(
            "dns.fallbackNameservers",
            "at most 2 (pods get at most 3 name servers)".into(),
        ));
    }
    c.defaults.server_side_search = d.server_side_search.unwrap_or(false);
    c.defaults.block_shadowing = d.block_shadowing.unwrap_or(true);
    if let Some(n) = d.cache_entries {
        c.cache_entries = n;
    }
    c.max_ttl = duration("dns.maxTtl", &d.max_ttl, c.max_ttl)?;
    c.negative_ttl = duration("dns.negativeTtl", &d.negative_ttl, c.negative_ttl)?;
    c.serve_stale = duration("dns.serveStale", &d.serve_stale, c.serve_stale)?;
    c.upstream_timeout = duration(
        "dns.upstreamTimeout",
        &d.upstream_timeout,
        c.upstream_timeout,
    )?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Settings> {
        parse("t.yaml", text)?.settings("t.yaml", Overrides::default())
    }

    /// The NodeConfig deploy/netlet.yaml ships is valid, and says what its comments promise.
    #[test]
    fn the_deployed_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/netlet.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let cm = netlet_sdk::yaml::documents::<serde_json::Value>(&text)
            .unwrap()
            .into_iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "netlet-config")
            .expect("the ConfigMap netlet-config");
        let s = settings(cm["data"]["node.yaml"].as_str().unwrap()).unwrap();
        assert_eq!(
            s.cni_config,
            Some((
                PathBuf::from("/config/10-netlet.conflist"),
                PathBuf::from("/host/etc/cni/net.d/10-netlet.conflist")
            ))
        );
        let dns = s.dns.expect("node-local DNS on");
        assert!(
            dns.listen.contains(&"10.96.0.10:53".parse().unwrap()),
            "{:?}",
            dns.listen
        );
        let conflist: serde_json::Value =
            serde_json::from_str(cm["data"]["10-netlet.conflist"].as_str().unwrap()).unwrap();
        assert_eq!(
            conflist["plugins"][0]["capabilities"],
            serde_json::json!({"portMappings": true, "bandwidth": true})
        );
        let e = settings(
            "apiVersion: netlet.io/v1alpha1\nkind: NodeConfig\ncniConfig: {source: rel.conflist, target: /etc/cni/net.d/x.conflist}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("cniConfig.source"), "{e}");
    }

    #[test]
    fn dns_and_modules_are_checked_field_by_field() {
        const HEAD: &str = "apiVersion: netlet.io/v1alpha1\nkind: NodeConfig\n";
        let s = settings(&format!(
            "{HEAD}dns: {{listen: [\"169.254.20.10\", \"[fd00::10]:5353\"], upstreams: [\"192.0.2.53\"], clusterDomain: corp.internal.}}\npolicyModules: [{{name: lists, file: m.wasm, failure: open}}]\n"
        ))
        .unwrap();
        let d = s.dns.unwrap();
        assert_eq!(
            d.listen,
            vec![
                "169.254.20.10:53".parse().unwrap(),
                "[fd00::10]:5353".parse().unwrap()
            ]
        );
        assert_eq!(d.upstreams, vec!["192.0.2.53:53".parse().unwrap()]);
        assert_eq!(d.domain, "corp.internal");
        assert!(s.policy_modules[0].fail_open);
        assert!(s.dns_notrack, "NOTRACK unless turned off");
        let off = settings(&format!("{HEAD}dns: {{notrack: false}}\n")).unwrap();
        assert!(!off.dns_notrack);
        for (text, field) in [
            ("dns: {listen: [\"nowhere\"]}", "dns.listen[0]"),
            ("dns: {upstreams: [\"1.2.3.4:x\"]}", "dns.upstreams[0]"),
            ("dns: {clusterDomain: \"bad..domain\"}", "dns.clusterDomain"),
            ("dns: {maxTtl: 0s}", "dns.maxTtl"),
            (
                "dns: {fallbackNameservers: [a, b]}",
                "dns.fallbackNameservers[0]",
            ),
            (
                "policyModules: [{name: Bad_Name, file: m.wasm}]",
                "policyModules[0].name",
            ),
            (
                "policyModules: [{name: m, file: m.wasm, sha256: abc}]",
                "policyModules[0].sha256",
            ),
            (
                "policyModules: [{name: m, file: m.wasm, failure: maybe}]",
                "policyModules[0].failure",
            ),
            (
                "policyModules: [{name: m, file: a.wasm}, {name: m, file: b.wasm}]",
                "policyModules[1].name",
            ),
            ("wasm: {memoryLimitBytes: 10}", "wasm.memoryLimitBytes"),
        ] {
            match settings(&format!("{HEAD}{text}\n")) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let (file, cfg) = load(None).unwrap();
        let s = cfg.settings(&file, Overrides::default()).unwrap();
        assert_eq!(s.socket, PathBuf::from("/run/netlet/netlet.sock"));
        assert_eq!(s.authorization.uids, vec![0]);
        assert_eq!(s.required_networks, ["default"]);
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = settings("apiVersion: netlet.io/v1alpha1\nkind: NodeConfig\ndrivers:\n- name: ok\n  command: x\n- name: Bad\n  command: y\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config t.yaml: field `drivers[1].name`: \"Bad\" is not a DNS-1123 label"
        );
        let e = settings(
            "apiVersion: netlet.io/v1alpha1\nkind: NodeConfig\ndrivers:\n- name: a\n  comand: x\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config t.yaml: field `drivers[0]"),
            "{e}"
        );
        assert!(e.to_string().contains("comand"), "{e}");
        let e =
            settings("apiVersion: netlet.io/v1alpha1\nkind: NodeConfig\ndriverCallTimeout: soon\n")
                .unwrap_err();
        assert!(e.to_string().contains("`driverCallTimeout`"), "{e}");
        let e = settings("apiVersion: v1\nkind: NodeConfig\n").unwrap_err();
        assert!(e.to_string().contains("`apiVersion`"), "{e}");
        let e = settings(
            "apiVersion: netlet.io/v1alpha1\nkind: NodeConfig\nrequiredNetworks: [default, Net_2]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`requiredNetworks[1]`"), "{e}");
    }

    #[test]
    fn overrides_win() {
        let s = parse(
            "t",
            "apiVersion: netlet.io/v1alpha1\nkind: NodeConfig\nsocket: /a/b.sock\n",
        )
        .unwrap()
        .settings(
            "t",
            Overrides {
                socket: Some("/x/y.sock".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.socket, PathBuf::from("/x/y.sock"));
        assert_eq!(s.admin_socket, PathBuf::from("/x/netlet-admin.sock"));
        assert_eq!(s.driver_socket_dir, PathBuf::from("/x/drivers"));
    }
}
