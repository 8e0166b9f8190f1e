//! The cloud end of the tunnel: accepts edges on `wss://…/v1/kubeedge/connect`.
//!
//! Each TCP connection gets a TLS handshake that requires a client certificate from the
//! configured CA, then one HTTP/1.1 request: the websocket upgrade. Before answering 101 we
//! check who is asking (design decision 7): the node name comes from the certificate and
//! must equal the `SessionHostNameOverride` header; the node IP must not belong to another
//! live node. The dialect is tether/2 only if the edge offered it. After the upgrade the
//! session is registered, runs until it ends, and is removed again.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming as HyperBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use tungstenite::handshake::derive_accept_key;

use crate::config::SessionConfig;
use crate::dialect::{
    CONNECT_PATH, Dialect, HOSTNAME_HEADER, INTERNAL_IP_HEADER, NodeIdentity, PROTOCOL_HEADER,
    PROTOCOL_TETHER2, Role, WINDOW_HEADER,
};
use crate::error::Result;
use crate::registry::Registry;
use crate::session::{Session, SessionParams};
use crate::tls;

/// Default time allowed for the TLS handshake plus the upgrade request (KubeEdge: 2 s for
/// the upgrade alone; weak links need more for TLS).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on tunnel connections being handshaken or served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default time open streams get to finish when the server shuts down.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Tunables of the tunnel server.
#[derive(Debug, Clone)]
pub struct TunnelServerConfig {
    /// Session tunables for every accepted edge.
    pub session: SessionConfig,
    /// TLS handshake plus upgrade request must finish within this.
    pub handshake_timeout: Duration,
    /// Connections in the TLS and upgrade phase at once; more wait in the kernel's accept
    /// queue. An established session no longer holds a slot (sessions are bounded by the
    /// nodes whose certificates the CA issued).
    pub max_connections: usize,
    /// On shutdown, how long open streams may run before sessions are closed.
    pub drain_grace: Duration,
}

impl Default for TunnelServerConfig {
    fn default() -> Self {
        TunnelServerConfig {
            session: SessionConfig::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            drain_grace: DEFAULT_DRAIN_GRACE,
        }
    }
}

/// Why a handshake was refused; counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// TLS failed (no certificate, wrong CA, timeout).
    Tls,
    /// Not a websocket upgrade on the connect path.
    BadRequest,
    /// The certificate does not name the node the edge claims.
    Identity,
    /// The node IP belongs to another live node.
    IpConflict,
}

impl Refusal {
    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Tls => "tls",
            Refusal::BadRequest => "bad_request",
            Refusal::Identity => "identity",
            Refusal::IpConflict => "ip_conflict",
        }
    }
}

/// Things an operator wants to count; the binary plugs its metrics in here.
pub trait TunnelObserver: Send + Sync + 'static {
    /// A handshake was refused.
    fn refused(&self, _reason: Refusal) {}
    /// A session started.
    fn session_started(&self, _session: &Session) {}
    /// A session ended.
    fn session_ended(&self, _session: &Session) {}
}

/// An observer that counts nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;
impl TunnelObserver for NoObserver {}

/// Accepts edge tunnels and keeps their sessions in a [`Registry`].
#[derive(Clone)]
pub struct TunnelServer {
    acceptor: TlsAcceptor,
    registry: Arc<Registry>,
    config: TunnelServerConfig,
    observer: Arc<dyn TunnelObserver>,
}

impl std::fmt::Debug for TunnelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelServer")
            .field("config", &self.config)
            .finish()
    }
}

