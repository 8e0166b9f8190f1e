//! Outages, with the real binaries: a blackholed link, a paused link, and a tunnel port held by
//! thousands of idle connections.
//!
//! The links are `linkem` proxies between `edgestream` and `cloudstream`; the flood comes from
//! 127.0.0.2 while the edge dials from 127.0.0.1. Outcomes are asserted, timings never (beyond
//! generous deadlines that only a broken build reaches).
//!
//! ```text
//! cargo build -p cloudstream -p edgestream && cargo test -p tether-e2e --test outages
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use linkem::{LinkConfig, Preset, mbit_per_s};
use test_support::client::{body_bytes, http_get};
use test_support::content::GeneratedVerifier;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cloud, Edge, PATIENCE, Process, World, body_was_cut};
use tokio::net::{TcpSocket, TcpStream};

/// Short liveness settings for both binaries, so that a dead link is noticed in about a second.
const FAST_PINGS: [&str; 4] = ["--ping-interval", "200ms", "--dead-after", "1s"];

async fn kubelet() -> TestKubelet {
    TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(&b"hello\n"[..]),
        )
        .container("default", "big", "app", ContainerSpec::generated(BIG_LOG))
        .start()
        .await
        .unwrap()
}

/// Size of the log streamed across a pause.
const BIG_LOG: u64 = 6 << 20;

/// `GET /metrics` of an admin port.
async fn metrics(admin: SocketAddr) -> String {
    let io = TcpStream::connect(admin).await.unwrap();
    let resp = http_get(io, &admin.to_string(), "/metrics", &[])
        .await
        .unwrap();
    String::from_utf8(body_bytes(resp.into_body()).await.unwrap().to_vec()).unwrap()
}

