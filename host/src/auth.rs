//! Peer-credential authorisation: the kernel tells who is on the other end of the unix socket
//! (SO_PEERCRED); callers whose uid or gid is not on the allow-list get `PERMISSION_DENIED`.

use std::{
    collections::HashSet,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{BoxFuture, FutureExt};
use tonic::{Status, transport::server::UdsConnectInfo};

/// Who may call.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    /// Allowed uids.
    pub uids: HashSet<u32>,
    /// Allowed gids.
    pub gids: HashSet<u32>,
}

impl AllowList {
    /// Whether the peer is allowed.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

/// The tower layer. Put it outside the metrics layer: a refused request reaches nothing else
/// (it is only counted in `netlet_grpc_requests_denied`).
#[derive(Clone)]
pub struct AuthLayer(pub Arc<AllowList>, pub Arc<crate::metrics::Metrics>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            allow: self.0.clone(),
            metrics: self.1.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    allow: Arc<AllowList>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred);
        let denied = match cred {
            None => Some("peer credentials unavailable".to_string()),
            Some(c) if self.allow.allows(c.uid(), c.gid()) => None,
            Some(c) => Some(format!(
                "uid {} gid {} is not on the allow-list",
                c.uid(),
                c.gid()
            )),
        };
        match denied {
            None => self.inner.call(req).boxed(),
            Some(why) => {
                self.metrics.denied();
                tracing::warn!(why, "caller refused");
                let resp = Status::permission_denied(why).into_http::<RB>();
                async move { Ok(resp) }.boxed()
            }
        }
    }
}
