//! The SPDY/3.1 transport of the test clients: what kube-apiserver (and kubectl without
//! websockets) sends to a kubelet.
//!
//! [`spdy_upgrade`] writes the HTTP/1.1 upgrade request itself and reads the response head
//! itself (bounded), so that the caller gets the kubelet's exact status and headers and the
//! bytes after the head are not lost; `exec_spdy` and `port_forward_spdy` build on it and
//! behave like client-go's SPDY executor and port-forwarder: streams created one at a time in
//! client-go's order, each waiting for its SYN_REPLY, the status read from the error stream
//! until it ends. They return the transport-neutral sessions of [`super`], so a scenario can run
//! over either transport.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use spdy::{Connection, Driver, Headers, Stream};
use tokio::{
    io::{
        AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf, ReadHalf, WriteHalf,
    },
    task::JoinHandle,
};
use tokio_util::task::AbortOnDropHandle;

use super::{Event, Io, UpgradeError, event_from_status};

/// Stream protocols [`exec_spdy`](super::exec_spdy) offers by default, in client-go's order of preference.
pub const SPDY_EXEC_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward stream protocol ([`port_forward_spdy`](super::port_forward_spdy)).
pub const SPDY_PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";

/// Largest response head [`spdy_upgrade`] reads.
const MAX_HEAD: usize = 64 * 1024;
/// Largest error body kept in an [`UpgradeError`].
const MAX_ERROR_BODY: usize = 1 << 20;
/// How long reading an error body may take.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest status collected from the error stream.
const MAX_STATUS: usize = 64 * 1024;

/// An [`Io`] whose first bytes were already read (the part of the upgrade response's read
/// that followed the head: the server's first frames).
struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn has_protocol_header(headers: &[(&str, &str)]) -> bool {
    headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(PROTOCOL_HEADER))
}

/// Sends `POST <path_and_query>` with `Host: <host>`, `Connection: Upgrade`,
/// `Upgrade: SPDY/3.1` and `headers` (in order; repeat a name for several values, e.g.
/// several `X-Stream-Protocol-Version` offers as client-go sends them), reads the response
/// head (at most 64 KiB) and, on `101` with `Upgrade: SPDY/3.1`, returns it with a client
/// [`spdy::Connection`] and its [`Driver`], which the caller must spawn.
///
/// Any other status is returned as an [`UpgradeError`] (with the body, up to 1 MiB) inside
/// the `anyhow::Error`.
pub async fn spdy_upgrade<S: Io>(
    mut io: S,
    host: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<(Response<()>, Connection, Driver)> {
    let mut head = format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        // Validate like an HTTP library would, so a test cannot inject a line by mistake.
        HeaderName::try_from(*name).with_context(|| format!("header name {name:?}"))?;
        HeaderValue::try_from(*value).with_context(|| format!("header value {value:?}"))?;
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes())
        .await
        .context("sending the upgrade request")?;
    io.flush().await?;

    let mut buf = BytesMut::with_capacity(4096);
    let (resp, head_len) = loop {
        if io
            .read_buf(&mut buf)
            .await
            .context("reading the upgrade response")?
            == 0
        {
            bail!("connection closed before the upgrade response head");
        }
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&buf).context("parsing the upgrade response")? {
            httparse::Status::Complete(len) => {
                let mut resp = Response::new(());
                *resp.status_mut() = StatusCode::from_u16(parsed.code.unwrap_or(0))?;
                for h in parsed.headers.iter() {
                    resp.headers_mut().append(
                        HeaderName::try_from(h.name)?,
                        HeaderValue::from_bytes(h.value)?,
                    );
                }
                break (resp, len);
            }
            httparse::Status::Partial if buf.len() > MAX_HEAD => {
                bail!("upgrade response head longer than {MAX_HEAD} bytes");
            }
            httparse::Status::Partial => {}
        }
    };
    buf.advance(head_len);
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let body =
            tokio::time::timeout(ERROR_BODY_TIMEOUT, read_body(&mut io, resp.headers(), buf))
                .await
                .unwrap_or_else(|_| Ok(Bytes::new()))
                .unwrap_or_default();
        return Err(UpgradeError {
            status: resp.status(),
            headers: resp.headers().clone(),
            body,
        }
        .into());
    }
    // Like client-go's SpdyRoundTripper.NewConnection.
    let token = |name: header::HeaderName, want: &str| {
        resp.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains(want))
    };
    if !token(header::CONNECTION, "upgrade") || !token(header::UPGRADE, "spdy/3.1") {
        bail!(
            "unable to upgrade connection: 101 without Connection: Upgrade and Upgrade: SPDY/3.1"
        );
    }
    let io = Rewind {
        prefix: buf.freeze(),
        inner: io,
    };
    let (conn, driver) = Connection::client(io, spdy::Config::default());
    Ok((resp, conn, driver))
}

