//! Every kubelet operation through the real binaries, each checked against a direct request
//! to the same test kubelet: exec, attach, port-forward, stats, metrics, unknown upgrades.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use test_support::client::{
    ExecOutput, ExecSession, PortForwardSession, UpgradeError, body_bytes, echo_server, exec_ws,
    http_get, http_request, port_forward_ws, raw_upgrade,
};
use test_support::content::generated_log;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cloud, Edge, PATIENCE, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIG: usize = 64 << 20;

struct Setup {
    world: World,
    cloud: Cloud,
    kubelet: TestKubelet,
    _edge: Edge,
}

async fn setup(edge_args: &[&str]) -> Setup {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(&b"hello\n"[..]),
        )
        .container("default", "mid", "app", ContainerSpec::generated(256 << 10))
        .long_metrics_line(100 << 10)
        .start()
        .await
        .unwrap();
    let edge = Edge::start(
        &world,
        &cloud,
        "edge-1",
        "10.0.0.11",
        kubelet.addr(),
        edge_args,
    )
    .await
    .unwrap();
    Setup {
        world,
        cloud,
        kubelet,
        _edge: edge,
    }
}

impl Setup {
    async fn exec_tunnel(&self, path: &str) -> anyhow::Result<ExecSession> {
        let io = self.world.connect_stream(&self.cloud).await?;
        exec_ws(io, "edge-1", path, &[]).await
    }

    async fn exec_direct(&self, path: &str) -> anyhow::Result<ExecSession> {
        let io = TcpStream::connect(self.kubelet.addr()).await?;
        exec_ws(io, "127.0.0.1", path, &[]).await
    }

    async fn port_forward_tunnel(&self, path: &str) -> anyhow::Result<PortForwardSession> {
        let io = self.world.connect_stream(&self.cloud).await?;
        port_forward_ws(io, "edge-1", path).await
    }

