//! Flushing stale UDP conntrack entries over ctnetlink (what `conntrack -D -p udp
//! --reply-src ADDR` does): when a UDP endpoint goes away, flows DNATed to it would otherwise
//! keep going to it until they time out.
//!
//! The kernel deletes by exact tuple, so the table is dumped per family, entries whose reply
//! comes from the endpoint (address and port) are picked, and each is deleted by its original
//! tuple (and zone). The messages are netlink-packet-netfilter's conntrack ones; the socket
//! has a receive timeout, so a kernel that does not answer fails the flush instead of hanging.

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// The zone attribute, which the crate passes through as an unparsed one.
const CTA_ZONE: u16 = 18;

/// How long the kernel may take to answer one message.
const KERNEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn request(family: NetfilterProtoFamily, msg: ConntrackMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut m = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(family, 0, 0),
        msg,
    ));
    m.header.flags = flags;
    m.header.sequence_number = seq;
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// (source address, protocol, source port) of a tuple.
fn source(tuple: &[Tuple]) -> Option<(IpAddr, Protocol, u16)> {
    let mut addr = None;
    let (mut proto, mut port) = (None, 0);
    for t in tuple {
        match t {
            Tuple::Ip(ip) => {
                addr = ip.iter().find_map(|i| match i {
                    IPTuple::SourceAddress(a) => Some(*a),
                    _ => None,
                });
            }
            Tuple::Proto(p) => {
                for x in p {
                    match x {
                        ProtoTuple::Protocol(n) => proto = Some(*n),
                        ProtoTuple::SourcePort(s) => port = *s,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((addr?, proto?, port))
}

/// Every reply of the socket until `done` says so; each message is handed to `each`.
fn receive(
    sock: &Socket,
    buf: &mut [u8],
    mut each: impl FnMut(NetlinkMessage<NetfilterMessage>) -> std::io::Result<bool>,
) -> std::io::Result<()> {
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
            if len < 16 || off + len > n {
                break;
            }
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + len])
                .map_err(|e| std::io::Error::other(format!("conntrack reply: {e}")))?;
            off += (len + 3) & !3;
            if each(msg)? {
                return Ok(());
            }
        }
    }
}

/// Deletes UDP conntrack entries whose replies come from one of `endpoints` (address, port).
/// Returns how many were deleted.
pub fn flush_udp(endpoints: &[(IpAddr, u16)]) -> std::io::Result<usize> {
    if endpoints.is_empty() {
        return Ok(0);
    }
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(KERNEL_TIMEOUT.as_secs() as i64, 0),
    )?;
    let mut buf = vec![0u8; 1 << 16];
    let mut doomed: Vec<(NetfilterProtoFamily, Vec<ConntrackAttribute>)> = Vec::new();
    for (family, v4) in [
        (NetfilterProtoFamily::IPv4, true),
        (NetfilterProtoFamily::IPv6, false),
    ] {
        if !endpoints.iter().any(|(ip, _)| ip.is_ipv4() == v4) {
            continue;
        }
        sock.send(
            &request(
                family,
                ConntrackMessage::Get(vec![]),
                NLM_F_REQUEST | NLM_F_DUMP,
                1,
            ),
            0,
        )?;
        receive(&sock, &mut buf, |msg| {
            let attrs = match msg.payload {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(c) => Err(std::io::Error::from_raw_os_error(-c.get())),
                        None => Ok(true),
                    };
                }
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(a)),
                    ..
                }) => a,
                _ => return Ok(false),
            };
            let (mut orig, mut reply, mut zone) = (None, None, None);
            for a in attrs {
                match a {
                    ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
                    ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
                    ConntrackAttribute::Other(n) if n.kind() == CTA_ZONE => zone = Some(n),
                    _ => {}
                }
            }
            if let (Some(orig), Some(reply)) = (orig, reply)
                && let Some((addr, Protocol::Udp, port)) = source(&reply)
                && endpoints.contains(&(addr, port))
            {
                let mut del = vec![ConntrackAttribute::CtaTupleOrig(orig)];
                del.extend(zone.map(ConntrackAttribute::Other));
                doomed.push((family, del));
            }
            Ok(false)
        })?;
    }
    let mut deleted = 0;
    for (i, (family, attrs)) in doomed.into_iter().enumerate() {
        let seq = i as u32 + 2;
        sock.send(
            &request(
                family,
                ConntrackMessage::Delete(attrs),
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
            ),
            0,
        )?;
        receive(&sock, &mut buf, |msg| match msg.payload {
            NetlinkPayload::Error(e) if msg.header.sequence_number == seq => {
                match e.code.map(|c| c.get()) {
                    None => deleted += 1,
                    // ENOENT: it went away meanwhile.
                    Some(-2) => {}
                    Some(c) => return Err(std::io::Error::from_raw_os_error(-c)),
                }
                Ok(true)
            }
            _ => Ok(false),
        })?;
    }
    Ok(deleted)
}
