//! [`TestKubelet`]: a real HTTP/1.1 server speaking the kubelet API paths kube-apiserver uses.
//!
//! It listens on `127.0.0.1:0`, over plain HTTP (like KubeEdge edged's read-only port
//! `127.0.0.1:10350`) or HTTPS with an optional client-certificate requirement. Pods and
//! containers are declared on the [`TestKubeletBuilder`].
//!
//! # Routes
//!
//! | Path | Methods | Behaviour |
//! |---|---|---|
//! | `/containerLogs/{ns}/{pod}/{container}` | GET | see below |
//! | `/exec/{ns}/{pod}[/{uid}]/{container}` | GET, POST | remote command over WebSocket or SPDY/3.1, see [`stream`] |
//! | `/attach/{ns}/{pod}[/{uid}]/{container}` | GET, POST | attach over WebSocket or SPDY/3.1, see [`stream`] |
//! | `/portForward/{ns}/{pod}[/{uid}]` | GET, POST | port-forward over WebSocket or SPDY/3.1, see [`stream`] |
//! | `/stats/summary` | GET, POST | pretty-printed JSON summary (one-space indent like go-restful) |
//! | `/metrics`, `/metrics/cadvisor`, `/metrics/resource`, `/metrics/probes` | GET | Prometheus text, gzip on `Accept-Encoding: gzip` |
//! | `/healthz` | GET | `ok` |
//! | anything else | any | `404` with body `404 page not found` |
//!
//! A wrong method on a known path gets `405` with body `405: Method Not Allowed`.
//!
//! # Logs
//!
//! Query parameters: `follow`, `tailLines` (legacy `tail` too), `limitBytes`, `timestamps`
//! (others such as `previous`, `sinceSeconds`, `stream` are accepted and ignored). Errors mimic
//! the kubelet:
//!
//! - unknown pod → `404`, body `pod "<pod>" does not exist`;
//! - unknown container → `404`, body `container "<c>" not found in pod "<pod>"`;
//! - unparsable `tailLines`/`limitBytes`/booleans → `400`, body `{"message": "Unable to decode query."}`;
//! - negative `tailLines` or `limitBytes < 1` → `422` with a short text body.
//!
//! Log content is kept as entries (one per line; a trailing fragment without newline is its
//! own entry, like a CRI partial record). With `timestamps=true` each entry is prefixed with its
//! append time in the kubelet's fixed RFC3339Nano form (`2006-01-02T15:04:05.000000000Z`) and a
//! space. `limitBytes` caps the body including timestamps. The body is streamed: each batch of
//! appended entries is sent as its own chunk and flushed. With `follow=true` the response stays
//! open and delivers entries added by [`TestKubelet::append_log`]; it ends cleanly on kubelet
//! shutdown and stops when the client goes away.
//!
//! [`ContainerSpec::generated`] containers serve deterministic content
//! ([`crate::content`]) in 64 KiB chunks; for them `limitBytes` applies, `follow`, `tailLines`
//! and `timestamps` are ignored. [`ContainerSpec::stalled`] containers never send a response
//! head or byte; the request is held until the client goes away or the kubelet shuts down
//! (then the connection is dropped).

mod files;
mod metrics;
mod process;
pub mod spdy;
pub mod stream;

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, anyhow};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};

pub use metrics::{METRICS_CONTENT_TYPE, cadvisor_series, metrics_text, stats_summary_json};

use crate::pki::{Identity, TestPki};

/// Response body type used by the test kubelet.
pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// How a test container behaves.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Initial log content (split into line entries).
    pub logs: Bytes,
    /// When true, log requests never produce a byte and never end.
    pub stall: bool,
    /// When set, the log is this many bytes of [`crate::content`] generated on the fly.
    pub generated: Option<u64>,
}

impl ContainerSpec {
    /// A container whose log initially holds `logs`.
    pub fn with_logs(logs: impl Into<Bytes>) -> Self {
        Self {
            logs: logs.into(),
            ..Self::default()
        }
    }

    /// A container whose log requests stall forever.
    pub fn stalled() -> Self {
        Self {
            stall: true,
            ..Self::default()
        }
    }

    /// A container whose log is `total_bytes` of deterministic content
    /// ([`crate::content::generated_log`]), served fast without being stored.
    pub fn generated(total_bytes: u64) -> Self {
        Self {
            generated: Some(total_bytes),
            ..Self::default()
        }
    }
}

/// A request as seen by the test kubelet.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Request method.
    pub method: Method,
    /// Path and query as received.
    pub path_and_query: String,
    /// Request headers as received.
    pub headers: HeaderMap,
}

