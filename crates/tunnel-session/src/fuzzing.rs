//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`), kept in the crate so the
//! tests that replay the corpora run exactly the code libFuzzer runs.
//!
//! No input may make them panic or hang, except through the assertions written here: those
//! state properties of what was accepted (a message within the limit, a window of at least
//! 1024, …), and a failed one is a bug the fuzzer should report.

// A panic is how a fuzz harness reports: the `expect`s here state what the harness itself
// relies on (a runtime, a source that never waits), never what an input controls.
#![allow(clippy::expect_used)]

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tungstenite::handshake::derive_accept_key;

use crate::batch::Batch;
use crate::dialect::{Dialect, HOSTNAME_HEADER};
use crate::registry::Registry;
use crate::server::{TunnelServer, TunnelServerConfig, fuzz_check};
use crate::ws::{DataKind, FrameReader, OpCode, WsEvent, WsRole};

/// The session's own limit on a websocket message (a tunnel message header and the largest
/// DATA payload), as `session.rs` sets it.
const SESSION_MAX_MESSAGE: usize =
    stream_proto::MAX_DATA_LEN + stream_proto::Message::MAX_HEADER_LEN;
/// A small limit, so that fragments and frames cross it often.
const SMALL_MAX_MESSAGE: usize = 64;
/// How long one fuzz input may take through hyper before it counts as a hang.
const HANG: Duration = Duration::from_secs(10);

/// Reads `data` as the websocket byte stream from a peer, as both roles (the cloud reads
/// masked client frames, the edge unmasked server frames), under the session's limit and a
/// small one. The first byte sets how many bytes each read returns, so frames and their
/// headers are split across reads as TCP splits them.
///
/// Every message accepted must fit the limit, and every control payload RFC 6455's 125
/// bytes. Each message the cloud accepts is framed again by our encoder, as the edge would
/// send it, and must read back unchanged.
pub fn frames(data: &[u8]) {
    let Some((&step, wire)) = data.split_first() else {
        return;
    };
    // 0 means "everything available at once".
    let step = if step == 0 {
        usize::MAX
    } else {
        usize::from(step)
    };
    for role in [WsRole::Server, WsRole::Client] {
        for max in [SMALL_MAX_MESSAGE, SESSION_MAX_MESSAGE] {
            let events = read_frames(wire, step, role, max);
            for event in &events {
                match event {
                    WsEvent::Message(_, payload) => assert!(
                        payload.len() <= max,
                        "a message of {} bytes passed the limit of {max}",
                        payload.len()
                    ),
                    WsEvent::Ping(p) | WsEvent::Pong(p) => assert!(
                        p.len() <= 125,
                        "a control frame of {} bytes was accepted",
                        p.len()
                    ),
                    WsEvent::Close => {}
                }
            }
            if role == WsRole::Server {
                round_trip(&events, max);
            }
        }
    }
}

/// Every event the reader yields before the end, an error or a close.
fn read_frames(wire: &[u8], step: usize, role: WsRole, max: usize) -> Vec<WsEvent> {
    let io = Trickle::new(wire, step);
    let mut reader = FrameReader::new(io, role, max, Bytes::new());
    let mut events = Vec::new();
    loop {
        // The source is always ready, so a read never waits: not finishing here is a hang.
        let next = reader
            .next()
            .now_or_never()
            .expect("the frame reader waited on a source that is always ready");
        match next {
            Ok(Some(WsEvent::Close)) => {
                events.push(WsEvent::Close);
                return events;
            }
            Ok(Some(event)) => events.push(event),
            Ok(None) | Err(_) => return events,
        }
    }
}

/// Frames the cloud's `messages` as the edge's session writer does (`batch::Batch`, which
/// masks a tunnel header and its payload in two parts) and reads them back as the cloud.
fn round_trip(events: &[WsEvent], max: usize) {
    let mut batch = Batch::default();
    let mut sent = Vec::new();
    for event in events {
        if let WsEvent::Message(kind, payload) = event {
            // The writer frames a message as a small head plus its payload; split where a
            // tunnel message header would end, so masking in parts is exercised.
            // Every other payload is shared (masked while copied), the rest owned (masked in
            // place), as the writer finds them.
            let split = payload.len().min(10);
            let rest = if sent.len() % 2 == 0 {
                payload.slice(split..)
            } else {
                Bytes::copy_from_slice(&payload[split..])
            };
            batch.push(
                WsRole::Client,
                crate::ws::data_opcode(*kind),
                &payload[..split],
                rest,
            );
            sent.push((*kind, payload.clone()));
        }
    }
    if sent.is_empty() {
        return;
    }
    batch.push(
        WsRole::Client,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Close),
        &[],
        Bytes::new(),
    );
    let wire = batch.into_vec();
    let back: Vec<(DataKind, Bytes)> = read_frames(&wire, usize::MAX, WsRole::Server, max)
        .into_iter()
        .filter_map(|e| match e {
            WsEvent::Message(kind, payload) => Some((kind, payload)),
            _ => None,
        })
        .collect();
    assert_eq!(back, sent, "messages did not survive our own framing");
}

