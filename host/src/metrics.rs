//! Prometheus metrics and the tower layer that times every RPC.

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriverLabels {
    driver: String,
}

fn rpc_histogram() -> Histogram {
    // 25 µs .. ~1.6 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        25e-6, 2.0, 17,
    ))
}

/// The host's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    rpc: Family<RpcLabels, Histogram, fn() -> Histogram>,
    restarts: Family<DriverLabels, Counter>,
    registered: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("netlet");
        let rpc = Family::<RpcLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            rpc_histogram as fn() -> Histogram,
        );
        let restarts = Family::<DriverLabels, Counter>::default();
        let registered = Gauge::default();
        registry.register(
            "grpc_request_duration_seconds",
            "Latency of gRPC requests served by the host, by method and status code",
            rpc.clone(),
        );
        registry.register(
            "driver_restarts",
            "Restarts of supervised drivers",
            restarts.clone(),
        );
        registry.register(
            "drivers_registered",
            "Drivers currently registered",
            registered.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            rpc,
            restarts,
            registered,
        }
    }
}

impl Metrics {
    /// Records a supervised driver restart.
    pub fn driver_restarted(&self, driver: &str) {
        self.restarts
            .get_or_create(&DriverLabels {
                driver: driver.to_string(),
            })
            .inc();
    }

    /// Sets the number of registered drivers.
    pub fn set_registered(&self, n: usize) {
        self.registered.set(n as i64);
    }

    /// Records one RPC.
    pub fn observe_rpc(&self, method: &str, code: &str, seconds: f64) {
        self.rpc
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .observe(seconds);
    }

    /// Restarts counted for `driver`.
    pub fn restarts_of(&self, driver: &str) -> u64 {
        self.restarts
            .get_or_create(&DriverLabels {
                driver: driver.to_string(),
            })
            .get()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}

/// Times each request into `netlet_grpc_request_duration_seconds`.
#[derive(Clone)]
pub struct MetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if let Ok(r) = &res {
                // Errors are sent trailers-only (status in the headers); success in trailers.
                let code = r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0");
                metrics.observe_rpc(&method, code, start.elapsed().as_secs_f64());
            }
            res
        })
    }
}
