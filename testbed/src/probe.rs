//! Looking inside network namespaces and sending real packets between them: what the data-plane
//! conformance checks and benchmarks see. Sockets are opened on a thread that entered the
//! namespace, and stay bound to it afterwards.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::net::if_::InterfaceFlags;

/// How long a probe waits for a packet or a connection.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What one interface inside a namespace looks like.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Iface {
    /// MAC, `aa:bb:..`.
    pub mac: String,
    /// Addresses with prefix length, `10.0.0.2/24` (link-local IPv6 left out).
    pub addresses: BTreeSet<String>,
    /// Administratively up and running.
    pub up: bool,
}

/// A default route seen inside a namespace: gateway and interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DefaultRoute {
    /// Gateway.
    pub gateway: IpAddr,
    /// Interface.
    pub iface: String,
}

pub fn run_in<R: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    netlet_sdk::netns::run_in(netns, f).map_err(|e| e.to_string())
}

/// Interfaces of the namespace at `netns`, by name.
pub fn interfaces(netns: &Path) -> Result<std::collections::BTreeMap<String, Iface>, String> {
    run_in(netns, || {
        let mut out: std::collections::BTreeMap<String, Iface> = Default::default();
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
        for a in addrs {
            let e = out.entry(a.interface_name.clone()).or_default();
            e.up = a.flags.contains(InterfaceFlags::IFF_UP)
                && a.flags.contains(InterfaceFlags::IFF_RUNNING);
            let Some(addr) = a.address else { continue };
            if let Some(l) = addr.as_link_addr()
                && let Some(m) = l.addr()
            {
                e.mac = m
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            let prefix = |mask: Option<nix::sys::socket::SockaddrStorage>, v6: bool| -> u32 {
                mask.map(|m| {
                    if v6 {
                        m.as_sockaddr_in6()
                            .map(|s| u128::from(s.ip()).count_ones())
                            .unwrap_or(0)
                    } else {
                        m.as_sockaddr_in()
                            .map(|s| s.ip().to_bits().count_ones())
                            .unwrap_or(0)
                    }
                })
                .unwrap_or(0)
            };
            if let Some(s) = addr.as_sockaddr_in() {
                e.addresses
                    .insert(format!("{}/{}", s.ip(), prefix(a.netmask, false)));
            } else if let Some(s) = addr.as_sockaddr_in6()
                && (s.ip().segments()[0] & 0xffc0) != 0xfe80
            {
                e.addresses
                    .insert(format!("{}/{}", s.ip(), prefix(a.netmask, true)));
            }
        }
        Ok(out)
    })?
}

fn hex_v4_le(s: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(s, 16)
        .ok()
        .map(|v| Ipv4Addr::from(v.swap_bytes()))
}

/// Default routes (IPv4 and IPv6) inside the namespace at `netns`.
pub fn default_routes(netns: &Path) -> Result<Vec<DefaultRoute>, String> {
    run_in(netns, || {
        let mut out = Vec::new();
        let v4 =
            std::fs::read_to_string("/proc/thread-self/net/route").map_err(|e| e.to_string())?;
        for line in v4.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7
                && f[1] == "00000000"
                && f[7] == "00000000"
                && let Some(gw) = hex_v4_le(f[2])
            {
                {
                    out.push(DefaultRoute {
                        gateway: IpAddr::V4(gw),
                        iface: f[0].to_string(),
                    });
                }
            }
        }
        let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route")
            .map_err(|e| e.to_string())?;
        for line in v6.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 10
                && f[0] == "0".repeat(32)
                && f[1] == "00"
                && f[4] != "0".repeat(32)
                && let Ok(v) = u128::from_str_radix(f[4], 16)
            {
                {
                    out.push(DefaultRoute {
                        gateway: IpAddr::V6(Ipv6Addr::from(v)),
                        iface: f[9].to_string(),
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    })?
}

/// Whether interface `name` exists in this process's own namespace.
pub fn local_interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// A TCP echo server bound to `addr` inside `netns` (or here, with `None`) serving `conns`
/// connections on a thread; returns the bound address.
pub fn tcp_echo(
    netns: Option<&Path>,
    addr: SocketAddr,
    conns: usize,
) -> Result<SocketAddr, String> {
    let bind = move || TcpListener::bind(addr).map_err(|e| format!("bind tcp {addr}: {e}"));
    let l = match netns {
        Some(p) => run_in(p, bind)??,
        None => bind()?,
    };
    let local = l.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for _ in 0..conns {
            let Ok((mut c, peer)) = l.accept() else {
                return;
            };
            let _ = c.set_read_timeout(Some(PROBE_TIMEOUT));
            let mut buf = [0u8; 256];
            if let Ok(n) = c.read(&mut buf) {
                let _ = c.write_all(format!("{}|", peer.ip()).as_bytes());
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    Ok(local)
}

/// Connects from inside `netns` to `to`, sends `msg`, returns what the echo server answered:
/// `<client address as the server saw it>|<msg>`.
pub fn tcp_request(netns: &Path, to: SocketAddr, msg: &str) -> Result<String, String> {
    let msg = msg.to_string();
    run_in(netns, move || -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&to, PROBE_TIMEOUT)
            .map_err(|e| format!("tcp connect {to}: {e}"))?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.write_all(msg.as_bytes())
            .map_err(|e| format!("tcp send to {to}: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("tcp read from {to}: {e}"))?;
        Ok(out)
    })?
}

/// A UDP echo server bound to `addr` inside `netns` answering `datagrams` datagrams.
pub fn udp_echo(netns: &Path, addr: SocketAddr, datagrams: usize) -> Result<SocketAddr, String> {
    let s = run_in(netns, move || {
        UdpSocket::bind(addr).map_err(|e| format!("bind udp {addr}: {e}"))
    })??;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT * 2));
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        for _ in 0..datagrams {
            let Ok((n, peer)) = s.recv_from(&mut buf) else {
                return;
            };
            let mut reply = format!("{}|", peer.ip()).into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, peer);
        }
    });
    Ok(local)
}

/// Sends `msg` over UDP from inside `netns` to `to` and returns the echo.
pub fn udp_request(netns: &Path, to: SocketAddr, msg: &str) -> Result<String, String> {
    udp_ask(&udp_socket(netns, to.is_ipv4())?, to, msg)
}

/// A UDP socket of the namespace at `netns` (bound to an ephemeral port there; it stays in
/// that namespace whichever thread uses it), with the probes' read timeout: for flows that
/// must keep their source port across several datagrams.
pub fn udp_socket(netns: &Path, v4: bool) -> Result<UdpSocket, String> {
    run_in(netns, move || -> Result<UdpSocket, String> {
        let s = UdpSocket::bind(if v4 { "0.0.0.0:0" } else { "[::]:0" })
            .map_err(|e| format!("udp bind: {e}"))?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        Ok(s)
    })?
}

/// One datagram from `s` to `to` and its answer.
pub fn udp_ask(s: &UdpSocket, to: SocketAddr, msg: &str) -> Result<String, String> {
    s.send_to(msg.as_bytes(), to)
        .map_err(|e| format!("udp send to {to}: {e}"))?;
    let mut buf = [0u8; 256];
    let (n, _) = s
        .recv_from(&mut buf)
        .map_err(|e| format!("udp reply from {to}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The address part of `10.0.0.2/24`.
pub fn ip_of(cidr: &str) -> Result<IpAddr, String> {
    cidr.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| format!("{cidr:?} is not an address"))
}

/// A namespace created for a test, deleted on drop.
pub struct NetNs {
    /// Pinned path under /run/netns.
    pub path: PathBuf,
}

impl NetNs {
    /// Creates `/run/netns/<name>`.
    pub fn create(name: &str) -> Result<Self, String> {
        netlet_sdk::netns::create_named(name)
            .map(|path| Self { path })
            .map_err(|e| e.to_string())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = netlet_sdk::netns::delete(&self.path);
    }
}

/// Queueing disciplines inside the namespace at `netns`: (interface name, qdisc kind), read
/// over rtnetlink.
pub fn qdiscs(netns: &Path) -> Result<Vec<(String, String)>, String> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::{link::LinkAttribute, tc::TcAttribute};
    in_ns_rt(netns, |h| {
        Box::pin(async move {
            let mut names = std::collections::HashMap::new();
            let mut links = h.link().get().execute();
            while let Some(l) = links.try_next().await.map_err(|e| e.to_string())? {
                for a in l.attributes {
                    if let LinkAttribute::IfName(n) = a {
                        names.insert(l.header.index as i32, n);
                    }
                }
            }
            let mut out = Vec::new();
            let mut q = h.qdisc().get().execute();
            while let Some(m) = q.try_next().await.map_err(|e| e.to_string())? {
                let kind = m.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                });
                if let (Some(n), Some(k)) = (names.get(&m.header.index), kind) {
                    out.push((n.clone(), k));
                }
            }
            out.sort();
            Ok(out)
        })
    })
}

