//! `netlet-cni`: a CNI 1.1 plugin that forwards to the netlet host over its unix socket.
//!
//! ADD → AttachPod, DEL → DetachPod, CHECK → PodNetworkStatus, STATUS → NetworkReady,
//! GC → GarbageCollect, VERSION answered locally (0.4.0, 1.0.0, 1.1.0). Results and errors in
//! the spec's JSON; an unreachable host is error 11 ("try again later") so the runtime retries.

#![forbid(unsafe_code)]

use netlet_cni::{attach_request, input, spec};

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use netlet_sdk::client::Clients;
use netlet_sdk::proto::{
    Attachment, DetachPodRequest, GarbageCollectRequest, NetworkReadyRequest,
    PodNetworkStatusRequest,
};
use serde_json::{Value, json};
use spec::{CniError, CniResult, Dns, Env, Interface, Ip, NetConf, RouteOut, code};
use tonic::Code;

/// How long one call to the host may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take before the host counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let env = Env::from(|k| std::env::var(k).ok());
    let mut stdin = String::new();
    let read = std::io::stdin().read_to_string(&mut stdin);
    let conf: Result<NetConf, CniError> = match read {
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            "cannot read stdin",
            e.to_string(),
        )),
        // DEL must be able to tear down whatever the configuration looks like (the runtime
        // cannot remove a sandbox whose DEL fails): what does not decode is left out.
        Ok(_) if env.command == "DEL" => input::parse(&stdin).or_else(|e| {
            eprintln!("netlet-cni: DEL with a configuration that does not decode ({}: {}); detaching by container id", e.msg, e.details);
            Ok(input::loose(&stdin))
        }),
        Ok(_) => input::parse(&stdin),
    };
    let version = conf
        .as_ref()
        .map(|c| c.cni_version.clone())
        .ok()
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    let outcome = conf.and_then(|c| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                CniError::new(code::IO_FAILURE, "cannot start the runtime", e.to_string())
            })?;
        rt.block_on(run(&env, &c))
    });
    match outcome {
        Ok(Some(v)) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Ok(None) => {}
        Err(e) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&e.to_json(&version)).unwrap_or_default()
            );
            std::process::exit(1);
        }
    }
}

