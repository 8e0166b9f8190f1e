//! Session mechanics over an in-memory pipe: both ends are real sessions (cloud and edge
//! roles, same dialect), so everything but TLS and the HTTP upgrade is exercised here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use stream_proto::{ConnectRequest, GoUrl, OpenResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_session::{
    ConnectKind, Dialect, Incoming, NodeIdentity, Role, Session, SessionConfig, SessionParams,
};

fn request(path: &str) -> ConnectRequest {
    ConnectRequest {
        mess_id: 0,
        url: GoUrl::from_request_target("http", "127.0.0.1:10350", path).unwrap(),
        header: None,
        method: Some("GET".into()),
    }
}

struct Pair {
    cloud: Session,
    edge: Session,
    incoming: Incoming,
    _tasks: tokio::task::JoinSet<()>,
}

impl Pair {
    /// Opens a stream from the cloud and accepts it on the edge: (cloud end, edge end).
    async fn open(
        &mut self,
        kind: ConnectKind,
        path: &str,
    ) -> (tunnel_session::Stream, tunnel_session::Stream) {
        let cloud = self.cloud.open(kind, request(path)).await.unwrap();
        let edge = self.incoming.accept().await.unwrap().stream;
        (cloud, edge)
    }
}

fn pair(dialect: Dialect, config: SessionConfig) -> Pair {
    // A pipe large enough not to be the bottleneck, small enough to apply backpressure.
    let (a, b) = tokio::io::duplex(256 * 1024);
    let node = NodeIdentity {
        name: "edge-1".into(),
        ip: None,
    };
    let params = |role| SessionParams {
        role,
        dialect,
        node: node.clone(),
        config: Arc::new(config.clone()),
        peer_window: config.announced_window(),
        leftover: Bytes::new(),
    };
    let (cloud, _, cloud_driver) = Session::establish(a, params(Role::Cloud));
    let (edge, incoming, edge_driver) = Session::establish(b, params(Role::Edge));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        let _ = cloud_driver.run().await;
    });
    tasks.spawn(async move {
        let _ = edge_driver.run().await;
    });
    Pair {
        cloud,
        edge,
        incoming,
        _tasks: tasks,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn tether2_bytes_both_ways_with_half_close_and_open_result() {
    let mut p = pair(Dialect::Tether2, SessionConfig::default());
    let mut cloud_stream = p
        .cloud
        .open(ConnectKind::Exec, request("/exec/ns/p/c"))
        .await
        .unwrap();
    let mut incoming = p.incoming.accept().await.unwrap();
    assert_eq!(incoming.request.mess_id, cloud_stream.id().0);
    assert_eq!(incoming.request.url.path, "/exec/ns/p/c");
    incoming
        .stream
        .send_open_result(OpenResult::Raw)
        .await
        .unwrap();
    assert_eq!(
        cloud_stream.open_result().await.unwrap(),
        Some(OpenResult::Raw)
    );

    let up = pattern(3 * 1024 * 1024 + 17, 1);
    let down = pattern(2 * 1024 * 1024 + 5, 2);
    let edge_stream = incoming.stream;
    let (up2, down2) = (up.clone(), down.clone());
    let edge = tokio::spawn(async move {
        let mut got = Vec::new();
        let (mut r, mut w) = tokio::io::split(edge_stream);
        let reader = async { r.read_to_end(&mut got).await.unwrap() };
        let writer = async {
            w.write_all(&down2).await.unwrap();
            w.shutdown().await.unwrap();
        };
        tokio::join!(reader, writer);
        assert_eq!(got, up2);
    });
    let (mut r, mut w) = tokio::io::split(cloud_stream);
    let mut got = Vec::new();
    tokio::join!(async { r.read_to_end(&mut got).await.unwrap() }, async {
        w.write_all(&up).await.unwrap();
        w.shutdown().await.unwrap();
    });
    assert_eq!(got, down);
    edge.await.unwrap();
    assert!(p.edge.stats().bytes_received() >= up.len() as u64);
}

#[tokio::test]
async fn tether2_paused_reader_stalls_only_its_own_stream() {
    let config = SessionConfig {
        stream_window: 64 * 1024,
        ..SessionConfig::default()
    };
    let mut p = pair(Dialect::Tether2, config);
    let mut slow = p
        .cloud
        .open(ConnectKind::Logs, request("/containerLogs/a/b/c"))
        .await
        .unwrap();
    let mut fast = p
        .cloud
        .open(ConnectKind::Logs, request("/containerLogs/a/b/d"))
        .await
        .unwrap();
    let slow_edge = p.incoming.accept().await.unwrap().stream;
    let fast_edge = p.incoming.accept().await.unwrap().stream;
    let data = pattern(8 * 1024 * 1024, 7);

    let d = data.clone();
    let slow_writer = tokio::spawn(async move {
        let mut s = slow_edge;
        s.write_all(&d).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let d = data.clone();
    let fast_writer = tokio::spawn(async move {
        let mut s = fast_edge;
        s.write_all(&d).await.unwrap();
        s.shutdown().await.unwrap();
    });
    // Read one byte of the slow stream, then stop reading it entirely.
    let mut first = [0u8; 1];
    slow.read_exact(&mut first).await.unwrap();
    // The fast stream completes while the slow one is not read at all.
    let mut got = Vec::new();
    fast.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);
    fast_writer.await.unwrap();
    // The slow stream holds no more than its window.
    assert!(slow.buffered() <= 64 * 1024, "buffered {}", slow.buffered());
    assert!(!slow_writer.is_finished());
    // It resumes and completes byte-exact.
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).await.unwrap();
    assert_eq!(first[0], data[0]);
    assert_eq!(rest, data[1..]);
    slow_writer.await.unwrap();
}

#[tokio::test]
async fn kubeedge_stall_limit_closes_only_the_stuck_stream() {
    let config = SessionConfig {
        stream_window: 64 * 1024,
        stall_limit: Duration::from_millis(300),
        ..SessionConfig::default()
    };
    let mut p = pair(Dialect::KubeEdge, config);
    let mut stuck = p
        .cloud
        .open(ConnectKind::Logs, request("/containerLogs/a/b/c"))
        .await
        .unwrap();
    let mut other = p
        .cloud
        .open(ConnectKind::Logs, request("/containerLogs/a/b/d"))
        .await
        .unwrap();
    let stuck_edge = p.incoming.accept().await.unwrap().stream;
    let other_edge = p.incoming.accept().await.unwrap().stream;
    let data = pattern(4 * 1024 * 1024, 3);
    let d = data.clone();
    // The stuck stream's writer learns that its stream was closed once the stall limit
    // hit: writing goes on failing well before 64 MiB.
    let stuck_writer = tokio::spawn(async move {
        let mut s = stuck_edge;
        for _ in 0..16 {
            s.write_all(&d).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let d = data.clone();
    let other_writer = tokio::spawn(async move {
        let mut s = other_edge;
        s.write_all(&d).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    other.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);
    other_writer.await.unwrap();
    assert!(
        stuck_writer.await.unwrap().is_err(),
        "the stuck stream must be closed"
    );
    // Its reader learns it was cut, rather than seeing a clean end.
    let mut sink = Vec::new();
    assert!(stuck.read_to_end(&mut sink).await.is_err());
}

#[tokio::test]
async fn kubeedge_remove_ends_the_stream_and_the_edge_echoes_it() {
    let mut p = pair(Dialect::KubeEdge, SessionConfig::default());
    let (mut cloud_stream, mut edge_stream) =
        p.open(ConnectKind::Logs, "/containerLogs/a/b/c").await;
    edge_stream.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    cloud_stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    // The cloud ends the stream (a client went away): REMOVE_CONNECT.
    cloud_stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    edge_stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert!(edge_stream.write_all(b"late").await.is_err());
    drop(edge_stream); // echoes REMOVE_CONNECT, which ends the cloud's read side
    let mut rest = Vec::new();
    cloud_stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(p.edge.open_streams(), 0);
}

#[tokio::test]
async fn a_silent_peer_is_declared_dead() {
    let config = SessionConfig {
        ping_interval: Duration::from_millis(50),
        dead_after: Duration::from_millis(300),
        ..SessionConfig::default()
    };
    // The other end of the pipe is held open but never answers.
    let (a, _silent) = tokio::io::duplex(1024 * 1024);
    let params = SessionParams {
        role: Role::Cloud,
        dialect: Dialect::KubeEdge,
        node: NodeIdentity {
            name: "edge-1".into(),
            ip: None,
        },
        config: Arc::new(config),
        peer_window: 0,
        leftover: Bytes::new(),
    };
    let (session, _, driver) = Session::establish(a, params);
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), driver.run())
        .await
        .unwrap();
    assert!(
        matches!(result, Err(tunnel_session::Error::Timeout(_))),
        "{result:?}"
    );
    assert!(session.is_closed());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Opening on a dead session fails at once.
    assert!(
        session
            .open(ConnectKind::Logs, request("/containerLogs/a/b/c"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn streams_fail_at_once_when_the_session_dies() {
    let mut p = pair(Dialect::Tether2, SessionConfig::default());
    let (mut cloud_stream, _edge_stream) = p.open(ConnectKind::Logs, "/containerLogs/a/b/c").await;
    p.edge.close("test");
    let mut sink = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), cloud_stream.read_to_end(&mut sink))
        .await
        .unwrap();
    assert!(r.is_err());
}

/// Many streams at once, in both dialects, with writes of every size: every byte arrives on
/// its own stream, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_stay_byte_exact() {
    for dialect in [Dialect::Tether2, Dialect::KubeEdge] {
        let config = SessionConfig {
            stream_window: 16 * 1024,
            write_queue: 8,
            ..SessionConfig::default()
        };
        let mut p = pair(dialect, config);
        let streams = 64;
        let mut cloud_side = Vec::new();
        for i in 0..streams {
            let s = p
                .cloud
                .open(
                    ConnectKind::Logs,
                    request(&format!("/containerLogs/a/b/c{i}")),
                )
                .await
                .unwrap();
            cloud_side.push(s);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..streams {
            let incoming = p.incoming.accept().await.unwrap();
            let seed = incoming.request.url.path.len() as u8
                ^ incoming
                    .request
                    .url
                    .path
                    .as_bytes()
                    .last()
                    .copied()
                    .unwrap_or(0);
            let id = incoming.stream.id();
            let mut stream = incoming.stream;
            tasks.spawn(async move {
                // Writes of varying sizes, so message boundaries fall everywhere.
                let data = pattern(300_000 + usize::from(seed) * 97, seed);
                let mut off = 0;
                let mut size = 1;
                while off < data.len() {
                    let end = (off + size).min(data.len());
                    stream.write_all(&data[off..end]).await.unwrap();
                    off = end;
                    size = size * 7 % 70_001 + 1;
                }
                // tether/2: FIN; KubeEdge: the edge's REMOVE_CONNECT, which ends the stream.
                stream.shutdown().await.unwrap();
                (id, data)
            });
        }
        // Readers run while the writers write: with windows, writers need them.
        let mut readers = tokio::task::JoinSet::new();
        for mut s in cloud_side {
            readers.spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                (s.id(), got)
            });
        }
        let mut expected = std::collections::HashMap::new();
        while let Some(r) = tasks.join_next().await {
            let (id, data) = r.unwrap();
            expected.insert(id, data);
        }
        while let Some(r) = readers.join_next().await {
            let (id, got) = r.unwrap();
            assert!(expected[&id] == got, "{dialect}: stream {id} differs");
        }
    }
}

/// A burst of connects far beyond any accept backlog is queued, not reset.
#[tokio::test]
async fn a_burst_of_connects_is_queued_not_refused() {
    let mut p = pair(Dialect::Tether2, SessionConfig::default());
    let mut opened = Vec::new();
    for i in 0..300 {
        let path = format!("/containerLogs/a/b/c{i}");
        opened.push(
            p.cloud
                .open(ConnectKind::Logs, request(&path))
                .await
                .unwrap(),
        );
    }
    for _ in 0..300 {
        let mut incoming = p.incoming.accept().await.unwrap();
        incoming.stream.write_all(b"x").await.unwrap();
        incoming.stream.shutdown().await.unwrap();
    }
    for mut s in opened {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"x");
    }
}

/// Streams the cloud opened before it drained still reach the edge and are served; the
/// edge learns of the drain and the cloud opens nothing new.
#[tokio::test]
async fn streams_opened_before_go_away_are_still_served() {
    let mut p = pair(Dialect::Tether2, SessionConfig::default());
    let mut opened = Vec::new();
    for i in 0..10 {
        let path = format!("/containerLogs/a/b/c{i}");
        opened.push(
            p.cloud
                .open(ConnectKind::Logs, request(&path))
                .await
                .unwrap(),
        );
    }
    p.cloud.drain("shutting down");
    assert!(
        p.cloud
            .open(ConnectKind::Logs, request("/containerLogs/a/b/late"))
            .await
            .is_err()
    );
    tokio::time::timeout(Duration::from_secs(10), p.edge.draining())
        .await
        .unwrap();
    for _ in 0..10 {
        let mut incoming = p.incoming.accept().await.unwrap();
        incoming.stream.write_all(b"served").await.unwrap();
        incoming.stream.shutdown().await.unwrap();
    }
    for mut s in opened {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"served");
    }
}

/// Writes `data` in pieces of varying size (keystrokes and bulk reads), then half-closes.
async fn write_in_pieces(w: &mut (impl AsyncWriteExt + Unpin), data: &[u8]) {
    let sizes = [1, 100, 5000, 70_000, 64 * 1024, 3];
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at == data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        w.write_all(&data[at..end]).await.unwrap();
        at = end;
    }
    w.shutdown().await.unwrap();
}

