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

/// The built binaries (etcd, kube-apiserver); when missing, [`skip`] decides.
pub fn binaries(test: &str) -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("NETLET_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/netlet-k8s-bin"));
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
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {SERVER}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n"
        ),
    )
    .expect("kubeconfig");
}

/// etcd and kube-apiserver running in a node's namespace; stopped when dropped.
pub struct ApiServer {
    netns: PathBuf,
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    api: Option<Child>,
}

impl ApiServer {
    /// Starts both inside `node`'s namespace and waits until the API server is ready.
    pub fn start(node: &Node, etcd: &Path, api: &Path) -> ApiServer {
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
        let etcd = node
            .command(etcd)
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
        let api = node
            .command(api)
            .args([
                "--etcd-servers",
                "http://127.0.0.1:2379",
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                "6443",
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--authorization-mode",
                "RBAC",
                "--service-cluster-ip-range",
                "10.96.0.0/16",
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
            .stderr(log("kube-apiserver.log"))
            .spawn()
            .expect("kube-apiserver");
        let mut s = ApiServer {
            netns: node.netns.path.clone(),
            dir,
            etcd: Some(etcd),
            api: Some(api),
        };
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
        s
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

impl Drop for ApiServer {
    fn drop(&mut self) {
        for c in [self.api.take(), self.etcd.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