async fn nl_index(h: &rtnetlink::Handle, name: &str) -> Result<u32, String> {
    use futures::TryStreamExt;
    let link = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| e.to_string())?
        .ok_or(format!("{name} missing"))?;
    Ok(link.header.index)
}

async fn nl_up(h: &rtnetlink::Handle, name: &str, idx: u32) -> Result<(), String> {
    h.link()
        .set(rtnetlink::LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(|e| format!("{name} up: {e}"))
}

async fn nl_up_with_address(h: &rtnetlink::Handle, name: &str, cidr: &str) -> Result<(), String> {
    let (ip, len) = cidr.split_once('/').ok_or("cidr")?;
    let ip: IpAddr = ip.parse().map_err(|_| format!("bad address {cidr}"))?;
    let idx = nl_index(h, name).await?;
    let mut req = h.address().add(idx, ip, len.parse().map_err(|_| "prefix")?);
    // No duplicate address detection: the test made the only holder, and a tentative address
    // would make the first second of traffic depend on timing.
    req.message_mut()
        .attributes
        .push(rtnetlink::packet_route::address::AddressAttribute::Flags(
            rtnetlink::packet_route::address::AddressFlags::Nodad,
        ));
    req.execute()
        .await
        .map_err(|e| format!("address {cidr} on {name}: {e}"))?;
    nl_up(h, name, idx).await
}

/// Sets interface `name` up inside `netns` (e.g. `lo` of a fresh namespace).
pub fn link_up(netns: &Path, name: &str) -> Result<(), String> {
    let name = name.to_string();
    in_ns_rt(netns, move |h| {
        Box::pin(async move {
            let idx = nl_index(&h, &name).await?;
            nl_up(&h, &name, idx).await
        })
    })
}

/// Sets interface `name` down inside `netns` (its traffic is lost, not refused).
pub fn link_down(netns: &Path, name: &str) -> Result<(), String> {
    let name = name.to_string();
    in_ns_rt(netns, move |h| {
        Box::pin(async move {
            let idx = nl_index(&h, &name).await?;
            h.link()
                .set(rtnetlink::LinkUnspec::new_with_index(idx).down().build())
                .execute()
                .await
                .map_err(|e| format!("{name} down: {e}"))
        })
    })
}

fn in_ns_rt<R: Send + 'static>(
    netns: &Path,
    f: impl FnOnce(rtnetlink::Handle) -> std::pin::Pin<Box<dyn Future<Output = Result<R, String>>>>
    + Send
    + 'static,
) -> Result<R, String> {
    run_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (conn, h, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            f(h).await
        })
    })?
}

