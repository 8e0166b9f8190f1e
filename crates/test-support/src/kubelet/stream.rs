//! Streaming endpoints of the test kubelet: exec, attach and port-forward over WebSocket or
//! SPDY/3.1, plus the raw `x-test` upgrade echo.
//!
//! This module validates the request and dispatches on the `Upgrade` header; the WebSocket
//! framing lives here, the SPDY one in [`super::spdy`], and both run the same built-in
//! commands (`kubelet/process.rs`), so a scenario behaves the same over either transport.
//!
//! # Upgrade handling (all of `/exec`, `/attach`, `/portForward`)
//!
//! 1. `Connection: Upgrade` + `Upgrade: x-test` → `101 Switching Protocols` with
//!    `Upgrade: x-test`, then every byte received is echoed back until EOF (checked first, before
//!    any pod lookup, to test transparent relay of unknown upgrades).
//! 2. Bad options → `400` (text body); unknown pod → `404` `pod does not exist`; unknown
//!    container → `404` `container not found ("<c>")`.
//! 3. Not an upgrade request → `500` with body `Upgrade request required` (like the kubelet).
//! 4. `Upgrade: websocket`: the first subprotocol in the client's `Sec-WebSocket-Protocol`
//!    order that the server supports is selected (that is how k8s' wsstream negotiates). No
//!    header at all means the legacy `channel.k8s.io` framing with no protocol echoed; offered
//!    protocols with no overlap → `400`.
//! 5. Any other upgrade goes down the kubelet's SPDY path ([`super::spdy`]):
//!    `X-Stream-Protocol-Version` (repeated or comma-separated, client order wins) is
//!    negotiated first — missing → `400` `unable to upgrade: X-Stream-Protocol-Version is
//!    required`, no overlap → `403` listing the server's protocols in
//!    `X-Accepted-Stream-Protocol-Versions` — then an `Upgrade` other than `SPDY/3.1` → `400`
//!    `unable to upgrade: missing upgrade headers in request`; otherwise `101` with
//!    `Connection: Upgrade`, `Upgrade: SPDY/3.1` and the chosen `X-Stream-Protocol-Version`.
//!
//! | transport | exec / attach protocols | port-forward protocols |
//! |---|---|---|
//! | WebSocket | `v5.channel.k8s.io`, `v4.channel.k8s.io`, `channel.k8s.io` | `v4.channel.k8s.io`, `portforward.k8s.io`, `channel.k8s.io` |
//! | SPDY/3.1 | `v4.channel.k8s.io`, `v3.channel.k8s.io`, `v2.channel.k8s.io`, `channel.k8s.io` | `portforward.k8s.io` |
//!
//! # Exec / attach over WebSocket
//!
//! Each binary message is one channel byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize)
//! plus the payload. Resize payloads are JSON `{"Width":w,"Height":h}`. With
//! `v5.channel.k8s.io` the client may send channel 255 with payload `[0]` to close stdin (the
//! CLOSE signal); with older protocols stdin ends only when the websocket closes.
//!
//! # Exec / attach over SPDY/3.1
//!
//! The client opens one stream per standard stream, header `streamType` = `error`, `stdin`,
//! `stdout`, `stderr`, `resize` (v3+, tty only); the session starts once all expected streams
//! arrived (stream creation timeout, see
//! [`TestKubeletBuilder::stream_creation_timeout`](super::TestKubeletBuilder::stream_creation_timeout);
//! on timeout the connection is closed). stdin ends when the client half-closes (FIN) the
//! stdin stream. Resize events are a sequence of JSON objects on the resize stream. At the end
//! the status is written on the error stream and, like the kubelet, every stream is reset, a
//! GOAWAY sent and the connection closed. With `channel.k8s.io` the kubelet resets the error
//! stream as soon as the streams are set up, so v1 clients never see a status.
//!
//! # Options and status (both transports)
//!
//! Query: `command` (repeated, one argv element each; exec only), `input`, `output`, `error`,
//! `tty` (Go booleans such as `1`/`true`). At least one of input/output/error must be set. With
//! `tty=1` stderr is disabled and everything a command writes to stderr goes to stdout (the
//! kubelet ignores `error` with a tty).
//!
//! On exit the server sends, with v4/v5, a JSON `metav1.Status` on the error channel/stream —
//! `{"metadata":{},"status":"Success"}` or
//! `{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}`
//! — and then closes the session. With older protocols only failures are reported, as plain
//! text.
//!
//! # Built-in commands
//!
//! Commands run directly from their argv, or through `sh -c "<cmd>"` (also `/bin/sh`), which
//! splits `<cmd>` on whitespace (no quoting):
//!
//! | command | behaviour |
//! |---|---|
//! | `cat` | stdin → stdout until stdin ends, exit 0 |
//! | `cat FILE…` | prints files of the container's in-memory file system |
//! | `echo ARGS…` | prints the args joined by spaces + `\n`, exit 0 |
//! | `exit N` | exit status N |
//! | `true` / `false` | exit 0 / 1 |
//! | `stderr TEXT…` | writes the args joined by spaces + `\n` to stderr, exit 0 |
//! | `sha256sum` | reads stdin to the end, prints `<hex sha256>  <byte count>\n` |
//! | `head -c N`, `yes-bytes N` | writes N bytes of [`crate::content`] to stdout in 64 KiB messages |
//! | `tty-size` | prints `WIDTHxHEIGHT\n` for every resize message; exits 0 when stdin ends |
//! | `test -d\|-e\|-f PATH` | exit 0 or 1, on the in-memory file system |
//! | `tar -xmf - [-C DIR]`, `tar --no-same-permissions --no-same-owner -xmf - [-C DIR]` | extracts the archive on stdin (what `kubectl cp` uploads with) |
//! | `tar cf - PATH…` | writes an archive of PATH to stdout (`kubectl cp` downloads) |
//! | `sh -c "tar cf - PATH \| tail -c+N"` | the same from byte N (`kubectl cp --retries`) |
//! | anything else | `Failure` status with reason `InternalError` and message `… executable file not found in $PATH` |
//!
//! The file system is per container, in memory, starts with `/` and `/tmp`, and behaves like
//! GNU tar on it (`kubelet/files.rs`); tests can look at it with
//! [`TestKubelet::file`](super::TestKubelet::file).
//!
//! Attach attaches to the container's "main process", which behaves like `cat` and also
//! prints `WIDTHxHEIGHT\n` on every resize. It is modelled per attach session: when the
//! session's stdin ends (or, without stdin, when the client goes away) the session ends with
//! a `Success` status.
//!
//! # Port-forward over WebSocket
//!
//! Ports come from `port=N[,M…]` (repeatable) and `ports=…`. For the i-th port, channel `2i`
//! carries data and `2i+1` errors; the server's first message on each of those channels is the
//! port as little-endian u16 (client → server messages carry no prefix). The server connects
//! to `127.0.0.1:<port>` and relays bytes both ways; a failed connect is reported as text on
//! the error channel. When the client closes the websocket the target connections are shut
//! down for writing; when every target connection reached EOF the server closes the websocket.
//!
//! # Port-forward over SPDY/3.1
//!
//! The query is ignored (like the kubelet); each forwarded connection is a pair of streams,
//! `streamType: error` and `streamType: data`, with the same `port` and `requestID` headers.
//! Once both arrived (stream creation timeout otherwise, reported on the error stream) the
//! server connects to `127.0.0.1:<port>` and relays: the client's FIN on the data stream shuts
//! the target connection down for writing, the target's EOF becomes a FIN; when both
//! directions are done both streams are closed. A failed connect is written as text on the
//! error stream. The session lasts until the client closes the connection.

