//! The container runtime's CNI configuration, installed by the host once the node's network is
//! ready (`cniConfig:` of the NodeConfig), as Cilium writes its own when its agent is ready: a
//! runtime reports its network ready, and the kubelet its node Ready, only when there is a
//! configuration, so a node turns Ready only once netlet can attach pods. Rewritten whenever it
//! differs from the source while ready (a changed ConfigMap), atomically (a temporary file
//! renamed over it, so the runtime never reads half a file); never removed, so pods are still
//! torn down through the shim while the host restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often readiness and the files are compared.
const CHECK: Duration = Duration::from_millis(500);

/// Writes `source`'s content to `target` when it differs. `Ok(true)` when it wrote.
pub fn install(source: &Path, target: &Path) -> std::io::Result<bool> {
    let want = std::fs::read(source)?;
    if std::fs::read(target).is_ok_and(|have| have == want) {
        return Ok(false);
    }
    let dir = target.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    // A name the runtime ignores (it reads *.conf, *.conflist and *.json only).
    let tmp = dir.join(format!(".{name}.netlet-tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&want)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, target)?;
    Ok(true)
}

/// Installs `source` at `target` each time `ready()` holds and the two differ, until `stop`.
pub async fn keep_installed(
    source: PathBuf,
    target: PathBuf,
    ready: impl Fn() -> bool,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(CHECK);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        if !ready() {
            continue;
        }
        match install(&source, &target) {
            Ok(true) => {
                failing = false;
                tracing::info!(target = %target.display(), "CNI configuration installed");
            }
            Ok(false) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(source = %source.display(), target = %target.display(), error = %e, "CNI configuration not installed; retrying");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_and_again_when_the_source_changes() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (
            d.path().join("src.conflist"),
            d.path().join("net.d/10-x.conflist"),
        );
        std::fs::write(&src, "one").unwrap();
        assert!(install(&src, &dst).unwrap());
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "one");
        assert!(
            !install(&src, &dst).unwrap(),
            "unchanged: not written again"
        );
        std::fs::write(&src, "two").unwrap();
        assert!(install(&src, &dst).unwrap());
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "two");
        let left: Vec<_> = std::fs::read_dir(dst.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["10-x.conflist"], "no temporary file left");
        std::fs::remove_file(&src).unwrap();
        assert!(install(&src, &dst).is_err(), "a missing source is an error");
        assert_eq!(
            std::fs::read_to_string(&dst).unwrap(),
            "two",
            "and changes nothing"
        );
    }
}
