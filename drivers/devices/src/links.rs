//! The netlink steps of moving a device: into a pod's namespace under a new name and back,
//! its MTU, MAC and addresses set and read, routes added. Over the SDK's [`Netlink`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlet_sdk::netlink::{Netlink, NlError, NlResult, Within, errno, exists_ok, parse_mac};
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::netconf::RouteConf;

/// Sets interface `index` down.
pub async fn down(nl: &Netlink, index: u32) -> NlResult<()> {
    nl.handle()
        .link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .within(format!("set link {index} down"))
        .await
}

/// Moves interface `index` into the namespace `ns` under `name` (one step: it never shows in
/// the target under its old name, so a clash there is `EEXIST` before anything moved).
pub async fn move_to(nl: &Netlink, index: u32, ns: &std::fs::File, name: &str) -> NlResult<()> {
    nl.handle()
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(ns.as_raw_fd())
                .name(name.to_string())
                .build(),
        )
        .execute()
        .within(format!("move link {index} as {name}"))
        .await
}

/// Sets MTU and MAC (when given) of interface `index`, and brings it up if `up`.
pub async fn configure(
    nl: &Netlink,
    index: u32,
    mtu: Option<u32>,
    mac: Option<&str>,
    up: bool,
) -> NlResult<()> {
    let mut b: LinkMessageBuilder<LinkUnspec> = LinkUnspec::new_with_index(index);
    if let Some(m) = mtu {
        b = b.mtu(m);
    }
    if let Some(m) = mac {
        let bytes = parse_mac(m).ok_or_else(|| NlError {
            what: format!("MAC {m}"),
            errno: None,
            message: "not a MAC address".into(),
        })?;
        b = b.address(bytes.to_vec());
    }
    if up {
        b = b.up();
    }
    nl.handle()
        .link()
        .set(b.build())
        .execute()
        .within(format!("configure link {index}"))
        .await
}

/// The addresses of interface `index` a node configured (global scope: not link-local ones,
/// which the kernel makes by itself).
pub async fn addresses(nl: &Netlink, index: u32) -> NlResult<Vec<IpNet>> {
    let mut out = Vec::new();
    let mut dump = nl
        .handle()
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(m) = dump.try_next().within("list addresses").await? {
        if m.header.scope != AddressScope::Universe {
            continue;
        }
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = ip
            && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
        {
            out.push(net);
        }
    }
    Ok(out)
}

/// Adds a route through interface `index`.
pub async fn add_route(nl: &Netlink, index: u32, r: &RouteConf) -> NlResult<()> {
    let what = format!("add route {}", r.destination);
    let msg = match (r.destination, r.gateway) {
        (IpNet::V4(d), g) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.addr(), d.prefix_len())
                .output_interface(index);
            if let Some(IpAddr::V4(g)) = g {
                b = b.gateway(g);
            }
            if r.metric != 0 {
                b = b.priority(r.metric);
            }
            b.build()
        }
        (IpNet::V6(d), g) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.addr(), d.prefix_len())
                .output_interface(index);
            if let Some(IpAddr::V6(g)) = g {
                b = b.gateway(g);
            }
            if r.metric != 0 {
                b = b.priority(r.metric);
            }
            b.build()
        }
    };
    exists_ok(nl.handle().route().add(msg).execute().within(what).await)
}

/// The index of `name`, or `ENODEV` saying what was looked for.
pub async fn index_of(nl: &Netlink, name: &str, whose: &str) -> NlResult<u32> {
    nl.link_index(name).await?.ok_or_else(|| NlError {
        what: format!("{whose} interface {name}"),
        errno: Some(errno::ENODEV),
        message: "not found".into(),
    })
}
