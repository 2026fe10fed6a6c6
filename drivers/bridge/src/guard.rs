//! Per-port anti-spoofing: a pod's port on the bridge sends only its own MAC and addresses, so
//! an address is an identity that policy (keyed by source address) and the node-local DNS
//! (which pod asked) can trust. nftables over netlink, in a `bridge` family table of this
//! driver's own, checked where frames enter a bridge:
//!
//! ```text
//! table bridge netlet-bridge-guard
//!   map ports { type ifname : verdict }          <pod port> : goto port-<pod port>
//!   chain prerouting (filter hook prerouting, priority -200)
//!     meta iifname vmap @ports                           a known pod port: its chain
//!     meta iifgroup <pod ports' group> drop              a pod port of no known pod: dropped
//!     meta iifgroup <the reaper's group> drop            (one being deleted too)
//!   chain port-<veth>
//!     ether saddr != <its MAC> drop
//!     arp  (sender address == its IPv4)                  accept
//!     ip   (saddr == its IPv4)                           accept
//!     ip6  (saddr == its IPv6)                           accept
//!     ip6  saddr fe80::/10, ICMPv6 RS/NS/NA/MLDv2 report accept   neighbour discovery only
//!     ip6  saddr ::, ICMPv6 NS/MLDv2 report              accept   duplicate address detection
//!     drop                                               (other sources, link-local
//!                                                         traffic, other ethertypes)
//! ```
//!
//! A port's chain is added before its veth exists and removed when its record goes; at start
//! the table is made whole again from the records. A pod's IPv6 link-local address is thus not
//! offered for anything but neighbour discovery (no policy could match it).

use std::net::IpAddr;

use ipnet::IpNet;
use netlet_nftables::{
    self as nft, BaseChain, Batch, Conn, Expr, Family, MetaKey, Operator, Register, SetSpec,
    VerdictData, hook,
};

use crate::netlink::NlError;

/// The table.
pub const TABLE: &str = "netlet-bridge-guard";
/// The link group of pod ports ("nlpp"): frames from a port of this group that is not a known
/// pod's are dropped.
pub const POD_PORT_GROUP: u32 = 0x6e6c_7070;
const MAP: &str = "ports";
const CHAIN: &str = "prerouting";
const FAMILY: Family = Family::Bridge;
/// nft's `ifname` type.
const TYPE_IFNAME: u32 = 41;
const IFNAMSIZ: usize = 16;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 router solicitation, neighbour solicitation and advertisement, MLDv2 report.
const ND_TYPES: [u8; 4] = [133, 135, 136, 143];

/// One guarded port: the host-side veth, the pod's MAC and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Host-side veth (a port of one of this driver's bridges).
    pub veth: String,
    /// The pod's MAC.
    pub mac: [u8; 6],
    /// The pod's addresses on it.
    pub addrs: Vec<IpAddr>,
}

fn ifname(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.resize(IFNAMSIZ, 0);
    k
}

fn chain_of(veth: &str) -> String {
    format!("port-{veth}")
}

fn ethertype(t: u16) -> Vec<Expr> {
    vec![
        nft::payload(nft::base::LINK, 12, 2, Register::Reg1),
        nft::cmp(Operator::Equal, Register::Reg1, t.to_be_bytes().to_vec()),
    ]
}

fn accept() -> Expr {
    nft::verdict(&VerdictData::Accept)
}

fn drop() -> Expr {
    nft::verdict(&VerdictData::Drop)
}

/// `<ethertype> <network header bytes at offset> == value [and ICMPv6 type] accept`.
fn accept_if(ethertype_: u16, offset: u32, value: Vec<u8>, icmpv6: Option<u8>) -> Vec<Expr> {
    let mut r = ethertype(ethertype_);
    r.push(nft::payload(
        nft::base::NETWORK,
        offset,
        value.len() as u32,
        Register::Reg1,
    ));
    r.push(nft::cmp(Operator::Equal, Register::Reg1, value));
    if let Some(t) = icmpv6 {
        r.extend(icmpv6_type(t));
    }
    r.push(accept());
    r
}

fn icmpv6_type(t: u8) -> Vec<Expr> {
    vec![
        nft::meta(MetaKey::L4Proto, Register::Reg1),
        nft::cmp(Operator::Equal, Register::Reg1, vec![IPPROTO_ICMPV6]),
        nft::payload(nft::base::TRANSPORT, 0, 1, Register::Reg1),
        nft::cmp(Operator::Equal, Register::Reg1, vec![t]),
    ]
}

