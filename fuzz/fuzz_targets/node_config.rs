//! The NodeConfig YAML, parsed and turned into settings as `netlet serve --config` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netlet_host::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = config::parse("fuzz.yaml", text) {
        let _ = cfg.settings("fuzz.yaml", config::Overrides::default());
    }
});
