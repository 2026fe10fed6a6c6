//! Network namespace helpers: create and delete named namespaces (as `ip netns add` does, under
//! `/run/netns`), and run a closure inside a namespace.
//!
//! Entering a namespace changes the calling *thread*; every function here does it on a fresh
//! thread that ends afterwards, so no runtime worker is ever left in a foreign namespace.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

use crate::{Error, Result};

/// Where named namespaces live, shared with iproute2.
pub const NETNS_RUN_DIR: &str = "/run/netns";

fn err(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Netns { path, what, source }
}

fn errno(path: &Path, what: &'static str) -> impl FnOnce(nix::Error) -> Error {
    let path = path.to_path_buf();
    move |e| Error::Netns {
        path,
        what,
        source: std::io::Error::from(e),
    }
}

/// Path of the named namespace `name`.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Creates a new, empty network namespace pinned at `/run/netns/<name>`. Fails if it exists.
pub fn create_named(name: &str) -> Result<PathBuf> {
    let path = named_path(name);
    fs::create_dir_all(NETNS_RUN_DIR).map_err(err(&path, "create /run/netns"))?;
    File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(err(&path, "create mount point"))?;
    let target = path.clone();
    let res = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(errno(&target, "unshare"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(errno(&target, "bind mount"))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(Error::Netns {
            path: path.clone(),
            what: "thread",
            source: std::io::Error::other("namespace thread panicked"),
        })
    });
    if let Err(e) = res {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Deletes a namespace pinned at `path` (unmount + remove). A missing one is not an error.
pub fn delete(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(errno(path, "unmount")(e)),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(path, "remove")(e)),
        _ => Ok(()),
    }
}

/// Runs `f` on a new thread that has entered the network namespace at `path`.
pub fn run_in<F, R>(path: &Path, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let ns = File::open(path).map_err(err(path, "open"))?;
    let p = path.to_path_buf();
    std::thread::spawn(move || -> Result<R> {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(errno(&p, "setns"))?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(Error::Netns {
            path: path.to_path_buf(),
            what: "thread",
            source: std::io::Error::other("closure panicked inside the namespace"),
        })
    })
}

/// Whether this process may create namespaces (root with CAP_SYS_ADMIN, in practice).
pub fn can_create() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Why an existing `path` cannot be a pod's network namespace: it is not a namespace file
/// (nsfs), or it is the namespace of the process asking (the node's, for the host) or of PID 1
/// (the machine's own). `None` when it can be, and when it does not exist (that is for the
/// driver that would enter it to refuse).
pub fn unusable_for_a_pod(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // NSFS_MAGIC from linux/magic.h: the filesystem of namespace files.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    match nix::sys::statfs::statfs(path) {
        Ok(fs) if fs.filesystem_type().0 == NSFS_MAGIC => {}
        Ok(_) => {
            return Some(format!(
                "{} is not a network namespace file",
                path.display()
            ));
        }
        Err(e) => return Some(format!("{}: {e}", path.display())),
    }
    for (own, whose) in [
        ("/proc/self/ns/net", "the node's own network namespace"),
        ("/proc/1/ns/net", "the machine's own network namespace"),
    ] {
        if let Ok(m) = std::fs::metadata(own)
            && m.dev() == meta.dev()
            && m.ino() == meta.ino()
        {
            return Some(format!("{} is {whose}", path.display()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_enter_delete() {
        if !can_create() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but not root: netns test cannot run"
            );
            eprintln!("skipped: not root, cannot create network namespaces");
            return;
        }
        let name = format!("netlet-sdk-test-{}", std::process::id());
        let path = create_named(&name).unwrap();
        let inside = run_in(&path, || fs::read_link("/proc/thread-self/ns/net").unwrap()).unwrap();
        let outside = fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside, "closure ran in another namespace");
        delete(&path).unwrap();
        assert!(!path.exists());
        delete(&path).unwrap();
    }
}