/// Reads an HTTP/1.1 body after its head: `Content-Length`, chunked, or up to EOF; at most
/// [`MAX_ERROR_BODY`] bytes are kept.
async fn read_body<S: Io>(io: &mut S, headers: &HeaderMap, mut buf: BytesMut) -> Result<Bytes> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"))
    });
    if let Some(len) = length {
        let want = len.min(MAX_ERROR_BODY);
        while buf.len() < want {
            if io.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        buf.truncate(want);
        return Ok(buf.freeze());
    }
    if chunked {
        let mut body = Vec::new();
        loop {
            let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
                if buf.len() > MAX_HEAD || io.read_buf(&mut buf).await? == 0 {
                    return Ok(body.into());
                }
                continue;
            };
            let size_text = std::str::from_utf8(&buf[..line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
            if size == 0 || body.len() + size > MAX_ERROR_BODY {
                return Ok(body.into());
            }
            while buf.len() < line_end + 2 + size + 2 {
                if io.read_buf(&mut buf).await? == 0 {
                    return Ok(body.into());
                }
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.advance(line_end + 2 + size + 2);
        }
    }
    while buf.len() < MAX_ERROR_BODY {
        if io.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    buf.truncate(MAX_ERROR_BODY);
    Ok(buf.freeze())
}

/// The spawned driver; aborted when the last half of a session is dropped.
type DriverTask = Arc<AbortOnDropHandle<Result<(), spdy::Error>>>;

fn spawn_driver(driver: Driver) -> DriverTask {
    let handle: JoinHandle<Result<(), spdy::Error>> = tokio::spawn(driver);
    Arc::new(AbortOnDropHandle::new(handle))
}

/// Go-style boolean of a query parameter (absent: false).
fn query_flag(path_and_query: &str, name: &str) -> Result<bool> {
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return match v {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                other => Err(anyhow!("query parameter {name}={other} is not a boolean")),
            };
        }
    }
    Ok(false)
}

/// The remote command protocols, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    V1,
    V2,
    V3,
    V4,
}

impl Version {
    fn of(protocol: Option<&str>) -> Self {
        match protocol {
            Some("v4.channel.k8s.io") => Version::V4,
            Some("v3.channel.k8s.io") => Version::V3,
            Some("v2.channel.k8s.io") => Version::V2,
            _ => Version::V1,
        }
    }
}

async fn open(conn: &Connection, headers: Headers) -> Result<Stream> {
    let kind = headers.get("streamtype").unwrap_or("").to_owned();
    conn.open_stream(headers)
        .await
        .with_context(|| format!("creating the {kind} stream"))
}

/// The parts [`super::exec_spdy`] assembles into an [`super::ExecSession`].
pub(super) struct SpdyExec {
    pub(super) protocol: Option<String>,
    pub(super) headers: HeaderMap,
    pub(super) writer: ExecWriter,
    pub(super) reader: ExecReader,
}

/// Upgrades and creates the streams like client-go's `streamProtocolV2..V4.createStreams`.
pub(super) async fn exec<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
) -> Result<SpdyExec> {
    // The kubelet's names, or the API server's (`pods/<p>/exec?stdin=true&stdout=true`).
    let stdin = query_flag(path_and_query, "input")? || query_flag(path_and_query, "stdin")?;
    let stdout = query_flag(path_and_query, "output")? || query_flag(path_and_query, "stdout")?;
    let stderr = query_flag(path_and_query, "error")? || query_flag(path_and_query, "stderr")?;
    let tty = query_flag(path_and_query, "tty")?;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if !has_protocol_header(extra_headers) {
        headers.extend(SPDY_EXEC_PROTOCOLS.iter().map(|p| (PROTOCOL_HEADER, *p)));
    }
    headers.extend_from_slice(extra_headers);
    let (resp, conn, driver) = spdy_upgrade(io, host, path_and_query, &headers).await?;
    let driver = spawn_driver(driver);
    let protocol = resp
        .headers()
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let version = Version::of(protocol.as_deref());
    let kind = |t: &str| Headers::new().with("streamType", t);
    let error = open(&conn, kind("error")).await?;
    let stdin_stream = if stdin {
        Some(open(&conn, kind("stdin")).await?)
    } else {
        None
    };
    let stdout_stream = if stdout {
        Some(open(&conn, kind("stdout")).await?)
    } else {
        None
    };
    let stderr_stream = if stderr && !tty {
        Some(open(&conn, kind("stderr")).await?)
    } else {
        None
    };
    let resize = if tty && version >= Version::V3 {
        Some(open(&conn, kind("resize")).await?)
    } else {
        None
    };
    Ok(SpdyExec {
        protocol,
        headers: resp.headers().clone(),
        writer: ExecWriter {
            conn,
            stdin: stdin_stream,
            resize,
            _driver: driver.clone(),
        },
        reader: ExecReader {
            stdout: stdout_stream,
            stderr: stderr_stream,
            error: Some(error),
            status: Vec::new(),
            status_reported: false,
            out_buf: vec![0; 32 * 1024],
            err_buf: vec![0; 32 * 1024],
            status_buf: vec![0; 4096],
            _driver: driver,
        },
    })
}

