//! The driver's networks: one Linux bridge each, with a pod CIDR per address family.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// The default network when no configuration is given.
pub const DEFAULT_NETWORK: &str = "default";
/// Default bridge of the default network.
pub const DEFAULT_BRIDGE: &str = "netlet0";
/// Default pod CIDRs: addresses that live only inside this node's namespaces.
pub const DEFAULT_SUBNETS: [&str; 2] = ["10.244.0.0/24", "fd00:10:244::/64"];
/// Default MTU of the bridge and the pods' interfaces.
pub const DEFAULT_MTU: u32 = 1500;

/// The driver's configuration file (`--config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Networks served.
    pub networks: Vec<NetworkConfig>,
    /// The cluster's pod and Service CIDRs (one cluster-wide setting): traffic from pods to them
    /// is never masqueraded, so a pod on another node sees this pod's own address.
    #[serde(default)]
    pub cluster_cidrs: Vec<IpNet>,
    /// How other nodes' pods are reached: `auto` (directly when the node is on a subnet of
    /// this node, else through the VXLAN overlay), `direct` or `overlay`.
    #[serde(default)]
    pub routing: crate::routes::Mode,
}

/// One network.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkConfig {
    /// Network name (what `NetworkSelection.network` says).
    pub name: String,
    /// Bridge interface name (at most 15 bytes).
    pub bridge: String,
    /// Pod CIDRs, at most one per family; the first usable address is the gateway. Empty
    /// with `podCidrsFromNode`.
    #[serde(default)]
    pub subnets: Vec<IpNet>,
    /// Take the subnets from this node's entry in the cluster's node table (its Node's
    /// `spec.podCIDRs`, sent by the host): one configuration serves every node. Until the
    /// entry has them the network is not ready (PodCIDRPending) and attaches are UNAVAILABLE.
    /// At most one network.
    #[serde(default)]
    pub pod_cidrs_from_node: bool,
    /// MTU of the bridge and of pod interfaces unless a selection asks for another. For the
    /// network that takes the node's pod CIDRs, the underlay's MTU: its pods get this less the
    /// overlay's overhead (50, VXLAN over IPv4) unless routing is `direct`.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Masquerade traffic from the pod CIDRs to destinations outside them (nftables table
    /// `inet netlet-bridge`).
    #[serde(default)]
    pub masquerade: bool,
}

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

