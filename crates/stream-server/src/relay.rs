//! One relay for every kubelet operation (design decision 5).
//!
//! Every request becomes: find the node's session, open a stream carrying the request head,
//! relay bytes. Upgrades (exec, attach, port-forward; SPDY or WebSocket alike) come back as
//! the kubelet's raw response: we parse its head (bounded, with `httparse`), answer the
//! client with the kubelet's own status and headers — 101 included — write whatever followed
//! the head, and bridge both ways. Plain requests (logs, stats, metrics) come back as the
//! kubelet's status and headers (tether/2 open result) and the body, unchanged.
//! The tunnel never parses SPDY or WebSocket.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use stream_proto::{ConnectRequest, GoUrl, OpenResult, canonical_header_key};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, debug, info_span, warn};
use tunnel_session::{Dialect, SessionDirectory, Stream};

use crate::body::TunnelBody;
use crate::forward::{Forwarding, HOP_HEADER, NODE_HEADER};
use crate::identity::ClientIdentity;
use crate::observe::{RelayObserver, StreamRecord};
use crate::pods::PodResolver;
use crate::resolve::{Lookup, Target, resolve};
use crate::route::{NoRoute, Operation, classify, connect_kind};

/// The response body type of the stream server.
pub type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

/// The kubelet address KubeEdge writes into every connect descriptor (spec 2.8). The edge
/// dials its own configured kubelet whatever this says; stock edges use it as is.
pub const KUBEEDGE_KUBELET_HOST: &str = "127.0.0.1:10350";
/// Largest kubelet response head we accept through the tunnel.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest error body we buffer when the kubelet sends one chunked on an upgrade path.
const MAX_CHUNKED_ERROR_BODY: usize = 64 * 1024;
/// Headers that describe one hop and are never copied between hops (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// What the server knows about the connection a request arrived on.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionInfo {
    /// Who the client proved to be in the TLS handshake.
    pub(crate) identity: ClientIdentity,
    /// The node the connection was opened for (an egress CONNECT target), if any.
    pub(crate) pinned_node: Option<String>,
}

/// What a relay needs from the server.
pub(crate) struct Relay {
    pub(crate) directory: Arc<dyn SessionDirectory>,
    pub(crate) pods: Option<Arc<dyn PodResolver>>,
    /// Set when other replicas may hold nodes: how to reach them.
    pub(crate) forwarding: Option<Forwarding>,
    pub(crate) observer: Arc<dyn RelayObserver>,
    pub(crate) response_timeout: Duration,
    pub(crate) compression: crate::server::BodyCompression,
    /// One permit per compressed body being decoded.
    pub(crate) decoders: Arc<tokio::sync::Semaphore>,
    pub(crate) tracker: tokio_util::task::TaskTracker,
    /// Cancelled when the drain grace is over: upgraded bridges end then.
    pub(crate) cut: tokio_util::sync::CancellationToken,
}

