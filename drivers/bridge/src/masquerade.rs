//! Masquerade of off-node traffic from pod CIDRs, in nftables over netlink (no `nft`): one table
//! of this driver's own, `inet netlet-bridge`, with a `nat` chain on postrouting and, per
//! masqueraded CIDR, `<family> saddr <cidr> <family> daddr != <cidr> masquerade`. The table is
//! replaced whole in one transaction (add, delete, add: atomic, and nothing else is touched).

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, Hook, InetHookNumber,
    Meta, MetaKey, NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage,
    TableAttribute, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::netlink::NlError;

/// The driver's own nftables table (family inet).
pub const TABLE: &str = "netlet-bridge";
const CHAIN: &str = "postrouting";
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// Payload base: the network header.
const NETWORK_HEADER: u32 = 1;
/// srcnat priority.
const SRCNAT: u32 = 100;

fn err(what: &str, e: impl std::fmt::Display, errno: Option<i32>) -> NlError {
    NlError {
        what: format!("nftables: {what}"),
        errno,
        message: e.to_string(),
    }
}

fn msg(
    family: NetfilterProtoFamily,
    m: NfTablesMessage,
    flags: u16,
) -> NetlinkMessage<NetfilterMessage> {
    let mut n = NetlinkMessage::from(NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), m));
    n.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    n
}

fn control(c: ControlMessage) -> NetlinkMessage<NetfilterMessage> {
    let mut n = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
        c,
    ));
    n.header.flags = NLM_F_REQUEST;
    n
}

fn table() -> TableMessage {
    TableMessage {
        attributes: vec![TableAttribute::Name(TABLE.into())],
    }
}

/// `saddr in cidr && daddr not in cidr → masquerade`, for the CIDR's family.
fn rule(cidr: &IpNet) -> RuleMessage {
    let (proto, src_off, dst_off, len) = match cidr {
        IpNet::V4(_) => (NFPROTO_IPV4, 12, 16, 4u32),
        IpNet::V6(_) => (NFPROTO_IPV6, 8, 24, 16u32),
    };
    let (net, mask) = match cidr {
        IpNet::V4(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
        IpNet::V6(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
    };
    let addr_in = |offset: u32, op: Operator| {
        vec![
            Expressions::Payload(vec![
                Payload::DestinationRegister(Register::Reg1),
                Payload::Base(NETWORK_HEADER),
                Payload::Offset(offset),
                Payload::Len(len),
            ])
            .into(),
            Expressions::Bitwise(vec![
                Bitwise::SourceRegister(Register::Reg1),
                Bitwise::DestinationRegister(Register::Reg1),
                Bitwise::Length(len),
                Bitwise::Mask(DataAttribute::Value(mask.clone())),
                Bitwise::Xor(DataAttribute::Value(vec![0; len as usize])),
            ])
            .into(),
            Expressions::Cmp(vec![
                Cmp::SourceRegister(Register::Reg1),
                Cmp::Op(op),
                Cmp::Data(DataAttribute::Value(net.clone())),
            ])
            .into(),
        ]
    };
    let mut exprs = vec![
        Expressions::Meta(vec![
            Meta::Key(MetaKey::Nfproto),
            Meta::DestinationRegister(Register::Reg1),
        ])
        .into(),
        Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(vec![proto])),
        ])
        .into(),
    ];
    exprs.extend(addr_in(src_off, Operator::Equal));
    exprs.extend(addr_in(dst_off, Operator::NotEqual));
    exprs.push(
        Expressions::Other {
            expression_type: "masq".into(),
            attributes: vec![],
        }
        .into(),
    );
    RuleMessage {
        attributes: vec![
            RuleAttribute::Table(TABLE.into()),
            RuleAttribute::Chain(CHAIN.into()),
            RuleAttribute::Expressions(exprs),
        ],
    }
}

/// The batch that makes the table hold exactly the rules for `cidrs` (none: no table).
pub fn batch(cidrs: &[IpNet]) -> Vec<NetlinkMessage<NetfilterMessage>> {
    let inet = NetfilterProtoFamily::Inet;
    let mut b = vec![
        control(ControlMessage::BatchBegin),
        // Add (a no-op if it exists), then delete: the old table goes whatever it held.
        msg(inet, NfTablesMessage::NewTable(table()), NLM_F_CREATE),
        msg(inet, NfTablesMessage::DeleteTable(table()), 0),
    ];
    if !cidrs.is_empty() {
        b.push(msg(inet, NfTablesMessage::NewTable(table()), NLM_F_CREATE));
        b.push(msg(
            inet,
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(TABLE.into()),
                    ChainAttribute::Name(CHAIN.into()),
                    ChainAttribute::Type("nat".into()),
                    ChainAttribute::Hook(vec![
                        Hook::Number(InetHookNumber::PostRouting.into()),
                        Hook::Priority(SRCNAT),
                    ]),
                    ChainAttribute::Policy(1),
                ],
            }),
            NLM_F_CREATE,
        ));
        for c in cidrs {
            b.push(msg(
                inet,
                NfTablesMessage::NewRule(rule(c)),
                NLM_F_CREATE | NLM_F_APPEND,
            ));
        }
    }
    b.push(control(ControlMessage::BatchEnd));
    b
}

/// Sends `cidrs`' table as one transaction and waits for every acknowledgement.
pub fn apply(cidrs: &[IpNet]) -> Result<(), NlError> {
    let mut sock =
        Socket::new(NETLINK_NETFILTER).map_err(|e| err("socket", &e, e.raw_os_error()))?;
    sock.bind_auto()
        .map_err(|e| err("bind", &e, e.raw_os_error()))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(|e| err("connect", &e, e.raw_os_error()))?;
    let mut msgs = batch(cidrs);
    let mut buf = Vec::new();
    let mut pending = 0usize;
    for (seq, m) in msgs.iter_mut().enumerate() {
        m.header.sequence_number = seq as u32 + 1;
        m.finalize();
        let start = buf.len();
        buf.resize(start + m.buffer_len(), 0);
        m.serialize(&mut buf[start..]);
        if m.header.flags & NLM_F_ACK != 0 {
            pending += 1;
        }
    }
    sock.send(&buf, 0)
        .map_err(|e| err("send", &e, e.raw_os_error()))?;
    let mut rx = vec![0u8; 64 * 1024];
    while pending > 0 {
        let n = sock
            .recv(&mut &mut rx[..], 0)
            .map_err(|e| err("recv", &e, e.raw_os_error()))?;
        let mut off = 0;
        while off < n {
            let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&rx[off..n])
                .map_err(|e| err("decode reply", e, None))?;
            let len = reply.header.length as usize;
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
            if let NetlinkPayload::Error(e) = reply.payload {
                if let Some(code) = e.code {
                    // The failed request is named by its sequence number.
                    let what = format!("request {} of the batch", reply.header.sequence_number);
                    return Err(err(&what, e.to_io(), Some(-code.get())));
                }
                pending -= 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_replaces_the_table_whole() {
        let b = batch(&[
            "10.244.0.0/24".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ]);
        // begin, add, delete, add, chain, 2 rules, end
        assert_eq!(b.len(), 8);
        assert_eq!(batch(&[]).len(), 4, "no CIDR: only the old table goes");
        let NetlinkPayload::InnerMessage(inner) = &b[5].payload else {
            panic!()
        };
        let netlink_packet_netfilter::NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(r)) =
            &inner.inner
        else {
            panic!()
        };
        let RuleAttribute::Expressions(e) = &r.attributes[2] else {
            panic!()
        };
        assert_eq!(e.len(), 9, "nfproto, 2x (payload, bitwise, cmp), masq");
    }
}
