//! SPDY/3.1 exec, attach and port-forward of the test kubelet, the way the kubelet's CRI
//! streaming server (`k8s.io/kubelet/pkg/cri/streaming`) serves them to kube-apiserver.
//!
//! [`super::stream`] validates the request and hands SPDY upgrades here. The upgraded
//! connection is a [`spdy::Connection`] in the server role; its driver and the session run in
//! one task of the kubelet's tracker and end together. The rules (negotiation, which streams
//! are awaited, how a session ends) are documented in [`super::stream`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt as _, stream::FuturesUnordered};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use spdy::{Config, Connection, IncomingStream, Stream};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};
use tracing::debug;

use super::{
    Body, Container, Shared, full,
    process::{self, STDERR, STDOUT, StreamOpts},
    stream::{header_tokens, parse_resize, upgrade_protocol},
};

/// Stream protocols the kubelet accepts for exec/attach over SPDY, most preferred first.
pub const EXEC_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// Stream protocols the kubelet accepts for port-forward over SPDY.
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";

/// Buffer of the byte pumps (Go's `io.Copy` uses 32 KiB).
const PUMP_BUF: usize = 32 * 1024;

/// `httpstream.Handshake` followed by the SPDY upgrader's header check: the `101` to send and
/// the negotiated protocol, or the error response.
fn handshake(
    req: &Request<Incoming>,
    supported: &[&'static str],
) -> Result<(Response<Body>, String), Box<Response<Body>>> {
    let offered = header_tokens(
        req.headers(),
        header::HeaderName::from_static(PROTOCOL_HEADER),
    );
    if offered.is_empty() {
        return Err(Box::new(full(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required",
        )));
    }
    // The client's order wins, like apimachinery's negotiateProtocol.
    let Some(chosen) = offered.iter().find(|p| supported.contains(&p.as_str())) else {
        let mut resp = full(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports [{}], server accepts [{}]",
                offered.join(" "),
                supported.join(" ")
            ),
        );
        for p in supported {
            resp.headers_mut()
                .append(ACCEPTED_HEADER, HeaderValue::from_static(p));
        }
        return Err(Box::new(resp));
    };
    let spdy = upgrade_protocol(req.headers())
        .is_some_and(|p| p.to_ascii_lowercase().contains("spdy/3.1"));
    if !spdy {
        return Err(Box::new(full(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        )));
    }
    let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(chosen) {
        h.insert(PROTOCOL_HEADER, v);
    }
    Ok((resp, chosen.clone()))
}

/// Serves an exec/attach SPDY upgrade whose options were validated already.
pub(super) fn remote_command(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    container: Arc<Container>,
    command: Option<Vec<String>>,
    opts: StreamOpts,
) -> Response<Body> {
    let (resp, protocol) = match handshake(&req, EXEC_PROTOCOLS) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let on = hyper::upgrade::on(&mut req);
    let cancel = shared.cancel.clone();
    let guard = shared.active_guard(true);
    let creation_timeout = shared.stream_creation_timeout;
    shared.tracker.spawn(async move {
        let _guard = guard;
        let Ok(upgraded) = on.await else { return };
        let (conn, driver) = Connection::server(TokioIo::new(upgraded), Config::default());
        let session = exec_session(
            conn,
            Version::of(&protocol),
            container,
            command,
            opts,
            creation_timeout,
        );
        tokio::select! {
            _ = async { tokio::join!(driver, session) } => {}
            () = cancel.cancelled() => {}
        }
    });
    resp
}

/// The remote command protocol versions, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    V1,
    V2,
    V3,
    V4,
}

impl Version {
    fn of(protocol: &str) -> Self {
        match protocol {
            "v4.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            "v2.channel.k8s.io" => Version::V2,
            _ => Version::V1,
        }
    }
}

#[derive(Default)]
struct ExecStreams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
    /// Streams of a type this version does not know: replied to and otherwise ignored, like
    /// the kubelet does.
    ignored: Vec<Stream>,
}

/// Accepts streams until `expected` known ones arrived (the kubelet's `waitForStreams`).
async fn wait_for_streams(
    conn: &Connection,
    version: Version,
    expected: usize,
) -> Option<ExecStreams> {
    let mut s = ExecStreams::default();
    let mut received = 0;
    while received < expected {
        let incoming = conn.accept().await?;
        let kind = incoming
            .headers()
            .get("streamtype")
            .unwrap_or("")
            .to_owned();
        let stream = incoming.accept();
        let slot = match kind.as_str() {
            "error" => &mut s.error,
            "stdin" => &mut s.stdin,
            "stdout" => &mut s.stdout,
            "stderr" => &mut s.stderr,
            "resize" if version >= Version::V3 => &mut s.resize,
            other => {
                debug!(stream_type = other, "test kubelet: unexpected stream type");
                s.ignored.push(stream);
                continue;
            }
        };
        *slot = Some(stream);
        received += 1;
    }
    Some(s)
}

