//! `netlet-bench-hostnames`: the hostname admission webhook's decision latency over HTTPS, as
//! the API server sees it (one kept-alive TLS connection, AdmissionReview v1 bodies), with N
//! grants and M claims loaded, for native grants and for a grant decided by a WebAssembly
//! module. The anchor, from the same run: a bare HTTPS server on the same certificate
//! answering every POST with a fixed AdmissionReview (TLS, HTTP/1.1 and reading the body, no
//! decision). Each row: p50 and p99 of each repeat, the median of those, the spread, and the
//! ratio to the anchor's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use netlet_testbed::harness::{Host, wait_until, wasm_dir};
use netlet_testbed::k8s::issue_tls;
use netlet_testbed::stats::{pct, us};
use serde_json::json;

#[derive(Parser)]
#[command(about = "The hostname webhook's decision latency over HTTPS")]
struct Args {
    /// Hostname grants loaded.
    #[arg(long, default_value_t = 1000)]
    grants: usize,
    /// Claims (Ingresses) loaded.
    #[arg(long, default_value_t = 10_000)]
    claims: usize,
    /// Requests per row and repeat.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Repeats of every row.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A benchmark row: its name, the server, the request body of the i-th call, and what each
/// answer must contain.
type Row = (
    &'static str,
    SocketAddr,
    Box<dyn Fn(usize) -> String>,
    &'static str,
);

/// One kept-alive HTTPS connection to `addr`, trusting `ca`.
async fn connect(addr: SocketAddr, ca: &std::path::Path) -> Sender {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// POSTs `body`; the status and the response body.
async fn post(s: &mut Sender, body: &str) -> (u16, String) {
    s.ready().await.unwrap();
    let req = hyper::Request::post("/validate")
        .header("content-type", "application/json")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let r = s.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&b).to_string())
}

/// An AdmissionReview for an HTTPRoute `ns/name` with `host`.
fn review(i: usize, ns: &str, host: &str) -> String {
    let gvk = json!({"group": "gateway.networking.k8s.io", "version": "v1", "kind": "HTTPRoute"});
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": format!("bench-{i}"), "kind": gvk,
        "resource": {"group": "gateway.networking.k8s.io", "version": "v1", "resource": "httproutes"},
        "name": format!("r{i}"), "namespace": ns, "operation": "CREATE",
        "userInfo": {"username": "bench"},
        "object": {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"name": format!("r{i}"), "namespace": ns, "creationTimestamp": "2026-06-01T00:00:00Z"},
                   "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host]}},
        "dryRun": true,
    }})
    .to_string()
}

