//! The bridge driver's own netlink steps (bridges, veth pairs, ports) over the SDK's netlink
//! connection, and the names and MACs it derives.

use std::net::IpAddr;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

pub use netlet_sdk::netlink::{
    KERNEL_TIMEOUT, NlError, NlResult, Within, errno, exists_ok, io, mac_string, nl, parse_mac,
    sysctl,
};

/// One rtnetlink connection, bound to the namespace it was opened in (the SDK's, with the
/// bridge driver's steps).
#[derive(Clone)]
pub struct Netlink(netlet_sdk::netlink::Netlink);

impl Deref for Netlink {
    type Target = netlet_sdk::netlink::Netlink;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Netlink {
    /// A connection in the calling process's namespace. Needs a tokio runtime.
    pub fn connect() -> NlResult<Self> {
        netlet_sdk::netlink::Netlink::connect().map(Self)
    }

    /// A connection inside the namespace pinned at `netns`. Needs a tokio runtime.
    pub fn connect_in(netns: &Path) -> NlResult<Self> {
        netlet_sdk::netlink::Netlink::connect_in(netns).map(Self)
    }

    /// Creates bridge `name` if missing (with a fixed MAC, so it does not change as ports come
    /// and go), brings it up and gives it the gateway addresses. Returns its index.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        mac: [u8; 6],
        gateways: &[ipnet::IpNet],
    ) -> NlResult<u32> {
        if self.link_index(name).await?.is_none() {
            let res = self
                .handle()
                .link()
                .add(LinkBridge::new(name).mtu(mtu).address(mac.to_vec()).build())
                .execute()
                .within(format!("create bridge {name}"))
                .await;
            exists_ok(res)?;
        }
        let index = self.link_index(name).await?.ok_or_else(|| NlError {
            what: format!("bridge {name}"),
            errno: Some(errno::ENODEV),
            message: "vanished after creation".into(),
        })?;
        for net in gateways {
            self.add_address(index, net.addr(), net.prefix_len())
                .await?;
        }
        self.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .within(format!("set {name} up"))
            .await?;
        Ok(index)
    }

    /// Creates the veth pair: `host` on this side (MAC `host_mac`), enslaved to `bridge` and
    /// up; the peer created directly inside the namespace at `netns` as `peer`, with `mac`;
    /// both with `mtu`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_veth(
        &self,
        host: &str,
        host_mac: [u8; 6],
        peer: &str,
        netns: &Path,
        mac: [u8; 6],
        mtu: u32,
        bridge: u32,
    ) -> NlResult<()> {
        let ns =
            std::fs::File::open(netns).map_err(io(format!("open netns {}", netns.display())))?;
        // (The peer cannot be brought up here: veth refuses to open a peer before its pair
        // is complete, with ENOTCONN.)
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(mac.to_vec())
            .mtu(mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let mut msg = LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .address(host_mac.to_vec())
            .mtu(mtu)
            .controller(bridge)
            .up()
            .build();
        // Pod ports are told apart from every other link by their group (anti-spoofing).
        msg.attributes
            .push(LinkAttribute::Group(crate::guard::POD_PORT_GROUP));
        let res = self
            .handle()
            .link()
            .add(msg)
            .execute()
            .within(format!("create veth {host} <-> {peer}"))
            .await;
        drop(ns);
        res?;
        self.set_hairpin(host).await
    }

    /// Hairpin mode on bridge port `name`: a frame may leave by the port it came in on. A pod
    /// reaching itself through a Service needs it when bridged traffic passes netfilter
    /// (br_netfilter): the DNAT back to the pod happens at the bridge.
    pub async fn set_hairpin(&self, name: &str) -> NlResult<()> {
        let index = self.link_index(name).await?.ok_or_else(|| NlError {
            what: format!("find {name}"),
            errno: Some(errno::ENODEV),
            message: "no such interface".into(),
        })?;
        self.handle()
            .link()
            .set_port(rtnetlink::LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .within(format!("hairpin mode on {name}"))
            .await
    }

    /// Enslaves interface `name` to bridge `bridge`; returns whether the interface exists.
    pub async fn set_master(&self, name: &str, bridge: u32) -> NlResult<bool> {
        let res = self
            .handle()
            .link()
            .set(LinkUnspec::new_with_name(name).controller(bridge).build())
            .execute()
            .within(format!("set master of {name}"))
            .await;
        match res {
            Ok(()) => Ok(true),
            Err(e) if e.errno == Some(errno::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Names of the interfaces enslaved to bridge `index`.
    pub async fn ports_of(&self, index: u32) -> NlResult<Vec<String>> {
        self.links_where(|attrs| {
            attrs
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == index))
        })
        .await
    }
}

/// The host-side veth name of a pod interface: `veth` + 11 hex digits, the same every time
/// for the same sandbox and interface, so a restarted driver finds it.
pub fn host_veth_name(sandbox_id: &str, ifname: &str) -> String {
    format!(
        "veth{:011x}",
        netlet_sdk::hash::fnv1a_parts(&[sandbox_id, ifname]) & 0xfff_ffff_ffff
    )
}

/// A pod interface's MAC: `0a:58` + its IPv4 address (OVN-Kubernetes' scheme), so a reused
/// address comes back with the same MAC and neighbours' caches stay right; without IPv4, a
/// locally administered MAC from the last bytes of the IPv6 address.
pub fn pod_mac(addresses: &[IpAddr]) -> [u8; 6] {
    if let Some(IpAddr::V4(a)) = addresses.iter().find(|a| a.is_ipv4()) {
        let o = a.octets();
        return [0x0a, 0x58, o[0], o[1], o[2], o[3]];
    }
    if let Some(IpAddr::V6(a)) = addresses.iter().find(|a| a.is_ipv6()) {
        let o = a.octets();
        return [0x0a, 0x58, o[12], o[13], o[14], o[15]];
    }
    [0x0a, 0x58, 0, 0, 0, 0]
}

/// A fixed, locally administered MAC for a bridge, from its name.
pub fn bridge_mac(name: &str) -> [u8; 6] {
    stable_mac(&["bridge", name])
}

/// A fixed, locally administered MAC for a host-side veth, from its name.
pub fn host_veth_mac(name: &str) -> [u8; 6] {
    stable_mac(&["veth", name])
}

/// The MAC of a node's VXLAN endpoint, from the node's name: every node computes every other
/// node's the same way, so nothing needs publishing (flannel puts it in a Node annotation).
pub fn vtep_mac(node: &str) -> [u8; 6] {
    stable_mac(&["vtep", node])
}

fn stable_mac(parts: &[&str]) -> [u8; 6] {
    let h = netlet_sdk::hash::fnv1a_parts(parts).to_be_bytes();
    [0x02, h[1], h[2], h[3], h[4], h[5]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_are_stable() {
        let n = host_veth_name("sandbox-1", "eth0");
        assert_eq!(n.len(), 15);
        assert_eq!(n, host_veth_name("sandbox-1", "eth0"));
        assert_ne!(n, host_veth_name("sandbox-1", "net1"));
        let mac = pod_mac(&["fd00::5".parse().unwrap(), "10.244.0.7".parse().unwrap()]);
        assert_eq!(mac_string(&mac), "0a:58:0a:f4:00:07");
        assert_eq!(parse_mac("0a:58:0a:f4:00:07"), Some(mac));
        assert_eq!(bridge_mac("netlet0")[0], 0x02);
    }
}