/// Sending half of a SPDY exec session.
pub(super) struct ExecWriter {
    conn: Connection,
    stdin: Option<Stream>,
    resize: Option<Stream>,
    _driver: DriverTask,
}

impl ExecWriter {
    pub(super) async fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("no stdin stream (the request did not ask for input=1)"))?;
        stdin.write_all(data).await.context("writing stdin")?;
        Ok(())
    }

    /// FIN on the stdin stream: every SPDY protocol version can half-close.
    pub(super) async fn close_stdin(&mut self) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("no stdin stream (the request did not ask for input=1)"))?;
        stdin.shutdown().await.context("closing stdin")?;
        Ok(())
    }

    /// One JSON object per resize, newline-terminated, like Go's `json.Encoder`.
    pub(super) async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let resize = self.resize.as_mut().ok_or_else(|| {
            anyhow!("no resize stream (needs tty=1 and v3.channel.k8s.io or later)")
        })?;
        let json = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
        resize
            .write_all(json.as_bytes())
            .await
            .context("writing resize")?;
        Ok(())
    }

    /// Like client-go at the end of a session: reset the streams, GOAWAY, close.
    pub(super) fn close(&mut self) {
        self.conn.close();
    }
}

/// Receiving half of a SPDY exec session.
pub(super) struct ExecReader {
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    error: Option<Stream>,
    status: Vec<u8>,
    status_reported: bool,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
    status_buf: Vec<u8>,
    _driver: DriverTask,
}

impl ExecReader {
    /// Output as it arrives; the status (what the error stream carried) once stdout, stderr
    /// and the error stream all ended, like client-go returns it after its copies finished.
    pub(super) async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            let Self {
                stdout,
                stderr,
                error,
                status,
                status_reported,
                out_buf,
                err_buf,
                status_buf,
                ..
            } = self;
            if stdout.is_none() && stderr.is_none() && error.is_none() {
                if *status_reported || status.is_empty() {
                    return Ok(None);
                }
                *status_reported = true;
                return Ok(Some(event_from_status(status)));
            }
            tokio::select! {
                biased;
                r = read_some(stdout, out_buf) => match r.context("reading stdout")? {
                    0 => *stdout = None,
                    n => return Ok(Some(Event::Stdout(Bytes::copy_from_slice(&out_buf[..n])))),
                },
                r = read_some(stderr, err_buf) => match r.context("reading stderr")? {
                    0 => *stderr = None,
                    n => return Ok(Some(Event::Stderr(Bytes::copy_from_slice(&err_buf[..n])))),
                },
                r = read_some(error, status_buf) => match r.context("reading the error stream")? {
                    0 => *error = None,
                    n => {
                        if status.len() + n > MAX_STATUS {
                            bail!("error stream carries more than {MAX_STATUS} bytes");
                        }
                        status.extend_from_slice(&status_buf[..n]);
                    }
                },
            }
        }
    }
}

/// Reads from `stream` if present; pending forever otherwise (so `select!` skips it).
async fn read_some(stream: &mut Option<Stream>, buf: &mut [u8]) -> io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The parts [`super::port_forward_spdy`] assembles into a [`super::PortForwardSession`].
pub(super) struct SpdyPortForward {
    pub(super) protocol: String,
    pub(super) writer: PortForwardWriter,
    pub(super) reader: PortForwardReader,
}

