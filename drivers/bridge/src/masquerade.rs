//! Masquerade of off-node traffic from pod CIDRs, in nftables over netlink (no `nft`), through
//! the SDK's batch layer: one table of this driver's own, `inet netlet-bridge`, with a `nat`
//! chain on postrouting and, per masqueraded CIDR, `<family> saddr <cidr> <family> daddr !=
//! <cidr> masquerade`. The table is replaced whole in one transaction (add, delete, add: atomic,
//! and nothing else is touched).

use ipnet::IpNet;
use netlet_nftables::{
    self as nft, BaseChain, Batch, Conn, Expr, Family, MetaKey, Operator, Register, hook,
};

use crate::netlink::NlError;

/// The driver's own nftables table (family inet).
pub const TABLE: &str = "netlet-bridge";
const CHAIN: &str = "postrouting";
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// srcnat priority.
const SRCNAT: i32 = 100;

/// `saddr in cidr && daddr not in cidr && daddr not in each of except → masquerade`, for the
/// CIDR's family (`except` of the other family are left out).
fn rule(cidr: &IpNet, except: &[IpNet]) -> Vec<Expr> {
    let (proto, src_off, dst_off) = match cidr {
        IpNet::V4(_) => (NFPROTO_IPV4, 12, 16),
        IpNet::V6(_) => (NFPROTO_IPV6, 8, 24),
    };
    let mut exprs = vec![
        nft::meta(MetaKey::Nfproto, Register::Reg1),
        nft::cmp(Operator::Equal, Register::Reg1, vec![proto]),
    ];
    exprs.extend(nft::addr_in(src_off, cidr, Operator::Equal));
    exprs.extend(nft::addr_in(dst_off, cidr, Operator::NotEqual));
    for e in except {
        if e.addr().is_ipv4() == cidr.addr().is_ipv4() && e != cidr {
            exprs.extend(nft::addr_in(dst_off, e, Operator::NotEqual));
        }
    }
    exprs.push(nft::masquerade());
    exprs
}

/// The batch that makes the table hold exactly the rules for `cidrs` (none: no table), none of
/// them masquerading traffic to `except` (the cluster's CIDRs).
pub fn batch(cidrs: &[IpNet], except: &[IpNet]) -> Batch {
    let inet = Family::Inet;
    let mut b = Batch::new();
    // Add (a no-op if it exists), then delete: the old table goes whatever it held.
    b.add_table(inet, TABLE);
    b.delete_table(inet, TABLE);
    if !cidrs.is_empty() {
        b.add_table(inet, TABLE);
        b.add_chain(
            inet,
            TABLE,
            CHAIN,
            Some(&BaseChain {
                kind: "nat",
                hook: hook::POSTROUTING,
                priority: SRCNAT,
            }),
        );
        for c in cidrs {
            b.add_rule(inet, TABLE, CHAIN, rule(c, except));
        }
    }
    b
}

/// Sends `cidrs`' table as one transaction and waits for the kernel's answer.
pub fn apply(cidrs: &[IpNet], except: &[IpNet]) -> Result<(), NlError> {
    let to_nl = |e: nft::NftError| NlError {
        what: format!("nftables: {}", e.what),
        errno: e.errno,
        message: e.message,
    };
    Conn::open()
        .and_then(|mut c| c.send(batch(cidrs, except)))
        .map_err(to_nl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_replaces_the_table_whole() {
        let b = batch(
            &[
                "10.244.0.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            &[],
        );
        let steps: Vec<&str> = b.steps().collect();
        assert_eq!(
            steps,
            [
                "add table inet netlet-bridge",
                "delete table inet netlet-bridge",
                "add table inet netlet-bridge",
                "add chain postrouting",
                "add rule to chain postrouting",
                "add rule to chain postrouting",
            ]
        );
        assert_eq!(batch(&[], &[]).len(), 2, "no CIDR: only the old table goes");
        assert_eq!(
            rule(&"10.244.0.0/24".parse().unwrap(), &[]).len(),
            9,
            "nfproto, 2x (payload, bitwise, cmp), masq"
        );
        let except = [
            "10.244.0.0/16".parse().unwrap(),
            "fd00::/48".parse().unwrap(),
        ];
        assert_eq!(
            rule(&"10.244.1.0/24".parse().unwrap(), &except).len(),
            12,
            "one more (payload, bitwise, cmp) for the cluster CIDR of the family only"
        );
    }
}