impl Relay {
    /// Serves one kubelet request that arrived on a connection from `client`.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        client: &ConnectionInfo,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let (op, pod) = match classify(req.method(), req.uri().path()) {
            Ok(found) => found,
            Err(NoRoute::NotFound) => return text(StatusCode::NOT_FOUND, "404 page not found"),
            Err(NoRoute::MethodNotAllowed) => {
                return text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
            }
        };
        if req.headers().contains_key(HOP_HEADER) {
            return self.handle_forwarded(req, client, op, started).await;
        }
        let lookup = Lookup {
            sessions: self.directory.as_ref(),
            replicas: self.forwarding.as_ref().map(|f| f.directory.as_ref()),
        };
        let target = resolve(
            &req,
            pod.as_ref(),
            client.pinned_node.as_deref(),
            &lookup,
            self.pods.as_deref(),
            self.observer.as_ref(),
        )
        .await;
        match target {
            Ok(Target::Local(session)) => self.relay(req, session, op, started).await,
            Ok(Target::Remote(holder)) => match &self.forwarding {
                Some(forwarding) => self.forward(forwarding, req, holder, op).await,
                // A remote target comes only from the forwarding directory.
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "forwarding is not configured",
                ),
            },
            Err(unresolved) => {
                self.observer.stream_failed(op, unresolved.reason);
                text(unresolved.status, &unresolved.message)
            }
        }
    }

    /// A request another replica forwarded here: only a replica may send one, and it is
    /// served from this process's sessions or refused, never forwarded again.
    async fn handle_forwarded(
        &self,
        req: Request<Incoming>,
        client: &ConnectionInfo,
        op: Operation,
        started: Instant,
    ) -> Response<ResponseBody> {
        let Some(from) = client.identity.replica.as_deref() else {
            self.observer.forwarded("forbidden");
            self.observer.stream_failed(op, "forbidden");
            return text(
                StatusCode::FORBIDDEN,
                &format!(
                    "only a cloudstream replica (client certificate CN {}<id>) may send {HOP_HEADER}",
                    crate::identity::REPLICA_CN_PREFIX
                ),
            );
        };
        let Some(node) = req
            .headers()
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
        else {
            self.observer.stream_failed(op, "bad_request");
            return text(
                StatusCode::BAD_REQUEST,
                &format!("a forwarded request needs {NODE_HEADER}"),
            );
        };
        match self.directory.find(tunnel_session::NodeKey::Name(&node)) {
            Some(session) => {
                self.observer.forwarded("served");
                self.relay(req, session, op, started).await
            }
            None => {
                self.observer.forwarded("gone");
                self.observer.stream_failed(op, "no_session");
                let me = self
                    .forwarding
                    .as_ref()
                    .map_or("this replica", |f| f.replica_id.as_str());
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "replica {from} forwarded a request for node {node} to cloudstream replica {me}, \
                         which holds no session for it (the node moved or left; requests are forwarded once only)"
                    ),
                )
            }
        }
    }

    /// Relays a request to a node whose session this process holds.
    async fn relay(
        &self,
        req: Request<Incoming>,
        session: tunnel_session::Session,
        op: Operation,
        started: Instant,
    ) -> Response<ResponseBody> {
        let span = info_span!("request", node = %session.node().name, op = op.as_str(), connect_id = tracing::field::Empty);
        async move {
            let mut request = connect_request(&req, op, session.dialect());
            // Offer to decode a compressed body (the edge may decline); a permit bounds the
            // decoders held at once.
            let decoder = (!op.is_upgrade() && self.compresses(&session))
                .then(|| self.decoders.clone().try_acquire_owned().ok())
                .flatten();
            if decoder.is_some()
                && let Some(header) = request.header.as_mut()
            {
                header.insert(
                    stream_compress::ACCEPT_HEADER.to_owned(),
                    vec![stream_compress::ENCODING.to_owned()],
                );
            }
            let stream = match session.open(connect_kind(op), request).await {
                Ok(s) => s,
                Err(e) => {
                    self.observer.stream_failed(op, "open_failed");
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("cannot open a stream to node {}: {e}", session.node().name),
                    );
                }
            };
            tracing::Span::current().record("connect_id", stream.id().0);
            debug!(method = %req.method(), path = %req.uri().path(), "relaying");
            let (response, relayed) = if op.is_upgrade() {
                self.upgrade(req, stream, op, started).await
            } else {
                self.plain(req, stream, op, started, decoder).await
            };
            if !relayed {
                self.observer
                    .stream_failed(op, failure_reason(response.status()));
            }
            response
        }
        .instrument(span)
        .await
    }

    /// Whether plain bodies from this session's node are to be compressed.
    fn compresses(&self, session: &tunnel_session::Session) -> bool {
        use crate::server::{AUTO_COMPRESSION_MIN_RTT, BodyCompression};
        session.dialect() == Dialect::Tether2
            && match self.compression {
                BodyCompression::Off => false,
                BodyCompression::On => true,
                BodyCompression::Auto => session
                    .stats()
                    .min_rtt()
                    .is_some_and(|rtt| rtt >= AUTO_COMPRESSION_MIN_RTT),
            }
    }

    fn record(&self, op: Operation, started: Instant) -> Arc<StreamRecord> {
        Arc::new(StreamRecord::new(self.observer.clone(), op, started))
    }

    /// Logs, stats and metrics. Returns the response and whether the kubelet's answer is
    /// being relayed (as opposed to an error of ours).
    async fn plain(
        &self,
        req: Request<Incoming>,
        mut stream: Stream,
        op: Operation,
        started: Instant,
        decoder: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> (Response<ResponseBody>, bool) {
        match stream.dialect() {
            Dialect::Tether2 => {
                // Send the request body (a POST to /stats/summary has one), then half-close.
                let body = req.into_body();
                let sent = tokio::time::timeout(self.response_timeout, async {
                    let mut body = body;
                    let mut sent = 0u64;
                    while let Some(frame) = body.frame().await {
                        let frame = frame.map_err(io::Error::other)?;
                        if let Ok(data) = frame.into_data() {
                            stream.write_all(&data).await?;
                            sent += data.len() as u64;
                        }
                    }
                    stream.shutdown().await?;
                    Ok::<_, io::Error>(sent)
                })
                .await;
                let sent = match sent {
                    Ok(Ok(sent)) => sent,
                    Ok(Err(e)) => {
                        // The edge may have refused before reading the body (its answer comes
                        // before its close, in order): report its reason, not our write error.
                        if let Ok(Some(refusal @ OpenResult::Refused { .. })) =
                            stream.open_result_within(Duration::ZERO).await
                        {
                            return (open_failure(Ok(Some(refusal))), false);
                        }
                        return (
                            bad_gateway(&format!("sending the request body: {e}")),
                            false,
                        );
                    }
                    Err(_) => return (gateway_timeout("sending the request body"), false),
                };
                match stream.open_result_within(self.response_timeout).await {
                    Ok(Some(OpenResult::Response {
                        status,
                        mut headers,
                    })) => {
                        let status =
                            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                        let encoded = headers
                            .remove(stream_compress::ENCODING_HEADER)
                            .is_some_and(|v| v.iter().any(|v| v == stream_compress::ENCODING));
                        let decode = match (encoded, decoder) {
                            (false, _) => None,
                            (true, Some(permit)) => match stream_compress::Decoder::new() {
                                Ok(d) => Some((d, permit)),
                                Err(e) => return (bad_gateway(&e.to_string()), false),
                            },
                            (true, None) => {
                                return (
                                    bad_gateway("the edge compressed a body it was not offered to"),
                                    false,
                                );
                            }
                        };
                        let record = self.record(op, started);
                        record.add_to_edge(sent);
                        let mut response = Response::new(
                            TunnelBody::new(Bytes::new(), stream, None, record)
                                .decoding(decode)
                                .boxed_unsync(),
                        );
                        *response.status_mut() = status;
                        copy_headers(
                            headers.iter().flat_map(|(k, vs)| {
                                vs.iter().map(move |v| (k.as_str(), v.as_bytes()))
                            }),
                            response.headers_mut(),
                        );
                        (response, true)
                    }
                    other => (open_failure(other), false),
                }
            }
            Dialect::KubeEdge => {
                // A stock edge sends the body and nothing about the kubelet's status, so, as
                // stock cloudcore does, answer 200 and stream what comes (docs/protocol.md).
                let record = self.record(op, started);
                let mut response = Response::new(
                    TunnelBody::new(Bytes::new(), stream, None, record).boxed_unsync(),
                );
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                (response, true)
            }
        }
    }

    /// Exec, attach and port-forward: relay the kubelet's own answer, then bridge.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        mut stream: Stream,
        op: Operation,
        started: Instant,
    ) -> (Response<ResponseBody>, bool) {
        if stream.dialect() == Dialect::Tether2 {
            match stream.open_result().await {
                Ok(Some(OpenResult::Raw)) => {}
                other => return (open_failure(other), false),
            }
        }
        let head = match tokio::time::timeout(self.response_timeout, read_head(&mut stream)).await {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => return (bad_gateway(&e), false),
            Err(_) => return (gateway_timeout("waiting for the kubelet's response"), false),
        };
        let mut response_headers = HeaderMap::new();
        copy_headers(
            head.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            &mut response_headers,
        );
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            if req.version() != Version::HTTP_11 {
                let msg = "protocol upgrades need HTTP/1.1 (this request came over HTTP/2)";
                return (text(StatusCode::BAD_REQUEST, msg), false);
            }
            // Connection and Upgrade are hop-by-hop, but a 101 must carry them: the
            // kubelet's values pass through.
            for name in [header::CONNECTION, header::UPGRADE] {
                for value in head
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name.as_str()))
                {
                    if let Ok(v) = HeaderValue::from_bytes(&value.1) {
                        response_headers.append(name.clone(), v);
                    }
                }
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            let leftover = head.rest;
            let record = self.record(op, started);
            let cut = self.cut.clone();
            self.tracker.spawn(
                async move {
                    let upgraded = match on_upgrade.await {
                        Ok(u) => u,
                        Err(e) => {
                            warn!(error = %e, "client upgrade did not complete");
                            return;
                        }
                    };
                    let mut client = hyper_util::rt::TokioIo::new(upgraded);
                    record.add_from_edge(leftover.len() as u64);
                    let bridge = async {
                        if !leftover.is_empty() {
                            client.write_all(&leftover).await?;
                        }
                        // Received data goes to the client in the buffers it arrived in.
                        tunnel_session::pump::bridge(&mut stream, &mut client).await
                    };
                    let result = tokio::select! {
                        r = bridge => r,
                        () = cut.cancelled() => Err(io::Error::new(
                            io::ErrorKind::Interrupted,
                            "the stream server's drain grace is over",
                        )),
                    };
                    match result {
                        Ok((up, down)) => {
                            record.add_to_edge(up);
                            record.add_from_edge(down);
                        }
                        Err(e) => {
                            record.mark_cut();
                            debug!(error = %e, "bridge ended with an error");
                        }
                    }
                }
                .in_current_span(),
            );
            let mut response = Response::new(
                Full::new(Bytes::new())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            );
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *response.headers_mut() = response_headers;
            return (response, true);
        }
        // Anything else (400, 403, 404, 500 "Upgrade request required") is relayed as an
        // ordinary response, body included.
        let chunked = head.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding")
                && String::from_utf8_lossy(v)
                    .to_ascii_lowercase()
                    .contains("chunked")
        });
        let record = self.record(op, started);
        let body = if chunked {
            match read_chunked(head.rest, &mut stream).await {
                Ok(body) => {
                    record.add_from_edge(body.len() as u64);
                    Full::new(body).map_err(|e| match e {}).boxed_unsync()
                }
                Err(e) => return (bad_gateway(&e), false),
            }
        } else {
            let length = head
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
            TunnelBody::new(head.rest, stream, length, record).boxed_unsync()
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = response_headers;
        (response, true)
    }
}

