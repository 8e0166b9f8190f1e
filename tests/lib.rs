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
    /// Starts a workspace binary for a test, with debug logs of the tunnel crates.
    pub fn spawn(name: &str, args: &[&str], log: PathBuf) -> Result<Process> {
        // TETHER_TEST_RUST_LOG: another filter for the binaries (e.g. `trace` to follow every
        // tunnel message while a test runs).
        let rust_log = std::env::var("TETHER_TEST_RUST_LOG").unwrap_or_else(|_| {
            "info,tunnel_session=debug,stream_server=debug,edge_stream=debug".into()
        });
        Process::launch(
            name,
            binary(name)?.into_os_string(),
            &[],
            args,
            &rust_log,
            log,
        )
    }

    /// Starts a workspace binary for a benchmark: `info` logs unless `TETHER_BENCH_LOG` says
    /// otherwise (debug logs would be measured too), and run under a tool when
    /// `TETHER_BENCH_WRAP_<NAME>` names one (`TETHER_BENCH_WRAP_CLOUDSTREAM="heaptrack -o
    /// /tmp/cs"`: the tool gets the binary's path and its arguments).
    pub fn spawn_bench(name: &str, args: &[&str], log: PathBuf) -> Result<Process> {
        let rust_log = std::env::var("TETHER_BENCH_LOG").unwrap_or_else(|_| "info".into());
        let wrap =
            std::env::var(format!("TETHER_BENCH_WRAP_{}", name.to_uppercase())).unwrap_or_default();
        let mut words: Vec<std::ffi::OsString> = wrap.split_whitespace().map(Into::into).collect();
        let binary = binary(name)?.into_os_string();
        let program = if words.is_empty() {
            binary
        } else {
            words.push(binary);
            words.remove(0)
        };
        Process::launch(name, program, &words, args, &rust_log, log)
    }

    fn launch(
        name: &str,
        program: std::ffi::OsString,
        program_args: &[std::ffi::OsString],
        args: &[&str],
        rust_log: &str,
        log: PathBuf,
    ) -> Result<Process> {
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new(program)
            .args(program_args)
            .args(args)
            .env("RUST_LOG", rust_log)
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

    /// The child's process id (fails once it has been reaped).
    pub fn pid(&self) -> Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} has exited", self.name))
    }

    /// Sends SIGKILL and reaps the child: no chance to close anything politely, so its
    /// sockets are closed by the kernel (peers see a FIN or RST at once).
    pub async fn kill(&mut self) -> Result<()> {
        self.child.start_kill()?;
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .with_context(|| format!("{} did not die", self.name))??;
        Ok(())
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

/// Open file descriptors of process `pid` (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .count())
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn resident_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("VmRSS is not a number")?;
    Ok(kib * 1024)
}

/// One scrape of an admin port's `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape(pub String);

impl Scrape {
    /// `GET /metrics` on `admin`.
    pub async fn get(admin: SocketAddr) -> Result<Scrape> {
        let io = tokio::net::TcpStream::connect(admin).await?;
        let resp = http_get(io, &admin.to_string(), "/metrics", &[]).await?;
        if resp.status() != http::StatusCode::OK {
            bail!("/metrics on {admin} answered {}", resp.status());
        }
        let body = test_support::client::body_bytes(resp.into_body()).await?;
        Ok(Scrape(String::from_utf8(body.to_vec())?))
    }

    /// The sum of every series of the family `name` (a gauge or counter with or without
    /// labels); 0 when no series exists yet.
    pub fn sum(&self, name: &str) -> i64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let family = series.split('{').next()?;
                (family == name).then(|| value.parse::<f64>().ok())?
            })
            .map(|v| v as i64)
            .sum()
    }
}

/// What a process holds at one moment: the things that must come back to where they were
/// once traffic is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readings {
    /// Open file descriptors.
    pub fds: usize,
    /// Resident memory, bytes.
    pub rss: u64,
    /// `tether_runtime_tasks`: tasks alive on the process's runtime.
    pub tasks: i64,
    /// `tether_streams_open`, all operations (the cloud records it; 0 on an edge).
    pub streams_open: i64,
    /// `tether_sessions` (the cloud records it; 0 on an edge).
    pub sessions: i64,
}

impl std::fmt::Display for Readings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fds {} rss {:.1} MiB tasks {} streams_open {} sessions {}",
            self.fds,
            self.rss as f64 / f64::from(1 << 20),
            self.tasks,
            self.streams_open,
            self.sessions
        )
    }
}

/// How far from a baseline still counts as "back to it".
///
/// File descriptors and tasks must be exactly where they were: each one is a socket or a
/// task some stream forgot. Memory gets slack, because the allocator keeps some freed pages
/// for a while (jemalloc returns dirty pages on a decay of seconds) and caches grow to their
/// bounds; what the slack must catch is memory that grows with the number of streams.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Resident bytes allowed above the baseline.
    pub rss: u64,
}