/// The rules of a port's chain, in order.
fn port_rules(p: &Port) -> Vec<Vec<Expr>> {
    let mut rules = vec![vec![
        nft::payload(nft::base::LINK, 6, 6, Register::Reg1),
        nft::cmp(Operator::NotEqual, Register::Reg1, p.mac.to_vec()),
        drop(),
    ]];
    for a in &p.addrs {
        match a {
            IpAddr::V4(v4) => {
                // ARP's sender protocol address (after htype, ptype, hlen, plen, oper, sha),
                // then IPv4's source.
                rules.push(accept_if(ETH_P_ARP, 14, v4.octets().to_vec(), None));
                rules.push(accept_if(ETH_P_IP, 12, v4.octets().to_vec(), None));
            }
            IpAddr::V6(v6) => rules.push(accept_if(ETH_P_IPV6, 8, v6.octets().to_vec(), None)),
        }
    }
    if p.addrs.iter().any(IpAddr::is_ipv6) {
        let link_local: IpNet = "fe80::/10".parse().unwrap_or_else(|_| IpNet::default());
        for t in ND_TYPES {
            let mut r = ethertype(ETH_P_IPV6);
            r.extend(nft::addr_in(8, &link_local, Operator::Equal));
            r.extend(icmpv6_type(t));
            r.push(accept());
            rules.push(r);
        }
        // Duplicate address detection: from the unspecified address.
        for t in [135u8, 143] {
            rules.push(accept_if(ETH_P_IPV6, 8, vec![0; 16], Some(t)));
        }
    }
    rules.push(vec![drop()]);
    rules
}

/// Adds `p`'s chain and its map element to `b`.
fn add_port(b: &mut Batch, p: &Port) {
    let chain = chain_of(&p.veth);
    b.add_chain(FAMILY, TABLE, &chain, None);
    for r in port_rules(p) {
        b.add_rule(FAMILY, TABLE, &chain, r);
    }
    b.add_verdicts(
        FAMILY,
        TABLE,
        MAP,
        vec![(ifname(&p.veth), VerdictData::Goto(chain))],
    );
}

/// The batch that makes the table guard exactly `ports` (replacing it whole).
pub fn table(ports: &[Port]) -> Batch {
    let mut b = Batch::new();
    b.add_table(FAMILY, TABLE);
    b.delete_table(FAMILY, TABLE);
    b.add_table(FAMILY, TABLE);
    b.add_set(
        FAMILY,
        TABLE,
        &SetSpec {
            name: MAP.into(),
            key_len: IFNAMSIZ as u32,
            key_type: TYPE_IFNAME,
            verdict_map: true,
            data: None,
            timeout_ms: None,
            interval: false,
        },
    );
    b.add_chain(
        FAMILY,
        TABLE,
        CHAIN,
        Some(&BaseChain {
            kind: "filter",
            hook: hook::PREROUTING,
            priority: -200,
        }),
    );
    // Every frame from a known pod port goes to its chain.
    b.add_rule(
        FAMILY,
        TABLE,
        CHAIN,
        vec![
            nft::meta(MetaKey::Iifname, Register::Reg1),
            nft::lookup(MAP, Register::Reg1, Some(Register::Verdict)),
        ],
    );
    // Any other pod port (its pod gone, or being deleted by the reaper): dropped.
    for group in [POD_PORT_GROUP, crate::reaper::GROUP] {
        b.add_rule(
            FAMILY,
            TABLE,
            CHAIN,
            vec![
                nft::meta(MetaKey::Iifgroup, Register::Reg1),
                nft::cmp(
                    Operator::Equal,
                    Register::Reg1,
                    group.to_ne_bytes().to_vec(),
                ),
                drop(),
            ],
        );
    }
    for p in ports {
        add_port(&mut b, p);
    }
    b
}

/// The batch that guards one more port; `guarded` when it has a chain already (replaced).
pub fn add(p: &Port, guarded: bool) -> Batch {
    let mut b = if guarded {
        remove(&p.veth)
    } else {
        Batch::new()
    };
    add_port(&mut b, p);
    b
}

/// The batch that stops guarding `veth` (guarded now): frames from it are dropped from then on
/// (it is no port of a known pod any more).
pub fn remove(veth: &str) -> Batch {
    let chain = chain_of(veth);
    let mut b = Batch::new();
    b.delete_keys(FAMILY, TABLE, MAP, vec![ifname(veth)]);
    b.flush_chain(FAMILY, TABLE, &chain);
    b.delete_chain(FAMILY, TABLE, &chain);
    b
}

/// Sends a batch and waits for the kernel's answer.
pub fn send(b: Batch) -> Result<(), NlError> {
    Conn::open()
        .and_then(|mut c| c.send(b))
        .map_err(|e| NlError {
            what: format!("nftables: {}", e.what),
            errno: e.errno,
            message: e.message,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_sends_only_its_own_mac_and_addresses() {
        let p = Port {
            veth: "veth0123456789a".into(),
            mac: [0x0a, 0x58, 10, 244, 1, 2],
            addrs: vec!["10.244.1.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        };
        let rules = port_rules(&p);
        // MAC, ARP, IPv4, IPv6, four ND types from link-local, two from ::, the final drop.
        assert_eq!(rules.len(), 1 + 2 + 1 + 4 + 2 + 1);
        let v4_only = Port {
            addrs: vec!["10.244.1.2".parse().unwrap()],
            ..p.clone()
        };
        assert_eq!(
            port_rules(&v4_only).len(),
            1 + 2 + 1,
            "no IPv6 at all without one"
        );
        let steps: Vec<String> = add(&p, true).steps().map(str::to_string).collect();
        assert_eq!(
            steps[..4],
            [
                "delete 1 element(s) from ports",
                "flush chain port-veth0123456789a",
                "delete chain port-veth0123456789a",
                "add chain port-veth0123456789a",
            ]
        );
        assert_eq!(
            steps.last().map(String::as_str),
            Some("add 1 element(s) to ports")
        );
        assert_eq!(ifname("netlet0").len(), 16);
    }
}