/// The value of the series `series` (name and labels, as rendered) in `text`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Polls `admin`'s metrics until `done` holds for `series`; fails after [`PATIENCE`].
async fn wait_metric(admin: SocketAddr, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = metrics(admin).await;
        if let Some(v) = metric(&text, series)
            && done(v)
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached the expected value:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `edgestream` for `edge-1` dialling `server` (a link), with `args`, and waits until
/// it is connected. Its handshake timeout is 2 s rather than the file's 30 s, so that a dial
/// begun while the link was down is given up soon after the link is back.
async fn edge_via(world: &World, server: SocketAddr, kubelet: SocketAddr, args: &[&str]) -> Edge {
    let config = world
        .edgecore("edge-1", "10.0.0.11", server, kubelet, "edge-1")
        .unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("handshakeTimeout: 30", "handshakeTimeout: 2");
    std::fs::write(&config, text).unwrap();
    let config = config.to_string_lossy().into_owned();
    let mut all = vec!["--config", config.as_str()];
    all.extend_from_slice(args);
    let mut process =
        Process::spawn("edgestream", &all, world.path("edgestream-edge-1.log")).unwrap();
    let line = process.wait_line("edgestream admin=").await.unwrap();
    let admin = line
        .trim()
        .strip_prefix("edgestream admin=")
        .and_then(|a| a.parse().ok());
    let connected = process.wait_line("edgestream connected").await.unwrap();
    Edge {
        process,
        node: "edge-1".into(),
        admin,
        dialect: connected
            .split_whitespace()
            .find_map(|w| w.strip_prefix("dialect="))
            .map(str::to_owned),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_fails_open_streams_and_the_edge_comes_back() {
    let world = World::new().unwrap();
    let mut cloud_args = vec!["--admin-addr", "127.0.0.1:0"];
    cloud_args.extend_from_slice(&FAST_PINGS);
    let cloud = Cloud::start(&world, &cloud_args).await.unwrap();
    let cloud_admin = cloud.admin.unwrap();
    let kubelet = kubelet().await;
    let link = linkem::Link::start(cloud.tunnel, Preset::Mbit20Rtt100.into()).unwrap();
    let mut edge_args = vec![
        "--admin-addr",
        "127.0.0.1:0",
        "--backoff-initial",
        "100ms",
        "--backoff-max",
        "500ms",
    ];
    edge_args.extend_from_slice(&FAST_PINGS);
    let mut edge = edge_via(&world, link.addr(), kubelet.addr(), &edge_args).await;
    wait_metric(cloud_admin, "tether_sessions", |v| v == 1.0).await;

    // A `kubectl logs -f` in progress.
    let resp = world
        .get(
            &cloud,
            "edge-1",
            "/containerLogs/default/web/app?follow=true",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap().as_ref(), b"hello\n");

    link.blackhole();
    // The follower's response is cut (an error, not a clean end that would look complete).
    let cut = tokio::time::timeout(PATIENCE, body_was_cut(&mut body))
        .await
        .expect("the open stream hung on a dead link");
    assert!(cut, "the open stream ended as if complete");
    // Both sides declare the session dead, each from its own deadline.
    wait_metric(cloud_admin, "tether_sessions", |v| v == 0.0).await;
    edge.process
        .wait_line("edgestream disconnected")
        .await
        .unwrap();
    let cloud_log = std::fs::read_to_string(world.path("cloudstream.log")).unwrap();
    assert!(
        cloud_log.contains("dead-peer deadline"),
        "the cloud did not say why the session ended:\n{cloud_log}"
    );
    // A new request meanwhile is answered at once: no session.
    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    link.restore();
    edge.process
        .wait_line("edgestream connected")
        .await
        .unwrap();
    wait_metric(cloud_admin, "tether_sessions", |v| v == 1.0).await;
    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        body_bytes(resp.into_body()).await.unwrap().as_ref(),
        b"hello\n"
    );
    let edge_admin = edge.admin.unwrap();
    assert!(metric(&metrics(edge_admin).await, "tether_reconnects_total").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shorter_than_the_deadline_loses_nothing() {
    let world = World::new().unwrap();
    // Pings every 200 ms, dead after 5 s: a 1 s pause is well inside the deadline.
    let liveness = ["--ping-interval", "200ms", "--dead-after", "5s"];
    let mut cloud_args = vec!["--admin-addr", "127.0.0.1:0"];
    cloud_args.extend_from_slice(&liveness);
    let cloud = Cloud::start(&world, &cloud_args).await.unwrap();
    let cloud_admin = cloud.admin.unwrap();
    let kubelet = kubelet().await;
    let link = linkem::Link::start(
        cloud.tunnel,
        LinkConfig::symmetric(mbit_per_s(50), Duration::from_millis(40)),
    )
    .unwrap();
    let mut edge_args = vec!["--admin-addr", "127.0.0.1:0"];
    edge_args.extend_from_slice(&liveness);
    let edge = edge_via(&world, link.addr(), kubelet.addr(), &edge_args).await;

    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/big/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut verifier = GeneratedVerifier::new();
    let mut paused = false;
    let read_all = async {
        while let Some(frame) = body.frame().await {
            let data = frame.expect("the stream broke across the pause");
            if let Some(chunk) = data.data_ref() {
                verifier.update(chunk);
            }
            if !paused && verifier.len() >= 1 << 20 {
                // A megabyte in: stall the link mid-stream, for a second (the outage itself,
                // not a wait for something), and check that nothing got through meanwhile.
                paused = true;
                link.pause();
                let before = link.stats();
                tokio::time::sleep(Duration::from_secs(1)).await;
                let during = link.stats();
                link.resume();
                // At most the write already under way when the pause began completes.
                let crossed = (during.down.forwarded - before.down.forwarded)
                    + (during.up.forwarded - before.up.forwarded);
                assert!(
                    crossed <= 64 * 1024,
                    "{crossed} bytes crossed a paused link"
                );
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all)
        .await
        .expect("the stream did not finish after the pause");
    assert!(paused, "the log ended before the pause");
    verifier.finish(BIG_LOG).unwrap();
    // The same session carried it all: no reconnect, no session lost.
    assert_eq!(
        metric(
            &metrics(edge.admin.unwrap()).await,
            "tether_reconnects_total"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&metrics(cloud_admin).await, "tether_sessions"),
        Some(1.0)
    );
}

/// Idle connections the flood opens.
const FLOOD: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_connects_while_10000_idle_connections_hold_the_tunnel_port() {
    // One descriptor per flood connection here (children inherit the raised limit).
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
            .unwrap();
    }
    assert!(
        hard as usize > FLOOD + 1000,
        "RLIMIT_NOFILE {hard} is too low for {FLOOD} connections"
    );
    let world = World::new().unwrap();
    // A deadline longer than the test, so the flood's admitted connections are still held
    // while the edge connects: it must get in beside them, not after them.
    let cloud = Cloud::start(
        &world,
        &[
            "--admin-addr",
            "127.0.0.1:0",
            "--tunnel-handshake-timeout",
            "300s",
        ],
    )
    .await
    .unwrap();
    let admin = cloud.admin.unwrap();
    let kubelet = kubelet().await;

    // The flood: connections from 127.0.0.2 that never send a byte.
    let opening = Arc::new(tokio::sync::Semaphore::new(500));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let opening = opening.clone();
        let tunnel = cloud.tunnel;
        tasks.spawn(async move {
            let _permit = opening.acquire_owned().await.unwrap();
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            socket.connect(tunnel).await
        });
    }
    let mut flood = Vec::with_capacity(FLOOD);
    while let Some(tcp) = tasks.join_next().await {
        // A connect the cloud had already reset by the time it returned is one of the refused.
        match tcp.unwrap() {
            Ok(tcp) => flood.push(tcp),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    // The cloud admits 64 from that address and resets the others as it accepts them. The
    // flood outruns the accept loop, so the edge may find the accept queue still full and its
    // first SYN dropped; it connects all the same.
    let limit = tunnel_session::server::DEFAULT_MAX_HANDSHAKES_PER_SOURCE;
    wait_metric(admin, "tether_handshakes", |v| v as usize == limit).await;
    wait_metric(
        admin,
        r#"tether_handshakes_refused_total{reason="source_limit"}"#,
        |v| v >= 1.0,
    )
    .await;

    let edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();
    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        body_bytes(resp.into_body()).await.unwrap().as_ref(),
        b"hello\n"
    );
    // The flood's 64 are still waiting for their TLS hello: the edge did not need them gone.
    let text = metrics(admin).await;
    assert_eq!(metric(&text, "tether_handshakes"), Some(limit as f64));
    assert_eq!(
        metric(
            &text,
            r#"tether_handshakes_refused_total{reason="timeout"}"#
        ),
        Some(0.0)
    );
    assert_eq!(metric(&text, "tether_sessions"), Some(1.0));
    // No flood connection got past the limit; most were reset. Not all need be seen: with
    // the accept queue full, the kernel answers with SYN cookies and drops the final ACKs it
    // has no room for, leaving connections only the flooder believes in.
    let refused = metric(
        &text,
        r#"tether_handshakes_refused_total{reason="source_limit"}"#,
    )
    .unwrap() as usize;
    assert!(
        (FLOOD / 2..=FLOOD - limit).contains(&refused),
        "{refused} of {FLOOD} refused"
    );
    drop(flood);
    drop(edge);
}
