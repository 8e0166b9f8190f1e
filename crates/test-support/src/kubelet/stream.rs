//! WebSocket streaming endpoints of the test kubelet: exec, attach, port-forward, plus the
//! raw `x-test` upgrade echo.
//!
//! # Upgrade handling (all of `/exec`, `/attach`, `/portForward`)
//!
//! 1. `Connection: Upgrade` + `Upgrade: x-test` → `101 Switching Protocols` with
//!    `Upgrade: x-test`, then every byte received is echoed back until EOF (checked first, before
//!    any pod lookup, to test transparent relay of unknown upgrades).
//! 2. Bad options → `400` (text body); unknown pod → `404` `pod does not exist`; unknown
//!    container → `404` `container not found ("<c>")`.
//! 3. Not an upgrade request → `500` with body `Upgrade request required` (like the kubelet).
//! 4. An upgrade other than `websocket` (e.g. `SPDY/3.1`) → `400`
//!    `unable to upgrade: the test kubelet only speaks websocket`.
//! 5. WebSocket: the first subprotocol in the client's `Sec-WebSocket-Protocol` order that the
//!    server supports is selected (that is how k8s' wsstream negotiates). No header at all means
//!    the legacy `channel.k8s.io` framing with no protocol echoed; offered protocols with no
//!    overlap → `400`.
//!
//! # Exec / attach framing
//!
//! Supported subprotocols: `v5.channel.k8s.io`, `v4.channel.k8s.io`, `channel.k8s.io`. Each
//! binary message is one channel byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize) plus the
//! payload. Resize payloads are JSON `{"Width":w,"Height":h}`. With `v5.channel.k8s.io` the
//! client may send channel 255 with payload `[0]` to close stdin (the CLOSE signal); with older
//! protocols stdin ends only when the websocket closes.
//!
//! Query: `command` (repeated, one argv element each; exec only), `input`, `output`, `error`,
//! `tty` (Go booleans such as `1`/`true`). At least one of input/output/error must be set. With
//! `tty=1` stderr is disabled and everything a command writes to stderr goes to stdout (the
//! kubelet ignores `error` with a tty).
//!
//! On exit the server sends, with v4/v5, a JSON `metav1.Status` on channel 3 —
//! `{"metadata":{},"status":"Success"}` or
//! `{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}`
//! — and then closes the websocket. With `channel.k8s.io` only failures are reported, as plain
//! text on channel 3.
//!
//! # Built-in commands
//!
//! `sh -c "<cmd>"` (also `/bin/sh`) runs `<cmd>` split on whitespace (no quoting) as one of:
//!
//! | command | behaviour |
//! |---|---|
//! | `cat` | stdin → stdout until stdin ends, exit 0 |
//! | `echo ARGS…` | prints the args joined by spaces + `\n`, exit 0 |
//! | `exit N` | exit status N |
//! | `true` / `false` | exit 0 / 1 |
//! | `stderr TEXT…` | writes the args joined by spaces + `\n` to stderr, exit 0 |
//! | `sha256sum` | reads stdin to the end, prints `<hex sha256>  <byte count>\n` |
//! | `head -c N`, `yes-bytes N` | writes N bytes of [`crate::content`] to stdout in 64 KiB messages |
//! | `tty-size` | prints `WIDTHxHEIGHT\n` for every resize message; exits 0 when stdin ends |
//! | anything else | `Failure` status with reason `InternalError` and message `… executable file not found in $PATH` |
//!
//! Attach attaches to the container's "main process", which behaves like `cat` and also
//! prints `WIDTHxHEIGHT\n` on every resize. It is modelled per attach session: when the
//! session's stdin ends (or, without stdin, when the client goes away) the session ends with
//! a `Success` status.
//!
//! # Port-forward
//!
//! Subprotocols `v4.channel.k8s.io`, `portforward.k8s.io`, `channel.k8s.io`. Ports come from
//! `port=N[,M…]` (repeatable) and `ports=…`. For the i-th port, channel `2i` carries data and
//! `2i+1` errors; the server's first message on each of those channels is the port as
//! little-endian u16 (client → server messages carry no prefix). The server connects to
//! `127.0.0.1:<port>` and relays bytes both ways; a failed connect is reported as text on the
//! error channel. When the client closes the websocket the target connections are shut down for
//! writing; when every target connection reached EOF the server closes the websocket.

use std::{collections::HashMap, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::WebSocketStream;
use tungstenite::{Message, protocol::Role};

use super::{Body, Shared, full, parse_query, query_bool};

/// Subprotocols offered for exec/attach, most preferred first.
pub const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];
/// Subprotocols offered for port-forward, most preferred first.
pub const PORT_FORWARD_PROTOCOLS: &[&str] =
    &["v4.channel.k8s.io", "portforward.k8s.io", "channel.k8s.io"];

/// Size of stdout/port-forward data messages produced by the server.
const CHUNK: usize = 64 * 1024;

