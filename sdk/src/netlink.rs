//! The data plane through rtnetlink, for drivers: a connection bound to a namespace (the
//! calling one, or a pod's), errors that say which step failed and the kernel's errno, every
//! kernel round trip bounded in time, and the steps most drivers take (find, address and delete
//! links, configure a pod's interface). No `ip` is executed. A socket opened inside a pod's
//! namespace stays bound to it, so pod-side work happens over a connection created on a thread
//! that entered the namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::TryStreamExt;
use futures::future::BoxFuture;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

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

pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NlError {
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
pub trait Within<T>: Future<Output = Result<T, rtnetlink::Error>> + Sized {
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

/// Ignores "already exists" (EEXIST).
pub fn exists_ok(r: NlResult<()>) -> NlResult<()> {
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
        let opened = crate::netns::run_in(netns, move || {
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

    /// Names of the interfaces whose name starts with `prefix`.
    pub async fn links_named(&self, prefix: &str) -> NlResult<Vec<String>> {
        let all = self.links_where(|_| true).await?;
        Ok(all.into_iter().filter(|n| n.starts_with(prefix)).collect())
    }

    /// Names of the interfaces whose attributes `keep` accepts.
    pub async fn links_where(
        &self,
        keep: impl Fn(&[LinkAttribute]) -> bool,
    ) -> NlResult<Vec<String>> {
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
    fn macs_parse_and_print() {
        let mac = [0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x07];
        assert_eq!(mac_string(&mac), "0a:58:0a:f4:00:07");
        assert_eq!(parse_mac("0a:58:0a:f4:00:07"), Some(mac));
        assert_eq!(parse_mac("0A-58-0A-F4-00-07"), Some(mac));
        assert_eq!(parse_mac("0a:58:0a:f4:00"), None);
    }
}
