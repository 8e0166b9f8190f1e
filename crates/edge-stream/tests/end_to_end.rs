//! The edge against a real cloud tunnel server and a real kubelet, over mTLS and websocket on
//! 127.0.0.1.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use edge_stream::TunnelStatus;
use stream_proto::OpenResult;
use support::{Cloud, Edge, Pki, TestKubelet, connect_request, dead_addr, edge_config, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_session::{ConnectKind, Dialect, Stream};

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Reads from `stream` until `want` has arrived; returns everything read.
async fn read_until(stream: &mut Stream, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = within("stream data", stream.read(&mut buf))
            .await
            .expect("stream read");
        assert!(
            n > 0,
            "end of stream before {:?}; got {:?}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

async fn read_to_end(stream: &mut Stream) -> Vec<u8> {
    let mut body = Vec::new();
    within("end of stream", stream.read_to_end(&mut body))
        .await
        .expect("stream read");
    body
}

/// Everything a test needs: PKI, cloud, kubelet and a connected edge.
struct Setup {
    _pki: Pki,
    cloud: Cloud,
    kubelet: TestKubelet,
    edge: Edge,
    session: tunnel_session::Session,
}

impl Setup {
    async fn start(offer_tether2: bool, tweak: impl FnOnce(&mut edge_stream::EdgeConfig)) -> Setup {
        let pki = Pki::new().unwrap();
        let mut cloud = Cloud::start(&pki, any_port()).await.unwrap();
        let kubelet = TestKubelet::start().await.unwrap();
        let mut config = edge_config(&pki, cloud.addr, &kubelet.addr.to_string(), offer_tether2);
        tweak(&mut config);
        let edge = Edge::start(config);
        let session = cloud.session().await;
        let want = if offer_tether2 {
            Dialect::Tether2
        } else {
            Dialect::KubeEdge
        };
        assert_eq!(session.dialect(), want);
        Setup {
            _pki: pki,
            cloud,
            kubelet,
            edge,
            session,
        }
    }

    async fn open(
        &self,
        kind: ConnectKind,
        method: Option<&str>,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Stream {
        within(
            "opening a stream",
            self.session
                .open(kind, connect_request(method, target, headers)),
        )
        .await
        .expect("open")
    }

    async fn stop(self) {
        self.edge.stop().await;
        self.cloud.stop().await;
        self.kubelet.stop().await;
    }
}

#[tokio::test]
async fn follow_logs_stream_and_a_cancel_frees_the_kubelet() {
    let s = Setup::start(true, |_| {}).await;
    let mut stream = s
        .open(
            ConnectKind::Logs,
            None,
            "/containerLogs/ns/pod/c?follow=true&timestamps=true",
            &[("Accept", "*/*")],
        )
        .await;
    let Some(OpenResult::Response { status, headers }) = stream.open_result().await.unwrap() else {
        panic!("expected a response");
    };
    assert_eq!(status, 200);
    assert_eq!(headers["Content-Type"], ["text/plain"]);
    assert!(!headers.contains_key("Transfer-Encoding"), "{headers:?}");
    // The first line arrives while the kubelet keeps the response open.
    assert_eq!(read_until(&mut stream, b"line 1\n").await, b"line 1\n");

    let request = &s.kubelet.requests()[0];
    assert_eq!(
        request.target,
        "/containerLogs/ns/pod/c?follow=true&timestamps=true"
    );
    assert_eq!(request.headers["host"], s.kubelet.addr.to_string());
    assert_eq!(request.headers["accept"], "*/*");

    // The client goes away: the edge drops the kubelet request.
    drop(stream);
    within("the kubelet request to be dropped", s.kubelet.released()).await;
    s.stop().await;
}

#[tokio::test]
async fn kubelet_errors_come_back_with_their_status() {
    let s = Setup::start(true, |_| {}).await;
    let mut stream = s
        .open(ConnectKind::Logs, None, "/containerLogs/ns/missing/c", &[])
        .await;
    let Some(OpenResult::Response { status, .. }) = stream.open_result().await.unwrap() else {
        panic!("expected a response");
    };
    assert_eq!(status, 404);
    assert_eq!(
        read_to_end(&mut stream).await,
        br#"pod "missing" does not exist"#
    );
    // The cloud is done with the stream once the body has ended.
    drop(stream);
    s.stop().await;
}

#[tokio::test]
async fn refusals_name_their_reason() {
    let s = Setup::start(true, |c| c.operations.exec = false).await;
    let cases: &[(ConnectKind, Option<&str>, &str, u16, &str)] = &[
        (
            ConnectKind::Exec,
            Some("POST"),
            "/exec/ns/pod/c?command=sh",
            403,
            "exec is disabled on node edge-1",
        ),
        (
            ConnectKind::Metric,
            None,
            "/pods",
            404,
            "/pods is not a kubelet path this edge serves",
        ),
        (
            ConnectKind::Logs,
            Some("POST"),
            "/containerLogs/ns/pod/c",
            405,
            "method POST is not allowed for /containerLogs/ns/pod/c",
        ),
        (
            ConnectKind::Logs,
            None,
            "/metrics",
            400,
            "/metrics (metrics) cannot be served on a logs stream",
        ),
    ];
    for (kind, method, target, want_status, want_reason) in cases {
        let mut stream = s.open(*kind, *method, target, &[]).await;
        let result = within("the refusal", stream.open_result()).await.unwrap();
        assert_eq!(
            result,
            Some(OpenResult::Refused {
                status: *want_status,
                reason: (*want_reason).to_owned()
            }),
            "{target}"
        );
    }
    assert!(
        s.kubelet.requests().is_empty(),
        "a refused request reached the kubelet"
    );
    // Port-forward rides on an exec stream and has its own switch.
    let mut stream = s
        .open(
            ConnectKind::Exec,
            Some("POST"),
            "/portForward/ns/pod?port=80",
            &[],
        )
        .await;
    assert_eq!(stream.open_result().await.unwrap(), Some(OpenResult::Raw));
    drop(stream);
    s.stop().await;
}

#[tokio::test]
async fn unreachable_kubelet_is_a_prompt_502() {
    let pki = Pki::new().unwrap();
    let mut cloud = Cloud::start(&pki, any_port()).await.unwrap();
    let edge = Edge::start(edge_config(&pki, cloud.addr, &dead_addr().await, true));
    let session = cloud.session().await;
    for (kind, method, target) in [
        (ConnectKind::Logs, None, "/containerLogs/ns/pod/c"),
        (ConnectKind::Exec, Some("POST"), "/exec/ns/pod/c?command=sh"),
    ] {
        let mut stream = session
            .open(kind, connect_request(method, target, &[]))
            .await
            .unwrap();
        let result = tokio::time::timeout(Duration::from_secs(2), stream.open_result())
            .await
            .expect("the cloud must get an answer within 2 s")
            .unwrap();
        let Some(OpenResult::Refused { status, reason }) = result else {
            panic!("expected a refusal, got {result:?}");
        };
        assert_eq!(status, 502);
        assert!(reason.starts_with("kubelet at 127.0.0.1:"), "{reason}");
        assert!(reason.contains("unreachable"), "{reason}");
    }
    edge.stop().await;
    cloud.stop().await;
}

#[tokio::test]
async fn exec_is_relayed_as_raw_bytes_with_half_close() {
    let s = Setup::start(true, |_| {}).await;
    let mut stream = s
        .open(
            ConnectKind::Exec,
            Some("POST"),
            "/exec/ns/pod/c?command=sh&command=-c&input=1&output=1",
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
                ("Host", "10.1.2.3:10250"),
            ],
        )
        .await;
    assert_eq!(stream.open_result().await.unwrap(), Some(OpenResult::Raw));
    let head = read_until(&mut stream, b"\r\n\r\n").await;
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("upgrade: spdy/3.1\r\n"),
        "{head}"
    );

    stream.write_all(b"ping").await.unwrap();
    assert_eq!(read_until(&mut stream, b"ping").await, b"ping");
    // Our FIN reaches the kubelet as a TCP half-close; its echo ends and it closes in turn.
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, b"");

    let request = &s.kubelet.requests()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.target,
        "/exec/ns/pod/c?command=sh&command=-c&input=1&output=1"
    );
    assert_eq!(request.headers["host"], s.kubelet.addr.to_string());
    assert_eq!(request.headers["user-agent"], "Go-http-client/1.1");
    assert_eq!(request.headers["content-length"], "0");
    assert_eq!(request.headers["upgrade"], "SPDY/3.1");
    assert_eq!(
        request.headers["x-stream-protocol-version"],
        "v4.channel.k8s.io"
    );
    s.stop().await;
}

