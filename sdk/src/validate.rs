//! Request validation shared by the host and drivers, so every endpoint answers bad input with
//! the same `INVALID_ARGUMENT` naming the field at fault ("sandbox.id: required").

use std::net::IpAddr;

use tonic::Status;

pub use crate::names::{dns_label, dns_subdomain, is_label_value, metadata_key};
pub use crate::status::{
    ERROR_DOMAIN, REASON_INVALID_FIELD, error_field, error_reason, field_error, invalid,
    reason_error,
};

use crate::proto::{
    AllocateDeviceRequest, ApplyPolicyRequest, AttachPodRequest, CheckDnsRequest,
    CheckHostnameRequest, DetachPodRequest, GarbageCollectRequest, NetworkSelection, PolicyKey,
    PolicyKind, PortMapping, ProgramServiceRequest, Protocol, ReleaseDeviceRequest, ServiceKey,
};

type R = Result<(), Status>;

fn required(field: &str, v: &str) -> R {
    if v.is_empty() {
        Err(invalid(field, "required"))
    } else {
        Ok(())
    }
}

/// A sandbox id: 1..256 of `[A-Za-z0-9_.-]`.
pub fn sandbox_id(field: &str, v: &str) -> R {
    required(field, v)?;
    let ok = v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not a sandbox id (1-256 of A-Z, a-z, 0-9, '_', '.', '-')"),
        ))
    }
}

/// A Linux interface name: 1..15 bytes, no '/', ':', whitespace, not "." or "..".
pub fn interface_name(field: &str, v: &str) -> R {
    let ok = !v.is_empty()
        && v.len() <= 15
        && v != "."
        && v != ".."
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not an interface name (1-15 printable chars, no '/', ':')"),
        ))
    }
}

/// An IP address, or an address with a prefix length (`10.0.0.1/24`), parsed as `ipnet` does.
pub fn ip_or_cidr(field: &str, v: &str) -> Result<(IpAddr, Option<u8>), Status> {
    if v.contains('/') {
        let n: ipnet::IpNet = v.parse().map_err(|_| {
            invalid(
                field,
                format!("{v:?} is not an IP address or CIDR (address/prefix length)"),
            )
        })?;
        return Ok((n.addr(), Some(n.prefix_len())));
    }
    let ip: IpAddr = v
        .parse()
        .map_err(|_| invalid(field, format!("{v:?} is not an IP address or CIDR")))?;
    Ok((ip, None))
}

/// A CIDR (`10.0.0.0/8`).
pub fn cidr(field: &str, v: &str) -> R {
    match ip_or_cidr(field, v)? {
        (_, Some(_)) => Ok(()),
        _ => Err(invalid(
            field,
            format!("{v:?} is not a CIDR (address/prefix)"),
        )),
    }
}

/// A unicast Ethernet MAC, `aa:bb:cc:dd:ee:ff`.
pub fn mac(field: &str, v: &str) -> R {
    let parts: Vec<_> = v.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not a unicast MAC (aa:bb:cc:dd:ee:ff)"),
        ))
    }
}

fn port(field: &str, v: u32) -> R {
    if (1..=65535).contains(&v) {
        Ok(())
    } else {
        Err(invalid(field, format!("{v} is not a port (1-65535)")))
    }
}

/// Port mappings at `field` (a pod's CRI port mappings): `host_port` 0 (the kubelet passes every
/// containerPort; only those with a hostPort are published) or in range, `container_port` in
/// range, `host_ip` a plain address, no published (host_ip, protocol, host_port) twice.
pub fn port_mappings(field: &str, list: &[PortMapping]) -> R {
    let mut seen = std::collections::HashSet::new();
    for (i, pm) in list.iter().enumerate() {
        if pm.host_port != 0 {
            port(&format!("{field}[{i}].host_port"), pm.host_port)?;
        }
        port(&format!("{field}[{i}].container_port"), pm.container_port)?;
        if !pm.host_ip.is_empty()
            && ip_or_cidr(&format!("{field}[{i}].host_ip"), &pm.host_ip)?
                .1
                .is_some()
        {
            return Err(invalid(
                format!("{field}[{i}].host_ip"),
                format!("{:?} is not an IP address (no prefix length)", pm.host_ip),
            ));
        }
        if Protocol::try_from(pm.protocol).is_err() {
            return Err(invalid(
                format!("{field}[{i}].protocol"),
                format!("{} is not a protocol", pm.protocol),
            ));
        }
        if pm.host_port != 0 && !seen.insert(crate::ports::host_port_key(pm)) {
            return Err(invalid(
                format!("{field}[{i}].host_port"),
                format!("{} mapped twice", pm.host_port),
            ));
        }
    }
    Ok(())
}

/// A network selection at `field`.
pub fn network_selection(field: &str, n: &NetworkSelection) -> R {
    dns_label(&format!("{field}.network"), &n.network)?;
    if !n.interface_name.is_empty() {
        interface_name(&format!("{field}.interface_name"), &n.interface_name)?;
    }
    for (i, ip) in n.ips.iter().enumerate() {
        ip_or_cidr(&format!("{field}.ips[{i}]"), ip)?;
    }
    if !n.mac.is_empty() {
        mac(&format!("{field}.mac"), &n.mac)?;
    }
    if n.mtu != 0 && !(68..=65535).contains(&n.mtu) {
        return Err(invalid(
            format!("{field}.mtu"),
            format!("{} is not an MTU (68-65535)", n.mtu),
        ));
    }
    if !n.device_id.is_empty() {
        dns_label(&format!("{field}.device_id"), &n.device_id)?;
    }
    if n.routes.len() > limits::MAX_ROUTES {
        return Err(invalid(
            format!("{field}.routes"),
            format!("at most {}", limits::MAX_ROUTES),
        ));
    }
    for (i, r) in n.routes.iter().enumerate() {
        let f = format!("{field}.routes[{i}]");
        cidr(&format!("{f}.destination"), &r.destination)?;
        if !r.gateway.is_empty() {
            let g: IpAddr = r.gateway.parse().map_err(|_| {
                invalid(
                    format!("{f}.gateway"),
                    format!("{:?} is not an IP address", r.gateway),
                )
            })?;
            let dst: ipnet::IpNet = r.destination.parse().map_err(|_| invalid(&f, "bad"))?;
            if g.is_ipv4() != dst.addr().is_ipv4() {
                return Err(invalid(
                    format!("{f}.gateway"),
                    "not of the destination's family",
                ));
            }
        }
    }
    Ok(())
}

