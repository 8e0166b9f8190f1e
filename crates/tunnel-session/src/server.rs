//! The cloud end of the tunnel: accepts edges on `wss://…/v1/kubeedge/connect`.
//!
//! Each TCP connection gets a TLS handshake that requires a client certificate from the
//! configured CA, then one HTTP/1.1 request: the websocket upgrade. Before answering 101 we
//! check who is asking (design decision 7): the node name comes from the certificate and
//! must equal the `SessionHostNameOverride` header; the node IP must not belong to another
//! live node. The dialect is tether/2 only if the edge offered it. After the upgrade the
//! session is registered, runs until it ends, and is removed again.
//!
//! The accept path is bounded (see `admission`): connections open at once, handshakes at
//! once (a reconnect storm waits its turn in a queue, for at most two handshake timeouts),
//! connections per source address in the handshake (a flood of idle connections from one
//! address holds only a few slots), and one deadline from taking a handshake slot to the
//! answered upgrade (a peer that sends nothing, or trickles bytes, is cut at it).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming as HyperBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use tungstenite::handshake::derive_accept_key;

use crate::admission::{Admission, Limits, SourceSlot};
use crate::config::SessionConfig;
use crate::dialect::{
    CONNECT_PATH, Dialect, HOSTNAME_HEADER, INTERNAL_IP_HEADER, NodeIdentity, PROTOCOL_HEADER,
    PROTOCOL_TETHER2, Role, WINDOW_HEADER,
};
use crate::error::Result;
use crate::registry::Registry;
use crate::session::{Session, SessionParams};
use crate::tls;

/// The handshake check, reachable by the fuzz targets (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz_check;

/// Default time allowed for the TLS handshake plus the upgrade request, from taking a handshake
/// slot (KubeEdge: 2 s for the upgrade alone; weak links need more for TLS).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on tunnel connections open at once, handshaking or serving a session.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default limit on handshakes in progress at once.
///
/// A handshake costs the cloud about 0.4–0.7 ms of CPU (docs/BENCHMARKS.md, scenario 6 and the
/// storm benchmark), so 512 of them at once are at most ~0.2 s of work on two cores: each finishes far inside the deadline
/// even when all arrive together. And 512 in flight still sustain ~2,500 handshakes/s when each
/// takes 200 ms of round trips on a long link, more than the CPU allows anyway.
pub const DEFAULT_MAX_HANDSHAKES: usize = 512;
/// Default limit on connections waiting for or in a handshake from one source address (an
/// IPv4 address or an IPv6 /64).
///
/// Far below [`DEFAULT_MAX_HANDSHAKES`], so one address flooding the port leaves most slots to
/// everyone else; high enough for a site of edges behind one NAT address to come back at
/// ~100 handshakes/s from that address after a cloud restart (refused ones back off and retry).
pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: usize = 64;
/// How long an accepted connection may wait for a handshake slot, in handshake timeouts.
///
/// The queue holds no CPU and no handshake slot, only a socket: cutting a queued edge at the
/// handshake deadline would only send it into backoff while it still waits (measured: a
/// 10,000-edge reconnect took 23.5 s with 2,510 such cuts, 6.7 s without). Two timeouts of
/// queueing plus one of handshake are 30 s by default, KubeEdge's edge-side dial timeout: an
/// edge is served or refused before it gives up. A flood from many addresses is still drained
/// at the same bound.
const QUEUE_WAIT_TIMEOUTS: u32 = 2;
/// Default time open streams get to finish when the server shuts down.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Tunables of the tunnel server.
#[derive(Debug, Clone)]
pub struct TunnelServerConfig {
    /// Session tunables for every accepted edge.
    pub session: SessionConfig,
    /// From taking a handshake slot until the upgrade is answered (TLS handshake plus upgrade
    /// request): a peer that sends nothing, or too slowly, is cut at this deadline. Waiting
    /// for the slot is bounded by twice this; so accept to upgrade takes at most three times.
    pub handshake_timeout: Duration,
    /// Connections open at once, waiting for a handshake, handshaking or serving a session;
    /// more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Handshakes in progress at once; more accepted connections wait their turn (within the
    /// handshake deadline) rather than all competing for the CPU.
    pub max_handshakes: usize,
    /// Connections waiting for or in a handshake at once from one source address (IPv4
    /// address or IPv6 /64); connections over it are reset as soon as they are accepted.
    pub max_handshakes_per_source: usize,
    /// On shutdown, how long open streams may run before sessions are closed.
    pub drain_grace: Duration,
}

impl Default for TunnelServerConfig {
    fn default() -> Self {
        TunnelServerConfig {
            session: SessionConfig::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_source: DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            drain_grace: DEFAULT_DRAIN_GRACE,
        }
    }
}

