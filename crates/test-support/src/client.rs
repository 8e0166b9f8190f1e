//! Clients that talk to a kubelet the way kube-apiserver does.
//!
//! Every function takes an already connected stream (plain TCP, or TLS from [`tls_connect`]),
//! so the same client works against [`TestKubelet`](crate::kubelet::TestKubelet) directly and
//! through the tunnel's stream server.
//!
//! Exec/attach and port-forward exist over both transports kube-apiserver uses:
//! WebSocket ([`exec_ws`], [`port_forward_ws`]) and SPDY/3.1 ([`exec_spdy`],
//! [`port_forward_spdy`], and the lower-level [`spdy_upgrade`]). Both return the same
//! [`ExecSession`] and [`PortForwardSession`], so one scenario can be run over either.

use std::{fmt, net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{
    SinkExt as _, StreamExt as _,
    stream::{SplitSink, SplitStream},
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, upgrade::Upgraded};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::WebSocketStream;
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};
use tungstenite::{Message, client::IntoClientRequest as _};

mod spdy_client;

pub use spdy_client::{SPDY_EXEC_PROTOCOLS, SPDY_PORT_FORWARD_PROTOCOL, spdy_upgrade};

/// Any bidirectional byte stream usable by the clients.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

type Ws = WebSocketStream<BoxIo>;

/// Largest payload put into one websocket message by the clients.
pub const MAX_MESSAGE_PAYLOAD: usize = 64 * 1024;

/// Subprotocols offered by [`exec_ws`], most preferred first.
pub const EXEC_OFFER: &str = "v5.channel.k8s.io, v4.channel.k8s.io";
/// Subprotocols offered by [`port_forward_ws`], most preferred first.
pub const PORT_FORWARD_OFFER: &str = "v4.channel.k8s.io, portforward.k8s.io";

/// Opens TCP to `addr` and performs a TLS handshake for `server_name` (a DNS name or an IP).
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    // Small interactive writes (exec stdin) must not wait for Nagle's algorithm.
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("invalid server name {server_name:?}"))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr} ({server_name})"))
}

/// A failed upgrade: the server answered with something other than `101`.
#[derive(Debug, Clone)]
pub struct UpgradeError {
    /// Response status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body (possibly truncated by the client library).
    pub body: Bytes,
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upgrade failed with HTTP {}: {}",
            self.status.as_u16(),
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl std::error::Error for UpgradeError {}

fn add_headers(headers: &mut HeaderMap, extra: &[(&str, &str)]) -> Result<()> {
    for (k, v) in extra {
        headers.insert(HeaderName::try_from(*k)?, HeaderValue::try_from(*v)?);
    }
    Ok(())
}

async fn ws_connect<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
    offer: &str,
    extra_headers: &[(&str, &str)],
) -> Result<(Ws, Option<String>, HeaderMap)> {
    let mut req = format!("ws://{host}{path_and_query}").into_client_request()?;
    req.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::try_from(offer)?,
    );
    add_headers(req.headers_mut(), extra_headers)?;
    let boxed: BoxIo = Box::new(io);
    match tokio_tungstenite::client_async(req, boxed).await {
        Ok((ws, resp)) => {
            let protocol = resp
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok((ws, protocol, resp.headers().clone()))
        }
        Err(tungstenite::Error::Http(resp)) => Err(UpgradeError {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.body().clone().map(Bytes::from).unwrap_or_default(),
        }
        .into()),
        Err(e) => Err(anyhow!(e).context("websocket handshake")),
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(data.len() + 1);
    b.put_u8(channel);
    b.extend_from_slice(data);
    Message::Binary(b.freeze())
}