async fn run(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        let v = if conf.cni_version.is_empty() {
            "1.1.0"
        } else {
            conf.cni_version.as_str()
        };
        return Ok(Some(
            json!({"cniVersion": v, "supportedVersions": spec::SUPPORTED_VERSIONS}),
        ));
    }
    spec::check_version(&conf.cni_version)?;
    conf.check()?;
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| spec::DEFAULT_SOCKET.to_string());
    let network = conf
        .network
        .clone()
        .unwrap_or_else(|| "default".to_string());
    match env.command.as_str() {
        "ADD" => {
            env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
            let c = connect(&socket).await?;
            let resp = c
                .pods
                .clone()
                .attach_pod(attach_request(env, conf, &network))
                .await
                .map_err(from_status)?
                .into_inner();
            let a = resp
                .attachments
                .iter()
                .find(|a| a.interface_name == env.ifname)
                .or(resp.attachments.first())
                .ok_or_else(|| {
                    CniError::new(code::PLUGIN, "the host answered no attachment", "")
                })?;
            let r = result(&conf.cni_version, a, &env.netns);
            Ok(Some(serde_json::to_value(r).unwrap_or_default()))
        }
        "DEL" => {
            env.require(&["CNI_CONTAINERID"])?;
            let req = DetachPodRequest {
                sandbox_id: env.container_id.clone(),
                netns_path: env.netns.clone(),
                networks: vec![],
            };
            let answer = match connect(&socket).await {
                Ok(c) => c.pods.clone().detach_pod(req).await.map_err(from_status),
                Err(e) => Err(e),
            };
            match answer {
                Ok(_) => Ok(None),
                // The host is away: the detach is left for it (it finishes pending detaches
                // when it is back), and DEL succeeds so the runtime can remove the sandbox.
                Err(e) if e.code == code::TRY_AGAIN_LATER => {
                    leave_for_host(&socket, &env.container_id).map_err(|io| {
                        CniError::new(
                            code::TRY_AGAIN_LATER,
                            e.msg.clone(),
                            format!(
                                "{}; and the detach could not be left for the host: {io}",
                                e.details
                            ),
                        )
                    })?;
                    eprintln!(
                        "netlet-cni: DEL: {}; the host detaches {} when it is back",
                        e.msg, env.container_id
                    );
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        }
        "CHECK" => {
            env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
            let c = connect(&socket).await?;
            let pod = c
                .pods
                .clone()
                .pod_network_status(PodNetworkStatusRequest {
                    sandbox_id: env.container_id.clone(),
                })
                .await
                .map_err(from_status)?
                .into_inner()
                .pod
                .unwrap_or_default();
            let a = pod
                .attachments
                .iter()
                .find(|a| a.interface_name == env.ifname)
                .ok_or_else(|| {
                    CniError::new(
                        code::UNKNOWN_CONTAINER,
                        format!("{} has no interface {}", env.container_id, env.ifname),
                        "",
                    )
                })?;
            if let Some(prev) = &conf.prev_result {
                check_prev(prev, a)?;
            }
            Ok(None)
        }
        "STATUS" => {
            let c = connect(&socket).await?;
            let r = c
                .node
                .clone()
                .network_ready(NetworkReadyRequest { network })
                .await
                .map_err(from_status)?
                .into_inner()
                .readiness
                .unwrap_or_default();
            if r.ready {
                Ok(None)
            } else {
                Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("network not ready: {}", r.reason),
                    r.message,
                ))
            }
        }
        "GC" => {
            let c = connect(&socket).await?;
            let valid = conf
                .valid_attachments
                .iter()
                .flatten()
                .map(|v| v.container_id.clone())
                .collect();
            c.pods
                .clone()
                .garbage_collect(GarbageCollectRequest {
                    valid_sandbox_ids: valid,
                    // The spec: GC is for this configuration's network; others are not ours.
                    network: network.clone(),
                })
                .await
                .map_err(from_status)?;
            Ok(None)
        }
        "" => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is required",
            "",
        )),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "",
        )),
    }
}

/// Leaves a detach for the host: an empty file named after the sandbox in
/// `<socket dir>/pending-detach/`, which the host works through when it is back.
fn leave_for_host(socket: &str, sandbox_id: &str) -> std::io::Result<()> {
    netlet_sdk::validate::sandbox_id("CNI_CONTAINERID", sandbox_id).map_err(|s| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, s.message().to_string())
    })?;
    let dir = netlet_sdk::pending_detach_dir(Path::new(socket));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(sandbox_id), b"")
}

async fn connect(socket: &str) -> Result<Clients, CniError> {
    let ch = netlet_sdk::client::connect_unix(Path::new(socket), Some(CALL_TIMEOUT));
    match tokio::time::timeout(CONNECT_TIMEOUT, ch).await {
        Ok(Ok(ch)) => Ok(Clients::new(ch, netlet_sdk::DEFAULT_MAX_MESSAGE_BYTES)),
        Ok(Err(e)) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("netlet host unreachable at {socket}"),
            e.to_string(),
        )),
        Err(_) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("netlet host at {socket} did not answer within {CONNECT_TIMEOUT:?}"),
            "",
        )),
    }
}

