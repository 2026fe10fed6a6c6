//! Serving the contract on a unix socket: binding, reflection, health and shutdown signals.
//! Used by [`crate::Driver`] and by the netlet host alike.

use std::{
    fs,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

use crate::{Error, Result};

/// A bound unix socket that is removed from the filesystem when dropped.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl BoundSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the listener out (the file is still removed on drop).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    /// An accept stream for `Server::serve_with_incoming`.
    pub fn incoming(&mut self) -> Option<tokio_stream::wrappers::UnixListenerStream> {
        self.take_listener()
            .map(tokio_stream::wrappers::UnixListenerStream::new)
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Binds a unix socket at `path` with permission bits `mode`, creating the parent directory and
/// removing a stale socket left by a previous run. Refuses to remove anything that is not a
/// socket.
pub fn bind_unix(path: &Path, mode: u32) -> Result<BoundSocket> {
    let err = |source| Error::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to remove it",
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(BoundSocket {
        path: path.to_path_buf(),
        listener: Some(listener),
    })
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can only run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Fully qualified names of the health and reflection services, as `grpcurl list` shows them.
pub const INFRA_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn reflection_builder(services: &[String]) -> tonic_reflection::server::Builder<'static> {
    let mut b = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(netlet_proto::v1alpha1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for s in services
        .iter()
        .map(String::as_str)
        .chain(INFRA_SERVICES.iter().copied())
    {
        b = b.with_service_name(s);
    }
    b
}

/// Server reflection, v1 and v1alpha (grpcurl before 1.9 speaks only v1alpha), advertising the
/// given netlet services plus health and reflection themselves.
pub fn reflection(
    services: &[String],
) -> Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let v1 = reflection_builder(services)
        .build_v1()
        .map_err(Error::Reflection)?;
    let v1alpha = reflection_builder(services)
        .build_v1alpha()
        .map_err(Error::Reflection)?;
    Ok((v1, v1alpha))
}

/// Runs `work` in a task of its own and waits for it. If the caller gives up (its deadline
/// passes, it disconnects), tonic drops the handler that awaits this, but `work` runs on to
/// its end (an attach completes or rolls back and leaves its record), so a retry finds what it
/// did instead of a half-made pod. Use it for every call that changes the node.
pub async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, tonic::Status>> + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::spawn(work)
        .await
        .map_err(|e| tonic::Status::internal(format!("the call's task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_replaces_stale_socket_and_refuses_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.sock");
        let first = bind_unix(&path, 0o660).unwrap();
        std::mem::forget(first); // leave a stale socket behind, as a crash would
        let second = bind_unix(&path, 0o600).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(second);
        assert!(!path.exists(), "socket removed on drop");

        let file = dir.path().join("plain");
        fs::write(&file, b"data").unwrap();
        assert!(bind_unix(&file, 0o600).is_err());
        assert_eq!(fs::read(&file).unwrap(), b"data");
    }
}