/// Upper bounds of what a sandbox may carry (Kubernetes' own where it has one).
pub mod limits {
    /// Labels or annotations on one pod.
    pub const MAX_METADATA_ENTRIES: usize = 256;
    /// Bytes of all annotation keys and values (Kubernetes: 256 KiB).
    pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;
    /// Name servers (Kubernetes: 3).
    pub const MAX_NAMESERVERS: usize = 3;
    /// Search domains (Kubernetes: 32), and their total length (2048).
    pub const MAX_SEARCHES: usize = 32;
    /// Total length of the search domains.
    pub const MAX_SEARCH_CHARS: usize = 2048;
    /// resolv.conf options.
    pub const MAX_DNS_OPTIONS: usize = 32;
    /// Length of a pod uid, cgroup parent or DNS option.
    pub const MAX_STRING: usize = 1024;
    /// Routes of one attachment.
    pub const MAX_ROUTES: usize = 64;
}

/// The pod's identity and metadata: names as Kubernetes spells them, labels and annotations
/// as it allows them, DNS settings within resolv.conf's and Kubernetes' limits.
fn sandbox_metadata(s: &crate::proto::PodSandbox) -> R {
    if !s.name.is_empty() {
        dns_subdomain("sandbox.name", &s.name)?;
    }
    if !s.namespace.is_empty() {
        dns_label("sandbox.namespace", &s.namespace)?;
    }
    if !s.hostname.is_empty() {
        dns_label("sandbox.hostname", &s.hostname)?;
    }
    for (field, v) in [
        ("sandbox.uid", &s.uid),
        ("sandbox.cgroup_parent", &s.cgroup_parent),
    ] {
        if v.len() > limits::MAX_STRING {
            return Err(invalid(
                field,
                format!("longer than {} bytes", limits::MAX_STRING),
            ));
        }
    }
    for (what, map) in [("labels", &s.labels), ("annotations", &s.annotations)] {
        if map.len() > limits::MAX_METADATA_ENTRIES {
            return Err(invalid(
                format!("sandbox.{what}"),
                format!(
                    "{} entries, at most {}",
                    map.len(),
                    limits::MAX_METADATA_ENTRIES
                ),
            ));
        }
        for k in map.keys() {
            metadata_key(&format!("sandbox.{what}[{k}]"), k)?;
        }
    }
    for (k, v) in &s.labels {
        if !is_label_value(v) {
            return Err(invalid(
                format!("sandbox.labels[{k}]"),
                format!("{v:?} is not a label value (0-63 of A-Z, a-z, 0-9, '-', '_', '.')"),
            ));
        }
    }
    let size: usize = s.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > limits::MAX_ANNOTATION_BYTES {
        return Err(invalid(
            "sandbox.annotations",
            format!("{size} bytes, at most {}", limits::MAX_ANNOTATION_BYTES),
        ));
    }
    if let Some(d) = &s.dns_config {
        if d.nameservers.len() > limits::MAX_NAMESERVERS {
            return Err(invalid(
                "sandbox.dns_config.nameservers",
                format!(
                    "{} name servers, at most {}",
                    d.nameservers.len(),
                    limits::MAX_NAMESERVERS
                ),
            ));
        }
        for (i, n) in d.nameservers.iter().enumerate() {
            let f = format!("sandbox.dns_config.nameservers[{i}]");
            if ip_or_cidr(&f, n)?.1.is_some() {
                return Err(invalid(f, format!("{n:?} is an address, not a CIDR")));
            }
        }
        let chars: usize = d.searches.iter().map(String::len).sum();
        if d.searches.len() > limits::MAX_SEARCHES || chars > limits::MAX_SEARCH_CHARS {
            return Err(invalid(
                "sandbox.dns_config.searches",
                format!(
                    "{} domains of {chars} characters, at most {} of {}",
                    d.searches.len(),
                    limits::MAX_SEARCHES,
                    limits::MAX_SEARCH_CHARS
                ),
            ));
        }
        for (i, v) in d.searches.iter().enumerate() {
            dns_subdomain(
                &format!("sandbox.dns_config.searches[{i}]"),
                v.trim_end_matches('.'),
            )?;
        }
        if d.options.len() > limits::MAX_DNS_OPTIONS {
            return Err(invalid(
                "sandbox.dns_config.options",
                format!(
                    "{} options, at most {}",
                    d.options.len(),
                    limits::MAX_DNS_OPTIONS
                ),
            ));
        }
        for (i, o) in d.options.iter().enumerate() {
            if o.is_empty() || o.len() > 128 || o.chars().any(char::is_whitespace) {
                return Err(invalid(
                    format!("sandbox.dns_config.options[{i}]"),
                    format!("{o:?} is not a resolv.conf option"),
                ));
            }
        }
    }
    Ok(())
}

/// AttachPod.
pub fn attach_pod(r: &AttachPodRequest) -> R {
    let s = r
        .sandbox
        .as_ref()
        .ok_or_else(|| invalid("sandbox", "required"))?;
    sandbox_id("sandbox.id", &s.id)?;
    sandbox_metadata(s)?;
    required("sandbox.netns_path", &s.netns_path)?;
    if !s.netns_path.starts_with('/') {
        return Err(invalid("sandbox.netns_path", "must be an absolute path"));
    }
    port_mappings("sandbox.port_mappings", &s.port_mappings)?;
    let mut ifnames = std::collections::HashSet::new();
    let mut nets = std::collections::HashSet::new();
    for (i, n) in r.networks.iter().enumerate() {
        let f = format!("networks[{i}]");
        network_selection(&f, n)?;
        if !n.interface_name.is_empty() && !ifnames.insert(n.interface_name.as_str()) {
            return Err(invalid(format!("{f}.interface_name"), "used twice"));
        }
        if !nets.insert((n.network.as_str(), n.interface_name.as_str())) {
            return Err(invalid(format!("{f}.network"), "requested twice"));
        }
    }
    Ok(())
}

/// DetachPod.
pub fn detach_pod(r: &DetachPodRequest) -> R {
    sandbox_id("sandbox_id", &r.sandbox_id)?;
    for (i, n) in r.networks.iter().enumerate() {
        network_selection(&format!("networks[{i}]"), n)?;
    }
    Ok(())
}

