//! Exercises the test kubelet and the clients over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::BodyExt as _;
use test_support::{
    ContainerSpec, Event, TestKubelet, TestPki,
    client::{self, UpgradeError, body_bytes, http_get, raw_upgrade},
    content::{GeneratedVerifier, generated_sha256_hex},
    echo_server, exec_ws,
    kubelet::{METRICS_CONTENT_TYPE, metrics_text},
    port_forward_ws, tls_connect,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const LOG: &str = "one\ntwo\nthree\nfour\n";

async fn kubelet() -> TestKubelet {
    TestKubelet::builder()
        .container("default", "web", "app", ContainerSpec::with_logs(LOG))
        .container("default", "web", "sidecar", ContainerSpec::with_logs(""))
        .container("default", "web", "stuck", ContainerSpec::stalled())
        .container("default", "big", "gen", ContainerSpec::generated(8 << 20))
        .long_metrics_line(70 * 1024)
        .node_name("edge-1")
        .start()
        .await
        .unwrap()
}

async fn get(
    k: &TestKubelet,
    pq: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Bytes) {
    let tcp = TcpStream::connect(k.addr()).await.unwrap();
    let resp = http_get(tcp, &k.addr().to_string(), pq, headers)
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body_bytes(body).await.unwrap())
}

async fn tcp(k: &TestKubelet) -> TcpStream {
    TcpStream::connect(k.addr()).await.unwrap()
}

#[tokio::test]
async fn logs_queries_and_errors() {
    let k = kubelet().await;
    let (s, _, b) = get(&k, "/containerLogs/default/web/app", &[]).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, LOG.as_bytes()));
    let (_, _, b) = get(&k, "/containerLogs/default/web/app?tailLines=2", &[]).await;
    assert_eq!(&b[..], b"three\nfour\n");
    let (_, _, b) = get(&k, "/containerLogs/default/web/app?tail=1", &[]).await;
    assert_eq!(&b[..], b"four\n");
    let (_, _, b) = get(&k, "/containerLogs/default/web/app?limitBytes=6", &[]).await;
    assert_eq!(&b[..], b"one\ntw");
    let (_, _, b) = get(
        &k,
        "/containerLogs/default/web/app?timestamps=true&tailLines=1",
        &[],
    )
    .await;
    let line = std::str::from_utf8(&b).unwrap();
    let (ts, rest) = line.split_once(' ').unwrap();
    assert_eq!(rest, "four\n");
    assert_eq!(ts.len(), "2006-01-02T15:04:05.000000000Z".len(), "{ts}");
    assert!(ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".");

    let (s, _, b) = get(&k, "/containerLogs/default/nope/app", &[]).await;
    assert_eq!(
        (s, &b[..]),
        (StatusCode::NOT_FOUND, &b"pod \"nope\" does not exist"[..])
    );
    let (s, _, b) = get(&k, "/containerLogs/default/web/nope", &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(&b[..], b"container \"nope\" not found in pod \"web\"");
    let (s, _, b) = get(&k, "/containerLogs/default/web/app?tailLines=abc", &[]).await;
    assert_eq!(
        (s, &b[..]),
        (
            StatusCode::BAD_REQUEST,
            &br#"{"message": "Unable to decode query."}"#[..]
        )
    );
    let (s, _, _) = get(&k, "/containerLogs/default/web/app?limitBytes=0", &[]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _, b) = get(&k, "/no/such/path", &[]).await;
    assert_eq!(
        (s, &b[..]),
        (StatusCode::NOT_FOUND, &b"404 page not found\n"[..])
    );

    assert_eq!(k.request_count("/containerLogs/default/web/app"), 7);
    get(
        &k,
        "/healthz",
        &[("x-forwarded-uri", "/api/v1/nodes/edge-1/proxy/healthz")],
    )
    .await;
    assert_eq!(
        k.last_request_headers()["x-forwarded-uri"],
        "/api/v1/nodes/edge-1/proxy/healthz"
    );
    k.shutdown().await;
}

