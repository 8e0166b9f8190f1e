//! [`TestApiServer`]: a minimal kube-apiserver that calls "the kubelet" the way the real one does.
//!
//! # How this fits
//!
//! cloudstream sits where kube-apiserver expects a node's kubelet, so the way the API server
//! calls a kubelet decides what our stream server sees. This server reproduces those calls
//! (spec kubeedge-stream.md §5.1) for the real `kubectl` binary and for our test clients:
//!
//! - **Discovery, pods and nodes** for kubectl: `/version`, legacy discovery (`/api`, `/apis`,
//!   `/api/v1`), `GET`/`LIST`/`WATCH` of pods (field selectors `spec.nodeName`,
//!   `metadata.name`, `metadata.namespace`, `status.phase`; resource versions; `410 Expired`),
//!   `GET`/`LIST` of nodes. This is also the API our pod resolver watches.
//! - **Pod subresources proxied to the kubelet** of the pod's node, dialled at one configured
//!   address (as DNAT sends every node's kubelet port to cloudstream):
//!   - `log` and the node proxy (`/api/v1/nodes/<n>/proxy/...`, with `X-Forwarded-Uri`) are
//!     requests the API server builds itself, so they carry `Host: <node address>:<port>`;
//!   - `exec`, `attach` and `portforward` over **SPDY** are proxied by apimachinery's
//!     `UpgradeAwareHandler` with `UseLocationHost: false`: the kubelet sees the **client's**
//!     `Host` (this server's own address), and the bytes pass untouched;
//!   - `portforward` over **WebSocket** (`SPDY/3.1+portforward.k8s.io`, kubectl ≥ 1.31) is
//!     tunnelled: the WebSocket's binary messages carry the SPDY bytes, which go to the
//!     kubelet as an SPDY upgrade — again with the client's `Host`;
//!   - `exec`/`attach` over **WebSocket** (kubectl ≥ 1.30) are translated: the WebSocket ends
//!     here and an SPDY session goes to the kubelet, with the node's address as `Host`, as
//!     kube-apiserver's stream translator does. So every kubelet leg is SPDY.
//!
//! Clients authenticate with a client certificate from the server's CA or the bearer token
//! [`TOKEN`]. [`TestApiServer::write_kubeconfig`] writes a kubeconfig for kubectl and kube-rs.
//! Every request is counted by kind so tests can tell a cached answer from an API round trip.

mod proxy;
mod store;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

pub use store::{TestNode, TestPod};

use crate::kubelet::parse_query;
use crate::pki::{self, Identity, TestPki};
use store::{FieldSelector, Replay, Store};

/// The bearer token the server accepts besides client certificates.
pub const TOKEN: &str = "tether-test-token";

/// The Kubernetes version the server reports.
const VERSION: (&str, &str) = ("1", "32");

/// Response body type of the test API server.
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, io::Error>;

/// Where the API server's kubelet connections go: every node's kubelet address ends up here,
/// as KubeEdge's DNAT sends it to cloudstream (or, for a baseline, to one kubelet directly).
#[derive(Clone)]
pub enum KubeletDial {
    /// HTTPS with the API server's kubelet-client certificate (`--kubelet-client-certificate`).
    Tls {
        /// The address to connect to.
        addr: SocketAddr,
        /// TLS client configuration (trusting the kubelet's CA, presenting a client cert).
        config: Arc<ClientConfig>,
        /// Name checked against the server certificate.
        server_name: String,
    },
    /// Plain HTTP (a test kubelet without TLS).
    Plain(SocketAddr),
}

impl std::fmt::Debug for KubeletDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeletDial::Tls { addr, .. } => write!(f, "Tls({addr})"),
            KubeletDial::Plain(addr) => write!(f, "Plain({addr})"),
        }
    }
}

/// Requests the server answered, by kind.
#[derive(Debug, Default)]
pub struct Counters {
    pod_gets: AtomicUsize,
    pod_lists: AtomicUsize,
    pod_watches: AtomicUsize,
    kubelet_requests: AtomicUsize,
}

impl Counters {
    /// `GET` of one pod.
    pub fn pod_gets(&self) -> usize {
        self.pod_gets.load(Ordering::SeqCst)
    }
    /// `LIST` of pods (any namespace or selector).
    pub fn pod_lists(&self) -> usize {
        self.pod_lists.load(Ordering::SeqCst)
    }
    /// `WATCH` requests on pods.
    pub fn pod_watches(&self) -> usize {
        self.pod_watches.load(Ordering::SeqCst)
    }
    /// Requests proxied to a kubelet.
    pub fn kubelet_requests(&self) -> usize {
        self.kubelet_requests.load(Ordering::SeqCst)
    }
}

/// State shared by the server's tasks.
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) kubelet: std::sync::Mutex<Option<KubeletDial>>,
    pub(crate) counters: Counters,
    /// While set, pod and node API calls answer `503` (the proxy paths keep working).
    unavailable: AtomicBool,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// Builder for [`TestApiServer`].