/// gRPC status → CNI error, from the code and the structured details (never the text):
/// unreachable or busy → 11; a field of the sandbox (filled from `CNI_*`) → 4 (environment),
/// another field → 7 (configuration); unknown sandbox → 3; anything else → 100 + the gRPC code.
fn from_status(s: tonic::Status) -> CniError {
    let m = s.message().to_string();
    let field = netlet_sdk::validate::error_field(&s).unwrap_or_default();
    let named = cni_name(&field);
    let c = match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => code::TRY_AGAIN_LATER,
        Code::InvalidArgument if named.as_deref().is_some_and(|n| n.starts_with("CNI_")) => {
            code::INVALID_ENV
        }
        Code::InvalidArgument if named.is_none() && field.starts_with("sandbox.") => {
            code::INVALID_ENV
        }
        Code::InvalidArgument => code::INVALID_CONFIG,
        Code::NotFound => code::UNKNOWN_CONTAINER,
        other => code::PLUGIN + other as u32,
    };
    // The runtime's user knows the CNI names: say the field the way the runtime sent it.
    let msg = match named {
        Some(n) => match m.strip_prefix(&format!("{field}:")) {
            Some(why) => format!("{n}:{why}"),
            None => format!("{n}: {m}"),
        },
        None => m,
    };
    CniError::new(c, msg, format!("netlet host answered {:?}", s.code()))
}

/// Where a field of the AttachPod request the shim builds came from in the CNI call.
fn cni_name(field: &str) -> Option<String> {
    const MAPPING: &[(&str, &str)] = &[
        ("host_port", "hostPort"),
        ("container_port", "containerPort"),
        ("host_ip", "hostIP"),
        ("protocol", "protocol"),
    ];
    if let Some(rest) = field.strip_prefix("sandbox.port_mappings") {
        let mut out = format!("runtimeConfig.portMappings{rest}");
        for (ours, theirs) in MAPPING {
            out = out.replace(&format!(".{ours}"), &format!(".{theirs}"));
        }
        return Some(out);
    }
    let direct = [
        ("sandbox.netns_path", "CNI_NETNS"),
        ("sandbox.id", "CNI_CONTAINERID"),
        ("networks[0].interface_name", "CNI_IFNAME"),
        ("networks[0].mac", "runtimeConfig.mac"),
        ("networks[0].bandwidth", "runtimeConfig.bandwidth"),
        ("networks[0].network", "network"),
    ];
    if let Some((_, theirs)) = direct.iter().find(|(ours, _)| *ours == field) {
        return Some(theirs.to_string());
    }
    field
        .strip_prefix("networks[0].ips")
        .map(|rest| format!("runtimeConfig.ips{rest}"))
}

/// The ADD result for `a` in `version`'s shape: the host-side veth, then the pod interface.
fn result(version: &str, a: &Attachment, netns: &str) -> CniResult {
    let mut interfaces = Vec::new();
    if !a.host_interface.is_empty() {
        interfaces.push(Interface {
            name: a.host_interface.clone(),
            mac: a.host_mac.clone(),
            mtu: None,
            sandbox: String::new(),
        });
    }
    let pod_index = interfaces.len();
    interfaces.push(Interface {
        name: a.interface_name.clone(),
        mac: a.mac.clone(),
        mtu: (version == "1.1.0" && a.mtu != 0).then_some(a.mtu),
        sandbox: if a.netns_path.is_empty() {
            netns.to_string()
        } else {
            a.netns_path.clone()
        },
    });
    let v04 = version == "0.4.0";
    let ips = a
        .ips
        .iter()
        .map(|ip| Ip {
            version: v04.then(|| if ip.address.contains(':') { "6" } else { "4" }.to_string()),
            interface: pod_index,
            address: ip.address.clone(),
            gateway: ip.gateway.clone(),
        })
        .collect();
    let routes = a
        .routes
        .iter()
        .map(|r| RouteOut {
            dst: r.destination.clone(),
            gw: r.gateway.clone(),
        })
        .collect();
    let dns = a
        .dns
        .as_ref()
        .map(|d| Dns {
            nameservers: d.nameservers.clone(),
            domain: d.domain.clone(),
            search: d.searches.clone(),
            options: d.options.clone(),
        })
        .unwrap_or_default();
    CniResult {
        cni_version: version.to_string(),
        interfaces,
        ips,
        routes,
        dns,
    }
}

