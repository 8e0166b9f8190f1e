//! The apiserver-facing HTTPS server.
//!
//! kube-apiserver, metrics-server and Prometheus connect here as if this were the node's
//! kubelet. TLS requires a client certificate from the configured CA (unlike stock
//! cloudcore, which requests one and never checks it). HTTP/1.1 and HTTP/2 are both served;
//! upgrades need HTTP/1.1, as with a real kubelet.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use tunnel_session::SessionDirectory;

use crate::egress;
use crate::error::Result;
use crate::forward::Forwarding;
use crate::identity::ClientIdentity;
use crate::observe::{NoRelayObserver, RelayObserver};
use crate::pods::PodResolver;
use crate::relay::{ConnectionInfo, Relay};

/// Default time allowed for a client's TLS handshake and request head.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for the kubelet's answer through the tunnel.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit on client connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time in-flight requests (upgraded ones too) get to finish on shutdown.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Sessions whose shortest round trip is at least this get compressed bodies under
/// [`BodyCompression::Auto`]: a WAN link, where bytes are dear; on a LAN or loopback the CPU
/// would cost more than the bytes.
pub const AUTO_COMPRESSION_MIN_RTT: Duration = Duration::from_millis(10);
/// Default number of compressed bodies decoded at once (each decoder holds about 0.2 MiB);
/// beyond it, bodies travel uncompressed.
pub const DEFAULT_MAX_DECODERS: usize = 256;

/// Whether plain response bodies (logs, stats, metrics) are compressed on tether/2 sessions
/// (see the `stream-compress` crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyCompression {
    /// Never.
    Off,
    /// On sessions whose shortest ping round trip is at least [`AUTO_COMPRESSION_MIN_RTT`].
    #[default]
    Auto,
    /// On every tether/2 session.
    On,
}

impl std::str::FromStr for BodyCompression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "off" => Ok(BodyCompression::Off),
            "auto" => Ok(BodyCompression::Auto),
            "on" => Ok(BodyCompression::On),
            other => Err(format!("{other:?} is not one of off, auto, on")),
        }
    }
}

/// Tunables of the stream server.
#[derive(Debug, Clone)]
pub struct StreamServerConfig {
    /// TLS handshake and request head must arrive within this.
    pub handshake_timeout: Duration,
    /// How long to wait for the kubelet's response head through the tunnel.
    pub response_timeout: Duration,
    /// Client HTTP connections served at once. An upgraded stream (exec, attach,
    /// port-forward) leaves its connection's slot when it switches protocols; those are
    /// bounded per node by the session's stream limit.
    pub max_connections: usize,
    /// On shutdown, how long requests may run before they are cut.
    pub drain_grace: Duration,
    /// Compressed plain bodies on thin links.
    pub compression: BodyCompression,
    /// Compressed bodies decoded at once.
    pub max_decoders: usize,
}

impl Default for StreamServerConfig {
    fn default() -> Self {
        StreamServerConfig {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            drain_grace: DEFAULT_DRAIN_GRACE,
            compression: BodyCompression::default(),
            max_decoders: DEFAULT_MAX_DECODERS,
        }
    }
}

/// Serves the kubelet API for every node that has a session in the directory.
pub struct StreamServer {
    acceptor: TlsAcceptor,
    directory: Arc<dyn SessionDirectory>,
    pods: Option<Arc<dyn PodResolver>>,
    forwarding: Option<Forwarding>,
    egress: Option<TcpListener>,
    observer: Arc<dyn RelayObserver>,
    config: StreamServerConfig,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("config", &self.config)
            .field("forwarding", &self.forwarding)
            .field(
                "egress",
                &self.egress.as_ref().and_then(|l| l.local_addr().ok()),
            )
            .finish()
    }
}

