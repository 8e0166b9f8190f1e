//! Test helpers: a real etcd process, replicas (directory + driver) and an event recorder.
//!
//! [`Etcd`] runs `/usr/bin/etcd` (or `$ETCD_BIN`) on 127.0.0.1 with ephemeral client and peer
//! ports and a temporary data directory; it can be stopped with SIGTERM or SIGKILL and
//! restarted on the same ports and data, and is killed when dropped.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::fs::File;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use directory_etcd::{
    ClientIdentityPem, DirectoryConfig, DirectoryEvents, EtcdDirectory, EtcdTls, Holder,
    ReplicaInfo,
};
use etcd_client::{Client, ConnectOptions, TlsOptions};
use test_support::pki::{Identity, TestPki};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A generous deadline for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(30);

/// How etcd is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Graceful: etcd closes its connections.
    Term,
    /// Abrupt: the process vanishes.
    Kill,
}

/// TLS material an etcd serves with, and the client side of it.
pub struct EtcdTlsFiles {
    pub pki: TestPki,
    pub client: Identity,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// One etcd member on 127.0.0.1.
pub struct Etcd {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTlsFiles>,
    child: Option<Child>,
}

impl Etcd {
    /// Starts a plain-HTTP etcd and waits until it answers.
    pub async fn start() -> Result<Etcd> {
        Etcd::launch(None).await
    }

