//! One stream from the cloud: check it, serve it from the kubelet, log how it went.
//!
//! Every stream gets its own task (owned by the edge's handler tracker) running
//! [`Connector::serve`]. The request is classified ([`crate::route`]), checked against the
//! per-operation switches, and handed to [`crate::upgrade`] (exec, attach, port-forward: raw
//! bytes) or [`crate::plain`] (logs, stats, metrics: one HTTP exchange). Whatever happens, the
//! cloud gets an answer (an open result, a refusal or a reset) and one info line records the
//! stream's operation, status, bytes each way and duration.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use stream_proto::{ConnectRequest, GoUrl, OpenResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, field, info, info_span, warn};
use tunnel_session::{Dialect, IncomingStream, Stream};

use crate::config::Operations;
use crate::error::Error;
use crate::kubelet::Kubelet;
use crate::route::{self, Operation, Refusal};
use crate::{plain, upgrade};

/// After our tether/2 FIN, how long we wait for the cloud to end its direction before the
/// stream is dropped (see [`finish`]).
const FIN_LINGER: Duration = Duration::from_secs(5);

/// How a stream ended, for its final log line.
#[derive(Debug)]
pub(crate) enum Finish {
    /// Served to the end.
    Completed,
    /// Refused before the kubelet answered; the cloud was told why.
    Refused(Refusal),
    /// The cloud gave up on the stream (the client went away); the kubelet request was
    /// dropped.
    CloudClosed,
}

/// What one stream did, filled in as it goes so that it survives cancellation.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// The kubelet's status, or the refusal's.
    pub(crate) status: Option<u16>,
    /// Bytes sent to the kubelet (request body or raw upstream bytes).
    pub(crate) to_kubelet: u64,
    /// Bytes sent to the cloud (response body or raw downstream bytes).
    pub(crate) to_cloud: u64,
}

/// Serves streams for one node from its kubelet. Shared by every handler task.
#[derive(Debug)]
pub(crate) struct Connector {
    node: String,
    kubelet: Kubelet,
    operations: Operations,
    /// Permits to compress a body, if compression is on.
    encoders: Option<Arc<tokio::sync::Semaphore>>,
}

impl Connector {
    pub(crate) fn new(
        node: String,
        kubelet: Kubelet,
        operations: Operations,
        compress_bodies: bool,
    ) -> Connector {
        Connector {
            node,
            kubelet,
            operations,
            encoders: compress_bodies
                .then(|| Arc::new(tokio::sync::Semaphore::new(crate::config::MAX_ENCODERS))),
        }
    }

    /// Serves one stream to its end, or until `cut` (the end of the shutdown grace).
    pub(crate) async fn serve(self: Arc<Self>, incoming: IncomingStream, cut: CancellationToken) {
        let IncomingStream { request, stream } = incoming;
        let span = info_span!(
            "stream",
            node = %self.node,
            connect_id = %stream.id(),
            kind = %stream.kind(),
            dialect = %stream.dialect(),
            operation = field::Empty,
        );
        async move {
            let started = Instant::now();
            let mut tally = Tally::default();
            let result = tokio::select! {
                r = self.handle(&request, stream, &mut tally) => Some(r),
                () = cut.cancelled() => None,
            };
            let Tally {
                status,
                to_kubelet,
                to_cloud,
            } = tally;
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match result {
                Some(Ok(Finish::Completed)) => {
                    info!(status, to_kubelet, to_cloud, duration_ms, "stream served");
                }
                Some(Ok(Finish::CloudClosed)) => info!(
                    status,
                    to_kubelet,
                    to_cloud,
                    duration_ms,
                    "stream closed by the cloud; kubelet request dropped"
                ),
                Some(Ok(Finish::Refused(refusal))) => info!(
                    status = refusal.status,
                    reason = %refusal.reason,
                    duration_ms,
                    "stream refused"
                ),
                Some(Err(error)) => warn!(
                    status,
                    to_kubelet,
                    to_cloud,
                    duration_ms,
                    %error,
                    "stream failed"
                ),
                None => info!(
                    status,
                    to_kubelet, to_cloud, duration_ms, "stream cut: the edge is shutting down"
                ),
            }
        }
        .instrument(span)
        .await;
    }