    async fn get_direct(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> http::Response<hyper::body::Incoming> {
        let io = TcpStream::connect(self.kubelet.addr()).await.unwrap();
        http_get(io, "127.0.0.1", path, headers).await.unwrap()
    }
}

async fn run(session: ExecSession, stdin: &[u8]) -> ExecOutput {
    let (mut writer, reader) = session.split();
    let stdin = stdin.to_vec();
    // A command that needs no stdin may finish and close the websocket first, so sending
    // can fail; what the command printed is what the test checks.
    let feed = tokio::spawn(async move {
        if !stdin.is_empty() {
            let _ = writer.send_stdin(&stdin).await;
        }
        let _ = writer.close_stdin().await;
        writer
    });
    let out = tokio::time::timeout(PATIENCE * 3, reader.collect())
        .await
        .unwrap()
        .unwrap();
    let _writer = feed.await.unwrap();
    out
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_matches_a_direct_exec() {
    let s = setup(&[]).await;
    let cat = "/exec/default/web/app?command=cat&input=1&output=1&error=1";
    for session in [
        s.exec_tunnel(cat).await.unwrap(),
        s.exec_direct(cat).await.unwrap(),
    ] {
        let out = run(session, b"stdin to stdout\n").await;
        assert_eq!(out.stdout, b"stdin to stdout\n");
        assert_eq!(out.exit_code(), Some(0));
    }

    // stderr stays apart from stdout.
    let path = "/exec/default/web/app?command=stderr&command=oops&output=1&error=1";
    let out = run(s.exec_tunnel(path).await.unwrap(), b"").await;
    assert_eq!(out.stderr, b"oops\n");
    assert!(out.stdout.is_empty());

    // A non-zero exit status arrives on the error channel.
    let path = "/exec/default/web/app?command=exit&command=3&output=1&error=1";
    let tunnel = run(s.exec_tunnel(path).await.unwrap(), b"").await;
    let direct = run(s.exec_direct(path).await.unwrap(), b"").await;
    assert_eq!(tunnel.exit_code(), Some(3));
    assert_eq!(tunnel.status, direct.status);

    // A resize reaches the process.
    let path = "/exec/default/web/app?command=tty-size&input=1&output=1&tty=1";
    let mut session = s.exec_tunnel(path).await.unwrap();
    session.resize(132, 43).await.unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"\n") {
        match tokio::time::timeout(PATIENCE, session.next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(test_support::client::Event::Stdout(b)) => seen.extend_from_slice(&b),
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(seen, b"132x43\n");

    // The {uid} path form and an unknown pod (the kubelet's 404 passes through).
    let path = "/exec/default/web/uid-1/app?command=echo&command=hi&output=1";
    assert_eq!(
        run(s.exec_tunnel(path).await.unwrap(), b"").await.stdout,
        b"hi\n"
    );
    let err = s
        .exec_tunnel("/exec/default/nosuch/app?command=cat&output=1")
        .await
        .err()
        .unwrap();
    let upgrade = err.downcast_ref::<UpgradeError>().unwrap();
    assert_eq!(upgrade.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_carries_64_mib_each_way() {
    let s = setup(&[]).await;
    // Upload: what kubectl cp into a container does.
    let data: Vec<u8> = generated_log(BIG as u64).to_vec();
    let path = "/exec/default/web/app?command=sha256sum&input=1&output=1&error=1";
    let out = run(s.exec_tunnel(path).await.unwrap(), &data).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}  {}\n", sha(&data), data.len())
    );
    // Download: what kubectl cp out of a container does.
    let path = format!("/exec/default/web/app?command=yes-bytes&command={BIG}&output=1&error=1");
    let tunnel = run(s.exec_tunnel(&path).await.unwrap(), b"").await;
    let direct = run(s.exec_direct(&path).await.unwrap(), b"").await;
    assert_eq!(tunnel.stdout.len(), BIG);
    assert_eq!(sha(&tunnel.stdout), sha(&direct.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_works_like_exec() {
    let s = setup(&[]).await;
    let path = "/attach/default/web/app?input=1&output=1&error=1";
    let out = run(s.exec_tunnel(path).await.unwrap(), b"attached\n").await;
    let direct = run(s.exec_direct(path).await.unwrap(), b"attached\n").await;
    assert_eq!(out.stdout, b"attached\n");
    assert_eq!(out.stdout, direct.stdout);
    assert_eq!(out.exit_code(), direct.exit_code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_carries_64_mib_both_ways() {
    let s = setup(&[]).await;
    let (echo_addr, _echo) = echo_server().await.unwrap();
    let path = format!("/portForward/default/web?port={}", echo_addr.port());
    let session = s.port_forward_tunnel(&path).await.unwrap();
    let (mut writer, mut reader) = session.split();
    let data = generated_log(BIG as u64);
    let expected = sha(&data);
    let send = tokio::spawn(async move {
        for chunk in data.chunks(256 << 10) {
            writer.write(chunk).await.unwrap();
        }
        writer
    });
    let mut hasher = Sha256::new();
    let mut n = 0usize;
    while n < BIG {
        let chunk = tokio::time::timeout(PATIENCE, reader.read())
            .await
            .unwrap()
            .unwrap()
            .expect("the echo ended early");
        n += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(n, BIG);
    assert_eq!(format!("{:x}", hasher.finalize()), expected);
    let _ = send.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_are_identical_to_a_direct_request() {
    let s = setup(&[]).await;
    for (path, headers) in [
        ("/metrics", &[][..]),
        ("/metrics/cadvisor", &[("accept-encoding", "gzip")][..]),
        ("/metrics/resource", &[][..]),
        ("/metrics/probes", &[("accept-encoding", "gzip")][..]),
        ("/stats/summary", &[][..]),
        ("/stats/summary?only_cpu_and_memory=true", &[][..]),
    ] {
        let tunnel = s
            .world
            .get(&s.cloud, "edge-1", path, headers)
            .await
            .unwrap();
        let direct = s.get_direct(path, headers).await;
        assert_eq!(tunnel.status(), direct.status(), "{path}");
        for name in ["content-type", "content-encoding", "content-length"] {
            assert_eq!(
                tunnel.headers().get(name),
                direct.headers().get(name),
                "{path}: {name}"
            );
        }
        let (t, d) = (
            body_bytes(tunnel.into_body()).await.unwrap(),
            body_bytes(direct.into_body()).await.unwrap(),
        );
        assert!(
            t == d,
            "{path}: bodies differ ({} vs {} bytes)",
            t.len(),
            d.len()
        );
    }
    // POST /stats/summary with a body, as metrics-server may send it.
    let post = || {
        Request::post("/stats/summary")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                b"{\"only_cpu_and_memory\":true}",
            )))
            .unwrap()
    };
    let tunnel = s.world.request(&s.cloud, "edge-1", post()).await.unwrap();
    let io = TcpStream::connect(s.kubelet.addr()).await.unwrap();
    let direct = http_request(io, "127.0.0.1", post()).await.unwrap();
    assert_eq!(tunnel.status(), direct.status());
    assert_eq!(
        body_bytes(tunnel.into_body()).await.unwrap(),
        body_bytes(direct.into_body()).await.unwrap()
    );
    // A kubelet 404 is a 404.
    let tunnel = s
        .world
        .get(&s.cloud, "edge-1", "/stats/nosuch/thing", &[])
        .await
        .unwrap();
    assert_eq!(tunnel.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_kubelet_gives_502_within_2_seconds() {
    let Setup {
        world,
        cloud,
        kubelet,
        _edge,
    } = setup(&[]).await;
    kubelet.shutdown().await;
    for path in ["/metrics", "/containerLogs/default/web/app"] {
        let started = Instant::now();
        let resp = world.get(&cloud, "edge-1", path, &[]).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{path}");
        let body = body_bytes(resp.into_body()).await.unwrap();
        assert!(
            String::from_utf8_lossy(&body).contains("unreachable"),
            "{body:?}"
        );
        assert!(elapsed < Duration::from_secs(2), "{path} took {elapsed:?}");
    }
    let started = Instant::now();
    let io = world.connect_stream(&cloud).await.unwrap();
    let err = exec_ws(
        io,
        "edge-1",
        "/exec/default/web/app?command=cat&input=1&output=1",
        &[],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        err.downcast_ref::<UpgradeError>().unwrap().status,
        StatusCode::BAD_GATEWAY
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_operation_is_403_with_a_message() {
    let s = setup(&["--disable", "exec"]).await;
    let err = s
        .exec_tunnel("/exec/default/web/app?command=cat&input=1&output=1")
        .await
        .err()
        .unwrap();
    let upgrade = err.downcast_ref::<UpgradeError>().unwrap();
    assert_eq!(upgrade.status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&upgrade.body).contains("exec"));
    // Logs are still on.
    let resp = s
        .world
        .get(&s.cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_upgrade_is_relayed_transparently() {
    let s = setup(&[]).await;
    let io = s.world.connect_stream(&s.cloud).await.unwrap();
    let (head, mut raw) = raw_upgrade(
        io,
        "edge-1",
        "/exec/default/web/app?command=cat",
        "x-test",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(head.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(head.headers().get("upgrade").unwrap(), "x-test");
    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let (mut r, mut w) = tokio::io::split(&mut raw);
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.flush().await.unwrap();
    };
    let mut got = vec![0u8; payload.len()];
    let recv = async { r.read_exact(&mut got).await.unwrap() };
    tokio::time::timeout(PATIENCE, async { tokio::join!(send, recv) })
        .await
        .unwrap();
    assert_eq!(got, payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_mixed_streams_are_byte_exact() {
    let s = Arc::new(setup(&[]).await);
    let (echo_addr, _echo) = echo_server().await.unwrap();
    let logs = generated_log(256 << 10);
    let direct_metrics = body_bytes(s.get_direct("/metrics/cadvisor", &[]).await.into_body())
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let s = s.clone();
        let logs = logs.clone();
        let direct_metrics = direct_metrics.clone();
        tasks.spawn(async move {
            match i % 4 {
                0 => {
                    let resp = s
                        .world
                        .get(&s.cloud, "edge-1", "/containerLogs/default/mid/app", &[])
                        .await
                        .unwrap();
                    assert!(body_bytes(resp.into_body()).await.unwrap() == logs);
                }
                1 => {
                    let input: Vec<u8> = (0..64 * 1024).map(|b| (b * 7 + i) as u8).collect();
                    let path = "/exec/default/web/app?command=cat&input=1&output=1&error=1";
                    let out = run(s.exec_tunnel(path).await.unwrap(), &input).await;
                    assert!(out.stdout == input);
                }
                2 => {
                    let resp = s
                        .world
                        .get(&s.cloud, "edge-1", "/metrics/cadvisor", &[])
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::OK, "metrics stream {i}");
                    let headers = format!("{:?}", resp.headers());
                    let got = body_bytes(resp.into_body()).await.unwrap();
                    if got != direct_metrics {
                        let at = got
                            .iter()
                            .zip(direct_metrics.iter())
                            .position(|(a, b)| a != b);
                        panic!(
                            "metrics differ: {} vs {} bytes, first difference at {at:?}; headers {headers}; got[..200]={:?}",
                            got.len(),
                            direct_metrics.len(),
                            String::from_utf8_lossy(&got[..got.len().min(200)])
                        );
                    }
                }
                _ => {
                    let path = format!("/portForward/default/web?port={}", echo_addr.port());
                    let mut pf = s.port_forward_tunnel(&path).await.unwrap();
                    let msg: Vec<u8> = format!("stream {i} ").repeat(1000).into_bytes();
                    pf.write(&msg).await.unwrap();
                    let mut got = Vec::new();
                    while got.len() < msg.len() {
                        got.extend_from_slice(&pf.read().await.unwrap().unwrap());
                    }
                    assert!(got == msg);
                }
            }
        });
    }
    while let Some(r) = tokio::time::timeout(PATIENCE * 3, tasks.join_next())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}
