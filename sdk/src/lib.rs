//! netlet-sdk: what a Rust network driver for netlet depends on.
//!
//! A driver implements one trait per capability it serves (the generated `netlet.v1alpha1`
//! service traits, whose methods all default to `UNIMPLEMENTED`) and hands them to [`Driver`].
//! [`Driver::serve`] binds the unix socket (removing a stale one), serves `Identity` from what the
//! driver declared, `grpc.health.v1`, server reflection (v1 and v1alpha), stops gracefully on
//! SIGTERM/SIGINT and removes its socket.
//!
//! A minimal driver that attaches nothing but answers for network `default`:
//!
//! ```no_run
//! use netlet_sdk::proto::{AttachPodRequest, AttachPodResponse, pods_server::Pods};
//! use netlet_sdk::{Driver, tonic::{Request, Response, Status}};
//!
//! struct Example;
//!
//! #[netlet_sdk::tonic::async_trait]
//! impl Pods for Example {
//!     async fn attach_pod(
//!         &self,
//!         req: Request<AttachPodRequest>,
//!     ) -> Result<Response<AttachPodResponse>, Status> {
//!         let req = req.into_inner();
//!         // The contract's field rules, refused naming the field (google.rpc.BadRequest).
//!         netlet_sdk::validate::attach_pod(&req)?;
//!         Ok(Response::new(AttachPodResponse::default()))
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), netlet_sdk::Error> {
//!     netlet_sdk::init_tracing();
//!     // The socket comes from $NETLET_DRIVER_SOCKET (set by the host for supervised drivers)
//!     // unless given here; external drivers bind `<plugin-dir>/<name>.sock`.
//!     Driver::new("example", env!("CARGO_PKG_VERSION"))
//!         .network("default")
//!         .pods(Example)
//!         .serve()
//!         .await
//! }
//! ```
//!
//! Beyond that: [`validate`] (the contract's field rules and structured errors), [`generation`]
//! (the epoch and generation rules of ProgramService and ApplyPolicy), [`state`] (tables that
//! apply those batches), [`client`]; behind features, `store` (a redb store with group commit)
//! and `netns` (creating and entering network namespaces).
#![forbid(unsafe_code)]

pub mod client;
pub mod devices;
pub mod dnsname;
mod driver;
pub mod generation;
pub mod hash;
pub mod labels;
pub mod names;
#[cfg(feature = "netlink")]
pub mod netlink;
#[cfg(feature = "netns")]
pub mod netns;
pub mod nodes;
pub mod parts;
pub mod pods;
pub mod ports;
pub mod server;
pub mod state;
pub mod status;
#[cfg(feature = "store")]
pub mod store;
pub mod validate;
#[cfg(feature = "yaml")]
pub mod yaml;

pub use driver::{Driver, ProbeFn};
pub use netlet_proto::v1alpha1 as proto;
pub use {netlet_proto, tonic};

/// Environment variable through which the host tells a supervised driver its socket path.
pub const SOCKET_ENV: &str = "NETLET_DRIVER_SOCKET";

/// Environment variable through which the host gives a supervised driver a state directory of
/// its own (`<host state dir>/drivers/<name>`); the driver creates it.
pub const STATE_DIR_ENV: &str = "NETLET_DRIVER_STATE_DIR";

/// Directory, beside the host's socket, where a runtime's CNI shim leaves the detaches of
/// sandboxes it could not reach the host for (one empty file per sandbox id); the host finishes
/// them when it is back.
pub const PENDING_DETACH_DIR: &str = "pending-detach";

/// The pending-detach directory of a host serving on `socket` ([`PENDING_DETACH_DIR`] beside it).
pub fn pending_detach_dir(socket: &std::path::Path) -> std::path::PathBuf {
    socket
        .parent()
        .unwrap_or(std::path::Path::new("/run/netlet"))
        .join(PENDING_DETACH_DIR)
}

/// Default maximum size of one gRPC message, both directions.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No socket path was given and `$NETLET_DRIVER_SOCKET` is unset.
    #[error("no socket path: call Driver::socket or set ${SOCKET_ENV}")]
    NoSocket,
    /// Binding or preparing the unix socket failed.
    #[error("socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server or client transport failed.
    #[error("transport: {0}")]
    Transport(#[source] tonic::transport::Error),
    /// Building the reflection service failed.
    #[error("reflection: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// A network namespace operation failed.
    #[error("netns {path}: {what}: {source}")]
    Netns {
        /// Namespace path.
        path: std::path::PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Initialises `tracing` to stderr, filtered by `RUST_LOG` (default `info`). Safe to call twice.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