/// Upgrades and opens one forwarded connection like client-go's `handleConnection`.
pub(super) async fn port_forward<S: Io>(
    io: S,
    host: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
) -> Result<SpdyPortForward> {
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    let port: u16 = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == "port" || *k == "ports")
        .flat_map(|(_, v)| v.split(','))
        .next()
        .ok_or_else(|| anyhow!("port_forward_spdy needs a port=N query parameter"))?
        .trim()
        .parse()
        .context("port query parameter")?;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if !has_protocol_header(extra_headers) {
        headers.push((PROTOCOL_HEADER, SPDY_PORT_FORWARD_PROTOCOL));
    }
    headers.extend_from_slice(extra_headers);
    let (resp, conn, driver) = spdy_upgrade(io, host, path_and_query, &headers).await?;
    let driver = spawn_driver(driver);
    let protocol = resp
        .headers()
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if protocol != SPDY_PORT_FORWARD_PROTOCOL {
        bail!(
            "unable to negotiate protocol: client supports {SPDY_PORT_FORWARD_PROTOCOL:?}, server returned {protocol:?}"
        );
    }
    let port_text = port.to_string();
    let stream_headers = |kind: &str| {
        Headers::new()
            .with("streamType", kind)
            .with("port", &port_text)
            .with("requestID", "0")
    };
    let mut error = open(&conn, stream_headers("error")).await?;
    // client-go never writes to the error stream and closes its side at once.
    error.shutdown().await?;
    let data = open(&conn, stream_headers("data")).await?;
    let (data_r, data_w) = tokio::io::split(data);
    Ok(SpdyPortForward {
        protocol,
        writer: PortForwardWriter {
            data: data_w,
            _conn: conn,
            _driver: driver.clone(),
        },
        reader: PortForwardReader {
            data: data_r,
            error: Some(error),
            error_text: Vec::new(),
            port,
            _driver: driver,
        },
    })
}

/// Sending half of a SPDY port-forward session.
pub(super) struct PortForwardWriter {
    data: WriteHalf<Stream>,
    _conn: Connection,
    _driver: DriverTask,
}

impl PortForwardWriter {
    pub(super) async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.data
            .write_all(data)
            .await
            .context("writing port-forward data")?;
        Ok(())
    }

    /// FIN on the data stream: the kubelet shuts the target connection down for writing.
    pub(super) async fn close(&mut self) -> Result<()> {
        self.data
            .shutdown()
            .await
            .context("closing the data stream")?;
        Ok(())
    }
}

/// Receiving half of a SPDY port-forward session.
pub(super) struct PortForwardReader {
    data: ReadHalf<Stream>,
    error: Option<Stream>,
    error_text: Vec<u8>,
    port: u16,
    _driver: DriverTask,
}

impl PortForwardReader {
    pub(super) async fn read(&mut self) -> Result<Option<Bytes>> {
        let mut buf = vec![0u8; 32 * 1024];
        let mut ebuf = [0u8; 1024];
        loop {
            tokio::select! {
                biased;
                r = read_some(&mut self.error, &mut ebuf) => match r {
                    Ok(0) | Err(_) => {
                        self.error = None;
                        self.fail_on_error_text()?;
                    }
                    Ok(n) => {
                        if self.error_text.len() + n > MAX_STATUS {
                            bail!("port-forward error stream carries more than {MAX_STATUS} bytes");
                        }
                        self.error_text.extend_from_slice(&ebuf[..n]);
                    }
                },
                r = self.data.read(&mut buf) => match r.context("reading port-forward data")? {
                    0 => {
                        // The kubelet closes the error stream before the data stream: read it
                        // to its end so that an error is not mistaken for a clean close.
                        while let Some(e) = self.error.as_mut() {
                            match e.read(&mut ebuf).await {
                                Ok(0) | Err(_) => self.error = None,
                                Ok(n) => self.error_text.extend_from_slice(&ebuf[..n.min(MAX_STATUS)]),
                            }
                        }
                        self.fail_on_error_text()?;
                        return Ok(None);
                    }
                    n => {
                        buf.truncate(n);
                        return Ok(Some(Bytes::from(buf)));
                    }
                },
            }
        }
    }

    fn fail_on_error_text(&self) -> Result<()> {
        if self.error_text.is_empty() {
            return Ok(());
        }
        bail!(
            "port-forward error: {}",
            String::from_utf8_lossy(&self.error_text)
        )
    }

    pub(super) fn port(&self) -> Option<u16> {
        Some(self.port)
    }
}
