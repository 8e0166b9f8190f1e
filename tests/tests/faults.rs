//! Faults: processes killed, kubelets that misbehave, clients that stop reading. Each test
//! drives the real binaries into one fault and checks the two things an operator relies on:
//! every client gets a clear error promptly, and the processes give back everything the
//! fault's streams held (descriptors and tasks exactly, memory within a slack).
//!
//! A frozen edge (SIGSTOP, half-open from the cloud's view) is in `lifecycle.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use test_support::client::{
    Event, ExecSession, PortForwardSession, UpgradeError, body_bytes, echo_server, exec_ws,
    port_forward_ws,
};
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cloud, Edge, PATIENCE, Probe, Readings, Tolerance, World, body_was_cut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// "Promptly": a closed TCP connection is seen within milliseconds; this bound is far above
/// that on a loaded machine and far below the dead-peer deadline the tests configure
/// ([`DEAD_AFTER`]), so passing it proves the close was noticed, not timed out.
const PROMPT: Duration = Duration::from_secs(10);
/// The dead-peer deadline of the processes in these tests.
const DEAD_AFTER: &str = "60s";
/// Memory a process may hold above its baseline once a fault is over: jemalloc returns
/// freed pages on a decay of seconds and keeps small per-thread caches. A fault that leaked
/// a stream's buffers (1 MiB window, 64 KiB relay buffers) per request would still show in
/// the descriptor and task counts, which are exact.
const RSS_SLACK: u64 = 8 << 20;
/// How long a process gets to give everything back.
const SETTLE: Duration = Duration::from_secs(30);

const CAT: &str = "/exec/default/web/app?command=cat&input=1&output=1&error=1";
const FOLLOW: &str = "/containerLogs/default/web/app?follow=true";

fn slack() -> Tolerance {
    Tolerance { rss: RSS_SLACK }
}

async fn kubelet() -> TestKubelet {
    TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(&b"hello\n"[..]),
        )
        .start()
        .await
        .unwrap()
}

async fn cloud(world: &World) -> Cloud {
    Cloud::start(
        world,
        &["--admin-addr", "127.0.0.1:0", "--dead-after", DEAD_AFTER],
    )
    .await
    .unwrap()
}

async fn edge(
    world: &World,
    cloud: &Cloud,
    node: &str,
    ip: &str,
    kubelet: SocketAddr,
    kubeedge: bool,
) -> Edge {
    let mut args = vec![
        "--admin-addr",
        "127.0.0.1:0",
        "--dead-after",
        DEAD_AFTER,
        // The tests restart clouds: the edges should not sit out a long backoff.
        "--backoff-initial",
        "200ms",
        "--backoff-max",
        "1s",
    ];
    if kubeedge {
        args.push("--kubeedge-only");
    }
    Edge::start(world, cloud, node, ip, kubelet, &args)
        .await
        .unwrap()
}

/// Waits for a process to give back what it held (the error shows its log's tail).
async fn assert_flat(probe: &Probe, baseline: Readings) {
    if let Err(e) = probe.wait_flat(baseline, slack(), SETTLE).await {
        panic!("{e:#}");
    }
}

/// The clients of the three long-lived operations, each established (bytes went both ways).
struct Busy {
    exec: ExecSession,
    port_forward: PortForwardSession,
    follow: hyper::body::Incoming,
}

async fn busy(world: &World, cloud: &Cloud, node: &str, echo: SocketAddr) -> Busy {
    let io = world.connect_stream(cloud).await.unwrap();
    let mut exec = exec_ws(io, node, CAT, &[]).await.unwrap();
    exec.send_stdin(b"ping\n").await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, exec.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Some(Event::Stdout(Bytes::from_static(b"ping\n"))));

    let io = world.connect_stream(cloud).await.unwrap();
    let path = format!("/portForward/default/web?port={}", echo.port());
    let mut port_forward = port_forward_ws(io, node, &path).await.unwrap();
    port_forward.write(b"ping").await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, port_forward.read())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Some(Bytes::from_static(b"ping")));

    let resp = world.get(cloud, node, FOLLOW, &[]).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut follow = resp.into_body();
    let first = tokio::time::timeout(PATIENCE, follow.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"hello\n"));
    Busy {
        exec,
        port_forward,
        follow,
    }
}

