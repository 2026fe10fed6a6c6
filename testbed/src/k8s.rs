//! A real Kubernetes control plane for tests: `etcd` and `kube-apiserver` built from their Go
//! modules by `testbed/k8s/build.sh` (binaries in `$NETLET_K8S_BIN`, default
//! `/var/tmp/netlet-k8s-bin`), started on the loopback of a node's namespace with a generated
//! service-account key pair (openssl), a static bearer token for an administrator, RBAC on and a
//! self-signed serving certificate. Objects are written with `curl` inside that namespace, as a
//! client on the node would.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Node, skip};

/// Where the API server listens inside the node's namespace.
pub const SERVER: &str = "https://127.0.0.1:6443";
const TOKEN: &str = "netlet-test-admin-token";

/// Where `testbed/k8s/build.sh` puts the binaries.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("NETLET_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/netlet-k8s-bin"))
}

/// The built `kubectl`; when missing, [`skip`] decides.
pub fn kubectl(test: &str) -> Option<PathBuf> {
    let k = bin_dir().join("kubectl");
    if k.is_file() {
        return Some(k);
    }
    skip(
        test,
        &format!(
            "{}: no kubectl (testbed/k8s/build.sh builds it)",
            k.display()
        ),
    );
    None
}

/// The Gateway API's CRDs `testbed/k8s/build.sh` put beside the binaries (Gateway, HTTPRoute,
/// GRPCRoute, TLSRoute); when missing, [`skip`] decides.
pub fn gateway_api_crds(test: &str) -> Option<PathBuf> {
    let d = bin_dir().join("gateway-api-crds");
    if d.join("gateway.networking.k8s.io_httproutes.yaml")
        .is_file()
    {
        return Some(d);
    }
    skip(
        test,
        &format!(
            "{}: no Gateway API CRDs (testbed/k8s/build.sh fetches them)",
            d.display()
        ),
    );
    None
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issues, in `dir`, a CA `ca-<tag>.pem` and a serving certificate it signed for 127.0.0.1
/// and `netlet-webhook.netlet-system.svc` (`srv-<tag>.pem`, key `srv-<tag>.key`; P-256):
/// (CA, certificate, key).
pub fn issue_tls(dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key) = (format!("ca-{tag}.pem"), format!("ca-{tag}.key"));
    let (srv, srv_key, csr) = (
        format!("srv-{tag}.pem"),
        format!("srv-{tag}.key"),
        format!("srv-{tag}.csr"),
    );
    let subj = format!("/CN=netlet-test-ca-{tag}");
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout", &ca_key, "-out", &ca, "-days", "1", "-subj", &subj,
    ]);
    openssl(dir, &a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        &srv_key,
        "-out",
        &csr,
        "-subj",
        "/CN=netlet-webhook",
    ]);
    openssl(dir, &a);
    let ext = format!("ext-{tag}");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:netlet-webhook.netlet-system.svc\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &srv,
            "-days",
            "1",
            "-extfile",
            &ext,
        ],
    );
    (dir.join(ca), dir.join(srv), dir.join(srv_key))
}

/// The built binaries (etcd, kube-apiserver); when missing, [`skip`] decides.
pub fn binaries(test: &str) -> Option<(PathBuf, PathBuf)> {
    let dir = bin_dir();
    let (etcd, api) = (dir.join("etcd"), dir.join("kube-apiserver"));
    if etcd.is_file() && api.is_file() {
        Some((etcd, api))
    } else {
        skip(
            test,
            &format!(
                "{}: no etcd and kube-apiserver (testbed/k8s/build.sh builds them)",
                dir.display()
            ),
        );
        None
    }
}

/// Writes a kubeconfig for [`SERVER`] with the administrator's token to `path` (before the
/// API server runs: a client started early waits for it).
pub fn write_kubeconfig(path: &Path) {
    write_kubeconfig_with(path, TOKEN);
}

/// Writes a kubeconfig for [`SERVER`] with bearer `token` to `path`.
pub fn write_kubeconfig_with(path: &Path, token: &str) {
    write_kubeconfig_at(path, SERVER, Some(token));
}

/// Writes a kubeconfig for API server `server` with bearer `token` (the administrator's when
/// `None`) to `path`.
pub fn write_kubeconfig_at(path: &Path, server: &str, token: Option<&str>) {
    let token = token.unwrap_or(TOKEN);
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: user}}\ncurrent-context: test\n"
        ),
    )
    .expect("kubeconfig");
}

/// etcd and kube-apiserver running in a node's namespace; stopped when dropped.
pub struct ApiServer {
    netns: PathBuf,
    address: String,
    api_bin: PathBuf,
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    api: Option<Child>,
}

impl ApiServer {
    /// Starts both inside `node`'s namespace and waits until the API server is ready.
    pub fn start(node: &Node, etcd: &Path, api: &Path) -> ApiServer {
        Self::start_in(&node.netns.path, etcd, api, "127.0.0.1")
    }

