//! Hostname grants and claims through the admission webhook, as the API server would reach it:
//! AdmissionReview v1 requests sent over real HTTPS by curl, verifying certificates openssl
//! issued for the test. The host runs in a namespace standing for the node; grants, namespaces
//! and claiming objects come from its manifests directory. Expected verdicts and reasons are
//! written from the rules (`host/src/hostnames.rs`'s module documentation), not read back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use netlet_testbed::harness::{Node, bin, privileged, tool, wait_until, wasm_dir};
use netlet_testbed::k8s::issue_tls;
use serde_json::{Value, json};

const LISTEN: &str = "127.0.0.1:9443";

/// A node whose host serves the webhook.
struct Webhook {
    node: Node,
    dir: tempfile::TempDir,
    manifests: PathBuf,
    ca: PathBuf,
}

impl Webhook {
    /// `no_grant` mode, the manifests (file name, YAML), and extra NodeConfig lines.
    async fn start(no_grant: &str, manifests: &[(&str, &str)], extra: &str) -> Option<Self> {
        if !privileged("hostname webhook") || tool("openssl", "hostname webhook").is_none() {
            return None;
        }
        tool("curl", "hostname webhook")?;
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = issue_tls(dir.path(), "one");
        std::fs::copy(&cert, dir.path().join("tls.crt")).unwrap();
        std::fs::copy(&key, dir.path().join("tls.key")).unwrap();
        let m = dir.path().join("manifests");
        std::fs::create_dir(&m).unwrap();
        for (f, y) in manifests {
            std::fs::write(m.join(f), y).unwrap();
        }
        // One node namespace per host: tests run side by side in one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = format!(
            "hn{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let node = Node::start(
            &tag,
            "",
            &format!(
                "manifestsDir: {}\nhostnames:\n  noGrant: {no_grant}\n  webhook: {{listen: \"{LISTEN}\", certFile: {}, keyFile: {}}}\n{extra}",
                m.display(),
                dir.path().join("tls.crt").display(),
                dir.path().join("tls.key").display()
            ),
        )
        .await;
        Some(Self {
            node,
            manifests: m,
            ca,
            dir,
        })
    }

    /// POSTs `body` over HTTPS (verifying with `ca`): the HTTP status and body, or curl's
    /// error. curl gives up after 3 s, the `timeoutSeconds` deploy/ registers the webhook
    /// with.
    fn post_with(&self, body: &str, ca: &Path) -> Result<(u16, String), String> {
        let mut child = self
            .node
            .command(Path::new("/usr/bin/curl"))
            .args(["-sS", "--max-time", "3", "--cacert"])
            .arg(ca)
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
                "-w",
                "\n%{http_code}",
            ])
            .arg(format!("https://{LISTEN}/validate"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        Ok((code.parse().unwrap(), body.to_string()))
    }

    fn post(&self, body: &str) -> (u16, String) {
        self.post_with(body, &self.ca).expect("webhook answered")
    }

    /// Sends an admission request: (allowed, the denial's message, warnings).
    fn review(&self, request: Value) -> (bool, String, Vec<String>) {
        let uid = request["uid"].as_str().unwrap().to_string();
        let (code, body) = self.post(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
                .to_string(),
        );
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{body}");
        assert_eq!(v["kind"], "AdmissionReview", "{body}");
        let r = &v["response"];
        assert_eq!(r["uid"], uid.as_str(), "the response answers the request");
        let allowed = r["allowed"].as_bool().unwrap();
        if !allowed {
            assert_eq!(r["status"]["code"], 403, "{body}");
        }
        let warnings = r["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str().map(str::to_string))
            .collect();
        (
            allowed,
            r["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            warnings,
        )
    }

    /// Sends the CREATE of an HTTPRoute `ns/name` created at `created` claiming `host`.
    fn create(
        &self,
        ns: &str,
        name: &str,
        created: Option<&str>,
        host: &str,
    ) -> (bool, String, Vec<String>) {
        self.review(route("CREATE", ns, name, created, &[host], None))
    }

    /// Waits until the webhook answers (the host read its manifests).
    async fn ready(&self) {
        let probe = route("CREATE", "ready", "probe", None, &["probe.invalid"], None);
        wait_until("webhook answering", Duration::from_secs(20), || {
            let r = self.post_with(
                &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": probe}).to_string(),
                &self.ca,
            );
            async move { matches!(r, Ok((200, _))).then_some(()) }
        })
        .await;
    }

    /// `netletctl hostnames -o json`.
    fn audit(&self) -> Value {
        let out = Command::new(bin("netletctl"))
            .arg("--socket")
            .arg(&self.node.host.socket)
            .args(["-o", "json", "hostnames"])
            .output()
            .expect("netletctl hostnames");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// An admission request for an HTTPRoute `ns/name` created at `created` (None: not set, as in a
/// dry run) with `hostnames`; `old` hostnames make it an UPDATE's.
fn route(
    op: &str,
    ns: &str,
    name: &str,
    created: Option<&str>,
    hostnames: &[&str],
    old: Option<&[&str]>,
) -> Value {
    let obj = |hosts: &[&str]| {
        let mut meta = json!({"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}")});
        if let Some(c) = created {
            meta["creationTimestamp"] = json!(c);
        }
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta,
               "spec": {"parentRefs": [{"name": "gw"}], "hostnames": hosts}})
    };
    let gvk = json!({"group": "gateway.networking.k8s.io", "version": "v1", "kind": "HTTPRoute"});
    let gvr =
        json!({"group": "gateway.networking.k8s.io", "version": "v1", "resource": "httproutes"});
    json!({
        "uid": format!("req-{ns}-{name}-{op}-{}", hostnames.join(",")),
        "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": name, "namespace": ns, "operation": op,
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
        "object": obj(hostnames),
        "oldObject": old.map(obj),
        "dryRun": false,
    })
}

const GRANTS: &str = "\
apiVersion: netlet.io/v1alpha1
kind: HostnameGrant
metadata: {name: shop}
spec: {namespaces: [shop], hostnames: ['*.shop.example.com']}
---
apiVersion: netlet.io/v1alpha1
kind: HostnameGrant
metadata: {name: payments}
spec:
  namespaceSelector: {matchLabels: {team: payments}}
  hostnames: [pay.example.com]
---
apiVersion: v1
kind: Namespace
metadata: {name: pay-eu, labels: {team: payments}}
---
apiVersion: v1
kind: Namespace
metadata: {name: blog, labels: {team: content}}
";

/// Gateway API wildcards (one or more labels, never the apex), namespaces granted by name and
/// by label, and the no-grant modes; each denial says why.
#[tokio::test(flavor = "multi_thread")]
async fn grants_decide_admission() {
    let Some(w) = Webhook::start("deny", &[("grants.yaml", GRANTS)], "").await else {
        return;
    };
    w.ready().await;
    let t = Some("2026-01-01T00:00:00Z");
    for (ns, host, allowed, why) in [
        ("shop", "www.shop.example.com", true, ""),
        ("shop", "a.b.shop.example.com", true, ""),
        // The apex is not under the wildcard, and no other grant covers it.
        (
            "shop",
            "shop.example.com",
            false,
            "netlet: hostname \"shop.example.com\": no grant covers \"shop.example.com\" (hostnames.noGrant: deny)",
        ),
        (
            "blog",
            "www.shop.example.com",
            false,
            "netlet: hostname \"www.shop.example.com\": no grant lets namespace \"blog\" use \"www.shop.example.com\" (it is governed by shop)",
        ),
        // By label: pay-eu has team=payments, blog has not.
        ("pay-eu", "pay.example.com", true, ""),
        (
            "blog",
            "pay.example.com",
            false,
            "netlet: hostname \"pay.example.com\": no grant lets namespace \"blog\" use \"pay.example.com\" (it is governed by payments)",
        ),
    ] {
        let (a, m, _) = w.review(route("CREATE", ns, &format!("r-{host}"), t, &[host], None));
        assert_eq!((a, m.as_str()), (allowed, why), "{ns} {host}");
    }
    // One object, two names: one denied refuses the object, naming that one.
    let (a, m, _) = w.review(route(
        "CREATE",
        "shop",
        "two",
        t,
        &["ok.shop.example.com", "pay.example.com"],
        None,
    ));
    assert!(!a);
    assert_eq!(
        m,
        "netlet: hostname \"pay.example.com\": no grant lets namespace \"shop\" use \"pay.example.com\" (it is governed by payments)"
    );
    // Deleting is never refused; a kind that claims no hostname is not decided.
    let mut del = route("DELETE", "blog", "x", t, &["pay.example.com"], None);
    del["oldObject"] = del["object"].take();
    assert!(w.review(del).0);
    let mut cm = route("CREATE", "blog", "cm", t, &["pay.example.com"], None);
    cm["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    cm["object"] = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "blog"}, "data": {"hostnames": "pay.example.com"}});
    assert!(w.review(cm).0);

    // Audit mode: a name no grant covers is allowed with a warning; governed names still
    // follow their grants.
    let a = Webhook::start("audit", &[("grants.yaml", GRANTS)], "")
        .await
        .unwrap();
    a.ready().await;
    let (ok, _, warnings) = a.create("blog", "free", t, "blog.example.org");
    assert!(ok);
    assert_eq!(
        warnings,
        [
            "netlet: hostname \"blog.example.org\": no grant covers \"blog.example.org\"; allowed for audit only (hostnames.noGrant: audit)"
        ]
    );
    assert!(!a.create("blog", "pay", t, "pay.example.com").0);
}

/// Bodies that are not AdmissionReviews get a 400 saying why (or 405, 413), and the webhook
/// goes on answering.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_reviews_get_clear_errors() {
    let Some(w) = Webhook::start("deny", &[("grants.yaml", GRANTS)], "").await else {
        return;
    };
    w.ready().await;
    for (body, code, starts) in [
        ("not json", 400, "not an AdmissionReview: expected ident"),
        (
            "{}",
            400,
            "not an AdmissionReview: missing field `apiVersion`",
        ),
        (
            r#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#,
            400,
            "apiVersion/kind: admission.k8s.io/v1beta1/AdmissionReview is not admission.k8s.io/v1 AdmissionReview",
        ),
        (
            r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
            400,
            "request: required in an AdmissionReview sent to a webhook",
        ),
        (
            r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}"#,
            400,
            "not an AdmissionReview: invalid type: integer `7`, expected a string",
        ),
    ] {
        let (c, b) = w.post(body);
        assert_eq!(c, code, "{body}: {b}");
        assert!(b.starts_with(starts), "{body}: {b}");
    }
    let huge = format!(
        r#"{{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "pad": "{}"}}"#,
        "x".repeat(4 << 20)
    );
    assert_eq!(w.post(&huge).0, 413);
    // Still deciding.
    let t = Some("2026-01-01T00:00:00Z");
    assert!(w.create("shop", "ok", t, "www.shop.example.com").0);
}

