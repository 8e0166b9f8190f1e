//! End-to-end harness: real `cloudstream` and `edgestream` binaries, real TLS, real
//! websockets, a test kubelet, all on 127.0.0.1 with ephemeral ports.
//!
//! A [`World`] is one test's PKI and config directory. [`Cloud`] and [`Edge`] start the
//! binaries from KubeEdge config files (as an operator would) and learn their bound
//! addresses and tunnel state from the one line each prints on stdout per event; logs go to
//! files in the world's directory and are printed if a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use rustls::ClientConfig;
use test_support::client::{http_get, http_request, tls_connect};
use test_support::pki::TestPki;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Generous bound for things that should take milliseconds; only hit when broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One test's certificates and files.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    /// What kube-apiserver presents to "the kubelet": a client cert from the CA.
    pub apiserver: Arc<ClientConfig>,
}

impl World {
    pub fn new() -> Result<World> {
        let dir = tempfile::tempdir()?;
        let pki = TestPki::new()?;
        let client = pki.client("kube-apiserver-kubelet-client", Some("system:masters"))?;
        let apiserver = pki.client_config(Some(&client))?;
        pki.write_ca(dir.path())?;
        let server = pki.server(&["127.0.0.1", "localhost"])?;
        pki.write_pem_files(dir.path(), "server", &server)?;
        Ok(World {
            dir,
            pki,
            apiserver,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A cloudcore.yaml as keadm writes it, with our files, plus whatever `extra` adds to
    /// `modules.cloudStream`.
    pub fn cloudcore(&self, extra: &str) -> Result<PathBuf> {
        let d = self.dir.path().display();
        let text = format!(
            "apiVersion: cloudcore.config.kubeedge.io/v1alpha1
kind: CloudCore
kubeAPIConfig:
modules:
  cloudHub:
    advertiseAddress:
    - 127.0.0.1
  cloudStream:
    enable: true
    streamPort: 10003
    tunnelPort: 10004
    tlsStreamCAFile: {d}/ca.crt
    tlsStreamCertFile: {d}/server.crt
    tlsStreamPrivateKeyFile: {d}/server.key
    tlsTunnelCAFile: {d}/ca.crt
    tlsTunnelCertFile: {d}/server.crt
    tlsTunnelPrivateKeyFile: {d}/server.key
{extra}"
        );
        let path = self.path("cloudcore.yaml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// An edgecore.yaml for `node`, with its node certificate written beside it.
    pub fn edgecore(
        &self,
        node: &str,
        node_ip: &str,
        server: SocketAddr,
        kubelet: SocketAddr,
        cert_node: &str,
    ) -> Result<PathBuf> {
        let cert = self.pki.node(cert_node)?;
        self.pki
            .write_pem_files(self.dir.path(), &format!("node-{node}"), &cert)?;
        let d = self.dir.path().display();
        let text = format!(
            "apiVersion: edgecore.config.kubeedge.io/v1alpha2
kind: EdgeCore
modules:
  edged:
    hostnameOverride: {node}
    nodeIP: {node_ip}
    tailoredKubeletConfig:
      address: {}
      readOnlyPort: {}
  edgeHub:
    enable: true
  edgeStream:
    enable: true
    handshakeTimeout: 30
    readDeadline: 15
    server: {server}
    tlsTunnelCAFile: {d}/ca.crt
    tlsTunnelCertFile: {d}/node-{node}.crt
    tlsTunnelPrivateKeyFile: {d}/node-{node}.key
    writeDeadline: 15
",
            kubelet.ip(),
            kubelet.port()
        );
        let path = self.path(&format!("edgecore-{node}.yaml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// A TLS connection to the stream server, as kube-apiserver makes it.
    pub async fn connect_stream(
        &self,
        cloud: &Cloud,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        tls_connect(cloud.stream, self.apiserver.clone(), "127.0.0.1").await
    }

    /// `GET path` on the stream server with `Host: host`.
    pub async fn get(
        &self,
        cloud: &Cloud,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<Incoming>> {
        let io = self.connect_stream(cloud).await?;
        http_get(io, host, path, headers).await
    }

    /// Any request on the stream server.
    pub async fn request(
        &self,
        cloud: &Cloud,
        host: &str,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>> {
        let io = self.connect_stream(cloud).await?;
        http_request(io, host, req).await
    }
}

/// Where cargo put the workspace's binaries (next to the test executable's `deps`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("no target directory above {}", exe.display()))?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run the workspace tests (`cargo test --workspace`), which build it",
            path.display()
        );
    }
    Ok(path)
}

/// A running binary; killed when dropped.
pub struct Process {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: PathBuf,
    name: String,
}

impl Process {
    pub fn spawn(name: &str, args: &[&str], log: PathBuf) -> Result<Process> {
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new(binary(name)?)
            .args(args)
            .env(
                "RUST_LOG",
                "info,tunnel_session=debug,stream_server=debug,edge_stream=debug",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        Ok(Process {
            child,
            lines,
            log,
            name: name.to_owned(),
        })
    }

    /// Waits for the next stdout line containing `needle`.
    pub async fn wait_line(&mut self, needle: &str) -> Result<String> {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return Ok(line);
                }
            }
            Err(anyhow!("{} exited before printing {needle:?}", self.name))
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(r) => r.map_err(|e| e.context(self.logs())),
            Err(_) => Err(anyhow!(
                "{} did not print {needle:?}\n{}",
                self.name,
                self.logs()
            )),
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "--- {} log ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.child.id().context("already exited")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(())
    }
}

/// A running `cloudstream`.
pub struct Cloud {
    pub process: Process,
    pub tunnel: SocketAddr,
    pub stream: SocketAddr,
    /// The admin listener, when started with `--admin-addr`.
    pub admin: Option<SocketAddr>,
}

impl Cloud {
    pub async fn start(world: &World, extra_args: &[&str]) -> Result<Cloud> {
        let config = world.cloudcore("")?;
        let config = config.to_string_lossy().into_owned();
        let mut args = vec![
            "--config",
            config.as_str(),
            "--tunnel-addr",
            "127.0.0.1:0",
            "--stream-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra_args);
        let mut process = Process::spawn("cloudstream", &args, world.path("cloudstream.log"))?;
        let line = process.wait_line("cloudstream listening").await?;
        let field = |name: &str| -> Result<SocketAddr> {
            let prefix = format!("{name}=");
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix.as_str()))
                .context("missing address")?
                .parse()
                .context("bad address")
        };
        Ok(Cloud {
            tunnel: field("tunnel")?,
            stream: field("stream")?,
            admin: field("admin").ok(),
            process,
        })
    }
}

/// A running `edgestream`.
pub struct Edge {
    pub process: Process,
    pub node: String,
    /// The admin listener, when started with `--admin-addr`.
    pub admin: Option<SocketAddr>,
}

impl Edge {
    /// Starts an edge for `node` and waits until its tunnel is up.
    pub async fn start(
        world: &World,
        cloud: &Cloud,
        node: &str,
        node_ip: &str,
        kubelet: SocketAddr,
        extra_args: &[&str],
    ) -> Result<Edge> {
        let mut edge = Edge::spawn(
            world,
            cloud.tunnel,
            node,
            node_ip,
            kubelet,
            node,
            extra_args,
        )?;
        if extra_args.contains(&"--admin-addr") {
            let line = edge.process.wait_line("edgestream admin=").await?;
            edge.admin = line
                .trim()
                .strip_prefix("edgestream admin=")
                .and_then(|a| a.parse().ok());
        }
        edge.process.wait_line("edgestream connected").await?;
        Ok(edge)
    }

    /// Starts an edge without waiting; `cert_node` names the node in its certificate.
    pub fn spawn(
        world: &World,
        server: SocketAddr,
        node: &str,
        node_ip: &str,
        kubelet: SocketAddr,
        cert_node: &str,
        extra_args: &[&str],
    ) -> Result<Edge> {
        let config = world.edgecore(node, node_ip, server, kubelet, cert_node)?;
        let config = config.to_string_lossy().into_owned();
        let mut args = vec!["--config", config.as_str()];
        args.extend_from_slice(extra_args);
        let process = Process::spawn(
            "edgestream",
            &args,
            world.path(&format!("edgestream-{node}.log")),
        )?;
        Ok(Edge {
            process,
            node: node.to_owned(),
            admin: None,
        })
    }
}

/// Reads a response body to its end and tells how it ended: `true` if it was cut (an
/// error, so the client knows it is incomplete), `false` if it ended cleanly.
pub async fn body_was_cut(body: &mut Incoming) -> bool {
    use http_body_util::BodyExt;
    loop {
        match body.frame().await {
            Some(Ok(_)) => continue,
            Some(Err(_)) => return true,
            None => return false,
        }
    }
}

/// A cloud, edges and kubelets behind a test API server, so requests arrive the way
/// kube-apiserver sends them (see `test_support::apiserver`).
pub struct Cluster {
    pub world: World,
    pub api: test_support::apiserver::TestApiServer,
    /// kubeconfig of the API server (for kubectl and cloudstream).
    pub kubeconfig: PathBuf,
    pub cloud: Cloud,
    pub edges: Vec<Edge>,
}

/// The port the test Node objects advertise for their kubelet (what DNAT would catch).
pub const NODE_KUBELET_PORT: u16 = 10351;

impl Cluster {
    /// Starts the API server and a cloud that uses it for pod lookups; `cloud_args` are extra
    /// flags for cloudstream.
    pub async fn start(cloud_args: &[&str]) -> Result<Cluster> {
        let world = World::new()?;
        let api = test_support::apiserver::TestApiServer::builder(&world.pki)
            .start()
            .await?;
        let kubeconfig = api.write_kubeconfig(&world.path("api"))?;
        let kubeconfig_arg = kubeconfig.to_string_lossy().into_owned();
        let mut args = vec!["--kubeconfig", kubeconfig_arg.as_str()];
        args.extend_from_slice(cloud_args);
        let cloud = Cloud::start(&world, &args).await?;
        api.set_kubelet(test_support::apiserver::KubeletDial::Tls {
            addr: cloud.stream,
            config: world.apiserver.clone(),
            server_name: "127.0.0.1".into(),
        });
        Ok(Cluster {
            world,
            api,
            kubeconfig,
            cloud,
            edges: Vec::new(),
        })
    }

    /// Registers node `node` (Node object with `ip`) and starts its edge against `kubelet`.
    pub async fn add_node(&mut self, node: &str, ip: &str, kubelet: SocketAddr) -> Result<()> {
        self.api.put_node(test_support::apiserver::TestNode {
            name: node.to_owned(),
            internal_ip: ip.parse()?,
            kubelet_port: NODE_KUBELET_PORT,
        });
        let edge = Edge::start(&self.world, &self.cloud, node, ip, kubelet, &[]).await?;
        self.edges.push(edge);
        Ok(())
    }

    /// A TLS connection to the API server, as kubectl makes it (client certificate of the
    /// API server's CA).
    pub async fn connect_api(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let client = self.world.pki.client("kubectl", Some("system:masters"))?;
        let config = self.world.pki.client_config(Some(&client))?;
        tls_connect(self.api.addr(), config, "localhost").await
    }

    /// The `Host` kubectl sends to the API server, a name no edge node has.
    pub fn api_host(&self) -> String {
        format!("localhost:{}", self.api.addr().port())
    }
}

/// Where a real `kubectl` is, if this machine has one (`$KUBECTL`, else `kubectl` on `PATH`).
pub fn kubectl_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubectl"))
            .find(|p| p.is_file())
    })
}
