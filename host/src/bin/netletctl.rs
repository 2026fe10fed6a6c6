//! `netletctl`: the human's view of a running host. Readiness and attachments come over the
//! gRPC API; drivers, metrics and the state dump over the admin HTTP socket (hyperlocal).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector, Uri};
use netlet_sdk::{
    client::Clients,
    proto::{
        IpFamily, ListAttachmentsRequest, ListDevicesRequest, ListPoliciesRequest,
        ListServicesRequest, NetworkReadyRequest, WatchDevicesRequest,
    },
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "netletctl", version, about = "Inspect a running netlet host")]
struct Cli {
    /// gRPC socket of the host.
    #[arg(
        long,
        global = true,
        default_value = "/run/netlet/netlet.sock",
        env = "NETLET_SOCKET"
    )]
    socket: PathBuf,
    /// Admin socket (default: netlet-admin.sock beside --socket).
    #[arg(long, global = true, env = "NETLET_ADMIN_SOCKET")]
    admin_socket: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Network readiness with its conditions, and the drivers.
    Status {
        /// Exit with status 1 when the network is not ready (a readiness probe).
        #[arg(long)]
        check: bool,
    },
    /// Registered drivers.
    Drivers,
    /// Attached pods.
    Attachments {
        /// Only this network.
        #[arg(long, default_value = "")]
        network: String,
        /// Only this namespace.
        #[arg(long, default_value = "")]
        namespace: String,
    },
    /// The node's Services: each with its endpoints in use here, and every driver's
    /// acknowledged generation.
    Services {
        /// Only this namespace.
        #[arg(long, default_value = "")]
        namespace: String,
    },
    /// The node's NetworkPolicies and ClusterNetworkPolicies as drivers are told them: the
    /// addresses each applies to and each rule's peers, resolved by the host.
    Policies,
    /// Hostname grants, and every hostname claim with its decision now (the audit: a claim
    /// denied here was made before a grant or an older claim said otherwise).
    Hostnames,
    /// The node's devices (every Devices driver's inventory): topology, health, the claim
    /// holding each and the pod it is in.
    Devices {
        /// Only free devices.
        #[arg(long)]
        free: bool,
        /// Only this pool.
        #[arg(long, default_value = "")]
        pool: String,
        /// Print the inventory again each time it changes, until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Prometheus metrics, as served.
    Metrics,
    /// Debugging dumps.
    Debug {
        #[command(subcommand)]
        what: DebugCmd,
    },
}

#[derive(Subcommand)]
enum DebugCmd {
    /// The host's JSON state dump.
    State,
}

async fn admin_get(socket: &Path, path: &str) -> anyhow::Result<String> {
    let client: Client<UnixConnector, Full<Bytes>> = Client::unix();
    let resp = client
        .get(Uri::new(socket, path).into())
        .await
        .with_context(|| format!("admin socket {}", socket.display()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).to_string();
    if !status.is_success() {
        bail!("GET {path}: {status}: {text}");
    }
    Ok(text)
}

/// The host's `ListPolicies`.
async fn list_policies(socket: &Path) -> anyhow::Result<netlet_sdk::proto::ListPoliciesResponse> {
    let mut c = Clients::connect(socket, Some(std::time::Duration::from_secs(10)))
        .await
        .with_context(|| format!("connect {}", socket.display()))?;
    Ok(c.policy
        .list_policies(ListPoliciesRequest::default())
        .await?
        .into_inner())
}

async fn state(socket: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(
        &admin_get(socket, "/debug/state").await?,
    )?)
}

