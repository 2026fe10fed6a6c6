//! A real container runtime for tests and benchmarks: Debian's containerd 1.6 + runc, started
//! on private sockets and directories (optionally inside a node namespace) with a CNI
//! configuration of the caller's, a pause image built here (no registry is reachable), and
//! `cri-probe` (testbed/cri, built from the k8s.io/cri-api module) to drive it over CRI as a
//! kubelet would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Proc, in_netns};

/// The sandbox image containerd is configured with (imported from the archive built here).
pub const PAUSE_IMAGE: &str = "netlet.local/pause:1";

/// Finds `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

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
        .arg(src.join("oci_image.py"))
        .arg(dir.join("pause"))
        .arg(PAUSE_IMAGE)
        .arg(&image))?;
    Ok((probe, image))
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
}

impl Containerd {
    /// Writes a config under `dir` with CNI `plugins` (name → binary, copied into its bin dir)
    /// and the conflist `conflist`, starts containerd (inside `netns` when given), waits for
    /// CRI and imports the pause image.
    pub fn start(
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
        std::fs::write(
            &config,
            format!(
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
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                image = PAUSE_IMAGE,
                bin = cni_bin.display(),
                conf = cni_conf.display(),
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut c = Self {
            proc: None,
            dir: dir.to_path_buf(),
            socket,
            config,
            netns: netns.map(Path::to_path_buf),
            probe: probe.to_path_buf(),
        };
        c.spawn()?;
        let ctr = which("ctr").ok_or("ctr not installed")?;
        run(Command::new(ctr)
            .arg("--address")
            .arg(&c.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(image))?;
        Ok(c)
    }

    /// (Re)starts the containerd process and waits until it serves CRI.
    pub fn spawn(&mut self) -> Result<(), String> {
        let containerd = which("containerd").ok_or("containerd not installed")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .map_err(|e| e.to_string())?;
        let child = in_netns(self.netns.as_deref(), &containerd)
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
