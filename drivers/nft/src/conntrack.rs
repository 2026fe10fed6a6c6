//! Flushing stale UDP conntrack entries over ctnetlink (what `conntrack -D -p udp
//! --reply-src ADDR` does): when a UDP endpoint goes away, flows DNATed to it would otherwise
//! keep going to it until they time out.
//!
//! The kernel deletes by exact tuple, so the table is dumped per family, entries whose reply
//! comes from the endpoint (address and port) are picked, and each is deleted by its original
//! tuple.

use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;

fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

fn find(b: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(b)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

/// (source address, protocol, source port) of a tuple.
fn tuple_source(t: &[u8]) -> Option<(IpAddr, u8, u16)> {
    let ip = find(t, CTA_TUPLE_IP)?;
    let src = attrs(ip).into_iter().find(|(k, _)| *k == 1 || *k == 3)?;
    let addr = match src.1.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(src.1).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(src.1).ok()?),
        _ => return None,
    };
    let proto = find(t, CTA_TUPLE_PROTO)?;
    let num = *find(proto, CTA_PROTO_NUM)?.first()?;
    let port = find(proto, CTA_PROTO_SRC_PORT)
        .and_then(|p| <[u8; 2]>::try_from(p).ok())
        .map(u16::from_be_bytes)
        .unwrap_or(0);
    Some((addr, num, port))
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, body: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend([family, 0, 0, 0]); // nfgenmsg: family, version, res_id
    m.extend(body);
    m
}

fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + value.len() + 3);
    a.extend(((4 + value.len()) as u16).to_ne_bytes());
    a.extend(kind.to_ne_bytes());
    a.extend(value);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
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
    let mut doomed: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    for family in [2u8, 10u8] {
        if !endpoints
            .iter()
            .any(|(ip, _)| ip.is_ipv4() == (family == 2))
        {
            continue;
        }
        sock.send(
            &message(
                IPCTNL_MSG_CT_GET,
                NLM_F_REQUEST | NLM_F_DUMP,
                1,
                family,
                &[],
            ),
            0,
        )?;
        'dump: loop {
            let n = sock.recv(&mut &mut buf[..], 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if len < 16 || off + len > n {
                    break;
                }
                let msg = &buf[off..off + len];
                off += (len + 3) & !3;
                match kind {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(msg[16..20].try_into().unwrap());
                        if code != 0 {
                            return Err(std::io::Error::from_raw_os_error(-code));
                        }
                        break 'dump;
                    }
                    _ => {}
                }
                if msg.len() < 20 {
                    continue;
                }
                let body = &msg[20..];
                let (Some(orig), Some(reply)) =
                    (find(body, CTA_TUPLE_ORIG), find(body, CTA_TUPLE_REPLY))
                else {
                    continue;
                };
                let Some((addr, 17, port)) = tuple_source(reply) else {
                    continue;
                };
                if endpoints.contains(&(addr, port)) {
                    let mut del = nla(CTA_TUPLE_ORIG | 0x8000, orig);
                    if let Some(z) = find(body, CTA_ZONE) {
                        del.extend(nla(CTA_ZONE, z));
                    }
                    doomed.push((family, del));
                }
            }
        }
    }
    let mut deleted = 0;
    for (i, (family, body)) in doomed.iter().enumerate() {
        sock.send(
            &message(
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                i as u32 + 2,
                *family,
                body,
            ),
            0,
        )?;
        let n = sock.recv(&mut &mut buf[..], 0)?;
        if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
            // ENOENT: it went away meanwhile.
            if code == 0 {
                deleted += 1;
            } else if code != -2 {
                return Err(std::io::Error::from_raw_os_error(-code));
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_source_of_a_tuple() {
        let ip = nla(
            CTA_TUPLE_IP | 0x8000,
            &[nla(1, &[10, 0, 0, 7]), nla(2, &[10, 0, 0, 1])].concat(),
        );
        let proto = nla(
            CTA_TUPLE_PROTO | 0x8000,
            &[
                nla(CTA_PROTO_NUM, &[17]),
                nla(CTA_PROTO_SRC_PORT, &53u16.to_be_bytes()),
            ]
            .concat(),
        );
        let t = [ip, proto].concat();
        assert_eq!(
            tuple_source(&t),
            Some(("10.0.0.7".parse().unwrap(), 17, 53))
        );
    }
}