/// Reads the next binary message as (channel, payload); `None` on close.
async fn next_frame(stream: &mut SplitStream<Ws>) -> Result<Option<(u8, Bytes)>> {
    loop {
        match stream.next().await {
            None => return Ok(None),
            Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                return Ok(None);
            }
            Some(Err(e)) => return Err(anyhow!(e).context("websocket read")),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Binary(b))) => {
                if let Some(&channel) = b.first() {
                    return Ok(Some((channel, b.slice(1..))));
                }
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Output of a remote command.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Data on channel 1.
    Stdout(Bytes),
    /// Data on channel 2.
    Stderr(Bytes),
    /// Channel 3: the JSON `metav1.Status` (v4/v5), or a JSON string holding the plain-text
    /// error of older protocols.
    Status(serde_json::Value),
}

/// Everything a remote command produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    /// All stdout bytes.
    pub stdout: Vec<u8>,
    /// All stderr bytes.
    pub stderr: Vec<u8>,
    /// The last status received, `Value::Null` when none.
    pub status: serde_json::Value,
}

impl ExecOutput {
    /// Exit code derived from the status: `Success` → 0, `NonZeroExitCode` → the code from
    /// the `ExitCode` cause; `None` otherwise.
    pub fn exit_code(&self) -> Option<i32> {
        match self.status["status"].as_str()? {
            "Success" => Some(0),
            _ if self.status["reason"] == "NonZeroExitCode" => self.status["details"]["causes"]
                .as_array()?
                .iter()
                .find(|c| c["reason"] == "ExitCode")?["message"]
                .as_str()?
                .parse()
                .ok(),
            _ => None,
        }
    }
}

/// A remote-command (exec/attach) session over WebSocket ([`exec_ws`]) or SPDY/3.1
/// ([`exec_spdy`]).
pub struct ExecSession {
    protocol: Option<String>,
    headers: HeaderMap,
    writer: ExecWriter,
    reader: ExecReader,
}

impl fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecSession")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Sending half of an [`ExecSession`].
pub struct ExecWriter {
    inner: ExecWriterInner,
}

enum ExecWriterInner {
    Ws {
        sink: SplitSink<Ws, Message>,
        v5: bool,
    },
    Spdy(spdy_client::ExecWriter),
}

impl fmt::Debug for ExecWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let transport = match &self.inner {
            ExecWriterInner::Ws { v5: true, .. } => "websocket v5",
            ExecWriterInner::Ws { .. } => "websocket",
            ExecWriterInner::Spdy(_) => "SPDY/3.1",
        };
        f.debug_struct("ExecWriter")
            .field("transport", &transport)
            .finish_non_exhaustive()
    }
}

/// Receiving half of an [`ExecSession`].
pub struct ExecReader {
    inner: ExecReaderInner,
}

enum ExecReaderInner {
    Ws { stream: SplitStream<Ws> },
    Spdy(Box<spdy_client::ExecReader>),
}

impl fmt::Debug for ExecReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecReader").finish_non_exhaustive()
    }
}

/// Upgrades `io` to a remote-command websocket like kube-apiserver/kubectl do.
///
/// Sends `GET <path_and_query>` with `Host: <host>` and
/// `Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io` (an entry for
/// `Sec-WebSocket-Protocol` in `extra_headers` replaces the offer). A non-101 answer is returned
/// as an [`UpgradeError`] inside the `anyhow::Error` (use `downcast_ref`).
pub async fn exec_ws<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
) -> Result<ExecSession> {
    let (ws, protocol, headers) =
        ws_connect(io, host, path_and_query, EXEC_OFFER, extra_headers).await?;
    let v5 = protocol.as_deref() == Some("v5.channel.k8s.io");
    let (sink, stream) = ws.split();
    Ok(ExecSession {
        protocol,
        headers,
        writer: ExecWriter {
            inner: ExecWriterInner::Ws { sink, v5 },
        },
        reader: ExecReader {
            inner: ExecReaderInner::Ws { stream },
        },
    })
}