use std::{collections::HashMap, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};
use tokio_tungstenite::WebSocketStream;
use tungstenite::{Message, protocol::Role};

use super::{
    Body, Shared, full, parse_query,
    process::{self, CHUNK, StreamOpts},
    query_bool,
};

/// WebSocket subprotocols for exec/attach, most preferred first.
pub const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];
/// WebSocket subprotocols for port-forward, most preferred first.
pub const PORT_FORWARD_PROTOCOLS: &[&str] =
    &["v4.channel.k8s.io", "portforward.k8s.io", "channel.k8s.io"];

pub(super) fn header_tokens(headers: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The `Upgrade` protocol when the request is an upgrade request.
pub(super) fn upgrade_protocol(headers: &HeaderMap) -> Option<String> {
    let conn_upgrade = header_tokens(headers, header::CONNECTION)
        .iter()
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    let upgrade = headers
        .get(header::UPGRADE)?
        .to_str()
        .ok()?
        .trim()
        .to_owned();
    (conn_upgrade && !upgrade.is_empty()).then_some(upgrade)
}

fn x_test_upgrade(shared: &Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    let on = hyper::upgrade::on(&mut req);
    let cancel = shared.cancel.clone();
    let guard = shared.active_guard(true);
    shared.tracker.spawn(async move {
        let _guard = guard;
        let Ok(upgraded) = on.await else { return };
        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
        tokio::select! {
            _ = async {
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            } => {}
            () = cancel.cancelled() => {}
        }
    });
    let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    resp.headers_mut().remove(header::CONTENT_TYPE);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("x-test"));
    resp
}