    async fn handle(
        &self,
        request: &ConnectRequest,
        mut stream: Stream,
        tally: &mut Tally,
    ) -> Result<Finish, Error> {
        let method = request.method.as_deref();
        let operation = match route::classify(stream.kind(), method, &request.url.path) {
            Ok(operation) => operation,
            Err(refusal) => return refuse(&mut stream, tally, refusal).await,
        };
        Span::current().record("operation", operation.as_str());
        if !self.operations.allows(operation) {
            let reason = format!("{operation} is disabled on node {}", self.node);
            return refuse(&mut stream, tally, Refusal::new(403, reason)).await;
        }
        let target = match request_target(&request.url) {
            Ok(target) => target,
            Err(refusal) => return refuse(&mut stream, tally, refusal).await,
        };
        match operation {
            Operation::Exec | Operation::Attach | Operation::PortForward => {
                upgrade::serve(&self.kubelet, request, &target, stream, tally).await
            }
            Operation::Logs | Operation::Metrics => {
                let encoders = self.encoders.as_ref();
                plain::serve(&self.kubelet, request, &target, stream, tally, encoders).await
            }
        }
    }
}

/// The path and query to send to the kubelet (Go's `URL.RequestURI()`), if it can go on a
/// request line.
///
/// An opaque URL would make `RequestURI` return the opaque text instead of the path that was
/// classified, so it is refused, as is anything that is not visible ASCII.
fn request_target(url: &GoUrl) -> Result<String, Refusal> {
    if !url.opaque.is_empty() {
        return Err(Refusal::new(400, "opaque URLs are not kubelet requests"));
    }
    let target = url.request_uri();
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::new(
            400,
            format!("request target {target:?} cannot go on an HTTP request line"),
        ));
    }
    Ok(target)
}

/// Refuses a stream: tells the cloud the status and reason, and ends the stream.
///
/// With KubeEdge there is no open result; `send_open_result` closes the stream with
/// REMOVE_CONNECT instead, so a stock cloud at least stops waiting.
pub(crate) async fn refuse(
    stream: &mut Stream,
    tally: &mut Tally,
    refusal: Refusal,
) -> Result<Finish, Error> {
    tally.status = Some(refusal.status);
    stream
        .send_open_result(OpenResult::Refused {
            status: refusal.status,
            reason: refusal.reason.clone(),
        })
        .await?;
    finish(stream).await.map_err(Error::Stream)?;
    Ok(Finish::Refused(refusal))
}

/// Ends our direction of the stream (tether/2 FIN, KubeEdge REMOVE_CONNECT) and lets the
/// cloud end its own.
///
/// With tether/2, dropping a stream the peer has not finished resets it, and tunnel-session
/// queues a reset ahead of stream data, so an early drop could overtake our last DATA or the
/// open result. We therefore wait, at most [`FIN_LINGER`], for the cloud's FIN or reset, which
/// it sends as soon as it has read everything. With KubeEdge, REMOVE_CONNECT ends the stream
/// outright and nothing more comes.
pub(crate) async fn finish(stream: &mut Stream) -> io::Result<()> {
    stream.shutdown().await?;
    if stream.dialect() == Dialect::Tether2 {
        let mut scratch = [0u8; 1024];
        let drain = async {
            while let Ok(n) = stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        // Running out of time only means the reset on drop comes later; the data went first.
        let _ = tokio::time::timeout(FIN_LINGER, drain).await;
    }
    Ok(())
}

/// Resolves when the cloud has given up on a plain request: KubeEdge REMOVE_CONNECT (end of
/// file), tether/2 RESET or a dead session (an error).
///
/// A tether/2 FIN only ends the cloud's direction (after a request body, say), so after one
/// this never resolves. Bytes the cloud sends after its request are discarded.
pub(crate) async fn cloud_gone(stream: &mut Stream) {
    let mut scratch = [0u8; 1024];
    loop {
        match stream.read(&mut scratch).await {
            // A FIN only ends the request body; the cloud gives up with a RESET, which
            // `peer_gone` sees even though reads already returned end-of-file.
            Ok(0) if stream.dialect() == Dialect::Tether2 => return stream.peer_gone().await,
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets() {
        let url =
            |target: &str| GoUrl::from_request_target("http", "127.0.0.1:10350", target).unwrap();
        assert_eq!(
            request_target(&url("/containerLogs/ns/pod/c?follow=true&tailLines=10")),
            Ok("/containerLogs/ns/pod/c?follow=true&tailLines=10".to_owned())
        );
        assert_eq!(
            request_target(&url(
                "/exec/ns/pod/c?command=sh&command=-c&command=echo%20hi"
            )),
            Ok("/exec/ns/pod/c?command=sh&command=-c&command=echo%20hi".to_owned())
        );
        // Go escaping of the decoded path (a space becomes %20).
        let mut spaced = url("/stats/summary");
        spaced.path = "/stats/a b".into();
        assert_eq!(request_target(&spaced), Ok("/stats/a%20b".to_owned()));

        let mut opaque = url("/metrics");
        opaque.opaque = "/pods".into();
        assert_eq!(request_target(&opaque).map_err(|r| r.status), Err(400));

        let mut raw = url("/metrics");
        raw.raw_query = "a=b c".into();
        assert_eq!(request_target(&raw).map_err(|r| r.status), Err(400));
    }
}
