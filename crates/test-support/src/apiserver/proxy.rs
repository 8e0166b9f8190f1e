//! How the test API server calls "the kubelet" for pod subresources and the node proxy.
//!
//! Each function mirrors one kube-apiserver code path (spec kubeedge-stream.md §5.1):
//!
//! | request | kubelet request | `Host` the kubelet sees |
//! |---|---|---|
//! | `pods/log` | `GET /containerLogs/{ns}/{pod}/{container}?…` | node address (the API server builds it) |
//! | `nodes/{n}/proxy/{path}` | `{method} /{path}?…` + `X-Forwarded-Uri` | node address |
//! | `pods/exec`, `attach`, `portforward` over SPDY | the same upgrade, bytes untouched | the client's (`UseLocationHost: false`) |
//! | `pods/portforward` over WebSocket (`SPDY/3.1+portforward.k8s.io`) | an SPDY upgrade; WebSocket binary messages ↔ bytes | the client's |
//! | `pods/exec`, `attach` over WebSocket | translated: SPDY to the kubelet (see `websocket_exec`) | node address |
//!
//! The kubelet's answer to an upgrade is relayed as it is: a `101` with the kubelet's headers
//! (then bytes both ways), or the kubelet's error status and body.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::protocol::Role;

use super::{Body, KubeletDial, State, status};
use crate::client::BoxIo;

/// The WebSocket subprotocol kubectl ≥ 1.31 tunnels port-forward's SPDY in.
pub const PORT_FORWARD_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Headers that describe one hop; never copied to the kubelet (RFC 9110 §7.6.1), except
/// `Connection`/`Upgrade` on upgrade requests, which are set explicitly.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/{log|exec|attach|portforward}`.
pub(super) async fn pod_subresource(
    state: &Arc<State>,
    req: Request<Incoming>,
    ns: &str,
    name: &str,
    sub: &str,
    query: &HashMap<String, Vec<String>>,
    peer: SocketAddr,
) -> Response<Body> {
    let Some(pod) = state.store.pod(ns, name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        );
    };
    let Some(node) = pod.node.clone() else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("pod {name} does not have a host assigned"),
        );
    };
    let first = |k: &str| query.get(k).and_then(|v| v.first()).map(String::as_str);
    let truthy = |k: &str| matches!(first(k), Some("1" | "true" | "True" | "TRUE" | "t" | "T"));
    let container = match first("container") {
        Some(c) if !c.is_empty() => c.to_owned(),
        _ if pod.containers.len() == 1 => pod.containers[0].clone(),
        _ if sub == "portforward" => String::new(),
        _ => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    pod.containers.join(" ")
                ),
            );
        }
    };
    let mut params: Vec<(&str, String)> = Vec::new();
    let path = match sub {
        "log" => {
            for key in ["follow", "previous", "timestamps"] {
                if truthy(key) {
                    params.push((key, "true".to_owned()));
                }
            }
            for key in ["sinceSeconds", "sinceTime", "tailLines", "limitBytes"] {
                if let Some(v) = first(key) {
                    params.push((key, v.to_owned()));
                }
            }
            format!("/containerLogs/{ns}/{name}/{container}")
        }
        "exec" | "attach" => {
            if sub == "exec" {
                for command in query.get("command").into_iter().flatten() {
                    params.push(("command", command.clone()));
                }
            }
            for (from, to) in [
                ("stdin", "input"),
                ("stdout", "output"),
                ("stderr", "error"),
                ("tty", "tty"),
            ] {
                if truthy(from) {
                    params.push((to, "1".to_owned()));
                }
            }
            format!("/{sub}/{ns}/{name}/{container}")
        }
        _ => {
            let ports: Vec<&str> = query
                .get("ports")
                .into_iter()
                .flatten()
                .flat_map(|p| p.split(','))
                .filter(|p| !p.is_empty())
                .collect();
            if !ports.is_empty() {
                params.push(("port", ports.join(",")));
            }
            format!("/portForward/{ns}/{name}")
        }
    };
    let path_and_query = with_query(&path, &params);
    let node_host = match node_host(state, &node) {
        Ok(h) => h,
        Err(e) => return status(StatusCode::NOT_FOUND, "NotFound", &e.to_string()),
    };
    if sub == "log" {
        return plain(
            state,
            req,
            Method::GET,
            &path_and_query,
            &node_host,
            None,
            peer,
        )
        .await;
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let client_host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match upgrade.as_deref() {
        Some("spdy/3.1") => raw_upgrade(state, req, &path_and_query, &client_host, &[], peer).await,
        Some("websocket") if sub == "portforward" => {
            let offered = header_tokens(req.headers(), &header::SEC_WEBSOCKET_PROTOCOL);
            if !offered.iter().any(|p| p == PORT_FORWARD_TUNNEL_PROTOCOL) {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "port-forward over WebSocket needs the SPDY/3.1+portforward.k8s.io subprotocol",
                );
            }
            tunnel_port_forward(state, req, &path_and_query, &client_host, peer).await
        }
        Some("websocket") => websocket_exec(state, req, &path_and_query, &node_host, peer).await,
        _ => status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required",
        ),
    }
}

