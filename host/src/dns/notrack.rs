//! No conntrack between pods and the node-local DNS server, as NodeLocal DNSCache does with
//! NOTRACK: every DNS packet to or from a listen address (port 53, UDP and TCP) skips conntrack
//! in a table of the host's own (`inet netlet-dns`, chains at the raw priority of prerouting and
//! output). A pod's parallel A and AAAA queries from one socket then never race to create the
//! same conntrack entry (the 5 s stall), the server's load takes no conntrack slots, and, since
//! NAT only sees tracked packets, a listen address that is also a Service's cluster IP (the
//! cluster DNS Service, taken over on this node) is answered here rather than DNATed away.

use std::net::IpAddr;

use netlet_nftables::{
    self as nft, BaseChain, Batch, Conn, Expr, Family, MetaKey, Operator, Register,
};

/// The table (family inet).
pub const TABLE: &str = "netlet-dns";
/// The raw priority: before conntrack (-200) sees the packet.
const RAW: i32 = -300;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// `<nfproto>; <saddr or daddr> == ip; l4proto == proto`.
fn addressed(ip: IpAddr, source: bool, proto: u8) -> Vec<Expr> {
    let (nfproto, offset, bytes) = match ip {
        IpAddr::V4(a) => (
            NFPROTO_IPV4,
            if source { 12 } else { 16 },
            a.octets().to_vec(),
        ),
        IpAddr::V6(a) => (
            NFPROTO_IPV6,
            if source { 8 } else { 24 },
            a.octets().to_vec(),
        ),
    };
    vec![
        nft::meta(MetaKey::Nfproto, Register::Reg1),
        nft::cmp(Operator::Equal, Register::Reg1, vec![nfproto]),
        nft::payload(
            nft::base::NETWORK,
            offset,
            bytes.len() as u32,
            Register::Reg1,
        ),
        nft::cmp(Operator::Equal, Register::Reg1, bytes),
        nft::meta(MetaKey::L4Proto, Register::Reg1),
        nft::cmp(Operator::Equal, Register::Reg1, vec![proto]),
    ]
}

/// `<nfproto>; <saddr or daddr> == ip; l4proto == proto; th <sport or dport> == 53; notrack;
/// accept`.
fn rule(ip: IpAddr, source: bool, proto: u8) -> Vec<Expr> {
    let mut e = addressed(ip, source, proto);
    e.extend([
        nft::payload(
            nft::base::TRANSPORT,
            if source { 0 } else { 2 },
            2,
            Register::Reg1,
        ),
        nft::cmp(
            Operator::Equal,
            Register::Reg1,
            53u16.to_be_bytes().to_vec(),
        ),
        nft::notrack(),
        // Done with this chain: the rest of its rules cannot match too.
        nft::verdict(&nft::VerdictData::Accept),
    ]);
    e
}

/// The node's refusals sent from `ip` while nothing listens on it: `icmp type
/// destination-unreachable code port-unreachable` (ICMPv6 type 1 code 4), or a TCP reset from
/// port 53; dropped.
fn refusals(ip: IpAddr) -> [Vec<Expr>; 2] {
    let (icmp, unreachable, port) = if ip.is_ipv4() { (1, 3, 3) } else { (58, 1, 4) };
    let mut e = addressed(ip, true, icmp);
    e.extend([
        nft::payload(nft::base::TRANSPORT, 0, 2, Register::Reg1),
        nft::cmp(Operator::Equal, Register::Reg1, vec![unreachable, port]),
        nft::verdict(&nft::VerdictData::Drop),
    ]);
    let mut t = addressed(ip, true, 6);
    t.extend([
        nft::payload(nft::base::TRANSPORT, 0, 2, Register::Reg1),
        nft::cmp(
            Operator::Equal,
            Register::Reg1,
            53u16.to_be_bytes().to_vec(),
        ),
        // tcp flags & rst != 0
        nft::payload(nft::base::TRANSPORT, 13, 1, Register::Reg1),
        nft::bitwise(Register::Reg1, Register::Reg1, vec![0x04], vec![0]),
        nft::cmp(Operator::NotEqual, Register::Reg1, vec![0]),
        nft::verdict(&nft::VerdictData::Drop),
    ]);
    [e, t]
}

/// The table for `addresses`, replacing what was there, in one transaction.
pub fn batch(addresses: &[IpAddr]) -> Batch {
    let mut b = Batch::new();
    b.replace_table(Family::Inet, TABLE);
    for (chain, hook) in [
        ("prerouting", nft::hook::PREROUTING),
        ("output", nft::hook::OUTPUT),
    ] {
        b.add_chain(
            Family::Inet,
            TABLE,
            chain,
            Some(&BaseChain {
                kind: "filter",
                hook,
                priority: RAW,
            }),
        );
        for ip in addresses {
            // Queries to the server, and its answers (to pods, and to the node's own processes
            // over lo, which come back through prerouting).
            for source in [false, true] {
                for proto in [17, 6] {
                    b.add_rule(Family::Inet, TABLE, chain, rule(*ip, source, proto));
                }
            }
        }
    }
    b
}

/// Puts the rules for `addresses` in place (blocking: a netlink round trip).
pub fn program(addresses: &[IpAddr]) -> Result<(), nft::NftError> {
    Conn::open()?.send(batch(addresses))
}

/// While the host is away (a restart, with nobody else serving the cluster DNS Service): the
/// NOTRACK rules for `addresses` stay, and what the node would answer a query to them with
/// while nothing listens (ICMP port unreachable, a TCP reset) is dropped, so a client's query
/// goes unanswered and its retry reaches the next host instead of failing at once. The next
/// [`program`] replaces the table (blocking).
pub fn hold(addresses: &[IpAddr]) -> Result<(), nft::NftError> {
    let mut b = batch(addresses);
    b.add_chain(
        Family::Inet,
        TABLE,
        "hold",
        Some(&BaseChain {
            kind: "filter",
            hook: nft::hook::OUTPUT,
            priority: 0,
        }),
    );
    for ip in addresses {
        for r in refusals(*ip) {
            b.add_rule(Family::Inet, TABLE, "hold", r);
        }
    }
    Conn::open()?.send(b)
}

/// Takes the table away (blocking), so that a taken-over cluster IP is the Service's again.
pub fn remove() -> Result<(), nft::NftError> {
    let mut b = Batch::new();
    b.add_table(Family::Inet, TABLE);
    b.delete_table(Family::Inet, TABLE);
    Conn::open()?.send(b)
}
