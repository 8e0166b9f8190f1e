//! Shared helpers of tether's examples: everything a demo needs besides the demonstrations.
//!
//! - [`DemoPki`]: throwaway certificates (a CA, the cloud's server certificate, one node
//!   certificate per edge, an apiserver client certificate), written as PEM files to a
//!   temporary directory that disappears when the value is dropped.
//! - [`Cloud`]: the cloud wired exactly as `bins/cloudstream/src/main.rs` wires it — a
//!   [`TunnelServer`] and a [`StreamServer`] sharing one [`Registry`], both reporting into
//!   one [`admin::Metrics`], plus the admin server — on `127.0.0.1:0` listeners.
//! - [`Edge`]: one edge node wired exactly as `bins/edgestream/src/main.rs` wires it:
//!   [`edge_stream::run`] with a [`DialConfig`] built from the node's certificate files,
//!   verifying the cloud against the CA.
//! - [`start_demo_kubelet`]: a [`TestKubelet`] per node with a container
//!   `demo/hello/app`.
//! - [`connect_as_apiserver`]: a TLS connection to the stream server presenting the
//!   apiserver's client certificate, as kube-apiserver connects to a kubelet.
//!
//! The kubelets, the PKI and the clients come from `test-support`, a test-only crate of this
//! workspace. That is deliberate: a demo wants throwaway certificates and a fake kubelet, and
//! these are the same ones the end-to-end tests rely on. Nothing here is meant for production.
//!
//! Every server binds `127.0.0.1:0`, so examples never collide with each other or with a real
//! KubeEdge installation on the same machine.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use edge_stream::{EdgeConfig, KubeletTarget, TunnelStatus};
use rustls::pki_types::ServerName;
use stream_server::{StreamServer, StreamServerConfig};
use test_support::client::Io;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use test_support::pki::{Identity, TestPki};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunnel_session::client::DialConfig;
use tunnel_session::server::{TunnelServer, TunnelServerConfig};
use tunnel_session::tls::{self, TlsFiles};
use tunnel_session::{Dialect, NodeIdentity, Registry, Session, SessionConfig};

/// Namespace of the demo pod on every node.
pub const NAMESPACE: &str = "demo";
/// Name of the demo pod on every node.
pub const POD: &str = "hello";
/// Name of the demo pod's only container.
pub const CONTAINER: &str = "app";

/// How long open streams may run when a demo shuts down. The binaries give them 30 s (the
/// library default); a demo should stop promptly when asked.
pub const DEMO_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How often the cloud records the sessions' ping round trips (as `cloudstream` does).
const RTT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Sends tracing output to stderr at `default` level (e.g. `"warn"`); `RUST_LOG` overrides.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // `try_init` fails only when a subscriber is already installed, which is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Throwaway certificates for a demo, as PEM files in a temporary directory.
///
/// | file | what |
/// |---|---|
/// | `ca.crt` | the CA every peer trusts |
/// | `server.crt`, `server.key` | the cloud (tunnel and stream ports), for `127.0.0.1` and `localhost` |
/// | `<node>.crt`, `<node>.key` | an edge node: CN `system:node:<node>`, O `system:nodes` |
/// | `apiserver.crt`, `apiserver.key` | kube-apiserver's kubelet client certificate |
///
/// The directory is removed when the value is dropped.
#[derive(Debug)]
pub struct DemoPki {
    dir: tempfile::TempDir,
    /// The cloud's files (used for both the tunnel and the stream port, as a keadm install
    /// often does).
    pub server: TlsFiles,
    /// What kube-apiserver presents to "the kubelet", i.e. to the stream server.
    pub apiserver: TlsFiles,
    nodes: Vec<(String, TlsFiles)>,
}