/// ListAttachments filters.
pub fn list_attachments(r: &crate::proto::ListAttachmentsRequest) -> R {
    optional_network("network", &r.network)?;
    if !r.namespace.is_empty() {
        dns_label("namespace", &r.namespace)?;
    }
    Ok(())
}

/// ListServices.
pub fn list_services(r: &crate::proto::ListServicesRequest) -> R {
    if !r.namespace.is_empty() {
        dns_label("namespace", &r.namespace)?;
    }
    Ok(())
}

/// GarbageCollect.
pub fn garbage_collect(r: &GarbageCollectRequest) -> R {
    for (i, id) in r.valid_sandbox_ids.iter().enumerate() {
        sandbox_id(&format!("valid_sandbox_ids[{i}]"), id)?;
    }
    optional_network("network", &r.network)
}

/// A Service key at `field`.
pub fn service_key(field: &str, k: Option<&ServiceKey>) -> R {
    let k = k.ok_or_else(|| invalid(field, "required"))?;
    dns_label(&format!("{field}.namespace"), &k.namespace)?;
    dns_label(&format!("{field}.name"), &k.name)
}

/// One Service as ProgramService takes it; fields are named after `prefix` (e.g.
/// `"service_upserts[0]."`, or `""` for the Service alone).
pub fn service(prefix: &str, s: &crate::proto::Service) -> R {
    service_key(&format!("{prefix}key"), s.key.as_ref())?;
    for (j, ip) in s.cluster_ips.iter().enumerate() {
        if ip != "None" {
            ip_or_cidr(&format!("{prefix}cluster_ips[{j}]"), ip)?;
        }
    }
    for (j, ip) in s
        .external_ips
        .iter()
        .chain(&s.load_balancer_ips)
        .enumerate()
    {
        ip_or_cidr(&format!("{prefix}external_ips[{j}]"), ip)?;
    }
    for (j, c) in s.load_balancer_source_ranges.iter().enumerate() {
        cidr(&format!("{prefix}load_balancer_source_ranges[{j}]"), c)?;
    }
    if s.health_check_node_port != 0 {
        port(
            &format!("{prefix}health_check_node_port"),
            s.health_check_node_port,
        )?;
    }
    for (j, p) in s.ports.iter().enumerate() {
        port(&format!("{prefix}ports[{j}].port"), p.port)?;
        if p.node_port != 0 {
            port(&format!("{prefix}ports[{j}].node_port"), p.node_port)?;
        }
        if s.ports.len() > 1 && p.name.is_empty() {
            return Err(invalid(
                format!("{prefix}ports[{j}].name"),
                "required when a Service has several ports",
            ));
        }
    }
    Ok(())
}

/// One endpoint as ProgramService takes it; fields are named after `prefix`.
pub fn endpoint(prefix: &str, e: &crate::proto::Endpoint) -> R {
    required(&format!("{prefix}address"), &e.address)?;
    ip_or_cidr(&format!("{prefix}address"), &e.address)?;
    for (j, p) in e.ports.iter().enumerate() {
        port(&format!("{prefix}ports[{j}].port"), p.port)?;
    }
    Ok(())
}

/// ProgramService.
pub fn program_service(r: &ProgramServiceRequest) -> R {
    if r.generation == 0 {
        return Err(invalid("generation", "required (> 0)"));
    }
    for (i, s) in r.service_upserts.iter().enumerate() {
        service(&format!("service_upserts[{i}]."), s)?;
    }
    for (i, k) in r.service_deletes.iter().enumerate() {
        service_key(&format!("service_deletes[{i}]"), Some(k))?;
    }
    for (i, u) in r.endpoint_upserts.iter().enumerate() {
        let f = format!("endpoint_upserts[{i}]");
        service_key(&format!("{f}.service"), u.service.as_ref())?;
        let e = u
            .endpoint
            .as_ref()
            .ok_or_else(|| invalid(format!("{f}.endpoint"), "required"))?;
        endpoint(&format!("{f}.endpoint."), e)?;
    }
    for (i, k) in r.endpoint_deletes.iter().enumerate() {
        let f = format!("endpoint_deletes[{i}]");
        service_key(&format!("{f}.service"), k.service.as_ref())?;
        required(&format!("{f}.address"), &k.address)?;
        ip_or_cidr(&format!("{f}.address"), &k.address)?;
    }
    for (i, h) in r.host_port_upserts.iter().enumerate() {
        let f = format!("host_port_upserts[{i}]");
        sandbox_id(&format!("{f}.sandbox_id"), &h.sandbox_id)?;
        if h.pod_ips.is_empty() {
            return Err(invalid(format!("{f}.pod_ips"), "required"));
        }
        let mut families = std::collections::HashSet::new();
        for (j, ip) in h.pod_ips.iter().enumerate() {
            let fj = format!("{f}.pod_ips[{j}]");
            let (ip, prefix) = ip_or_cidr(&fj, ip)?;
            if prefix.is_some() {
                return Err(invalid(fj, "an address, not a CIDR"));
            }
            if !families.insert(ip.is_ipv4()) {
                return Err(invalid(fj, "a second address of the same family"));
            }
        }
        if h.port_mappings.is_empty() {
            return Err(invalid(format!("{f}.port_mappings"), "required"));
        }
        port_mappings(&format!("{f}.port_mappings"), &h.port_mappings)?;
        // What the host hands drivers is published: every mapping has a host port.
        if let Some(j) = h
            .port_mappings
            .iter()
            .position(|pm| !crate::ports::is_published(pm))
        {
            return Err(invalid(
                format!("{f}.port_mappings[{j}].host_port"),
                "required (1-65535): only published ports are handed to drivers",
            ));
        }
    }
    for (i, id) in r.host_port_deletes.iter().enumerate() {
        sandbox_id(&format!("host_port_deletes[{i}]"), id)?;
    }
    Ok(())
}