/// Builder for [`TestKubelet`].
#[derive(Debug, Default)]
pub struct TestKubeletBuilder {
    tls: Option<(Identity, Option<rustls::RootCertStore>)>,
    containers: BTreeMap<(String, String, String), ContainerSpec>,
    node_name: Option<String>,
    long_metrics_line: Option<usize>,
    cadvisor_containers: usize,
    stream_creation_timeout: Option<Duration>,
}

impl TestKubeletBuilder {
    /// Serve HTTPS with `identity`; when `client_ca` is given, require a client certificate
    /// issued by it.
    pub fn tls(mut self, identity: Identity, client_ca: Option<&TestPki>) -> Self {
        self.tls = Some((identity, client_ca.map(TestPki::root_store)));
        self
    }

    /// Declares container `container` of pod `ns/pod`.
    pub fn container(mut self, ns: &str, pod: &str, container: &str, spec: ContainerSpec) -> Self {
        self.containers
            .insert((ns.to_owned(), pod.to_owned(), container.to_owned()), spec);
        self
    }

    /// Node name reported by `/stats/summary` (default `test-node`).
    pub fn node_name(mut self, name: &str) -> Self {
        self.node_name = Some(name.to_owned());
        self
    }

    /// Adds cAdvisor series for `containers` containers to `/metrics/cadvisor` (see
    /// [`cadvisor_series`]), so the body is as large as a busy node's.
    pub fn cadvisor_containers(mut self, containers: usize) -> Self {
        self.cadvisor_containers = containers;
        self
    }

    /// Adds one metrics line of at least `len` bytes (before the newline) to every
    /// `/metrics*` body, to prove that nothing splits long lines.
    pub fn long_metrics_line(mut self, len: usize) -> Self {
        self.long_metrics_line = Some(len);
        self
    }

    /// How long a SPDY exec/attach/port-forward session waits for the client to open its
    /// streams (the kubelet's `StreamCreationTimeout`, 30 s by default).
    pub fn stream_creation_timeout(mut self, timeout: Duration) -> Self {
        self.stream_creation_timeout = Some(timeout);
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> Result<TestKubelet> {
        let acceptor = match &self.tls {
            Some((identity, roots)) => {
                let mut cfg = match roots {
                    Some(roots) => {
                        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                            Arc::new(roots.clone()),
                            crate::pki::provider(),
                        )
                        .build()?;
                        rustls::ServerConfig::builder_with_provider(crate::pki::provider())
                            .with_safe_default_protocol_versions()?
                            .with_client_cert_verifier(verifier)
                    }
                    None => rustls::ServerConfig::builder_with_provider(crate::pki::provider())
                        .with_safe_default_protocol_versions()?
                        .with_no_client_auth(),
                }
                .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(TlsAcceptor::from(Arc::new(cfg)))
            }
            None => None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut containers = HashMap::new();
        for ((ns, pod, name), spec) in self.containers {
            containers.insert((ns, pod, name), Arc::new(Container::new(spec)));
        }
        let shared = Arc::new(Shared {
            active: Arc::new(watch::channel(ActiveStreams::default()).0),
            containers,
            node_name: self.node_name.unwrap_or_else(|| "test-node".to_owned()),
            long_metrics_line: self.long_metrics_line,
            cadvisor_containers: self.cadvisor_containers,
            stream_creation_timeout: self
                .stream_creation_timeout
                .unwrap_or(Duration::from_secs(30)),
            requests: Mutex::new(Vec::new()),
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        });
        tracker.spawn(accept_loop(listener, acceptor, shared.clone()));
        Ok(TestKubelet {
            addr,
            tls: self.tls.is_some(),
            shared,
            _guard: cancel.drop_guard(),
        })
    }
}

/// A running test kubelet. Dropping it stops every task it spawned (asynchronously);
/// [`shutdown`](Self::shutdown) stops it and waits.
#[derive(Debug)]
pub struct TestKubelet {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    _guard: DropGuard,
}

impl TestKubelet {
    /// A builder with no containers, plain HTTP.
    pub fn builder() -> TestKubeletBuilder {
        TestKubeletBuilder::default()
    }

    /// The bound address (`127.0.0.1:<ephemeral>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when serving HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `http://127.0.0.1:<port>` or `https://…`.
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Appends `data` to a container's log; followers receive it promptly as one chunk.
    pub fn append_log(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        data: impl Into<Bytes>,
    ) -> Result<()> {
        let c = self
            .shared
            .containers
            .get(&(ns.to_owned(), pod.to_owned(), container.to_owned()))
            .ok_or_else(|| anyhow!("no container {ns}/{pod}/{container}"))?;
        c.append(data.into());
        Ok(())
    }