/// Upgrades `io` to a SPDY/3.1 remote-command session like kube-apiserver does towards a
/// kubelet (and kubectl with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`).
///
/// Sends `POST <path_and_query>` with `Connection: Upgrade`, `Upgrade: SPDY/3.1` and one
/// `X-Stream-Protocol-Version` header per entry of [`SPDY_EXEC_PROTOCOLS`] (entries named
/// `X-Stream-Protocol-Version` in `extra_headers` replace that offer). Then, like client-go's
/// SPDY executor, it creates the streams one by one, each waiting for its SYN_REPLY: `error`,
/// then `stdin`, `stdout`, `stderr` as the query's `input`, `output`, `error` ask (no stderr
/// with `tty`), then `resize` with `tty` on v3 and later. [`ExecReader::next`] reports the
/// error stream's content as the [`Event::Status`] once all output ended; [`ExecWriter::close_stdin`]
/// half-closes the stdin stream (every version). A non-101 answer is an [`UpgradeError`] inside
/// the `anyhow::Error`.
pub async fn exec_spdy<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
) -> Result<ExecSession> {
    let s = spdy_client::exec(io, host, path_and_query, extra_headers).await?;
    Ok(ExecSession {
        protocol: s.protocol,
        headers: s.headers,
        writer: ExecWriter {
            inner: ExecWriterInner::Spdy(s.writer),
        },
        reader: ExecReader {
            inner: ExecReaderInner::Spdy(Box::new(s.reader)),
        },
    })
}

/// The status event for an error channel/stream payload: JSON when it parses, else the text.
fn event_from_status(data: &[u8]) -> Event {
    let status = serde_json::from_slice(data)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(data).into_owned()));
    Event::Status(status)
}

impl ExecSession {
    /// The negotiated subprotocol (`None` if the server chose none).
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Headers of the `101` response.
    pub fn response_headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// See [`ExecWriter::send_stdin`].
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.writer.send_stdin(data).await
    }

    /// See [`ExecWriter::close_stdin`].
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.writer.close_stdin().await
    }

    /// See [`ExecWriter::resize`].
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        self.writer.resize(width, height).await
    }

    /// See [`ExecReader::next`].
    pub async fn next(&mut self) -> Result<Option<Event>> {
        self.reader.next().await
    }

    /// See [`ExecReader::collect`].
    pub async fn collect(self) -> Result<ExecOutput> {
        self.reader.collect().await
    }

    /// Splits into independently usable halves (e.g. write stdin from one task while reading).
    pub fn split(self) -> (ExecWriter, ExecReader) {
        (self.writer, self.reader)
    }
}

impl ExecWriter {
    /// Sends `data` as stdin: over WebSocket on channel 0 in messages of at most
    /// [`MAX_MESSAGE_PAYLOAD`] bytes, over SPDY on the stdin stream.
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.inner {
            ExecWriterInner::Ws { sink, .. } => {
                for chunk in data.chunks(MAX_MESSAGE_PAYLOAD) {
                    sink.send(frame(0, chunk)).await?;
                }
                Ok(())
            }
            ExecWriterInner::Spdy(w) => w.send_stdin(data).await,
        }
    }

    /// Signals end of stdin. Over WebSocket this is the v5 CLOSE message (channel 255, payload
    /// `[0]`) and fails when the negotiated protocol is not `v5.channel.k8s.io` (older
    /// protocols cannot half-close); over SPDY it is a FIN on the stdin stream (every version).
    pub async fn close_stdin(&mut self) -> Result<()> {
        match &mut self.inner {
            ExecWriterInner::Ws { sink, v5 } => {
                if !*v5 {
                    bail!("close_stdin needs v5.channel.k8s.io; this protocol cannot half-close");
                }
                sink.send(frame(255, &[0])).await?;
                Ok(())
            }
            ExecWriterInner::Spdy(w) => w.close_stdin().await,
        }
    }

    /// Sends a terminal resize (`{"Width":w,"Height":h}`): WebSocket channel 4, or the SPDY
    /// resize stream (which exists with `tty` on v3 and later).
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        match &mut self.inner {
            ExecWriterInner::Ws { sink, .. } => {
                let json = format!(r#"{{"Width":{width},"Height":{height}}}"#);
                sink.send(frame(4, json.as_bytes())).await?;
                Ok(())
            }
            ExecWriterInner::Spdy(w) => w.resize(width, height).await,
        }
    }

    /// Ends the session from the client side: a websocket Close frame; over SPDY what
    /// client-go does (reset the streams, GOAWAY, close the connection).
    pub async fn close(&mut self) -> Result<()> {
        match &mut self.inner {
            ExecWriterInner::Ws { sink, .. } => {
                sink.close().await?;
            }
            ExecWriterInner::Spdy(w) => w.close(),
        }
        Ok(())
    }
}