/// `/api/v1/nodes/{node}/proxy/{rest}`: the request goes to the node's kubelet with
/// `X-Forwarded-Uri` naming the original path, as kube-apiserver's node proxy sends it.
pub(super) async fn node_proxy(
    state: &Arc<State>,
    req: Request<Incoming>,
    node: &str,
    rest: &str,
    peer: SocketAddr,
) -> Response<Body> {
    // `nodes/<name>:<port>/proxy` picks a port; the node is the name.
    let name = node.split(':').next().unwrap_or(node);
    let node_host = match node_host(state, name) {
        Ok(h) => h,
        Err(e) => return status(StatusCode::NOT_FOUND, "NotFound", &e.to_string()),
    };
    let original = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let path_and_query = match req.uri().query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    let method = req.method().clone();
    plain(
        state,
        req,
        method,
        &path_and_query,
        &node_host,
        Some(&original),
        peer,
    )
    .await
}

/// `<ip>:<port>` of a node's kubelet, from its Node object.
fn node_host(state: &State, node: &str) -> Result<String> {
    let node = state
        .store
        .node(node)
        .ok_or_else(|| anyhow!("nodes \"{node}\" not found"))?;
    Ok(match node.internal_ip {
        std::net::IpAddr::V4(ip) => format!("{ip}:{}", node.kubelet_port),
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", node.kubelet_port),
    })
}

/// Connects to the kubelet address (cloudstream, through "DNAT").
async fn dial(state: &State) -> Result<BoxIo> {
    let dial = state
        .kubelet
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .ok_or_else(|| anyhow!("the test API server has no kubelet address configured"))?;
    state
        .counters
        .kubelet_requests
        .fetch_add(1, Ordering::SeqCst);
    Ok(match &dial {
        KubeletDial::Plain(addr) => {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Box::new(tcp)
        }
        KubeletDial::Tls {
            addr,
            config,
            server_name,
        } => Box::new(crate::client::tls_connect(*addr, config.clone(), server_name).await?),
    })
}

/// Copies the client's end-to-end headers, minus what the API server consumes.
fn forwarded_headers(from: &HeaderMap, host: &str, peer: SocketAddr) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in from {
        let lower = name.as_str();
        if lower == "host" || lower == "authorization" || HOP_BY_HOP.contains(&lower) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers.insert(header::HOST, HeaderValue::try_from(host)?);
    headers.append(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::try_from(peer.ip().to_string())?,
    );
    Ok(headers)
}

/// Sends one request to the kubelet over a fresh connection and returns its response.
async fn send<B>(io: BoxIo, req: Request<B>) -> Result<Response<Incoming>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // Ends when the response (and any upgrade) is done and the sender is dropped.
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender.send_request(req).await?)
}

/// A request the API server builds itself (logs, node proxy): `Host` is the node's address.
async fn plain(
    state: &Arc<State>,
    req: Request<Incoming>,
    method: Method,
    path_and_query: &str,
    node_host: &str,
    forwarded_uri: Option<&str>,
    peer: SocketAddr,
) -> Response<Body> {
    let result = async {
        let (parts, body) = req.into_parts();
        let mut headers = forwarded_headers(&parts.headers, node_host, peer)?;
        if let Some(uri) = forwarded_uri {
            headers.insert("x-forwarded-uri", HeaderValue::try_from(uri)?);
            if let Some(host) = parts.headers.get(header::HOST) {
                headers.insert("x-forwarded-host", host.clone());
            }
            headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        }
        let mut out = Request::builder()
            .method(method)
            .uri(path_and_query)
            .body(body)?;
        *out.headers_mut() = headers;
        let io = dial(state).await?;
        send(io, out).await
    }
    .await;
    match result {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, body.map_err(io::Error::other).boxed_unsync())
        }
        Err(e) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("error dialing backend: {e:#}"),
        ),
    }
}

