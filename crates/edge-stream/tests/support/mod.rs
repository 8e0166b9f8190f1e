//! Real peers for the end-to-end tests: a certificate authority on disk, the cloud's tunnel
//! server exactly as `cloudstream` starts it, and a small kubelet.
//!
//! `test_support` will offer richer versions of these; until it builds, the few routes the
//! edge needs are served here.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use edge_stream::{Backoff, EdgeConfig, TunnelStatus};
use futures_util::StreamExt as _;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use stream_proto::{ConnectRequest, GoUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunnel_session::client::DialConfig;
use tunnel_session::server::{TunnelObserver, TunnelServer};
use tunnel_session::tls::{self, TlsFiles};
use tunnel_session::{NodeIdentity, Registry, Session, SessionConfig};

/// The node every test edge claims to be.
pub const NODE: &str = "edge-1";

/// Sends the crates' logs to the test output (shown for failing tests); `RUST_LOG` filters.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Fails the test if `fut` does not finish within 5 s: nothing here should take that long.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(5), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// A test CA with a server identity for 127.0.0.1 and a node identity, written as PEM files.
pub struct Pki {
    dir: PathBuf,
    pub server: TlsFiles,
    pub node: TlsFiles,
}

impl Pki {
    pub fn new() -> Result<Pki> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "edge-stream-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).context("creating the PKI directory")?;

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "edge-stream-test-ca");
        ca_params.distinguished_name = dn;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |cn: &str,
                    san: Option<IpAddr>,
                    eku: ExtendedKeyUsagePurpose|
         -> Result<(String, String)> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            params.distinguished_name = dn;
            params.subject_alt_names = san.map(SanType::IpAddress).into_iter().collect();
            params.extended_key_usages = vec![eku];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let write = |name: &str, pem: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let ca = write("ca.crt", &ca_cert.pem())?;
        let (cert, key) = leaf(
            "127.0.0.1",
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let server = TlsFiles {
            ca: ca.clone(),
            cert: write("server.crt", &cert)?,
            key: write("server.key", &key)?,
        };
        let (cert, key) = leaf(
            &format!("system:node:{NODE}"),
            None,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let node = TlsFiles {
            ca,
            cert: write("node.crt", &cert)?,
            key: write("node.key", &key)?,
        };
        Ok(Pki { dir, server, node })
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Hands every session the tunnel server starts to the test.
struct SessionFeed(mpsc::UnboundedSender<Session>);

impl TunnelObserver for SessionFeed {
    fn session_started(&self, session: &Session) {
        let _ = self.0.send(session.clone());
    }
}

/// The cloud's tunnel server, started as `cloudstream` starts it.
pub struct Cloud {
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    sessions: mpsc::UnboundedReceiver<Session>,
    stop: CancellationToken,
    task: JoinHandle<tunnel_session::Result<()>>,
}

impl Cloud {
    /// Listens on `addr` (`127.0.0.1:0` for a fresh port).
    pub async fn start(pki: &Pki, addr: SocketAddr) -> Result<Cloud> {
        init_tracing();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let registry = Arc::new(Registry::new());
        let (tx, sessions) = mpsc::unbounded_channel();
        let server = TunnelServer::new(
            tls::server_config(&pki.server, &[b"http/1.1"])?,
            Arc::clone(&registry),
            Default::default(),
        )
        .with_observer(Arc::new(SessionFeed(tx)));
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(listener, stop.clone()));
        Ok(Cloud {
            addr,
            registry,
            sessions,
            stop,
            task,
        })
    }

    /// Waits for the next session to be registered and returns it, as found in the registry.
    pub async fn session(&mut self) -> Session {
        let started = within("a tunnel session", self.sessions.recv())
            .await
            .expect("the tunnel server stopped");
        let found = self.registry.get(NODE).expect("the session is registered");
        assert!(found.same(&started));
        found
    }

    /// Starts the server's shutdown: it stops accepting, drains its sessions (GO_AWAY) and
    /// waits for their open streams.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Stops the server and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        within("the tunnel server to stop", self.task)
            .await
            .expect("tunnel server task")
            .expect("tunnel server");
    }
}

/// A request the kubelet received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A kubelet speaking the few routes the tests use, over plain HTTP.
///
/// - `GET /containerLogs/ns/pod/c`: `line 1\nline 2\n`; with `follow=true`, `line 1\n` and then
///   the response stays open until the client goes away, which [`TestKubelet::released`]
///   reports.
/// - `GET /containerLogs/ns/missing/c`: 404 `pod "missing" does not exist`.
/// - `GET|POST /stats/summary`, `GET /metrics/cadvisor`: 200 with a JSON or text body.
/// - `GET|POST /exec/...`: 101 `SPDY/3.1`, then echoes bytes until end of file and closes.
/// - anything else: 404 `404 page not found`.
pub struct TestKubelet {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    released: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl TestKubelet {
    pub async fn start() -> Result<TestKubelet> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let released = Arc::new(Mutex::new(None));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (r, l, s, t) = (
            requests.clone(),
            released.clone(),
            stop.clone(),
            tasks.clone(),
        );
        tasks.spawn(async move {
            loop {
                let tcp = tokio::select! {
                    () = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => return,
                    },
                };
                let (r, l, s) = (r.clone(), l.clone(), s.clone());
                t.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (r, l) = (r.clone(), l.clone());
                        async move { Ok::<_, Infallible>(route(req, r, l).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        () = s.cancelled() => {}
                    }
                });
            }
        });
        Ok(TestKubelet {
            addr,
            requests,
            released,
            stop,
            tasks,
        })
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Resolves when the last `follow=true` log response was dropped by hyper, i.e. the
    /// client went away.
    pub async fn released(&self) {
        let rx = self
            .released
            .lock()
            .unwrap()
            .take()
            .expect("a follow request was served");
        let _ = rx.await;
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        within("the kubelet to stop", self.tasks.wait()).await;
    }
}