impl ExecReader {
    /// The next stdout/stderr/status event; `None` once the session is over (websocket
    /// closed; over SPDY, every stream ended). Empty messages and other channels are skipped.
    /// Over SPDY the status comes last, after stdout and stderr ended.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        let stream = match &mut self.inner {
            ExecReaderInner::Ws { stream } => stream,
            ExecReaderInner::Spdy(r) => return r.next().await,
        };
        loop {
            let Some((channel, data)) = next_frame(stream).await? else {
                return Ok(None);
            };
            match channel {
                1 if !data.is_empty() => return Ok(Some(Event::Stdout(data))),
                2 if !data.is_empty() => return Ok(Some(Event::Stderr(data))),
                3 if !data.is_empty() => return Ok(Some(event_from_status(&data))),
                _ => {}
            }
        }
    }

    /// Reads until the server closes, gathering all output.
    pub async fn collect(mut self) -> Result<ExecOutput> {
        let mut out = ExecOutput::default();
        while let Some(event) = self.next().await? {
            match event {
                Event::Stdout(d) => out.stdout.extend_from_slice(&d),
                Event::Stderr(d) => out.stderr.extend_from_slice(&d),
                Event::Status(s) => out.status = s,
            }
        }
        Ok(out)
    }
}

/// A port-forward session for one port: over WebSocket ([`port_forward_ws`], channels 0 data
/// and 1 error) or SPDY/3.1 ([`port_forward_spdy`], a data and an error stream).
pub struct PortForwardSession {
    protocol: Option<String>,
    writer: PortForwardWriter,
    reader: PortForwardReader,
}

impl fmt::Debug for PortForwardSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortForwardSession")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Sending half of a [`PortForwardSession`].
pub struct PortForwardWriter {
    inner: PortForwardWriterInner,
}

enum PortForwardWriterInner {
    Ws(SplitSink<Ws, Message>),
    Spdy(spdy_client::PortForwardWriter),
}

impl fmt::Debug for PortForwardWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortForwardWriter").finish_non_exhaustive()
    }
}

/// Receiving half of a [`PortForwardSession`].
pub struct PortForwardReader {
    inner: PortForwardReaderInner,
}

enum PortForwardReaderInner {
    Ws {
        stream: SplitStream<Ws>,
        data_prefix: bool,
        error_prefix: bool,
        port: Option<u16>,
    },
    Spdy(spdy_client::PortForwardReader),
}

impl fmt::Debug for PortForwardReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortForwardReader")
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

/// Upgrades `io` to a port-forward websocket for a single port
/// (`path_and_query` like `/portForward/ns/pod?port=8080`), offering
/// `v4.channel.k8s.io, portforward.k8s.io`.
pub async fn port_forward_ws<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
) -> Result<PortForwardSession> {
    port_forward_ws_with_headers(io, host, path_and_query, &[]).await
}

/// [`port_forward_ws`] with extra request headers.
pub async fn port_forward_ws_with_headers<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
) -> Result<PortForwardSession> {
    let (ws, protocol, _) =
        ws_connect(io, host, path_and_query, PORT_FORWARD_OFFER, extra_headers).await?;
    let (sink, stream) = ws.split();
    Ok(PortForwardSession {
        protocol,
        writer: PortForwardWriter {
            inner: PortForwardWriterInner::Ws(sink),
        },
        reader: PortForwardReader {
            inner: PortForwardReaderInner::Ws {
                stream,
                data_prefix: true,
                error_prefix: true,
                port: None,
            },
        },
    })
}