#[tokio::test]
async fn follow_delivers_appends_and_ends_on_shutdown() {
    let k = kubelet().await;
    let resp = http_get(
        tcp(&k).await,
        "kubelet",
        "/containerLogs/default/web/sidecar?follow=true&timestamps=1",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    for line in ["first\n", "second\npartial", "-rest\n"] {
        k.append_log("default", "web", "sidecar", line).unwrap();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = std::str::from_utf8(&frame).unwrap();
        // Every entry carries its own timestamp.
        let stripped: String = text
            .split_inclusive('\n')
            .map(|l| l.split_once(' ').unwrap().1)
            .collect();
        assert_eq!(stripped, line, "{text:?}");
    }
    // A follower started later sees the history.
    let (_, _, b) = get(&k, "/containerLogs/default/web/sidecar", &[]).await;
    assert_eq!(&b[..], b"first\nsecond\npartial-rest\n");
    let shutdown = tokio::spawn(k.shutdown());
    // The open follow ends cleanly when the kubelet shuts down.
    assert!(body.frame().await.is_none());
    shutdown.await.unwrap();
}

#[tokio::test]
async fn stalled_container_holds_only_its_own_request() {
    let k = kubelet().await;
    let stalled = tokio::spawn({
        let stream = tcp(&k).await;
        async move {
            http_get(
                stream,
                "kubelet",
                "/containerLogs/default/web/stuck?follow=true",
                &[],
            )
            .await
        }
    });
    let (s, _, b) = get(&k, "/containerLogs/default/web/app", &[]).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, LOG.as_bytes()));
    assert!(!stalled.is_finished());
    k.shutdown().await;
    // Shutdown drops the stalled connection instead of answering.
    assert!(stalled.await.unwrap().is_err());
}

#[tokio::test]
async fn generated_log_streams_fast() {
    let k = kubelet().await;
    let resp = http_get(
        tcp(&k).await,
        "kubelet",
        "/containerLogs/default/big/gen",
        &[],
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    let mut v = GeneratedVerifier::new();
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            v.update(&d);
        }
    }
    v.finish(8 << 20).unwrap();
    let (_, _, b) = get(&k, "/containerLogs/default/big/gen?limitBytes=1000", &[]).await;
    assert_eq!(b, test_support::content::generated_log(1000));
    assert_eq!(
        generated_sha256_hex(1000),
        test_support::content::sha256_hex(&b)
    );
}

#[tokio::test]
async fn metrics_gzip_and_stats() {
    let k = kubelet().await;
    for path in [
        "/metrics",
        "/metrics/cadvisor",
        "/metrics/resource",
        "/metrics/probes",
    ] {
        let (s, h, plain) = get(&k, path, &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], METRICS_CONTENT_TYPE);
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(plain, metrics_text(path, Some(70 * 1024)).unwrap());
        assert!(plain.len() > 4096);
        assert!(plain.split(|b| *b == b'\n').any(|l| l.len() > 64 * 1024));
        assert!(!plain.contains(&b'\r'));
        let (_, h, gz) = get(&k, path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut decoded)
            .unwrap();
        assert_eq!(decoded, plain);
        assert!(gz.len() < plain.len());
    }
    let (s, h, b) = get(&k, "/stats/summary?only_cpu_and_memory=true", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["node"]["nodeName"], "edge-1");
    assert_eq!(v["pods"].as_array().unwrap().len(), 2);
    assert!(b.iter().filter(|c| **c == b'\n').count() > 20);
    let req = http::Request::post("/stats/summary")
        .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = client::http_request(tcp(&k).await, "kubelet", req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn tls_kubelet_requires_client_cert() {
    let pki = TestPki::new().unwrap();
    let k = TestKubelet::builder()
        .tls(pki.server(&["localhost", "127.0.0.1"]).unwrap(), Some(&pki))
        .start()
        .await
        .unwrap();
    assert!(k.base_url().starts_with("https://127.0.0.1:"));
    let apiserver = pki
        .client("kube-apiserver-kubelet-client", Some("system:masters"))
        .unwrap();
    let tls = tls_connect(
        k.addr(),
        pki.client_config(Some(&apiserver)).unwrap(),
        "127.0.0.1",
    )
    .await
    .unwrap();
    let resp = http_get(tls, "127.0.0.1", "/healthz", &[]).await.unwrap();
    assert_eq!(body_bytes(resp.into_body()).await.unwrap(), "ok");
    // Without a client certificate the request fails (TLS 1.3: after the handshake).
    let res = async {
        let tls = tls_connect(k.addr(), pki.client_config(None)?, "localhost").await?;
        let resp = http_get(tls, "localhost", "/healthz", &[]).await?;
        body_bytes(resp.into_body()).await
    }
    .await;
    assert!(res.is_err());
    k.shutdown().await;
}

fn exec_path(cmd: &[&str], extra: &str) -> String {
    let mut q: Vec<String> = cmd
        .iter()
        .map(|c| format!("command={}", c.replace(' ', "%20")))
        .collect();
    q.push(extra.to_owned());
    format!("/exec/default/web/app?{}", q.join("&"))
}

#[tokio::test]
async fn exec_cat_round_trip_1mib() {
    let k = kubelet().await;
    let s = exec_ws(
        tcp(&k).await,
        "kubelet",
        &exec_path(&["cat"], "input=1&output=1&error=1"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(s.protocol(), Some("v5.channel.k8s.io"));
    let (mut w, r) = s.split();
    let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.send_stdin(&data).await.unwrap();
        w.close_stdin().await.unwrap();
        w
    });
    let out = r.collect().await.unwrap();
    writer.await.unwrap();
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected);
    assert_eq!(
        out.status,
        serde_json::json!({"metadata": {}, "status": "Success"})
    );
    assert_eq!(out.exit_code(), Some(0));
}