    /// A regular file of a container's in-memory file system (what `kubectl cp` wrote there).
    pub fn file(&self, ns: &str, pod: &str, container: &str, path: &str) -> Option<Bytes> {
        let c = self.shared.container(ns, pod, container)?;
        lock(&c.files).read(path)
    }

    /// Writes a regular file (mode 0644, parent directories created) into a container's
    /// in-memory file system, e.g. for `kubectl cp` to download.
    pub fn put_file(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        path: &str,
        data: impl Into<Bytes>,
    ) -> Result<()> {
        let c = self
            .shared
            .container(ns, pod, container)
            .ok_or_else(|| anyhow!("no container {ns}/{pod}/{container}"))?;
        lock(&c.files)
            .write(path, data.into(), 0o644)
            .map_err(|e| anyhow!(e))
    }

    /// Number of requests whose path (without query) starts with `path_prefix`.
    pub fn request_count(&self, path_prefix: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.path_and_query.starts_with(path_prefix))
            .count()
    }

    /// All requests received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Headers of the most recent request (empty when none arrived yet).
    pub fn last_request_headers(&self) -> HeaderMap {
        lock(&self.shared.requests)
            .last()
            .map(|r| r.headers.clone())
            .unwrap_or_default()
    }

    /// Streams currently open (log bodies being produced, upgraded sessions running).
    pub fn active_streams(&self) -> ActiveStreams {
        *self.shared.active.borrow()
    }

    /// Waits until the open streams satisfy `pred` (e.g. to observe that the kubelet noticed a
    /// client going away). Pair it with a `tokio::time::timeout` in tests.
    pub async fn wait_active_streams(&self, pred: impl Fn(&ActiveStreams) -> bool) {
        let mut rx = self.shared.active.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = rx.wait_for(|a| pred(a)).await;
    }

    /// Waits until no log stream and no upgraded session is open.
    pub async fn wait_idle(&self) {
        self.wait_active_streams(|a| *a == ActiveStreams::default())
            .await;
    }

    /// Stops accepting, ends follow streams, closes connections and upgraded sessions, and
    /// waits for every spawned task to finish.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

/// Streams currently open inside the test kubelet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveStreams {
    /// Log responses whose body is still being produced (including `follow=true` waits).
    pub logs: usize,
    /// Upgraded sessions (exec, attach, port-forward, `x-test`) not yet finished.
    pub upgrades: usize,
}

/// Decrements its counter when dropped.
pub(crate) struct ActiveGuard {
    tx: Arc<watch::Sender<ActiveStreams>>,
    upgrade: bool,
}

impl ActiveGuard {
    fn new(tx: &Arc<watch::Sender<ActiveStreams>>, upgrade: bool) -> Self {
        tx.send_modify(|a| {
            if upgrade {
                a.upgrades += 1;
            } else {
                a.logs += 1;
            }
        });
        Self {
            tx: tx.clone(),
            upgrade,
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let upgrade = self.upgrade;
        self.tx.send_modify(|a| {
            if upgrade {
                a.upgrades -= 1;
            } else {
                a.logs -= 1;
            }
        });
    }
}

#[derive(Debug)]
struct Shared {
    active: Arc<watch::Sender<ActiveStreams>>,
    containers: HashMap<(String, String, String), Arc<Container>>,
    node_name: String,
    long_metrics_line: Option<usize>,
    cadvisor_containers: usize,
    stream_creation_timeout: Duration,
    requests: Mutex<Vec<RecordedRequest>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug)]
struct LogEntry {
    time: SystemTime,
    data: Bytes,
}

#[derive(Debug)]
pub(crate) struct Container {
    spec: ContainerSpec,
    log: Mutex<Vec<LogEntry>>,
    changed: watch::Sender<()>,
    /// The container's file system, for `kubectl cp` (`tar`, `test`, `cat`).
    files: Mutex<files::FileTree>,
}

impl Container {
    fn new(spec: ContainerSpec) -> Self {
        let c = Self {
            log: Mutex::new(Vec::new()),
            changed: watch::channel(()).0,
            files: Mutex::new(files::FileTree::new()),
            spec,
        };
        c.append(c.spec.logs.clone());
        c
    }

    fn append(&self, mut data: Bytes) {
        let time = SystemTime::now();
        {
            let mut log = lock(&self.log);
            while !data.is_empty() {
                let end = data
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(data.len(), |i| i + 1);
                log.push(LogEntry {
                    time,
                    data: data.split_to(end),
                });
            }
        }
        self.changed.send_replace(());
    }
}

