//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`.
//!
//! Plain HTTP/1.1 without TLS: it listens wherever the operator binds it, typically
//! loopback or a pod port that only Prometheus and the kubelet's probes reach, and it
//! serves nothing secret. Requests are tiny and answered from memory, so the server keeps
//! tight limits ([`HEADER_READ_TIMEOUT`], [`MAX_CONNECTIONS`]) and ends quickly on
//! shutdown ([`SHUTDOWN_GRACE`]).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::{Error, Metrics, Readiness};

/// A client must send its whole request head within this, or the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 64;
/// On shutdown, how long open connections may finish their current request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// The largest request head we buffer (hyper's minimum is 8 KiB).
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// After a transient accept failure (out of file descriptors, say), wait this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The content type of the OpenMetrics text format that [`Metrics::encode`] writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
///
/// - `GET /metrics`: 200, every family of `metrics` as OpenMetrics text.
/// - `GET /healthz`: 200 `ok` while the process runs.
/// - `GET /readyz`: 200 `ready` or 503 `not ready`, from `readiness`, followed by its detail
///   line when it has one.
/// - `HEAD` is answered like `GET` without a body; other methods get 405, other paths 404.
///
/// On shutdown it stops accepting at once, lets open connections finish their current
/// request for up to [`SHUTDOWN_GRACE`], then drops the rest; it returns once every
/// connection task has ended. It fails only if the listener breaks for good.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin server listening");
    }
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Cancelled when the grace period is over: connections still open are dropped.
    let force = CancellationToken::new();
    let endpoints = Endpoints { metrics, readiness };
    let result = loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed; treat it as the end anyway.
                Err(_) => break Ok(()),
            },
        };
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_fatal(&e) => break Err(Error::Listener(e)),
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break Ok(()),
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let endpoints = endpoints.clone();
        let shutdown = shutdown.clone();
        let force = force.clone();
        tracker.spawn(async move {
            connection(tcp, peer, endpoints, shutdown, force).await;
            drop(permit);
        });
    };
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        debug!(
            connections = tracker.len(),
            "admin connections outlived the grace period; closing them"
        );
        force.cancel();
        tracker.wait().await;
    }
    info!("admin server stopped");
    result
}

/// Accept errors that retrying cannot fix: the socket is not (or no longer) listening.
/// Everything else (aborted handshakes, descriptor exhaustion, …) is transient.
fn is_fatal(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidInput
}

/// Serves one admin connection until it ends, or until shutdown and then the grace
/// period are over.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    endpoints: Endpoints,
    shutdown: CancellationToken,
    force: CancellationToken,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let response = endpoints.respond(&req);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the request in flight (if any), then close.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                () = force.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "admin connection ended with an error");
    }
}

/// What the endpoints answer from.
#[derive(Clone)]
struct Endpoints {
    metrics: Metrics,
    readiness: Readiness,
}

impl Endpoints {
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let read = req.method() == Method::GET || req.method() == Method::HEAD;
        match req.uri().path() {
            "/metrics" | "/healthz" | "/readyz" if !read => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            }
            "/metrics" => self.metrics_page(),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let (status, verdict) = if self.readiness.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                };
                match self.readiness.detail() {
                    None => text(
                        status,
                        if status == StatusCode::OK {
                            "ready\n"
                        } else {
                            "not ready\n"
                        },
                    ),
                    Some(detail) => {
                        let mut response = text(status, "");
                        *response.body_mut() =
                            Full::new(Bytes::from(format!("{verdict}\n{detail}\n")));
                        response
                    }
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Endpoints {
    /// `/metrics`: every family, with the runtime's task count read now.
    fn metrics_page(&self) -> Response<Full<Bytes>> {
        self.metrics.sample_runtime();
        match self.metrics.try_encode() {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
                );
                response
            }
            Err(e) => {
                warn!(error = %e, "metrics could not be encoded");
                text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n")
            }
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(TEXT_CONTENT_TYPE),
    );
    response
}
