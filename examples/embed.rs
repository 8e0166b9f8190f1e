//! `embed`: running tether's cloud side inside your own controller instead of `cloudstream`.
//!
//! ```sh
//! cargo run --example embed
//! ```
//!
//! `cloudstream` is a thin binary over three library pieces, and a controller can use them
//! directly:
//!
//! 1. a [`Registry`]: node name / node IP → the node's live tunnel [`Session`];
//! 2. a [`TunnelServer`] that accepts edges on a listener you bind and fills the registry;
//! 3. either your own code opening streams on a session ([`Session::open`]), or a
//!    [`StreamServer`] that speaks the kubelet API to kube-apiserver — with your own
//!    [`SessionDirectory`] (which nodes it may reach) and [`RelayObserver`] (what you record).
//!
//! This example does all three against one in-process edge node and its demo kubelet, then
//! shuts down. The edge, the certificates and the kubelet come from this package's helpers
//! (`tether_examples`); in production they are a real `edgestream`, real certificate files
//! and a real kubelet.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use http_body_util::BodyExt as _;
use stream_proto::{ConnectRequest, GoUrl, HeaderMap, OpenResult};
use stream_server::route::Operation;
use stream_server::{KUBEEDGE_KUBELET_HOST, RelayObserver, StreamServer, StreamServerConfig};
use tether_examples::{DemoPki, Edge, connect_as_apiserver, init_tracing, start_demo_kubelet};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunnel_session::server::{TunnelObserver, TunnelServer, TunnelServerConfig};
use tunnel_session::tls;
use tunnel_session::{ConnectKind, NodeKey, Registry, Session, SessionDirectory};

/// The one edge node of this example.
const NODE: &str = "edge-1";
/// The internal IP `NODE` announces (TEST-NET-1, a label only).
const NODE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
/// Bound on every wait; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(10);

/// Builds the cloud side by hand, uses it once each way, and shuts down.
#[tokio::main]
async fn main() -> Result<()> {
    init_tracing("warn");
    // tether builds its rustls configurations with an explicit ring provider. Installing it
    // as the process default helps *other* rustls users in your process; harmless otherwise.
    tls::install_default_provider();
    let pki = DemoPki::generate(&[NODE])?;

    // --- 1. The registry ----------------------------------------------------------------
    // Shared by the tunnel server (which registers and removes sessions) and whatever opens
    // streams. It never evicts a newer session of a node when an older one ends.
    let registry = Arc::new(Registry::new());

    // --- 2. The tunnel server, on a listener we bind ------------------------------------
    // The TLS configuration must require client certificates: the node name is taken from
    // the certificate (CN `system:node:<name>`) and checked against what the edge claims.
    let tunnel_tls = tls::server_config(&pki.server, &[b"http/1.1"])?;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let tunnel = TunnelServer::new(tunnel_tls, registry.clone(), TunnelServerConfig::default())
        // A TunnelObserver hears about handshakes and sessions (cloudstream plugs its
        // Prometheus metrics in here). We use it to learn when the edge is routable.
        .with_observer(Arc::new(SessionStarted(started_tx)));
    let tunnel_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tunnel_addr = tunnel_listener.local_addr()?;
    // One token stops everything we serve; `serve` drains (GO_AWAY to tether/2 edges, a
    // grace for open streams) before it returns.
    let shutdown = CancellationToken::new();
    let tunnel_task = tokio::spawn(tunnel.serve(tunnel_listener, shutdown.clone()));
    println!("tunnel server listening on {tunnel_addr}");

    // (Example scaffolding: a kubelet and an edge that dials us, as `edgestream` would.)
    let kubelet = start_demo_kubelet(NODE).await?;
    let edge = Edge::start(&pki, tunnel_addr, NODE, NODE_IP, kubelet.addr())?;
    let node = tokio::time::timeout(PATIENCE, started.recv())
        .await
        .context("the edge did not connect")?
        .context("the tunnel server stopped")?;
    println!("edge {node} connected");

    // --- 3a. Open a stream ourselves ----------------------------------------------------
    let session = registry
        .find(NodeKey::Name(NODE)) // or NodeKey::Ip(NODE_IP), or `registry.get(NODE)`
        .context("no session for the node")?;
    println!("session to {} speaks {}", session.node(), session.dialect());
    let body = fetch_log(&session, "/containerLogs/demo/hello/app?tailLines=10").await?;
    println!("log of demo/hello/app, read straight off the stream:");
    for line in String::from_utf8_lossy(&body).lines() {
        println!("  | {line}");
    }

    // --- 3b. Or serve the kubelet API, with our own directory and observer -------------
    let stream_tls = tls::server_config(&pki.server, &[b"h2", b"http/1.1"])?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let directory = Arc::new(AllowList {
        inner: registry.clone(),
        allowed: vec![NODE.to_owned()],
    });
    let stream_server = StreamServer::new(stream_tls, directory, StreamServerConfig::default())
        .with_observer(Arc::new(EventLog(events_tx)));
    let stream_listener = TcpListener::bind("127.0.0.1:0").await?;
    let stream_addr = stream_listener.local_addr()?;
    let stream_task = tokio::spawn(stream_server.serve(stream_listener, shutdown.clone()));
    println!("stream server listening on {stream_addr}");

    // What kube-apiserver does for `kubectl get --raw /api/v1/nodes/edge-1/proxy/metrics`.
    let io = connect_as_apiserver(stream_addr, pki.apiserver_tls()?).await?;
    let response = test_support::client::http_get(io, NODE, "/metrics", &[]).await?;
    let status = response.status();
    let metrics = response.into_body().collect().await?.to_bytes();
    println!(
        "GET /metrics for {NODE} through the stream server: {status}, {} bytes",
        metrics.len()
    );
    // The observer reports the stream's end once the relay lets go of it; wait for that.
    while let Ok(Some(event)) = tokio::time::timeout(PATIENCE, events.recv()).await {
        println!("  observer: {event}");
        if event.starts_with("closed") {
            break;
        }
    }

    // --- Shutdown -----------------------------------------------------------------------
    // The edge first (it drains its tunnel), then our servers, then the kubelet.
    edge.shutdown().await?;
    shutdown.cancel();
    tunnel_task.await??;
    stream_task.await??;
    kubelet.shutdown().await;
    println!("stopped");
    Ok(())
}