fn policy_key(field: &str, k: Option<&PolicyKey>, kind: PolicyKind) -> R {
    let k = k.ok_or_else(|| invalid(field, "required"))?;
    if k.kind != kind as i32 {
        return Err(invalid(
            format!("{field}.kind"),
            format!("must be {}", kind.as_str_name()),
        ));
    }
    if matches!(
        kind,
        PolicyKind::HostnameGrant | PolicyKind::ClusterNetworkPolicy
    ) {
        if !k.namespace.is_empty() {
            return Err(invalid(
                format!("{field}.namespace"),
                "must be empty (cluster-scoped)",
            ));
        }
    } else if !(kind == PolicyKind::DnsPolicy && k.namespace.is_empty()) {
        // A DnsPolicy without a namespace is cluster-wide.
        dns_label(&format!("{field}.namespace"), &k.namespace)?;
    }
    dns_label(&format!("{field}.name"), &k.name)
}

/// A DnsPolicy name pattern (see [`crate::dnsname`]).
fn dns_pattern(field: &str, v: &str) -> R {
    match crate::dnsname::check_pattern(v) {
        None => Ok(()),
        Some(why) => Err(invalid(field, format!("{v:?}: {why}"))),
    }
}

fn is_sha256_hex(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

fn name_pattern(field: &str, v: &str) -> R {
    required(field, v)?;
    let name = v.strip_prefix("*.").unwrap_or(v).trim_end_matches('.');
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not a DNS name or *.wildcard"),
        ))
    }
}

/// A NetworkPolicy peer, as the API server checks one: pods and/or namespaces by selector, or
/// an ipBlock (a CIDR, its exceptions strictly inside it), never both kinds, never neither.
pub fn network_policy_peer(field: &str, peer: &crate::proto::NetworkPolicyPeer) -> R {
    let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    if let Some(s) = &peer.pod_selector {
        crate::labels::selector(&format!("{field}.pod_selector"), s)?;
    }
    if let Some(s) = &peer.namespace_selector {
        crate::labels::selector(&format!("{field}.namespace_selector"), s)?;
    }
    if peer.ip_block_cidr.is_empty() {
        if !peer.ip_block_except.is_empty() {
            return Err(invalid(
                format!("{field}.ip_block_except"),
                "only with ip_block_cidr",
            ));
        }
        if !selectors && peer.resolved_addresses.is_empty() && peer.address_set.is_empty() {
            return Err(invalid(
                field,
                "one of pod_selector, namespace_selector or ip_block_cidr is required",
            ));
        }
    } else {
        if selectors {
            return Err(invalid(
                format!("{field}.ip_block_cidr"),
                "an ipBlock peer takes no pod or namespace selector",
            ));
        }
        let block: ipnet::IpNet = peer.ip_block_cidr.parse().map_err(|_| {
            invalid(
                format!("{field}.ip_block_cidr"),
                format!("{:?} is not a CIDR", peer.ip_block_cidr),
            )
        })?;
        for (m, c) in peer.ip_block_except.iter().enumerate() {
            let fm = format!("{field}.ip_block_except[{m}]");
            let e: ipnet::IpNet = c
                .parse()
                .map_err(|_| invalid(&fm, format!("{c:?} is not a CIDR")))?;
            if !(block.contains(&e) && e.prefix_len() > block.prefix_len()) {
                return Err(invalid(
                    fm,
                    format!("{c} is not strictly inside {}", peer.ip_block_cidr),
                ));
            }
        }
    }
    for (m, a) in peer.resolved_addresses.iter().enumerate() {
        ip_or_cidr(&format!("{field}.resolved_addresses[{m}]"), a)?;
    }
    if !peer.address_set.is_empty() {
        address_set_name(&format!("{field}.address_set"), &peer.address_set)?;
    }
    Ok(())
}

/// An address set name: 1-64 characters of `[a-z0-9-]`.
pub fn address_set_name(field: &str, v: &str) -> R {
    required(field, v)?;
    if v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            field,
            format!("{v:?} is not an address set name (1-64 of [a-z0-9-])"),
        ));
    }
    Ok(())
}

/// An address set's elements: addresses or prefixes (host bits clear), no two overlapping.
fn address_set_elements(field: &str, elements: &[String]) -> R {
    let mut nets: Vec<(ipnet::IpNet, usize)> = Vec::with_capacity(elements.len());
    for (i, e) in elements.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let net = match ip_or_cidr(&f, e)? {
            (ip, None) => ipnet::IpNet::from(ip),
            (_, Some(_)) => {
                let n: ipnet::IpNet = e.parse().map_err(|_| invalid(&f, "not a prefix"))?;
                if n.trunc() != n {
                    return Err(invalid(f, format!("{e} has host bits set")));
                }
                n
            }
        };
        nets.push((net, i));
    }
    // Sorted by first address, an overlap shows between neighbours.
    nets.sort_by_key(|(n, _)| (n.network(), std::cmp::Reverse(n.prefix_len())));
    for w in nets.windows(2) {
        if w[0].0.contains(&w[1].0.network()) {
            return Err(invalid(
                format!("{field}[{}]", w[1].1.max(w[0].1)),
                format!("{} overlaps {}", w[1].0, w[0].0),
            ));
        }
    }
    Ok(())
}