/// Sends the client's upgrade request to the kubelet with `host` and relays the answer: a
/// `101` with the kubelet's headers, then bytes both ways untouched; or the kubelet's error.
async fn raw_upgrade(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    path_and_query: &str,
    host: &str,
    extra: &[(HeaderName, HeaderValue)],
    peer: SocketAddr,
) -> Response<Body> {
    let upstream = async {
        let mut headers = forwarded_headers(req.headers(), host, peer)?;
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Some(upgrade) = req.headers().get(header::UPGRADE) {
            headers.insert(header::UPGRADE, upgrade.clone());
        }
        for (name, value) in extra {
            headers.insert(name.clone(), value.clone());
        }
        let mut out = Request::builder()
            .method(req.method().clone())
            .uri(path_and_query)
            .body(http_body_util::Empty::<Bytes>::new())?;
        *out.headers_mut() = headers;
        send(dial(state).await?, out).await
    }
    .await;
    let response = match upstream {
        Ok(r) => r,
        Err(e) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("error dialing backend: {e:#}"),
            );
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = response.into_parts();
        return Response::from_parts(parts, body.map_err(io::Error::other).boxed_unsync());
    }
    let headers = response.headers().clone();
    let client_upgrade = hyper::upgrade::on(&mut req);
    let cancel = state.cancel.clone();
    state.tracker.spawn(async move {
        let (Ok(client), Ok(kubelet)) = (client_upgrade.await, hyper::upgrade::on(response).await)
        else {
            return;
        };
        let (mut client, mut kubelet) = (TokioIo::new(client), TokioIo::new(kubelet));
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut kubelet) => {}
            () = cancel.cancelled() => {}
        }
    });
    let mut reply = Response::new(http_body_util::Empty::new().map_err(never).boxed_unsync());
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *reply.headers_mut() = headers;
    reply
}

/// Port-forward over WebSocket (kubectl ≥ 1.31): the client's WebSocket binary messages
/// carry SPDY; upstream is an ordinary SPDY upgrade with the client's `Host`. The WebSocket
/// handshake completes only once the kubelet said `101`, as kube-apiserver's tunneling
/// handler does.
async fn tunnel_port_forward(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    path_and_query: &str,
    host: &str,
    peer: SocketAddr,
) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "missing Sec-WebSocket-Key",
        );
    };
    let upstream = async {
        let mut headers = forwarded_headers(req.headers(), host, peer)?;
        for name in [
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_PROTOCOL,
            header::SEC_WEBSOCKET_EXTENSIONS,
        ] {
            headers.remove(name);
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        headers.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static("portforward.k8s.io"),
        );
        let mut out = Request::builder()
            .method(Method::POST)
            .uri(path_and_query)
            .body(http_body_util::Empty::<Bytes>::new())?;
        *out.headers_mut() = headers;
        send(dial(state).await?, out).await
    }
    .await;
    let response = match upstream {
        Ok(r) => r,
        Err(e) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("error dialing backend: {e:#}"),
            );
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = response.into_parts();
        return Response::from_parts(parts, body.map_err(io::Error::other).boxed_unsync());
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let cancel = state.cancel.clone();
    state.tracker.spawn(async move {
        let (Ok(client), Ok(kubelet)) = (client_upgrade.await, hyper::upgrade::on(response).await)
        else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
        tokio::select! {
            r = bridge_websocket(ws, TokioIo::new(kubelet)) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "port-forward tunnel ended with an error");
                }
            }
            () = cancel.cancelled() => {}
        }
    });
    let mut reply = Response::new(http_body_util::Empty::new().map_err(never).boxed_unsync());
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = reply.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) =
        HeaderValue::try_from(tungstenite::handshake::derive_accept_key(key.as_bytes()))
    {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(PORT_FORWARD_TUNNEL_PROTOCOL),
    );
    reply
}

/// Moves WebSocket binary payloads to `io` and `io`'s bytes back as binary messages.
async fn bridge_websocket<S, T>(ws: WebSocketStream<S>, io: T) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (mut read, mut write) = tokio::io::split(io);
    let up = async {
        while let Some(message) = stream.next().await {
            match message? {
                Message::Binary(data) => write.write_all(&data).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        write.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = read.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                .await?;
        }
        sink.close().await?;
        Ok::<_, anyhow::Error>(())
    };
    let (up, down) = tokio::join!(up, down);
    up.and(down)
}

