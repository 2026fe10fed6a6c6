//! The inventory: the node's interfaces as netlink shows them, joined with what sysfs and the
//! configuration say of their bus and topology, those a pool selects becoming devices.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use netlet_sdk::netlink::{Netlink, NlResult, Within, mac_string};
use netlet_sdk::proto::{Device, DeviceHealth, DeviceKind};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, State};

use crate::config::{Config, glob};
use crate::sysfs::{DeviceInfo, Sysfs};

/// One interface as netlink shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// MTU.
    pub mtu: u32,
    /// MAC, `aa:bb:..`, empty when it has none.
    pub mac: String,
    /// Administratively up.
    pub up: bool,
    /// Operationally up (carrier), or the driver does not say.
    pub running: bool,
    /// Link kind of a virtual interface (`veth`, `macvlan`).
    pub kind: Option<String>,
}

/// The links of the namespace `nl` is bound to, `lo` left out.
pub async fn links(nl: &Netlink) -> NlResult<Vec<Link>> {
    let mut out = Vec::new();
    let mut dump = nl.handle().link().get().execute();
    while let Some(m) = dump.try_next().within("list links").await? {
        let mut l = Link {
            name: String::new(),
            index: m.header.index,
            mtu: 0,
            mac: String::new(),
            up: m.header.flags.contains(LinkFlags::Up),
            running: true,
            kind: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Address(b) if b.len() == 6 => {
                    l.mac = mac_string(&b[..].try_into().unwrap_or_default())
                }
                LinkAttribute::OperState(s) => {
                    l.running = matches!(s, State::Up | State::Unknown);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if l.name != "lo" {
            out.push(l);
        }
    }
    Ok(out)
}

/// The interfaces the namespace's default routes (IPv4 or IPv6) leave by: the node's uplinks,
/// never offered as devices (moving one into a pod would cut the node off).
pub async fn uplinks(nl: &Netlink) -> NlResult<std::collections::BTreeSet<u32>> {
    use netlink_packet_route::route::RouteAttribute;
    let mut out = std::collections::BTreeSet::new();
    for v4 in [true, false] {
        let msg = if v4 {
            rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        } else {
            rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        };
        let mut dump = nl.handle().route().get(msg).execute();
        while let Some(r) = dump.try_next().within("list routes").await? {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => {
                        out.insert(*i);
                    }
                    RouteAttribute::MultiPath(hops) => {
                        out.extend(hops.iter().map(|h| h.interface_index));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

/// A device id from an interface name: a DNS-1123 label (what a DRA device name must be).
pub fn device_id(ifname: &str) -> String {
    let id: String = ifname
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let id = id.trim_matches('-');
    if id.is_empty() {
        "dev".to_string()
    } else {
        id.to_string()
    }
}

/// Vendor names of PCI vendor ids seen on network devices.
fn vendor_name(id: &str) -> &'static str {
    match id {
        "15b3" => "Mellanox Technologies",
        "8086" => "Intel Corporation",
        "14e4" => "Broadcom Inc.",
        "10de" => "NVIDIA Corporation",
        "1af4" => "Red Hat, Inc. (virtio)",
        "1077" => "QLogic Corp.",
        "1924" => "Solarflare Communications",
        "1d0f" => "Amazon.com, Inc.",
        "19e5" => "Huawei Technologies",
        "1137" => "Cisco Systems",
        _ => "",
    }
}

/// What the node says of `link`: sysfs (when its entry is this interface: a same-named one of
/// another namespace shows another MAC), then the configured topology over it.
pub fn describe(cfg: &Config, sys: &Sysfs, link: &Link) -> DeviceInfo {
    let mut info = sys.net(&link.name);
    if info.mac.as_ref().is_some_and(|m| *m != link.mac) {
        info = DeviceInfo::default();
    }
    if let Some(t) = cfg.topology.get(&link.name) {
        if t.numa_node.is_some() {
            info.numa_node = t.numa_node;
        }
        if t.pcie_root.is_some() {
            info.pcie_root = t.pcie_root.clone();
        }
        if t.pci_address.is_some() {
            info.pci_address = t.pci_address.clone();
        }
    }
    info
}

/// The pool that selects `link`, if any.
pub fn pool_of<'a>(cfg: &'a Config, link: &Link, info: &DeviceInfo) -> Option<&'a str> {
    let driver = info.kernel_driver.as_deref().or(link.kind.as_deref());
    let any = |list: &[String], v: Option<&str>| {
        list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v)))
    };
    cfg.pools
        .iter()
        .find(|p| {
            let s = &p.select;
            (s.names.is_empty() || s.names.iter().any(|g| glob(g, &link.name)))
                && any(&s.drivers, driver)
                && any(&s.pci_vendors, info.pci_vendor.as_deref())
                && any(&s.pci_devices, info.pci_device.as_deref())
                && (s.numa_nodes.is_empty()
                    || info.numa_node.is_some_and(|n| s.numa_nodes.contains(&n)))
        })
        .map(|p| p.name.as_str())
}

