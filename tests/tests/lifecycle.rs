//! Operating the binaries: admin endpoints, draining on SIGTERM, certificate rotation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use test_support::client::{body_bytes, exec_ws, http_get, tls_connect};
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cloud, Edge, PATIENCE, World};
use tokio::net::TcpStream;

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

async fn admin_get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let io = TcpStream::connect(addr).await.unwrap();
    let resp = http_get(io, &addr.to_string(), path, &[]).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = body_bytes(resp.into_body()).await.unwrap();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_as_documented() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &["--admin-addr", "127.0.0.1:0"])
        .await
        .unwrap();
    let cloud_admin = cloud.admin.expect("cloudstream printed its admin address");
    let kubelet = kubelet().await;
    let edge = Edge::start(
        &world,
        &cloud,
        "edge-1",
        "10.0.0.11",
        kubelet.addr(),
        &["--admin-addr", "127.0.0.1:0"],
    )
    .await
    .unwrap();
    let edge_admin = edge.admin.expect("edgestream printed its admin address");

    for addr in [cloud_admin, edge_admin] {
        assert_eq!(admin_get(addr, "/healthz").await.0, StatusCode::OK);
        let (status, _, body) = admin_get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
        assert_eq!(admin_get(addr, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    body_bytes(resp.into_body()).await.unwrap();
    let (status, content_type, text) = admin_get(cloud_admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.contains("tether_sessions 1"), "{text}");
    assert!(
        text.contains(r#"tether_streams_total{operation="logs"} 1"#),
        "{text}"
    );
    assert!(text.contains("tether_stream_open_seconds_count"), "{text}");
    assert!(
        text.contains(r#"tether_handshakes_refused_total{reason="identity"} 0"#),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    let (_, _, text) = admin_get(edge_admin, "/metrics").await;
    assert!(text.contains("tether_tunnel_up 1"), "{text}");

    // And with curl, as docs/operations.md shows it.
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        curl(&["-s", &format!("http://{cloud_admin}/healthz")]),
        "ok\n"
    );
    let code = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{cloud_admin}/readyz"),
    ]);
    assert_eq!(code, "200");
    let metrics = curl(&["-s", &format!("http://{cloud_admin}/metrics")]);
    assert!(
        metrics.lines().any(|l| l == "tether_sessions 1"),
        "{metrics}"
    );
    let head = curl(&["-s", "-I", &format!("http://{edge_admin}/readyz")]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_open_exec_then_exits_cleanly() {
    let world = World::new().unwrap();
    let mut cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let _edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();
    let io = world.connect_stream(&cloud).await.unwrap();
    let mut exec = exec_ws(
        io,
        "edge-1",
        "/exec/default/web/app?command=cat&input=1&output=1&error=1",
        &[],
    )
    .await
    .unwrap();
    exec.send_stdin(b"before\n").await.unwrap();

    cloud.process.terminate().unwrap();
    // New clients are turned away once the drain has begun...
    let refused = async {
        loop {
            let attempt = async {
                let io = tls_connect(cloud.stream, world.apiserver.clone(), "127.0.0.1").await?;
                http_get(io, "edge-1", "/containerLogs/default/web/app", &[]).await
            };
            if attempt.await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, refused).await.unwrap();
    // ...while the open exec carries on to its natural end.
    exec.send_stdin(b"after\n").await.unwrap();
    exec.close_stdin().await.unwrap();
    let out = tokio::time::timeout(PATIENCE, exec.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stdout, b"before\nafter\n");
    assert_eq!(out.exit_code(), Some(0));
    let status = tokio::time::timeout(PATIENCE, cloud.process.child.wait())
        .await
        .expect("cloudstream exits once the exec is done")
        .unwrap();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        cloud.process.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_edge_drains_too() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let mut edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();
    let io = world.connect_stream(&cloud).await.unwrap();
    let mut exec = exec_ws(
        io,
        "edge-1",
        "/exec/default/web/app?command=cat&input=1&output=1&error=1",
        &[],
    )
    .await
    .unwrap();
    exec.send_stdin(b"one\n").await.unwrap();
    edge.process.terminate().unwrap();
    exec.send_stdin(b"two\n").await.unwrap();
    exec.close_stdin().await.unwrap();
    let out = tokio::time::timeout(PATIENCE, exec.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stdout, b"one\ntwo\n");
    let status = tokio::time::timeout(PATIENCE, edge.process.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{}", edge.process.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificates_serve_new_handshakes_while_old_streams_go_on() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = kubelet().await;
    let _edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
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
    let mut follow = resp.into_body();
    let first = follow.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, Bytes::from_static(b"hello\n"));

    // Rotate the server certificate in place (both listeners use these files).
    let old = std::fs::read(world.path("server.crt")).unwrap();
    let fresh = world.pki.server(&["127.0.0.1", "localhost"]).unwrap();
    // Write the key first and the certificate last, as a careful operator would.
    std::fs::write(world.path("server.key.new"), &fresh.key_pem).unwrap();
    std::fs::rename(world.path("server.key.new"), world.path("server.key")).unwrap();
    std::fs::write(world.path("server.crt.new"), &fresh.cert_pem).unwrap();
    std::fs::rename(world.path("server.crt.new"), world.path("server.crt")).unwrap();
    assert_ne!(old, fresh.cert_pem.as_bytes());

    // A new handshake presents the new certificate (the files are checked at most once a
    // second, so poll the observable result).
    let presented = async {
        loop {
            let tls = tls_connect(cloud.stream, world.apiserver.clone(), "127.0.0.1")
                .await
                .unwrap();
            let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            if der == fresh.chain[0] {
                return tls;
            }
            tokio::task::yield_now().await;
        }
    };
    let tls = tokio::time::timeout(PATIENCE, presented).await.unwrap();
    let resp = http_get(tls, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // The stream opened before the rotation still flows.
    kubelet
        .append_log("default", "web", "app", Bytes::from_static(b"still here\n"))
        .unwrap();
    let next = tokio::time::timeout(PATIENCE, follow.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(next, Bytes::from_static(b"still here\n"));
}

/// An edge that goes silent without closing anything (frozen process, dead NAT path) is
/// declared dead after the configured deadline: its streams fail and its node is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_edge_is_declared_dead_and_its_streams_fail() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &["--ping-interval", "200ms", "--dead-after", "2s"])
        .await
        .unwrap();
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
    let mut follow = resp.into_body();
    follow.frame().await.unwrap().unwrap();

    // Freeze the edge: its socket stays open, but nothing answers.
    let pid = nix::unistd::Pid::from_raw(edge.process.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let ended = tokio::time::timeout(PATIENCE, tether_e2e::body_was_cut(&mut follow))
        .await
        .expect("the stream of a dead edge must fail");
    assert!(ended, "a stream cut by a dead edge must not look complete");
    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
}