/// How a client's stream ended after a fault.
#[derive(Debug)]
enum Ending {
    /// An error: the client knows the stream broke. The text is shown in the test output.
    Error(#[allow(dead_code)] String),
    /// A clean end, as if the remote side had finished: wrong after a fault.
    Clean,
}

impl Busy {
    /// Waits for each of the three to end, within [`PROMPT`] of `since`; reports how.
    async fn endings(self, since: Instant) -> [(&'static str, Ending, Duration); 3] {
        let Busy {
            mut exec,
            mut port_forward,
            mut follow,
        } = self;
        let exec = async {
            loop {
                match exec.next().await {
                    Ok(Some(Event::Status(s))) => {
                        return Ending::Error(format!("unexpected status {s}"));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ending::Clean,
                    Err(e) => return Ending::Error(format!("{e:#}")),
                }
            }
        };
        let port_forward = async {
            loop {
                match port_forward.read().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ending::Clean,
                    Err(e) => return Ending::Error(format!("{e:#}")),
                }
            }
        };
        let follow = async {
            if body_was_cut(&mut follow).await {
                Ending::Error("body cut".into())
            } else {
                Ending::Clean
            }
        };
        let timed = |name: &'static str, f| async move {
            let ending = tokio::time::timeout(PROMPT, f)
                .await
                .unwrap_or_else(|_| panic!("{name}: no error within {PROMPT:?} of the fault"));
            (name, ending, since.elapsed())
        };
        let (a, b, c) = tokio::join!(
            timed(
                "exec",
                Box::pin(exec) as futures_util::future::BoxFuture<'_, Ending>
            ),
            timed("port-forward", Box::pin(port_forward)),
            timed("logs -f", Box::pin(follow)),
        );
        [a, b, c]
    }
}

fn assert_all_errors(endings: &[(&'static str, Ending, Duration)]) {
    for (name, ending, after) in endings {
        assert!(
            matches!(ending, Ending::Error(_)),
            "{name} ended cleanly after the fault ({after:?}); the client cannot tell it broke"
        );
    }
}

// ---------------------------------------------------------------------------------------
// An edge killed in the middle of streams.
// ---------------------------------------------------------------------------------------

async fn edge_killed_mid_streams(kubeedge: bool) {
    let world = World::new().unwrap();
    let cloud = cloud(&world).await;
    let cloud_probe = cloud.probe().unwrap();
    // What the cloud holds with no edge at all: what it must come back to.
    let baseline = cloud_probe.settled(PATIENCE).await.unwrap();
    assert_eq!((baseline.sessions, baseline.streams_open), (0, 0));

    let kubelet = kubelet().await;
    let (echo, _echo) = echo_server().await.unwrap();
    let mut edge = edge(
        &world,
        &cloud,
        "edge-1",
        "10.0.0.11",
        kubelet.addr(),
        kubeedge,
    )
    .await;
    let busy = busy(&world, &cloud, "edge-1", echo).await;
    let open = cloud_probe.read().await.unwrap();
    assert_eq!((open.sessions, open.streams_open), (1, 3), "{open}");

    let killed = Instant::now();
    edge.process.kill().await.unwrap();
    let endings = busy.endings(killed).await;
    println!("edge killed: {endings:?}");
    assert_all_errors(&endings);

    // The node is gone at once: a new request is told so rather than waiting.
    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_flat(&cloud_probe, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_mid_stream_fails_every_client_at_once_and_the_cloud_frees_all() {
    edge_killed_mid_streams(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_dialect_edge_killed_mid_stream_fails_every_client_at_once() {
    edge_killed_mid_streams(true).await;
}

// ---------------------------------------------------------------------------------------
// The cloud killed under load and restarted on the same ports.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_killed_under_load_and_restarted_gets_its_edges_back_and_they_leak_nothing() {
    let world = World::new().unwrap();
    let mut first = cloud(&world).await;
    let kubelet = kubelet().await;
    let (echo, _echo) = echo_server().await.unwrap();
    let mut edges = vec![
        edge(
            &world,
            &first,
            "edge-t2",
            "10.0.0.21",
            kubelet.addr(),
            false,
        )
        .await,
        edge(&world, &first, "edge-ke", "10.0.0.22", kubelet.addr(), true).await,
    ];
    // One of each long-lived stream first, so whatever an edge sets up lazily exists in
    // the baseline.
    for edge in &edges {
        let busy = busy(&world, &first, &edge.node, echo).await;
        drop(busy);
    }
    tokio::time::timeout(PATIENCE, kubelet.wait_idle())
        .await
        .unwrap();
    let mut baselines = Vec::new();
    for edge in &edges {
        baselines.push(edge.probe().unwrap().settled(PATIENCE).await.unwrap());
    }

    // Load: three long-lived streams per node, and short requests in a loop.
    let mut long_lived = Vec::new();
    for edge in &edges {
        for _ in 0..3 {
            long_lived.push(busy(&world, &first, &edge.node, echo).await);
        }
    }
    let world = Arc::new(world);
    let stop = CancellationToken::new();
    let mut short = tokio::task::JoinSet::new();
    for node in ["edge-t2", "edge-ke"] {
        for _ in 0..2 {
            let (world, stop, stream) = (world.clone(), stop.clone(), first.stream);
            short.spawn(async move {
                let mut served = 0u64;
                while !stop.is_cancelled() {
                    let attempt = async {
                        let io = test_support::client::tls_connect(
                            stream,
                            world.apiserver.clone(),
                            "127.0.0.1",
                        )
                        .await?;
                        let resp = test_support::client::http_get(
                            io,
                            node,
                            "/containerLogs/default/web/app",
                            &[],
                        )
                        .await?;
                        body_bytes(resp.into_body()).await
                    };
                    match tokio::time::timeout(PATIENCE, attempt).await {
                        Ok(Ok(_)) => served += 1,
                        // Refused or cut while the cloud is down: that is the fault.
                        Ok(Err(_)) => tokio::task::yield_now().await,
                        Err(_) => panic!("a request to {node} hung"),
                    }
                }
                served
            });
        }
    }
    // Let the short requests get going before the kill.
    let cloud_probe = first.probe().unwrap();
    cloud_probe
        .wait_for("streams under load", PATIENCE, |r| r.streams_open >= 6)
        .await
        .unwrap();

    let (tunnel, stream_addr) = (first.tunnel, first.stream);
    let killed = Instant::now();
    first.process.kill().await.unwrap();
    let mut endings = Vec::new();
    for busy in long_lived {
        endings.extend(busy.endings(killed).await);
    }
    assert_all_errors(&endings);

    let second = Cloud::start_at(
        &world,
        &tunnel.to_string(),
        &stream_addr.to_string(),
        &["--admin-addr", "127.0.0.1:0", "--dead-after", DEAD_AFTER],
    )
    .await
    .unwrap();
    for edge in &mut edges {
        edge.wait_connected().await.unwrap();
    }
    let second_probe = second.probe().unwrap();
    second_probe
        .wait_for("both edges back", PATIENCE, |r| r.sessions == 2)
        .await
        .unwrap();
    stop.cancel();
    let mut served = 0;
    while let Some(r) = short.join_next().await {
        served += r.unwrap();
    }
    assert!(served > 0, "the short requests never ran");

    // The new cloud serves both nodes.
    for edge in &edges {
        let resp = world
            .get(&second, &edge.node, "/containerLogs/default/web/app", &[])
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            body_bytes(resp.into_body()).await.unwrap(),
            Bytes::from_static(b"hello\n")
        );
    }
    // The edges dropped every kubelet request of the dead cloud, and hold nothing more than
    // before.
    tokio::time::timeout(PATIENCE, kubelet.wait_idle())
        .await
        .expect("the edges let go of the kubelet");
    for (edge, baseline) in edges.iter().zip(baselines) {
        assert_flat(&edge.probe().unwrap(), baseline).await;
    }
}

// ---------------------------------------------------------------------------------------
// Kubelets that answer badly.
// ---------------------------------------------------------------------------------------

/// What a [`RawKubelet`] does after reading a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// Answers bytes that are not HTTP, then holds the connection open.
    Garbage,
    /// Sends part of a response head, then closes the connection.
    ClosesMidHead,
    /// Sends a response head that never ends: one header line of 100 MB.
    HugeHead,
}

/// The size of the head [`Misbehaviour::HugeHead`] tries to send.
const HUGE_HEAD: u64 = 100 << 20;

/// A TCP server that reads one request head per connection and misbehaves.
struct RawKubelet {
    addr: SocketAddr,
    /// Connections open right now.
    open: Arc<AtomicUsize>,
    /// The most bytes written on one connection before it was closed under it.
    written: Arc<AtomicU64>,
    tracker: TaskTracker,
    _stop: DropGuard,
}

impl RawKubelet {
    async fn start(how: Misbehaviour) -> RawKubelet {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (o, w, s, t) = (open.clone(), written.clone(), stop.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let tcp = tokio::select! {
                    () = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                o.fetch_add(1, Ordering::SeqCst);
                let (o, w, s) = (o.clone(), w.clone(), s.clone());
                t.spawn(async move {
                    tokio::select! {
                        () = misbehave(tcp, how, &w) => {}
                        () = s.cancelled() => {}
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        RawKubelet {
            addr,
            open,
            written,
            tracker,
            _stop: stop.drop_guard(),
        }
    }

    /// Waits until every connection the edge opened is closed again.
    async fn wait_closed(&self) {
        let wait = async {
            while self.open.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("the edge closes its kubelet connection");
    }
}

impl Drop for RawKubelet {
    fn drop(&mut self) {
        self.tracker.close();
    }
}

async fn misbehave(mut tcp: TcpStream, how: Misbehaviour, written: &AtomicU64) {
    // Read the request head (bounded); the content does not matter.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match how {
        Misbehaviour::Garbage => {
            let _ = tcp
                .write_all(b"\x00\x01\x02 this is not HTTP \xff\xfe\r\n\r\nnor is this\r\n")
                .await;
            // Hold the connection until the other side gives up on it.
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        Misbehaviour::ClosesMidHead => {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
                .await;
            // Dropping the socket closes it.
        }
        Misbehaviour::HugeHead => {
            let mut sent = 0u64;
            let start = b"HTTP/1.1 200 OK\r\nX-Filler: ";
            if tcp.write_all(start).await.is_err() {
                return;
            }
            sent += start.len() as u64;
            let filler = vec![b'a'; 64 << 10];
            while sent < HUGE_HEAD {
                if tcp.write_all(&filler).await.is_err() {
                    break;
                }
                sent += filler.len() as u64;
                written.fetch_max(sent, Ordering::SeqCst);
            }
            if sent >= HUGE_HEAD {
                let _ = tcp.write_all(b"\r\n\r\n").await;
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        }
    }
}

/// One bad answer to one operation: the client gets a 502 promptly with a reason that
/// contains `reason`, the kubelet connection is closed, and both processes come back to
/// their baselines.
async fn bad_kubelet(how: Misbehaviour, kubeedge: bool, upgrade: bool, reason: &str) {
    let expected = reason;
    let world = World::new().unwrap();
    let cloud = cloud(&world).await;
    let raw = RawKubelet::start(how).await;
    let edge = edge(&world, &cloud, "edge-1", "10.0.0.11", raw.addr, kubeedge).await;
    let (cloud_probe, edge_probe) = (cloud.probe().unwrap(), edge.probe().unwrap());
    let cloud_base = cloud_probe.settled(PATIENCE).await.unwrap();
    let edge_base = edge_probe.settled(PATIENCE).await.unwrap();

    // Watch memory while the request runs: the huge head must not be buffered.
    let watching = CancellationToken::new();
    let peak = {
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut peak = (0u64, 0u64);
            while !watching.is_cancelled() {
                let cloud = tether_e2e::resident_bytes(cloud_probe.pid).unwrap_or(0);
                let edge = tether_e2e::resident_bytes(edge_probe.pid).unwrap_or(0);
                peak = (peak.0.max(cloud), peak.1.max(edge));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };

    let started = Instant::now();
    let (status, body) = if upgrade {
        let io = world.connect_stream(&cloud).await.unwrap();
        let result = tokio::time::timeout(PROMPT, exec_ws(io, "edge-1", CAT, &[]))
            .await
            .unwrap_or_else(|_| panic!("{how:?}: no answer within {PROMPT:?}"));
        let err = result.expect_err("a broken kubelet cannot upgrade");
        let upgrade = err
            .downcast_ref::<UpgradeError>()
            .unwrap_or_else(|| panic!("{how:?}: not an HTTP answer: {err:#}"));
        (upgrade.status, upgrade.body.clone())
    } else {
        let resp = tokio::time::timeout(
            PROMPT,
            world.get(&cloud, "edge-1", "/containerLogs/default/web/app", &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("{how:?}: no answer within {PROMPT:?}"))
        .unwrap();
        let status = resp.status();
        (status, body_bytes(resp.into_body()).await.unwrap())
    };
    let took = started.elapsed();
    let reason = String::from_utf8_lossy(&body).into_owned();
    println!(
        "{how:?} ({}, {}): {status} {reason:?} after {took:?}",
        if kubeedge { "kubeedge" } else { "tether/2" },
        if upgrade { "exec" } else { "logs" },
    );
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{how:?}: {reason}");
    assert!(
        reason.contains(expected),
        "{how:?}: the reason does not say {expected:?}: {reason:?}"
    );

    raw.wait_closed().await;
    watching.cancel();
    let (cloud_peak, edge_peak) = peak.await.unwrap();
    let written = raw.written.load(Ordering::SeqCst);
    if how == Misbehaviour::HugeHead {
        println!(
            "  the kubelet got {:.1} MiB of its head out; peak rss cloud {:.1} MiB edge {:.1} MiB",
            written as f64 / f64::from(1 << 20),
            cloud_peak as f64 / f64::from(1 << 20),
            edge_peak as f64 / f64::from(1 << 20),
        );
        // The kernel's socket buffers on loopback take a few MiB and the stream window
        // 1 MiB; a relay that buffered the head would have taken all 100 MiB.
        assert!(written < 32 << 20, "{written} bytes of the head were taken");
    }
    // Neither process held the head: a few MiB of buffers at most.
    for (name, peak, base) in [
        ("cloudstream", cloud_peak, cloud_base.rss),
        ("edgestream", edge_peak, edge_base.rss),
    ] {
        assert!(
            peak < base + (16 << 20),
            "{name} grew from {base} to {peak} bytes"
        );
    }
    assert_flat(&cloud_probe, cloud_base).await;
    assert_flat(&edge_probe, edge_base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_answering_garbage_is_a_502() {
    let how = Misbehaviour::Garbage;
    // Plain requests: the edge's HTTP client reads the answer and says what is wrong.
    bad_kubelet(how, false, false, "invalid HTTP version").await;
    // Upgrades: the cloud reads the relayed head.
    bad_kubelet(how, false, true, "not HTTP").await;
    bad_kubelet(how, true, true, "not HTTP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_closing_mid_head_is_a_502() {
    let how = Misbehaviour::ClosesMidHead;
    bad_kubelet(how, false, false, "closed before message completed").await;
    bad_kubelet(how, false, true, "closed the connection without a response").await;
    bad_kubelet(how, true, true, "closed the connection without a response").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_sending_a_100_mb_head_is_a_502_and_is_not_buffered() {
    let how = Misbehaviour::HugeHead;
    bad_kubelet(how, false, false, "message head is too large").await;
    bad_kubelet(how, false, true, "response head exceeds").await;
    bad_kubelet(how, true, true, "response head exceeds").await;
}

// ---------------------------------------------------------------------------------------
// A client that never reads.
// ---------------------------------------------------------------------------------------

/// How long the stalled stream is held while memory is watched. The stall is reached within
/// milliseconds (the container writes as fast as loopback goes); holding it this long gives
/// an unbounded relay time to show itself by growing hundreds of MiB.
const STALL_HOLD: Duration = Duration::from_secs(3);
/// Memory a process may gain while one stream is stalled: the stream's window (1 MiB) and
/// relay buffers, plus what the other streams of the test use meanwhile.
const STALL_SLACK: u64 = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_only_its_window_and_blocks_no_one() {
    let world = World::new().unwrap();
    let cloud = cloud(&world).await;
    let kubelet = kubelet().await;
    let edge = edge(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), false).await;
    let (cloud_probe, edge_probe) = (cloud.probe().unwrap(), edge.probe().unwrap());
    // Warm up: one exec and one log request, then the baselines.
    let io = world.connect_stream(&cloud).await.unwrap();
    let out = exec_ws(
        io,
        "edge-1",
        "/exec/default/web/app?command=echo&command=hi&output=1",
        &[],
    )
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    assert_eq!(out.stdout, b"hi\n");
    tokio::time::timeout(PATIENCE, kubelet.wait_idle())
        .await
        .unwrap();
    let cloud_base = cloud_probe.settled(PATIENCE).await.unwrap();
    let edge_base = edge_probe.settled(PATIENCE).await.unwrap();

    // 64 GiB of output, never read.
    let io = world.connect_stream(&cloud).await.unwrap();
    let stalled = exec_ws(
        io,
        "edge-1",
        &format!(
            "/exec/default/web/app?command=yes-bytes&command={}&output=1&error=1",
            64u64 << 30
        ),
        &[],
    )
    .await
    .unwrap();

    let held = Instant::now();
    let mut peaks = (0u64, 0u64);
    let mut served = 0;
    while held.elapsed() < STALL_HOLD {
        // Other streams of the same node keep working meanwhile.
        let resp = tokio::time::timeout(
            PROMPT,
            world.get(&cloud, "edge-1", "/containerLogs/default/web/app", &[]),
        )
        .await
        .expect("a log request is not held up by the stalled exec")
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            body_bytes(resp.into_body()).await.unwrap(),
            Bytes::from_static(b"hello\n")
        );
        let io = world.connect_stream(&cloud).await.unwrap();
        let mut exec = exec_ws(io, "edge-1", CAT, &[]).await.unwrap();
        exec.send_stdin(b"still here\n").await.unwrap();
        exec.close_stdin().await.unwrap();
        let out = tokio::time::timeout(PROMPT, exec.collect())
            .await
            .expect("an exec is not held up by the stalled exec")
            .unwrap();
        assert_eq!(out.stdout, b"still here\n");
        served += 1;
        let (c, e) = (
            tether_e2e::resident_bytes(cloud_probe.pid).unwrap(),
            tether_e2e::resident_bytes(edge_probe.pid).unwrap(),
        );
        peaks = (peaks.0.max(c), peaks.1.max(e));
    }
    println!(
        "stalled exec: {served} rounds of other streams served; peak rss cloud {:.1} MiB (base {:.1}), edge {:.1} MiB (base {:.1})",
        peaks.0 as f64 / f64::from(1 << 20),
        cloud_base.rss as f64 / f64::from(1 << 20),
        peaks.1 as f64 / f64::from(1 << 20),
        edge_base.rss as f64 / f64::from(1 << 20),
    );
    assert!(
        peaks.0 < cloud_base.rss + STALL_SLACK,
        "cloudstream grew by {} bytes",
        peaks.0 - cloud_base.rss
    );
    assert!(
        peaks.1 < edge_base.rss + STALL_SLACK,
        "edgestream grew by {} bytes",
        peaks.1 - edge_base.rss
    );
    let open = cloud_probe.read().await.unwrap();
    assert_eq!(
        open.streams_open, 1,
        "the stalled exec is still open: {open}"
    );

    // The client goes away without a word: everything it held is freed.
    drop(stalled);
    tokio::time::timeout(PATIENCE, kubelet.wait_idle())
        .await
        .expect("the kubelet's exec ends once the client is gone");
    assert_flat(&cloud_probe, cloud_base).await;
    assert_flat(&edge_probe, edge_base).await;
}

/// A stock-dialect edge and a client that never reads: the setup of the two tests below.
struct StockStall {
    world: World,
    cloud: Cloud,
    kubelet: TestKubelet,
    edge: Edge,
    cloud_base: Readings,
    edge_base: Readings,
    stalled: ExecSession,
}

async fn stock_stall() -> StockStall {
    let world = World::new().unwrap();
    let cloud = Cloud::start(
        &world,
        &[
            "--admin-addr",
            "127.0.0.1:0",
            "--dead-after",
            DEAD_AFTER,
            "--stall-limit",
            "1s",
        ],
    )
    .await
    .unwrap();
    let kubelet = kubelet().await;
    let edge = edge(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), true).await;
    assert_eq!(edge.dialect.as_deref(), Some("kubeedge"));
    let io = world.connect_stream(&cloud).await.unwrap();
    let out = exec_ws(
        io,
        "edge-1",
        "/exec/default/web/app?command=echo&command=hi&output=1",
        &[],
    )
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    assert_eq!(out.stdout, b"hi\n");
    tokio::time::timeout(PATIENCE, kubelet.wait_idle())
        .await
        .unwrap();
    let cloud_base = cloud.probe().unwrap().settled(PATIENCE).await.unwrap();
    let edge_base = edge.probe().unwrap().settled(PATIENCE).await.unwrap();

    // 64 GiB of output, never read.
    let io = world.connect_stream(&cloud).await.unwrap();
    let stalled = exec_ws(
        io,
        "edge-1",
        &format!(
            "/exec/default/web/app?command=yes-bytes&command={}&output=1&error=1",
            64u64 << 30
        ),
        &[],
    )
    .await
    .unwrap();
    StockStall {
        world,
        cloud,
        kubelet,
        edge,
        cloud_base,
        edge_base,
        stalled,
    }
}

/// With a stock-dialect edge there are no windows: a stream whose client does not read
/// fills its buffer, pauses the session for at most the stall limit, and is then closed on
/// its own. The edge lets go of the kubelet, the node serves everyone again, memory stays
/// bounded, and the client learns the stream was cut when it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_on_a_stock_edge_is_cut_after_the_stall_limit() {
    let StockStall {
        world,
        cloud,
        kubelet,
        edge,
        cloud_base,
        edge_base,
        mut stalled,
    } = stock_stall().await;
    let (cloud_probe, edge_probe) = (cloud.probe().unwrap(), edge.probe().unwrap());
    // The stall limit cuts the stream: the edge drops its kubelet connection.
    tokio::time::timeout(PATIENCE, kubelet.wait_idle())
        .await
        .expect("the stalled stream is cut and the kubelet's exec ends");
    let peaks = (
        tether_e2e::resident_bytes(cloud_probe.pid).unwrap(),
        tether_e2e::resident_bytes(edge_probe.pid).unwrap(),
    );
    assert!(
        peaks.0 < cloud_base.rss + STALL_SLACK,
        "cloudstream grew to {}",
        peaks.0
    );
    assert!(
        peaks.1 < edge_base.rss + STALL_SLACK,
        "edgestream grew to {}",
        peaks.1
    );
    // The node serves other streams again.
    let resp = tokio::time::timeout(
        PROMPT,
        world.get(&cloud, "edge-1", "/containerLogs/default/web/app", &[]),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        body_bytes(resp.into_body()).await.unwrap(),
        Bytes::from_static(b"hello\n")
    );
    // The client reads what was buffered for it, then learns the stream was cut.
    let ending = tokio::time::timeout(PATIENCE, async {
        loop {
            match stalled.next().await {
                Ok(Some(Event::Stdout(_))) => {}
                Ok(Some(other)) => return format!("unexpected {other:?}"),
                Ok(None) => return "a clean close".to_owned(),
                Err(_) => return String::new(),
            }
        }
    })
    .await
    .expect("the cut stream ends");
    assert!(ending.is_empty(), "the client of a cut stream saw {ending}");
    drop(stalled);
    assert_flat(&cloud_probe, cloud_base).await;
    assert_flat(&edge_probe, edge_base).await;
}

/// The same stall, but the client stays silent: the cloud must let go of the stream it cut
/// (close the client's connection, free the stream's buffer, count it closed) rather than
/// hold it for as long as the client neither reads nor leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_the_stall_limit_is_let_go_while_its_client_is_silent() {
    let s = stock_stall().await;
    let cloud_probe = s.cloud.probe().unwrap();
    tokio::time::timeout(PATIENCE, s.kubelet.wait_idle())
        .await
        .expect("the stalled stream is cut and the kubelet's exec ends");
    cloud_probe
        .wait_for("the cut stream let go", PATIENCE, |r| r.streams_open == 0)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let cloud_base = s.cloud_base;
    assert_flat(&cloud_probe, cloud_base).await;
    drop(s.stalled);
}