#[derive(Debug)]
pub struct TestApiServerBuilder<'a> {
    pki: &'a TestPki,
    kubelet: Option<KubeletDial>,
}

impl<'a> TestApiServerBuilder<'a> {
    /// Sends kubelet requests (pod subresources, node proxy) to `dial`.
    pub fn kubelet(mut self, dial: KubeletDial) -> Self {
        self.kubelet = Some(dial);
        self
    }

    /// Binds `127.0.0.1:0` and serves HTTPS with a certificate from the builder's CA, for the
    /// names `127.0.0.1` and `localhost`.
    pub async fn start(self) -> Result<TestApiServer> {
        let identity = self.pki.server(&["localhost", "127.0.0.1"])?;
        let client = self
            .pki
            .client("kubernetes-admin", Some("system:masters"))?;
        // A client certificate is optional at TLS (bearer tokens are accepted too), but one
        // that is presented must chain to the CA.
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.pki.root_store()),
            pki::provider(),
        )
        .allow_unauthenticated()
        .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(pki::provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
        // HTTP/1.1 only: client-go then uses it for everything, upgrades included.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            store: Store::new(),
            kubelet: std::sync::Mutex::new(self.kubelet),
            counters: Counters::default(),
            unavailable: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        state
            .tracker
            .spawn(accept_loop(listener, acceptor, state.clone()));
        Ok(TestApiServer {
            addr,
            ca_pem: self.pki.ca_pem(),
            client,
            _guard: state.cancel.clone().drop_guard(),
            state,
        })
    }
}