/// CHECK: the addresses in `prevResult` must be the attachment's.
fn check_prev(prev: &Value, a: &Attachment) -> Result<(), CniError> {
    let mut want: Vec<String> = prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str().map(str::to_string))
        .collect();
    let mut have: Vec<String> = a.ips.iter().map(|i| i.address.clone()).collect();
    want.sort();
    have.sort();
    if want != have {
        return Err(CniError::new(
            code::PLUGIN,
            "attachment does not match prevResult",
            format!("prevResult has {want:?}, attached {have:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlet_sdk::proto::{IpConfig, Route};

    fn attachment() -> Attachment {
        Attachment {
            interface_name: "eth0".into(),
            mac: "0a:58:0a:f4:00:02".into(),
            mtu: 1500,
            ips: vec![
                IpConfig {
                    address: "10.244.0.2/24".into(),
                    gateway: "10.244.0.1".into(),
                    ..Default::default()
                },
                IpConfig {
                    address: "fd00::2/64".into(),
                    gateway: "fd00::1".into(),
                    ..Default::default()
                },
            ],
            routes: vec![Route {
                destination: "0.0.0.0/0".into(),
                gateway: "10.244.0.1".into(),
                ..Default::default()
            }],
            host_interface: "veth0123".into(),
            host_mac: "02:00:00:00:00:01".into(),
            netns_path: "/run/netns/p".into(),
            ..Default::default()
        }
    }

    #[test]
    fn results_take_each_versions_shape() {
        let v11 = serde_json::to_value(result("1.1.0", &attachment(), "")).unwrap();
        assert_eq!(v11["interfaces"][1]["mtu"], 1500);
        assert_eq!(v11["ips"][0]["interface"], 1);
        assert!(v11["ips"][0].get("version").is_none());
        let v04 = serde_json::to_value(result("0.4.0", &attachment(), "")).unwrap();
        assert_eq!(v04["ips"][1]["version"], "6");
        assert!(v04["interfaces"][1].get("mtu").is_none());
        assert_eq!(
            v04["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "10.244.0.1"})
        );
    }

    #[test]
    fn status_codes_map_to_cni_codes() {
        assert_eq!(from_status(tonic::Status::unavailable("x")).code, 11);
        assert_eq!(
            from_status(netlet_sdk::validate::invalid("sandbox.netns_path", "x")).code,
            4
        );
        assert_eq!(
            from_status(netlet_sdk::validate::invalid("networks[0].ips[0]", "x")).code,
            7
        );
        // The field comes from the BadRequest detail, not from the text.
        assert_eq!(
            from_status(tonic::Status::invalid_argument("sandbox.netns_path: x")).code,
            7
        );
        // Named as the runtime sent it.
        let e = from_status(netlet_sdk::validate::invalid(
            "sandbox.port_mappings[1].host_port",
            "70000 is not a port (1-65535)",
        ));
        assert_eq!(e.code, 7);
        assert_eq!(
            e.msg,
            "runtimeConfig.portMappings[1].hostPort: 70000 is not a port (1-65535)"
        );
        let e = from_status(netlet_sdk::validate::invalid("sandbox.netns_path", "x"));
        assert_eq!((e.code, e.msg.as_str()), (4, "CNI_NETNS: x"));
        assert_eq!(
            from_status(tonic::Status::resource_exhausted("x")).code,
            108
        );
    }

    #[test]
    fn check_compares_prev_result_addresses() {
        let prev = json!({"ips": [{"address": "fd00::2/64"}, {"address": "10.244.0.2/24"}]});
        check_prev(&prev, &attachment()).unwrap();
        let other = json!({"ips": [{"address": "10.244.0.9/24"}]});
        assert_eq!(check_prev(&other, &attachment()).unwrap_err().code, 100);
    }
}
