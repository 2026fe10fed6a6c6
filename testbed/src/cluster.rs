//! A real Kubernetes cluster on this machine for tests and benchmarks: `testbed/k8s/cluster.sh`
//! (kube-apiserver, etcd, kube-controller-manager, kube-scheduler, nodes with containerd and a
//! kubelet each, netlet deployed from `deploy/` with kubectl), started under a name of the
//! caller's and taken down when dropped. Everything is driven through kubectl, as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{bin, skip};
use crate::k8s::bin_dir;

/// How the nodes are wired (`NETLET_CLUSTER_TOPOLOGY` of cluster.sh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Every node on one L2 segment.
    Segment,
    /// Every node on a segment of its own behind a router that forwards no pod addresses
    /// between nodes: pods of different nodes meet only through the network's overlay.
    Routed,
}

impl Topology {
    fn as_str(self) -> &'static str {
        match self {
            Topology::Segment => "segment",
            Topology::Routed => "routed",
        }
    }
}

/// A running cluster; `cluster.sh down` when dropped.
pub struct Cluster {
    name: String,
    dir: PathBuf,
    script: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/cluster.sh")
}

impl Cluster {
    /// Starts a cluster `name` (a few letters: its namespaces are `netlet-<name>-…`) with
    /// `nodes` nodes wired as `topology` and netlet as its network; `None` when [`skip`]
    /// decides it cannot run here.
    pub fn up(test: &str, name: &str, nodes: usize, topology: Topology) -> Option<Cluster> {
        for b in [
            "kubelet",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
        ] {
            if !bin_dir().join(b).is_file() {
                skip(
                    test,
                    &format!("no {b} in {} (testbed/k8s/build.sh)", bin_dir().display()),
                );
                return None;
            }
        }
        Some(Self::start(name, nodes, "netlet", topology).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts cluster `name` with `nodes` nodes and `network`: `netlet` (deployed from
    /// `deploy/`, its image built from this workspace's binaries of the running profile) or
    /// `reference` (the reference CNI plugins and kube-proxy in nftables mode; on a segment
    /// only), its nodes wired as `topology`.
    pub fn start(
        name: &str,
        nodes: usize,
        network: &str,
        topology: Topology,
    ) -> Result<Cluster, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::temp_dir().join(format!("netlet-cluster-{name}"));
        let image_dir = dir.with_extension("image");
        let mut image = String::new();
        if network == "netlet" {
            let mut build = Command::new("bash");
            build.arg(root.join("deploy/build-image.sh"));
            if cfg!(debug_assertions) {
                build.arg("--debug");
            }
            let out = build
                .arg(&image_dir)
                .output()
                .map_err(|e| format!("build-image.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "deploy/build-image.sh: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            image = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let c = Cluster {
            name: name.to_string(),
            dir,
            script: script(),
        };
        // A cluster of an earlier run that died before its drop.
        c.run(&["down"]).ok();
        let started = Instant::now();
        let out = c
            .command(&["up"])
            .env("NETLET_IMAGE", &image)
            .env("NETLET_CLUSTER_NODES", nodes.to_string())
            .env("NETLET_CLUSTER_NETWORK", network)
            .env("NETLET_CLUSTER_TOPOLOGY", topology.as_str())
            .output()
            .map_err(|e| format!("cluster.sh up: {e}"))?;
        let _ = std::fs::remove_dir_all(&image_dir);
        if !out.status.success() {
            return Err(format!(
                "cluster.sh up failed after {:?}:\n{}\n{}",
                started.elapsed(),
                String::from_utf8_lossy(&out.stderr),
                c.logs()
            ));
        }
        eprintln!(
            "cluster {name} ({network}, {}) up in {:.1?}",
            topology.as_str(),
            started.elapsed()
        );
        Ok(c)
    }

    fn command(&self, args: &[&str]) -> Command {
        self.script_command(&self.script, args)
    }

    /// `script` (cluster.sh or a sibling) with `args` and the cluster's environment.
    fn script_command(&self, script: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .args(args)
            .env("NETLET_CLUSTER", &self.name)
            .env("NETLET_CLUSTER_DIR", &self.dir)
            .env("NETLET_K8S_BIN", bin_dir())
            .env("NETLET_DNS_STUB", bin("netlet-dns-stub"));
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(args)
            .output()
            .map_err(|e| format!("cluster.sh {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// kubectl with `args` against the cluster: its output, or its error text.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["kubectl"];
        a.extend(args);
        self.run(&a)
    }

    /// kubectl with `args` left running (a watch), its output piped.
    pub fn kubectl_child(&self, args: &[&str]) -> std::io::Result<std::process::Child> {
        let mut a = vec!["kubectl"];
        a.extend(args);
        self.command(&a)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
    }

    /// ctr with `args` against node `node`'s containerd (namespace k8s.io).
    pub fn ctr(&self, node: &str, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["ctr", node];
        a.extend(args);
        self.run(&a)
    }

    /// `kubectl apply` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<(), String> {
        let f = self.dir.join(format!(
            "apply-{}.yaml",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::write(&f, yaml).map_err(|e| e.to_string())?;
        let r = self.kubectl(&["apply", "-f", &f.display().to_string()]);
        let _ = std::fs::remove_file(&f);
        r.map(|_| ())
    }

    /// An object (or list) as JSON.
    pub fn get(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend(args);
        a.extend(["-o", "json"]);
        let out = self
            .kubectl(&a)
            .unwrap_or_else(|e| panic!("kubectl {a:?}: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {a:?}: {e}: {out}"))
    }

    /// Runs `cmd` in pod `pod` (namespace `ns`): its output, or the error.
    pub fn exec(&self, ns: &str, pod: &str, cmd: &[&str]) -> Result<String, String> {
        let mut a = vec!["exec", "-n", ns, pod, "--"];
        a.extend(cmd);
        self.kubectl(&a)
    }

    /// Runs the upstream e2e suite (`testbed/k8s/e2e.sh` with `args`) against the cluster,
    /// its JUnit report into `report`.
    pub fn e2e(&self, args: &[&str], report: &Path) -> std::process::Output {
        self.script_command(&self.script.with_file_name("e2e.sh"), args)
            .env("NETLET_E2E_REPORT", report)
            .output()
            .expect("e2e.sh")
    }

    /// The network namespace standing for the control plane's machine and the underlay (the
    /// API server at 192.0.2.1; on a segment the nodes at 192.0.2.10, 192.0.2.11, …; routed,
    /// the router of the nodes' segments).
    pub fn control_plane_netns(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/netlet-{}-ctl", self.name))
    }

    /// The network namespace of node `node` (`node-a`, `node-b`, …).
    pub fn node_netns(&self, node: &str) -> PathBuf {
        let letter = node.strip_prefix("node-").unwrap_or(node);
        PathBuf::from(format!("/run/netns/netlet-{}-{letter}", self.name))
    }

    /// The administrator's kubeconfig (reachable from the control plane's namespace).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Polls `f` every 500 ms until it holds, for at most `secs`; panics with `what` and the
    /// last error otherwise.
    pub fn eventually<T>(
        &self,
        what: &str,
        secs: u64,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match f() {
                Ok(v) => return v,
                Err(e) if Instant::now() > deadline => {
                    panic!("{what}: not within {secs} s: {e}\n{}", self.logs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// The tail of every component's log (for a failure's message).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) else {
            return out;
        };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {}\n", e.file_name().to_string_lossy());
            for l in &lines[lines.len().saturating_sub(15)..] {
                out += l;
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.run(&["down"]) {
            eprintln!("cluster.sh down: {e}");
        }
    }
}