#[tokio::test]
async fn pumps_relay_byte_exact_both_ways_without_a_buffer_between() {
    use tunnel_session::pump;
    for dialect in [Dialect::Tether2, Dialect::KubeEdge] {
        let mut p = pair(dialect, SessionConfig::default());
        let mut cloud_stream = p
            .cloud
            .open(ConnectKind::Exec, request("/exec/ns/p/c"))
            .await
            .unwrap();
        let incoming = p.incoming.accept().await.unwrap();
        let (mut client, bridge_end) = tokio::io::duplex(64 * 1024);
        let bridge = tokio::spawn(async move {
            let mut bridge_end = bridge_end;
            pump::bridge(&mut cloud_stream, &mut bridge_end).await
        });
        let (kubelet, pump_end) = tokio::io::duplex(64 * 1024);
        let mut edge_stream = incoming.stream;
        let edge = tokio::spawn(async move {
            let (mut rx, mut tx) = edge_stream.halves();
            let (mut pump_rx, mut pump_tx) = tokio::io::split(pump_end);
            let (mut up, mut down) = (0, 0);
            let (a, b) = tokio::join!(
                pump::from_stream(&mut rx, &mut pump_tx, &mut up),
                pump::into_stream(&mut pump_rx, &mut tx, &mut down),
            );
            (a.is_ok(), b.is_ok(), up, down)
        });
        let (mut kubelet_rx, mut kubelet_tx) = tokio::io::split(kubelet);
        let down = pattern(1024 * 1024 + 333, 7);
        if dialect == Dialect::Tether2 {
            // Each direction ends on its own.
            let up = pattern(1024 * 1024 + 77, 3);
            let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
            tokio::join!(
                write_in_pieces(&mut client, &up),
                write_in_pieces(&mut kubelet_tx, &down),
                async { kubelet_rx.read_to_end(&mut got_up).await.unwrap() },
            );
            client.read_to_end(&mut got_down).await.unwrap();
            assert!(got_up == up, "{dialect}: upstream differs");
            assert!(got_down == down, "{dialect}: downstream differs");
            let (up_ok, down_ok, up_n, down_n) = edge.await.unwrap();
            assert!(up_ok && down_ok);
            assert_eq!((up_n, down_n), (up.len() as u64, down.len() as u64));
            let (to_stream, from_stream) = bridge.await.unwrap().unwrap();
            assert_eq!(
                (to_stream, from_stream),
                (up.len() as u64, down.len() as u64)
            );
        } else {
            // KubeEdge: the kubelet's end of file closes the whole stream, after its bytes.
            let mut got_down = Vec::new();
            tokio::join!(write_in_pieces(&mut kubelet_tx, &down), async {
                client.read_to_end(&mut got_down).await.unwrap()
            });
            assert!(got_down == down, "{dialect}: downstream differs");
            bridge.abort();
            edge.abort();
        }
    }
}