async fn exec_session(
    conn: Connection,
    version: Version,
    container: Arc<Container>,
    command: Option<Vec<String>>,
    opts: StreamOpts,
    creation_timeout: Duration,
) {
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && version >= Version::V3);
    let streams =
        tokio::time::timeout(creation_timeout, wait_for_streams(&conn, version, expected)).await;
    let Ok(Some(mut streams)) = streams else {
        // The kubelet logs "timed out waiting for client to create streams" and gives up; here
        // the connection is closed too, so that the client fails instead of hanging.
        debug!("test kubelet: SPDY exec streams did not all arrive");
        conn.close();
        return;
    };
    if version == Version::V1 {
        // What 1.0 kubelets did and the v1 handler keeps doing: the error stream is reset as
        // soon as the streams are set up, and the server's side of stdin is closed.
        if let Some(e) = streams.error.take() {
            e.reset();
        }
        if let Some(stdin) = streams.stdin.as_mut() {
            let _ = stdin.shutdown().await;
        }
    }
    let argv = command.clone().unwrap_or_default();
    let (io, process) = process::start(container, command, opts);
    let process::ProcessIo {
        stdin: stdin_tx,
        resize: resize_tx,
        out: mut out_rx,
        exit: exit_rx,
    } = io;

    let stdin_pump = {
        let stdin = streams.stdin.as_mut();
        async move {
            let (Some(stream), Some(tx)) = (stdin, stdin_tx) else {
                return;
            };
            let mut buf = vec![0u8; PUMP_BUF];
            // EOF is the client's FIN on the stdin stream; an error is the connection ending.
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    };
    // The pumps borrow the resize sender, which so lives as long as the session: without a
    // resize stream (or once it ended) the process keeps running until stdin ends or the
    // client goes away, as over WebSocket.
    let resize_tx = &resize_tx;
    let resize_pump = {
        let resize = streams.resize.as_mut();
        async move {
            let Some(stream) = resize else { return };
            let mut pending = BytesMut::new();
            let mut buf = vec![0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                pending.extend_from_slice(&buf[..n]);
                // A JSON decoder over the stream: take every complete object, keep the rest.
                loop {
                    let mut it = serde_json::Deserializer::from_slice(&pending)
                        .into_iter::<serde_json::Value>();
                    match it.next() {
                        Some(Ok(v)) => {
                            let used = it.byte_offset();
                            let size = parse_resize(v.to_string().as_bytes());
                            let _ = pending.split_to(used);
                            match size {
                                Some(size) => {
                                    if resize_tx.send(size).await.is_err() {
                                        return;
                                    }
                                }
                                // Like Go's json.Decoder into TerminalSize: a wrong shape ends
                                // resize handling.
                                None => return,
                            }
                        }
                        Some(Err(e)) if e.is_eof() => break,
                        Some(Err(_)) => return,
                        None => break,
                    }
                }
                if pending.len() > 4096 {
                    return;
                }
            }
        }
    };
    let error_stream = streams.error.as_mut();
    let stdout_stream = streams.stdout.as_mut();
    let stderr_stream = streams.stderr.as_mut();
    let writer = async move {
        let (mut stdout, mut stderr) = (stdout_stream, stderr_stream);
        while let Some((channel, data)) = out_rx.recv().await {
            let target = match channel {
                STDOUT => stdout.as_deref_mut(),
                STDERR => stderr.as_deref_mut(),
                _ => None,
            };
            if let Some(s) = target
                && s.write_all(&data).await.is_err()
            {
                // The client is gone; dropping the receiver stops the process.
                return;
            }
        }
        if let Ok(exit) = exit_rx.await
            && let Some(status) = process::status_payload(&argv, &exit, version == Version::V4)
            && let Some(e) = error_stream
        {
            let _ = e.write_all(status.as_bytes()).await;
        }
    };
    let pumps = async {
        tokio::join!(stdin_pump, resize_pump);
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = async { tokio::join!(process, writer) } => {}
        () = pumps => {}
        () = conn.closed() => {}
    }
    // Like the kubelet (connection.Close): reset every stream, GOAWAY, close the transport.
    conn.close();
}

/// Serves a port-forward SPDY upgrade.
pub(super) fn port_forward(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    pod: &str,
    uid: Option<&str>,
) -> Response<Body> {
    let (resp, _protocol) = match handshake(&req, PORT_FORWARD_PROTOCOLS) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let on = hyper::upgrade::on(&mut req);
    let cancel = shared.cancel.clone();
    let guard = shared.active_guard(true);
    let creation_timeout = shared.stream_creation_timeout;
    let target = PortForwardTarget {
        pod: pod.to_owned(),
        uid: uid.unwrap_or_default().to_owned(),
    };
    shared.tracker.spawn(async move {
        let _guard = guard;
        let Ok(upgraded) = on.await else { return };
        let (conn, driver) = Connection::server(TokioIo::new(upgraded), Config::default());
        let session = port_forward_session(conn, target, creation_timeout);
        tokio::select! {
            _ = async { tokio::join!(driver, session) } => {}
            () = cancel.cancelled() => {}
        }
    });
    resp
}