/// A configuration error naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file did not parse.
    #[error("{path}: {field}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Field path.
        field: String,
        /// What was wrong.
        message: String,
    },
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads and checks a YAML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = netlet_sdk::yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            field: e.field,
            message: e.message,
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// One network from command-line flags.
    pub fn single(
        name: String,
        bridge: String,
        subnets: Vec<IpNet>,
        mtu: u32,
        masquerade: bool,
    ) -> Self {
        Self {
            networks: vec![NetworkConfig {
                name,
                bridge,
                subnets,
                mtu,
                masquerade,
                pod_cidrs_from_node: false,
            }],
            cluster_cidrs: Vec::new(),
            routing: Default::default(),
        }
    }

    /// Checks names, CIDRs and uniqueness.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |i: usize, field: &str, why: String| {
            Err(ConfigError::Invalid(format!(
                "networks[{i}].{field}: {why}"
            )))
        };
        if self.networks.is_empty() {
            return Err(ConfigError::Invalid(
                "networks: at least one network is required".into(),
            ));
        }
        for (i, c) in self.cluster_cidrs.iter().enumerate() {
            if *c != c.trunc() {
                return Err(ConfigError::Invalid(format!(
                    "clusterCidrs[{i}]: {c} has host bits set"
                )));
            }
        }
        for (i, n) in self.networks.iter().enumerate() {
            if let Err(s) = netlet_sdk::validate::dns_label("name", &n.name) {
                return bad(i, "name", s.message().to_string());
            }
            if n.bridge.is_empty() || n.bridge.len() > 15 || n.bridge.contains(['/', ' ']) {
                return bad(
                    i,
                    "bridge",
                    format!("{:?} is not a valid interface name", n.bridge),
                );
            }
            if n.pod_cidrs_from_node {
                if !n.subnets.is_empty() {
                    return bad(
                        i,
                        "subnets",
                        "pinned subnets and podCidrsFromNode exclude each other".into(),
                    );
                }
                if let Some(k) = self.networks[..i]
                    .iter()
                    .position(|o| o.pod_cidrs_from_node)
                {
                    return bad(
                        i,
                        "podCidrsFromNode",
                        format!("networks[{k}] takes the node's pod CIDRs already"),
                    );
                }
            } else if n.subnets.is_empty() {
                return bad(i, "subnets", "at least one CIDR is required".into());
            }
            let v4 = n
                .subnets
                .iter()
                .filter(|s| matches!(s, IpNet::V4(_)))
                .count();
            if v4 > 1 || n.subnets.len() - v4 > 1 {
                return bad(i, "subnets", "at most one CIDR per address family".into());
            }
            for (j, s) in n.subnets.iter().enumerate() {
                if *s != s.trunc() {
                    return bad(
                        i,
                        &format!("subnets[{j}]"),
                        format!("{s} has host bits set"),
                    );
                }
                let max = if matches!(s, IpNet::V4(_)) { 30 } else { 126 };
                if s.prefix_len() > max {
                    return bad(
                        i,
                        &format!("subnets[{j}]"),
                        format!("{s} is too small for a gateway and pods"),
                    );
                }
            }
            if !(68..=65535).contains(&n.mtu) {
                return bad(i, "mtu", format!("{} is outside 68..65535", n.mtu));
            }
            for (k, o) in self.networks.iter().enumerate().take(i) {
                if o.name == n.name {
                    return bad(i, "name", format!("{:?} is also networks[{k}]", n.name));
                }
                if o.bridge == n.bridge {
                    return bad(
                        i,
                        "bridge",
                        format!("{:?} is also used by networks[{k}]", n.bridge),
                    );
                }
                for s in &n.subnets {
                    if o.subnets
                        .iter()
                        .any(|t| t.contains(&s.network()) || s.contains(&t.network()))
                    {
                        return bad(i, "subnets", format!("{s} overlaps networks[{k}]"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, bridge: &str, subnets: &[&str]) -> NetworkConfig {
        NetworkConfig {
            name: name.into(),
            bridge: bridge.into(),
            subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
            mtu: 1500,
            masquerade: false,
            pod_cidrs_from_node: false,
        }
    }

    #[test]
    fn checks_name_the_field() {
        let ok = Config {
            networks: vec![net("default", "netlet0", &DEFAULT_SUBNETS)],
            cluster_cidrs: vec![],
            routing: Default::default(),
        };
        ok.check().unwrap();
        let cases = [
            (
                vec![net("Default", "b0", &["10.0.0.0/24"])],
                "networks[0].name",
            ),
            (
                vec![net("a", "b0", &["10.0.0.1/24"])],
                "networks[0].subnets[0]: 10.0.0.1/24 has host bits",
            ),
            (
                vec![net("a", "b0", &["10.0.0.0/24", "10.1.0.0/24"])],
                "at most one CIDR per address family",
            ),
            (vec![net("a", "b0", &["10.0.0.0/31"])], "too small"),
            (
                vec![
                    net("a", "b0", &["10.0.0.0/16"]),
                    net("b", "b1", &["10.0.1.0/24"]),
                ],
                "networks[1].subnets: 10.0.1.0/24 overlaps networks[0]",
            ),
            (
                vec![
                    net("a", "b0", &["10.0.0.0/24"]),
                    net("b", "b0", &["10.1.0.0/24"]),
                ],
                "networks[1].bridge",
            ),
            (
                vec![net("a", "a-very-long-bridge-name", &["10.0.0.0/24"])],
                "networks[0].bridge",
            ),
            (
                vec![NetworkConfig {
                    pod_cidrs_from_node: true,
                    ..net("a", "b0", &["10.0.0.0/24"])
                }],
                "networks[0].subnets: pinned subnets and podCidrsFromNode",
            ),
            (
                vec![
                    NetworkConfig {
                        pod_cidrs_from_node: true,
                        ..net("a", "b0", &[])
                    },
                    NetworkConfig {
                        pod_cidrs_from_node: true,
                        ..net("b", "b1", &[])
                    },
                ],
                "networks[1].podCidrsFromNode",
            ),
        ];
        for (networks, want) in cases {
            let err = Config {
                networks,
                cluster_cidrs: vec![],
                routing: Default::default(),
            }
            .check()
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn file_errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bridge.yaml");
        std::fs::write(
            &p,
            "networks:\n- name: a\n  bridge: b0\n  subnets: [not-a-cidr]\n",
        )
        .unwrap();
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("bridge.yaml") && err.contains("networks[0].subnets[0]"),
            "{err}"
        );
    }
}