fn cluster_network_policy(f: &str, p: &crate::proto::ClusterNetworkPolicy) -> R {
    use crate::proto::{ClusterPolicyAction, ClusterPolicyTier};
    policy_key(
        &format!("{f}.key"),
        p.key.as_ref(),
        PolicyKind::ClusterNetworkPolicy,
    )?;
    let tier = ClusterPolicyTier::try_from(p.tier)
        .ok()
        .filter(|t| *t != ClusterPolicyTier::Unspecified)
        .ok_or_else(|| invalid(format!("{f}.tier"), "required: ADMIN or BASELINE"))?;
    if p.priority > 1000 {
        return Err(invalid(
            format!("{f}.priority"),
            format!("{} is not in 0..=1000", p.priority),
        ));
    }
    if p.subject_namespace_selector.is_none() {
        return Err(invalid(
            format!("{f}.subject_namespace_selector"),
            "required (an empty selector selects every namespace)",
        ));
    }
    for (name, s) in [
        ("subject_namespace_selector", &p.subject_namespace_selector),
        ("subject_pod_selector", &p.subject_pod_selector),
    ] {
        if let Some(s) = s {
            crate::labels::selector(&format!("{f}.{name}"), s)?;
        }
    }
    if !p.selected_set.is_empty() {
        address_set_name(&format!("{f}.selected_set"), &p.selected_set)?;
    }
    for (dir, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
        if rules.len() > 100 {
            return Err(invalid(format!("{f}.{dir}"), "at most 100 rules"));
        }
        for (j, rule) in rules.iter().enumerate() {
            let fr = format!("{f}.{dir}[{j}]");
            match ClusterPolicyAction::try_from(rule.action) {
                Ok(ClusterPolicyAction::Accept | ClusterPolicyAction::Deny) => {}
                Ok(ClusterPolicyAction::Pass) if tier == ClusterPolicyTier::Admin => {}
                Ok(ClusterPolicyAction::Pass) => {
                    return Err(invalid(
                        format!("{fr}.action"),
                        "PASS is for the ADMIN tier only",
                    ));
                }
                _ => return Err(invalid(format!("{fr}.action"), "required")),
            }
            if rule.peers.is_empty() {
                return Err(invalid(format!("{fr}.peers"), "at least one peer"));
            }
            for (k, peer) in rule.peers.iter().enumerate() {
                let fp = format!("{fr}.peers[{k}]");
                let kinds = usize::from(peer.namespace_selector.is_some())
                    + usize::from(!peer.networks.is_empty())
                    + usize::from(peer.node_selector.is_some());
                if kinds != 1 {
                    return Err(invalid(
                        fp,
                        "exactly one of namespace_selector (with pod_selector for pods), networks, node_selector",
                    ));
                }
                if peer.pod_selector.is_some() && peer.namespace_selector.is_none() {
                    return Err(invalid(
                        format!("{fp}.pod_selector"),
                        "only with namespace_selector",
                    ));
                }
                if dir == "ingress" && (!peer.networks.is_empty() || peer.node_selector.is_some()) {
                    return Err(invalid(fp, "networks and nodes are egress peers"));
                }
                for (name, s) in [
                    ("namespace_selector", &peer.namespace_selector),
                    ("pod_selector", &peer.pod_selector),
                    ("node_selector", &peer.node_selector),
                ] {
                    if let Some(s) = s {
                        crate::labels::selector(&format!("{fp}.{name}"), s)?;
                    }
                }
                for (m, n) in peer.networks.iter().enumerate() {
                    cidr(&format!("{fp}.networks[{m}]"), n)?;
                }
                if !peer.address_set.is_empty() {
                    address_set_name(&format!("{fp}.address_set"), &peer.address_set)?;
                }
            }
            for (k, pt) in rule.ports.iter().enumerate() {
                network_policy_port(&format!("{fr}.ports[{k}]"), pt)?;
            }
        }
    }
    Ok(())
}

/// A NetworkPolicy port: a number or a name (not both), a range only from a number.
pub fn network_policy_port(field: &str, pt: &crate::proto::NetworkPolicyPort) -> R {
    if pt.port > 65535 {
        return Err(invalid(
            format!("{field}.port"),
            format!("{} is not a port", pt.port),
        ));
    }
    if !pt.named_port.is_empty() {
        if pt.port != 0 {
            return Err(invalid(
                format!("{field}.named_port"),
                "a port is a number or a name, not both",
            ));
        }
        if pt.named_port.len() > 15
            || !pt
                .named_port
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || !pt.named_port.bytes().any(|b| b.is_ascii_lowercase())
        {
            return Err(invalid(
                format!("{field}.named_port"),
                format!("{:?} is not a port name (IANA_SVC_NAME)", pt.named_port),
            ));
        }
    }
    for (i, t) in pt.named_port_targets.iter().enumerate() {
        let f = format!("{field}.named_port_targets[{i}]");
        if pt.named_port.is_empty() {
            return Err(invalid(f, "only with named_port"));
        }
        if t.address.parse::<IpAddr>().is_err() {
            return Err(invalid(
                format!("{f}.address"),
                format!("{:?} is not an IP address", t.address),
            ));
        }
        if t.port == 0 || t.port > 65535 {
            return Err(invalid(
                format!("{f}.port"),
                format!("{} is not a port", t.port),
            ));
        }
    }
    if pt.end_port != 0 {
        if pt.port == 0 {
            return Err(invalid(
                format!("{field}.end_port"),
                "only with a numeric port",
            ));
        }
        if pt.end_port < pt.port || pt.end_port > 65535 {
            return Err(invalid(
                format!("{field}.end_port"),
                format!("{} must be in {}..=65535", pt.end_port, pt.port),
            ));
        }
    }
    Ok(())
}

