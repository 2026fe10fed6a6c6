//! Supervised drivers: the host starts each configured driver with the socket path it chose,
//! registers it once the socket answers, and restarts it with exponential backoff when it
//! exits. Every (re)registration triggers the replay of the full desired state.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{process::Command, sync::watch};

use super::{RegisterError, Registry, Source};
use crate::config::DriverConfig;

/// First restart delay; doubled per quick crash up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A driver that ran this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a fresh driver has to answer on its socket.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a driver has to exit after SIGTERM at shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Resolves a command: a bare name is looked up beside the running binary, then in `PATH`.
pub fn resolve_command(command: &str) -> PathBuf {
    if command.contains('/') {
        return PathBuf::from(command);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let beside = dir.join(command);
        if beside.is_file() {
            return beside;
        }
    }
    PathBuf::from(command)
}

async fn wait_for_socket(path: &Path, child: &mut tokio::process::Child) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut delay = Duration::from_millis(5);
    loop {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited during startup: {status}"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "socket {} did not answer within {STARTUP_TIMEOUT:?}",
                path.display()
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

async fn stop(child: &mut tokio::process::Child, name: &str) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            tracing::info!(driver = name, "driver stopped");
            return;
        }
        tracing::warn!(driver = name, "driver ignored SIGTERM; killing it");
    }
    let _ = child.kill().await;
}

/// Kills a driver left running by a host that died without stopping it (kill -9), found by
/// the pid file written at spawn and confirmed by its executable.
fn reap_orphan(pid_file: &Path, program: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let wanted = std::fs::canonicalize(program).ok();
    if exe.is_some() && exe == wanted {
        tracing::warn!(pid, program = %program.display(), "killing driver orphaned by a previous host");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // Gone before its successor starts: its store's lock and its socket are released with
        // the process, and a successor that cannot open its records serves nothing.
        let proc_dir = format!("/proc/{pid}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(format!("{proc_dir}/exe")).ok() == exe
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Runs one supervised driver until `shutdown` turns true. The driver learns its socket from
/// `$NETLET_DRIVER_SOCKET` and a state directory of its own from `$NETLET_DRIVER_STATE_DIR`.
pub async fn supervise(
    cfg: DriverConfig,
    socket_dir: PathBuf,
    state_dir: PathBuf,
    reg: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
) {
    let socket = socket_dir.join(format!("{}.sock", cfg.name));
    let program = resolve_command(&cfg.command);
    let pid_file = socket_dir.join(format!("{}.pid", cfg.name));
    reap_orphan(&pid_file, &program);
    let mut backoff = INITIAL_BACKOFF;
    let mut starts = 0u64;
    loop {
        if *shutdown.borrow() {
            return;
        }
        starts += 1;
        if starts > 1 {
            reg.metrics.driver_restarted(&cfg.name);
        }
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&program);
        cmd.args(&cfg.args)
            .envs(cfg.env.iter().map(|e| (&e.name, &e.value)))
            .env(netlet_sdk::SOCKET_ENV, &socket)
            .env(netlet_sdk::STATE_DIR_ENV, &state_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let started = Instant::now();
        let exit = match cmd.spawn() {
            Err(e) => {
                let err =
                    RegisterError::BadInfo(format!("cannot start {}: {e}", program.display()));
                reg.record_failure(&cfg.name, &err);
                None
            }
            Ok(mut child) => {
                tracing::info!(driver = %cfg.name, pid = child.id(), program = %program.display(), "driver started");
                if let Some(pid) = child.id() {
                    let _ = std::fs::create_dir_all(&socket_dir);
                    let _ = std::fs::write(&pid_file, pid.to_string());
                }
                let mut epoch = None;
                match wait_for_socket(&socket, &mut child).await {
                    Err(why) => {
                        reg.record_failure(
                            &cfg.name,
                            &RegisterError::BadInfo(format!("startup: {why}")),
                        );
                    }
                    Ok(()) => match reg
                        .register(&socket, Source::Supervised, Some(&cfg.name))
                        .await
                    {
                        Ok(entry) => epoch = Some(entry.epoch),
                        Err(e) => reg.record_failure(&cfg.name, &e),
                    },
                }
                let status = tokio::select! {
                    s = child.wait() => Some(s),
                    _ = crate::stopped(shutdown.clone()) => {
                        stop(&mut child, &cfg.name).await;
                        None
                    }
                };
                if epoch.is_some() {
                    reg.deregister(&cfg.name, epoch, "driver process ended");
                }
                match status {
                    None => {
                        let _ = std::fs::remove_file(&socket);
                        let _ = std::fs::remove_file(&pid_file);
                        return;
                    }
                    Some(s) => Some(s),
                }
            }
        };
        let ran = started.elapsed();
        if ran >= STABLE_AFTER {
            backoff = INITIAL_BACKOFF;
        }
        tracing::warn!(driver = %cfg.name, status = ?exit, ran = ?ran, restart_in = ?backoff, "driver exited; restarting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::stopped(shutdown.clone()) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
