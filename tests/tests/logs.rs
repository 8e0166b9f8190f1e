//! Logs end to end through the real `cloudstream` and `edgestream` binaries, started from
//! KubeEdge config files, over real TLS and websockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use test_support::client::body_bytes;
use test_support::content::{GeneratedVerifier, generated_log};
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cloud, Edge, PATIENCE, World};

const LOGS: &[u8] = b"first line\nsecond line\n";

async fn kubelet() -> TestKubelet {
    TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(Bytes::from_static(LOGS)),
        )
        .container("default", "big", "app", ContainerSpec::generated(64 << 20))
        .container("default", "big2", "app", ContainerSpec::generated(64 << 20))
        .container("default", "mid", "app", ContainerSpec::generated(512 << 10))
        .container("default", "stuck", "app", ContainerSpec::stalled())
        .container(
            "default",
            "binary",
            "app",
            ContainerSpec::with_logs(Bytes::from_static(&[0xff, 0xfe, 0x00, 0xc3, 0x28, b'\n'])),
        )
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_reachable_by_name_and_by_ip_and_kubelet_statuses_pass_through() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let _edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();
    let _edge6 = Edge::start(&world, &cloud, "edge-6", "fd00::16", kubelet.addr(), &[])
        .await
        .unwrap();

    for host in [
        "edge-1:10250",
        "edge-1",
        "10.0.0.11:10250",
        "edge-6",
        "[fd00::16]:10250",
    ] {
        let resp = world
            .get(&cloud, host, "/containerLogs/default/web/app", &[])
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
        assert_eq!(body_bytes(resp.into_body()).await.unwrap(), LOGS, "{host}");
    }
    // Query parameters reach the kubelet unchanged.
    let resp = world
        .get(
            &cloud,
            "edge-1",
            "/containerLogs/default/web/app?tailLines=1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        body_bytes(resp.into_body()).await.unwrap(),
        &b"second line\n"[..]
    );
    assert!(
        kubelet
            .requests()
            .iter()
            .any(|r| r.path_and_query.contains("tailLines=1"))
    );

    // The kubelet's 404 is the client's 404, with its text.
    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/nosuch/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = body_bytes(resp.into_body()).await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("nosuch"),
        "{body:?}"
    );

    // A node with no session: 503 at once, naming the node.
    let resp = world
        .get(
            &cloud,
            "edge-404:10250",
            "/containerLogs/default/web/app",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = body_bytes(resp.into_body()).await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("edge-404"),
        "{body:?}"
    );

    // Paths the kubelet API does not have are 404s of ours; nothing reaches the kubelet.
    let before = kubelet.requests().len();
    let resp = world.get(&cloud, "edge-1", "/configz", &[]).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(kubelet.requests().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_line_arrives_while_the_stream_stays_open() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();
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
    let mut seen = Vec::new();
    while seen.len() < LOGS.len() {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(seen, LOGS);
    kubelet
        .append_log("default", "web", "app", Bytes::from_static(b"third line\n"))
        .unwrap();
    let mut more = Vec::new();
    while more.len() < b"third line\n".len() {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        more.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(more, b"third line\n");
    // Closing the client frees the kubelet's follow request.
    drop(body);
    if tokio::time::timeout(PATIENCE, kubelet.wait_idle())
        .await
        .is_err()
    {
        panic!(
            "the kubelet still serves the follow request\n{}\n{}",
            cloud.process.logs(),
            edge.process.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_dropping_mid_stream_ends_the_response_promptly() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let mut edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();
    let resp = world
        .get(
            &cloud,
            "edge-1",
            "/containerLogs/default/web/app?follow=true",
            &[],
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap();
    assert!(first.is_some());
    // The edge dies without a goodbye.
    edge.process.child.kill().await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, tether_e2e::body_was_cut(&mut body))
        .await
        .expect("the response must end promptly when the tunnel drops");
    assert!(ended, "a cut stream must not look like a clean end");
    // And the node is gone from the registry: 503, not a hang.
    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_log_streams_are_byte_exact() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let _edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();
    let expected = generated_log(512 << 10);
    let world = std::sync::Arc::new(world);
    let cloud = std::sync::Arc::new(cloud);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (world, cloud, expected) = (world.clone(), cloud.clone(), expected.clone());
        tasks.spawn(async move {
            let resp = world
                .get(&cloud, "edge-1", "/containerLogs/default/mid/app", &[])
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = body_bytes(resp.into_body()).await.unwrap();
            assert!(body == expected, "stream differs ({} bytes)", body.len());
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_utf8_log_crosses_a_kubeedge_dialect_tunnel_in_text_frames() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let edge = Edge::start(
        &world,
        &cloud,
        "edge-1",
        "10.0.0.11",
        kubelet.addr(),
        &["--kubeedge-only"],
    )
    .await
    .unwrap();
    let _ = edge;
    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/binary/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = body_bytes(resp.into_body()).await.unwrap();
    assert_eq!(&body[..], &[0xff, 0xfe, 0x00, 0xc3, 0x28, b'\n']);
}

/// Reads a generated 64 MiB log and checks every byte.
async fn read_verified(mut body: hyper::body::Incoming) -> anyhow::Result<u64> {
    let mut verifier = GeneratedVerifier::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            verifier.update(&data);
        }
    }
    verifier.finish(64 << 20)?;
    Ok(verifier.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tether2_a_paused_reader_stalls_only_its_own_stream() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();
    let _ = edge;
    let paused = world
        .get(&cloud, "edge-1", "/containerLogs/default/big2/app", &[])
        .await
        .unwrap();
    let mut paused_body = paused.into_body();
    // Take one frame, then stop reading the paused stream altogether.
    let first = paused_body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();

    let started = std::time::Instant::now();
    let other = world
        .get(&cloud, "edge-1", "/containerLogs/default/big/app", &[])
        .await
        .unwrap();
    let n = read_verified(other.into_body()).await.unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "other stream: {n} bytes in {elapsed:?} ({:.0} MB/s) while the paused one was not read",
        n as f64 / elapsed.as_secs_f64() / 1e6
    );

    // The paused stream resumes and completes byte-exact.
    let mut verifier = GeneratedVerifier::new();
    verifier.update(&first);
    while let Some(frame) = paused_body.frame().await {
        verifier.update(&frame.unwrap().into_data().unwrap());
    }
    verifier.finish(64 << 20).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeedge_dialect_the_stall_limit_frees_the_other_stream() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &["--stall-limit", "2", "--stream-window", "262144"])
        .await
        .unwrap();
    let kubelet = kubelet().await;
    let edge = Edge::start(
        &world,
        &cloud,
        "edge-1",
        "10.0.0.11",
        kubelet.addr(),
        &["--kubeedge-only"],
    )
    .await
    .unwrap();
    let _ = edge;
    let stuck = world
        .get(&cloud, "edge-1", "/containerLogs/default/big2/app", &[])
        .await
        .unwrap();
    let mut stuck_body = stuck.into_body();
    let _first = stuck_body.frame().await.unwrap().unwrap();

    // The other stream completes: at first the stuck reader pauses the whole (windowless)
    // tunnel, then the stall limit closes the stuck stream and the rest flows.
    let other = world
        .get(&cloud, "edge-1", "/containerLogs/default/big/app", &[])
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(60), read_verified(other.into_body()))
        .await
        .expect("the other stream must complete once the stuck one is closed")
        .unwrap();
    assert_eq!(n, 64 << 20);
    // The stuck stream was cut, and its client can tell.
    let cut = tether_e2e::body_was_cut(&mut stuck_body);
    assert!(tokio::time::timeout(PATIENCE, cut).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_that_stalls_forever_holds_no_other_stream() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let _edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();
    let world = std::sync::Arc::new(world);
    let cloud = std::sync::Arc::new(cloud);
    let (w, c) = (world.clone(), cloud.clone());
    let stalled = tokio::spawn(async move {
        w.get(
            &c,
            "edge-1",
            "/containerLogs/default/stuck/app?follow=true",
            &[],
        )
        .await
    });
    // Make sure the stalled request is at the kubelet before the others start.
    tokio::time::timeout(PATIENCE, kubelet.wait_active_streams(|a| a.logs >= 1))
        .await
        .unwrap();
    for _ in 0..5 {
        let resp = world
            .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
            .await
            .unwrap();
        assert_eq!(body_bytes(resp.into_body()).await.unwrap(), LOGS);
    }
    assert!(
        !stalled.is_finished(),
        "the stalled request is still waiting"
    );
    stalled.abort();
}
