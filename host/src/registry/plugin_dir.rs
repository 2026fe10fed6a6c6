//! External drivers: a `<name>.sock` appearing in the plugin directory is registered (GetInfo,
//! version check); a socket that disappears is deregistered. The directory is rescanned every
//! [`SCAN_INTERVAL`]; a socket that failed registration is retried every [`RETRY_INTERVAL`].

use std::{
    collections::HashMap,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{Registry, Source};

/// Rescan period.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(250);
/// Retry period for sockets that failed registration.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

enum Known {
    /// Registered under this name and epoch.
    Registered { name: String, epoch: u64 },
    /// Failed under this name; retry after this instant.
    Failed { name: String, retry_at: Instant },
}

fn sockets(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    v.sort();
    v
}

/// Watches `dir` until `shutdown` turns true.
pub async fn watch_dir(
    dir: PathBuf,
    reg: Arc<Registry>,
    allowed_uids: Vec<u32>,
    shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create plugin directory");
    }
    let mut known: HashMap<PathBuf, Known> = HashMap::new();
    loop {
        let present = sockets(&dir);
        // Gone sockets: deregister.
        known.retain(|path, k| {
            if present.contains(path) {
                return true;
            }
            match k {
                Known::Registered { name, epoch } => {
                    reg.deregister(name, Some(*epoch), "socket removed from plugin directory");
                }
                Known::Failed { name, .. } => reg.clear_failure(name),
            }
            false
        });
        for path in present {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let attempt = match known.get(&path) {
                None => true,
                Some(Known::Failed { retry_at, .. }) => Instant::now() >= *retry_at,
                // Deregistered by the monitor (failed probes): try again later.
                Some(Known::Registered { name, epoch }) => {
                    reg.get(name).is_none_or(|e| e.epoch != *epoch)
                }
            };
            if !attempt {
                continue;
            }
            // Only sockets of allowed users (root by default) are registered: a driver is handed
            // pods' namespaces and the node's Services.
            let owner = std::fs::metadata(&path).map(|m| m.uid());
            let registered = match owner {
                Ok(uid) if uid != 0 && !allowed_uids.contains(&uid) => {
                    Err(super::RegisterError::SocketOwner {
                        socket: path.display().to_string(),
                        uid,
                    })
                }
                _ => reg.register(&path, Source::External, None).await,
            };
            match registered {
                Ok(entry) => {
                    known.insert(
                        path,
                        Known::Registered {
                            name: entry.name.clone(),
                            epoch: entry.epoch,
                        },
                    );
                }
                Err(e) => {
                    reg.record_failure(&stem, &e);
                    known.insert(
                        path,
                        Known::Failed {
                            name: stem,
                            retry_at: Instant::now() + RETRY_INTERVAL,
                        },
                    );
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
            _ = crate::stopped(shutdown.clone()) => return,
        }
    }
}
