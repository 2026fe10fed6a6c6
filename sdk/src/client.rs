//! Connecting to a netlet endpoint (the host or a driver) over its unix socket.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::{
    cluster_client::ClusterClient, devices_client::DevicesClient, identity_client::IdentityClient,
    node_client::NodeClient, pods_client::PodsClient, policy_client::PolicyClient,
    services_client::ServicesClient,
};
use crate::{DEFAULT_MAX_MESSAGE_BYTES, Error, Result};

/// Parses a target of the form `unix:///path.sock`, `unix:/path.sock` or a plain path.
pub fn parse_target(target: &str) -> PathBuf {
    let t = target
        .strip_prefix("unix://")
        .or_else(|| target.strip_prefix("unix:"))
        .unwrap_or(target);
    PathBuf::from(t)
}

fn endpoint(timeout: Option<Duration>) -> Endpoint {
    // The authority must be a valid host name: hyper rejects a socket path there.
    let mut ep = Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(t) = timeout {
        ep = ep.timeout(t);
    }
    ep
}

fn connector(
    path: &Path,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    let path = path.to_path_buf();
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    })
}

/// Connects now; fails if the socket does not answer. `timeout` bounds every call made on the
/// channel (the deadline of host→driver calls).
pub async fn connect_unix(path: &Path, timeout: Option<Duration>) -> Result<Channel> {
    endpoint(timeout)
        .connect_with_connector(connector(path))
        .await
        .map_err(Error::Transport)
}

/// A channel that connects on first use and reconnects after failures.
pub fn connect_unix_lazy(path: &Path, timeout: Option<Duration>) -> Channel {
    endpoint(timeout).connect_with_connector_lazy(connector(path))
}

/// One client per netlet service over a shared channel, with the message size limits set.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Identity.
    pub identity: IdentityClient<Channel>,
    /// Node.
    pub node: NodeClient<Channel>,
    /// Pods.
    pub pods: PodsClient<Channel>,
    /// Services.
    pub services: ServicesClient<Channel>,
    /// Policy.
    pub policy: PolicyClient<Channel>,
    /// Devices.
    pub devices: DevicesClient<Channel>,
    /// Cluster.
    pub cluster: ClusterClient<Channel>,
}

macro_rules! limited {
    ($client:ident, $ch:expr, $max:expr) => {
        $client::new($ch.clone())
            .max_decoding_message_size($max)
            .max_encoding_message_size($max)
    };
}

impl Clients {
    /// Clients over `channel` with `max_message_bytes` in both directions.
    pub fn new(channel: Channel, max_message_bytes: usize) -> Self {
        Self {
            identity: limited!(IdentityClient, channel, max_message_bytes),
            node: limited!(NodeClient, channel, max_message_bytes),
            pods: limited!(PodsClient, channel, max_message_bytes),
            services: limited!(ServicesClient, channel, max_message_bytes),
            policy: limited!(PolicyClient, channel, max_message_bytes),
            devices: limited!(DevicesClient, channel, max_message_bytes),
            cluster: limited!(ClusterClient, channel, max_message_bytes),
        }
    }

    /// Connects to the socket at `path` with the default limits.
    pub async fn connect(path: &Path, timeout: Option<Duration>) -> Result<Self> {
        Ok(Self::new(
            connect_unix(path, timeout).await?,
            DEFAULT_MAX_MESSAGE_BYTES,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("unix:///run/x.sock"),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            parse_target("unix:/run/x.sock"),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(parse_target("/run/x.sock"), PathBuf::from("/run/x.sock"));
    }
}
