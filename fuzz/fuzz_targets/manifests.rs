//! A manifests file: its YAML documents, the Services and EndpointSlices converted to the
//! node's view and checked with ProgramService's rules, the NetworkPolicies converted and
//! checked with ApplyPolicy's, as the manifests watcher does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netlet_host::services::{manifests, view};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(objects) = manifests::parse(text) else {
        return;
    };
    for np in &objects.network_policies {
        let _ = netlet_host::netpol::network_policy(np);
    }
    for pod in &objects.pods {
        let _ = netlet_host::netpol::pod_info(pod);
    }
    let (services, slices) = (objects.services, objects.slices);
    let node = view::NodeInfo {
        name: "node-a".into(),
        zone: "zone-a".into(),
    };
    let slices: Vec<_> = slices.iter().collect();
    for ks in &services {
        let Some(svc) = view::service(ks) else {
            continue;
        };
        if netlet_sdk::validate::service("", &svc).is_err()
            || view::check_node_ports("", &svc, &(30000..=32767)).is_err()
        {
            continue;
        }
        let mut eps = view::endpoints(&svc, &slices, &node);
        for e in &eps {
            let _ = netlet_sdk::validate::endpoint("", e);
        }
        view::categorize(&svc, &mut eps, &node);
    }
});