/// A process under observation: its pid, admin port and log.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `cloudstream`, or `edgestream <node>`.
    pub name: String,
    /// Its process id, for `/proc` readings.
    pub pid: u32,
    /// Its admin listener, for `/metrics`.
    pub admin: SocketAddr,
    /// Its log file, shown when it does not settle.
    pub log: PathBuf,
}

impl Probe {
    /// The last lines of the process's log, enough to see why it did not settle.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} log (last lines) ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    /// Reads everything once. File descriptors are counted before the scrape, whose own
    /// connection would otherwise be counted.
    pub async fn read(&self) -> Result<Readings> {
        let fds = open_fds(self.pid)?;
        let rss = resident_bytes(self.pid)?;
        let scrape = Scrape::get(self.admin).await?;
        Ok(Readings {
            fds,
            rss,
            // The scrape is served by one task of the process: not part of what it holds.
            tasks: scrape.sum("tether_runtime_tasks") - 1,
            streams_open: scrape.sum("tether_streams_open"),
            sessions: scrape.sum("tether_sessions"),
        })
    }

    /// Reads until two readings in a row agree on descriptors and tasks (the process has
    /// settled after a change), within `within`; returns the last one.
    pub async fn settled(&self, within: Duration) -> Result<Readings> {
        let wait = async {
            let mut last = self.read().await?;
            loop {
                tokio::time::sleep(POLL).await;
                let now = self.read().await?;
                if (now.fds, now.tasks, now.streams_open)
                    == (last.fds, last.tasks, last.streams_open)
                {
                    return Ok::<_, anyhow::Error>(now);
                }
                last = now;
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .with_context(|| format!("{} did not settle within {within:?}", self.name))?
    }

    /// Waits until the readings are back to `baseline` within `tolerance`, polling until
    /// `within` is over; fails with the last reading and the log's tail.
    pub async fn wait_flat(
        &self,
        baseline: Readings,
        tolerance: Tolerance,
        within: Duration,
    ) -> Result<Readings> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.read().await?;
            let flat = now.fds == baseline.fds
                && now.tasks == baseline.tasks
                && now.streams_open == baseline.streams_open
                && now.sessions == baseline.sessions
                && now.rss <= baseline.rss + tolerance.rss;
            if flat {
                return Ok(now);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} is not back to its baseline after {within:?}:\n  baseline {baseline}\n  now      {now}\n  (rss slack {:.1} MiB)\n{}",
                    self.name,
                    tolerance.rss as f64 / f64::from(1 << 20),
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `pred` holds for a reading, within `within`; returns that reading.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Readings) -> bool,
    ) -> Result<Readings> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.read().await?;
            if pred(&now) {
                return Ok(now);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: {what} not reached within {within:?}; last {now}",
                    self.name
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Pause between two readings of a process while waiting for a condition.
const POLL: Duration = Duration::from_millis(100);

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
        Cloud::start_at(world, "127.0.0.1:0", "127.0.0.1:0", extra_args).await
    }

    /// Starts a cloud on given tunnel and stream addresses (say, those a killed cloud had).
    pub async fn start_at(
        world: &World,
        tunnel: &str,
        stream: &str,
        extra_args: &[&str],
    ) -> Result<Cloud> {
        let config = world.cloudcore("")?;
        let config = config.to_string_lossy().into_owned();
        let mut args = vec![
            "--config",
            config.as_str(),
            "--tunnel-addr",
            tunnel,
            "--stream-addr",
            stream,
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

impl Cloud {
    /// What to observe of this cloud; it must have been started with `--admin-addr`.
    pub fn probe(&self) -> Result<Probe> {
        Ok(Probe {
            name: "cloudstream".into(),
            pid: self.process.pid()?,
            admin: self
                .admin
                .context("cloudstream was started without --admin-addr")?,
            log: self.process.log.clone(),
        })
    }
}

/// A running `edgestream`.
pub struct Edge {
    pub process: Process,
    pub node: String,
    /// The admin listener, when started with `--admin-addr`.
    pub admin: Option<SocketAddr>,
    /// The dialect of the last tunnel it reported connected (`tether/2`, `kubeedge`).
    pub dialect: Option<String>,
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
        edge.wait_connected().await?;
        Ok(edge)
    }

    /// Waits for the next "connected" line, and notes its dialect.
    pub async fn wait_connected(&mut self) -> Result<()> {
        let line = self.process.wait_line("edgestream connected").await?;
        self.dialect = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("dialect="))
            .map(str::to_owned);
        Ok(())
    }

    /// What to observe of this edge; it must have been started with `--admin-addr`.
    pub fn probe(&self) -> Result<Probe> {
        Ok(Probe {
            name: format!("edgestream {}", self.node),
            pid: self.process.pid()?,
            admin: self
                .admin
                .context("edgestream was started without --admin-addr")?,
            log: self.process.log.clone(),
        })
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
            dialect: None,
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
