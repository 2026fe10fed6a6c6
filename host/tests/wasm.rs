//! The WebAssembly policy engine against the modules of `wasm-policies/`, built from source by
//! `netlet-wasm-build` (the test command builds them into `$NETLET_WASM_DIR`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use netlet_host::wasm::{
    DenyCode, DnsQuery, DnsVerdict, Failure, HostnameRequest, Label, Limits, ModuleSpec, Modules,
    PodIdentity, World, file_sha256,
};

fn modules_dir() -> PathBuf {
    let dir = std::env::var_os("NETLET_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("wasm-policies")
        });
    assert!(
        dir.join("dns-namespace-lists.wasm").exists(),
        "{}: no modules; build them with `cargo run -p netlet-wasm-policies -- --out {0}` \
         (the test command does)",
        dir.display()
    );
    dir
}

fn spec(name: &str, file: &str) -> ModuleSpec {
    ModuleSpec {
        name: name.into(),
        path: modules_dir().join(format!("{file}.wasm")),
        sha256: None,
        fail_open: false,
    }
}

fn engine(specs: Vec<ModuleSpec>) -> Modules {
    engine_with(relaxed(), specs)
}

/// Tests that are not about the deadline give calls more time: this machine is shared by the
/// tests running in parallel, and a call preempted for a millisecond would fail its deadline.
fn relaxed() -> Limits {
    Limits {
        deadline: Duration::from_millis(100),
        ..Limits::default()
    }
}

fn engine_with(limits: Limits, specs: Vec<ModuleSpec>) -> Modules {
    let m = Modules::new(limits).unwrap();
    let errors = m.configure(specs);
    assert!(errors.is_empty(), "load errors: {errors:?}");
    m
}

fn query(ns: Option<&str>, name: &str) -> DnsQuery {
    DnsQuery {
        pod: ns.map(|ns| PodIdentity {
            namespace: ns.into(),
            name: "client".into(),
            labels: vec![Label {
                key: "app".into(),
                value: "web".into(),
            }],
        }),
        client_address: "10.22.0.5".into(),
        name: name.into(),
        qtype: 1,
        qclass: 1,
    }
}