const RACE_GRANT: &str = "\
apiVersion: netlet.io/v1alpha1
kind: HostnameGrant
metadata: {name: shared}
spec: {namespaces: [team-a, team-b], hostnames: ['*.example.com']}
";

/// Of two namespaces claiming one name the older claim wins, whatever order the requests
/// arrive in; a namespace reuses its own names; an update keeps its claims but an edit cannot
/// take a name another holds; a name moves when the grant says so; the audit lists what
/// violates.
#[tokio::test(flavor = "multi_thread")]
async fn the_older_claim_wins() {
    // team-b's Ingress has held held.example.com since 2020 (a manifest, as a watch would
    // bring it).
    let held = "\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: team-b, creationTimestamp: '2020-05-01T10:00:00Z'}
spec: {rules: [{host: held.example.com}]}
";
    let Some(w) = Webhook::start(
        "deny",
        &[("grant.yaml", RACE_GRANT), ("held.yaml", held)],
        "",
    )
    .await
    else {
        return;
    };
    w.ready().await;
    let (old, new) = (Some("2026-03-01T10:00:00Z"), Some("2026-03-01T10:00:07Z"));
    // Newer request first: both admitted (the older one is older), and the newer one's
    // namespace is refused from then on.
    assert!(w.create("team-a", "late", new, "one.example.com").0);
    assert!(w.create("team-b", "early", old, "one.example.com").0);
    let (a, m, _) = w.create("team-a", "again", new, "one.example.com");
    assert!(!a);
    assert_eq!(
        m,
        "netlet: hostname \"one.example.com\": \"one.example.com\" is held by team-b/HTTPRoute/early since 2026-03-01T10:00:00Z"
    );
    // Older request first: the newer is refused at once. Same winner.
    assert!(w.create("team-b", "early", old, "two.example.com").0);
    let (a, m, _) = w.create("team-a", "late", new, "two.example.com");
    assert!(!a);
    assert!(
        m.ends_with("is held by team-b/HTTPRoute/early since 2026-03-01T10:00:00Z"),
        "{m}"
    );
    // Its own namespace reuses it.
    assert!(w.create("team-b", "other", new, "two.example.com").0);

    // A claim a source holds (the Ingress).
    let (a, m, _) = w.create("team-a", "r", new, "held.example.com");
    assert!(!a);
    assert!(
        m.ends_with("is held by team-b/Ingress/web since 2020-05-01T10:00:00Z"),
        "{m}"
    );
    // An object old enough to be older than a claim cannot take its name by an edit: a name
    // added by an UPDATE is as new as the request.
    let ancient = Some("2019-01-01T00:00:00Z");
    assert!(w.create("team-a", "ancient", ancient, "a.example.com").0);
    let (a, _, _) = w.review(route(
        "UPDATE",
        "team-a",
        "ancient",
        ancient,
        &["a.example.com", "held.example.com"],
        Some(&["a.example.com"]),
    ));
    assert!(!a, "an edit took a held name");
    // An update keeping its names keeps its claims.
    assert!(
        w.review(route(
            "UPDATE",
            "team-a",
            "ancient",
            ancient,
            &["a.example.com"],
            Some(&["a.example.com"]),
        ))
        .0
    );

    // The audit: the Ingress is allowed; a team-a Route a manifest brings, newer than the
    // Ingress, is listed as denied with the holder.
    std::fs::write(
        w.manifests.join("late.yaml"),
        "apiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {name: r, namespace: team-a, creationTimestamp: '2024-01-01T00:00:00Z'}\nspec: {host: held.example.com, to: {kind: Service, name: web}}\n",
    )
    .unwrap();
    let claims = wait_until(
        "the audit lists both claims",
        Duration::from_secs(20),
        || {
            let a = w.audit();
            async move {
                (a["claims"].as_array().map(Vec::len) == Some(2)).then_some(a["claims"].clone())
            }
        },
    )
    .await;
    let view: Vec<(String, bool, String)> = claims
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!(
                    "{}/{}/{} {}",
                    c["namespace"].as_str().unwrap(),
                    c["kind"].as_str().unwrap(),
                    c["name"].as_str().unwrap(),
                    c["since"].as_str().unwrap()
                ),
                c["allowed"].as_bool().unwrap(),
                c["heldBy"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            (
                "team-b/Ingress/web 2020-05-01T10:00:00Z".to_string(),
                true,
                String::new()
            ),
            (
                "team-a/Route/r 2024-01-01T00:00:00Z".to_string(),
                false,
                "team-b/Ingress/web".to_string()
            ),
        ]
    );

    // CheckHostname on the socket makes the same decision for a claim given with its object
    // and age.
    let c = w.node.host.clients().await;
    let check = |host: &'static str, since: i64| {
        let mut c = c.clone();
        async move {
            c.policy
                .check_hostname(netlet_sdk::proto::CheckHostnameRequest {
                    namespace: "team-a".into(),
                    hostname: host.into(),
                    object_kind: "Route".into(),
                    object_name: "other".into(),
                    claimed_since: Some(prost_types::Timestamp {
                        seconds: since,
                        nanos: 0,
                    }),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    // 2024-01-01T00:00:00Z, against the Ingress of 2020-05-01T10:00:00Z.
    let r = check("Held.Example.com.", 1_704_067_200).await;
    assert_eq!(
        (
            r.allowed,
            r.held_by.as_str(),
            r.held_since.map(|t| t.seconds)
        ),
        (false, "team-b/Ingress/web", Some(1_588_327_200))
    );
    // Older than the Ingress: it would hold the name.
    let r = check("held.example.com", 1_500_000_000).await;
    assert!(r.allowed, "{r:?}");

    // The grant moves the name: held.example.com now only for team-a. team-b's claim no longer
    // holds it, and team-a may have it.
    std::fs::write(
        w.manifests.join("move.yaml"),
        "apiVersion: netlet.io/v1alpha1\nkind: HostnameGrant\nmetadata: {name: moved}\nspec: {namespaces: [team-a], hostnames: [held.example.com]}\n",
    )
    .unwrap();
    std::fs::write(
        w.manifests.join("grant.yaml"),
        RACE_GRANT.replace(
            "'*.example.com'",
            "one.example.com, two.example.com, a.example.com",
        ),
    )
    .unwrap();
    wait_until("the name moved", Duration::from_secs(20), || {
        let r = w.create("team-a", "r2", new, "held.example.com");
        async move { r.0.then_some(()) }
    })
    .await;
    let (a, m, _) = w.create("team-b", "r3", new, "held.example.com");
    assert!(!a);
    assert!(
        m.contains("no grant lets namespace \"team-b\" use \"held.example.com\""),
        "{m}"
    );
}

/// A grant's module decides by its own rule; a module that traps or loops gets its
/// configured failure verdict, and the webhook still answers within the API server's
/// timeout.
#[tokio::test(flavor = "multi_thread")]
async fn modules_decide_and_fail_in_time() {
    let m = wasm_dir();
    let extra = format!(
        "policyModules:\n- {{name: suffix, file: {}}}\n- {{name: trap, file: {}, failure: open}}\n- {{name: loop, file: {}, failure: closed}}\nwasm: {{deadline: 20ms}}\n",
        m.join("hostname-namespace-suffix.wasm").display(),
        m.join("hostile-hostname-trap.wasm").display(),
        m.join("hostile-hostname-loop.wasm").display(),
    );
    let grants = "\
apiVersion: netlet.io/v1alpha1
kind: HostnameGrant
metadata: {name: apps}
spec: {namespaces: ['*'], hostnames: ['*.apps.example.com'], module: suffix, moduleSettings: {suffix: apps.example.com}}
---
apiVersion: netlet.io/v1alpha1
kind: HostnameGrant
metadata: {name: buggy}
spec: {namespaces: ['*'], hostnames: ['*.trap.example.com'], module: trap}
---
apiVersion: netlet.io/v1alpha1
kind: HostnameGrant
metadata: {name: spinning}
spec: {namespaces: ['*'], hostnames: ['*.loop.example.com'], module: loop}
";
    let Some(w) = Webhook::start("deny", &[("grants.yaml", grants)], &extra).await else {
        return;
    };
    w.ready().await;
    let t = Some("2026-01-01T00:00:00Z");
    assert!(w.create("shop", "a", t, "shop.apps.example.com").0);
    let (a, m, _) = w.create("shop", "b", t, "blog.apps.example.com");
    assert!(!a);
    // The module's own reason.
    assert_eq!(
        m,
        "netlet: hostname \"blog.apps.example.com\": outside shop.apps.example.com"
    );
    // Trap, failing open: allowed, saying so.
    let (a, _, _) = w.create("shop", "c", t, "x.trap.example.com");
    assert!(a);
    // Endless loop, failing closed: denied at the deadline, in time.
    let (a, m, _) = w.create("shop", "d", t, "x.loop.example.com");
    assert!(!a);
    assert!(
        m.contains("module failed") && m.contains("failing closed"),
        "{m}"
    );
}

/// The serving certificate is read again when its files change: a new one serves without a
/// restart; a broken pair leaves the last good one serving.
#[tokio::test(flavor = "multi_thread")]
async fn certificate_rotation() {
    let Some(w) = Webhook::start("deny", &[("grants.yaml", GRANTS)], "").await else {
        return;
    };
    w.ready().await;
    let (ca2, cert2, key2) = issue_tls(w.dir.path(), "two");
    let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request":
        route("CREATE", "shop", "a", None, &["www.shop.example.com"], None)})
    .to_string();
    assert!(
        w.post_with(&body, &ca2).is_err(),
        "the new CA is not trusted yet"
    );
    // Written as rotation tools do: new files renamed into place.
    for (from, to) in [(&key2, "tls.key"), (&cert2, "tls.crt")] {
        let tmp = w.dir.path().join(format!("{to}.new"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, w.dir.path().join(to)).unwrap();
    }
    wait_until(
        "the new certificate serves",
        Duration::from_secs(10),
        || {
            let r = w.post_with(&body, &ca2);
            async move { matches!(r, Ok((200, _))).then_some(()) }
        },
    )
    .await;
    let old = w.post_with(&body, &w.ca).unwrap_err();
    assert!(old.contains("certificate"), "{old}");
    // A broken certificate file: the last good pair keeps serving.
    std::fs::write(w.dir.path().join("tls.crt"), "not a certificate\n").unwrap();
    for _ in 0..3 {
        assert_eq!(w.post_with(&body, &ca2).unwrap().0, 200);
    }
}