impl TunnelServer {
    /// A server presenting `tls` (which must require client certificates; see
    /// [`tls::server_config`]) and registering sessions in `registry`.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        registry: Arc<Registry>,
        config: TunnelServerConfig,
    ) -> TunnelServer {
        TunnelServer {
            acceptor: TlsAcceptor::from(tls),
            registry,
            config,
            observer: Arc::new(NoObserver),
        }
    }

    /// Reports handshakes and sessions to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn TunnelObserver>) -> TunnelServer {
        self.observer = observer;
        self
    }

    /// The registry sessions are kept in.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Accepts tunnels on `listener` until `shutdown` is cancelled, then drains: edges are
    /// told to go away, open streams get the drain grace, and the remaining sessions are
    /// closed. Returns once every connection task has ended.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        let tracker = TaskTracker::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(self.config.max_connections));
        let sessions_done = CancellationToken::new();
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep going.
                        warn!(error = %e, "tunnel accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let server = self.clone();
            let task_tracker = tracker.clone();
            let stop = sessions_done.clone();
            tracker.spawn(async move {
                server.connection(tcp, peer, task_tracker, stop).await;
                drop(permit);
            });
        }
        drop(listener);
        info!(sessions = self.registry.len(), "tunnel server draining");
        for session in self.registry.sessions() {
            session.drain("the cloud is shutting down");
        }
        let sessions = self.registry.sessions();
        let all_idle = async {
            for session in &sessions {
                session.idle().await;
            }
        };
        if tokio::time::timeout(self.config.drain_grace, all_idle)
            .await
            .is_err()
        {
            warn!(grace = ?self.config.drain_grace, "drain grace over; closing sessions with open streams");
        }
        sessions_done.cancel();
        for session in self.registry.sessions() {
            session.close("the cloud is shutting down");
        }
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    async fn connection(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) {
        if let Err(e) = crate::session::tune_socket(&tcp, &self.config.session) {
            debug!(%peer, error = %e, "tunnel socket options not set");
        }
        let timeout = self.config.handshake_timeout;
        let tls = match tokio::time::timeout(timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                info!(%peer, error = %e, "tunnel TLS handshake refused");
                self.observer.refused(Refusal::Tls);
                return;
            }
            Err(_) => {
                info!(%peer, "tunnel TLS handshake timed out");
                self.observer.refused(Refusal::Tls);
                return;
            }
        };
        let identity = tls::peer_node_name(tls.get_ref().1).map_err(|e| e.to_string());
        let server = self.clone();
        let service = service_fn(move |req: Request<HyperBody>| {
            let server = server.clone();
            let identity = identity.clone();
            let tracker = tracker.clone();
            let stop = stop.clone();
            async move { Ok::<_, Infallible>(server.upgrade(req, peer, identity, tracker, stop)) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(tls), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            debug!(%peer, error = %e, "tunnel HTTP connection ended with an error");
        }
    }

    /// Checks an upgrade request; on success answers 101 and starts the session.
    fn upgrade(
        &self,
        mut req: Request<HyperBody>,
        peer: SocketAddr,
        identity: Result<String, String>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Response<Full<Bytes>> {
        let accepted = match self.check(&req, peer, identity) {
            Ok(accepted) => accepted,
            Err((status, reason, refusal)) => {
                info!(%peer, %status, reason, "tunnel refused");
                self.observer.refused(refusal);
                return plain(status, reason);
            }
        };
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accepted.accept_key) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if accepted.dialect == Dialect::Tether2 {
            headers.insert(PROTOCOL_HEADER, HeaderValue::from_static(PROTOCOL_TETHER2));
            headers.insert(
                WINDOW_HEADER,
                HeaderValue::from(self.config.session.stream_window),
            );
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let server = self.clone();
        let span = info_span!("session", node = %accepted.node.name, dialect = %accepted.dialect);
        tracker.spawn(
            async move {
                let upgraded = match on_upgrade.await {
                    Ok(u) => u,
                    Err(e) => {
                        warn!(error = %e, "websocket upgrade did not complete");
                        return;
                    }
                };
                let (io, leftover): (Box<dyn crate::session::Io>, Bytes) =
                    match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
                        Ok(parts) => (Box::new(parts.io.into_inner()), parts.read_buf),
                        Err(upgraded) => (Box::new(TokioIo::new(upgraded)), Bytes::new()),
                    };
                server.run_session(io, accepted, leftover, stop).await;
            }
            .instrument(span),
        );
        response
    }

    async fn run_session(
        &self,
        io: Box<dyn crate::session::Io>,
        accepted: Accepted,
        leftover: Bytes,
        stop: CancellationToken,
    ) {
        let params = SessionParams {
            role: Role::Cloud,
            dialect: accepted.dialect,
            node: accepted.node,
            config: self.config.session.clone(),
            peer_window: accepted.peer_window,
            leftover,
        };
        let (session, _incoming, driver) = Session::establish(io, params);
        if let Err(e) = self.registry.register(session.clone()) {
            // Lost a race with another node for the same IP after the check.
            warn!(error = %e, "session refused after the upgrade");
            self.observer.refused(Refusal::IpConflict);
            return;
        }
        // Requests can reach the node from now on; the first frame tells a tether edge so.
        if session.dialect() == Dialect::Tether2 {
            session.ping_now();
        }
        info!(node = %session.node(), dialect = %session.dialect(), "session started");
        self.observer.session_started(&session);
        if stop.is_cancelled() {
            session.drain("the cloud is shutting down");
        }
        let result = driver.run().await;
        self.registry.remove_if_same(&session);
        self.observer.session_ended(&session);
        if let Err(e) = result {
            info!(node = %session.node().name, error = %e, "session failed");
        }
    }

    fn check(
        &self,
        req: &Request<HyperBody>,
        peer: SocketAddr,
        identity: Result<String, String>,
    ) -> Result<Accepted, (StatusCode, String, Refusal)> {
        let bad = |reason: &str| {
            (
                StatusCode::BAD_REQUEST,
                reason.to_owned(),
                Refusal::BadRequest,
            )
        };
        let path = req.uri().path();
        if path != CONNECT_PATH && path.strip_suffix('/') != Some(CONNECT_PATH) {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no tunnel endpoint at {path}; edges connect to {CONNECT_PATH}"),
                Refusal::BadRequest,
            ));
        }
        let headers = req.headers();
        if req.method() != Method::GET
            || !header_has_token(headers, header::UPGRADE, "websocket")
            || !header_has_token(headers, header::CONNECTION, "upgrade")
        {
            return Err(bad(
                "expected a websocket upgrade (GET with Upgrade: websocket)",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(bad("unsupported Sec-WebSocket-Version (13 is required)"));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(bad("missing Sec-WebSocket-Key"));
        };
        let accept_key = derive_accept_key(key.as_bytes());

        let cert_node = identity.map_err(|reason| {
            (
                StatusCode::FORBIDDEN,
                format!("client certificate names no node: {reason}"),
                Refusal::Identity,
            )
        })?;
        let claimed = headers
            .get(HOSTNAME_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        if claimed.is_empty() {
            return Err((
                StatusCode::FORBIDDEN,
                format!("missing {HOSTNAME_HEADER} header"),
                Refusal::Identity,
            ));
        }
        if claimed != cert_node {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "the client certificate is for node {cert_node:?} but the tunnel claims node {claimed:?}"
                ),
                Refusal::Identity,
            ));
        }
        let ip = match headers
            .get(INTERNAL_IP_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
        {
            Some(text) if !text.is_empty() => match text.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return Err(bad(&format!("{INTERNAL_IP_HEADER} {text:?} is not an IP"))),
            },
            // KubeEdge falls back to the connection's address; unlike KubeEdge, IPv6-safe.
            _ => peer.ip(),
        };
        if let Err(e) = self.registry.check_ip(&cert_node, Some(ip)) {
            return Err((StatusCode::CONFLICT, e.to_string(), Refusal::IpConflict));
        }
        let offered = headers
            .get(PROTOCOL_HEADER)
            .is_some_and(|v| v.as_bytes() == PROTOCOL_TETHER2.as_bytes());
        let (dialect, peer_window) = if offered {
            let window = headers
                .get(WINDOW_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|w| *w >= 1024)
                .ok_or_else(|| {
                    bad(&format!(
                        "tether/2 needs a {WINDOW_HEADER} of at least 1024"
                    ))
                })?;
            (Dialect::Tether2, window)
        } else {
            (Dialect::KubeEdge, 0)
        };
        Ok(Accepted {
            node: NodeIdentity {
                name: cert_node,
                ip: Some(ip),
            },
            dialect,
            peer_window,
            accept_key,
        })
    }
}

struct Accepted {
    node: NodeIdentity,
    dialect: Dialect,
    peer_window: u32,
    accept_key: String,
}

fn plain(status: StatusCode, reason: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reason + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // A refused edge backs off and dials again; nothing more will come on this connection.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// True if a comma-separated header contains `token` (case-insensitive).
pub(crate) fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}