/// Upgrades `io` to a SPDY/3.1 port-forward session for the single port in the query
/// (`/portForward/ns/pod?port=8080`), like kube-apiserver towards a kubelet: offers
/// `X-Stream-Protocol-Version: portforward.k8s.io` (unless `extra_headers` name one), then, like
/// client-go, opens an `error` stream (and closes its own side of it at once) and a `data`
/// stream, both with headers `port` and `requestID: 0`. The kubelet ignores the query; the
/// port travels in the stream headers. A non-101 answer is an [`UpgradeError`].
pub async fn port_forward_spdy<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
) -> Result<PortForwardSession> {
    let s = spdy_client::port_forward(io, host, path_and_query, extra_headers).await?;
    Ok(PortForwardSession {
        protocol: Some(s.protocol),
        writer: PortForwardWriter {
            inner: PortForwardWriterInner::Spdy(s.writer),
        },
        reader: PortForwardReader {
            inner: PortForwardReaderInner::Spdy(s.reader),
        },
    })
}

impl PortForwardSession {
    /// The negotiated subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// See [`PortForwardWriter::write`].
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.writer.write(data).await
    }

    /// See [`PortForwardReader::read`].
    pub async fn read(&mut self) -> Result<Option<Bytes>> {
        self.reader.read().await
    }

    /// See [`PortForwardWriter::close`].
    pub async fn close(&mut self) -> Result<()> {
        self.writer.close().await
    }

    /// Splits into halves so one task can write while another reads.
    pub fn split(self) -> (PortForwardWriter, PortForwardReader) {
        (self.writer, self.reader)
    }
}

impl PortForwardWriter {
    /// Sends `data` to the target: over WebSocket on the data channel in messages of at most
    /// [`MAX_MESSAGE_PAYLOAD`] bytes, over SPDY on the data stream.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.inner {
            PortForwardWriterInner::Ws(sink) => {
                for chunk in data.chunks(MAX_MESSAGE_PAYLOAD) {
                    sink.send(frame(0, chunk)).await?;
                }
                Ok(())
            }
            PortForwardWriterInner::Spdy(w) => w.write(data).await,
        }
    }

    /// Ends the client's sending side: closes the websocket, or half-closes (FIN) the SPDY
    /// data stream; the server then shuts down its connection to the target for writing.
    pub async fn close(&mut self) -> Result<()> {
        match &mut self.inner {
            PortForwardWriterInner::Ws(sink) => {
                sink.close().await?;
                Ok(())
            }
            PortForwardWriterInner::Spdy(w) => w.close().await,
        }
    }
}

impl PortForwardReader {
    /// The next data bytes from the target (port prefix stripped); `Ok(None)` when the server
    /// closed the websocket or the data stream; `Err` carrying the text when the error
    /// channel or stream reports something.
    pub async fn read(&mut self) -> Result<Option<Bytes>> {
        let (stream, data_prefix, error_prefix, port) = match &mut self.inner {
            PortForwardReaderInner::Ws {
                stream,
                data_prefix,
                error_prefix,
                port,
            } => (stream, data_prefix, error_prefix, port),
            PortForwardReaderInner::Spdy(r) => return r.read().await,
        };
        loop {
            let Some((channel, mut data)) = next_frame(stream).await? else {
                return Ok(None);
            };
            let prefix_pending = match channel {
                0 => &mut *data_prefix,
                1 => &mut *error_prefix,
                _ => continue,
            };
            if *prefix_pending {
                if data.len() < 2 {
                    bail!("port-forward: first message on channel {channel} lacks the port");
                }
                *port = Some(u16::from_le_bytes([data[0], data[1]]));
                *prefix_pending = false;
                data = data.slice(2..);
            }
            if data.is_empty() {
                continue;
            }
            if channel == 1 {
                bail!("port-forward error: {}", String::from_utf8_lossy(&data));
            }
            return Ok(Some(data));
        }
    }