    /// Starts an etcd that serves TLS and requires client certificates from the test CA.
    pub async fn start_tls() -> Result<Etcd> {
        let dir = tempfile::tempdir()?;
        let pki = TestPki::new()?;
        let server = pki.server(&["127.0.0.1", "localhost"])?;
        let client = pki.client("tether-replica", None)?;
        let files = EtcdTlsFiles {
            cert: write(dir.path(), "server.crt", &server.cert_pem)?,
            key: write(dir.path(), "server.key", &server.key_pem)?,
            ca: write(dir.path(), "ca.crt", &pki.ca_pem())?,
            pki,
            client,
        };
        let mut etcd = Etcd::launch_in(dir, Some(files))?;
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    async fn launch(tls: Option<EtcdTlsFiles>) -> Result<Etcd> {
        let mut etcd = Etcd::launch_in(tempfile::tempdir()?, tls)?;
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    fn launch_in(dir: tempfile::TempDir, tls: Option<EtcdTlsFiles>) -> Result<Etcd> {
        let mut etcd = Etcd {
            binary: etcd_binary()?,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            tls,
            child: None,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The TLS material, for an etcd started with [`Etcd::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    /// A directory configuration for this etcd, with TLS and a client certificate if it
    /// serves TLS.
    pub fn config(&self, lease_ttl: Duration) -> DirectoryConfig {
        let mut config = DirectoryConfig::new([self.endpoint()]);
        config.lease_ttl = lease_ttl;
        config.request_timeout = Duration::from_secs(2).min(lease_ttl);
        config.dial_timeout = Duration::from_secs(2);
        config.tls = self.tls.as_ref().map(|t| EtcdTls {
            ca_pem: t.pki.ca_pem().into_bytes(),
            client: Some(ClientIdentityPem {
                cert_pem: t.client.cert_pem.clone().into_bytes(),
                key_pem: t.client.key_pem.clone().into_bytes(),
            }),
            server_name: None,
        });
        config
    }

    /// A plain etcd client, for checking and changing what the directories see.
    pub async fn client(&self) -> Result<Client> {
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        if let Some(tls) = &self.tls {
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(tls.pki.ca_pem()))
                    .identity(etcd_client::Identity::from_pem(
                        &tls.client.cert_pem,
                        &tls.client.key_pem,
                    )),
            );
        }
        let client = tokio::time::timeout(
            Duration::from_secs(5),
            Client::connect([self.endpoint()], Some(options)),
        )
        .await
        .context("connecting to etcd timed out")??;
        Ok(client)
    }

    /// Stops etcd with `how` and waits for the process to end.
    pub fn stop(&mut self, how: Stop) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("etcd is not running");
        };
        match how {
            Stop::Kill => child.kill()?,
            Stop::Term => {
                let status = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()?;
                if !status.success() {
                    bail!("kill -TERM failed: {status}");
                }
            }
        }
        child.wait()?;
        Ok(())
    }

    /// Starts etcd again on the same ports and data directory, and waits until it answers.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("etcd is still running");
        }
        self.spawn()?;
        self.wait_ready().await
    }

    fn spawn(&mut self) -> Result<()> {
        let data = self.dir.path().join("data");
        let log_path = self.dir.path().join("etcd.log");
        let log = File::options().create(true).append(true).open(&log_path)?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        command
            .arg("--name=test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("spawning {}", self.binary.display()))?,
        );
        Ok(())
    }

    /// Polls etcd's status until it answers (the process starting up is the event awaited).
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("etcd exited with {status}:\n{}", self.log_tail());
            }
            if let Ok(mut client) = self.client().await
                && let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(2), client.status()).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd did not answer within {WAIT:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of etcd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn etcd_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ETCD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => Ok(path),
        None => bail!(
            "the etcd binary is absent: these tests need a real etcd (Debian: apt-get install \
             etcd-server; or set ETCD_BIN)"
        ),
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents)?;
    Ok(path)
}

/// One `superseded` call.
#[derive(Debug, Clone)]
pub struct Superseded {
    pub node: String,
    pub session: u64,
    pub by: Holder,
}

/// Records every event a directory reports.
#[derive(Debug)]
pub struct Recorder {
    events: Mutex<Vec<Superseded>>,
    /// How many events so far, for waiting on them.
    count: tokio::sync::watch::Sender<usize>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            events: Mutex::new(Vec::new()),
            count: tokio::sync::watch::channel(0).0,
        }
    }
}

/// Waits until `a` and `b` have recorded `n` events together. Events arrive from each
/// replica's own driver, so this waits on both recorders, not on one directory's changes.
pub async fn wait_told(a: &Recorder, b: &Recorder, n: usize, timeout: Duration) -> Result<()> {
    let (mut ra, mut rb) = (a.count.subscribe(), b.count.subscribe());
    let wait = async {
        loop {
            if *ra.borrow_and_update() + *rb.borrow_and_update() >= n {
                return;
            }
            tokio::select! {
                _ = ra.changed() => {}
                _ = rb.changed() => {}
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .with_context(|| format!("{n} superseded events within {timeout:?}"))
}

impl Recorder {
    pub fn events(&self) -> Vec<Superseded> {
        self.events.lock().unwrap().clone()
    }

    pub fn for_node(&self, node: &str) -> Vec<Superseded> {
        self.events()
            .into_iter()
            .filter(|e| e.node == node)
            .collect()
    }
}

impl DirectoryEvents for Recorder {
    fn superseded(&self, node: &str, session: u64, by: &Holder) {
        let mut events = self.events.lock().unwrap();
        events.push(Superseded {
            node: node.to_owned(),
            session,
            by: by.clone(),
        });
        self.count.send_replace(events.len());
    }
}

/// A replica's directory with its driver running on a task.
pub struct Replica {
    pub id: String,
    pub dir: EtcdDirectory,
    pub events: Arc<Recorder>,
    shutdown: CancellationToken,
    driver: Option<JoinHandle<()>>,
}

impl Replica {
    pub fn start(id: &str, config: DirectoryConfig) -> Replica {
        let events = Arc::new(Recorder::default());
        let shutdown = CancellationToken::new();
        let (dir, driver) = EtcdDirectory::start(
            config,
            ReplicaInfo::new(id, format!("{id}.replicas.test:10350")),
            events.clone(),
            shutdown.clone(),
        )
        .unwrap();
        Replica {
            id: id.to_owned(),
            dir,
            events,
            shutdown,
            driver: Some(tokio::spawn(driver)),
        }
    }

    /// Ends the driver as a SIGKILL would: no release, no lease revoke.
    pub async fn kill(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
            let _ = driver.await;
        }
    }

    /// Shuts the driver down cleanly (it revokes the lease).
    pub async fn shut_down(&mut self) {
        self.shutdown.cancel();
        if let Some(driver) = self.driver.take() {
            tokio::time::timeout(WAIT, driver).await.unwrap().unwrap();
        }
    }

    /// Waits until this replica's cache shows `node` held by replica `by` (`None`: absent).
    pub async fn wait_holder(&self, node: &str, by: Option<&str>) -> Holder {
        let want = by.map(str::to_owned);
        self.dir
            .wait_until(WAIT, "a holder", |d| {
                d.lookup_name(node).map(|h| h.replica.to_string()) == want
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {node} should be held by {by:?}, is {:?}: {e}",
                    self.id,
                    self.dir.lookup_name(node)
                )
            });
        self.dir.lookup_name(node).unwrap_or_else(|| Holder {
            node: node.into(),
            ips: Arc::new([]),
            replica: "".into(),
            addr: "".into(),
            session: 0,
            revision: 0,
        })
    }

    pub async fn fresh(&self) {
        self.dir
            .wait_until_fresh(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}; status {:?}", self.id, self.dir.status()));
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

/// Waits until every replica sees `node` held by `by`; returns what the first one sees.
pub async fn all_see(replicas: &[&Replica], node: &str, by: Option<&str>) -> Holder {
    let mut first = None;
    for replica in replicas {
        let holder = replica.wait_holder(node, by).await;
        first.get_or_insert(holder);
    }
    first.unwrap()
}

/// Makes sure every replica's cache has caught up with everything `writer` wrote so far: the
/// watch delivers in revision order, so seeing a later write means seeing all earlier ones.
pub async fn barrier(writer: &Replica, replicas: &[&Replica], tag: &str) {
    writer.fresh().await;
    let node = format!("barrier-{tag}");
    writer.dir.claim(&node, &[], u64::MAX);
    all_see(replicas, &node, Some(&writer.id)).await;
    writer.dir.release(&node, u64::MAX);
    all_see(replicas, &node, None).await;
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Test logs, once per process (`RUST_LOG` to see them).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A TCP proxy in front of etcd that can cut one replica off (a network partition) while the
/// others keep talking to etcd.
pub struct Partition {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Partition {
    /// Starts a proxy to `etcd`'s client port.
    pub async fn new(etcd: &Etcd) -> Result<Partition> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = format!("127.0.0.1:{}", etcd.client_port);
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    // Partitioned: the connection dies at once.
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut_rx = cut_rx.clone();
                connections.spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Partition { addr, cut, task })
    }

    /// The endpoint a replica behind the proxy uses.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Etcd {
    /// Deletes the data directory of a stopped etcd: its next start is an empty store.
    pub fn wipe(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("etcd is still running");
        }
        std::fs::remove_dir_all(self.dir.path().join("data"))?;
        Ok(())
    }
}
