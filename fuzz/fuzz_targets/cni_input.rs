//! The CNI shim's input: `CNI_*` environment and the network configuration on stdin, as a
//! runtime hands them over, turned into the host's request and checked as the host would.
//! Input: environment lines (`KEY=VALUE`), a NUL, then stdin.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use netlet_cni::{attach_request, input, spec::Env};

fuzz_target!(|data: &[u8]| {
    let (env_part, stdin) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let vars: HashMap<String, String> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = Env::from(|k| vars.get(k).cloned());
    let _ = env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]);
    let Ok(stdin) = std::str::from_utf8(stdin) else {
        return;
    };
    let _ = input::loose(stdin);
    if let Ok(conf) = input::parse(stdin) {
        let req = attach_request(&env, &conf, &conf.name);
        let _ = netlet_sdk::validate::attach_pod(&req);
    }
});