#[tokio::test]
async fn exec_statuses_stderr_and_commands() {
    let k = kubelet().await;
    let run = |cmd: Vec<&'static str>, q: &'static str| {
        let addr = k.addr();
        async move {
            let io = TcpStream::connect(addr).await.unwrap();
            exec_ws(io, "kubelet", &exec_path(&cmd, q), &[])
                .await
                .unwrap()
                .collect()
                .await
                .unwrap()
        }
    };
    let out = run(vec!["sh", "-c", "exit 3"], "output=1&error=1").await;
    assert_eq!(out.exit_code(), Some(3));
    assert_eq!(out.status["reason"], "NonZeroExitCode");
    assert_eq!(
        out.status["message"],
        "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
    );
    assert_eq!(
        out.status["details"]["causes"][0],
        serde_json::json!({"reason": "ExitCode", "message": "3"})
    );

    let out = run(vec!["stderr", "oops"], "output=1&error=1").await;
    assert_eq!(
        (&out.stdout[..], &out.stderr[..]),
        (&b""[..], &b"oops\n"[..])
    );
    // With a tty, stderr goes to stdout.
    let out = run(vec!["stderr", "oops"], "output=1&error=1&tty=1").await;
    assert_eq!(
        (&out.stdout[..], &out.stderr[..]),
        (&b"oops\n"[..], &b""[..])
    );
    let out = run(vec!["echo", "hello", "world"], "output=1").await;
    assert_eq!(out.stdout, b"hello world\n");
    let out = run(vec!["yes-bytes", "3000000"], "output=1").await;
    assert_eq!(out.stdout, test_support::content::generated_log(3_000_000));
    let out = run(vec!["head", "-c", "10"], "output=1").await;
    assert_eq!(out.stdout, b"0000000000");
    let out = run(vec!["no-such-binary"], "output=1").await;
    assert_eq!(out.status["reason"], "InternalError");
    assert_eq!(out.exit_code(), None);

    // sha256sum over stdin, via the {uid} path form.
    let io = tcp(&k).await;
    let mut s = exec_ws(
        io,
        "kubelet",
        "/exec/default/web/some-uid/app?command=sha256sum&input=1&output=1",
        &[],
    )
    .await
    .unwrap();
    s.send_stdin(b"abc").await.unwrap();
    s.close_stdin().await.unwrap();
    let out = s.collect().await.unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  3\n"
    );
}