#[tokio::test]
async fn stats_summary_post_carries_its_body() {
    let s = Setup::start(true, |_| {}).await;
    let mut stream = s
        .open(
            ConnectKind::Metric,
            Some("POST"),
            "/stats/summary",
            &[
                ("Content-Type", "application/json"),
                ("Accept-Encoding", "gzip"),
            ],
        )
        .await;
    stream
        .write_all(br#"{"only_cpu_and_memory":true}"#)
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let Some(OpenResult::Response { status, headers }) = stream.open_result().await.unwrap() else {
        panic!("expected a response");
    };
    assert_eq!(status, 200);
    assert_eq!(headers["Content-Type"], ["application/json"]);
    assert_eq!(
        read_to_end(&mut stream).await,
        b"{\n \"requestBytes\": 28\n}\n"
    );
    let request = &s.kubelet.requests()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(&request.body[..], br#"{"only_cpu_and_memory":true}"#);
    // tether/2 carries response headers, so compression may pass through.
    assert_eq!(request.headers["accept-encoding"], "gzip");
    s.stop().await;
}

#[tokio::test]
async fn stock_kubeedge_dialect_gets_bodies_and_closes() {
    let s = Setup::start(false, |c| c.operations.logs = false).await;
    let mut stream = s
        .open(
            ConnectKind::Metric,
            None,
            "/metrics/cadvisor",
            &[("Accept-Encoding", "gzip")],
        )
        .await;
    // A stock cloud gets no open result, only the body and REMOVE_CONNECT.
    assert_eq!(stream.open_result().await.unwrap(), None);
    assert_eq!(read_to_end(&mut stream).await, b"# TYPE up gauge\nup 1\n");
    // It drops response headers, so the edge asks for an uncompressed body.
    assert_eq!(
        s.kubelet.requests()[0].headers["accept-encoding"],
        "identity"
    );

    // A refusal is a bare REMOVE_CONNECT: the stream ends with no data.
    let mut stream = s
        .open(ConnectKind::Logs, None, "/containerLogs/ns/pod/c", &[])
        .await;
    assert_eq!(read_to_end(&mut stream).await, b"");
    assert_eq!(s.kubelet.requests().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn reconnects_with_backoff_after_the_cloud_restarts() {
    let pki = Pki::new().unwrap();
    let mut cloud = Cloud::start(&pki, any_port()).await.unwrap();
    let addr = cloud.addr;
    let kubelet = TestKubelet::start().await.unwrap();
    let mut edge = Edge::start(edge_config(&pki, addr, &kubelet.addr.to_string(), true));
    let first = cloud.session().await;
    edge.wait_for("connected", |s| {
        matches!(
            s,
            TunnelStatus::Connected {
                dialect: Dialect::Tether2
            }
        )
    })
    .await;

    cloud.stop().await;
    within("the old session to close", first.closed()).await;
    // Dials keep failing while nothing listens: the edge is backing off and retrying.
    edge.wait_for("a failed dial", |s| {
        matches!(s, TunnelStatus::Disconnected { reason } if reason.contains("Connection refused"))
    })
    .await;

    let mut cloud = Cloud::start(&pki, addr).await.unwrap();
    let second = cloud.session().await;
    assert!(!second.same(&first));
    edge.wait_for("reconnected", |s| {
        matches!(s, TunnelStatus::Connected { .. })
    })
    .await;

    // The new session serves streams.
    let mut stream = second
        .open(
            ConnectKind::Logs,
            connect_request(None, "/containerLogs/ns/pod/c", &[]),
        )
        .await
        .unwrap();
    assert!(matches!(
        stream.open_result().await.unwrap(),
        Some(OpenResult::Response { status: 200, .. })
    ));
    assert_eq!(read_to_end(&mut stream).await, b"line 1\nline 2\n");
    drop(stream);

    edge.stop().await;
    cloud.stop().await;
    kubelet.stop().await;
}

#[tokio::test]
async fn a_draining_cloud_gets_a_new_session_while_old_streams_finish() {
    let pki = Pki::new().unwrap();
    let mut cloud = Cloud::start(&pki, any_port()).await.unwrap();
    let addr = cloud.addr;
    let kubelet = TestKubelet::start().await.unwrap();
    let mut edge = Edge::start(edge_config(&pki, addr, &kubelet.addr.to_string(), true));
    let old_session = cloud.session().await;
    let mut old = old_session
        .open(
            ConnectKind::Logs,
            connect_request(None, "/containerLogs/ns/pod/c?follow=true", &[]),
        )
        .await
        .unwrap();
    assert!(matches!(
        old.open_result().await.unwrap(),
        Some(OpenResult::Response { status: 200, .. })
    ));
    read_until(&mut old, b"line 1\n").await;

    // The cloud shuts down: it closes its listener, sends GO_AWAY and waits for `old`.
    cloud.begin_stop();
    edge.wait_for(
        "the edge to see the drain",
        |s| matches!(s, TunnelStatus::Disconnected { reason } if reason.contains("draining")),
    )
    .await;
    // A new cloud on the same address gets a new session while the old one still serves.
    let mut next = Cloud::start(&pki, addr).await.unwrap();
    let new_session = next.session().await;
    edge.wait_for("reconnected", |s| {
        matches!(s, TunnelStatus::Connected { .. })
    })
    .await;
    assert!(
        !old_session.is_closed(),
        "the edge closed a session with an open stream"
    );
    assert_eq!(old_session.open_streams(), 1);

    // The last stream ends: the old cloud closes the session and finishes its shutdown.
    drop(old);
    within("the kubelet request to be dropped", kubelet.released()).await;
    cloud.stop().await;
    assert!(old_session.is_closed());
    assert!(!new_session.is_closed());

    edge.stop().await;
    next.stop().await;
    kubelet.stop().await;
}