/// WebSocket subprotocols kube-apiserver's stream translator accepts from clients, most
/// preferred first.
const TRANSLATED_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Exec and attach over WebSocket (`v5.channel.k8s.io`, kubectl ≥ 1.30's default).
///
/// kube-apiserver terminates the WebSocket and speaks SPDY to the kubelet (its
/// `StreamTranslatorHandler`), with the node's address as `Host`. So does this server: the
/// WebSocket is upgraded first, then the SPDY session opened; a failure to open it is
/// reported on the error channel as a `Status`, the way kube-apiserver reports it.
async fn websocket_exec(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    path_and_query: &str,
    node_host: &str,
    _peer: SocketAddr,
) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "missing Sec-WebSocket-Key",
        );
    };
    let offered = header_tokens(req.headers(), &header::SEC_WEBSOCKET_PROTOCOL);
    let Some(protocol) = offered
        .iter()
        .find(|p| TRANSLATED_PROTOCOLS.contains(&p.as_str()))
        .cloned()
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("none of the offered subprotocols {offered:?} is supported"),
        );
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let task_state = state.clone();
    let path_and_query = path_and_query.to_owned();
    let node_host = node_host.to_owned();
    let v5 = protocol == "v5.channel.k8s.io";
    state.tracker.spawn(async move {
        let state = task_state;
        let Ok(client) = client_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
        tokio::select! {
            () = translate(&state, ws, &path_and_query, &node_host, v5) => {}
            () = state.cancel.cancelled() => {}
        }
    });
    let mut reply = Response::new(http_body_util::Empty::new().map_err(never).boxed_unsync());
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = reply.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) =
        HeaderValue::try_from(tungstenite::handshake::derive_accept_key(key.as_bytes()))
    {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Ok(p) = HeaderValue::try_from(protocol) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    reply
}

/// Carries one translated exec/attach: WebSocket channels ↔ SPDY streams.
async fn translate<S>(
    state: &State,
    ws: WebSocketStream<S>,
    path_and_query: &str,
    node_host: &str,
    v5: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let session = match dial(state).await {
        Ok(io) => crate::client::exec_spdy(io, node_host, path_and_query, &[]).await,
        Err(e) => Err(e),
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let message = match e.downcast_ref::<crate::client::UpgradeError>() {
                Some(up) => format!("{}", String::from_utf8_lossy(&up.body)),
                None => format!("error dialing backend: {e:#}"),
            };
            let body = super::status_json(500, "InternalError", &message).to_string();
            let _ = sink.send(channel_message(3, body.as_bytes())).await;
            close_normally(&mut sink).await;
            return;
        }
    };
    let (mut writer, mut reader) = session.split();
    // Client → kubelet: stdin, resize, and (v5) the CLOSE signal for stdin.
    let up = async {
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            let sent = match channel {
                0 => writer.send_stdin(payload).await,
                4 => match serde_json::from_slice::<serde_json::Value>(payload) {
                    Ok(size) => {
                        let dim = |k: &str| {
                            size[k]
                                .as_u64()
                                .and_then(|v| u16::try_from(v).ok())
                                .unwrap_or(0)
                        };
                        writer.resize(dim("Width"), dim("Height")).await
                    }
                    Err(_) => Ok(()),
                },
                255 if v5 && payload.first() == Some(&0) => writer.close_stdin().await,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        // Without v5's CLOSE signal, stdin ends with the WebSocket.
        let _ = writer.close_stdin().await;
    };
    // Kubelet → client: stdout, stderr, then the status.
    let down = async {
        while let Ok(Some(event)) = reader.next().await {
            let message = match event {
                crate::client::Event::Stdout(d) => channel_message(1, &d),
                crate::client::Event::Stderr(d) => channel_message(2, &d),
                crate::client::Event::Status(serde_json::Value::String(text)) => {
                    channel_message(3, text.as_bytes())
                }
                crate::client::Event::Status(status) => {
                    channel_message(3, status.to_string().as_bytes())
                }
            };
            if sink.send(message).await.is_err() {
                return;
            }
        }
        close_normally(&mut sink).await;
    };
    // The exec is over when the kubelet's side is; a client still sending stdin then is cut.
    tokio::select! {
        () = down => {}
        () = async { up.await; std::future::pending::<()>().await } => {}
    }
}

fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    Message::Binary(Bytes::from(out))
}

/// Ends a WebSocket with `1000 Normal Closure`, which client-go reads as a clean end.
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

fn header_tokens(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn with_query(path: &str, params: &[(&str, String)]) -> String {
    if params.is_empty() {
        return path.to_owned();
    }
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// Percent-encodes a query value as Go's `url.QueryEscape` does (what kube-apiserver's
/// `url.Values.Encode` writes): unreserved characters stay, a space becomes `+`.
fn encode(value: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, UNRESERVED)
        .to_string()
        .replace("%20", "+")
}

fn never(e: std::convert::Infallible) -> io::Error {
    match e {}
}