/// Validates a websocket upgrade and builds the 101, or returns the error response.
fn websocket_accept(
    req: &Request<Incoming>,
    supported: &[&str],
) -> Result<(Response<Body>, String), Box<Response<Body>>> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(full(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing Sec-WebSocket-Key",
        )));
    };
    let offered = header_tokens(req.headers(), header::SEC_WEBSOCKET_PROTOCOL);
    let protocol = if offered.is_empty() {
        String::new()
    } else {
        match offered.iter().find(|p| supported.contains(&p.as_str())) {
            Some(p) => p.clone(),
            None => {
                return Err(Box::new(full(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unable to upgrade: none of the requested subprotocols {offered:?} is supported ({supported:?})"
                    ),
                )));
            }
        }
    };
    let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if !protocol.is_empty()
        && let Ok(v) = HeaderValue::from_str(&protocol)
    {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    Ok((resp, protocol))
}

/// How an upgrade request is to be served.
enum Transport {
    WebSocket,
    Spdy,
}

/// The transport an (already validated) upgrade request asks for, or the kubelet's answer to
/// a request that is not an upgrade.
fn transport(req: &Request<Incoming>) -> Result<Transport, Box<Response<Body>>> {
    match upgrade_protocol(req.headers()) {
        None => Err(Box::new(full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Upgrade request required",
        ))),
        Some(p) if p.eq_ignore_ascii_case("websocket") => Ok(Transport::WebSocket),
        // The kubelet sends everything that is not a websocket down its SPDY path, which
        // negotiates the stream protocol before it looks at the Upgrade header.
        Some(_) => Ok(Transport::Spdy),
    }
}

pub(super) fn remote_command(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    attach: bool,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    if upgrade_protocol(req.headers()).is_some_and(|p| p.eq_ignore_ascii_case("x-test")) {
        return x_test_upgrade(shared, req);
    }
    let q = parse_query(req.uri().query());
    let flags = (
        query_bool(&q, "input"),
        query_bool(&q, "output"),
        query_bool(&q, "error"),
        query_bool(&q, "tty"),
    );
    let (Ok(stdin), Ok(stdout), Ok(stderr), Ok(tty)) = flags else {
        return full(StatusCode::BAD_REQUEST, "unable to parse stream options");
    };
    if !stdin && !stdout && !stderr {
        return full(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    let argv = q.get("command").cloned().unwrap_or_default();
    if !attach && argv.is_empty() {
        return full(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        );
    }
    if !shared.pod_exists(ns, pod) {
        return full(StatusCode::NOT_FOUND, "pod does not exist");
    }
    let Some(target) = shared.container(ns, pod, container) else {
        return full(
            StatusCode::NOT_FOUND,
            format!("container not found (\"{container}\")"),
        );
    };
    let opts = StreamOpts {
        stdin,
        stdout,
        // The kubelet ignores stderr when a tty is requested.
        stderr: stderr && !tty,
        tty,
    };
    let command = if attach { None } else { Some(argv) };
    match transport(&req) {
        Err(resp) => return *resp,
        Ok(Transport::Spdy) => {
            return super::spdy::remote_command(shared, req, target, command, opts);
        }
        Ok(Transport::WebSocket) => {}
    }
    let (resp, protocol) = match websocket_accept(&req, EXEC_PROTOCOLS) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let on = hyper::upgrade::on(&mut req);
    let cancel = shared.cancel.clone();
    let guard = shared.active_guard(true);
    shared.tracker.spawn(async move {
        let _guard = guard;
        let Ok(upgraded) = on.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tokio::select! {
            () = exec_session(ws, protocol, target, command, opts) => {}
            () = cancel.cancelled() => {}
        }
    });
    resp
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(data.len() + 1);
    b.put_u8(channel);
    b.extend_from_slice(data);
    Message::Binary(b.freeze())
}

async fn exec_session<S>(
    ws: WebSocketStream<S>,
    protocol: String,
    container: Arc<super::Container>,
    command: Option<Vec<String>>,
    opts: StreamOpts,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let v5 = protocol == "v5.channel.k8s.io";
    let json_status = v5 || protocol == "v4.channel.k8s.io";
    let (mut sink, mut stream) = ws.split();
    let argv = command.clone().unwrap_or_default();
    let (io, process) = process::start(container, command, opts);
    let process::ProcessIo {
        stdin: stdin_tx,
        resize: resize_tx,
        out: mut out_rx,
        exit: exit_rx,
    } = io;

    let reader = async move {
        let mut stdin_tx = stdin_tx;
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some(&channel) = data.first() else {
                continue;
            };
            match channel {
                0 => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(data.slice(1..)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                4 => {
                    if let Some(size) = parse_resize(&data[1..]) {
                        let _ = resize_tx.send(size).await;
                    }
                }
                255 if v5 && data.get(1) == Some(&0) => stdin_tx = None,
                _ => {}
            }
        }
    };

    let writer = async move {
        while let Some((channel, data)) = out_rx.recv().await {
            if sink.send(frame(channel, &data)).await.is_err() {
                return;
            }
        }
        if let Ok(exit) = exit_rx.await
            && let Some(status) = process::status_payload(&argv, &exit, json_status)
            && sink.send(frame(3, status.as_bytes())).await.is_err()
        {
            return;
        }
        close_normally(&mut sink).await;
    };

    tokio::join!(reader, process, writer);
}

/// A terminal size message, `{"Width":w,"Height":h}`.
pub(super) fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    serde_json::from_slice::<Size>(data)
        .ok()
        .map(|s| (s.width, s.height))
}

fn parse_ports(q: &HashMap<String, Vec<String>>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for value in ["port", "ports"].iter().filter_map(|k| q.get(*k)).flatten() {
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("unable to parse \"{p}\" as a port: invalid port")),
            }
        }
    }
    if ports.is_empty() {
        return Err("at least one port must be specified".to_owned());
    }
    Ok(ports)
}

