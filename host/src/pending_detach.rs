//! Detaches a runtime left for the host while it was away. When the CNI shim cannot reach the
//! host at DEL, it leaves an empty file named after the sandbox in `<socket dir>/pending-detach/`
//! and lets DEL succeed, so the runtime can remove the sandbox; the host works through those
//! files at start and every few seconds, and removes each once its detach succeeded.

use std::{sync::Arc, time::Duration};

use crate::Host;

/// How often the directory is looked at.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Detaches every pending sandbox once; returns how many were finished.
pub async fn work_through(host: &Host) -> usize {
    let dir = netlet_sdk::pending_detach_dir(&host.settings.socket);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut done = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if netlet_sdk::validate::sandbox_id("", &name).is_err() {
            tracing::warn!(file = %e.path().display(), "not a sandbox id; removed");
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        match host.detach(&name, &[]).await {
            Ok(()) => {
                let _ = std::fs::remove_file(e.path());
                tracing::info!(sandbox = %name, "pending detach finished");
                done += 1;
            }
            Err(s) => {
                tracing::warn!(sandbox = %name, error = %s.message(), "pending detach not done yet; retried")
            }
        }
    }
    done
}

/// Works through the pending detaches now and every [`INTERVAL`] until shutdown.
pub async fn watch(host: Arc<Host>) {
    let mut tick = tokio::time::interval(INTERVAL);
    let mut shutdown = host.shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        work_through(&host).await;
    }
}