fn pattern_table(file: &str) -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../wasm-policies/testdata")
        .join(file);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn block_module_matches_the_pattern_table() {
    let m = engine(vec![spec("block", "dns-block-log")]);
    let table = pattern_table("patterns.tsv");
    assert!(table.len() > 30);
    for row in table {
        let (pattern, name, want) = (&row[0], &row[1], row[2] == "yes");
        let settings = format!(r#"{{"block": ["{pattern}"], "code": "refused"}}"#);
        assert_eq!(
            m.validate_settings("block", World::DnsPolicy, &settings),
            Ok(Ok(()))
        );
        let d = m
            .check_dns("block", &settings, &query(Some("team-a"), name))
            .unwrap();
        let blocked = d.verdict == DnsVerdict::Deny(DenyCode::Refused);
        assert_eq!(
            blocked, want,
            "pattern {pattern:?} name {name:?}: {}",
            d.reason
        );
        if want {
            assert_eq!(d.reason, format!("blocked by \"{pattern}\""));
        } else {
            assert_eq!(d.verdict, DnsVerdict::Allow);
        }
    }
}

#[test]
fn settings_are_validated_by_the_module() {
    let m = engine(vec![
        spec("lists", "dns-namespace-lists"),
        spec("block", "dns-block-log"),
    ]);
    for row in pattern_table("bad-patterns.tsv") {
        let settings = format!(r#"{{"namespaces": {{"a": {{"allow": ["{}"]}}}}}}"#, row[0]);
        let r = m
            .validate_settings("lists", World::DnsPolicy, &settings)
            .unwrap();
        assert!(r.is_err(), "pattern {:?} ({}) accepted", row[0], row[1]);
    }
    let cases = [
        (
            r#"{"namespaces": {}, "defualt": "deny"}"#,
            "unknown settings key (namespaces, default, deny_code): \"defualt\"",
        ),
        (
            r#"{"default": "maybe"}"#,
            "default must be \"allow\" or \"deny\": \"maybe\"",
        ),
        (
            r#"{"namespaces": {"a": {"allow": ["a..b"]}}}"#,
            "empty label in pattern: \"a..b\"",
        ),
        (
            r#"{"namespaces": {"a": {"permit": []}}}"#,
            "unknown key in a namespace entry (allow, deny): \"permit\"",
        ),
        (r#"{"namespaces": [1]}"#, "expected an object"),
        (
            r#"{"default": "deny"} x"#,
            "trailing characters after the settings object",
        ),
    ];
    for (settings, want) in cases {
        let r = m
            .validate_settings("lists", World::DnsPolicy, settings)
            .unwrap();
        assert_eq!(r, Err(want.to_string()), "settings {settings}");
    }
    assert_eq!(
        m.validate_settings(
            "block",
            World::DnsPolicy,
            r#"{"block": ["ok.com"], "code": "no"}"#
        ),
        Ok(Err(
            "code must be \"nxdomain\" or \"refused\": \"no\"".into()
        ))
    );
    // A module of the other world is not asked.
    assert!(matches!(
        m.validate_settings("lists", World::HostnameGrant, "{}"),
        Err(Failure::WrongWorld { .. })
    ));
}

#[test]
fn namespace_lists_decide_per_namespace() {
    let m = engine(vec![spec("lists", "dns-namespace-lists")]);
    let settings = r#"{
        "namespaces": {
            "shop": {"allow": ["*.payments.example", "**.svc.cluster.local"], "deny": ["evil.payments.example"]},
            "*": {"allow": ["**.svc.cluster.local"]}
        },
        "default": "deny",
        "deny_code": "refused"
    }"#;
    assert_eq!(
        m.validate_settings("lists", World::DnsPolicy, settings),
        Ok(Ok(()))
    );
    let refused = DnsVerdict::Deny(DenyCode::Refused);
    let cases: &[(Option<&str>, &str, DnsVerdict, &str)] = &[
        (
            Some("shop"),
            "api.payments.example.",
            DnsVerdict::Allow,
            "namespace shop: allowed by \"*.payments.example\"",
        ),
        (
            Some("shop"),
            "evil.payments.example.",
            refused.clone(),
            "namespace shop: denied by \"evil.payments.example\"",
        ),
        (
            Some("shop"),
            "db.shop.svc.cluster.local.",
            DnsVerdict::Allow,
            "namespace shop: allowed by \"**.svc.cluster.local\"",
        ),
        (
            Some("shop"),
            "google.com.",
            refused.clone(),
            "namespace shop: no pattern matched, default deny",
        ),
        (
            Some("blog"),
            "db.blog.svc.cluster.local.",
            DnsVerdict::Allow,
            "namespace * for blog: allowed by \"**.svc.cluster.local\"",
        ),
        (
            Some("blog"),
            "api.payments.example.",
            refused.clone(),
            "namespace * for blog: no pattern matched, default deny",
        ),
        (
            None,
            "api.payments.example.",
            refused.clone(),
            "no pod: *: no pattern matched, default deny",
        ),
    ];
    for (ns, name, verdict, reason) in cases {
        let d = m.check_dns("lists", settings, &query(*ns, name)).unwrap();
        assert_eq!(
            (&d.verdict, d.reason.as_str()),
            (verdict, *reason),
            "{ns:?} {name}"
        );
    }
    let d = m
        .check_dns(
            "lists",
            r#"{"default": "allow", "deny_code": "nxdomain"}"#,
            &query(Some("x"), "a.com."),
        )
        .unwrap();
    assert_eq!(d.verdict, DnsVerdict::Allow);
    let d = m
        .check_dns("lists", r#"{}"#, &query(Some("x"), "a.com."))
        .unwrap();
    assert_eq!(
        d.verdict,
        DnsVerdict::Deny(DenyCode::Nxdomain),
        "default deny, NXDOMAIN"
    );
}

#[test]
fn hostname_module_answers_its_world() {
    let m = engine(vec![spec("suffix", "hostname-namespace-suffix")]);
    let settings = r#"{"suffix": "apps.example.com"}"#;
    assert_eq!(
        m.validate_settings("suffix", World::HostnameGrant, settings),
        Ok(Ok(()))
    );
    assert_eq!(
        m.validate_settings("suffix", World::HostnameGrant, "{}"),
        Ok(Err("suffix is required".into()))
    );
    let req = |ns: &str, host: &str| HostnameRequest {
        namespace: ns.into(),
        namespace_labels: vec![],
        hostname: host.into(),
        object_kind: "HTTPRoute".into(),
        object_name: "r".into(),
    };
    for (ns, host, allowed) in [
        ("shop", "shop.apps.example.com", true),
        ("shop", "www.shop.apps.example.com", true),
        ("shop", "*.shop.apps.example.com", true),
        ("shop", "blog.apps.example.com", false),
        ("shop", "xshop.apps.example.com", false),
        ("shop", "apps.example.com", false),
        ("shop", "shop.example.com", false),
    ] {
        let d = m
            .check_hostname("suffix", settings, &req(ns, host))
            .unwrap();
        assert_eq!(d.allowed, allowed, "{ns} {host}: {}", d.reason);
    }
    assert!(matches!(
        m.check_dns("suffix", settings, &query(None, "a.")),
        Err(Failure::WrongWorld { .. })
    ));
}

/// Each hostile module is stopped at its limit, counted, and named by kind, while queries to a
/// well-behaved module on other threads keep being answered correctly.
#[test]
fn hostile_modules_are_stopped_and_others_keep_answering() {
    let limits = Limits {
        deadline: Duration::from_millis(20),
        ..Limits::default()
    };
    let m = Arc::new(engine_with(
        limits,
        vec![
            spec("lists", "dns-namespace-lists"),
            spec("loop", "hostile-loop"),
            spec("memory", "hostile-memory"),
            spec("trap", "hostile-trap"),
            spec("oversized", "hostile-oversized"),
        ],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let good = {
        let (m, stop, answered) = (m.clone(), stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let settings = r#"{"namespaces": {"a": {"allow": ["ok.example"]}}}"#;
            while !stop.load(Ordering::Relaxed) {
                let d = m
                    .check_dns("lists", settings, &query(Some("a"), "ok.example."))
                    .unwrap();
                assert_eq!(d.verdict, DnsVerdict::Allow);
                let d = m
                    .check_dns("lists", settings, &query(Some("a"), "no.example."))
                    .unwrap();
                assert_eq!(d.verdict, DnsVerdict::Deny(DenyCode::Nxdomain));
                answered.fetch_add(2, Ordering::Relaxed);
            }
        })
    };
    let before = answered.load(Ordering::Relaxed);
    for _ in 0..3 {
        let q = query(Some("a"), "x.example.");
        assert_eq!(
            m.check_dns("loop", "{}", &q),
            Err(Failure::Deadline(Duration::from_millis(20)))
        );
        assert_eq!(
            m.check_dns("memory", "{}", &q),
            Err(Failure::MemoryLimit(16 << 20))
        );
        assert!(
            matches!(m.check_dns("trap", "{}", &q), Err(Failure::Trap(t)) if t.contains("unreachable"))
        );
        assert_eq!(
            m.check_dns("oversized", "{}", &q),
            Err(Failure::BadOutput("reason of 1048576 bytes".into()))
        );
    }
    // The good module answered throughout (poll: the other thread may not have run yet).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::Relaxed) <= before + 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the good module stopped answering"
        );
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    good.join().unwrap();

    let status = m.status();
    let count = |name: &str| {
        let (_, c) = status.iter().find(|(s, _)| s.spec.name == name).unwrap();
        let c = c.counters();
        (
            c.calls.load(Ordering::Relaxed),
            c.deadline.load(Ordering::Relaxed),
            c.memory.load(Ordering::Relaxed),
            c.trap.load(Ordering::Relaxed),
            c.bad_output.load(Ordering::Relaxed),
        )
    };
    assert_eq!(count("loop"), (3, 3, 0, 0, 0));
    assert_eq!(count("memory"), (3, 0, 3, 0, 0));
    assert_eq!(count("trap"), (3, 0, 0, 3, 0));
    assert_eq!(count("oversized"), (3, 0, 0, 0, 3));
}

/// A rewrite verdict goes through; one whose target is no DNS name is bad output.
#[test]
fn rewrites_are_checked() {
    let m = engine(vec![
        spec("rw", "test-rewrite"),
        spec("bad", "hostile-bad-rewrite"),
    ]);
    let d = m
        .check_dns("rw", "{}", &query(Some("a"), "x.example."))
        .unwrap();
    assert_eq!(
        (d.verdict, d.reason.as_str()),
        (
            DnsVerdict::Rewrite("web.shop.svc.cluster.local.".into()),
            "rewritten"
        )
    );
    assert!(matches!(
        m.check_dns("bad", "{}", &query(Some("a"), "x.example.")),
        Err(Failure::BadOutput(why)) if why.starts_with("rewrite target: label \"not a dns name")
    ));
    // Through a DnsPolicy: the decision says rewrite, to the module's name.
    let p = netlet_host::dns::policy::Policies::new([netlet_sdk::proto::DnsPolicy {
        key: Some(netlet_sdk::proto::PolicyKey {
            kind: netlet_sdk::proto::PolicyKind::DnsPolicy as i32,
            namespace: String::new(),
            name: "rewrite-all".into(),
        }),
        module: "rw".into(),
        ..Default::default()
    }]);
    let d = p.decide(&m, None, &"192.0.2.9", "x.example.", 1);
    assert_eq!(
        (d.action, d.policy.as_str(), d.module.as_str()),
        (
            netlet_host::dns::policy::Action::Rewrite("web.shop.svc.cluster.local.".into()),
            "rewrite-all",
            "rw"
        )
    );
}

#[test]
fn the_default_deadline_is_one_millisecond() {
    let m = engine_with(Limits::default(), vec![spec("loop", "hostile-loop")]);
    let start = std::time::Instant::now();
    let r = m.check_dns("loop", "{}", &query(None, "a."));
    assert_eq!(r, Err(Failure::Deadline(Duration::from_millis(1))));
    // Informational: how long the endless loop ran before it was stopped.
    eprintln!("endless loop stopped after {:?}", start.elapsed());
}

#[test]
fn a_module_asking_for_too_much_memory_is_refused_at_load() {
    let m = Modules::new(Limits::default()).unwrap();
    let errors = m.configure(vec![spec("huge", "hostile-huge-memory")]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].1.contains("exceeds the limit"), "{errors:?}");
    assert!(matches!(
        m.check_dns("huge", "{}", &query(None, "a.")),
        Err(Failure::NotLoaded { .. })
    ));
    assert!(matches!(
        m.check_dns("nope", "{}", &query(None, "a.")),
        Err(Failure::Unknown(_))
    ));
}

#[test]
fn a_pinned_digest_must_match() {
    let mut s = spec("lists", "dns-namespace-lists");
    let real = file_sha256(&s.path).unwrap();
    s.sha256 = Some("00".repeat(32));
    let m = Modules::new(Limits::default()).unwrap();
    let errors = m.configure(vec![s.clone()]);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].1.contains(&format!(
        "sha256 {real} is not the pinned {}",
        "00".repeat(32)
    )));
    assert!(m.sha256("lists").is_none());
    s.sha256 = Some(real.to_uppercase());
    assert!(m.configure(vec![s]).is_empty());
    assert_eq!(m.sha256("lists"), Some(real));
}