/// The response for an edge that did not open the stream as asked.
fn open_failure(result: tunnel_session::Result<Option<OpenResult>>) -> Response<ResponseBody> {
    match result {
        Ok(Some(OpenResult::Refused { status, reason })) => refused(status, &reason),
        Ok(Some(OpenResult::Raw)) => {
            bad_gateway("the edge answered a plain request with a raw connection")
        }
        Ok(Some(OpenResult::Response { .. })) => {
            bad_gateway("the edge did not open a raw connection")
        }
        Ok(None) => bad_gateway("the edge gave no answer"),
        Err(tunnel_session::Error::Timeout(what)) => gateway_timeout(what),
        Err(e) => bad_gateway(&e.to_string()),
    }
}

/// A short fixed word for a failed request, for metrics.
fn failure_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "timeout",
        _ => "other",
    }
}

/// Builds the KubeEdge connect descriptor for a request (spec 2.8): the URL as received with
/// scheme and host rewritten, the headers as Go's server would show them (no `Host`), and the
/// method for upgrades (and, with tether/2, always).
fn connect_request<B>(req: &Request<B>, op: Operation, dialect: Dialect) -> ConnectRequest {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let url =
        GoUrl::from_request_target("http", KUBEEDGE_KUBELET_HOST, &target).unwrap_or_else(|_| {
            GoUrl {
                scheme: "http".into(),
                host: KUBEEDGE_KUBELET_HOST.into(),
                path: req.uri().path().to_owned(),
                raw_query: req.uri().query().unwrap_or_default().to_owned(),
                ..GoUrl::default()
            }
        });
    let mut header = stream_proto::HeaderMap::new();
    for (name, value) in req.headers() {
        // Our own forwarding headers describe the hop between replicas, not the request.
        if *name == header::HOST || name.as_str().starts_with("x-tether-") {
            continue;
        }
        header
            .entry(canonical_header_key(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let method = (op.is_upgrade() || dialect == Dialect::Tether2).then(|| req.method().to_string());
    ConnectRequest {
        mess_id: 0,
        url,
        header: Some(header),
        method,
    }
}

/// Entry points for the fuzz targets, re-exported as `stream_server::fuzzing`.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

#[cfg(test)]
mod tests;

/// A parsed kubelet response head and the bytes that followed it.
struct Head {
    status: StatusCode,
    headers: Vec<(String, Vec<u8>)>,
    rest: Bytes,
}

async fn read_head<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Head, String> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed
                    .code
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| "the kubelet's response has no valid status".to_owned())?;
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect();
                buf.advance(len);
                return Ok(Head {
                    status,
                    headers,
                    rest: buf.freeze(),
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("the kubelet's response head is not HTTP: {e}")),
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(format!(
                "the kubelet's response head exceeds {MAX_RESPONSE_HEAD} bytes"
            ));
        }
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err("the kubelet closed the connection without a response".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the kubelet's response: {e}")),
        }
    }
}