/// The device `link` is, in `pool`.
pub fn device(pool: &str, link: &Link, info: &DeviceInfo) -> Device {
    let mut attrs = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            attrs.insert(k.to_string(), v);
        }
    };
    put(
        "kernel-driver",
        info.kernel_driver.clone().or(link.kind.clone()),
    );
    put("mac", Some(link.mac.clone()).filter(|m| !m.is_empty()));
    put("mtu", Some(link.mtu.to_string()));
    put("speed", info.speed_mbps.map(|s| s.to_string()));
    put("pci-vendor", info.pci_vendor.clone());
    put("pci-device", info.pci_device.clone());
    put("sriov-totalvfs", info.sriov_totalvfs.map(|n| n.to_string()));
    put("sriov-numvfs", info.sriov_numvfs.map(|n| n.to_string()));
    put("physfn", info.physfn.clone());
    put(
        "rdma",
        info.rdma_device.as_ref().map(|_| "true".to_string()),
    );
    put("rdma-device", info.rdma_device.clone());
    put(
        "virtual",
        info.pci_address.is_none().then(|| "true".to_string()),
    );
    let kind = if info.physfn.is_some() {
        DeviceKind::SriovVf
    } else if info.rdma_device.is_some() {
        DeviceKind::Rdma
    } else {
        DeviceKind::Nic
    };
    Device {
        id: device_id(&link.name),
        driver: String::new(),
        kind: kind as i32,
        interface_name: link.name.clone(),
        pci_address: info.pci_address.clone().unwrap_or_default(),
        numa_node: info.numa_node.unwrap_or(-1),
        pcie_root: info.pcie_root.clone().unwrap_or_default(),
        vendor: info
            .pci_vendor
            .as_deref()
            .map(vendor_name)
            .unwrap_or_default()
            .to_string(),
        attributes: attrs.into_iter().collect(),
        allocated_to_claim: String::new(),
        pool: pool.to_string(),
        health: if link.running {
            DeviceHealth::Healthy
        } else {
            DeviceHealth::Down
        } as i32,
        attached_to_sandbox: String::new(),
    }
}

/// The devices among `links`, by id.
pub fn devices(cfg: &Config, sys: &Sysfs, links: &[Link]) -> BTreeMap<String, (Device, Link)> {
    let mut out = BTreeMap::new();
    for l in links {
        let info = describe(cfg, sys, l);
        if let Some(pool) = pool_of(cfg, l, &info) {
            let d = device(pool, l, &info);
            out.insert(d.id.clone(), (d, l.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Pool, Selector, Topology};

    fn link(name: &str, mac: &str, kind: Option<&str>) -> Link {
        Link {
            name: name.into(),
            index: 7,
            mtu: 1500,
            mac: mac.into(),
            up: true,
            running: true,
            kind: kind.map(str::to_string),
        }
    }

    #[test]
    fn pools_select_and_devices_carry_the_node_s_facts() {
        let dir = tempfile::tempdir().unwrap();
        crate::sysfs::recorded::server(dir.path());
        let sys = Sysfs::new(dir.path());
        let cfg = Config {
            networks: vec!["devices".into()],
            pools: vec![
                Pool {
                    name: "vfs".into(),
                    select: Selector {
                        names: vec!["*v?".into()],
                        pci_vendors: vec!["15B3".into()],
                        ..Default::default()
                    },
                },
                Pool {
                    name: "socket1".into(),
                    select: Selector {
                        numa_nodes: vec![1],
                        ..Default::default()
                    },
                },
                Pool {
                    name: "test".into(),
                    select: Selector {
                        drivers: vec!["veth".into()],
                        ..Default::default()
                    },
                },
            ],
            topology: [(
                "tdev0".to_string(),
                Topology {
                    numa_node: Some(1),
                    pcie_root: Some("pci0000:b0".into()),
                    pci_address: None,
                },
            )]
            .into(),
            sysfs_root: dir.path().into(),
        };
        let links = [
            link("ens1f0v0", "0c:42:a1:00:00:02", None),
            link("ens1f0np0", "0c:42:a1:00:00:01", None),
            link("ens5f0", "b4:96:91:00:00:01", None),
            link("eno1", "3c:ec:ef:00:00:01", None),
            link("tdev0", "02:00:00:00:00:01", Some("veth")),
            // Named like the node's NIC but another interface (another namespace's sysfs).
            {
                let mut l = link("ens5f0", "02:00:00:00:00:09", Some("veth"));
                l.name = "ens5f0".into();
                l
            },
        ];
        let all = devices(&cfg, &sys, &links[..5]);
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            ["ens1f0v0", "ens5f0", "tdev0"],
            "the PF matches no pool, eno1 has no NUMA node"
        );
        let vf = &all["ens1f0v0"].0;
        assert_eq!(vf.pool, "vfs");
        assert_eq!(vf.kind, DeviceKind::SriovVf as i32);
        assert_eq!(vf.vendor, "Mellanox Technologies");
        assert_eq!(vf.attributes["physfn"], "0000:3b:00.0");
        assert_eq!(vf.attributes["rdma-device"], "mlx5_2");
        assert_eq!(vf.attributes["speed"], "100000");
        assert_eq!((vf.numa_node, vf.pcie_root.as_str()), (0, "pci0000:3a"));
        let e810 = &all["ens5f0"].0;
        assert_eq!(
            (e810.pool.as_str(), e810.kind, e810.numa_node),
            ("socket1", DeviceKind::Nic as i32, 1)
        );
        assert_eq!(e810.attributes["sriov-totalvfs"], "128");
        assert!(!e810.attributes.contains_key("speed"));
        let t = &all["tdev0"].0;
        assert_eq!((t.numa_node, t.pcie_root.as_str()), (1, "pci0000:b0"));
        assert_eq!(t.attributes["virtual"], "true");
        assert_eq!(t.attributes["kernel-driver"], "veth");
        assert_eq!(t.pci_address, "");
        // Another namespace's same-named interface does not take the NIC's facts.
        let other = describe(&cfg, &sys, &links[5]);
        assert_eq!(other, DeviceInfo::default());
    }

    #[test]
    fn ids_are_dns_labels() {
        assert_eq!(device_id("ens1f0v0"), "ens1f0v0");
        assert_eq!(device_id("Eth_0.100"), "eth-0-100");
        assert_eq!(device_id("_x_"), "x");
        assert_eq!(device_id("__"), "dev");
    }
}