/// A module file replaced while queries run: every query is answered, by the old module until the
/// new one is in, then by the new one.
#[test]
fn hot_reload_drops_no_query() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.wasm");
    std::fs::copy(modules_dir().join("dns-block-log.wasm"), &path).unwrap();
    let m = Arc::new(Modules::new(relaxed()).unwrap());
    assert!(
        m.configure(vec![ModuleSpec {
            name: "p".into(),
            path: path.clone(),
            sha256: None,
            fail_open: false
        }])
        .is_empty()
    );
    // One settings text for both: block-log blocks "evil.example." with it; namespace-lists
    // refuses its "block" key and says so. A panic in the worker is a dropped or wrong answer.
    let stop = Arc::new(AtomicBool::new(false));
    let (old, new) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let worker = {
        let (m, stop, old, new) = (m.clone(), stop.clone(), old.clone(), new.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match m.check_dns(
                    "p",
                    r#"{"block": ["evil.example"]}"#,
                    &query(Some("a"), "evil.example."),
                ) {
                    Ok(d) if d.reason == "blocked by \"evil.example\"" => {
                        old.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(d) if d.reason.starts_with("settings unreadable") => {
                        new.fetch_add(1, Ordering::Relaxed)
                    }
                    other => panic!("unexpected answer {other:?}"),
                };
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while old.load(Ordering::Relaxed) < 50 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::yield_now();
    }
    // Replace the file the way a deployment does: write beside it, rename over it.
    let tmp = dir.path().join("policy.wasm.new");
    std::fs::copy(modules_dir().join("dns-namespace-lists.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(m.reload().is_empty());
    let at_swap = new.load(Ordering::Relaxed);
    while new.load(Ordering::Relaxed) < at_swap + 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new module never answered"
        );
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    let status = m.status();
    assert_eq!(status[0].1.counters().reloads.load(Ordering::Relaxed), 1);
    assert_eq!(status[0].1.counters().failures(), 0);
    assert_eq!(status[0].0.sha256, Some(file_sha256(&path).unwrap()));
}
