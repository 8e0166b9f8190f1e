//! The tunnel port under pressure, over real TCP and mutual TLS: the handshake deadline cuts
//! silent and trickling peers, one address cannot take every handshake slot, a burst larger
//! than the handshake limit waits instead of failing, and a session holds its connection slot.
//!
//! Idle "flood" connections come from 127.0.0.2 and real edges from 127.0.0.1, two source
//! addresses on one loopback interface.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tunnel_session::client::{DialConfig, dial};
use tunnel_session::server::{Refusal, TunnelObserver, TunnelServer, TunnelServerConfig};
use tunnel_session::tls::{self, TlsFiles};
use tunnel_session::{NodeIdentity, Registry, SessionConfig};

/// Generous bound on anything that should take milliseconds; only reached when broken.
const PATIENCE: Duration = Duration::from_secs(20);
/// Where the idle connections come from.
const FLOOD_SOURCE: &str = "127.0.0.2";

/// Counts what the server reports.
#[derive(Default)]
struct Tally {
    refused: [AtomicUsize; Refusal::ALL.len()],
    handshakes: AtomicUsize,
    peak: AtomicUsize,
    sessions: AtomicUsize,
}

impl Tally {
    fn refused(&self, reason: Refusal) -> usize {
        let i = Refusal::ALL.iter().position(|r| *r == reason).unwrap();
        self.refused[i].load(Ordering::SeqCst)
    }

