//! Prometheus metrics and the tower layer that times every RPC. The layer runs inside the
//! peer-credential check: a refused caller is counted once, without labels, and never timed.

use std::{
    collections::HashSet,
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
    denied: Counter,
    admissions: Family<AdmissionLabels, Counter>,
    methods: HashSet<String>,
}

/// The label of `hostname_admissions`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct AdmissionLabels {
    verdict: &'static str,
}

/// The `method` label of a path the host does not serve: whatever a caller sends is folded into
/// this one value, so the label set stays bounded.
pub const OTHER_METHOD: &str = "other";

/// Every gRPC path the host serves: its own services' methods (from the package's descriptor
/// set), health and reflection.
fn served_methods() -> HashSet<String> {
    use prost::Message;
    let mut out: HashSet<String> = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let served = crate::served::host_services();
    if let Ok(set) = prost_types::FileDescriptorSet::decode(netlet_sdk::proto::FILE_DESCRIPTOR_SET)
    {
        for f in &set.file {
            for s in &f.service {
                let full = format!("{}.{}", f.package(), s.name());
                if !served.contains(&full) {
                    continue;
                }
                for m in &s.method {
                    out.insert(format!("/{full}/{}", m.name()));
                }
            }
        }
    }
    out
}

/// The `code` label: a gRPC status code's number (0–16), anything else `unknown`.
fn code_label(code: &str) -> &str {
    match code.parse::<u8>() {
        Ok(n) if n <= 16 => code,
        _ => "unknown",
    }
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
        let denied = Counter::default();
        registry.register(
            "grpc_requests_denied",
            "gRPC requests refused by the peer-credential check (not timed, not labelled)",
            denied.clone(),
        );
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "hostname_admissions",
            "Admission requests the hostname webhook decided, by verdict (allowed, denied)",
            admissions.clone(),
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
            denied,
            admissions,
            methods: served_methods(),
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

    /// Records one RPC. A path the host does not serve is recorded as [`OTHER_METHOD`] and a
    /// code that is not a gRPC status as `unknown`: callers cannot grow the label set.
    pub fn observe_rpc(&self, method: &str, code: &str, seconds: f64) {
        let method = if self.methods.contains(method) {
            method
        } else {
            OTHER_METHOD
        };
        self.rpc
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: code_label(code).to_string(),
            })
            .observe(seconds);
    }

    /// Counts an admission request the hostname webhook decided.
    pub fn hostname_decisions(&self, allowed: bool) {
        let verdict = if allowed { "allowed" } else { "denied" };
        self.admissions
            .get_or_create(&AdmissionLabels { verdict })
            .inc();
    }

    /// Counts a request the peer-credential check refused.
    pub fn denied(&self) {
        self.denied.inc();
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