pub(super) fn port_forward(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    ns: &str,
    pod: &str,
    uid: Option<&str>,
) -> Response<Body> {
    if upgrade_protocol(req.headers()).is_some_and(|p| p.eq_ignore_ascii_case("x-test")) {
        return x_test_upgrade(shared, req);
    }
    let websocket =
        upgrade_protocol(req.headers()).is_some_and(|p| p.eq_ignore_ascii_case("websocket"));
    // Like the kubelet, only websocket requests take their ports from the query; SPDY clients
    // name the port in each stream's headers.
    let ports = if websocket {
        let q = parse_query(req.uri().query());
        match parse_ports(&q) {
            Ok(p) => p,
            Err(e) => return full(StatusCode::BAD_REQUEST, e),
        }
    } else {
        Vec::new()
    };
    if !shared.pod_exists(ns, pod) {
        return full(StatusCode::NOT_FOUND, "pod does not exist");
    }
    match transport(&req) {
        Err(resp) => return *resp,
        Ok(Transport::Spdy) => return super::spdy::port_forward(shared, req, pod, uid),
        Ok(Transport::WebSocket) => {}
    }
    let (resp, _protocol) = match websocket_accept(&req, PORT_FORWARD_PROTOCOLS) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let on = hyper::upgrade::on(&mut req);
    let cancel = shared.cancel.clone();
    let pod = pod.to_owned();
    let guard = shared.active_guard(true);
    shared.tracker.spawn(async move {
        let _guard = guard;
        let Ok(upgraded) = on.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tokio::select! {
            () = port_forward_session(ws, ports, pod) => {}
            () = cancel.cancelled() => {}
        }
    });
    resp
}

async fn port_forward_session<S>(ws: WebSocketStream<S>, ports: Vec<u16>, pod: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(16);
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut initial = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let data_ch = (2 * i) as u8;
        let prefix = port.to_le_bytes();
        initial.push(frame(data_ch, &prefix));
        match TcpStream::connect(("127.0.0.1", *port)).await {
            Ok(tcp) => {
                initial.push(frame(data_ch + 1, &prefix));
                let (r, w) = tcp.into_split();
                writers.push(Some(w));
                readers.push((data_ch, r));
            }
            Err(e) => {
                let mut msg = prefix.to_vec();
                msg.extend_from_slice(
                    format!("error forwarding port {port} to pod {pod}: {e}").as_bytes(),
                );
                initial.push(frame(data_ch + 1, &msg));
                writers.push(None);
            }
        }
    }
    // One pump per target connection: ends on EOF, read error, or when the writer is gone.
    let pumps = futures_util::future::join_all(readers.into_iter().map(|(channel, mut r)| {
        let tx = out_tx.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if tx
                    .send((channel, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }));
    drop(out_tx);

    let reader = async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some(&channel) = data.first() else {
                continue;
            };
            if channel % 2 != 0 {
                continue;
            }
            let index = usize::from(channel / 2);
            if let Some(Some(w)) = writers.get_mut(index)
                && w.write_all(&data[1..]).await.is_err()
            {
                writers[index] = None;
            }
        }
        for mut w in writers.into_iter().flatten() {
            let _ = w.shutdown().await;
        }
    };
    let writer = async move {
        for msg in initial {
            if sink.send(msg).await.is_err() {
                return;
            }
        }
        while let Some((channel, data)) = out_rx.recv().await {
            if sink.send(frame(channel, &data)).await.is_err() {
                return;
            }
        }
        close_normally(&mut sink).await;
    };
    tokio::join!(reader, writer, pumps);
}

/// Ends a websocket with a `1000 Normal Closure` frame, as the kubelet does. A close frame
/// without a code reads as 1005 to client-go, which then reports the stream as broken.
async fn close_normally<S>(sink: &mut S)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let normal = tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(normal))).await;
    let _ = sink.close().await;
}