/// ApplyPolicy.
pub fn apply_policy(r: &ApplyPolicyRequest) -> R {
    if r.generation == 0 {
        return Err(invalid("generation", "required (> 0)"));
    }
    for (i, p) in r.network_policies.iter().enumerate() {
        let f = format!("network_policies[{i}]");
        policy_key(
            &format!("{f}.key"),
            p.key.as_ref(),
            PolicyKind::NetworkPolicy,
        )?;
        if let Some(sel) = &p.pod_selector {
            crate::labels::selector(&format!("{f}.pod_selector"), sel)?;
        }
        for (j, a) in p.selected_addresses.iter().enumerate() {
            ip_or_cidr(&format!("{f}.selected_addresses[{j}]"), a)?;
        }
        if !p.selected_set.is_empty() {
            address_set_name(&format!("{f}.selected_set"), &p.selected_set)?;
        }
        for (dir, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
            for (j, rule) in rules.iter().enumerate() {
                for (k, peer) in rule.peers.iter().enumerate() {
                    network_policy_peer(&format!("{f}.{dir}[{j}].peers[{k}]"), peer)?;
                }
                for (k, pt) in rule.ports.iter().enumerate() {
                    network_policy_port(&format!("{f}.{dir}[{j}].ports[{k}]"), pt)?;
                }
            }
        }
    }
    for (i, p) in r.dns_policies.iter().enumerate() {
        let f = format!("dns_policies[{i}]");
        policy_key(&format!("{f}.key"), p.key.as_ref(), PolicyKind::DnsPolicy)?;
        for (j, n) in p.allow.iter().enumerate() {
            dns_pattern(&format!("{f}.allow[{j}]"), n)?;
        }
        for (j, n) in p.deny.iter().enumerate() {
            dns_pattern(&format!("{f}.deny[{j}]"), n)?;
        }
        if p.module.is_empty() && !p.module_settings_json.is_empty() {
            return Err(invalid(
                format!("{f}.module_settings_json"),
                "settings without a module",
            ));
        }
        if !p.module_sha256.is_empty() && !is_sha256_hex(&p.module_sha256) {
            return Err(invalid(format!("{f}.module_sha256"), "not 64 hex digits"));
        }
        if p.allow_tld_shadowing && p.block_tld_shadowing {
            return Err(invalid(
                format!("{f}.allow_tld_shadowing"),
                "not with block_tld_shadowing on the same policy",
            ));
        }
        if p.egress_min_ttl_seconds > 86_400 {
            return Err(invalid(
                format!("{f}.egress_min_ttl_seconds"),
                "at most 86400 (a day)",
            ));
        }
    }
    for (i, g) in r.hostname_grants.iter().enumerate() {
        let f = format!("hostname_grants[{i}]");
        policy_key(
            &format!("{f}.key"),
            g.key.as_ref(),
            PolicyKind::HostnameGrant,
        )?;
        if g.hostnames.is_empty() {
            return Err(invalid(format!("{f}.hostnames"), "required"));
        }
        if g.namespaces.is_empty() && g.namespace_selector.is_none() {
            return Err(invalid(
                format!("{f}.namespaces"),
                "required (or namespace_selector)",
            ));
        }
        for (j, n) in g.namespaces.iter().enumerate() {
            if n != "*" {
                dns_label(&format!("{f}.namespaces[{j}]"), n)?;
            }
        }
        if let Some(sel) = &g.namespace_selector {
            crate::labels::selector(&format!("{f}.namespace_selector"), sel)?;
        }
        for (j, n) in g.hostnames.iter().enumerate() {
            name_pattern(&format!("{f}.hostnames[{j}]"), n)?;
        }
    }
    for (i, p) in r.cluster_network_policies.iter().enumerate() {
        cluster_network_policy(&format!("cluster_network_policies[{i}]"), p)?;
    }
    for (i, s) in r.address_sets.iter().enumerate() {
        address_set_name(&format!("address_sets[{i}].name"), &s.name)?;
        address_set_elements(&format!("address_sets[{i}].elements"), &s.elements)?;
    }
    for (i, c) in r.address_set_changes.iter().enumerate() {
        address_set_name(&format!("address_set_changes[{i}].name"), &c.name)?;
        address_set_elements(&format!("address_set_changes[{i}].add"), &c.add)?;
        for (j, e) in c.remove.iter().enumerate() {
            ip_or_cidr(&format!("address_set_changes[{i}].remove[{j}]"), e)?;
        }
    }
    for (i, n) in r.address_set_deletes.iter().enumerate() {
        address_set_name(&format!("address_set_deletes[{i}]"), n)?;
    }
    for (i, k) in r.deletes.iter().enumerate() {
        let kind = PolicyKind::try_from(k.kind)
            .ok()
            .filter(|k| *k != PolicyKind::Unspecified)
            .ok_or_else(|| invalid(format!("deletes[{i}].kind"), "required"))?;
        policy_key(&format!("deletes[{i}]"), Some(k), kind)?;
    }
    Ok(())
}

/// CheckDns.
pub fn check_dns(r: &CheckDnsRequest) -> R {
    required("client_address", &r.client_address)?;
    ip_or_cidr("client_address", &r.client_address)?;
    name_pattern("query_name", &r.query_name)?;
    if r.query_name.starts_with("*.") {
        return Err(invalid("query_name", "must not be a wildcard"));
    }
    Ok(())
}

/// CheckHostname.
pub fn check_hostname(r: &CheckHostnameRequest) -> R {
    dns_label("namespace", &r.namespace)?;
    name_pattern("hostname", &r.hostname)
}

/// AllocateDevice.
pub fn allocate_device(r: &AllocateDeviceRequest) -> R {
    required("claim_uid", &r.claim_uid)?;
    if r.requests.is_empty() {
        return Err(invalid("requests", "at least one request is required"));
    }
    for (i, q) in r.requests.iter().enumerate() {
        required(&format!("requests[{i}].name"), &q.name)?;
    }
    if r.pod_uids.len() > limits::MAX_METADATA_ENTRIES {
        return Err(invalid(
            "pod_uids",
            format!("at most {}", limits::MAX_METADATA_ENTRIES),
        ));
    }
    for (i, u) in r.pod_uids.iter().enumerate() {
        required(&format!("pod_uids[{i}]"), u)?;
        if u.len() > limits::MAX_STRING {
            return Err(invalid(format!("pod_uids[{i}]"), "too long"));
        }
    }
    Ok(())
}

/// A ListDevices (or WatchDevices) filter; `prefix` goes before the field names
/// (`filter.` for a watch).
pub fn list_devices(prefix: &str, r: &crate::proto::ListDevicesRequest) -> R {
    if crate::proto::DeviceKind::try_from(r.kind).is_err() {
        return Err(invalid(
            format!("{prefix}kind"),
            format!("{} is not a DeviceKind", r.kind),
        ));
    }
    if !r.pool.is_empty() {
        dns_label(&format!("{prefix}pool"), &r.pool)?;
    }
    Ok(())
}

/// ReleaseDevice.
pub fn release_device(r: &ReleaseDeviceRequest) -> R {
    required("claim_uid", &r.claim_uid)
}

/// An optional network name (NetworkReady filters).
pub fn optional_network(field: &str, v: &str) -> R {
    if v.is_empty() {
        Ok(())
    } else {
        dns_label(field, v)
    }
}