impl StreamServer {
    /// A server presenting `tls` — which should require client certificates and offer
    /// `h2` and `http/1.1` by ALPN — and finding sessions in `directory`.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        directory: Arc<dyn SessionDirectory>,
        config: StreamServerConfig,
    ) -> StreamServer {
        StreamServer {
            acceptor: TlsAcceptor::from(tls),
            directory,
            pods: None,
            forwarding: None,
            egress: None,
            observer: Arc::new(NoRelayObserver),
            config,
        }
    }

    /// Reports every stream to `observer` (metrics).
    pub fn with_observer(mut self, observer: Arc<dyn RelayObserver>) -> StreamServer {
        self.observer = observer;
        self
    }

    /// Falls back to looking up the pod's node when the host names no connected node.
    pub fn with_pod_resolver(mut self, pods: Arc<dyn PodResolver>) -> StreamServer {
        self.pods = Some(pods);
        self
    }

    /// Forwards requests for nodes this process does not hold to the replica that does
    /// (see [`crate::forward`]), and accepts requests other replicas forward here.
    pub fn with_forwarding(mut self, forwarding: Forwarding) -> StreamServer {
        self.forwarding = Some(forwarding);
        self
    }

    /// Also serves kube-apiserver's egress proxy protocol (HTTP CONNECT to a node, then TLS)
    /// on `listener` (see [`crate::egress`]).
    pub fn with_egress(mut self, listener: TcpListener) -> StreamServer {
        self.egress = Some(listener);
        self
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and gives in-flight
    /// requests, upgraded streams included, the drain grace before cutting them.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        let connections = TaskTracker::new();
        let streams = TaskTracker::new();
        let cut = CancellationToken::new();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let relay = Arc::new(Relay {
            directory: self.directory.clone(),
            pods: self.pods.clone(),
            forwarding: self.forwarding.clone(),
            observer: self.observer.clone(),
            response_timeout: self.config.response_timeout,
            compression: self.config.compression,
            decoders: Arc::new(tokio::sync::Semaphore::new(self.config.max_decoders)),
            tracker: streams.clone(),
            cut: cut.clone(),
        });
        let limit = Arc::new(tokio::sync::Semaphore::new(self.config.max_connections));
        let egress_listener = self.egress;
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (tcp, peer, is_egress) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => (tcp, peer, false),
                    Err(e) => {
                        warn!(error = %e, "stream accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                accepted = accept_if_any(egress_listener.as_ref()) => match accepted {
                    Ok((tcp, peer)) => (tcp, peer, true),
                    Err(e) => {
                        warn!(error = %e, "egress accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let relay = relay.clone();
            let timeout = self.config.handshake_timeout;
            let cut = cut.clone();
            let watcher = graceful.watcher();
            connections.spawn(async move {
                if is_egress {
                    if let Some((tcp, node)) = egress::connect(tcp, peer, &relay, timeout).await {
                        let pinned = ConnectionInfo {
                            pinned_node: Some(node),
                            ..ConnectionInfo::default()
                        };
                        serve_connection(tcp, peer, acceptor, relay, timeout, watcher, cut, pinned)
                            .await;
                    }
                } else {
                    serve_connection(
                        tcp,
                        peer,
                        acceptor,
                        relay,
                        timeout,
                        watcher,
                        cut,
                        ConnectionInfo::default(),
                    )
                    .await;
                }
                drop(permit);
            });
        }
        drop(egress_listener);
        drop(listener);
        info!("stream server draining");
        let grace = self.config.drain_grace;
        let drained = async {
            graceful.shutdown().await;
            streams.close();
            streams.wait().await;
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            warn!(?grace, "drain grace over; cutting the remaining requests");
        }
        cut.cancel();
        // Cut bridges end at once; wait for them so no task outlives `serve`.
        streams.close();
        streams.wait().await;
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

/// Accepts from `listener`, or never when there is none.
async fn accept_if_any(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// TLS with a client certificate, then HTTP/1.1 or HTTP/2 until the client leaves. `info`
/// carries what is known before TLS (the egress target); the client's identity is added.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    relay: Arc<Relay>,
    timeout: Duration,
    watcher: hyper_util::server::graceful::Watcher,
    cut: CancellationToken,
    mut info: ConnectionInfo,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "stream client refused at TLS");
            return;
        }
        Err(_) => {
            info!(%peer, "stream client TLS handshake timed out");
            return;
        }
    };
    info.identity = ClientIdentity::of(tls.get_ref().1);
    if let Some(replica) = &info.identity.replica {
        debug!(%peer, replica, "connection from another replica");
    }
    let info = Arc::new(info);
    let service = service_fn(move |req| {
        let relay = relay.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(relay.handle(req, &info).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .half_close(false);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    let conn = watcher.watch(conn.into_owned());
    tokio::select! {
        r = conn => if let Err(e) = r {
            debug!(%peer, error = %e, "stream connection ended with an error");
        },
        () = cut.cancelled() => {}
    }
}