/// A veth pair between two namespaces: `a_if` in `a`, `b_if` in `b`, both down and without
/// addresses.
fn veth_between(a: &Path, a_if: &str, b: &Path, b_if: &str) -> Result<(), String> {
    let peer_ns = std::fs::File::open(b).map_err(|e| e.to_string())?;
    let (a_if, b_if) = (a_if.to_string(), b_if.to_string());
    in_ns_rt(a, move |h| {
        Box::pin(async move {
            use std::os::fd::AsRawFd;
            let peer = rtnetlink::LinkMessageBuilder::<rtnetlink::LinkUnspec>::new()
                .name(b_if.clone())
                .setns_by_fd(peer_ns.as_raw_fd())
                .build();
            let msg = rtnetlink::LinkVeth::new(&a_if, &b_if)
                .set_info_data(rtnetlink::packet_route::link::InfoData::Veth(
                    rtnetlink::packet_route::link::InfoVeth::Peer(peer),
                ))
                .build();
            h.link()
                .add(msg)
                .execute()
                .await
                .map_err(|e| format!("veth {a_if}: {e}"))
        })
    })
}

/// Wires two namespaces with a veth pair: `a_if` with `a_cidr` in `a`, `b_if` with `b_cidr`
/// in `b` (e.g. a node and an "outside" client), both up. Gone with either namespace.
pub fn wire(
    a: &Path,
    a_if: &str,
    a_cidr: &str,
    b: &Path,
    b_if: &str,
    b_cidr: &str,
) -> Result<(), String> {
    veth_between(a, a_if, b, b_if)?;
    add_address(a, a_if, a_cidr)?;
    add_address(b, b_if, b_cidr)
}