async fn accept_loop(listener: TcpListener, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
            () = shared.cancel.cancelled() => return,
        };
        // Like the kubelet (Go sets TCP_NODELAY by default): small writes go out at once.
        let _ = tcp.set_nodelay(true);
        let shared2 = shared.clone();
        let acceptor = acceptor.clone();
        shared.tracker.spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let tls = tokio::select! {
                        r = acceptor.accept(tcp) => r,
                        () = shared2.cancel.cancelled() => return,
                    };
                    if let Ok(tls) = tls {
                        serve_conn(tls, shared2).await;
                    }
                }
                None => serve_conn(tcp, shared2).await,
            }
        });
    }
}

async fn serve_conn<I>(io: I, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cancel = shared.cancel.clone();
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { handle(shared, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            // Follow streams end on cancel, so this normally completes at once; the timeout
            // only bounds a misbehaving peer.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

pub(crate) fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_found() -> Response<Body> {
    full(StatusCode::NOT_FOUND, "404 page not found\n")
}

fn method_not_allowed() -> Response<Body> {
    full(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed")
}

/// Parsed query: name → values in order.
pub(crate) fn parse_query(query: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k))
            .or_default()
            .push(percent_decode(v));
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go-style boolean query parsing (`strconv.ParseBool`); absent means false.
pub(crate) fn query_bool(q: &HashMap<String, Vec<String>>, name: &str) -> Result<bool, ()> {
    match q.get(name).and_then(|v| v.first()).map(String::as_str) {
        None => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("" | "0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(_) => Err(()),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, io::Error> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    lock(&shared.requests).push(RecordedRequest {
        method: req.method().clone(),
        path_and_query,
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let is_get = req.method() == Method::GET;
    let get_or_post = is_get || req.method() == Method::POST;
    match segments.as_slice() {
        ["containerLogs", ns, pod, container] => {
            if !is_get {
                return Ok(method_not_allowed());
            }
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            logs(&shared, &req, &ns, &pod, &container).await
        }
        ["exec" | "attach", ns, pod, container] | ["exec" | "attach", ns, pod, _, container] => {
            if !get_or_post {
                return Ok(method_not_allowed());
            }
            let attach = segments[0] == "attach";
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            Ok(stream::remote_command(
                &shared, req, attach, &ns, &pod, &container,
            ))
        }
        ["portForward", ns, pod] | ["portForward", ns, pod, _] => {
            if !get_or_post {
                return Ok(method_not_allowed());
            }
            let uid = segments.get(3).map(|u| u.to_string());
            let (ns, pod) = (ns.to_string(), pod.to_string());
            Ok(stream::port_forward(
                &shared,
                req,
                &ns,
                &pod,
                uid.as_deref(),
            ))
        }
        ["stats", "summary"] => {
            if !get_or_post {
                return Ok(method_not_allowed());
            }
            let mut resp = full(
                StatusCode::OK,
                stats_summary_json(&shared.node_name, &pods(&shared)),
            );
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        ["metrics"] | ["metrics", "cadvisor" | "resource" | "probes"] => {
            if !is_get {
                return Ok(method_not_allowed());
            }
            Ok(metrics::serve(
                &path,
                req.headers(),
                shared.long_metrics_line,
                shared.cadvisor_containers,
            ))
        }
        ["healthz"] => Ok(full(StatusCode::OK, "ok")),
        _ => Ok(not_found()),
    }
}

fn pods(shared: &Shared) -> Vec<(String, String, Vec<String>)> {
    let mut map: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (ns, pod, c) in shared.containers.keys() {
        map.entry((ns.clone(), pod.clone()))
            .or_default()
            .push(c.clone());
    }
    map.into_iter()
        .map(|((ns, pod), mut cs)| {
            cs.sort();
            (ns, pod, cs)
        })
        .collect()
}

impl Shared {
    pub(crate) fn active_guard(&self, upgrade: bool) -> ActiveGuard {
        ActiveGuard::new(&self.active, upgrade)
    }

    pub(crate) fn pod_exists(&self, ns: &str, pod: &str) -> bool {
        self.containers.keys().any(|(n, p, _)| n == ns && p == pod)
    }

    pub(crate) fn container(&self, ns: &str, pod: &str, c: &str) -> Option<Arc<Container>> {
        self.containers
            .get(&(ns.to_owned(), pod.to_owned(), c.to_owned()))
            .cloned()
    }
}

/// A body fed by a bounded channel; hyper pulling it gives backpressure, and the sender sees
/// `closed()` once hyper drops the body (client gone).
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub(crate) fn channel_body(cap: usize) -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(cap);
    (tx, ChannelBody { rx }.boxed_unsync())
}

fn bad_query() -> Response<Body> {
    full(
        StatusCode::BAD_REQUEST,
        r#"{"message": "Unable to decode query."}"#,
    )
}

async fn logs(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<Response<Body>, io::Error> {
    let mut q = parse_query(req.uri().query());
    if let Some(tail) = q.remove("tail") {
        q.entry("tailLines".to_owned()).or_insert(tail);
    }
    let num = |name: &str| -> Result<Option<i64>, ()> {
        match q.get(name).and_then(|v| v.first()) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| ()),
        }
    };
    let (Ok(tail), Ok(limit), Ok(follow), Ok(timestamps)) = (
        num("tailLines"),
        num("limitBytes"),
        query_bool(&q, "follow"),
        query_bool(&q, "timestamps"),
    ) else {
        return Ok(bad_query());
    };
    if tail.is_some_and(|t| t < 0) {
        return Ok(full(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tailLines: Invalid value: must be greater than or equal to 0",
        ));
    }
    if limit.is_some_and(|l| l < 1) {
        return Ok(full(
            StatusCode::UNPROCESSABLE_ENTITY,
            "limitBytes: Invalid value: must be greater than 0",
        ));
    }
    if !shared.pod_exists(ns, pod) {
        return Ok(full(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" does not exist"),
        ));
    }
    let Some(c) = shared.container(ns, pod, container) else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" not found in pod \"{pod}\""),
        ));
    };
    let cancel = shared.cancel.clone();
    if c.spec.stall {
        // Hold the request forever; on shutdown fail it so hyper drops the connection. It
        // counts as an active log stream, so tests can wait until it is here.
        let _guard = shared.active_guard(false);
        cancel.cancelled().await;
        return Err(io::Error::other("kubelet shutting down"));
    }
    let limit = limit.map_or(u64::MAX, |l| l as u64);
    let (tx, body) = channel_body(8);
    let guard = shared.active_guard(false);
    if let Some(total) = c.spec.generated {
        shared.tracker.spawn(async move {
            let _guard = guard;
            let total = total.min(limit);
            let mut pos = 0u64;
            while pos < total {
                let n = (total - pos).min(64 * 1024);
                let chunk = crate::content::generated_bytes(pos, n as usize);
                tokio::select! {
                    r = tx.send(chunk) => if r.is_err() { return },
                    () = cancel.cancelled() => return,
                }
                pos += n;
            }
        });
    } else {
        let tail = tail.map(|t| t as usize);
        shared.tracker.spawn(async move {
            let _guard = guard;
            stream_log(c, tx, cancel, follow, tail, limit, timestamps).await;
        });
    }
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