/// A running test API server. Dropping it stops its tasks; [`shutdown`](Self::shutdown)
/// stops them and waits.
pub struct TestApiServer {
    addr: SocketAddr,
    ca_pem: String,
    client: Identity,
    state: Arc<State>,
    _guard: DropGuard,
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestApiServer {
    /// A builder whose serving and client certificates come from `pki`.
    pub fn builder(pki: &TestPki) -> TestApiServerBuilder<'_> {
        TestApiServerBuilder { pki, kubelet: None }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:<port>`: the URL clients use, so the `Host` they send is
    /// `localhost:<port>`, a name no edge node has.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Sends kubelet requests to `dial` from now on (e.g. once cloudstream, which needs this
    /// server's address first, is listening).
    pub fn set_kubelet(&self, dial: KubeletDial) {
        *self
            .state
            .kubelet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(dial);
    }

    /// Request counters.
    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    /// Creates or replaces a pod (a watch sees ADDED or MODIFIED).
    pub fn put_pod(&self, pod: TestPod) {
        self.state.store.put_pod(pod);
    }

    /// Deletes a pod (a watch sees DELETED); `false` if it did not exist.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.state.store.delete_pod(namespace, name)
    }

    /// Creates or replaces a node.
    pub fn put_node(&self, node: TestNode) {
        self.state.store.put_node(node);
    }

    /// While `true`, pod and node API calls answer `503 ServiceUnavailable` and open watches
    /// end, as when etcd or the API server is down; proxied kubelet calls keep working.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.unavailable.store(unavailable, Ordering::SeqCst);
        // Wake the watches so they notice.
        self.state.store.wake();
    }

    /// Writes a kubeconfig for this server (CA, client certificate and key as files beside
    /// it) and returns its path. kubectl and kube-rs both read it.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let ca = dir.join("apiserver-ca.crt");
        let cert = dir.join("apiserver-client.crt");
        let key = dir.join("apiserver-client.key");
        std::fs::write(&ca, &self.ca_pem)?;
        std::fs::write(&cert, &self.client.cert_pem)?;
        std::fs::write(&key, &self.client.key_pem)?;
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {}
    certificate-authority: {}
users:
- name: admin
  user:
    client-certificate: {}
    client-key: {}
contexts:
- name: test
  context:
    cluster: test
    user: admin
    namespace: default
current-context: test
",
            self.url(),
            ca.display(),
            cert.display(),
            key.display()
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Stops serving, ends watches and proxied streams, and waits for every task.
    pub async fn shutdown(self) {
        self.state.cancel.cancel();
        self.state.tracker.close();
        self.state.tracker.wait().await;
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
            () = state.cancel.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state2 = state.clone();
        state.tracker.spawn(async move {
            let tls = tokio::select! {
                r = acceptor.accept(tcp) => r,
                () = state2.cancel.cancelled() => return,
            };
            let Ok(tls) = tls else { return };
            let has_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let cancel = state2.cancel.clone();
            let svc = hyper::service::service_fn(move |req| {
                let state = state2.clone();
                async move { Ok::<_, Infallible>(handle(state, req, has_cert, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    has_cert: bool,
    peer: SocketAddr,
) -> Response<Body> {
    let authorized = has_cert
        || req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query());
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = req.method() == Method::GET;
    match segments.as_slice() {
        ["version"] if get => json_response(
            StatusCode::OK,
            &json!({
                "major": VERSION.0, "minor": VERSION.1,
                "gitVersion": format!("v{}.{}.0", VERSION.0, VERSION.1),
                "platform": "linux/amd64",
            }),
        ),
        ["api"] if get => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }),
        ),
        ["apis"] if get => json_response(
            StatusCode::OK,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        ),
        ["api", "v1"] if get => json_response(StatusCode::OK, &core_v1_resources()),
        ["api", "v1", "nodes", name, "proxy", rest @ ..] => {
            let (name, rest) = ((*name).to_owned(), rest.join("/"));
            proxy::node_proxy(&state, req, &name, &rest, peer).await
        }
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            name,
            sub @ ("log" | "exec" | "attach" | "portforward"),
        ] => {
            let (ns, name, sub) = ((*ns).to_owned(), (*name).to_owned(), (*sub).to_owned());
            proxy::pod_subresource(&state, req, &ns, &name, &sub, &query, peer).await
        }
        _ if state.unavailable.load(Ordering::SeqCst) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the test API server is unavailable",
        ),
        ["api", "v1", "pods"] if get => pods(&state, None, &query).await,
        ["api", "v1", "namespaces", ns, "pods"] if get => {
            let ns = (*ns).to_owned();
            pods(&state, Some(&ns), &query).await
        }
        ["api", "v1", "namespaces", ns, "pods", name] if get => {
            state.counters.pod_gets.fetch_add(1, Ordering::SeqCst);
            match state.store.pod_json(ns, name) {
                Some(pod) => json_response(StatusCode::OK, &pod),
                None => not_found("pods", name),
            }
        }
        ["api", "v1", "nodes"] if get => json_response(StatusCode::OK, &state.store.node_list()),
        ["api", "v1", "nodes", name] if get => match state.store.node_json(name) {
            Some(node) => json_response(StatusCode::OK, &node),
            None => not_found("nodes", name),
        },
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// LIST or WATCH of pods.
async fn pods(
    state: &Arc<State>,
    namespace: Option<&str>,
    query: &HashMap<String, Vec<String>>,
) -> Response<Body> {
    let first = |k: &str| query.get(k).and_then(|v| v.first()).map(String::as_str);
    let selector = match FieldSelector::parse(first("fieldSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let watching = matches!(first("watch"), Some("1" | "true"));
    if !watching {
        state.counters.pod_lists.fetch_add(1, Ordering::SeqCst);
        return json_response(StatusCode::OK, &state.store.pod_list(namespace, &selector));
    }
    state.counters.pod_watches.fetch_add(1, Ordering::SeqCst);
    let from = match first("resourceVersion") {
        // "0" or absent: start from now, after the current objects as ADDED (kube-apiserver
        // sends the current state first).
        None | Some("" | "0") => 0,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => rv,
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version {rv:?}"),
                );
            }
        },
    };
    let timeout = first("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let (tx, body) = http_body_util::channel::Channel::<Bytes, io::Error>::new(16);
    let namespace = namespace.map(str::to_owned);
    let task_state = state.clone();
    state.tracker.spawn(async move {
        let state = task_state;
        let mut tx = tx;
        let mut changed = state.store.subscribe();
        let mut at = from;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if state.unavailable.load(Ordering::SeqCst) {
                return;
            }
            match state.store.replay(at, namespace.as_deref(), &selector) {
                Replay::Expired => {
                    let event = json!({"type": "ERROR", "object": status_json(
                        410, "Expired", &format!("too old resource version: {at}"))});
                    let _ = tx.send_data(line(&event)).await;
                    return;
                }
                Replay::Events(events, reached) => {
                    for event in events {
                        if tx.send_data(line(&event)).await.is_err() {
                            return;
                        }
                    }
                    at = reached;
                }
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(deadline) => return,
                () = state.cancel.cancelled() => return,
            }
        }
    });
    let mut response = Response::new(body.boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn core_v1_resources() -> Value {
    let r = |name: &str, kind: &str, namespaced: bool, verbs: &[&str], short: &[&str]| {
        json!({
            "name": name, "singularName": name.split('/').next().unwrap_or(name).trim_end_matches('s'),
            "namespaced": namespaced, "kind": kind, "verbs": verbs, "shortNames": short,
        })
    };
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            r("pods", "Pod", true, &["get", "list", "watch"], &["po"]),
            r("pods/attach", "PodAttachOptions", true, &["create", "get"], &[]),
            r("pods/exec", "PodExecOptions", true, &["create", "get"], &[]),
            r("pods/log", "Pod", true, &["get"], &[]),
            r("pods/portforward", "PodPortForwardOptions", true, &["create", "get"], &[]),
            r("nodes", "Node", false, &["get", "list"], &["no"]),
            r("nodes/proxy", "NodeProxyOptions", false, &["create", "delete", "get", "patch", "update"], &[]),
        ],
    })
}

pub(crate) fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// A `metav1.Status` response.
pub(crate) fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_json(code.as_u16(), reason, message))
}

fn not_found(resource: &str, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
    )
}

pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(value.to_string()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