#[tokio::test]
async fn exec_v4_negotiation_and_errors() {
    let k = kubelet().await;
    let host = k.addr().to_string();
    let v4 = [("Sec-WebSocket-Protocol", "v4.channel.k8s.io")];
    let mut s = exec_ws(
        tcp(&k).await,
        &host,
        &exec_path(&["exit", "7"], "output=1"),
        &v4,
    )
    .await
    .unwrap();
    assert_eq!(s.protocol(), Some("v4.channel.k8s.io"));
    assert!(s.close_stdin().await.is_err());
    let out = s.collect().await.unwrap();
    assert_eq!(out.exit_code(), Some(7));

    // Non-upgrade request: 500 "Upgrade request required" (POST like kubectl's SPDY path).
    let req = http::Request::post(exec_path(&["cat"], "output=1"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = client::http_request(tcp(&k).await, &host, req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body_bytes(resp.into_body()).await.unwrap(),
        "Upgrade request required"
    );

    let err = exec_ws(
        tcp(&k).await,
        &host,
        "/exec/default/ghost/app?command=cat&output=1",
        &[],
    )
    .await
    .unwrap_err();
    let up = err.downcast_ref::<UpgradeError>().unwrap();
    assert_eq!(up.status, StatusCode::NOT_FOUND);
    assert_eq!(&up.body[..], b"pod does not exist");
    let err = exec_ws(
        tcp(&k).await,
        &host,
        "/exec/default/web/app?command=cat",
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.downcast_ref::<UpgradeError>().unwrap().status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn exec_tty_resize_and_attach() {
    let k = kubelet().await;
    let mut s = exec_ws(
        tcp(&k).await,
        "kubelet",
        &exec_path(&["tty-size"], "input=1&output=1&tty=1"),
        &[],
    )
    .await
    .unwrap();
    s.resize(80, 24).await.unwrap();
    assert_eq!(
        s.next().await.unwrap(),
        Some(Event::Stdout(Bytes::from_static(b"80x24\n")))
    );
    s.resize(120, 40).await.unwrap();
    assert_eq!(
        s.next().await.unwrap(),
        Some(Event::Stdout(Bytes::from_static(b"120x40\n")))
    );
    s.close_stdin().await.unwrap();
    assert_eq!(s.collect().await.unwrap().exit_code(), Some(0));

    let mut a = exec_ws(
        tcp(&k).await,
        "kubelet",
        "/attach/default/web/app?input=1&output=1&tty=1",
        &[],
    )
    .await
    .unwrap();
    a.send_stdin(b"hi\n").await.unwrap();
    assert_eq!(
        a.next().await.unwrap(),
        Some(Event::Stdout(Bytes::from_static(b"hi\n")))
    );
    a.resize(10, 5).await.unwrap();
    assert_eq!(
        a.next().await.unwrap(),
        Some(Event::Stdout(Bytes::from_static(b"10x5\n")))
    );
    a.close_stdin().await.unwrap();
    assert_eq!(a.collect().await.unwrap().exit_code(), Some(0));
    assert_eq!(k.request_count("/attach/"), 1);
}

#[tokio::test]
async fn port_forward_echo_1mib() {
    let k = kubelet().await;
    let (echo, _echo_guard) = echo_server().await.unwrap();
    let pq = format!("/portForward/default/web?port={}", echo.port());
    let s = port_forward_ws(tcp(&k).await, "kubelet", &pq)
        .await
        .unwrap();
    assert_eq!(s.protocol(), Some("v4.channel.k8s.io"));
    let (mut w, mut r) = s.split();
    let total = 1 << 20;
    let writer = tokio::spawn(async move {
        w.write(&test_support::content::generated_log(total))
            .await
            .unwrap();
        w
    });
    let mut v = GeneratedVerifier::new();
    while v.len() < total {
        v.update(&r.read().await.unwrap().unwrap());
    }
    v.finish(total).unwrap();
    assert_eq!(r.port(), Some(echo.port()));
    let mut w = writer.await.unwrap();
    w.close().await.unwrap();
    // The server shuts the target down, the echo server closes, the websocket ends.
    assert!(r.read().await.unwrap().is_none());

    // Nothing listening: the error channel reports it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = port_forward_ws(
        tcp(&k).await,
        "kubelet",
        &format!("/portForward/default/web/uid?port={closed}"),
    )
    .await
    .unwrap();
    let err = s.read().await.unwrap_err();
    assert!(err.to_string().contains("port-forward error"), "{err}");
}

#[tokio::test]
async fn x_test_upgrade_echoes_raw_bytes() {
    let k = kubelet().await;
    for path in [
        "/exec/default/web/app?command=cat",
        "/portForward/default/web?port=1",
        "/attach/x/y/z",
    ] {
        let (resp, mut io) = raw_upgrade(tcp(&k).await, "kubelet", path, "x-test", &[])
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()[header::UPGRADE], "x-test");
        io.write_all(b"ping \x00\xff raw").await.unwrap();
        let mut buf = [0u8; 11];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping \x00\xff raw");
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
    k.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_listener_and_sessions() {
    let k = kubelet().await;
    let addr = k.addr();
    let mut s = exec_ws(
        tcp(&k).await,
        "kubelet",
        &exec_path(&["cat"], "input=1&output=1"),
        &[],
    )
    .await
    .unwrap();
    s.send_stdin(b"x").await.unwrap();
    assert_eq!(
        s.next().await.unwrap(),
        Some(Event::Stdout(Bytes::from_static(b"x")))
    );
    tokio::time::timeout(Duration::from_secs(5), k.shutdown())
        .await
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
    // The exec session was torn down with the kubelet.
    assert!(matches!(s.next().await, Ok(None) | Err(_)));
}

#[tokio::test]
async fn kubelet_notices_clients_going_away() {
    let k = kubelet().await;
    let resp = http_get(
        tcp(&k).await,
        "kubelet",
        "/containerLogs/default/web/app?follow=1",
        &[],
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, LOG);
    assert_eq!(k.active_streams().logs, 1);
    // The follower is idle (no appends); dropping the client must still end the stream.
    drop(body);
    tokio::time::timeout(
        Duration::from_secs(5),
        k.wait_active_streams(|a| a.logs == 0),
    )
    .await
    .unwrap();

    let mut s = exec_ws(
        tcp(&k).await,
        "kubelet",
        &exec_path(&["cat"], "input=1&output=1"),
        &[],
    )
    .await
    .unwrap();
    s.send_stdin(b"x").await.unwrap();
    s.next().await.unwrap();
    assert_eq!(k.active_streams().upgrades, 1);
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), k.wait_idle())
        .await
        .unwrap();
    k.shutdown().await;
}