async fn stream_log(
    c: Arc<Container>,
    tx: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
    follow: bool,
    tail: Option<usize>,
    mut remaining: u64,
    timestamps: bool,
) {
    let mut changed = c.changed.subscribe();
    let mut next = {
        let log = lock(&c.log);
        tail.map_or(0, |t| log.len().saturating_sub(t))
    };
    loop {
        changed.borrow_and_update();
        let mut chunk = BytesMut::new();
        {
            let log = lock(&c.log);
            for entry in log.iter().skip(next) {
                if timestamps {
                    chunk.extend_from_slice(rfc3339_nano_fixed(entry.time).as_bytes());
                    chunk.extend_from_slice(b" ");
                }
                chunk.extend_from_slice(&entry.data);
            }
            next = log.len();
        }
        let mut done = false;
        if chunk.len() as u64 >= remaining {
            chunk.truncate(remaining as usize);
            done = true;
        }
        remaining -= chunk.len() as u64;
        if !chunk.is_empty() {
            tokio::select! {
                r = tx.send(chunk.freeze()) => if r.is_err() { return },
                () = cancel.cancelled() => return,
            }
        }
        if done || !follow {
            return;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            () = tx.closed() => return,
            () = cancel.cancelled() => return,
        }
    }
}

/// Formats `t` (UTC) like the kubelet's log timestamps: `2006-01-02T15:04:05.000000000Z`.
pub fn rfc3339_nano_fixed(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_format() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339_nano_fixed(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(
            rfc3339_nano_fixed(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_nano_fixed(t), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("command=sh&command=-c&command=exit%203&tty=1&x"));
        assert_eq!(q["command"], ["sh", "-c", "exit 3"]);
        assert_eq!(query_bool(&q, "tty"), Ok(true));
        assert_eq!(q["x"], [""]);
        assert_eq!(parse_query(Some("a=%zz%"))["a"], ["%zz%"]);
    }
}