/// Sends one logs request over `session` and returns the body.
///
/// This is what the stream server does for every request, minus the HTTP around it.
async fn fetch_log(session: &Session, target: &str) -> Result<Vec<u8>> {
    // The KubeEdge connect descriptor: a Go `url.URL` plus headers. The edge ignores the
    // URL's host and dials only its own kubelet; KubeEdge puts edged's address there.
    let url = GoUrl::from_request_target("http", KUBEEDGE_KUBELET_HOST, target)?;
    let mut header = HeaderMap::new();
    header.insert("User-Agent".into(), vec!["my-controller/1.0".into()]);
    let request = ConnectRequest {
        mess_id: 0, // `Session::open` fills in the connect id
        url,
        header: Some(header),
        method: None, // only exec and attach carry a method
    };
    let mut stream = session.open(ConnectKind::Logs, request).await?;

    // tether/2 edges answer first with how the kubelet responded; stock KubeEdge edges send
    // no such answer (`None`) and the body simply follows.
    match stream.open_result().await? {
        Some(OpenResult::Response { status, headers }) => {
            let content_type = headers
                .get("Content-Type")
                .and_then(|v| v.first())
                .map_or("no content type", String::as_str);
            println!("kubelet answered {status} ({content_type})");
            if status != 200 {
                // The body carries the kubelet's error text.
                let mut text = String::new();
                stream.read_to_string(&mut text).await?;
                bail!("the kubelet answered {status}: {}", text.trim_end());
            }
        }
        Some(OpenResult::Refused { status, reason }) => {
            bail!("the edge refused the stream ({status}): {reason}")
        }
        Some(OpenResult::Raw) => bail!("a raw upgrade answer to a logs request"),
        None => println!("stock KubeEdge edge: no status, the body follows"),
    }

    // A `Stream` is `AsyncRead + AsyncWrite`: the body ends at the edge's FIN. Dropping a
    // stream before its end resets it (the edge then drops its kubelet request).
    let mut body = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut body))
        .await
        .context("the log did not end in time")??;
    Ok(body)
}

/// Reports each new session's node name.
struct SessionStarted(mpsc::UnboundedSender<String>);

impl TunnelObserver for SessionStarted {
    fn session_started(&self, session: &Session) {
        let _ = self.0.send(session.node().name.clone());
    }
}

/// A [`SessionDirectory`] that only lets the stream server reach some nodes; any other
/// node gets the same 503 as a node that is not connected. A directory shared by several
/// cloud replicas would implement the same trait.
struct AllowList {
    inner: Arc<Registry>,
    allowed: Vec<String>,
}

impl SessionDirectory for AllowList {
    fn find(&self, key: NodeKey<'_>) -> Option<Session> {
        // Look the session up first: by IP we learn the node's name from it.
        let session = self.inner.find(key)?;
        self.allowed
            .iter()
            .any(|n| *n == session.node().name)
            .then_some(session)
    }
}

/// A [`RelayObserver`] that describes every stream event (a real one would update metrics,
/// as `admin::Metrics` does for cloudstream).
struct EventLog(mpsc::UnboundedSender<String>);

impl RelayObserver for EventLog {
    fn stream_opened(&self, operation: Operation, latency: Duration) {
        let _ = self.0.send(format!(
            "opened {} stream, kubelet answered after {latency:?}",
            operation.as_str()
        ));
    }

    fn stream_closed(&self, operation: Operation, to_edge: u64, from_edge: u64) {
        let _ = self.0.send(format!(
            "closed {} stream: {to_edge} bytes to the edge, {from_edge} bytes from it",
            operation.as_str()
        ));
    }

    fn stream_failed(&self, operation: Operation, reason: &'static str) {
        let _ = self
            .0
            .send(format!("failed {} stream: {reason}", operation.as_str()));
    }
}
