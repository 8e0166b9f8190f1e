//! The admin server over real sockets: each endpoint, readiness flips, metrics as scraped,
//! wrong paths and methods, and shutdown (idle and stalled connections).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use admin::{Metrics, Readiness};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A safety net so a broken shutdown fails the test instead of hanging it; never used to
/// wait for something to happen.
const TEST_DEADLINE: Duration = Duration::from_secs(20);

struct Admin {
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), admin::Error>>,
}

impl Admin {
    async fn start() -> Admin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let readiness = Readiness::new();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(admin::serve(
            listener,
            metrics.clone(),
            readiness.clone(),
            shutdown.clone(),
        ));
        Admin {
            addr,
            metrics,
            readiness,
            shutdown,
            server,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        request(self.addr, Method::GET, path).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(TEST_DEADLINE, self.server)
            .await
            .expect("serve did not end after shutdown");
        ended.unwrap().unwrap();
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// One request on a fresh HTTP/1.1 connection.
async fn request(addr: SocketAddr, method: Method, path: &str) -> Reply {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let reply = send(&mut sender, method, path).await;
    drop(sender);
    driver.await.unwrap().unwrap();
    reply
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    method: Method,
    path: &str,
) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn content_type(reply: &Reply) -> &str {
    reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn healthz_says_ok() {
    let admin = Admin::start().await;
    let reply = admin.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ok\n");
    assert_eq!(content_type(&reply), "text/plain; charset=utf-8");
    admin.stop().await;
}

#[tokio::test]
async fn readyz_follows_the_flag() {
    let admin = Admin::start().await;
    let reply = admin.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "not ready\n");

    admin.readiness.set_ready(true);
    let reply = admin.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ready\n");

    admin.readiness.set_ready(false);
    let reply = admin.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "not ready\n");

    // A detail line follows the verdict, computed when asked.
    let stale = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let source = stale.clone();
    admin.readiness.set_detail_source(move || {
        Some(if source.load(std::sync::atomic::Ordering::Relaxed) {
            "directory: stale".to_owned()
        } else {
            "directory: following etcd".to_owned()
        })
    });
    admin.readiness.set_ready(true);
    let reply = admin.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ready\ndirectory: following etcd\n");
    stale.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(admin.get("/readyz").await.body, "ready\ndirectory: stale\n");
    admin.readiness.set_ready(false);
    let reply = admin.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "not ready\ndirectory: stale\n");

    // Liveness does not depend on readiness.
    assert_eq!(admin.get("/healthz").await.status, StatusCode::OK);
    admin.stop().await;
}

#[tokio::test]
async fn metrics_are_scraped_as_openmetrics() {
    let admin = Admin::start().await;
    admin.metrics.stream_opened("portforward");
    admin.metrics.stream_closed("portforward", 5, 7);
    admin
        .metrics
        .stream_open_latency("portforward", Duration::from_millis(20));
    admin.metrics.reconnect();
    admin.metrics.tunnel_up(true);

    let reply = admin.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        content_type(&reply),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(
        content_type(&reply),
        admin::server::OPENMETRICS_CONTENT_TYPE
    );
    let lines: Vec<&str> = reply.body.lines().collect();
    for line in [
        "tether_sessions 0",
        "tether_streams_total{operation=\"portforward\"} 1",
        "tether_streams_open{operation=\"portforward\"} 0",
        "tether_stream_bytes_total{operation=\"portforward\",direction=\"to_edge\"} 5",
        "tether_stream_bytes_total{operation=\"portforward\",direction=\"from_edge\"} 7",
        "tether_stream_open_seconds_count{operation=\"portforward\"} 1",
        "tether_reconnects_total 1",
        "tether_tunnel_up 1",
        "tether_ping_rtt_seconds_count 0",
    ] {
        assert!(lines.contains(&line), "missing {line:?} in\n{}", reply.body);
    }
    assert_eq!(lines.last(), Some(&"# EOF"));
    // The scrape counted the runtime's live tasks: at least the server and this connection.
    let tasks: i64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("tether_runtime_tasks "))
        .expect("tether_runtime_tasks is rendered")
        .parse()
        .unwrap();
    assert!(tasks >= 2, "{tasks} tasks\n{}", reply.body);
    // The body is exactly what `encode` renders.
    assert_eq!(reply.body, admin.metrics.encode());
    admin.stop().await;
}

#[tokio::test]
async fn head_is_get_without_a_body() {
    let admin = Admin::start().await;
    let reply = request(admin.addr, Method::HEAD, "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "");
    admin.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    let admin = Admin::start().await;
    for path in ["/", "/metricsx", "/healthz/", "/debug/pprof"] {
        let reply = admin.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(
        request(admin.addr, Method::POST, "/nowhere").await.status,
        StatusCode::NOT_FOUND
    );
    for path in ["/metrics", "/healthz", "/readyz"] {
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let reply = request(admin.addr, method.clone(), path).await;
            assert_eq!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(
                reply.headers.get(header::ALLOW).map(|v| v.as_bytes()),
                Some(&b"GET, HEAD"[..])
            );
        }
    }
    admin.stop().await;
}

#[tokio::test]
async fn keep_alive_connections_serve_several_requests() {
    let admin = Admin::start().await;
    let tcp = TcpStream::connect(admin.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    assert_eq!(
        send(&mut sender, Method::GET, "/healthz").await.body,
        "ok\n"
    );
    admin.readiness.set_ready(true);
    assert_eq!(
        send(&mut sender, Method::GET, "/readyz").await.body,
        "ready\n"
    );

    // Shutdown closes the idle keep-alive connection and ends `serve`.
    admin.stop().await;
    tokio::time::timeout(TEST_DEADLINE, driver)
        .await
        .expect("the server did not close the idle connection")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drops_stalled_connections() {
    let admin = Admin::start().await;
    let addr = admin.addr;
    // A client that sends half a request head and then nothing: it holds its connection
    // until the grace period is over.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The server has certainly accepted it once it answers a later connection.
    assert_eq!(
        request(addr, Method::GET, "/healthz").await.status,
        StatusCode::OK
    );

    admin.stop().await;

    // The stalled connection was closed (EOF or reset, no response), and the port is shut.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(TEST_DEADLINE, stalled.read_to_end(&mut buf))
        .await
        .expect("the stalled connection was left open");
    assert!(read.is_err() || buf.is_empty(), "unexpected reply {buf:?}");
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn serve_ends_on_shutdown_without_connections() {
    let admin = Admin::start().await;
    admin.stop().await;
}