/// How long a test waits for something that must happen before it calls it a hang.
const HANG: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test]
async fn a_bridge_lets_go_of_a_reset_stream_while_its_client_neither_reads_nor_writes() {
    use tunnel_session::pump;
    let mut p = pair(Dialect::Tether2, SessionConfig::default());
    let (mut cloud_stream, mut edge_stream) = p.open(ConnectKind::Exec, "/exec/ns/p/c").await;
    // The client's pipe holds 1 KiB and the client never touches it.
    let (_client, bridge_end) = tokio::io::duplex(1024);
    let bridge = tokio::spawn(async move {
        let mut bridge_end = bridge_end;
        pump::bridge(&mut cloud_stream, &mut bridge_end).await
    });
    // More than the pipe holds, so the bridge blocks writing to the client.
    edge_stream.write_all(&pattern(32 * 1024, 1)).await.unwrap();
    edge_stream.reset(
        tunnel_session::stream_proto::ResetCode::Internal,
        "the kubelet went away",
    );
    let result = tokio::time::timeout(HANG, bridge)
        .await
        .expect("the bridge let go of the reset stream")
        .unwrap();
    let e = result.expect_err("a reset stream ends the bridge with an error");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
}

#[tokio::test]
async fn a_reset_behind_a_fin_does_not_cut_short_what_the_fin_completed() {
    use tunnel_session::pump;
    let mut p = pair(Dialect::Tether2, SessionConfig::default());
    let (mut cloud_stream, mut edge_stream) = p.open(ConnectKind::Exec, "/exec/ns/p/c").await;
    let (mut client, bridge_end) = tokio::io::duplex(1024);
    let bridge = tokio::spawn(async move {
        let mut bridge_end = bridge_end;
        pump::bridge(&mut cloud_stream, &mut bridge_end).await
    });
    // An exec whose process printed and exited while the client's stdin was open: the edge
    // sends the output, FIN, then resets the stream it no longer needs.
    let output = pattern(200 * 1024, 5);
    let sent = output.clone();
    let edge = tokio::spawn(async move {
        edge_stream.write_all(&sent).await.unwrap();
        edge_stream.shutdown().await.unwrap();
        edge_stream.reset(
            tunnel_session::stream_proto::ResetCode::Internal,
            "the process exited",
        );
    });
    let mut got = Vec::new();
    // The client reads slowly (1 KiB pipe), long after the reset arrived.
    client.read_to_end(&mut got).await.unwrap();
    assert!(
        got == output,
        "the output was cut short: {} bytes",
        got.len()
    );
    edge.await.unwrap();
    client.shutdown().await.unwrap();
    let _ = tokio::time::timeout(HANG, bridge)
        .await
        .expect("the bridge ends once the client has left");
}
