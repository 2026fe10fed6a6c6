//! The hostname admission webhook: a Kubernetes validating admission webhook (AdmissionReview
//! v1 over HTTPS) that refuses an object whose hostnames the grants or an older claim deny
//! (see [`crate::hostnames`]). Served by `netlet serve` when the NodeConfig has
//! `hostnames.webhook`; `deploy/netlet.yaml` registers it, with the failure policy and scope
//! explained there.
//!
//! - Only kinds that claim hostnames are decided; any other kind, and DELETE or CONNECT, is
//!   allowed (the webhook is never meant to see them: its registration names the kinds).
//! - On UPDATE a hostname the object already had keeps its claim (its age is the object's);
//!   one it adds is as new as the request, so an old object cannot take a name held by a
//!   newer one by being edited.
//! - Until every object source was read the webhook answers 503 (the API server then applies
//!   the failure policy): an empty claim list would admit conflicts.
//! - A body that is not an AdmissionReview gets a 400 saying why; never a panic.
//! - The certificate and key files are read again when either changes (rotation without a
//!   restart); a pair that does not load leaves the last good one serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::Host;
use crate::hostnames::{self, Claim};

/// Largest body read (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

/// The serving certificate, read again when its files change.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<(Option<Stamp>, Option<Arc<CertifiedKey>>)>,
}

/// When the certificate and key files were last modified.
type Stamp = (SystemTime, SystemTime);

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Certificate {
    /// Reads the pair; an error says which file and why.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let c = Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            loaded: Mutex::new((None, None)),
        };
        c.refresh()?;
        Ok(c)
    }

    fn read(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("{}: no certificate", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.key.display()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.key.display()))?;
        let ck = CertifiedKey::new(chain, signer);
        ck.keys_match().map_err(|e| {
            anyhow::anyhow!("{} and {}: {e}", self.cert.display(), self.key.display())
        })?;
        Ok(Arc::new(ck))
    }

    /// Reads the files again when either changed since the last read; keeps the last good
    /// pair when they do not load.
    fn refresh(&self) -> anyhow::Result<Option<Arc<CertifiedKey>>> {
        let stamp = modified(&self.cert).zip(modified(&self.key));
        let Ok(mut l) = self.loaded.lock() else {
            anyhow::bail!("certificate lock poisoned");
        };
        if l.1.is_some() && l.0 == stamp {
            return Ok(l.1.clone());
        }
        match self.read() {
            Ok(ck) => {
                if l.1.is_some() {
                    tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                }
                *l = (stamp, Some(ck.clone()));
                Ok(Some(ck))
            }
            Err(e) if l.1.is_some() => {
                tracing::warn!(error = %e, "webhook certificate not reloaded; the last good one serves");
                l.0 = stamp;
                Ok(l.1.clone())
            }
            Err(e) => Err(e),
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh().ok().flatten()
    }
}

/// Binds the webhook's address and reads its certificate: what keeps it from serving is an
/// error at the host's start, not a log line later.
pub async fn bind(
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(tokio::net::TcpListener, Arc<Certificate>)> {
    let cert = Arc::new(Certificate::load(cert, key)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("hostnames.webhook.listen {listen}: {e}"))?;
    Ok((listener, cert))
}

/// Serves the webhook on `listener` until shutdown.
pub async fn serve(
    host: Arc<Host>,
    listener: tokio::net::TcpListener,
    cert: Arc<Certificate>,
) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tracing::info!(listen = ?listener.local_addr().ok(), "hostname admission webhook serving");
    let mut shutdown = std::pin::pin!(crate::stopped(host.shutdown.clone()));
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let (acceptor, host) = (acceptor.clone(), host.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req| {
                let host = host.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&host, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let ct = if status == StatusCode::OK {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ct),
    );
    r
}

async fn handle(host: &Host, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview\n".into(),
        );
    }
    // A body declared too large is refused before a byte of it is read: a client waiting for
    // `100 Continue` then never sends it, and one already sending is not cut off mid-way.
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > MAX_BODY as u64) {
        let mut r = reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body not read: {n} bytes declared (at most {MAX_BODY} bytes)\n"),
        );
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return r;
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body not read: {e} (at most {MAX_BODY} bytes)\n"),
            );
        }
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("not an AdmissionReview: {e}\n"),
            );
        }
    };
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return reply(
            StatusCode::BAD_REQUEST,
            format!(
                "apiVersion/kind: {}/{} is not admission.k8s.io/v1 AdmissionReview\n",
                review.types.api_version, review.types.kind
            ),
        );
    }
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "request: required in an AdmissionReview sent to a webhook\n".into(),
            );
        }
    };
    if !host.sources_loaded() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "netlet: the object sources are not read yet; no claim can be decided\n".into(),
        );
    }
    let response = review_request(host, &request).await;
    match serde_json::to_string(&response.into_review()) {
        Ok(s) => reply(StatusCode::OK, s),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// The claims of the object an admission request carries: each hostname aged by the object
/// (its creation), except, on UPDATE, those the old object did not have (aged `now`).
pub fn request_claims(request: &AdmissionRequest<DynamicObject>, now: Timestamp) -> Vec<Claim> {
    let kind = request.kind.kind.as_str();
    let Some(obj) = request
        .object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
    else {
        return Vec::new();
    };
    let mut obj = obj;
    // The object as the API server sends it carries its kind; a missing one is the request's.
    obj["kind"] = serde_json::Value::String(kind.to_string());
    if obj
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .is_empty()
    {
        obj["metadata"]["name"] = serde_json::Value::String(request.name.clone());
    }
    if let Some(ns) = &request.namespace {
        obj["metadata"]["namespace"] = serde_json::Value::String(ns.clone());
    }
    let had: Vec<String> = match (&request.operation, &request.old_object) {
        (Operation::Update, Some(old)) => serde_json::to_value(old)
            .map(|o| hostnames::hostnames_of(kind, &o))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let updating = request.operation == Operation::Update;
    hostnames::claims_of(&obj, now)
        .into_iter()
        .map(|mut c| {
            if updating && !had.contains(&c.hostname) {
                c.since = now;
            }
            c
        })
        .collect()
}

/// The webhook's answer to one admission request.
pub async fn review_request(
    host: &Host,
    request: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let decided = matches!(request.operation, Operation::Create | Operation::Update)
        && hostnames::is_claiming_kind(&request.kind.kind);
    if !decided {
        return response;
    }
    let claims = request_claims(request, Timestamp::now());
    if claims.is_empty() {
        return response;
    }
    let grants = host.hostname_grants().await;
    let namespaces = host.cluster_objects().namespaces;
    let mut denials = Vec::new();
    let mut warnings = Vec::new();
    for c in &claims {
        let d = host.decide_hostname(&grants, &namespaces, c);
        if !d.allowed {
            denials.push(format!("hostname {:?}: {}", c.hostname, d.reason));
        } else if d.audit {
            warnings.push(format!("netlet: hostname {:?}: {}", c.hostname, d.reason));
        }
    }
    host.metrics.hostname_decisions(denials.is_empty());
    if !denials.is_empty() {
        let mut r = response.deny(format!("netlet: {}", denials.join("; ")));
        r.result.code = 403;
        r.result.reason = "Forbidden".into();
        return r;
    }
    if !request.dry_run {
        host.claims.admit(claims);
    }
    let mut r = response;
    if !warnings.is_empty() {
        r.warnings = Some(warnings);
    }
    r
}