/// Why a handshake was refused; counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// TLS failed (no certificate, wrong CA, not TLS at all).
    Tls,
    /// Not a websocket upgrade on the connect path.
    BadRequest,
    /// The certificate does not name the node the edge claims.
    Identity,
    /// The node IP belongs to another live node.
    IpConflict,
    /// The handshake deadline passed before the upgrade was answered (a peer that sent
    /// nothing, or too slowly).
    Timeout,
    /// The source address already had as many connections in the handshake as allowed.
    SourceLimit,
}

impl Refusal {
    /// Every reason, e.g. to create each metric series up front.
    pub const ALL: [Refusal; 6] = [
        Refusal::Tls,
        Refusal::BadRequest,
        Refusal::Identity,
        Refusal::IpConflict,
        Refusal::Timeout,
        Refusal::SourceLimit,
    ];

    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Tls => "tls",
            Refusal::BadRequest => "bad_request",
            Refusal::Identity => "identity",
            Refusal::IpConflict => "ip_conflict",
            Refusal::Timeout => "timeout",
            Refusal::SourceLimit => "source_limit",
        }
    }
}

/// Things an operator wants to count; the binary plugs its metrics in here.
pub trait TunnelObserver: Send + Sync + 'static {
    /// A handshake was refused.
    fn refused(&self, _reason: Refusal) {}
    /// A connection was accepted and its handshake began. Pairs with one
    /// [`TunnelObserver::handshake_ended`]; the difference is the handshakes in progress.
    fn handshake_started(&self) {}
    /// A handshake ended: upgraded, refused or timed out.
    fn handshake_ended(&self) {}
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
    /// `config.session`, shared by every session rather than copied into each.
    session_config: Arc<SessionConfig>,
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
            session_config: Arc::new(config.session.clone()),
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
        // Shared by reference: every session task holds the server for its whole life, and
        // ten thousand idle sessions should each pay for a pointer, not a copy.
        let this = Arc::new(self);
        this.accept_until(listener, shutdown).await
    }

    async fn accept_until(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let tracker = TaskTracker::new();
        let admission = Arc::new(Admission::new(
            Limits {
                connections: self.config.max_connections,
                handshakes: self.config.max_handshakes,
                handshakes_per_source: self.config.max_handshakes_per_source,
            },
            Arc::clone(&self.observer),
        ));
        let sessions_done = CancellationToken::new();
        loop {
            // Room for the connection first: until then, edges wait in the kernel's accept
            // queue. Handshakes are limited after the accept, in our own queue.
            let connection = tokio::select! {
                () = shutdown.cancelled() => break,
                permits = admission.ready() => match permits {
                    Some(p) => p,
                    None => break,
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
            let queued_until = Instant::now() + QUEUE_WAIT_TIMEOUTS * self.config.handshake_timeout;
            let Some(source) = admission.admit(peer.ip()) else {
                // Reset rather than close: no TIME_WAIT left behind per refused connection.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                debug!(%peer, "tunnel connection refused: too many handshakes from its address");
                self.observer.refused(Refusal::SourceLimit);
                continue;
            };
            let server = Arc::clone(self);
            let task_tracker = tracker.clone();
            let stop = sessions_done.clone();
            let admitted = Admitted {
                queued_until,
                source,
                admission: Arc::clone(&admission),
                connection: Arc::new(connection),
            };
            tracker.spawn(async move {
                server
                    .connection(tcp, peer, admitted, task_tracker, stop)
                    .await;
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

    /// One accepted connection until its upgrade is answered (then its session runs in a task
    /// of its own) or it is refused. The wait for a handshake slot is bounded by
    /// `admitted.queued_until`, the handshake itself by the handshake timeout.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) {
        let Admitted {
            queued_until,
            source,
            admission,
            connection,
        } = admitted;
        // Wait for a handshake slot, in arrival order.
        let slot = match tokio::time::timeout_at(queued_until, admission.handshake()).await {
            Ok(Some(slot)) => slot,
            Ok(None) => return,
            Err(_) => {
                info!(%peer, "tunnel connection timed out waiting for a handshake slot");
                self.observer.refused(Refusal::Timeout);
                return;
            }
        };
        // From here the peer is read: the handshake deadline runs.
        let deadline = Instant::now() + self.config.handshake_timeout;
        if let Err(e) = crate::session::tune_socket(&tcp, &self.config.session) {
            debug!(%peer, error = %e, "tunnel socket options not set");
        }
        let tls = match tokio::time::timeout_at(deadline, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                info!(%peer, error = %e, "tunnel TLS handshake refused");
                self.observer.refused(Refusal::Tls);
                return;
            }
            Err(_) => {
                info!(%peer, "tunnel TLS handshake timed out");
                self.observer.refused(Refusal::Timeout);
                return;
            }
        };
        let identity = tls::peer_node_name(tls.get_ref().1).map_err(|e| e.to_string());
        let server = Arc::clone(&self);
        let service = service_fn(move |req: Request<HyperBody>| {
            let server = Arc::clone(&server);
            let identity = identity.clone();
            let tracker = tracker.clone();
            let stop = stop.clone();
            let connection = Arc::clone(&connection);
            async move {
                Ok::<_, Infallible>(server.upgrade(req, peer, identity, tracker, stop, connection))
            }
        });
        // hyper's own header timer, should it ever start first, never outlasts our deadline.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(remaining)
            .serve_connection(TokioIo::new(tls), service)
            .with_upgrades();
        // The connection future ends once the upgraded socket is handed to the session task,
        // or when the request was refused; a peer that trickles its request, or never reads
        // the answer, is cut at the deadline.
        match tokio::time::timeout_at(deadline, conn).await {
            Ok(Ok(())) => {}
            // hyper's header timer and ours end in the same tick: the same deadline either way.
            Ok(Err(e)) if e.is_timeout() => {
                info!(%peer, "tunnel upgrade timed out");
                self.observer.refused(Refusal::Timeout);
            }
            Ok(Err(e)) => debug!(%peer, error = %e, "tunnel HTTP connection ended with an error"),
            Err(_) => {
                info!(%peer, "tunnel upgrade timed out");
                self.observer.refused(Refusal::Timeout);
            }
        }
        drop(slot);
        drop(source);
    }

    /// Checks an upgrade request; on success answers 101 and starts the session, which holds
    /// the `connection` slot until it ends.
    fn upgrade(
        self: &Arc<Self>,
        mut req: Request<HyperBody>,
        peer: SocketAddr,
        identity: Result<String, String>,
        tracker: TaskTracker,
        stop: CancellationToken,
        connection: Arc<OwnedSemaphorePermit>,
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
        // Taken apart: the session task keeps only what the session needs.
        let Accepted {
            node,
            dialect,
            peer_window,
            accept_key,
        } = accepted;
        if let Ok(v) = HeaderValue::from_str(&accept_key) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if dialect == Dialect::Tether2 {
            headers.insert(PROTOCOL_HEADER, HeaderValue::from_static(PROTOCOL_TETHER2));
            headers.insert(
                WINDOW_HEADER,
                HeaderValue::from(self.config.session.announced_window()),
            );
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let server = Arc::clone(self);
        let span = info_span!("session", node = %node.name, dialect = %dialect);
        let start = SessionStart {
            node,
            dialect,
            peer_window,
        };
        // This task waits for the upgrade, then hands the session to a task of its own,
        // built by a plain function: an async block keeps room for everything it captured
        // and every value it held across an await for as long as it lives, so a session
        // run inside this one would carry the upgrade's state for the session's life.
        let session_tracker = tracker.clone();
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
                if let Some(session) = server.start_session(io, start, leftover, &stop, connection)
                {
                    let session = session.instrument(tracing::Span::current());
                    session_tracker.spawn(session);
                }
            }
            .instrument(span),
        );
        response
    }

    /// Registers the session and returns the future that runs it, or `None` if it lost a
    /// race for its node IP after the check.
    fn start_session(
        self: &Arc<Self>,
        io: Box<dyn crate::session::Io>,
        start: SessionStart,
        leftover: Bytes,
        stop: &CancellationToken,
        connection: Arc<OwnedSemaphorePermit>,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let params = SessionParams {
            role: Role::Cloud,
            dialect: start.dialect,
            node: start.node,
            config: Arc::clone(&self.session_config),
            peer_window: start.peer_window,
            leftover,
        };
        let (session, _incoming, driver) = Session::establish(io, params);
        if let Err(e) = self.registry.register(session.clone()) {
            // Lost a race with another node for the same IP after the check.
            warn!(error = %e, "session refused after the upgrade");
            self.observer.refused(Refusal::IpConflict);
            return None;
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
        let server = Arc::clone(self);
        // `map` rather than an async block: the block would keep a second copy of the driver.
        Some(driver.run().map(move |result| {
            server.registry.remove_if_same(&session);
            server.observer.session_ended(&session);
            if let Err(e) = result {
                info!(node = %session.node().name, error = %e, "session failed");
            }
            drop(connection);
        }))
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

/// What the accept loop hands a connection's task: its queueing deadline and its slots.
struct Admitted {
    /// `accept` plus [`QUEUE_WAIT_TIMEOUTS`] handshake timeouts.
    queued_until: Instant,
    /// Its source's count, given back when the handshake ends.
    source: SourceSlot,
    /// Where it waits for a handshake slot.
    admission: Arc<Admission>,
    /// Its place among the connections, held by the session until it ends.
    connection: Arc<OwnedSemaphorePermit>,
}

/// What the handshake check accepted (visible in the crate for the fuzz targets).
pub(crate) struct Accepted {
    pub(crate) node: NodeIdentity,
    pub(crate) dialect: Dialect,
    pub(crate) peer_window: u32,
    pub(crate) accept_key: String,
}

/// What a session task keeps from its upgrade request until the upgrade completes.
struct SessionStart {
    node: NodeIdentity,
    dialect: Dialect,
    peer_window: u32,
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
