//! The driver's configuration: which of the node's interfaces are devices, grouped into pools
//! by selectors, the networks whose attachments move a device into the pod, and topology the
//! node cannot tell (virtual interfaces, firmware that reports no NUMA node).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The network served when the configuration names none.
pub const DEFAULT_NETWORK: &str = "devices";

/// The driver's configuration file (`--config`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Networks whose attachments move an allocated device into the pod.
    #[serde(default = "default_networks")]
    pub networks: Vec<String>,
    /// Pools; an interface belongs to the first whose selector matches it, and one that
    /// matches none is not a device.
    pub pools: Vec<Pool>,
    /// Topology by interface name, over what sysfs says.
    #[serde(default)]
    pub topology: BTreeMap<String, Topology>,
    /// The sysfs tree read for bus and topology (a recorded one in tests).
    #[serde(default = "default_sysfs")]
    pub sysfs_root: PathBuf,
}

fn default_networks() -> Vec<String> {
    vec![DEFAULT_NETWORK.to_string()]
}

fn default_sysfs() -> PathBuf {
    PathBuf::from("/sys")
}

/// A pool of devices.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pool {
    /// Pool name, a DNS-1123 label.
    pub name: String,
    /// Which interfaces; every listed criterion must hold, an empty list holds for all.
    #[serde(default)]
    pub select: Selector,
}

/// Criteria on an interface. Within a list any entry may match.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// Interface names; `*` matches any run of characters, `?` one.
    #[serde(default)]
    pub names: Vec<String>,
    /// Kernel drivers (`mlx5_core`; `veth` for a virtual interface's kind).
    #[serde(default)]
    pub drivers: Vec<String>,
    /// PCI vendor ids, 4 hex digits.
    #[serde(default)]
    pub pci_vendors: Vec<String>,
    /// PCI device ids, 4 hex digits.
    #[serde(default)]
    pub pci_devices: Vec<String>,
    /// NUMA nodes.
    #[serde(default)]
    pub numa_nodes: Vec<i32>,
}

/// Topology of one interface.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Topology {
    /// NUMA node.
    pub numa_node: Option<i32>,
    /// PCIe root complex, `pci0000:3a`.
    pub pcie_root: Option<String>,
    /// PCI address, `0000:3b:00.0`.
    pub pci_address: Option<String>,
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
    /// The file did not parse, or a value is invalid.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Field path.
        field: String,
        /// What was wrong.
        message: String,
    },
}

impl Config {
    /// Reads and checks a YAML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        let cfg: Config =
            netlet_sdk::yaml::from_str(&text).map_err(|e| invalid(e.field, e.message))?;
        cfg.check().map_err(|(f, m)| invalid(f, m))?;
        Ok(cfg)
    }

    /// Checks names, ids and uniqueness; the error names the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        let label = |field: String, v: &str| {
            netlet_sdk::validate::dns_label(&field, v)
                .map_err(|s| (field.clone(), s.message().to_string()))
        };
        if self.networks.is_empty() {
            return Err(("networks".into(), "at least one network is required".into()));
        }
        for (i, n) in self.networks.iter().enumerate() {
            label(format!("networks[{i}]"), n)?;
        }
        if self.pools.is_empty() {
            return Err(("pools".into(), "at least one pool is required".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            label(format!("pools[{i}].name"), &p.name)?;
            if !seen.insert(&p.name) {
                return Err((format!("pools[{i}].name"), format!("{:?} twice", p.name)));
            }
            for (list, what) in [
                (&p.select.pci_vendors, "pciVendors"),
                (&p.select.pci_devices, "pciDevices"),
            ] {
                for (j, id) in list.iter().enumerate() {
                    if id.len() != 4 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
                        return Err((
                            format!("pools[{i}].select.{what}[{j}]"),
                            format!("{id:?} is not 4 hex digits"),
                        ));
                    }
                }
            }
        }
        for (name, t) in &self.topology {
            if let Some(a) = &t.pci_address
                && !crate::sysfs::is_pci_address(a)
            {
                return Err((
                    format!("topology.{name}.pciAddress"),
                    format!("{a:?} is not a PCI address (0000:3b:00.0)"),
                ));
            }
            if let Some(n) = t.numa_node
                && n < 0
            {
                return Err((
                    format!("topology.{name}.numaNode"),
                    "leave it out when unknown".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `name` matches glob `pat` (`*` any run, `?` one character).
pub fn glob(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point (the last `*`).
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("ens*", "ens1f0", true),
            ("ens*", "eno1", false),
            ("*v?", "ens1f0v3", true),
            ("*v?", "ens1f0v31", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("eth0", "eth0", true),
            ("eth0", "eth01", false),
        ] {
            assert_eq!(glob(p, n), want, "{p} ~ {n}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            let p = dir.path().join("c.yaml");
            std::fs::write(&p, text).unwrap();
            Config::load(&p).map_err(|e| e.to_string())
        };
        let ok = load("pools: [{name: rdma, select: {names: [\"ens*\"], pciVendors: [15b3]}}]\n")
            .unwrap();
        assert_eq!(ok.networks, ["devices"]);
        assert_eq!(ok.sysfs_root, Path::new("/sys"));
        let e = load("pools: []\n").unwrap_err();
        assert!(e.contains(": pools: at least one"), "{e}");
        let e = load("pools: [{name: a}, {name: a}]\n").unwrap_err();
        assert!(e.contains("pools[1].name"), "{e}");
        let e = load("pools: [{name: a, select: {pciVendors: [15b]}}]\n").unwrap_err();
        assert!(e.contains("pools[0].select.pciVendors[0]"), "{e}");
        let e = load("pools: [{name: a}]\ntopology: {eth1: {pciAddress: 3b:00.0}}\n").unwrap_err();
        assert!(e.contains("topology.eth1.pciAddress"), "{e}");
        let e = load("pools: [{name: A_b}]\n").unwrap_err();
        assert!(e.contains("pools[0].name"), "{e}");
        let e = load("pools: [{name: a, select: {nmes: [x]}}]\n").unwrap_err();
        assert!(e.contains("nmes"), "{e}");
    }
}