/// The anchor: TLS, HTTP/1.1, the body read, a fixed allowed AdmissionReview back.
async fn anchor_server(cert: std::path::PathBuf, key: std::path::PathBuf) -> SocketAddr {
    let c = Arc::new(netlet_host::webhook::Certificate::load(&cert, &key).unwrap());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(c);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let out = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                        "response": {"uid": v["request"]["uid"], "allowed": true}});
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(out.to_string()),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// `n` requests from `make` on one connection: their round trips.
async fn run(
    s: &mut Sender,
    n: usize,
    make: &dyn Fn(usize) -> String,
    want: &str,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let body = make(i);
        let t = Instant::now();
        let (status, text) = post(s, &body).await;
        out.push(t.elapsed());
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(want), "{want}: {text}");
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = issue_tls(dir.path(), "bench");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    // In files of 500 objects (a manifest file holds at most 1024 documents).
    let mut grants = String::new();
    for i in 0..args.grants {
        grants += &format!(
            "---\napiVersion: netlet.io/v1alpha1\nkind: HostnameGrant\nmetadata: {{name: team{i}}}\nspec: {{namespaces: [team{i}], hostnames: ['*.team{i}.example.com']}}\n"
        );
        if (i + 1) % 500 == 0 {
            std::fs::write(
                manifests.join(format!("grants-{i}.yaml")),
                std::mem::take(&mut grants),
            )
            .unwrap();
        }
    }
    grants += "---\napiVersion: netlet.io/v1alpha1\nkind: HostnameGrant\nmetadata: {name: shared}\nspec: {namespaces: ['*'], hostnames: ['*.shared.example.com']}\n";
    grants += "---\napiVersion: netlet.io/v1alpha1\nkind: HostnameGrant\nmetadata: {name: apps}\nspec: {namespaces: ['*'], hostnames: ['*.apps.example.com'], module: suffix, moduleSettings: {suffix: apps.example.com}}\n";
    std::fs::write(manifests.join("grants.yaml"), grants).unwrap();
    let mut claims = String::new();
    // Half on the team's own names, half on names every namespace is granted.
    for j in 0..args.claims {
        let t = j % args.grants.max(1);
        let host = if j % 2 == 0 {
            format!("h{j}.team{t}.example.com")
        } else {
            format!("h{j}.shared.example.com")
        };
        claims += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: ing{j}, namespace: team{t}, creationTimestamp: '2026-01-01T00:00:00Z'}}\nspec: {{rules: [{{host: {host}}}]}}\n"
        );
        if (j + 1) % 500 == 0 || j + 1 == args.claims {
            std::fs::write(
                manifests.join(format!("claims-{j}.yaml")),
                std::mem::take(&mut claims),
            )
            .unwrap();
        }
    }
    let port = free_port();
    let host = Host::start(
        "",
        &format!(
            "manifestsDir: {}\npolicyModules:\n- {{name: suffix, file: {}}}\nhostnames:\n  noGrant: deny\n  webhook: {{listen: \"127.0.0.1:{port}\", certFile: {}, keyFile: {}}}\n",
            manifests.display(),
            wasm_dir().join("hostname-namespace-suffix.wasm").display(),
            cert.display(),
            key.display()
        ),
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Loaded: the last shared name's claim refuses another namespace.
    let last = (args.claims - 1) | 1;
    let probe = review(0, "intruder", &format!("h{last}.shared.example.com"));
    wait_until(
        "the webhook holds every claim",
        Duration::from_secs(120),
        || {
            let (probe, ca) = (probe.clone(), ca.clone());
            async move {
                let mut s = connect(addr, &ca).await;
                let (status, text) = post(&mut s, &probe).await;
                (status == 200 && text.contains("is held by")).then_some(())
            }
        },
    )
    .await;
    let anchor = anchor_server(cert.clone(), key.clone()).await;
    let g = args.grants.max(1);
    let claims = args.claims.max(2) & !1;
    let rows: Vec<Row> = vec![
        (
            "anchor: bare HTTPS round trip",
            anchor,
            Box::new(|i| review(i, "team0", "x.team0.example.com")),
            "\"allowed\":true",
        ),
        (
            "native grant, allowed",
            addr,
            Box::new(move |i| {
                review(
                    i,
                    &format!("team{}", i % g),
                    &format!("new{i}.team{}.example.com", i % g),
                )
            }),
            "\"allowed\":true",
        ),
        (
            "native grant, held by an older claim",
            addr,
            Box::new(move |i| {
                // A shared name claimed by team{j % g}, asked by the next team.
                let j = (2 * i + 1) % claims;
                review(
                    i,
                    &format!("team{}", (j + 1) % g),
                    &format!("h{j}.shared.example.com"),
                )
            }),
            "is held by",
        ),
        (
            "native grant, another namespace's",
            addr,
            Box::new(move |i| {
                let j = i % g;
                review(
                    i,
                    &format!("team{}", (j + 1) % g),
                    &format!("x.team{j}.example.com"),
                )
            }),
            "no grant lets namespace",
        ),
        (
            "grant with a WebAssembly module",
            addr,
            Box::new(|i| review(i, "shop", &format!("x{i}.shop.apps.example.com"))),
            "\"allowed\":true",
        ),
    ];
    println!(
        "hostname webhook over HTTPS, {} grants (one per namespace, one shared by all, one deciding with the hostname-namespace-suffix module), {} claims; {} requests per row, {} repeats, one kept-alive connection",
        args.grants + 2,
        args.claims,
        args.requests,
        args.repeat
    );
    println!(
        "{:<40} {:>10} {:>10} {:>22} {:>10}",
        "row", "p50", "p99", "p99 of each repeat", "p50/anchor"
    );
    let mut anchor_p50 = Duration::ZERO;
    for (name, at, make, want) in &rows {
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        for _ in 0..args.repeat {
            let mut s = connect(*at, &ca).await;
            // Warm: the connection, the caches, the module's instance pool.
            run(&mut s, 50, make.as_ref(), want).await;
            let mut v = run(&mut s, args.requests, make.as_ref(), want).await;
            p50s.push(pct(&mut v, 0.5));
            p99s.push(pct(&mut v, 0.99));
        }
        let p50 = pct(&mut p50s.clone(), 0.5);
        let p99 = pct(&mut p99s.clone(), 0.5);
        if anchor_p50.is_zero() {
            anchor_p50 = p50;
        }
        let each: Vec<String> = p99s.iter().map(|d| us(*d)).collect();
        println!(
            "{:<40} {:>10} {:>10} {:>22} {:>9.1}×",
            name,
            us(p50),
            us(p99),
            each.join(" "),
            p50.as_secs_f64() / anchor_p50.as_secs_f64()
        );
    }
    drop(host);
}
