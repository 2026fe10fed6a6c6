//! The CNI spec's JSON shapes (network configuration in, results and errors out) for versions
//! 0.4.0, 1.0.0 and 1.1.0, and the environment a runtime passes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// Default host socket.
pub const DEFAULT_SOCKET: &str = "/run/netlet/netlet.sock";

/// Well-known CNI error codes.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific errors start at 100.
    pub const PLUGIN: u32 = 100;
}

/// A CNI error: printed as `{"cniVersion", "code", "msg", "details"}` with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer details.
    pub details: String,
}

impl CniError {
    /// An error with `code`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's JSON.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

/// The network configuration on stdin (the fields this plugin reads; others are ignored,
/// as the spec asks).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Version of the config and of the result wanted.
    pub cni_version: String,
    /// CNI network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type (`netlet`).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The host's socket.
    #[serde(default)]
    pub socket: Option<String>,
    /// The netlet network to attach to (default `default`).
    #[serde(default)]
    pub network: Option<String>,
    /// Capabilities the runtime filled in.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// The result of the previous plugin or of the ADD (CHECK, DEL).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments still valid.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// `runtimeConfig`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// `portMappings` capability.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// `bandwidth` capability.
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    /// `ips` capability.
    #[serde(default)]
    pub ips: Vec<String>,
    /// `mac` capability.
    #[serde(default)]
    pub mac: Option<String>,
}

/// One port mapping as runtimes send it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Host port.
    pub host_port: u32,
    /// Container port.
    pub container_port: u32,
    /// `tcp`, `udp`, `sctp`.
    #[serde(default)]
    pub protocol: String,
    /// Host address.
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

/// The bandwidth capability (bits per second, bits).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate.
    #[serde(default)]
    pub ingress_rate: u64,
    /// Ingress burst.
    #[serde(default)]
    pub ingress_burst: u64,
    /// Egress rate.
    #[serde(default)]
    pub egress_rate: u64,
    /// Egress burst.
    #[serde(default)]
    pub egress_burst: u64,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    /// Container (sandbox) id.
    #[serde(rename = "containerID")]
    pub container_id: String,
}

/// The `CNI_*` environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: HashMap<String, String>,
}

impl Env {
    /// Reads the environment through `get`.
    pub fn from(get: impl Fn(&str) -> Option<String>) -> Self {
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
        }
    }

    /// Fails with code 4 naming the first of `names` that is empty.
    pub fn require(&self, names: &[&str]) -> Result<(), CniError> {
        for n in names {
            let v = match *n {
                "CNI_CONTAINERID" => &self.container_id,
                "CNI_NETNS" => &self.netns,
                "CNI_IFNAME" => &self.ifname,
                _ => continue,
            };
            if v.is_empty() {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("{n} is required"),
                    "",
                ));
            }
        }
        Ok(())
    }
}

/// One interface of a result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1.0 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for interfaces inside the sandbox.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address of a result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ip {
    /// `4` or `6`, 0.4.0 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Index into `interfaces`.
    pub interface: usize,
    /// CIDR.
    pub address: String,
    /// Gateway.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

/// One route of a result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteOut {
    /// Destination.
    pub dst: String,
    /// Gateway.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gw: String,
}

/// DNS of a result.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Dns {
    /// Nameservers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Domain.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An ADD result.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// Version.
    pub cni_version: String,
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<Ip>,
    /// Routes.
    pub routes: Vec<RouteOut>,
    /// DNS.
    pub dns: Dns,
}

impl NetConf {
    /// The fields the spec requires: `name`, and a `type` naming this plugin.
    pub fn check(&self) -> Result<(), CniError> {
        if self.name.is_empty() {
            return Err(CniError::new(code::INVALID_CONFIG, "name: required", ""));
        }
        if !self.kind.is_empty() && self.kind != "netlet" {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("type: {:?} is not netlet", self.kind),
                "",
            ));
        }
        Ok(())
    }
}

/// Checks a requested version.
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!("config is {v:?}, plugin supports {SUPPORTED_VERSIONS:?}"),
        ))
    }
}
