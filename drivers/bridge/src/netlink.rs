//! The data plane through rtnetlink: bridges, veth pairs, addresses, routes and sysctls. No
//! `ip` is executed. A socket opened inside a pod's namespace stays bound to it, so pod-side
//! work happens over a connection created on a thread that entered the namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use futures::future::BoxFuture;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

/// Linux errno values the data plane handles by name.
pub mod errno {
    /// No such device.
    pub const ENODEV: i32 = 19;
    /// Already exists.
    pub const EEXIST: i32 = 17;
    /// Timed out.
    pub const ETIMEDOUT: i32 = 110;
}

/// A failed netlink (or sysctl) step, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct NlError {
    /// The step.
    pub what: String,
    /// The kernel's errno, when it gave one.
    pub errno: Option<i32>,
    /// Human text.
    pub message: String,
}

/// Result of a data-plane step.
pub type NlResult<T> = Result<T, NlError>;

/// Maps an rtnetlink error to an [`NlError`] saying what was being done.
pub fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NlError {
    let what = what.into();
    move |e| {
        let errno = match &e {
            rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
            _ => None,
        };
        let message = match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        };
        NlError {
            what,
            errno,
            message,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NlError {
    let what = what.into();
    move |e| NlError {
        what,
        errno: e.raw_os_error(),
        message: e.to_string(),
    }
}

/// How long one kernel round trip may take before the step fails with `ETIMEDOUT` (the
/// socket is non-blocking: a slow kernel never holds a runtime thread, and a call never hangs).
pub const KERNEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A netlink request bounded by [`KERNEL_TIMEOUT`], its error saying what was being done.
pub(crate) trait Within<T>: Future<Output = Result<T, rtnetlink::Error>> + Sized {
    fn within(self, what: impl Into<String>) -> impl Future<Output = NlResult<T>> {
        let what = what.into();
        async move {
            match tokio::time::timeout(KERNEL_TIMEOUT, self).await {
                Ok(r) => r.map_err(nl(what)),
                Err(_) => Err(NlError {
                    what,
                    errno: Some(errno::ETIMEDOUT),
                    message: format!("no answer from the kernel within {KERNEL_TIMEOUT:?}"),
                }),
            }
        }
    }
}

impl<T, F: Future<Output = Result<T, rtnetlink::Error>>> Within<T> for F {}

/// Ignores "already exists".
fn exists_ok(r: NlResult<()>) -> NlResult<()> {
    match r {
        Err(e) if e.errno == Some(errno::EEXIST) => Ok(()),
        other => other,
    }
}

/// One rtnetlink connection, bound to the namespace it was opened in.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling process's namespace. Needs a tokio runtime.
    pub fn connect() -> NlResult<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(io("open netlink socket"))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A connection inside the namespace pinned at `netns`. Needs a tokio runtime.
    pub fn connect_in(netns: &Path) -> NlResult<Self> {
        let rt = tokio::runtime::Handle::current();
        let opened = netlet_sdk::netns::run_in(netns, move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })
        .map_err(|e| NlError {
            what: format!("enter netns {}", netns.display()),
            errno: None,
            message: e.to_string(),
        })?;
        let (conn, handle, _) =
            opened.map_err(io(format!("open netlink socket in {}", netns.display())))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The index of interface `name`, if it exists.
    pub async fn link_index(&self, name: &str) -> NlResult<Option<u32>> {
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .within(format!("get link {name}"))
            .await;
        match res {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(e) if e.errno == Some(errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
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
                .handle
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
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .within(format!("set {name} up"))
            .await?;
        Ok(index)
    }

    /// Adds `ip/prefix` to interface `index` without duplicate address detection (the driver
    /// owns the pool, so the address is known to be unique); an existing one is fine.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> NlResult<()> {
        let mut req = self.handle.address().add(index, ip, prefix);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        exists_ok(
            req.execute()
                .within(format!("add address {ip}/{prefix}"))
                .await,
        )
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
        let msg = LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .address(host_mac.to_vec())
            .mtu(mtu)
            .controller(bridge)
            .up()
            .build();
        let res = self
            .handle
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
        self.handle
            .link()
            .set_port(rtnetlink::LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .within(format!("hairpin mode on {name}"))
            .await
    }

    /// Enslaves interface `name` to bridge `bridge`; returns whether the interface exists.
    pub async fn set_master(&self, name: &str, bridge: u32) -> NlResult<bool> {
        let res = self
            .handle
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

    /// Deletes interface `name`; returns whether it existed.
    pub async fn delete_link(&self, name: &str) -> NlResult<bool> {
        let res = self
            .handle
            .link()
            .del_with_message(LinkUnspec::new_with_name(name).build())
            .execute()
            .within(format!("delete link {name}"))
            .await;
        match res {
            Ok(()) => Ok(true),
            Err(e) if e.errno == Some(errno::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Inside a pod: `ifname` and `lo` up, addresses on `ifname`, default routes via
    /// `gateways`. The requests are pipelined (sent at once, answered in order: the kernel
    /// handles one socket's requests in sequence, so each finds what the previous made).
    pub async fn configure_pod(
        &self,
        ifname: &str,
        addresses: &[ipnet::IpNet],
        gateways: &[IpAddr],
    ) -> NlResult<()> {
        let index = self.link_index(ifname).await?.ok_or_else(|| NlError {
            what: format!("pod interface {ifname}"),
            errno: Some(errno::ENODEV),
            message: "not found in the pod's namespace".into(),
        })?;
        let mut steps: Vec<BoxFuture<'_, NlResult<()>>> = Vec::new();
        for (i, what) in [(index, ifname.to_string()), (1, "lo".to_string())] {
            let req = self
                .handle
                .link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute();
            steps.push(Box::pin(async move {
                req.within(format!("set {what} up")).await
            }));
        }
        for net in addresses {
            steps.push(Box::pin(self.add_address(
                index,
                net.addr(),
                net.prefix_len(),
            )));
        }
        for gw in gateways.iter().copied() {
            let msg = match gw {
                IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(g)
                    .output_interface(index)
                    .build(),
                IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(g)
                    .output_interface(index)
                    .build(),
            };
            let req = self.handle.route().add(msg).execute();
            steps.push(Box::pin(async move {
                exists_ok(req.within(format!("add default route via {gw}")).await)
            }));
        }
        futures::future::try_join_all(steps).await.map(|_| ())
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

    /// Names of the interfaces whose name starts with `prefix`.
    pub async fn links_named(&self, prefix: &str) -> NlResult<Vec<String>> {
        let all = self.links_where(|_| true).await?;
        Ok(all.into_iter().filter(|n| n.starts_with(prefix)).collect())
    }

    async fn links_where(&self, keep: impl Fn(&[LinkAttribute]) -> bool) -> NlResult<Vec<String>> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().within("list links").await? {
            if keep(&l.attributes) {
                out.extend(l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }));
            }
        }
        Ok(out)
    }

    /// The raw handle, for traffic control.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// Writes a sysctl under `/proc/sys` in the calling thread's namespace.
pub fn sysctl(key: &str, value: &str) -> NlResult<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(io(format!("sysctl {key}={value}")))
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

fn stable_mac(parts: &[&str]) -> [u8; 6] {
    let h = netlet_sdk::hash::fnv1a_parts(parts).to_be_bytes();
    [0x02, h[1], h[2], h[3], h[4], h[5]]
}

/// `aa:bb:...` text.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (already validated by the SDK).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split([':', '-'])
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
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