/// A source that hands out at most `step` bytes per read, and is always ready.
pub struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl<'a> Trickle<'a> {
    /// Hands out `data`, `step` bytes (at least one) per read.
    pub fn new(data: &'a [u8], step: usize) -> Self {
        Trickle {
            data,
            step: step.max(1),
        }
    }

    /// How many bytes are still to be handed out.
    pub fn remaining(&self) -> usize {
        self.data.len()
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.data.len().min(self.step).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Serves `data` as the bytes of an edge's upgrade request, through hyper's HTTP/1 server as
/// the tunnel listener does, and runs the handshake check on every request hyper parses:
/// once with a client certificate naming the node the request claims (so the checks past
/// the identity run), once with none.
///
/// An accepted request must carry a key whose accept value we computed, a window of at
/// least 1024 for tether/2, and the node of the certificate.
pub fn handshake(data: &[u8]) {
    let server = fuzz_server();
    serve_http1(data, |req| check_both_ways(server, req));
}

/// Serves `data` as the bytes a client sent on one connection, through hyper's HTTP/1
/// server as our listeners run it, handing every request hyper parses to `on_request`
/// (which answers an empty 200). Panics if that takes longer than a generous bound.
pub fn serve_http1(data: &[u8], on_request: impl Fn(&Request<Incoming>)) {
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let (mut client, server_io) = tokio::io::duplex(64 * 1024);
            let on_request = &on_request;
            let service = service_fn(|req: Request<Incoming>| async move {
                on_request(&req);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(server_io), service);
            let peer = async {
                // The server may stop reading at a bad request; what it did not read is moot.
                let _ = client.write_all(data).await;
                let _ = client.shutdown().await;
                let mut answer = Vec::new();
                let _ = client.read_to_end(&mut answer).await;
            };
            // A request hyper refuses ends the connection with an error: that is its answer.
            let (_served, ()) = tokio::time::timeout(HANG, async { tokio::join!(conn, peer) })
                .await
                .expect("one connection through hyper hung");
        });
    });
}

fn check_both_ways(server: &TunnelServer, req: &Request<Incoming>) {
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 40_000);
    let claimed = req
        .headers()
        .get(HOSTNAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned());
    if let Some(claimed) = claimed
        && let Ok(accepted) = fuzz_check::check(server, req, peer, Ok(claimed.clone()))
    {
        assert_eq!(
            accepted.node.name, claimed,
            "accepted a node its certificate does not name"
        );
        assert!(
            !accepted.node.name.is_empty(),
            "accepted an empty node name"
        );
        assert!(accepted.node.ip.is_some(), "an accepted node has no IP");
        let key = req
            .headers()
            .get(http::header::SEC_WEBSOCKET_KEY)
            .expect("accepted without a Sec-WebSocket-Key");
        assert_eq!(accepted.accept_key, derive_accept_key(key.as_bytes()));
        match accepted.dialect {
            Dialect::Tether2 => assert!(accepted.peer_window >= 1024),
            Dialect::KubeEdge => assert_eq!(accepted.peer_window, 0),
        }
    }
    match fuzz_check::check(server, req, peer, Err("no client certificate".into())) {
        Ok(_) => panic!("accepted a tunnel without a client certificate"),
        Err((status, reason)) => assert!(
            status.is_client_error() && !reason.is_empty(),
            "a refusal must be a 4xx with a reason, not {status} {reason:?}"
        ),
    }
}

/// One server for every input: the check reads only its registry (empty) and config.
fn fuzz_server() -> &'static TunnelServer {
    static SERVER: OnceLock<TunnelServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let tls = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCertificate));
        TunnelServer::new(
            Arc::new(tls),
            Arc::new(Registry::new()),
            TunnelServerConfig::default(),
        )
    })
}

thread_local! {
    /// One runtime per thread: the replay tests run inputs on several threads at once.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// The fuzz server never handshakes TLS, so it needs no certificate.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}