/// A driver's NetworkReady filter: empty, or one of the networks it `serves` (another is
/// NOT_FOUND, reason NETWORK_NOT_SERVED).
pub fn network_ready_filter(network: &str, serves: &[String]) -> R {
    optional_network("network", network)?;
    if !network.is_empty() && !serves.iter().any(|n| n == network) {
        return Err(field_error(
            tonic::Code::NotFound,
            "network",
            format!("this driver does not serve {network:?}"),
            "NETWORK_NOT_SERVED",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PodSandbox;

    #[test]
    fn network_policy_peers_and_ports_follow_the_api() {
        use crate::proto::{LabelSelector, NetworkPolicyPeer, NetworkPolicyPort};
        let peer = |f: &dyn Fn(&mut NetworkPolicyPeer)| {
            let mut p = NetworkPolicyPeer::default();
            f(&mut p);
            network_policy_peer("p", &p)
                .err()
                .map(|e| e.message().to_string())
        };
        assert!(peer(&|_| {}).unwrap().starts_with("p: one of"));
        assert_eq!(
            peer(&|p| p.pod_selector = Some(LabelSelector::default())),
            None
        );
        assert_eq!(
            peer(&|p| {
                p.ip_block_cidr = "10.0.0.0/16".into();
                p.ip_block_except = vec!["10.0.1.0/24".into()];
            }),
            None
        );
        let e = peer(&|p| {
            p.ip_block_cidr = "10.0.0.0/16".into();
            p.ip_block_except = vec!["10.1.0.0/24".into()];
        });
        assert!(
            e.unwrap()
                .starts_with("p.ip_block_except[0]: 10.1.0.0/24 is not strictly inside")
        );
        let e = peer(&|p| {
            p.ip_block_cidr = "10.0.0.0/16".into();
            p.ip_block_except = vec!["10.0.0.0/16".into()];
        });
        assert!(e.is_some(), "an exception as large as the block");
        let e = peer(&|p| {
            p.ip_block_cidr = "10.0.0.0/16".into();
            p.namespace_selector = Some(LabelSelector::default());
        });
        assert!(e.unwrap().starts_with("p.ip_block_cidr:"));
        let port = |p: NetworkPolicyPort| {
            network_policy_port("q", &p)
                .err()
                .map(|e| e.message().to_string())
        };
        assert_eq!(
            port(NetworkPolicyPort {
                port: 80,
                end_port: 90,
                ..Default::default()
            }),
            None
        );
        assert_eq!(
            port(NetworkPolicyPort {
                named_port: "http".into(),
                ..Default::default()
            }),
            None
        );
        assert!(
            port(NetworkPolicyPort {
                port: 80,
                end_port: 79,
                ..Default::default()
            })
            .unwrap()
            .starts_with("q.end_port:")
        );
        assert!(
            port(NetworkPolicyPort {
                end_port: 79,
                ..Default::default()
            })
            .unwrap()
            .starts_with("q.end_port:")
        );
        assert!(
            port(NetworkPolicyPort {
                port: 80,
                named_port: "http".into(),
                ..Default::default()
            })
            .unwrap()
            .starts_with("q.named_port:")
        );
        assert!(
            port(NetworkPolicyPort {
                named_port: "HTTP".into(),
                ..Default::default()
            })
            .unwrap()
            .starts_with("q.named_port:")
        );
        assert!(
            port(NetworkPolicyPort {
                port: 70000,
                ..Default::default()
            })
            .unwrap()
            .starts_with("q.port:")
        );
    }

    #[test]
    fn addresses_and_cidrs() {
        let ok = |v: &str| ip_or_cidr("f", v).unwrap();
        assert_eq!(ok("10.0.0.1"), ("10.0.0.1".parse().unwrap(), None));
        assert_eq!(ok("10.0.0.1/24"), ("10.0.0.1".parse().unwrap(), Some(24)));
        assert_eq!(ok("fd00::1/128"), ("fd00::1".parse().unwrap(), Some(128)));
        for bad in [
            "10.0.0.1/33",
            "fd00::1/129",
            "10.96.0.300",
            "10.0.0.1/",
            "/24",
            " 10.0.0.1",
            "10.0.0.1/-1",
        ] {
            let e = ip_or_cidr("f", bad).unwrap_err();
            assert!(e.message().starts_with("f: "), "{bad}: {e:?}");
        }
    }

    fn msg(r: R) -> String {
        let s = r.unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        s.message().to_string()
    }

    #[test]
    fn attach_names_the_field() {
        assert!(msg(attach_pod(&AttachPodRequest::default())).starts_with("sandbox:"));
        let mut r = AttachPodRequest {
            sandbox: Some(PodSandbox {
                id: "abc".into(),
                netns_path: "/run/netns/x".into(),
                ..Default::default()
            }),
            networks: vec![NetworkSelection {
                network: "Bad_Name".into(),
                ..Default::default()
            }],
        };
        assert!(msg(attach_pod(&r)).starts_with("networks[0].network:"));
        r.networks[0].network = "default".into();
        r.networks[0].ips = vec!["10.0.0.300".into()];
        assert!(msg(attach_pod(&r)).starts_with("networks[0].ips[0]:"));
        r.networks[0].ips = vec!["10.0.0.3/24".into()];
        r.networks[0].mac = "01:00:00:00:00:01".into();
        assert!(
            msg(attach_pod(&r)).starts_with("networks[0].mac:"),
            "multicast MAC refused"
        );
        r.networks[0].mac = "02:00:00:00:00:01".into();
        r.networks[0].interface_name = "a-very-long-interface".into();
        assert!(msg(attach_pod(&r)).starts_with("networks[0].interface_name:"));
        r.networks[0].interface_name = "eth0".into();
        assert!(attach_pod(&r).is_ok());
        r.networks[0].device_id = "Ens1f0".into();
        assert!(msg(attach_pod(&r)).starts_with("networks[0].device_id:"));
        r.networks[0].device_id = "ens1f0".into();
        let route = |d: &str, g: &str| crate::proto::Route {
            destination: d.into(),
            gateway: g.into(),
            ..Default::default()
        };
        r.networks[0].routes = vec![route("10.2.0.0/16", "10.0.0.1"), route("10.3.0.0", "")];
        assert!(msg(attach_pod(&r)).starts_with("networks[0].routes[1].destination:"));
        r.networks[0].routes = vec![route("fd00::/8", "10.0.0.1")];
        assert!(msg(attach_pod(&r)).starts_with("networks[0].routes[0].gateway:"));
        r.networks[0].routes = vec![route("0.0.0.0/0", "10.0.0.1"); limits::MAX_ROUTES + 1];
        assert!(msg(attach_pod(&r)).starts_with("networks[0].routes:"));
        r.networks[0].routes = vec![route("0.0.0.0/0", "10.0.0.1"), route("::/0", "fe80::1")];
        assert!(attach_pod(&r).is_ok());
        let pm = |host_port, host_ip: &str| PortMapping {
            host_port,
            container_port: 80,
            host_ip: host_ip.into(),
            ..Default::default()
        };
        let sb = r.sandbox.as_mut().unwrap();
        sb.port_mappings = vec![pm(8080, "10.0.0.0/8")];
        assert!(msg(attach_pod(&r)).starts_with("sandbox.port_mappings[0].host_ip:"));
        let sb = r.sandbox.as_mut().unwrap();
        sb.port_mappings = vec![pm(8080, ""), pm(70000, "")];
        assert!(msg(attach_pod(&r)).starts_with("sandbox.port_mappings[1].host_port:"));
        let sb = r.sandbox.as_mut().unwrap();
        sb.port_mappings = vec![pm(8080, ""), pm(8080, "")];
        assert!(msg(attach_pod(&r)).contains("8080 mapped twice"));
        // The kubelet passes every containerPort; those without a hostPort have host_port 0.
        let sb = r.sandbox.as_mut().unwrap();
        sb.port_mappings = vec![pm(0, ""), pm(0, ""), pm(8080, "")];
        assert!(attach_pod(&r).is_ok(), "host_port 0 is not published");
        let sb = r.sandbox.as_mut().unwrap();
        sb.port_mappings[0].container_port = 0;
        assert!(msg(attach_pod(&r)).starts_with("sandbox.port_mappings[0].container_port:"));
    }

    #[test]
    fn sandbox_metadata_is_bounded() {
        let ok = || AttachPodRequest {
            sandbox: Some(crate::proto::PodSandbox {
                id: "s1".into(),
                name: "web-0".into(),
                namespace: "shop".into(),
                netns_path: "/run/netns/s1".into(),
                labels: [("app.kubernetes.io/name".to_string(), "web".to_string())].into(),
                annotations: [(
                    "kubernetes.io/ingress-bandwidth".to_string(),
                    "10M".to_string(),
                )]
                .into(),
                dns_config: Some(crate::proto::DnsConfig {
                    nameservers: vec!["10.96.0.10".into()],
                    searches: vec!["shop.svc.cluster.local".into()],
                    options: vec!["ndots:5".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            networks: vec![],
        };
        assert!(attach_pod(&ok()).is_ok());
        type Mutation = fn(&mut crate::proto::PodSandbox);
        let cases: Vec<(&str, Mutation)> = vec![
            ("sandbox.name", |s| s.name = "Web_0".into()),
            ("sandbox.namespace", |s| s.namespace = "a.b".into()),
            ("sandbox.hostname", |s| s.hostname = "x".repeat(64)),
            ("sandbox.uid", |s| s.uid = "u".repeat(2000)),
            ("sandbox.labels[bad key!]", |s| {
                s.labels.insert("bad key!".into(), "v".into());
            }),
            ("sandbox.labels[app.kubernetes.io/name]", |s| {
                s.labels
                    .insert("app.kubernetes.io/name".into(), "x".repeat(64));
            }),
            ("sandbox.annotations", |s| {
                s.annotations.insert("big".into(), "x".repeat(300 * 1024));
            }),
            ("sandbox.labels", |s| {
                for i in 0..300 {
                    s.labels.insert(format!("k{i}"), "v".into());
                }
            }),
            ("sandbox.dns_config.nameservers", |s| {
                s.dns_config.as_mut().unwrap().nameservers = vec![
                    "1.1.1.1".into(),
                    "1.1.1.2".into(),
                    "1.1.1.3".into(),
                    "1.1.1.4".into(),
                ]
            }),
            ("sandbox.dns_config.nameservers[0]", |s| {
                s.dns_config.as_mut().unwrap().nameservers = vec!["ns1".into()]
            }),
            ("sandbox.dns_config.searches", |s| {
                s.dns_config.as_mut().unwrap().searches =
                    (0..40).map(|i| format!("d{i}.local")).collect()
            }),
            ("sandbox.dns_config.searches[0]", |s| {
                s.dns_config.as_mut().unwrap().searches = vec!["bad..domain".into()]
            }),
            ("sandbox.dns_config.options[0]", |s| {
                s.dns_config.as_mut().unwrap().options = vec!["nd ots".into()]
            }),
        ];
        for (field, mutate) in cases {
            let mut r = ok();
            mutate(r.sandbox.as_mut().unwrap());
            let m = msg(attach_pod(&r));
            assert!(m.starts_with(&format!("{field}:")), "{field}: {m}");
        }
    }

    #[test]
    fn host_ports_in_a_batch_name_the_field() {
        let mut r = ProgramServiceRequest {
            generation: 1,
            host_port_upserts: vec![crate::proto::HostPorts {
                sandbox_id: "s1".into(),
                pod_ips: vec!["10.244.0.5".into(), "10.244.0.6".into()],
                port_mappings: vec![PortMapping {
                    host_port: 80,
                    container_port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(msg(program_service(&r)).starts_with("host_port_upserts[0].pod_ips[1]:"));
        r.host_port_upserts[0].pod_ips[1] = "fd00::6".into();
        assert!(program_service(&r).is_ok());
        r.host_port_upserts[0].port_mappings[0].host_port = 0;
        assert!(
            msg(program_service(&r))
                .starts_with("host_port_upserts[0].port_mappings[0].host_port:")
        );
        r.host_port_upserts[0].port_mappings.clear();
        assert!(msg(program_service(&r)).starts_with("host_port_upserts[0].port_mappings:"));
        r.host_port_upserts.clear();
        r.host_port_deletes = vec!["bad id!".into()];
        assert!(msg(program_service(&r)).starts_with("host_port_deletes[0]:"));
    }

    #[test]
    fn names_and_patterns() {
        assert!(dns_label("f", "kube-system").is_ok());
        assert!(dns_label("f", "-x").is_err());
        assert!(name_pattern("f", "*.example.com").is_ok());
        assert!(name_pattern("f", "google.com.").is_ok());
        assert!(name_pattern("f", "bad..name").is_err());
        assert!(sandbox_id("f", "abc/def").is_err());
    }

    #[test]
    fn egress_by_name_minimum_is_bounded() {
        use crate::proto::{ApplyPolicyRequest, DnsPolicy, PolicyKey, PolicyKind};
        let req = |secs: u32| ApplyPolicyRequest {
            generation: 1,
            dns_policies: vec![DnsPolicy {
                key: Some(PolicyKey {
                    kind: PolicyKind::DnsPolicy as i32,
                    namespace: "shop".into(),
                    name: "p".into(),
                }),
                egress_by_name: true,
                egress_min_ttl_seconds: secs,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(apply_policy(&req(0)).is_ok());
        assert!(apply_policy(&req(86_400)).is_ok());
        let e = apply_policy(&req(86_401)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("dns_policies[0].egress_min_ttl_seconds:"),
            "{}",
            e.message()
        );
    }
}