impl DemoPki {
    /// Creates a fresh CA and every certificate, one node certificate per entry of `nodes`.
    pub fn generate(nodes: &[&str]) -> Result<DemoPki> {
        let dir = tempfile::Builder::new()
            .prefix("tether-demo-")
            .tempdir()
            .context("creating a temporary directory for the certificates")?;
        let pki = TestPki::new().context("creating the demo CA")?;
        let ca = pki.write_ca(dir.path())?;
        let files = |name: &str, identity: &Identity| -> Result<TlsFiles> {
            let (cert, key) = pki.write_pem_files(dir.path(), name, identity)?;
            Ok(TlsFiles {
                ca: ca.clone(),
                cert,
                key,
            })
        };
        let server = files("server", &pki.server(&["127.0.0.1", "localhost"])?)?;
        let apiserver = files(
            "apiserver",
            &pki.client("kube-apiserver-kubelet-client", Some("system:masters"))?,
        )?;
        let mut node_files = Vec::with_capacity(nodes.len());
        for node in nodes {
            node_files.push(((*node).to_owned(), files(node, &pki.node(node)?)?));
        }
        Ok(DemoPki {
            dir,
            server,
            apiserver,
            nodes: node_files,
        })
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca.crt`, the CA every peer trusts.
    pub fn ca(&self) -> &Path {
        &self.server.ca
    }

    /// The files of node `name`, which must be one [`generate`](Self::generate) was given.
    pub fn node(&self, name: &str) -> Result<&TlsFiles> {
        self.nodes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, files)| files)
            .ok_or_else(|| anyhow!("no certificate was made for node {name:?}"))
    }

    /// A client TLS configuration for talking to the stream server as kube-apiserver does:
    /// the apiserver certificate, and the cloud verified against the CA. ALPN is empty, so
    /// the connection speaks HTTP/1.1.
    pub fn apiserver_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        tls::client_config(&self.apiserver, true).context("apiserver client TLS")
    }

    /// A path inside [`dir`](Self::dir), for printing.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// The cloud end, wired as `cloudstream` wires it, on ephemeral loopback ports.
#[derive(Debug)]
pub struct Cloud {
    /// Where edges dial in (`wss://…/v1/kubeedge/connect`, mutual TLS).
    pub tunnel_addr: SocketAddr,
    /// Where kube-apiserver sends kubelet requests (HTTPS with a client certificate).
    pub stream_addr: SocketAddr,
    /// Plain HTTP: `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// The sessions of the connected edges, by node name and node IP.
    pub registry: Arc<Registry>,
    readiness: admin::Readiness,
    shutdown: CancellationToken,
    admin_stop: CancellationToken,
    tunnel_task: JoinHandle<tunnel_session::Result<()>>,
    stream_task: JoinHandle<stream_server::Result<()>>,
    sampler: JoinHandle<()>,
    admin_task: JoinHandle<Result<(), admin::Error>>,
}

impl Cloud {
    /// Starts the tunnel server, the stream server and the admin server.
    ///
    /// Mirrors `bins/cloudstream/src/main.rs` line for line, except that the listeners bind
    /// `127.0.0.1:0` and the drain graces are [`DEMO_DRAIN_GRACE`].
    pub async fn start(pki: &DemoPki) -> Result<Cloud> {
        // The tunnel speaks HTTP/1.1 (a websocket upgrade); the stream server offers h2 too.
        let tunnel_tls = tls::server_config(&pki.server, &[b"http/1.1"]).context("tunnel TLS")?;
        let stream_tls =
            tls::server_config(&pki.server, &[b"h2", b"http/1.1"]).context("stream TLS")?;

        let tunnel_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the tunnel listener")?;
        let stream_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the stream listener")?;
        let admin_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the admin listener")?;
        let tunnel_addr = tunnel_listener.local_addr()?;
        let stream_addr = stream_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let tunnel_config = TunnelServerConfig {
            drain_grace: DEMO_DRAIN_GRACE,
            ..TunnelServerConfig::default()
        };
        let stream_config = StreamServerConfig {
            drain_grace: DEMO_DRAIN_GRACE,
            ..StreamServerConfig::default()
        };

        // One registry: the tunnel server fills it, the stream server looks nodes up in it.
        let registry = Arc::new(Registry::new());
        let shutdown = CancellationToken::new();
        // One set of metric families; both servers report into it through observer traits.
        let metrics = admin::Metrics::new();
        let readiness = admin::Readiness::new();
        let tunnel = TunnelServer::new(tunnel_tls, registry.clone(), tunnel_config)
            .with_observer(Arc::new(metrics.clone()));
        let stream = StreamServer::new(stream_tls, registry.clone(), stream_config)
            .with_observer(Arc::new(metrics.clone()));
        let tunnel_task = tokio::spawn(tunnel.serve(tunnel_listener, shutdown.clone()));
        let stream_task = tokio::spawn(stream.serve(stream_listener, shutdown.clone()));
        let sampler = tokio::spawn(admin::sample_rtt(
            registry.clone(),
            metrics.clone(),
            RTT_SAMPLE_INTERVAL,
            shutdown.clone(),
        ));
        readiness.set_ready(true);
        // The admin port has its own token: it outlives the drain, as in the binary.
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            metrics,
            readiness.clone(),
            admin_stop.clone(),
        ));
        Ok(Cloud {
            tunnel_addr,
            stream_addr,
            admin_addr,
            registry,
            readiness,
            shutdown,
            admin_stop,
            tunnel_task,
            stream_task,
            sampler,
            admin_task,
        })
    }

    /// Waits until node `name` has a session in the registry, i.e. until the stream server
    /// can route requests to it.
    pub async fn wait_for_node(&self, name: &str, patience: Duration) -> Result<Session> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(session) = self.registry.get(name) {
                return Ok(session);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("node {name} did not connect within {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drains and stops everything, in the binary's order: not ready, both servers drain
    /// (edges are told to go away, requests get the drain grace), then the admin port.
    pub async fn shutdown(self) -> Result<()> {
        self.readiness.set_ready(false);
        self.shutdown.cancel();
        let (tunnel, stream) = tokio::join!(self.tunnel_task, self.stream_task);
        tunnel.context("tunnel server task")??;
        stream.context("stream server task")??;
        self.sampler.await.context("RTT sampler task")?;
        self.admin_stop.cancel();
        self.admin_task.await.context("admin task")??;
        Ok(())
    }
}

/// One edge node, wired as `edgestream` wires it.
#[derive(Debug)]
pub struct Edge {
    /// The node name (from its certificate; sent as `SessionHostNameOverride`).
    pub node: String,
    /// The node's internal IP (sent as `SessionInternalIP`); requests may name the node by it.
    pub ip: IpAddr,
    status: watch::Receiver<TunnelStatus>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), edge_stream::Error>>,
}