/// A Linux bridge `name` holding `cidr` inside `netns`, up.
pub fn bridge(netns: &Path, name: &str, cidr: &str) -> Result<(), String> {
    let (name, cidr) = (name.to_string(), cidr.to_string());
    in_ns_rt(netns, move |h| {
        Box::pin(async move {
            h.link()
                .add(rtnetlink::LinkBridge::new(&name).build())
                .execute()
                .await
                .map_err(|e| format!("bridge {name}: {e}"))?;
            nl_up_with_address(&h, &name, &cidr).await
        })
    })
}

/// Puts namespace `pod` on bridge `bridge` of namespace `node` (as a plain CNI bridge plugin
/// would): veth `port` there, a port of the bridge, and `eth0` in `pod` holding `cidr` with a
/// default route via `gateway`; `lo` of `pod` up.
pub fn onto_bridge(
    node: &Path,
    bridge: &str,
    port: &str,
    pod: &Path,
    cidr: &str,
    gateway: IpAddr,
) -> Result<(), String> {
    veth_between(node, port, pod, "eth0")?;
    let (bridge, port) = (bridge.to_string(), port.to_string());
    in_ns_rt(node, move |h| {
        Box::pin(async move {
            let (br, idx) = (nl_index(&h, &bridge).await?, nl_index(&h, &port).await?);
            h.link()
                .set(
                    rtnetlink::LinkUnspec::new_with_index(idx)
                        .controller(br)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| format!("{port} onto {bridge}: {e}"))
        })
    })?;
    add_address(pod, "eth0", cidr)?;
    link_up(pod, "lo")?;
    let default = if gateway.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    add_route(pod, default, gateway)
}

/// Makes a veth pair `a` / `b` inside `netns` (a link the pod has before a driver comes), up.
pub fn veth_inside(netns: &Path, a: &str, b: &str) -> Result<(), String> {
    let (a, b) = (a.to_string(), b.to_string());
    in_ns_rt(netns, move |h| {
        Box::pin(async move {
            h.link()
                .add(rtnetlink::LinkVeth::new(&a, &b).build())
                .execute()
                .await
                .map_err(|e| format!("veth {a}: {e}"))?;
            let idx = nl_index(&h, &a).await?;
            nl_up(&h, &a, idx).await
        })
    })
}

/// Deletes interface `name` inside the namespace at `netns` (fault injection in tests).
pub fn delete_link(netns: &Path, name: &str) -> Result<(), String> {
    let name = name.to_string();
    in_ns_rt(netns, move |h| {
        Box::pin(async move {
            h.link()
                .del_with_message(rtnetlink::LinkUnspec::new_with_name(&name).build())
                .execute()
                .await
                .map_err(|e| format!("delete {name}: {e}"))
        })
    })
}