fn header_tokens(headers: &HeaderMap, name: header::HeaderName) -> Vec<String> {
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
fn upgrade_protocol(headers: &HeaderMap) -> Option<String> {
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
    match upgrade_protocol(req.headers()) {
        None => {
            return Err(Box::new(full(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Upgrade request required",
            )));
        }
        Some(p) if !p.eq_ignore_ascii_case("websocket") => {
            return Err(Box::new(full(
                StatusCode::BAD_REQUEST,
                format!("unable to upgrade: the test kubelet only speaks websocket (got {p})"),
            )));
        }
        Some(_) => {}
    }
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

#[derive(Debug, Clone, Copy)]
struct StreamOpts {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
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
    if shared.container(ns, pod, container).is_none() {
        return full(
            StatusCode::NOT_FOUND,
            format!("container not found (\"{container}\")"),
        );
    }
    let (resp, protocol) = match websocket_accept(&req, EXEC_PROTOCOLS) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let opts = StreamOpts {
        stdin,
        stdout,
        // The kubelet ignores stderr when a tty is requested.
        stderr: stderr && !tty,
        tty,
    };
    let on = hyper::upgrade::on(&mut req);
    let cancel = shared.cancel.clone();
    let guard = shared.active_guard(true);
    shared.tracker.spawn(async move {
        let _guard = guard;
        let Ok(upgraded) = on.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let command = if attach { None } else { Some(argv) };
        tokio::select! {
            () = exec_session(ws, protocol, command, opts) => {}
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

enum Exit {
    Code(i32),
    Error(String),
}

/// I/O of a built-in "process".
struct Proc {
    stdin: Option<mpsc::Receiver<Bytes>>,
    resize: mpsc::UnboundedReceiver<(u16, u16)>,
    out: mpsc::Sender<(u8, Bytes)>,
    opts: StreamOpts,
}

/// The client is gone; the process should stop.
struct Gone;

impl Proc {
    async fn stdout(&self, data: Bytes) -> Result<(), Gone> {
        if !self.opts.stdout || data.is_empty() {
            return Ok(());
        }
        self.out.send((1, data)).await.map_err(|_| Gone)
    }

    async fn stderr(&self, data: Bytes) -> Result<(), Gone> {
        if self.opts.tty {
            return self.stdout(data).await;
        }
        if !self.opts.stderr || data.is_empty() {
            return Ok(());
        }
        self.out.send((2, data)).await.map_err(|_| Gone)
    }

    async fn read_stdin(&mut self) -> Option<Bytes> {
        self.stdin.as_mut()?.recv().await
    }

    /// Waits for stdin data or a resize; `None` when stdin ended (or the client is gone).
    async fn next_input(&mut self) -> Option<Input> {
        let stdin = self.stdin.as_mut();
        tokio::select! {
            d = async {
                match stdin {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => d.map(Input::Stdin),
            r = self.resize.recv() => match r {
                Some((w, h)) => Some(Input::Resize(w, h)),
                // The websocket reader ended, so stdin ends after what is queued.
                None => self.read_stdin().await.map(Input::Stdin),
            },
        }
    }
}

enum Input {
    Stdin(Bytes),
    Resize(u16, u16),
}

async fn run_command(argv: &[String], p: &mut Proc) -> Result<Exit, Gone> {
    let owned: Vec<String>;
    let argv: &[String] =
        if argv.len() >= 3 && (argv[0] == "sh" || argv[0] == "/bin/sh") && argv[1] == "-c" {
            owned = argv[2].split_whitespace().map(str::to_owned).collect();
            &owned
        } else {
            argv
        };
    let args: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    let parse_n = |s: Option<&&str>| s.and_then(|s| s.parse::<u64>().ok());
    match argv.first().map(String::as_str).unwrap_or("") {
        "cat" => {
            while let Some(d) = p.read_stdin().await {
                p.stdout(d).await?;
            }
            Ok(Exit::Code(0))
        }
        "echo" => {
            p.stdout(Bytes::from(format!("{}\n", args.join(" "))))
                .await?;
            Ok(Exit::Code(0))
        }
        "stderr" => {
            p.stderr(Bytes::from(format!("{}\n", args.join(" "))))
                .await?;
            Ok(Exit::Code(0))
        }
        "true" => Ok(Exit::Code(0)),
        "false" => Ok(Exit::Code(1)),
        "exit" => Ok(Exit::Code(
            args.first().and_then(|a| a.parse().ok()).unwrap_or(0),
        )),
        "sha256sum" => {
            let mut hasher = Sha256::new();
            let mut count = 0u64;
            while let Some(d) = p.read_stdin().await {
                count += d.len() as u64;
                hasher.update(&d);
            }
            let hex = crate::content::hex(&hasher.finalize());
            p.stdout(Bytes::from(format!("{hex}  {count}\n"))).await?;
            Ok(Exit::Code(0))
        }
        cmd @ ("head" | "yes-bytes") => {
            let n = if cmd == "head" {
                if args.first() != Some(&"-c") {
                    return Ok(Exit::Error("head: only `head -c N` is supported".into()));
                }
                parse_n(args.get(1))
            } else {
                parse_n(args.first())
            };
            let Some(n) = n else {
                return Ok(Exit::Error(format!("{cmd}: missing or invalid byte count")));
            };
            let mut pos = 0u64;
            while pos < n {
                let len = (n - pos).min(CHUNK as u64);
                p.stdout(crate::content::generated_bytes(pos, len as usize))
                    .await?;
                pos += len;
            }
            Ok(Exit::Code(0))
        }
        "tty-size" => {
            while let Some(input) = p.next_input().await {
                if let Input::Resize(w, h) = input {
                    p.stdout(Bytes::from(format!("{w}x{h}\n"))).await?;
                }
            }
            Ok(Exit::Code(0))
        }
        other => Ok(Exit::Error(format!(
            "failed to exec in container: starting container process caused: exec: \"{other}\": executable file not found in $PATH"
        ))),
    }
}

async fn run_attach(p: &mut Proc) -> Result<Exit, Gone> {
    while let Some(input) = p.next_input().await {
        match input {
            Input::Stdin(d) => p.stdout(d).await?,
            Input::Resize(w, h) => p.stdout(Bytes::from(format!("{w}x{h}\n"))).await?,
        }
    }
    Ok(Exit::Code(0))
}

fn status_json(argv: &[String], exit: &Exit) -> Option<String> {
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    match exit {
        Exit::Code(0) => None,
        Exit::Code(n) => {
            let msg = format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {n}",
                argv.join(" ")
            );
            Some(format!(
                r#"{{"metadata":{{}},"status":"Failure","message":{},"reason":"NonZeroExitCode","details":{{"causes":[{{"reason":"ExitCode","message":"{n}"}}]}}}}"#,
                quote(&msg)
            ))
        }
        Exit::Error(msg) => Some(format!(
            r#"{{"metadata":{{}},"status":"Failure","message":{},"reason":"InternalError","details":{{"causes":[{{"message":{}}}]}},"code":500}}"#,
            quote(msg),
            quote(msg)
        )),
    }
}

async fn exec_session<S>(
    ws: WebSocketStream<S>,
    protocol: String,
    command: Option<Vec<String>>,
    opts: StreamOpts,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let v5 = protocol == "v5.channel.k8s.io";
    let json_status = v5 || protocol == "v4.channel.k8s.io";
    let (mut sink, mut stream) = ws.split();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::unbounded_channel::<(u16, u16)>();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(16);
    let (exit_tx, exit_rx) = oneshot::channel::<Exit>();

    let reader = async move {
        let mut stdin_tx = opts.stdin.then_some(stdin_tx);
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
                    #[derive(serde::Deserialize)]
                    #[serde(rename_all = "PascalCase")]
                    struct Size {
                        width: u16,
                        height: u16,
                    }
                    if let Ok(s) = serde_json::from_slice::<Size>(&data[1..]) {
                        let _ = resize_tx.send((s.width, s.height));
                    }
                }
                255 if v5 && data.get(1) == Some(&0) => stdin_tx = None,
                _ => {}
            }
        }
    };

    let argv = command.clone().unwrap_or_default();
    let process = async move {
        let mut p = Proc {
            stdin: opts.stdin.then_some(stdin_rx),
            resize: resize_rx,
            out: out_tx,
            opts,
        };
        let result = match &command {
            Some(argv) => run_command(argv, &mut p).await,
            None => run_attach(&mut p).await,
        };
        drop(p);
        if let Ok(exit) = result {
            let _ = exit_tx.send(exit);
        }
    };

    let writer = async move {
        while let Some((channel, data)) = out_rx.recv().await {
            if sink.send(frame(channel, &data)).await.is_err() {
                return;
            }
        }
        if let Ok(exit) = exit_rx.await {
            let status = if json_status {
                Some(
                    status_json(&argv, &exit)
                        .unwrap_or_else(|| r#"{"metadata":{},"status":"Success"}"#.to_owned()),
                )
            } else {
                status_json(&argv, &exit).and_then(|s| {
                    serde_json::from_str::<serde_json::Value>(&s)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_owned))
                })
            };
            if let Some(status) = status
                && sink.send(frame(3, status.as_bytes())).await.is_err()
            {
                return;
            }
        }
        close_normally(&mut sink).await;
    };

    tokio::join!(reader, process, writer);
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
) -> Response<Body> {
    if upgrade_protocol(req.headers()).is_some_and(|p| p.eq_ignore_ascii_case("x-test")) {
        return x_test_upgrade(shared, req);
    }
    let q = parse_query(req.uri().query());
    let ports = match parse_ports(&q) {
        Ok(p) => p,
        Err(e) => return full(StatusCode::BAD_REQUEST, e),
    };
    if !shared.pod_exists(ns, pod) {
        return full(StatusCode::NOT_FOUND, "pod does not exist");
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