/// Reads a small chunked body to its end and returns it decoded.
async fn read_chunked<R: AsyncRead + Unpin>(first: Bytes, stream: &mut R) -> Result<Bytes, String> {
    let mut raw = BytesMut::from(&first[..]);
    let mut body = BytesMut::new();
    loop {
        match httparse::parse_chunk_size(&raw) {
            Ok(httparse::Status::Complete((start, size))) => {
                let size = usize::try_from(size).map_err(|_| "chunk too large".to_owned())?;
                if size == 0 {
                    return Ok(body.freeze());
                }
                // `body` never exceeds the bound, so this cannot underflow; `body.len() + size`
                // could overflow on a chunk size near u64::MAX (found by the fuzzer).
                if size > MAX_CHUNKED_ERROR_BODY - body.len() {
                    return Err("the kubelet's error body is too large".into());
                }
                if raw.len() >= start + size + 2 {
                    body.extend_from_slice(&raw[start..start + size]);
                    raw.advance(start + size + 2);
                    continue;
                }
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err("bad chunked encoding from the kubelet".into()),
        }
        if raw.len() > MAX_CHUNKED_ERROR_BODY + 64 {
            return Err("the kubelet's error body is too large".into());
        }
        match stream.read_buf(&mut raw).await {
            Ok(0) => return Ok(body.freeze()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the kubelet's body: {e}")),
        }
    }
}

/// Copies end-to-end headers; hop-by-hop ones stay behind.
pub(crate) fn copy_headers<'a>(
    from: impl Iterator<Item = (&'a str, &'a [u8])>,
    to: &mut HeaderMap,
) {
    for (name, value) in from {
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || name.eq_ignore_ascii_case("upgrade")
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            to.append(name, value);
        }
    }
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{body}\n")))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn refused(status: u16, reason: &str) -> Response<ResponseBody> {
    text(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        reason,
    )
}

fn bad_gateway(reason: &str) -> Response<ResponseBody> {
    text(StatusCode::BAD_GATEWAY, reason)
}

fn gateway_timeout(what: &str) -> Response<ResponseBody> {
    text(StatusCode::GATEWAY_TIMEOUT, &format!("timed out {what}"))
}