/// Adds `cidr` to interface `name` inside `netns`.
pub fn add_address(netns: &Path, name: &str, cidr: &str) -> Result<(), String> {
    let (name, cidr) = (name.to_string(), cidr.to_string());
    in_ns_rt(netns, move |h| {
        Box::pin(async move { nl_up_with_address(&h, &name, &cidr).await })
    })
}

/// Adds a route to `dst` (a CIDR; `0.0.0.0/0` or `::/0` for a default route) via `gateway`
/// inside `netns`.
pub fn add_route(netns: &Path, dst: &str, gateway: IpAddr) -> Result<(), String> {
    let (ip, len) = dst.split_once('/').ok_or("cidr")?;
    let ip: IpAddr = ip.parse().map_err(|_| format!("bad address {dst}"))?;
    let len: u8 = len.parse().map_err(|_| format!("bad prefix {dst}"))?;
    let dst = dst.to_string();
    in_ns_rt(netns, move |h| {
        Box::pin(async move {
            let msg = match (ip, gateway) {
                (IpAddr::V4(d), IpAddr::V4(g)) => rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(d, len)
                    .gateway(g)
                    .build(),
                (IpAddr::V6(d), IpAddr::V6(g)) => rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(d, len)
                    .gateway(g)
                    .build(),
                _ => return Err(format!("route {dst}: families differ")),
            };
            h.route()
                .add(msg)
                .execute()
                .await
                .map_err(|e| format!("route {dst} via {gateway}: {e}"))
        })
    })
}

/// A TCP server bound to `addr` inside `netns` for the life of the process: each connection is
/// answered with `<tag>|<client address as seen>` and closed. Returns the bound address.
pub fn tcp_tagged(netns: &Path, addr: SocketAddr, tag: &str) -> Result<SocketAddr, String> {
    let l = run_in(netns, move || {
        TcpListener::bind(addr).map_err(|e| format!("bind tcp {addr}: {e}"))
    })??;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    let tag = tag.to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(format!("{tag}|{peer}").as_bytes());
        }
    });
    Ok(local)
}

/// A UDP server bound to `addr` inside `netns` for the life of the process, answering each
/// datagram with `<tag>|<client address as seen>`.
pub fn udp_tagged(netns: &Path, addr: SocketAddr, tag: &str) -> Result<SocketAddr, String> {
    let s = run_in(netns, move || {
        UdpSocket::bind(addr).map_err(|e| format!("bind udp {addr}: {e}"))
    })??;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let tag = tag.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            let Ok((_, peer)) = s.recv_from(&mut buf) else {
                return;
            };
            let _ = s.send_to(format!("{tag}|{}", peer.ip()).as_bytes(), peer);
        }
    });
    Ok(local)
}

/// Connects from inside `netns` to `to` and reads until the server closes: what a
/// [`tcp_tagged`] server answered. Errors keep the io error's text ("Connection refused").
pub fn tcp_read(netns: &Path, to: SocketAddr, timeout: Duration) -> Result<String, String> {
    run_in(netns, move || -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&to, timeout)
            .map_err(|e| format!("tcp connect {to}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("tcp read from {to}: {e}"))?;
        Ok(out)
    })?
}

/// `n` TCP connections from inside `netns` to a [`tcp_tagged`] server at `to`, one after the
/// other on one thread: the time from connect to the server's answer, each.
pub fn tcp_latencies(netns: &Path, to: SocketAddr, n: usize) -> Result<Vec<Duration>, String> {
    run_in(netns, move || -> Result<Vec<Duration>, String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = std::time::Instant::now();
            let mut s = TcpStream::connect_timeout(&to, PROBE_TIMEOUT)
                .map_err(|e| format!("tcp connect {to}: {e}"))?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)
                .map_err(|e| format!("tcp read from {to}: {e}"))?;
            out.push(t.elapsed());
            if buf.is_empty() {
                return Err(format!("tcp {to}: closed without an answer"));
            }
        }
        Ok(out)
    })?
}