/// Devices as a table, or as JSON (one document; one line per update when watching).
fn print_devices(devices: &[netlet_sdk::proto::Device], json_out: bool) -> anyhow::Result<()> {
    use netlet_sdk::proto::{DeviceHealth, DeviceKind};
    let view: Vec<Value> = devices
        .iter()
        .map(|d| {
            let kind = DeviceKind::try_from(d.kind).unwrap_or(DeviceKind::Unspecified);
            let health = DeviceHealth::try_from(d.health).unwrap_or(DeviceHealth::Unspecified);
            json!({
                "id": d.id, "driver": d.driver, "pool": d.pool,
                "kind": kind.as_str_name().trim_start_matches("DEVICE_KIND_"),
                "interface": d.interface_name, "pciAddress": d.pci_address,
                "numaNode": (d.numa_node >= 0).then_some(d.numa_node), "pcieRoot": d.pcie_root,
                "vendor": d.vendor, "attributes": d.attributes,
                "health": health.as_str_name().trim_start_matches("DEVICE_HEALTH_"),
                "claim": d.allocated_to_claim, "sandbox": d.attached_to_sandbox,
            })
        })
        .collect();
    if json_out {
        println!("{}", serde_json::to_string(&view)?);
        return Ok(());
    }
    let dash = |v: &Value| match s(v) {
        x if x.is_empty() => "-".to_string(),
        x => x,
    };
    table(
        &[
            "DEVICE",
            "DRIVER",
            "POOL",
            "KIND",
            "IFACE",
            "PCI",
            "NUMA",
            "PCIE ROOT",
            "HEALTH",
            "CLAIM",
            "SANDBOX",
        ],
        view.iter()
            .map(|d| {
                [
                    "id",
                    "driver",
                    "pool",
                    "kind",
                    "interface",
                    "pciAddress",
                    "numaNode",
                    "pcieRoot",
                    "health",
                    "claim",
                    "sandbox",
                ]
                .iter()
                .map(|k| dash(&d[*k]))
                .collect()
            })
            .collect(),
    );
    Ok(())
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn drivers_table(state: &Value) {
    let rows = state["drivers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                s(&d["name"]),
                s(&d["source"]),
                if d["ready"].as_bool() == Some(true) {
                    "yes".into()
                } else {
                    format!("no ({})", s(&d["reason"]))
                },
                s(&d["networks"]),
                s(&d["capabilities"]),
                s(&d["apiVersion"]),
                s(&d["vendorVersion"]),
                s(&d["restarts"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "SOURCE",
            "READY",
            "NETWORKS",
            "CAPABILITIES",
            "API",
            "VERSION",
            "RESTARTS",
        ],
        rows,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let admin = cli.admin_socket.clone().unwrap_or_else(|| {
        cli.socket
            .parent()
            .unwrap_or(Path::new("/"))
            .join("netlet-admin.sock")
    });
    let json_out = cli.output == Output::Json;
    match cli.cmd {
        Cmd::Status { check } => {
            let mut c = Clients::connect(&cli.socket, Some(std::time::Duration::from_secs(10)))
                .await
                .with_context(|| format!("connect {}", cli.socket.display()))?;
            let r = c
                .node
                .network_ready(NetworkReadyRequest::default())
                .await?
                .into_inner()
                .readiness
                .unwrap_or_default();
            let st = state(&admin).await?;
            let conditions: Vec<Value> = r
                .conditions
                .iter()
                .map(|c| {
                    json!({"type": c.r#type, "status": c.status().as_str_name().trim_start_matches("CONDITION_STATUS_"), "reason": c.reason, "message": c.message, "network": c.network, "driver": c.driver})
                })
                .collect();
            if json_out {
                let out = json!({"ready": r.ready, "reason": r.reason, "message": r.message, "conditions": conditions, "drivers": st["drivers"]});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                if r.ready {
                    println!("NetworkReady: true");
                } else {
                    println!("NetworkReady: false ({}: {})", r.reason, r.message);
                }
                println!();
                table(
                    &[
                        "CONDITION",
                        "STATUS",
                        "DRIVER",
                        "NETWORK",
                        "REASON",
                        "MESSAGE",
                    ],
                    conditions
                        .iter()
                        .map(|c| {
                            vec![
                                s(&c["type"]),
                                s(&c["status"]),
                                s(&c["driver"]),
                                s(&c["network"]),
                                s(&c["reason"]),
                                s(&c["message"]),
                            ]
                        })
                        .collect(),
                );
                println!();
                drivers_table(&st);
            }
            if check && !r.ready {
                std::process::exit(1);
            }
        }
        Cmd::Devices { free, pool, watch } => {
            let c = Clients::connect(&cli.socket, Some(std::time::Duration::from_secs(10)))
                .await
                .with_context(|| format!("connect {}", cli.socket.display()))?;
            let filter = ListDevicesRequest {
                free_only: free,
                pool,
                ..Default::default()
            };
            if watch {
                let mut stream = c
                    .devices
                    .clone()
                    .watch_devices(WatchDevicesRequest {
                        filter: Some(filter),
                    })
                    .await?
                    .into_inner();
                while let Some(m) = stream.message().await? {
                    print_devices(&m.devices, json_out)?;
                    println!();
                }
            } else {
                let devices = c
                    .devices
                    .clone()
                    .list_devices(filter)
                    .await?
                    .into_inner()
                    .devices;
                print_devices(&devices, json_out)?;
            }
        }
        Cmd::Drivers => {
            let st = state(&admin).await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&st["drivers"])?);
            } else {
                drivers_table(&st);
            }
        }
        Cmd::Attachments { network, namespace } => {
            let mut c = Clients::connect(&cli.socket, Some(std::time::Duration::from_secs(10)))
                .await
                .with_context(|| format!("connect {}", cli.socket.display()))?;
            let pods = c
                .pods
                .list_attachments(ListAttachmentsRequest { network, namespace })
                .await?
                .into_inner()
                .pods;
            let view: Vec<Value> = pods
                .iter()
                .map(|p| {
                    let sb = p.sandbox.clone().unwrap_or_default();
                    json!({
                        "sandboxId": sb.id, "namespace": sb.namespace, "name": sb.name, "netns": sb.netns_path,
                        "attachments": p.attachments.iter().map(|a| json!({
                            "network": a.network, "driver": a.driver, "interface": a.interface_name,
                            "mac": a.mac, "mtu": a.mtu,
                            "ips": a.ips.iter().map(|ip| json!({"address": ip.address, "gateway": ip.gateway,
                                "family": match ip.family() { IpFamily::Ipv4 => "IPv4", IpFamily::Ipv6 => "IPv6", IpFamily::Unspecified => "" }})).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            if json_out {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                let rows = view
                    .iter()
                    .flat_map(|p| {
                        p["attachments"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .into_iter()
                            .map(move |a| {
                                vec![
                                    s(&p["sandboxId"]),
                                    format!("{}/{}", s(&p["namespace"]), s(&p["name"])),
                                    s(&a["network"]),
                                    s(&a["interface"]),
                                    a["ips"]
                                        .as_array()
                                        .into_iter()
                                        .flatten()
                                        .map(|i| s(&i["address"]))
                                        .collect::<Vec<_>>()
                                        .join(","),
                                    s(&a["mac"]),
                                    s(&a["driver"]),
                                ]
                            })
                    })
                    .collect();
                table(
                    &["SANDBOX", "POD", "NETWORK", "IFACE", "IPS", "MAC", "DRIVER"],
                    rows,
                );
            }
        }
        Cmd::Services { namespace } => {
            let mut c = Clients::connect(&cli.socket, Some(std::time::Duration::from_secs(10)))
                .await
                .with_context(|| format!("connect {}", cli.socket.display()))?;
            let l = c
                .services
                .list_services(ListServicesRequest { namespace })
                .await?
                .into_inner();
            let services: Vec<Value> = l
                .services
                .iter()
                .map(|st| {
                    let svc = st.service.clone().unwrap_or_default();
                    let key = svc.key.clone().unwrap_or_default();
                    json!({
                        "namespace": key.namespace, "name": key.name, "type": svc.r#type().as_str_name(),
                        "clusterIPs": svc.cluster_ips,
                        "ports": svc.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol().as_str_name(), "nodePort": p.node_port})).collect::<Vec<_>>(),
                        "endpoints": st.endpoints.iter().map(|e| json!({"address": e.address, "node": e.node_name, "local": e.local,
                            "ready": e.ready, "serving": e.serving, "terminating": e.terminating,
                            "internal": e.use_for_internal, "external": e.use_for_external})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let drivers: Vec<Value> = l
                .drivers
                .iter()
                .map(|d| json!({"driver": d.driver, "acknowledgedGeneration": d.acknowledged_generation, "inSync": d.in_sync}))
                .collect();
            let host_ports: Vec<Value> = l
                .host_ports
                .iter()
                .flat_map(|h| {
                    h.port_mappings.iter().map(|m| {
                        json!({"sandbox": h.sandbox_id, "pod": h.pod, "podIPs": h.pod_ips,
                            "hostIP": m.host_ip, "hostPort": m.host_port,
                            "containerPort": m.container_port, "protocol": m.protocol().as_str_name()})
                    })
                })
                .collect();
            if json_out {
                let v = json!({"nodeGeneration": l.node_generation, "socketGeneration": l.applied_generation,
                    "drivers": drivers, "services": services, "hostPorts": host_ports});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("node generation {}", l.node_generation);
                for d in &l.drivers {
                    println!(
                        "driver {}: acknowledged {}{}",
                        d.driver,
                        d.acknowledged_generation,
                        if d.in_sync { " (in sync)" } else { " (behind)" }
                    );
                }
                let rows = services
                    .iter()
                    .map(|v| {
                        let eps = v["endpoints"].as_array().cloned().unwrap_or_default();
                        let used =
                            |f: &str| eps.iter().filter(|e| e[f].as_bool() == Some(true)).count();
                        vec![
                            format!("{}/{}", s(&v["namespace"]), s(&v["name"])),
                            s(&v["type"])
                                .trim_start_matches("SERVICE_TYPE_")
                                .to_string(),
                            s(&v["clusterIPs"]),
                            v["ports"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|p| {
                                    format!(
                                        "{}/{}",
                                        p["port"],
                                        s(&p["protocol"]).trim_start_matches("PROTOCOL_")
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(","),
                            format!("{}/{}/{}", used("internal"), used("external"), eps.len()),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "SERVICE",
                        "TYPE",
                        "CLUSTER-IPS",
                        "PORTS",
                        "ENDPOINTS(INT/EXT/ALL)",
                    ],
                    rows,
                );
                if !host_ports.is_empty() {
                    let rows = host_ports
                        .iter()
                        .map(|h| {
                            let ip = s(&h["hostIP"]);
                            vec![
                                s(&h["pod"]),
                                format!(
                                    "{}:{}/{}",
                                    if ip.is_empty() { "*" } else { ip.as_str() },
                                    h["hostPort"],
                                    s(&h["protocol"]).trim_start_matches("PROTOCOL_")
                                ),
                                format!("{} port {}", s(&h["podIPs"]), h["containerPort"]),
                            ]
                        })
                        .collect();
                    println!();
                    table(&["POD", "HOST-PORT", "TO"], rows);
                }
            }
        }
        Cmd::Hostnames => {
            let l = list_policies(&cli.socket).await?;
            let since = |t: &Option<prost_types::Timestamp>| {
                t.as_ref()
                    .and_then(|t| k8s_openapi::jiff::Timestamp::new(t.seconds, t.nanos).ok())
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            };
            let grants: Vec<Value> = l
                .hostname_grants
                .iter()
                .map(|g| {
                    json!({
                        "name": g.key.as_ref().map(|k| k.name.clone()).unwrap_or_default(),
                        "hostnames": g.hostnames,
                        "namespaces": g.namespaces,
                        "namespaceSelector": g.namespace_selector.as_ref().map(|s| json!({
                            "matchLabels": s.match_labels,
                            "matchExpressions": s.match_expressions.iter().map(|e| json!({"key": e.key, "operator": e.operator, "values": e.values})).collect::<Vec<_>>(),
                        })),
                        "module": g.module,
                    })
                })
                .collect();
            let claims: Vec<Value> = l
                .hostname_claims
                .iter()
                .map(|c| {
                    let d = c.decision.clone().unwrap_or_default();
                    json!({
                        "hostname": c.hostname,
                        "namespace": c.namespace,
                        "kind": c.kind,
                        "name": c.name,
                        "since": since(&c.since),
                        "allowed": d.allowed,
                        "audit": d.audit,
                        "grant": d.grant,
                        "heldBy": d.held_by,
                        "reason": d.reason,
                    })
                })
                .collect();
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"grants": grants, "claims": claims}))?
                );
            } else {
                let rows = l
                    .hostname_grants
                    .iter()
                    .map(|g| {
                        let mut ns = g.namespaces.join(",");
                        if let Some(sel) = &g.namespace_selector {
                            let labels: Vec<String> = sel
                                .match_labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .chain(sel.match_expressions.iter().map(|e| {
                                    format!("{} {} ({})", e.key, e.operator, e.values.join(","))
                                }))
                                .collect();
                            if !ns.is_empty() {
                                ns.push(',');
                            }
                            ns.push_str(&format!("selector[{}]", labels.join(",")));
                        }
                        vec![
                            g.key.as_ref().map(|k| k.name.clone()).unwrap_or_default(),
                            g.hostnames.join(","),
                            ns,
                            g.module.clone(),
                        ]
                    })
                    .collect();
                table(&["GRANT", "HOSTNAMES", "NAMESPACES", "MODULE"], rows);
                println!();
                let rows = l
                    .hostname_claims
                    .iter()
                    .map(|c| {
                        let d = c.decision.clone().unwrap_or_default();
                        let verdict = match (d.allowed, d.audit) {
                            (true, false) => "allowed",
                            (true, true) => "audit",
                            (false, _) => "DENIED",
                        };
                        vec![
                            c.hostname.clone(),
                            format!("{}/{}/{}", c.namespace, c.kind, c.name),
                            since(&c.since),
                            verdict.to_string(),
                            d.reason,
                        ]
                    })
                    .collect();
                table(&["HOSTNAME", "CLAIMED BY", "SINCE", "VERDICT", "WHY"], rows);
            }
        }
        Cmd::Policies => {
            let l = list_policies(&cli.socket).await?;
            // Selectors come resolved to shared address sets: show their elements.
            let sets: std::collections::HashMap<&str, &Vec<String>> = l
                .address_sets
                .iter()
                .map(|s| (s.name.as_str(), &s.elements))
                .collect();
            let elements = |set: &str, inline: &Vec<String>| -> Vec<String> {
                sets.get(set)
                    .map(|e| e.to_vec())
                    .unwrap_or_else(|| inline.clone())
            };
            let ports = |ports: &[netlet_sdk::proto::NetworkPolicyPort]| -> Vec<String> {
                ports
                    .iter()
                    .map(|p| {
                        let port = if p.named_port.is_empty() {
                            match (p.port, p.end_port) {
                                (0, _) => "*".to_string(),
                                (n, 0) => n.to_string(),
                                (n, e) => format!("{n}-{e}"),
                            }
                        } else {
                            p.named_port.clone()
                        };
                        format!(
                            "{}/{port}",
                            p.protocol().as_str_name().trim_start_matches("PROTOCOL_")
                        )
                    })
                    .collect()
            };
            let peers = |rules: &[netlet_sdk::proto::NetworkPolicyRule]| -> Vec<Value> {
                rules
                    .iter()
                    .map(|r| {
                        json!({
                            "peers": r.peers.iter().map(|p| {
                                if p.ip_block_cidr.is_empty() {
                                    json!({"set": p.address_set, "addresses": elements(&p.address_set, &p.resolved_addresses)})
                                } else {
                                    json!({"ipBlock": p.ip_block_cidr, "except": p.ip_block_except, "set": p.address_set})
                                }
                            }).collect::<Vec<_>>(),
                            "ports": ports(&r.ports),
                        })
                    })
                    .collect()
            };
            let cluster: Vec<Value> = l
                .cluster_network_policies
                .iter()
                .map(|p| {
                    let rules = |rs: &[netlet_sdk::proto::ClusterNetworkPolicyRule]| -> Vec<Value> {
                        rs.iter().map(|r| json!({
                            "name": r.name,
                            "action": r.action().as_str_name().trim_start_matches("CLUSTER_POLICY_ACTION_"),
                            "peers": r.peers.iter().map(|x| json!({"set": x.address_set, "addresses": elements(&x.address_set, &Vec::new())})).collect::<Vec<_>>(),
                            "ports": ports(&r.ports),
                        })).collect()
                    };
                    json!({
                        "name": p.key.clone().unwrap_or_default().name,
                        "tier": p.tier().as_str_name().trim_start_matches("CLUSTER_POLICY_TIER_"),
                        "priority": p.priority,
                        "selected": elements(&p.selected_set, &Vec::new()),
                        "ingress": rules(&p.ingress),
                        "egress": rules(&p.egress),
                    })
                })
                .collect();
            let policies: Vec<Value> = l
                .network_policies
                .iter()
                .map(|p| {
                    let key = p.key.clone().unwrap_or_default();
                    json!({
                        "namespace": key.namespace, "name": key.name,
                        "directions": p.directions().map(|d| d.as_str_name().trim_start_matches("POLICY_DIRECTION_").to_string()).collect::<Vec<_>>(),
                        "selected": elements(&p.selected_set, &p.selected_addresses),
                        "ingress": peers(&p.ingress),
                        "egress": peers(&p.egress),
                    })
                })
                .collect();
            let dns: Vec<Value> = l
                .dns_policies
                .iter()
                .map(|p| {
                    let key = p.key.clone().unwrap_or_default();
                    json!({
                        "namespace": key.namespace, "name": key.name,
                        "allow": p.allow, "deny": p.deny,
                        "default": p.default_action().as_str_name().trim_start_matches("DNS_ACTION_"),
                        "module": p.module,
                        "serverSideSearch": p.server_side_search,
                    })
                })
                .collect();
            let modules: Vec<Value> = l
                .modules
                .iter()
                .map(|m| {
                    let c = m.counters.unwrap_or_default();
                    json!({
                        "name": m.name, "file": m.file, "world": m.world, "sha256": m.sha256,
                        "pinnedSha256": m.pinned_sha256, "failOpen": m.fail_open, "error": m.error,
                        "loadedAtUnix": m.loaded_at_unix,
                        "counters": {
                            "calls": c.calls, "allow": c.allow, "deny": c.deny, "rewrite": c.rewrite,
                            "deadline": c.deadline, "memoryLimit": c.memory_limit, "trap": c.trap,
                            "badOutput": c.bad_output, "unavailable": c.unavailable, "reloads": c.reloads,
                        },
                    })
                })
                .collect();
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "networkPolicies": policies,
                        "clusterNetworkPolicies": cluster,
                        "dnsPolicies": dns,
                        "modules": modules,
                    }))?
                );
            } else {
                let rows = policies
                    .iter()
                    .chain(&cluster)
                    .map(|p| {
                        let list = |v: &Value| {
                            v.as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|x| x.as_str())
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default()
                        };
                        let rules =
                            |v: &Value| v.as_array().map(|a| a.len()).unwrap_or(0).to_string();
                        let kind = match p["tier"].as_str() {
                            Some(t) => format!("{t} tier, priority {}", p["priority"]),
                            None => list(&p["directions"]),
                        };
                        vec![
                            p["namespace"].as_str().unwrap_or("(cluster)").to_string(),
                            p["name"].as_str().unwrap_or_default().to_string(),
                            kind,
                            list(&p["selected"]),
                            rules(&p["ingress"]),
                            rules(&p["egress"]),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAMESPACE",
                        "NAME",
                        "DIRECTIONS / TIER",
                        "SELECTED",
                        "INGRESS RULES",
                        "EGRESS RULES",
                    ],
                    rows,
                );
                if !l.dns_policies.is_empty() {
                    println!();
                    let rows = l
                        .dns_policies
                        .iter()
                        .map(|p| {
                            let key = p.key.clone().unwrap_or_default();
                            vec![
                                if key.namespace.is_empty() {
                                    "(cluster)".into()
                                } else {
                                    key.namespace
                                },
                                key.name,
                                p.allow.join(","),
                                p.deny.join(","),
                                p.default_action()
                                    .as_str_name()
                                    .trim_start_matches("DNS_ACTION_")
                                    .to_string(),
                                p.module.clone(),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "NAMESPACE",
                            "DNS POLICY",
                            "ALLOW",
                            "DENY",
                            "DEFAULT",
                            "MODULE",
                        ],
                        rows,
                    );
                }
                if !l.modules.is_empty() {
                    println!();
                    let rows = l
                        .modules
                        .iter()
                        .map(|m| {
                            let c = m.counters.unwrap_or_default();
                            let failures =
                                c.deadline + c.memory_limit + c.trap + c.bad_output + c.unavailable;
                            vec![
                                m.name.clone(),
                                if m.world.is_empty() {
                                    "(not loaded)".into()
                                } else {
                                    m.world.clone()
                                },
                                m.sha256.get(..16).unwrap_or_default().to_string(),
                                if m.fail_open {
                                    "open".into()
                                } else {
                                    "closed".into()
                                },
                                format!("{}/{}/{}", c.allow, c.deny, c.rewrite),
                                format!(
                                    "{failures} (deadline {}, memory {}, trap {}, bad output {})",
                                    c.deadline, c.memory_limit, c.trap, c.bad_output
                                ),
                                m.error.clone(),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "MODULE",
                            "WORLD",
                            "SHA256",
                            "FAILS",
                            "ALLOW/DENY/REWRITE",
                            "FAILURES",
                            "ERROR",
                        ],
                        rows,
                    );
                }
            }
        }
        Cmd::Metrics => print!("{}", admin_get(&admin, "/metrics").await?),
        Cmd::Debug {
            what: DebugCmd::State,
        } => {
            println!("{}", serde_json::to_string_pretty(&state(&admin).await?)?);
        }
    }
    Ok(())
}