async fn route(
    mut req: Request<Incoming>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    released: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    requests.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    let respond = |status: StatusCode, content_type: &str, body: Body| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(body)
            .unwrap()
    };
    match path {
        "/containerLogs/ns/pod/c" if target.contains("follow=true") => {
            let (tx, rx) = oneshot::channel::<()>();
            *released.lock().unwrap() = Some(rx);
            // The sender lives in the body stream: when hyper drops the body because the
            // client went away, the receiver learns of it.
            let lines = futures_util::stream::once(async { Bytes::from_static(b"line 1\n") })
                .chain(futures_util::stream::pending())
                .map(move |data| {
                    let _keep = &tx;
                    Ok::<_, Infallible>(Frame::data(data))
                });
            respond(
                StatusCode::OK,
                "text/plain",
                StreamBody::new(lines).boxed_unsync(),
            )
        }
        "/containerLogs/ns/pod/c" => {
            respond(StatusCode::OK, "text/plain", full("line 1\nline 2\n"))
        }
        "/containerLogs/ns/missing/c" => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            full(r#"pod "missing" does not exist"#),
        ),
        "/stats/summary" => respond(
            StatusCode::OK,
            "application/json",
            full(format!("{{\n \"requestBytes\": {}\n}}\n", body.len())),
        ),
        "/metrics/cadvisor" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            full("# TYPE up gauge\nup 1\n"),
        ),
        p if p.starts_with("/exec/") => {
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = io.shutdown().await;
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "Upgrade")
                .header("upgrade", "SPDY/3.1")
                .header("x-stream-protocol-version", "v4.channel.k8s.io")
                .body(full(Bytes::new()))
                .unwrap()
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            full("404 page not found"),
        ),
    }
}

/// The edge's configuration for these tests: fast backoff, short grace.
pub fn edge_config(pki: &Pki, cloud: SocketAddr, kubelet: &str, offer_tether2: bool) -> EdgeConfig {
    let dial = DialConfig {
        server: cloud.to_string(),
        tls: tls::client_config(&pki.node, true).expect("node TLS config"),
        node: NodeIdentity {
            name: NODE.to_owned(),
            ip: None,
        },
        handshake_timeout: Duration::from_secs(5),
        session: SessionConfig::default(),
        offer_tether2,
    };
    let mut config = EdgeConfig::new(dial);
    config.kubelet.addr = kubelet.to_owned();
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        multiplier: 2,
        reset_after: Duration::from_secs(60),
    };
    config.drain_grace = Duration::from_secs(2);
    config
}

/// A running edge.
pub struct Edge {
    pub status: watch::Receiver<TunnelStatus>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), edge_stream::Error>>,
}

impl Edge {
    pub fn start(config: EdgeConfig) -> Edge {
        let (tx, status) = watch::channel(TunnelStatus::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(edge_stream::run(config, stop.clone(), Some(tx)));
        Edge { status, stop, task }
    }

    /// Waits until the published status satisfies `f`.
    pub async fn wait_for(&mut self, what: &str, f: impl FnMut(&TunnelStatus) -> bool) {
        within(what, self.status.wait_for(f))
            .await
            .expect("the edge dropped its status channel");
    }

    /// Shuts the edge down and checks that `run` returns `Ok` and reports `Stopped`.
    pub async fn stop(self) {
        self.stop.cancel();
        let result = within("the edge to stop", self.task)
            .await
            .expect("edge task");
        assert!(result.is_ok(), "run failed: {result:?}");
        assert_eq!(*self.status.borrow(), TunnelStatus::Stopped);
    }
}

/// A connect descriptor as the cloud builds it: the URL always names edged's loopback port,
/// whatever kubelet the edge really uses.
pub fn connect_request(
    method: Option<&str>,
    target: &str,
    headers: &[(&str, &str)],
) -> ConnectRequest {
    let mut header = stream_proto::HeaderMap::new();
    for (name, value) in headers {
        header
            .entry(stream_proto::canonical_header_key(name))
            .or_default()
            .push((*value).to_owned());
    }
    ConnectRequest {
        mess_id: 0,
        url: GoUrl::from_request_target("http", "127.0.0.1:10350", target).expect("target"),
        header: Some(header),
        method: method.map(str::to_owned),
    }
}

/// A kubelet address where nothing listens.
pub async fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}