struct PortForwardTarget {
    pod: String,
    uid: String,
}

/// The streams of one forwarded connection, as they arrive.
struct Pair {
    port: u16,
    data: Option<Stream>,
    error: Option<Stream>,
    deadline: Instant,
}

/// Checks a port-forward stream's headers like the kubelet's `httpStreamReceived`.
fn stream_port_and_type(incoming: &IncomingStream) -> Result<(u16, String), String> {
    let h = incoming.headers();
    let port = h.get("port").unwrap_or("");
    if port.is_empty() {
        return Err("\"port\" header is required".to_owned());
    }
    let port = match port.parse::<u16>() {
        Ok(0) => return Err(format!("port {port:?} must be > 0")),
        Ok(p) => p,
        Err(e) => return Err(format!("unable to parse {port:?} as a port: {e}")),
    };
    match h.get("streamtype").unwrap_or("") {
        "" => Err("\"streamType\" header is required".to_owned()),
        t @ ("error" | "data") => Ok((port, t.to_owned())),
        t => Err(format!("invalid stream type {t:?}")),
    }
}

async fn port_forward_session(
    conn: Connection,
    target: PortForwardTarget,
    creation_timeout: Duration,
) {
    let target = Arc::new(target);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = FuturesUnordered::new();
    loop {
        let next_deadline = pairs.values().map(|p| p.deadline).min();
        tokio::select! {
            incoming = conn.accept() => {
                let Some(incoming) = incoming else { break };
                let (port, kind) = match stream_port_and_type(&incoming) {
                    Ok(ok) => ok,
                    Err(e) => {
                        debug!(error = %e, "test kubelet: port-forward stream rejected");
                        incoming.reject();
                        continue;
                    }
                };
                // Old clients send no requestID; the kubelet derives one from the stream ids.
                let request_id = match incoming.headers().get("requestid") {
                    Some(id) if !id.is_empty() => id.to_owned(),
                    _ if kind == "error" => incoming.id().to_string(),
                    _ => incoming.id().saturating_sub(2).to_string(),
                };
                let stream = incoming.accept();
                let pair = pairs.entry(request_id.clone()).or_insert_with(|| Pair {
                    port,
                    data: None,
                    error: None,
                    deadline: Instant::now() + creation_timeout,
                });
                let slot = if kind == "error" { &mut pair.error } else { &mut pair.data };
                if slot.is_some() {
                    let msg = format!("error processing stream for request {request_id}: {kind} stream already assigned");
                    if let Some(e) = pair.error.as_mut() {
                        let _ = e.write_all(msg.as_bytes()).await;
                    }
                    continue;
                }
                *slot = Some(stream);
                if pair.data.is_some() && pair.error.is_some()
                    && let Some(Pair { port, data: Some(data), error: Some(error), .. }) = pairs.remove(&request_id)
                {
                    forwards.push(forward(data, error, port, target.clone()));
                }
            }
            Some(()) = forwards.next(), if !forwards.is_empty() => {}
            () = sleep_until_opt(next_deadline) => {
                let now = Instant::now();
                let expired: Vec<String> = pairs.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| k.clone()).collect();
                for id in expired {
                    if let Some(Pair { error: Some(mut e), .. }) = pairs.remove(&id) {
                        let msg = format!("timed out waiting for streams of request {id}");
                        let _ = e.write_all(msg.as_bytes()).await;
                        let _ = e.shutdown().await;
                    }
                }
            }
        }
    }
    // The connection ended; what is still forwarding fails with it.
    while forwards.next().await.is_some() {}
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Relays one forwarded connection (containerd's `PortForward`, minus its 1 s grace: both
/// directions are waited for).
async fn forward(mut data: Stream, mut error: Stream, port: u16, target: Arc<PortForwardTarget>) {
    match TcpStream::connect(("127.0.0.1", port)).await {
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}, uid {}: {e}",
                target.pod, target.uid
            );
            let _ = error.write_all(msg.as_bytes()).await;
        }
        Ok(tcp) => {
            let _ = tcp.set_nodelay(true);
            let (mut tr, mut tw) = tcp.into_split();
            let (mut dr, mut dw) = tokio::io::split(data);
            tokio::join!(
                async {
                    pump(&mut dr, &mut tw).await;
                    let _ = tw.shutdown().await;
                },
                async {
                    pump(&mut tr, &mut dw).await;
                    let _ = dw.shutdown().await;
                }
            );
            data = dr.unsplit(dw);
        }
    }
    let _ = error.shutdown().await;
    let _ = data.shutdown().await;
}

/// Copies until EOF or an error on either side.
async fn pump<R, W>(r: &mut R, w: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PUMP_BUF];
    while let Ok(n @ 1..) = r.read(&mut buf).await {
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
