//! Several `cloudstream` replicas on a real etcd (issue 9): any replica serves any node,
//! a killed replica costs its edges one reconnect, an etcd outage costs nothing but freshness,
//! and kube-apiserver's egress CONNECT reaches every node through any replica.
//!
//! Real binaries throughout: `/usr/bin/etcd` (or `$ETCD_BIN`) on ephemeral ports with a
//! temporary data directory, three `cloudstream` replicas, `edgestream`s dialing them through
//! a small round-robin TCP balancer (test code, standing in for the Service), test kubelets.
//! TTL and backoffs are short so the suite stays fast: lease TTL 2 s, edge backoff ≤ 500 ms.
//!
//! Run: `cargo build -p cloudstream -p edgestream && cargo test -p tether-e2e --test ha`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::StatusCode;
use test_support::client::{
    ExecOutput, body_bytes, echo_server, exec_spdy, exec_ws, http_get, port_forward_ws, tls_connect,
};
use test_support::content::generated_log;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Edge, PATIENCE, Process, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The replicas' lease TTL: a killed replica's claims vanish after this.
const TTL: Duration = Duration::from_secs(2);
/// Edge reconnect pacing.
const EDGE_BACKOFF: [&str; 4] = ["--backoff-initial", "100ms", "--backoff-max", "500ms"];

// ---------------------------------------------------------------------------------------
// etcd

/// One etcd member on 127.0.0.1; killed when dropped.
struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    async fn start() -> Result<Etcd> {
        let mut etcd = Etcd {
            dir: tempfile::tempdir()?,
            client_port: free_port()?,
            peer_port: free_port()?,
            child: None,
        };
        etcd.spawn()?;
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) -> Result<()> {
        let binary = std::env::var_os("ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        self.child = Some(
            Command::new(&binary)
                .arg("--name=test")
                .arg(format!(
                    "--data-dir={}",
                    self.dir.path().join("data").display()
                ))
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
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?,
        );
        Ok(())
    }

    /// Polls `/health` until etcd says it is healthy.
    async fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("etcd exited with {status}:\n{}", self.log());
            }
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(1), self.healthy()).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd did not become healthy:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn healthy(&self) -> Result<bool> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.client_port)).await?;
        tcp.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        Ok(String::from_utf8_lossy(&answer).contains("\"health\":\"true\""))
    }

    /// SIGKILL, and wait for the process to end.
    fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("etcd is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    async fn restart(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_healthy().await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
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

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------
// replicas, balancer, edges

/// A running `cloudstream` replica.
struct Replica {
    id: String,
    process: Process,
    tunnel: SocketAddr,
    stream: SocketAddr,
    admin: SocketAddr,
    egress: SocketAddr,
}

impl Replica {
    async fn start(world: &World, etcd: &Etcd, id: &str) -> Result<Replica> {
        let config = world.path("cloudcore.yaml").to_string_lossy().into_owned();
        let peer_cert = world.path("peer.crt").to_string_lossy().into_owned();
        let peer_key = world.path("peer.key").to_string_lossy().into_owned();
        let endpoint = etcd.endpoint();
        let ttl = format!("{}s", TTL.as_secs());
        let args = [
            "--config",
            &config,
            "--tunnel-addr",
            "127.0.0.1:0",
            "--stream-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--egress-addr",
            "127.0.0.1:0",
            "--etcd-endpoints",
            &endpoint,
            "--etcd-lease-ttl",
            &ttl,
            "--replica-id",
            id,
            "--peer-cert",
            &peer_cert,
            "--peer-key",
            &peer_key,
            "--peer-dial-timeout",
            "1s",
        ];
        let mut process = Process::spawn(
            "cloudstream",
            &args,
            world.path(&format!("cloudstream-{id}.log")),
        )?;
        let line = process.wait_line("cloudstream listening").await?;
        let field = |name: &str| -> Result<SocketAddr> {
            let prefix = format!("{name}=");
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix.as_str()))
                .with_context(|| format!("no {name}= in {line:?}"))?
                .parse()
                .context("bad address")
        };
        Ok(Replica {
            id: id.to_owned(),
            tunnel: field("tunnel")?,
            stream: field("stream")?,
            admin: field("admin")?,
            egress: field("egress")?,
            process,
        })
    }

    /// `GET path` on the admin port: status and body.
    async fn admin_get(&self, path: &str) -> Result<(StatusCode, String)> {
        let tcp = TcpStream::connect(self.admin).await?;
        let response = http_get(tcp, "127.0.0.1", path, &[]).await?;
        let status = response.status();
        let body = body_bytes(response.into_body()).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The value of the metric line that starts with `series` (name and labels).
    async fn metric(&self, series: &str) -> Result<f64> {
        let (_, text) = self.admin_get("/metrics").await?;
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .with_context(|| format!("no {series} in\n{text}"))?
            .trim()
            .parse()
            .context("not a number")
    }
}

