//! What sysfs says of a network device: the PCI function behind it, its PCIe root complex,
//! NUMA node, kernel driver, PCI ids, SR-IOV and RDMA. Read below a root: `/sys` on a node, a
//! recorded tree in tests. Nothing here guesses: what sysfs does not say stays unknown (a NUMA
//! node of -1 is unknown, not 0).

use std::path::{Component, Path, PathBuf};

/// A sysfs tree.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

/// What the tree says of one device. `None` is unknown.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// PCI address of the function, `0000:3b:00.2`.
    pub pci_address: Option<String>,
    /// The PCIe root complex it hangs off, `pci0000:3a`.
    pub pcie_root: Option<String>,
    /// NUMA node of the function.
    pub numa_node: Option<i32>,
    /// Kernel driver bound to the device, `mlx5_core`.
    pub kernel_driver: Option<String>,
    /// PCI vendor id, 4 hex digits.
    pub pci_vendor: Option<String>,
    /// PCI device id, 4 hex digits.
    pub pci_device: Option<String>,
    /// VFs the physical function can have.
    pub sriov_totalvfs: Option<u32>,
    /// VFs it has now.
    pub sriov_numvfs: Option<u32>,
    /// For a VF: its physical function's PCI address.
    pub physfn: Option<String>,
    /// RDMA device on the same function, `mlx5_0`.
    pub rdma_device: Option<String>,
    /// Link speed in Mb/s.
    pub speed_mbps: Option<u32>,
    /// MAC address sysfs shows for the interface (to tell a same-named interface of another
    /// network namespace from this one).
    pub mac: Option<String>,
}

pub use netlet_sdk::devices::is_pci_address;

impl Sysfs {
    /// The tree at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// What the tree says of network interface `ifname` (all unknown when it has no entry).
    pub fn net(&self, ifname: &str) -> DeviceInfo {
        let class = self.root.join("class/net").join(ifname);
        let mut info = self.device(&class.join("device")).unwrap_or_default();
        info.speed_mbps = read_trimmed(&class.join("speed"))
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|s| *s > 0)
            .and_then(|s| u32::try_from(s).ok());
        info.mac = read_trimmed(&class.join("address"));
        info
    }

    /// The topology of PCI function `address` (`bus/pci/devices/<address>`), e.g. a GPU's;
    /// `None` when the node has no such function.
    pub fn pci(&self, address: &str) -> Option<DeviceInfo> {
        if !is_pci_address(address) {
            return None;
        }
        self.device(&self.root.join("bus/pci/devices").join(address))
    }

    /// Where PCI function `address` sits, for alignment.
    pub fn topology(&self, address: &str) -> Option<netlet_sdk::devices::Topology> {
        self.pci(address).map(|i| netlet_sdk::devices::Topology {
            numa_node: i.numa_node,
            pcie_root: i.pcie_root,
        })
    }

    /// Reads the device directory `link` points at (a net class's `device`, a PCI bus entry).
    fn device(&self, link: &Path) -> Option<DeviceInfo> {
        let real = std::fs::canonicalize(link).ok()?;
        let root = std::fs::canonicalize(&self.root).ok()?;
        let rel = real.strip_prefix(&root).ok()?;
        let parts: Vec<&str> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        let mut info = DeviceInfo {
            kernel_driver: link_name(&real.join("driver")),
            ..Default::default()
        };
        if parts.first() != Some(&"devices") {
            return Some(info);
        }
        info.pcie_root = parts
            .get(1)
            .filter(|p| p.starts_with("pci"))
            .map(|p| p.to_string());
        // The PCI function is the deepest PCI address on the path (a virtio net device sits
        // one level below its PCI function).
        let depth = parts.iter().rposition(|p| is_pci_address(p))?;
        let func = root.join(parts[..=depth].iter().collect::<PathBuf>());
        info.pci_address = Some(parts[depth].to_string());
        info.numa_node = read_trimmed(&func.join("numa_node"))
            .and_then(|s| s.parse::<i32>().ok())
            .filter(|n| *n >= 0);
        info.pci_vendor = read_trimmed(&func.join("vendor")).map(|s| hex_id(&s));
        info.pci_device = read_trimmed(&func.join("device")).map(|s| hex_id(&s));
        info.sriov_totalvfs =
            read_trimmed(&func.join("sriov_totalvfs")).and_then(|s| s.parse().ok());
        info.sriov_numvfs = read_trimmed(&func.join("sriov_numvfs")).and_then(|s| s.parse().ok());
        info.physfn = link_name(&func.join("physfn")).filter(|p| is_pci_address(p));
        info.rdma_device = std::fs::read_dir(func.join("infiniband"))
            .ok()
            .and_then(|d| {
                let mut names: Vec<String> = d
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect();
                names.sort();
                names.into_iter().next()
            });
        if info.kernel_driver.is_none() {
            info.kernel_driver = link_name(&func.join("driver"));
        }
        Some(info)
    }
}

