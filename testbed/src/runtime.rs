//! A real container runtime for tests and benchmarks: containerd with runc — Debian's 1.6, or
//! a 2.x built from its Go module and cached outside the clone — started on private sockets and
//! directories (optionally inside a node namespace) with a CNI configuration of the caller's,
//! a pause image built here (no registry is reachable), and `cri-probe` (testbed/cri, built
//! from the k8s.io/cri-api module) to drive it over CRI as a kubelet would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Proc, in_netns, which};

/// The sandbox image containerd is configured with (imported from the archive built here).
pub const PAUSE_IMAGE: &str = "netlet.local/pause:1";

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Builds cri-probe and the pause image archive into `dir`; returns their paths.
pub fn build_cri_tools(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cri");
    let probe = dir.join("cri-probe");
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&probe)
        .arg(".")
        .current_dir(&src))?;
    run(Command::new("go")
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(dir.join("pause"))
        .arg("./pause")
        .current_dir(&src))?;
    let image = dir.join("pause.tar");
    run(Command::new("python3")
        .arg(src.join("../../deploy/oci_image.py"))
        .arg(dir.join("pause"))
        .arg(PAUSE_IMAGE)
        .arg(&image))?;
    Ok((probe, image))
}

/// Which containerd.
#[derive(Debug, Clone)]
pub enum Release {
    /// Debian's package (1.6), binaries on PATH.
    Debian,
    /// Built from github.com/containerd/containerd/v2 at `version` into `dir`.
    Built {
        /// Module version, e.g. `v2.4.2`.
        version: String,
        /// Where containerd, containerd-shim-runc-v2 and ctr are.
        dir: PathBuf,
    },
}

/// The containerd 2.x version the tests build.
pub const CONTAINERD2_VERSION: &str = "v2.4.2";

impl Release {
    /// containerd 2.x built from its Go module once into `$NETLET_TOOLS_DIR` (default
    /// `/var/tmp/netlet-tools`)`/containerd-<version>`, outside the clone, like the cargo
    /// target directory.
    pub fn built(version: &str) -> Result<Self, String> {
        let tools = std::env::var_os("NETLET_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/netlet-tools"));
        let dir = tools.join(format!("containerd-{version}"));
        let bins = ["containerd", "containerd-shim-runc-v2", "ctr"];
        if !bins.iter().all(|b| dir.join(b).is_file()) {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
            run(Command::new("go")
                .env("GOBIN", &dir)
                .arg("install")
                .args(
                    bins.iter()
                        .map(|b| format!("github.com/containerd/containerd/v2/cmd/{b}@{version}")),
                )
                .current_dir(scratch.path()))?;
        }
        Ok(Release::Built {
            version: version.to_string(),
            dir,
        })
    }

    fn bin(&self, name: &str) -> Option<PathBuf> {
        match self {
            Release::Debian => which(name),
            Release::Built { dir, .. } => Some(dir.join(name)).filter(|p| p.is_file()),
        }
    }

    /// PATH for containerd: a built release's directory first, so it finds its own shim.
    fn path(&self) -> std::ffi::OsString {
        let mut dirs: Vec<PathBuf> = match self {
            Release::Debian => vec![],
            Release::Built { dir, .. } => vec![dir.clone()],
        };
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(dirs).unwrap_or_default()
    }

    /// The configuration file for this release.
    fn config(&self, dir: &Path, socket: &Path, cni_bin: &Path, cni_conf: &Path) -> String {
        let (root, state) = (dir.join("root"), dir.join("state"));
        match self {
            Release::Debian => format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  # Some machines (VMs, nested containers) refuse a lower oom_score_adj than containerd's own;
  # runc then fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
"#,
                root = root.display(),
                state = state.display(),
                socket = socket.display(),
                image = PAUSE_IMAGE,
                bin = cni_bin.display(),
                conf = cni_conf.display(),
            ),
            Release::Built { .. } => format!(
                r#"version = 3
root = '{root}'
state = '{state}'
[grpc]
  address = '{socket}'
[ttrpc]
  address = '{socket}.ttrpc'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'native'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{image}'
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{bin}']
    conf_dir = '{conf}'
"#,
                root = root.display(),
                state = state.display(),
                socket = socket.display(),
                image = PAUSE_IMAGE,
                bin = cni_bin.display(),
                conf = cni_conf.display(),
            ),
        }
    }

    /// For reports: "1.6 (Debian)" or "v2.4.2 (built)".
    pub fn describe(&self) -> String {
        match self {
            Release::Debian => "1.6 (Debian)".into(),
            Release::Built { version, .. } => format!("{version} (built from its Go module)"),
        }
    }
}

/// A running containerd; it and every process started with its directories (the runc shims
/// outlive containerd) are killed on drop.
pub struct Containerd {
    proc: Option<Proc>,
    /// Its private directory (root, state, sockets, CNI directories).
    pub dir: PathBuf,
    /// Its CRI socket.
    pub socket: PathBuf,
    config: PathBuf,
    netns: Option<PathBuf>,
    probe: PathBuf,
    release: Release,
}

impl Containerd {
    /// Writes a config under `dir` with CNI `plugins` (name → binary, copied into its bin dir)
    /// and the conflist `conflist`, starts containerd (inside `netns` when given), waits for
    /// CRI and imports the pause image.
    pub fn start(
        release: &Release,
        dir: &Path,
        netns: Option<&Path>,
        plugins: &[(&str, PathBuf)],
        conflist: &Value,
        probe: &Path,
        image: &Path,
    ) -> Result<Self, String> {
        let cni_bin = dir.join("cni-bin");
        let cni_conf = dir.join("cni-conf");
        for d in [&cni_bin, &cni_conf] {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        for (name, from) in plugins {
            std::fs::copy(from, cni_bin.join(name))
                .map_err(|e| format!("copy {}: {e}", from.display()))?;
        }
        std::fs::write(cni_conf.join("10-test.conflist"), conflist.to_string())
            .map_err(|e| e.to_string())?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(&config, release.config(dir, &socket, &cni_bin, &cni_conf))
            .map_err(|e| e.to_string())?;
        let mut c = Self {
            proc: None,
            dir: dir.to_path_buf(),
            socket,
            config,
            netns: netns.map(Path::to_path_buf),
            probe: probe.to_path_buf(),
            release: release.clone(),
        };
        c.spawn()?;
        let ctr = release.bin("ctr").ok_or("ctr not installed")?;
        run(Command::new(ctr)
            .arg("--address")
            .arg(&c.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(image))?;
        Ok(c)
    }

    /// (Re)starts the containerd process and waits until it serves CRI.
    pub fn spawn(&mut self) -> Result<(), String> {
        let containerd = self
            .release
            .bin("containerd")
            .ok_or("containerd not installed")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .map_err(|e| e.to_string())?;
        let child = in_netns(self.netns.as_deref(), &containerd)
            .env("PATH", self.release.path())
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start containerd: {e}"))?;
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.cri(&["version"]).is_err() {
            if Instant::now() > deadline {
                return Err(format!("containerd did not serve CRI:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Kills the containerd process only (its shims and sandboxes keep running).
    pub fn kill(&mut self) {
        self.proc.take();
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Runs `cri-probe` with `args`; its JSON answer, or its error text.
    pub fn cri(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(&self.probe)
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.proc.take();
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(self.dir.display().to_string())
            .status();
    }
}