impl Edge {
    /// Starts `edge_stream::run` for `node`, dialling the cloud's tunnel at `tunnel_addr`
    /// and serving streams from the kubelet at `kubelet_addr`.
    ///
    /// Every edge must claim its own `ip`: the cloud gives one IP to one live node, and all
    /// demo edges dial from 127.0.0.1.
    pub fn start(
        pki: &DemoPki,
        tunnel_addr: SocketAddr,
        node: &str,
        ip: IpAddr,
        kubelet_addr: SocketAddr,
    ) -> Result<Edge> {
        // The node certificate, and the cloud verified against the CA (never skipped here).
        let client_tls = tls::client_config(pki.node(node)?, true)
            .with_context(|| format!("tunnel TLS of {node}"))?;
        // edgecore.yaml's defaults: readDeadline and writeDeadline 15 s, handshake 30 s.
        let session = SessionConfig {
            dead_after: Duration::from_secs(15),
            write_deadline: Duration::from_secs(15),
            ..SessionConfig::default()
        };
        let dial = DialConfig {
            server: tunnel_addr.to_string(),
            tls: client_tls,
            node: NodeIdentity {
                name: node.to_owned(),
                ip: Some(ip),
            },
            handshake_timeout: Duration::from_secs(30),
            session,
            offer_tether2: true,
        };
        let mut config = EdgeConfig::new(dial);
        config.kubelet = KubeletTarget {
            addr: kubelet_addr.to_string(),
            ..KubeletTarget::default()
        };
        config.drain_grace = DEMO_DRAIN_GRACE;
        config.validate()?;
        let shutdown = CancellationToken::new();
        let (status_tx, status) = watch::channel(TunnelStatus::default());
        let task = tokio::spawn(edge_stream::run(config, shutdown.clone(), Some(status_tx)));
        Ok(Edge {
            node: node.to_owned(),
            ip,
            status,
            shutdown,
            task,
        })
    }

    /// Waits until the tunnel is up and returns the dialect the cloud agreed to.
    pub async fn wait_connected(&mut self, patience: Duration) -> Result<Dialect> {
        let connected = self
            .status
            .wait_for(|s| matches!(s, TunnelStatus::Connected { .. } | TunnelStatus::Stopped));
        // Clone the state out at once: the watch guard must not outlive this statement.
        let outcome = tokio::time::timeout(patience, connected)
            .await
            .map(|r| r.map(|state| state.clone()));
        let status = match outcome {
            Ok(Ok(status)) => status,
            Ok(Err(_)) => bail!("{}: the edge task ended", self.node),
            Err(_) => bail!(
                "{} did not connect within {patience:?} (last state: {:?})",
                self.node,
                *self.status.borrow()
            ),
        };
        match status {
            TunnelStatus::Connected { dialect } => Ok(dialect),
            other => bail!("{}: the edge stopped ({other:?})", self.node),
        }
    }

    /// Drains the tunnel (in-flight streams get the drain grace) and waits for the edge task.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.cancel();
        self.task
            .await
            .with_context(|| format!("edge task of {}", self.node))??;
        Ok(())
    }
}

/// Starts a demo kubelet for `node`: plain HTTP on `127.0.0.1:0` (like KubeEdge's edged on
/// `127.0.0.1:10350`), with one container [`NAMESPACE`]/[`POD`]/[`CONTAINER`] whose log
/// starts with one line. `/stats/summary` reports `node` as the node name.
pub async fn start_demo_kubelet(node: &str) -> Result<TestKubelet> {
    let first_line = format!("{node}: container {CONTAINER} of pod {NAMESPACE}/{POD} started\n");
    TestKubelet::builder()
        .node_name(node)
        .container(
            NAMESPACE,
            POD,
            CONTAINER,
            ContainerSpec::with_logs(first_line),
        )
        .start()
        .await
        .with_context(|| format!("starting the demo kubelet of {node}"))
}

/// Connects to the stream server as kube-apiserver connects to a kubelet: TCP (with
/// `TCP_NODELAY`, as Go's net package sets by default), then TLS with the client certificate
/// in `tls`, verifying the server certificate for the address dialled (`127.0.0.1`).
///
/// The connection carries HTTP/1.1 (the configuration offers no ALPN); which node a request
/// is for is said by its `Host` header.
pub async fn connect_as_apiserver(
    stream_addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<impl Io> {
    let tcp = TcpStream::connect(stream_addr)
        .await
        .with_context(|| format!("connecting to the stream server at {stream_addr}"))?;
    // Without it, Nagle's algorithm meets the server's delayed ACK and every small request
    // waits ~40 ms.
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::from(stream_addr.ip()), tcp)
        .await
        .with_context(|| format!("TLS with the stream server at {stream_addr}"))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