fn read_trimmed(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The last component of the path a symlink points at.
fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

/// `0x15b3` → `15b3`.
fn hex_id(s: &str) -> String {
    s.trim_start_matches("0x").to_ascii_lowercase()
}

#[cfg(test)]
pub(crate) mod recorded {
    //! Sysfs trees as a node shows them (the layout of Linux 6.1 on a two-socket server with a
    //! ConnectX-6 Dx whose first port has SR-IOV on, an Intel E810 and a GPU on the second socket,
    //! and a virtio NIC on a virtual machine), written as files and relative symlinks.

    use std::path::Path;

    fn file(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{text}\n")).unwrap();
    }

    fn link(root: &Path, rel: &str, target: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// A PCI function `dev` under root complex `rc` (bridge path `via`), bound to `driver`.
    #[allow(clippy::too_many_arguments)]
    fn function(
        root: &Path,
        rc: &str,
        via: &str,
        dev: &str,
        driver: &str,
        numa: i32,
        vendor: &str,
        device: &str,
    ) -> String {
        let dir = format!("devices/{rc}/{via}{dev}");
        file(root, &format!("{dir}/numa_node"), &numa.to_string());
        file(root, &format!("{dir}/vendor"), &format!("0x{vendor}"));
        file(root, &format!("{dir}/device"), &format!("0x{device}"));
        let depth = dir.split('/').count();
        link(
            root,
            &format!("{dir}/driver"),
            &format!("{}bus/pci/drivers/{driver}", "../".repeat(depth)),
        );
        link(
            root,
            &format!("bus/pci/devices/{dev}"),
            &format!("../../../{dir}"),
        );
        dir
    }

    fn netdev(root: &Path, fn_dir: &str, ifname: &str, mac: &str, speed: &str) {
        let dir = format!("{fn_dir}/net/{ifname}");
        file(root, &format!("{dir}/address"), mac);
        file(root, &format!("{dir}/speed"), speed);
        link(root, &format!("{dir}/device"), "../..");
        link(
            root,
            &format!("class/net/{ifname}"),
            &format!("../../{dir}"),
        );
    }

    /// Writes the server's tree under `root`.
    pub fn server(root: &Path) {
        // Socket 0: ConnectX-6 Dx port 0 (PF with 8 VFs, 2 enabled) and its first VF.
        let pf = function(
            root,
            "pci0000:3a",
            "0000:3a:00.0/",
            "0000:3b:00.0",
            "mlx5_core",
            0,
            "15b3",
            "101d",
        );
        file(root, &format!("{pf}/sriov_totalvfs"), "8");
        file(root, &format!("{pf}/sriov_numvfs"), "2");
        std::fs::create_dir_all(root.join(&pf).join("infiniband/mlx5_0")).unwrap();
        netdev(root, &pf, "ens1f0np0", "0c:42:a1:00:00:01", "100000");
        let vf = function(
            root,
            "pci0000:3a",
            "0000:3a:00.0/",
            "0000:3b:00.2",
            "mlx5_core",
            0,
            "15b3",
            "101e",
        );
        link(root, &format!("{vf}/physfn"), "../0000:3b:00.0");
        std::fs::create_dir_all(root.join(&vf).join("infiniband/mlx5_2")).unwrap();
        netdev(root, &vf, "ens1f0v0", "0c:42:a1:00:00:02", "100000");
        // Socket 1: an E810 port with no link (speed -1), and a GPU.
        let e810 = function(
            root,
            "pci0000:b0",
            "0000:b0:02.0/",
            "0000:b1:00.0",
            "ice",
            1,
            "8086",
            "1593",
        );
        file(root, &format!("{e810}/sriov_totalvfs"), "128");
        file(root, &format!("{e810}/sriov_numvfs"), "0");
        netdev(root, &e810, "ens5f0", "b4:96:91:00:00:01", "-1");
        function(
            root,
            "pci0000:b0",
            "0000:b0:03.0/",
            "0000:b2:00.0",
            "nvidia",
            1,
            "10de",
            "2330",
        );
        // A function whose firmware reports no NUMA node.
        let old = function(
            root,
            "pci0000:00",
            "",
            "0000:00:19.0",
            "e1000e",
            -1,
            "8086",
            "15bb",
        );
        netdev(root, &old, "eno1", "3c:ec:ef:00:00:01", "1000");
        // Virtual interfaces have no device link.
        file(root, "devices/virtual/net/lo/address", "00:00:00:00:00:00");
        link(root, "class/net/lo", "../../devices/virtual/net/lo");
    }

    /// A virtual machine's virtio NIC: the net device sits below `virtio0`, below the function.
    pub fn virtual_machine(root: &Path) {
        let f = function(
            root,
            "pci0000:00",
            "",
            "0000:00:03.0",
            "virtio-pci",
            -1,
            "1af4",
            "1000",
        );
        let v = format!("{f}/virtio0");
        std::fs::create_dir_all(root.join(&v)).unwrap();
        link(
            root,
            &format!("{v}/driver"),
            "../../../../bus/virtio/drivers/virtio_net",
        );
        let dir = format!("{v}/net/enp0s3");
        file(root, &format!("{dir}/address"), "52:54:00:12:34:56");
        link(root, &format!("{dir}/device"), "../../../virtio0");
        link(root, "class/net/enp0s3", &format!("../../{dir}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_tree_reads_as_recorded() {
        let dir = tempfile::tempdir().unwrap();
        recorded::server(dir.path());
        let s = Sysfs::new(dir.path());
        let pf = s.net("ens1f0np0");
        assert_eq!(
            pf,
            DeviceInfo {
                pci_address: Some("0000:3b:00.0".into()),
                pcie_root: Some("pci0000:3a".into()),
                numa_node: Some(0),
                kernel_driver: Some("mlx5_core".into()),
                pci_vendor: Some("15b3".into()),
                pci_device: Some("101d".into()),
                sriov_totalvfs: Some(8),
                sriov_numvfs: Some(2),
                physfn: None,
                rdma_device: Some("mlx5_0".into()),
                speed_mbps: Some(100000),
                mac: Some("0c:42:a1:00:00:01".into()),
            }
        );
        let vf = s.net("ens1f0v0");
        assert_eq!(vf.physfn.as_deref(), Some("0000:3b:00.0"));
        assert_eq!(vf.pci_address.as_deref(), Some("0000:3b:00.2"));
        assert_eq!(vf.rdma_device.as_deref(), Some("mlx5_2"));
        assert_eq!(vf.sriov_totalvfs, None);
        let e810 = s.net("ens5f0");
        assert_eq!(e810.numa_node, Some(1));
        assert_eq!(e810.pcie_root.as_deref(), Some("pci0000:b0"));
        assert_eq!(e810.speed_mbps, None, "speed -1 is unknown");
        assert_eq!(e810.kernel_driver.as_deref(), Some("ice"));
        // A NUMA node of -1 is unknown, not node 0.
        let old = s.net("eno1");
        assert_eq!(old.numa_node, None);
        assert_eq!(old.pcie_root.as_deref(), Some("pci0000:00"));
        // A device netlet does not own, by its PCI address.
        let gpu = s.pci("0000:b2:00.0").unwrap();
        assert_eq!(gpu.numa_node, Some(1));
        assert_eq!(gpu.pcie_root.as_deref(), Some("pci0000:b0"));
        assert_eq!(gpu.kernel_driver.as_deref(), Some("nvidia"));
        assert_eq!(s.pci("0000:b9:00.0"), None);
        assert_eq!(s.pci("../../etc"), None);
        // Virtual and absent interfaces have no bus.
        let lo = s.net("lo");
        assert_eq!((lo.pci_address, lo.numa_node), (None, None));
        assert_eq!(s.net("nosuch"), DeviceInfo::default());
    }

    #[test]
    fn a_virtio_nic_is_its_pci_function() {
        let dir = tempfile::tempdir().unwrap();
        recorded::virtual_machine(dir.path());
        let v = Sysfs::new(dir.path()).net("enp0s3");
        assert_eq!(v.pci_address.as_deref(), Some("0000:00:03.0"));
        assert_eq!(v.pcie_root.as_deref(), Some("pci0000:00"));
        assert_eq!(v.kernel_driver.as_deref(), Some("virtio_net"));
        assert_eq!(v.pci_vendor.as_deref(), Some("1af4"));
        assert_eq!(v.numa_node, None);
    }
}