/// A round-robin TCP balancer in front of the replicas' tunnel listeners, as a Service would
/// be: each new connection goes to the next backend that accepts it.
struct Balancer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Balancer {
    async fn start(backends: Vec<SocketAddr>) -> Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let next = Arc::new(AtomicUsize::new(0));
        let pipes = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let backends = backends.clone();
                let next = next.clone();
                pipes.lock().unwrap().spawn(async move {
                    let mut client = client;
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..backends.len() {
                        let backend = backends[(start + i) % backends.len()];
                        let dial = tokio::time::timeout(
                            Duration::from_secs(1),
                            TcpStream::connect(backend),
                        );
                        if let Ok(Ok(mut server)) = dial.await {
                            let _ = server.set_nodelay(true);
                            let _ = client.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Balancer { addr, task })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // The pipes' JoinSet lives in the task: aborting it drops (and aborts) them all.
        self.task.abort();
    }
}

/// One test's fleet: etcd, three replicas behind a balancer, two nodes with their kubelets.
struct Fleet {
    world: World,
    etcd: Etcd,
    replicas: Vec<Replica>,
    balancer: Balancer,
    kubelets: Vec<TestKubelet>,
    edges: Vec<Edge>,
    logs: Vec<Bytes>,
}

const NODES: [(&str, &str); 2] = [("edge-1", "10.0.0.11"), ("edge-2", "10.0.0.12")];

impl Fleet {
    /// etcd, replicas a, b, c, and edge-1 on a, edge-2 on b (the balancer's round robin).
    async fn start() -> Result<Fleet> {
        let world = World::new()?;
        world.cloudcore("")?;
        // One replica identity shared by every replica, as one Secret in a Deployment.
        let peer = world.pki.client("tether-replica:cloudstream", None)?;
        world.pki.write_pem_files(world.dir.path(), "peer", &peer)?;
        let etcd = Etcd::start().await?;
        let mut replicas = Vec::new();
        for id in ["a", "b", "c"] {
            replicas.push(Replica::start(&world, &etcd, id).await?);
        }
        let balancer = Balancer::start(replicas.iter().map(|r| r.tunnel).collect()).await?;
        let mut kubelets = Vec::new();
        let mut logs = Vec::new();
        for (i, (node, _)) in NODES.iter().enumerate() {
            // Different sizes per node, so a mix-up cannot pass.
            let log = generated_log((100 << 10) + i as u64 * 7919);
            let mut with_name = format!("{node}\n").into_bytes();
            with_name.extend_from_slice(&log);
            let log = Bytes::from(with_name);
            kubelets.push(
                TestKubelet::builder()
                    .container(
                        "default",
                        "web",
                        "app",
                        ContainerSpec::with_logs(log.clone()),
                    )
                    .start()
                    .await?,
            );
            logs.push(log);
        }
        let mut fleet = Fleet {
            world,
            etcd,
            replicas,
            balancer,
            kubelets,
            edges: Vec::new(),
            logs,
        };
        for i in 0..NODES.len() {
            let edge = fleet.start_edge(i, fleet.balancer.addr).await?;
            fleet.edges.push(edge);
        }
        Ok(fleet)
    }

    async fn start_edge(&self, i: usize, server: SocketAddr) -> Result<Edge> {
        let (node, ip) = NODES[i];
        let mut edge = Edge::spawn(
            &self.world,
            server,
            node,
            ip,
            self.kubelets[i].addr(),
            node,
            &EDGE_BACKOFF,
        )?;
        edge.process.wait_line("edgestream connected").await?;
        Ok(edge)
    }

    fn replica(&self, id: &str) -> &Replica {
        self.replicas.iter().find(|r| r.id == id).unwrap()
    }

    /// `GET path` for `host` through `replica`'s stream listener, as kube-apiserver sends it.
    async fn get(&self, replica: &Replica, host: &str, path: &str) -> Result<(StatusCode, Bytes)> {
        let io = tls_connect(replica.stream, self.world.apiserver.clone(), "127.0.0.1").await?;
        let response = http_get(io, host, path, &[]).await?;
        let status = response.status();
        Ok((status, body_bytes(response.into_body()).await?))
    }

    /// Logs of node `i` through `replica`, checked byte for byte.
    async fn check_logs(&self, replica: &Replica, i: usize, host: &str) -> Result<()> {
        let (status, body) = self
            .get(replica, host, "/containerLogs/default/web/app")
            .await?;
        if status != StatusCode::OK {
            bail!(
                "logs of {} through {} ({host}): {status} {}",
                NODES[i].0,
                replica.id,
                String::from_utf8_lossy(&body)
            );
        }
        if body != self.logs[i] {
            bail!(
                "logs of {} through {} differ: {} bytes, expected {}",
                NODES[i].0,
                replica.id,
                body.len(),
                self.logs[i].len()
            );
        }
        Ok(())
    }

    /// exec `cat` with stdin, then `exit 3`, on node `i` through `replica` over WebSocket.
    async fn check_exec(&self, replica: &Replica, i: usize) -> Result<()> {
        let node = NODES[i].0;
        let input = format!("stdin for {node} via {}\n", replica.id).into_bytes();
        let cat = "/exec/default/web/app?command=cat&input=1&output=1&error=1";
        let io = tls_connect(replica.stream, self.world.apiserver.clone(), "127.0.0.1").await?;
        let out = run(exec_ws(io, node, cat, &[]).await?, &input).await?;
        if out.stdout != input || out.exit_code() != Some(0) {
            bail!("exec cat on {node} via {}: {out:?}", replica.id);
        }
        let exit = "/exec/default/web/app?command=exit&command=3&output=1&error=1";
        let io = tls_connect(replica.stream, self.world.apiserver.clone(), "127.0.0.1").await?;
        let out = run(exec_ws(io, node, exit, &[]).await?, b"").await?;
        if out.exit_code() != Some(3) {
            bail!("exec exit 3 on {node} via {}: {out:?}", replica.id);
        }
        Ok(())
    }

    /// Logs, exec and port-forward of every node through every replica in `ids`.
    async fn check_all(&self, ids: &[&str], echo: SocketAddr) -> Result<()> {
        for id in ids {
            let replica = self.replica(id);
            for (i, (node, _)) in NODES.iter().enumerate() {
                self.check_logs(replica, i, node).await?;
                self.check_exec(replica, i).await?;
                check_port_forward(&self.world, replica, node, echo).await?;
            }
        }
        Ok(())
    }

    /// Waits until every replica in `ids` serves the logs of every node; returns how long.
    async fn wait_routed(&self, ids: &[&str], within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let mut last = Ok(());
            for id in ids {
                for (i, (node, _)) in NODES.iter().enumerate() {
                    if last.is_ok() {
                        last = self.check_logs(self.replica(id), i, node).await;
                    }
                }
            }
            match last {
                Ok(()) => return Ok(started.elapsed()),
                Err(e) if started.elapsed() > within => {
                    return Err(e.context(format!("not routed within {within:?}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

async fn run(session: test_support::client::ExecSession, stdin: &[u8]) -> Result<ExecOutput> {
    let (mut writer, reader) = session.split();
    let stdin = stdin.to_vec();
    let feed = tokio::spawn(async move {
        if !stdin.is_empty() {
            let _ = writer.send_stdin(&stdin).await;
        }
        let _ = writer.close_stdin().await;
        writer
    });
    let out = tokio::time::timeout(PATIENCE, reader.collect())
        .await
        .context("exec did not end")??;
    let _writer = feed.await?;
    Ok(out)
}

/// Port-forward to the echo server on `node` through `replica`: what goes out comes back.
async fn check_port_forward(
    world: &World,
    replica: &Replica,
    node: &str,
    echo: SocketAddr,
) -> Result<()> {
    let io = tls_connect(replica.stream, world.apiserver.clone(), "127.0.0.1").await?;
    let path = format!("/portForward/default/web?port={}", echo.port());
    let session = port_forward_ws(io, node, &path).await?;
    let (mut writer, mut reader) = session.split();
    let payload = format!("port-forward to {node} via {}", replica.id).into_bytes();
    writer.write(&payload).await?;
    let mut got = Vec::new();
    while got.len() < payload.len() {
        match tokio::time::timeout(PATIENCE, reader.read()).await?? {
            Some(chunk) => got.extend_from_slice(&chunk),
            None => bail!("port-forward to {node} via {} ended early", replica.id),
        }
    }
    if got != payload {
        bail!("port-forward to {node} via {} echoed {got:?}", replica.id);
    }
    Ok(())
}

/// What kube-apiserver's egress dialer does: `CONNECT <target>`, read the answer; on 200,
/// TLS to "the kubelet" over the same connection.
async fn egress_connect(
    egress: SocketAddr,
    target: &str,
) -> Result<Result<TcpStream, (StatusCode, String)>> {
    let mut tcp = TcpStream::connect(egress).await?;
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    // Read the answer head byte by byte, so no byte of the TLS that follows is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(PATIENCE, tcp.read_u8()).await??;
        head.push(byte);
        if head.len() > 8192 {
            bail!("CONNECT answer head too long");
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let status = StatusCode::from_u16(code)?;
    if status == StatusCode::OK {
        return Ok(Ok(tcp));
    }
    let mut body = String::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_string(&mut body)).await;
    Ok(Err((status, body)))
}

// ---------------------------------------------------------------------------------------
// tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_every_node_and_a_killed_replica_costs_one_reconnect() {
    let test_started = Instant::now();
    let mut fleet = Fleet::start().await.unwrap();
    let (echo, _echo_server) = echo_server().await.unwrap();
    // edge-1 landed on a, edge-2 on b, nothing on c.
    for (id, sessions) in [("a", 1.0), ("b", 1.0), ("c", 0.0)] {
        assert_eq!(
            fleet.replica(id).metric("tether_sessions").await.unwrap(),
            sessions,
            "sessions on {id}"
        );
    }
    let took = fleet.wait_routed(&["a", "b", "c"], PATIENCE).await.unwrap();
    println!("every replica routes every node {took:?} after the edges connected");

    // Logs byte-exact, exec with stdin and exit code, port-forward: each node through each
    // replica, c holding nothing.
    fleet.check_all(&["a", "b", "c"], echo).await.unwrap();
    // By node IP too, and SPDY exec forwarded byte for byte.
    let c = fleet.replica("c");
    fleet.check_logs(c, 0, "10.0.0.11:10250").await.unwrap();
    fleet.check_logs(c, 1, "10.0.0.12:10250").await.unwrap();
    let io = tls_connect(c.stream, fleet.world.apiserver.clone(), "127.0.0.1")
        .await
        .unwrap();
    let path = "/exec/default/web/app?command=cat&input=1&output=1&error=1";
    let out = run(
        exec_spdy(io, "edge-2", path, &[]).await.unwrap(),
        b"spdy via c\n",
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"spdy via c\n");
    assert_eq!(out.exit_code(), Some(0));

    // c forwarded, a and b received; nobody refused anything.
    let sent = c
        .metric(r#"tether_forwarded_requests_total{outcome="ok"}"#)
        .await
        .unwrap();
    assert!(sent >= 12.0, "c forwarded {sent} requests");
    let served = fleet
        .replica("a")
        .metric(r#"tether_forwarded_requests_total{outcome="served"}"#)
        .await
        .unwrap();
    assert!(served >= 6.0, "a served {served} forwarded requests");
    assert_eq!(
        c.metric(r#"tether_forwarded_requests_total{outcome="unreachable"}"#)
            .await
            .unwrap(),
        0.0
    );

    // Only a replica may send the hop marker; a forwarded request is never forwarded again.
    let io = tls_connect(c.stream, fleet.world.apiserver.clone(), "127.0.0.1")
        .await
        .unwrap();
    let response = http_get(
        io,
        "edge-1",
        "/containerLogs/default/web/app",
        &[("x-tether-forwarded-by", "a"), ("x-tether-node", "edge-1")],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let replica_client = {
        let peer = fleet
            .world
            .pki
            .client("tether-replica:intruder-test", None)
            .unwrap();
        fleet.world.pki.client_config(Some(&peer)).unwrap()
    };
    let io = tls_connect(c.stream, replica_client, "127.0.0.1")
        .await
        .unwrap();
    let response = http_get(
        io,
        "edge-1",
        "/containerLogs/default/web/app",
        &[("x-tether-forwarded-by", "a"), ("x-tether-node", "edge-1")],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = body_bytes(response.into_body()).await.unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("forwarded once only"), "{text}");

    // kube-apiserver's egress: CONNECT to a node (by IP or name), then TLS, then logs and exec,
    // on a replica that holds the node (a) and one that does not (c).
    for (id, target, i) in [
        ("a", "10.0.0.11:10250", 0),
        ("c", "10.0.0.11:10250", 0),
        ("c", "edge-2:10250", 1),
    ] {
        let replica = fleet.replica(id);
        let tcp = egress_connect(replica.egress, target)
            .await
            .unwrap()
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(fleet.world.apiserver.clone())
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap();
        // The apiserver's Host is the node address it dialled.
        let response = http_get(tls, target, "/containerLogs/default/web/app", &[])
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "egress logs via {id}");
        assert_eq!(
            body_bytes(response.into_body()).await.unwrap(),
            fleet.logs[i]
        );
        let tcp = egress_connect(replica.egress, target)
            .await
            .unwrap()
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(fleet.world.apiserver.clone())
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let out = run(exec_ws(tls, target, path, &[]).await.unwrap(), b"egress\n")
            .await
            .unwrap();
        assert_eq!(out.stdout, b"egress\n", "egress exec via {id}");
        assert_eq!(out.exit_code(), Some(0));
    }
    // An unknown node is refused before any TLS.
    let refused = egress_connect(c.egress, "10.9.9.9:10250")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.1.contains("10.9.9.9"), "{}", refused.1);

    // SIGKILL a: edge-1 reconnects through the balancer; b and c serve both nodes again.
    let killed = Instant::now();
    fleet.replicas[0].process.child.start_kill().unwrap();
    fleet.replicas[0].process.child.wait().await.unwrap();
    // Until edge-1's new claim is in, b and c may still point at dead a: that is a prompt 503
    // naming the replica, never a hang.
    let asked = Instant::now();
    let (status, body) = fleet
        .get(
            fleet.replica("b"),
            "edge-1",
            "/containerLogs/default/web/app",
        )
        .await
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status} {}",
        String::from_utf8_lossy(&body)
    );
    fleet.edges[0]
        .process
        .wait_line("edgestream connected")
        .await
        .unwrap();
    let took = fleet
        .wait_routed(&["b", "c"], TTL + Duration::from_secs(10))
        .await
        .unwrap();
    let recovered = killed.elapsed();
    println!(
        "after SIGKILL of replica a, every node is served from every survivor again after \
         {recovered:?} (the last {took:?} of it polling)"
    );
    // The edge's backoff (≤ 500 ms) and one claim; the TTL bounds it even if the claim had to
    // wait for a's lease to expire. Debug binaries on a shared machine get a margin.
    assert!(recovered < TTL + Duration::from_secs(5), "{recovered:?}");
    fleet.check_all(&["b", "c"], echo).await.unwrap();
    println!("test took {:?}", test_started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_the_last_known_directory_and_a_moved_edge_is_found_after() {
    let test_started = Instant::now();
    let mut fleet = Fleet::start().await.unwrap();
    fleet.wait_routed(&["a", "b", "c"], PATIENCE).await.unwrap();
    for r in &fleet.replicas {
        let (status, detail) = r.admin_get("/readyz").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(detail.contains("following etcd; 2 nodes"), "{detail}");
    }

    fleet.etcd.kill().unwrap();
    let outage = Instant::now();
    // Every replica says its directory is stale, and stays ready.
    for r in &fleet.replicas {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, detail) = r.admin_get("/readyz").await.unwrap();
            assert_eq!(status, StatusCode::OK, "{detail}");
            if detail.contains("stale") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never went stale: {detail}",
                r.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The metrics are sampled: wait for the next sample.
        let deadline = Instant::now() + PATIENCE;
        while r.metric("tether_directory_up").await.unwrap() != 0.0 {
            assert!(
                Instant::now() < deadline,
                "{}: tether_directory_up stays 1",
                r.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Requests through every replica keep working from the last known directory.
    let mut rounds = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        for id in ["a", "b", "c"] {
            for (i, (node, _)) in NODES.iter().enumerate() {
                fleet.check_logs(fleet.replica(id), i, node).await.unwrap();
            }
        }
        fleet.check_exec(fleet.replica("c"), 0).await.unwrap();
        rounds += 1;
    }
    println!("{rounds} rounds of requests through every replica while etcd was away");

    // edge-2 moves from b to c while etcd is away.
    let mut moved = fleet.edges.pop().unwrap();
    moved.process.terminate().unwrap();
    moved.process.child.wait().await.unwrap();
    let c_tunnel = fleet.replica("c").tunnel;
    let edge = fleet.start_edge(1, c_tunnel).await.unwrap();
    fleet.edges.push(edge);
    // c serves it at once; a still believes b holds it, and b answers 503 with the reason.
    fleet
        .check_logs(fleet.replica("c"), 1, "edge-2")
        .await
        .unwrap();
    let (status, body) = fleet
        .get(
            fleet.replica("a"),
            "edge-2",
            "/containerLogs/default/web/app",
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("edge-2"), "{body}");
    // The rest of the ten seconds.
    while outage.elapsed() < Duration::from_secs(10) {
        fleet
            .check_logs(fleet.replica("b"), 0, "edge-1")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    fleet.etcd.restart().await.unwrap();
    let back = Instant::now();
    let took = fleet
        .wait_routed(&["a", "b", "c"], TTL + Duration::from_secs(3))
        .await
        .unwrap();
    println!("after etcd returned, every replica found the moved edge in {took:?} (TTL {TTL:?})");
    assert!(back.elapsed() <= TTL + Duration::from_secs(3));
    for r in &fleet.replicas {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (_, detail) = r.admin_get("/readyz").await.unwrap();
            if detail.contains("following etcd") {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {detail}", r.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("test took {:?}", test_started.elapsed());
}
