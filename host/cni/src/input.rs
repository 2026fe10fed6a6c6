//! The network configuration as runtimes really send it. Go runtimes and libraries (containerd's
//! go-cni, CRI-O's ocicni) fill capability arguments from Go structs, so keys arrive with Go's
//! field names (`{"HostPort":12000,"ContainerPort":80,"Protocol":"tcp","HostIP":""}`), and Go
//! plugins accept them because Go's JSON decoding matches keys without regard to case. This
//! module does the same before decoding: a key that matches a known field only when case is
//! ignored is renamed to it (an exact match wins, as in Go); unknown keys stay and are ignored.
//! A value of the wrong type is refused naming its path in the configuration.

use serde_json::Value;

use crate::spec::{CniError, NetConf, code};

/// The keys this plugin reads, per place in the configuration.
const TOP: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "socket",
    "network",
    "runtimeConfig",
    "prevResult",
    "cni.dev/valid-attachments",
];
const RUNTIME_CONFIG: &[&str] = &["portMappings", "bandwidth", "ips", "mac"];
const PORT_MAPPING: &[&str] = &["hostPort", "containerPort", "protocol", "hostIP"];
const BANDWIDTH: &[&str] = &["ingressRate", "ingressBurst", "egressRate", "egressBurst"];
const VALID_ATTACHMENT: &[&str] = &["containerID", "ifname"];

/// Renames the keys of `obj` that match one of `known` ignoring ASCII case, unless the exact key
/// is present too (Go prefers the exact match).
fn fold(obj: &mut Value, known: &[&str]) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let renames: Vec<(String, &str)> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .filter_map(|k| {
            let want = known.iter().find(|n| n.eq_ignore_ascii_case(k))?;
            (!map.contains_key(*want)).then(|| (k.clone(), *want))
        })
        .collect();
    for (from, to) in renames {
        if let Some(v) = map.remove(&from) {
            map.insert(to.to_string(), v);
        }
    }
}

fn fold_each(list: Option<&mut Value>, known: &[&str]) {
    if let Some(items) = list.and_then(Value::as_array_mut) {
        for item in items {
            fold(item, known);
        }
    }
}

/// The configuration's keys as this plugin names them.
pub fn canonical(mut v: Value) -> Value {
    fold(&mut v, TOP);
    if let Some(rc) = v.get_mut("runtimeConfig") {
        fold(rc, RUNTIME_CONFIG);
        fold_each(rc.get_mut("portMappings"), PORT_MAPPING);
        if let Some(b) = rc.get_mut("bandwidth") {
            fold(b, BANDWIDTH);
        }
    }
    fold_each(v.get_mut("cni.dev/valid-attachments"), VALID_ATTACHMENT);
    v
}

/// Decodes stdin: not JSON is error 6 (decode); a value of the wrong type is error 7 (invalid
/// configuration) naming its path, e.g. `runtimeConfig.portMappings[0].hostPort`.
pub fn parse(stdin: &str) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    serde_path_to_error::deserialize(canonical(v)).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("{}: {}", e.path(), e.inner()),
            "in the network configuration on stdin",
        )
    })
}

/// What DEL can still use from a configuration that does not decode: its version and socket,
/// when they are there.
pub fn loose(stdin: &str) -> NetConf {
    let v = serde_json::from_str::<Value>(stdin)
        .map(canonical)
        .unwrap_or_default();
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    NetConf {
        cni_version: s("cniVersion").unwrap_or_else(|| "1.1.0".into()),
        name: s("name").unwrap_or_default(),
        socket: s("socket"),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // What containerd 1.6 (go-cni) writes for a sandbox with a hostPort, key for key.
    const CONTAINERD: &str = r#"{"cniVersion":"1.0.0","name":"netlet","type":"netlet",
        "runtimeConfig":{"portMappings":[{"HostPort":12000,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
        "bandwidth":{"IngressRate":1000000,"IngressBurst":0,"EgressRate":2000000,"EgressBurst":0}}}"#;

    #[test]
    fn go_field_names_are_understood() {
        let c = parse(CONTAINERD).unwrap();
        let pm = &c.runtime_config.port_mappings[0];
        assert_eq!((pm.host_port, pm.container_port), (12000, 80));
        assert_eq!(pm.protocol, "tcp");
        let b = c.runtime_config.bandwidth.unwrap();
        assert_eq!((b.ingress_rate, b.egress_rate), (1_000_000, 2_000_000));
    }

    #[test]
    fn the_exact_key_wins_and_unknown_keys_are_ignored() {
        let c = parse(
            &json!({"cniVersion": "1.0.0", "name": "n", "Name": "other", "extra": {"x": 1},
                "runtimeConfig": {"portMappings": [{"hostPort": 1, "HOSTPORT": 2, "containerPort": 3}]}})
            .to_string(),
        )
        .unwrap();
        assert_eq!(c.name, "n");
        assert_eq!(c.runtime_config.port_mappings[0].host_port, 1);
    }

    #[test]
    fn a_wrong_value_names_its_path() {
        let e = parse(
            &json!({"cniVersion": "1.0.0", "name": "n",
                "runtimeConfig": {"portMappings": [{"HostPort": "twelve", "ContainerPort": 80}]}})
            .to_string(),
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(
            e.msg.starts_with("runtimeConfig.portMappings[0].hostPort:"),
            "{e:?}"
        );
        assert_eq!(parse("{nope").unwrap_err().code, code::DECODE);
    }

    #[test]
    fn del_keeps_what_it_can() {
        let c = loose(
            r#"{"cniVersion":"0.4.0","Socket":"/x.sock","runtimeConfig":{"portMappings":[{"HostPort":"x"}]}}"#,
        );
        assert_eq!(
            (c.cni_version.as_str(), c.socket.as_deref()),
            ("0.4.0", Some("/x.sock"))
        );
        assert_eq!(loose("not json").cni_version, "1.1.0");
    }
}