    /// The forwarded port: over WebSocket as announced by the server (known after its first
    /// message), over SPDY the port requested.
    pub fn port(&self) -> Option<u16> {
        match &self.inner {
            PortForwardReaderInner::Ws { port, .. } => *port,
            PortForwardReaderInner::Spdy(r) => r.port(),
        }
    }
}

/// A TCP echo server on `127.0.0.1:0`; dropping it stops it.
#[derive(Debug)]
pub struct EchoServer {
    cancel: CancellationToken,
    tracker: TaskTracker,
    _guard: DropGuard,
}

impl EchoServer {
    /// Stops accepting, closes connections and waits for all tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Starts a TCP echo server. Each connection echoes bytes until the peer's EOF, then closes.
pub async fn echo_server() -> Result<(SocketAddr, EchoServer)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (c, t) = (cancel.clone(), tracker.clone());
    tracker.spawn(async move {
        loop {
            let tcp = tokio::select! {
                r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                () = c.cancelled() => return,
            };
            let c = c.clone();
            t.spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                tokio::select! {
                    _ = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match r.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => if w.write_all(&buf[..n]).await.is_err() { break },
                            }
                        }
                        let _ = w.shutdown().await;
                    } => {}
                    () = c.cancelled() => {}
                }
            });
        }
    });
    Ok((
        addr,
        EchoServer {
            _guard: cancel.clone().drop_guard(),
            cancel,
            tracker,
        },
    ))
}

async fn http1_send<S: Io>(io: S, req: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection task ends when the response is complete (or its body dropped) and the
    // sender is gone, or when the peer closes.
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send.send_request(req).await?)
}

/// Sends one HTTP/1.1 request over `io` (adds `Host: <host>` unless present).
pub async fn http_request<S: Io>(
    io: S,
    host: &str,
    mut req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>> {
    if !req.headers().contains_key(header::HOST) {
        req.headers_mut()
            .insert(header::HOST, HeaderValue::try_from(host)?);
    }
    http1_send(io, req).await
}

/// `GET <path_and_query>` with extra headers.
pub async fn http_get<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
) -> Result<Response<Incoming>> {
    let mut req = Request::get(path_and_query).body(Full::new(Bytes::new()))?;
    add_headers(req.headers_mut(), extra_headers)?;
    http_request(io, host, req).await
}

/// Reads a whole response body.
pub async fn body_bytes(body: Incoming) -> Result<Bytes> {
    Ok(body
        .collect()
        .await
        .context("reading response body")?
        .to_bytes())
}

/// Sends `GET <path_and_query>` with `Connection: Upgrade` and `Upgrade: <protocol>`, and
/// returns the `101` response head plus the raw upgraded stream. A non-101 answer becomes an
/// [`UpgradeError`] (with the full body).
pub async fn raw_upgrade<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
    protocol: &str,
    extra_headers: &[(&str, &str)],
) -> Result<(Response<()>, TokioIo<Upgraded>)> {
    let mut req = Request::get(path_and_query).body(Full::new(Bytes::new()))?;
    req.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    req.headers_mut()
        .insert(header::UPGRADE, HeaderValue::try_from(protocol)?);
    add_headers(req.headers_mut(), extra_headers)?;
    let resp = http_request(io, host, req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Err(UpgradeError {
            status: parts.status,
            headers: parts.headers,
            body: body_bytes(body).await.unwrap_or_default(),
        }
        .into());
    }
    let (parts, body) = resp.into_parts();
    let upgraded = hyper::upgrade::on(Response::from_parts(parts.clone(), body)).await?;
    Ok((Response::from_parts(parts, ()), TokioIo::new(upgraded)))
}