    /// Polls until `done` holds, or fails after [`PATIENCE`] showing what was seen.
    async fn wait(&self, what: &str, done: impl Fn(&Tally) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: refused {:?}, handshakes {}, sessions {}",
                Refusal::ALL.map(|r| (r.as_str(), self.refused(r))),
                self.handshakes.load(Ordering::SeqCst),
                self.sessions.load(Ordering::SeqCst),
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl TunnelObserver for Tally {
    fn refused(&self, reason: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == reason).unwrap();
        self.refused[i].fetch_add(1, Ordering::SeqCst);
    }
    fn handshake_started(&self) {
        let now = self.handshakes.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
    fn handshake_ended(&self) {
        self.handshakes.fetch_sub(1, Ordering::SeqCst);
    }
    fn session_started(&self, _session: &tunnel_session::Session) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
    }
    fn session_ended(&self, _session: &tunnel_session::Session) {
        self.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Server {
    _dir: tempfile::TempDir,
    pki: test_support::pki::TestPki,
    addr: SocketAddr,
    tally: Arc<Tally>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<tunnel_session::Result<()>>,
}

impl Server {
    async fn start(config: TunnelServerConfig) -> Server {
        tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = test_support::pki::TestPki::new().unwrap();
        let ca = pki.write_ca(dir.path()).unwrap();
        let server = pki.server(&["127.0.0.1"]).unwrap();
        let (cert, key) = pki.write_pem_files(dir.path(), "server", &server).unwrap();
        let files = TlsFiles { ca, cert, key };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tally = Arc::new(Tally::default());
        let server = TunnelServer::new(
            tls::server_config(&files, &[b"http/1.1"]).unwrap(),
            Arc::new(Registry::new()),
            config,
        )
        .with_observer(tally.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(listener, stop.clone()));
        Server {
            _dir: dir,
            pki,
            addr,
            tally,
            stop,
            task,
        }
    }

    /// Dials as node `edge-{n}` with node IP 10.0.0.{n}.
    fn dial_config(&self, n: u8) -> DialConfig {
        let node = format!("edge-{n}");
        let id = self.pki.node(&node).unwrap();
        DialConfig {
            server: self.addr.to_string(),
            tls: self.pki.client_config(Some(&id)).unwrap(),
            node: NodeIdentity {
                name: node,
                ip: Some(format!("10.0.0.{n}").parse().unwrap()),
            },
            handshake_timeout: PATIENCE,
            session: SessionConfig::default(),
            offer_tether2: true,
        }
    }

    /// A TCP connection from [`FLOOD_SOURCE`] that sends nothing; `None` if the server reset
    /// it before the connect returned.
    async fn idle(&self) -> Option<TcpStream> {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{FLOOD_SOURCE}:0").parse().unwrap())
            .unwrap();
        match socket.connect(self.addr).await {
            Ok(tcp) => Some(tcp),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("connecting to the tunnel port: {e}"),
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// Reads until the server closes or resets the connection.
async fn closed_by_server(mut tcp: TcpStream) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server kept the connection open past its deadline");
}

/// Writes `bytes` one at a time, 20 ms apart, over and over, until a write fails.
async fn trickle(write: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> std::io::Result<()> {
    for byte in bytes.iter().cycle() {
        write.write_all(&[*byte]).await?;
        write.flush().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn config(change: impl FnOnce(&mut TunnelServerConfig)) -> TunnelServerConfig {
    let mut config = TunnelServerConfig::default();
    change(&mut config);
    config
}

#[tokio::test]
async fn a_peer_that_sends_nothing_is_cut_at_the_deadline() {
    let server = Server::start(config(|c| c.handshake_timeout = Duration::from_millis(300))).await;
    closed_by_server(server.idle().await.unwrap()).await;
    server
        .tally
        .wait("timeout counted, slot given back", |t| {
            t.refused(Refusal::Timeout) == 1 && t.handshakes.load(Ordering::SeqCst) == 0
        })
        .await;
    assert_eq!(server.tally.refused(Refusal::Tls), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_trickles_its_tls_hello_is_cut_at_the_deadline() {
    let server = Server::start(config(|c| c.handshake_timeout = Duration::from_millis(500))).await;
    let tcp = server.idle().await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    // A TLS handshake record announcing 16 KiB, then one byte every 20 ms: each byte is new
    // progress, so only a deadline over the whole handshake ends it.
    let trickle = tokio::spawn(async move {
        write.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00]).await?;
        trickle(&mut write, &[0x01]).await
    });
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(PATIENCE, read.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the trickling peer was not cut: {closed:?}"
    );
    trickle.abort();
    server
        .tally
        .wait("timeout counted", |t| t.refused(Refusal::Timeout) == 1)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_trickles_its_upgrade_request_is_cut_at_the_same_deadline() {
    let server = Server::start(config(|c| c.handshake_timeout = Duration::from_millis(500))).await;
    let id = server.pki.node("edge-1").unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(server.pki.client_config(Some(&id)).unwrap())
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    let request = b"GET /v1/kubeedge/connect HTTP/1.1\r\nHost: cloud\r\nUpgrade: websocket\r\n";
    let trickle = tokio::spawn(async move { trickle(&mut write, request).await });
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(PATIENCE, read.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the trickling peer was not cut: {closed:?}"
    );
    trickle.abort();
    server
        .tally
        .wait("timeout counted", |t| t.refused(Refusal::Timeout) == 1)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_from_one_address_do_not_lock_out_an_edge() {
    // A deadline far beyond the test: the edge must get in while the flood's slots are held,
    // not after they expire.
    let server = Server::start(config(|c| {
        c.handshake_timeout = Duration::from_secs(600);
        c.max_handshakes = 16;
        c.max_handshakes_per_source = 4;
    }))
    .await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(server.idle().await);
    }
    server
        .tally
        .wait("all but four of the flood refused", |t| {
            t.refused(Refusal::SourceLimit) == 196 && t.handshakes.load(Ordering::SeqCst) == 4
        })
        .await;
    let (session, _incoming, driver) = dial(&server.dial_config(1)).await.unwrap();
    let driving = tokio::spawn(driver.run());
    server
        .tally
        .wait("the edge's session started", |t| {
            t.sessions.load(Ordering::SeqCst) == 1
        })
        .await;
    // The four held connections are still waiting for their TLS hello, nothing more.
    assert_eq!(server.tally.handshakes.load(Ordering::SeqCst), 4);
    assert_eq!(server.tally.refused(Refusal::Timeout), 0);
    session.close("done");
    let _ = driving.await.unwrap();
    drop(flood);
    server.stop().await;
}

#[tokio::test]
async fn a_burst_beyond_the_handshake_limit_waits_and_every_edge_gets_in() {
    // All from 127.0.0.1: the per-source limit is set out of the way; the global one is tested.
    let server = Server::start(config(|c| {
        c.max_handshakes = 3;
        c.max_handshakes_per_source = 100;
    }))
    .await;
    let edges = 40u8;
    let mut dials = tokio::task::JoinSet::new();
    for i in 0..edges {
        let config = server.dial_config(i);
        dials.spawn(async move { dial(&config).await });
    }
    let mut sessions = Vec::new();
    while let Some(dialled) = dials.join_next().await {
        let (session, incoming, driver) = dialled.unwrap().expect("a queued edge was refused");
        sessions.push((session, incoming, tokio::spawn(driver.run())));
    }
    server
        .tally
        .wait("every session started", |t| {
            t.sessions.load(Ordering::SeqCst) == usize::from(edges)
        })
        .await;
    let peak = server.tally.peak.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&peak),
        "{peak} handshakes at once with a limit of 3"
    );
    assert_eq!(
        Refusal::ALL.map(|r| server.tally.refused(r)),
        [0; Refusal::ALL.len()]
    );
    for (session, _, _) in &sessions {
        session.close("done");
    }
    for (_, _, driver) in sessions {
        let _ = driver.await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn a_session_holds_its_connection_slot_until_it_ends() {
    let server = Server::start(config(|c| c.max_connections = 1)).await;
    let (first, _incoming, driver) = dial(&server.dial_config(1)).await.unwrap();
    let first_driver = tokio::spawn(driver.run());
    server
        .tally
        .wait("first session", |t| t.sessions.load(Ordering::SeqCst) == 1)
        .await;
    let second_config = server.dial_config(2);
    let mut second = tokio::spawn(async move { dial(&second_config).await });
    // The second edge's connect completes in the kernel, but it is not accepted: no handshake
    // starts while the first session holds the only slot.
    tokio::time::timeout(Duration::from_millis(300), &mut second)
        .await
        .expect_err("a second connection was served beyond the limit of one");
    assert_eq!(server.tally.handshakes.load(Ordering::SeqCst), 0);
    first.close("make room");
    let _ = first_driver.await.unwrap();
    let (session, _incoming, driver) = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the waiting edge got the freed slot")
        .unwrap()
        .unwrap();
    let driving = tokio::spawn(driver.run());
    session.close("done");
    let _ = driving.await.unwrap();
    server.stop().await;
}