    /// Starts both inside namespace `netns`, the API server listening on `address` (and
    /// loopback), and waits until it is ready.
    pub fn start_in(netns: &Path, etcd: &Path, api: &Path, address: &str) -> ApiServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for args in [
            vec!["genrsa", "-out", "sa.key", "2048"],
            vec!["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
        ] {
            let ok = std::process::Command::new("openssl")
                .args(&args)
                .current_dir(d)
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(ok.success(), "openssl {args:?}");
        }
        std::fs::write(
            d.join("tokens.csv"),
            format!("{TOKEN},admin,admin-uid,system:masters\n"),
        )
        .unwrap();
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let etcd = crate::harness::in_netns(Some(netns), etcd)
            .arg("--data-dir")
            .arg(d.join("etcd"))
            .args([
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
            ])
            .stdout(Stdio::null())
            .stderr(log("etcd.log"))
            .spawn()
            .expect("etcd");
        let mut s = ApiServer {
            netns: netns.to_path_buf(),
            address: address.to_string(),
            api_bin: api.to_path_buf(),
            dir,
            etcd: Some(etcd),
            api: None,
        };
        s.start_api();
        s
    }

    /// Starts kube-apiserver and waits until it is ready.
    fn start_api(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("kube-apiserver.log"))
            .unwrap();
        let api = crate::harness::in_netns(Some(&self.netns), &self.api_bin)
            .args([
                "--etcd-servers",
                "http://127.0.0.1:2379",
                "--bind-address",
                if self.address == "127.0.0.1" {
                    "127.0.0.1"
                } else {
                    "0.0.0.0"
                },
                "--advertise-address",
                &self.address,
                "--secure-port",
                "6443",
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--authorization-mode",
                "RBAC",
                "--service-cluster-ip-range",
                "10.96.0.0/16",
                // As kubeadm runs it: node agents such as netlet's DaemonSet are privileged.
                "--allow-privileged=true",
            ])
            .arg("--cert-dir")
            .arg(d.join("certs"))
            .arg("--service-account-key-file")
            .arg(d.join("sa.pub"))
            .arg("--service-account-signing-key-file")
            .arg(d.join("sa.key"))
            .arg("--token-auth-file")
            .arg(d.join("tokens.csv"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kube-apiserver");
        self.api = Some(api);
        let s = self;
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.request("GET", "/readyz", None).as_deref() != Ok("ok") {
            let exited = s.api.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "kube-apiserver not ready (exited: {exited:?}) within 60 s; its log:\n{}",
                std::fs::read_to_string(s.dir.path().join("kube-apiserver.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops kube-apiserver (etcd goes on).
    pub fn stop_api(&mut self) {
        if let Some(mut c) = self.api.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts kube-apiserver again after [`ApiServer::stop_api`] and waits until it is ready.
    pub fn restart_api(&mut self) {
        self.stop_api();
        self.start_api();
    }

    /// Compacts etcd at its current revision: watches from before it can no longer resume
    /// (410 Gone), as after a long disconnection.
    pub fn compact_etcd(&self) -> Result<u64, String> {
        let post = |path: &str, body: &str| -> Result<serde_json::Value, String> {
            let curl =
                crate::harness::which("curl").unwrap_or_else(|| PathBuf::from("/usr/bin/curl"));
            let out = crate::harness::in_netns(Some(&self.netns), &curl)
                .args(["-sf", "-X", "POST", "--data-binary", body])
                .arg(format!("http://127.0.0.1:2379{path}"))
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("etcd {path}: {}", out.status));
            }
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
        };
        let rev: u64 = post("/v3/kv/range", r#"{"key":"AA=="}"#)?["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .ok_or("no revision")?;
        post(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{rev}","physical":true}}"#),
        )?;
        Ok(rev)
    }

    /// One request as the administrator; the body of a 2xx answer, else the status and body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
        let curl = crate::harness::which("curl").unwrap_or_else(|| PathBuf::from("/usr/bin/curl"));
        let mut c = crate::harness::in_netns(Some(&self.netns), &curl);
        c.args(["-sk", "-X", method, "-w", "\n%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args(["-H", "Content-Type: application/json"]);
        if let Some(b) = body {
            c.args(["--data-binary", b]);
        }
        let out = c
            .arg(format!("{SERVER}{path}"))
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        if code.starts_with('2') {
            Ok(body.to_string())
        } else {
            Err(format!("{method} {path}: HTTP {code}: {body}"))
        }
    }
}

impl ApiServer {
    /// Runs `kubectl` (as the administrator, in the node's namespace) with `args`; its output,
    /// or why it failed.
    pub fn kubectl(&self, kubectl: &Path, args: &[&str]) -> Result<String, String> {
        let kc = self.dir.path().join("admin.kubeconfig");
        if !kc.exists() {
            write_kubeconfig(&kc);
        }
        let out = crate::harness::in_netns(Some(&self.netns), kubectl)
            .arg("--kubeconfig")
            .arg(&kc)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("kubectl {}: {text}", args.join(" ")))
        }
    }

    /// A bearer token of ServiceAccount `namespace/name` (the TokenRequest API).
    pub fn token(&self, namespace: &str, name: &str) -> Result<String, String> {
        let out = self.request(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
            Some(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{}}"#),
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        v["status"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no token in {out}"))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for c in [self.api.take(), self.etcd.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
