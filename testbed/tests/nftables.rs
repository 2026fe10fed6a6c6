//! The nftables expressions netlet-nftables encodes by hand (nat, masq, numgen, reject, ct, notrack,
//! dynset, fib), the ones it builds from netlink-packet-netfilter and the elements of interval
//! sets (the policy driver's address sets), checked against the
//! reference tool: for each, `nft` adds the same rule written in its own syntax to one chain
//! and netlet-nftables adds its encoding to another, in a namespace of the test's own; the
//! kernel's dump of both, printed by `nft --debug=netlink`, must be the same expressions.

use std::net::Ipv4Addr;
use std::path::Path;

use netlet_nftables::{self as nft, Batch, Expr, Family, MetaKey, Operator, Register, VerdictData};
use netlet_testbed::harness::{in_netns, privileged, tool};
use netlet_testbed::probe::NetNs;

const TABLE: &str = "nlcheck";

fn ne32(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// The rules of the test: (name, nft's syntax, netlet-nftables' expressions).
fn cases() -> Vec<(&'static str, &'static str, Vec<Expr>)> {
    let daddr = || nft::payload(nft::base::NETWORK, 16, 4, Register::Reg1);
    vec![
        (
            "masquerade",
            "masquerade fully-random",
            vec![nft::masquerade()],
        ),
        (
            "numgen",
            "numgen random mod 3 1",
            vec![
                nft::numgen_random(Register::Reg1, 3),
                nft::cmp(Operator::Equal, Register::Reg1, ne32(1)),
            ],
        ),
        (
            "reject-tcp-reset",
            "meta l4proto tcp reject with tcp reset",
            vec![
                nft::meta(MetaKey::L4Proto, Register::Reg1),
                nft::cmp(Operator::Equal, Register::Reg1, vec![6]),
                nft::reject_tcp_reset(),
            ],
        ),
        (
            "reject-port-unreachable",
            "reject with icmp type port-unreachable",
            vec![nft::reject_port_unreachable(false)],
        ),
        (
            "ct-state-new",
            "ct state new",
            vec![
                nft::ct_state(Register::Reg1),
                nft::bitwise(
                    Register::Reg1,
                    Register::Reg1,
                    ne32(nft::CT_STATE_NEW),
                    ne32(0),
                ),
                nft::cmp(Operator::NotEqual, Register::Reg1, ne32(0)),
            ],
        ),
        (
            "fib-daddr-local",
            "fib daddr type local",
            vec![
                nft::fib_daddr_type(Register::Reg1),
                nft::cmp(Operator::Equal, Register::Reg1, ne32(nft::RTN_LOCAL)),
            ],
        ),
        (
            "fib-saddr-local",
            "fib saddr type local",
            vec![
                nft::fib_saddr_type(Register::Reg1),
                nft::cmp(Operator::Equal, Register::Reg1, ne32(nft::RTN_LOCAL)),
            ],
        ),
        (
            "dnat",
            "meta l4proto tcp dnat to 10.0.0.1:8080",
            vec![
                nft::meta(MetaKey::L4Proto, Register::Reg1),
                nft::cmp(Operator::Equal, Register::Reg1, vec![6]),
                nft::immediate(Register::Reg1, Ipv4Addr::new(10, 0, 0, 1).octets().to_vec()),
                nft::immediate(Register::Reg2, 8080u16.to_be_bytes().to_vec()),
                nft::dnat(false, Register::Reg1, Register::Reg2),
            ],
        ),
        (
            "dynset-update",
            "update @affs { ip saddr . numgen random mod 3 timeout 5s }",
            vec![
                nft::payload(nft::base::NETWORK, 12, 4, Register::Reg32_00),
                nft::numgen_random(Register::Reg32_01, 3),
                nft::dynset_update("affs", Register::Reg32_00, 5000),
            ],
        ),
        (
            "lookup-vmap",
            "ip daddr vmap @vm",
            vec![
                daddr(),
                nft::lookup("vm", Register::Reg1, Some(Register::Verdict)),
            ],
        ),
        (
            // A class chain's test that a front has a local shortcut (a map, asked for its keys).
            "lookup-map-membership",
            "ip daddr @aff",
            vec![daddr(), nft::lookup("aff", Register::Reg1, None)],
        ),
        (
            "lookup-absent",
            "ip daddr != @s",
            vec![daddr(), nft::lookup_absent("s", Register::Reg1)],
        ),
        (
            "addr-in-cidr",
            "ip daddr 10.96.0.0/12",
            nft::addr_in(16, &"10.96.0.0/12".parse().unwrap(), Operator::Equal),
        ),
        (
            "meta-mark-set",
            "meta mark set 0x4000",
            vec![
                nft::immediate(Register::Reg1, ne32(0x4000)),
                nft::meta_set(MetaKey::Mark, Register::Reg1),
            ],
        ),
        (
            "goto",
            "goto target",
            vec![nft::verdict(&VerdictData::Goto("target".into()))],
        ),
        ("return", "return", vec![nft::ret()]),
        (
            "notrack-dns",
            "ip daddr 169.254.20.10 udp dport 53 notrack",
            vec![
                nft::payload(nft::base::NETWORK, 16, 4, Register::Reg1),
                nft::cmp(Operator::Equal, Register::Reg1, vec![169, 254, 20, 10]),
                nft::meta(MetaKey::L4Proto, Register::Reg1),
                nft::cmp(Operator::Equal, Register::Reg1, vec![17]),
                nft::payload(nft::base::TRANSPORT, 2, 2, Register::Reg1),
                nft::cmp(
                    Operator::Equal,
                    Register::Reg1,
                    53u16.to_be_bytes().to_vec(),
                ),
                nft::notrack(),
            ],
        ),
        ("accept", "accept", vec![nft::verdict(&VerdictData::Accept)]),
        (
            "lookup-interval-set",
            "ip saddr @si_ours",
            vec![
                nft::payload(nft::base::NETWORK, 12, 4, Register::Reg1),
                nft::lookup("si_ours", Register::Reg1, None),
            ],
        ),
        (
            "policy-port-range",
            "meta l4proto tcp th dport >= 80 th dport <= 90 return",
            vec![
                nft::meta(MetaKey::L4Proto, Register::Reg1),
                nft::cmp(Operator::Equal, Register::Reg1, vec![6]),
                nft::payload(nft::base::TRANSPORT, 2, 2, Register::Reg1),
                nft::cmp(
                    Operator::GreatherThanEqual,
                    Register::Reg1,
                    80u16.to_be_bytes().to_vec(),
                ),
                nft::payload(nft::base::TRANSPORT, 2, 2, Register::Reg1),
                nft::cmp(
                    Operator::LessThanEqual,
                    Register::Reg1,
                    90u16.to_be_bytes().to_vec(),
                ),
                nft::ret(),
            ],
        ),
        (
            "icmpv6-neighbour-discovery",
            "meta l4proto 58 @th,0,8 >= 133 @th,0,8 <= 136 accept",
            vec![
                nft::meta(MetaKey::L4Proto, Register::Reg1),
                nft::cmp(Operator::Equal, Register::Reg1, vec![58]),
                nft::payload(nft::base::TRANSPORT, 0, 1, Register::Reg1),
                nft::cmp(Operator::GreatherThanEqual, Register::Reg1, vec![133]),
                nft::payload(nft::base::TRANSPORT, 0, 1, Register::Reg1),
                nft::cmp(Operator::LessThanEqual, Register::Reg1, vec![136]),
                nft::verdict(&VerdictData::Accept),
            ],
        ),
    ]
}

/// Runs `nft` with `args` inside the namespace; its standard output.
fn nft_in(netns: &Path, nft: &Path, args: &[&str]) -> String {
    let out = in_netns(Some(netns), nft).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The expression lines (`[ ... ]`) of each rule `nft --debug=netlink list chain` prints.
fn rules_of(netns: &Path, nft: &Path, chain: &str) -> Vec<Vec<String>> {
    let out = nft_in(
        netns,
        nft,
        &["--debug=netlink", "list", "chain", "ip", TABLE, chain],
    );
    let mut rules: Vec<Vec<String>> = Vec::new();
    for line in out.lines() {
        let l = line.trim();
        if l.starts_with(&format!("ip {TABLE} {chain}")) {
            rules.push(Vec::new());
        } else if l.starts_with('[')
            && let Some(r) = rules.last_mut()
        {
            r.push(l.to_string());
        }
    }
    rules
}

#[test]
fn hand_encoded_expressions_match_what_nft_makes() {
    if !privileged("hand_encoded_expressions_match_what_nft_makes") {
        return;
    }
    let Some(nft) = tool("nft", "hand_encoded_expressions_match_what_nft_makes") else {
        return;
    };
    let ns = NetNs::create(&format!("netlet-nftcheck-{}", std::process::id())).unwrap();
    let setup = format!(
        "table ip {TABLE} {{
  map aff {{ type ipv4_addr : ipv4_addr; flags dynamic,timeout; timeout 10s; }}
  set affs {{ type ipv4_addr . mark; flags dynamic,timeout; timeout 10s; }}
  map vm {{ type ipv4_addr : verdict; }}
  set s {{ type ipv4_addr; }}
  set si_ref {{ type ipv4_addr; flags interval; }}
  set si_ours {{ type ipv4_addr; flags interval; }}
  chain target {{ }}
  chain reference {{ }}
  chain ours {{ }}
}}
"
    );
    let file = std::env::temp_dir().join(format!("netlet-nftcheck-{}.nft", std::process::id()));
    std::fs::write(&file, setup).unwrap();
    nft_in(&ns.path, &nft, &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    let cases = cases();
    for (_, text, _) in &cases {
        let mut args = vec!["add", "rule", "ip", TABLE, "reference"];
        args.extend(text.split_whitespace());
        nft_in(&ns.path, &nft, &args);
    }
    // Interval set elements: prefixes, a single address, one reaching the top of the space.
    let elements = ["10.0.0.0/8", "192.168.7.5", "240.0.0.0/4"];
    nft_in(
        &ns.path,
        &nft,
        &[
            "add",
            "element",
            "ip",
            TABLE,
            "si_ref",
            &format!("{{ {} }}", elements.join(", ")),
        ],
    );
    let mut b = Batch::new();
    for (_, _, exprs) in &cases {
        b.add_rule(Family::Ip, TABLE, "ours", exprs.clone());
    }
    let nets: Vec<ipnet::IpNet> = elements
        .iter()
        .map(|e| {
            e.parse()
                .unwrap_or_else(|_| ipnet::IpNet::from(e.parse::<std::net::IpAddr>().unwrap()))
        })
        .collect();
    b.add_intervals(Family::Ip, TABLE, "si_ours", &nets);
    netlet_sdk::netns::run_in(&ns.path, move || -> Result<(), String> {
        let mut conn = nft::Conn::open().map_err(|e| e.to_string())?;
        conn.send(b).map_err(|e| e.to_string())
    })
    .unwrap()
    .unwrap();
    let listed = |set: &str| -> String {
        let out = nft_in(&ns.path, &nft, &["list", "set", "ip", TABLE, set]);
        out.lines()
            .filter(|l| !l.contains("set ") && !l.contains("table "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        listed("si_ours"),
        listed("si_ref"),
        "interval set elements as nft lists them"
    );
    let reference = rules_of(&ns.path, &nft, "reference");
    let ours = rules_of(&ns.path, &nft, "ours");
    assert_eq!(reference.len(), cases.len(), "{reference:?}");
    assert_eq!(ours.len(), cases.len(), "{ours:?}");
    let mut report = String::new();
    for (i, (name, text, _)) in cases.iter().enumerate() {
        if reference[i] != ours[i] {
            report.push_str(&format!(
                "{name} ({text}):\n  nft:  {:?}\n  ours: {:?}\n",
                reference[i], ours[i]
            ));
        }
    }
    assert!(report.is_empty(), "expressions differ:\n{report}");
}
