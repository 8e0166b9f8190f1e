//! Forwarding a request to the replica that holds its node (design decision 10).
//!
//! # How this fits
//!
//! With several `cloudstream` replicas behind one Service, kube-apiserver's request for a
//! node may reach a replica whose process does not hold the node's session. A
//! [`ReplicaDirectory`] (the etcd-backed one lives outside this crate, so the stream server
//! stays free of etcd) names the replica that does; the request is relayed to that replica's
//! stream server over mutual TLS, presenting this replica's own client certificate (CN
//! `tether-replica:<id>`, see [`crate::identity`]), with two headers added:
//!
//! - [`HOP_HEADER`]: the hop marker, naming the sending replica. A request that carries it is
//!   never forwarded again: the receiver serves the node from its own sessions or answers 503
//!   with the reason, so a loop is impossible even when two directories disagree. Only a
//!   replica identity may send it; anyone else gets 403.
//! - [`NODE_HEADER`]: the node the sender resolved (by proxy path, pod lookup, Host or egress
//!   target), so the receiver does not resolve it again and cannot resolve it differently.
//!
//! Upgrades (exec, attach, port-forward; SPDY or WebSocket) travel as HTTP/1.1 upgrades:
//! the holder's 101 comes back with its headers and both upgraded connections are bridged
//! byte for byte, as the relay bridges a tunnel stream. Plain responses keep their status,
//! headers and streaming body. Dialing the holder is bounded by the dial timeout, so a stale
//! directory entry pointing at a dead replica costs one prompt 503, never a hang.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{Instrument, debug, info_span, warn};
use tunnel_session::NodeKey;

use crate::body::READ_CHUNK;
use crate::relay::{Relay, ResponseBody, copy_headers, text};
use crate::route::Operation;

/// The hop marker: set on a forwarded request to the id of the replica that forwarded it.
pub const HOP_HEADER: &str = "x-tether-forwarded-by";
/// The node a forwarded request is for, as the forwarding replica resolved it.
pub const NODE_HEADER: &str = "x-tether-node";
/// Default bound on dialing another replica (TCP and TLS).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Another replica's claim on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHolder {
    /// The node's name.
    pub node: String,
    /// The id of the replica that holds its session.
    pub replica: String,
    /// Where that replica's stream server is reached (`host:port`).
    pub addr: String,
}

/// The replicas' shared view of which replica holds which node, as the stream server needs
/// it. Lookups must answer from memory: they run on every request for a node this process
/// does not hold.
pub trait ReplicaDirectory: Send + Sync + 'static {
    /// The other replica holding the node `key` names, if the directory knows one. A claim of
    /// this very replica is not "another replica" and answers `None`.
    fn locate(&self, key: NodeKey<'_>) -> Option<RemoteHolder>;
    /// Why the directory may be out of date right now (its store is unreachable, say), for
    /// the text of a 503; `None` while it follows the store.
    fn staleness(&self) -> Option<String> {
        None
    }
}

/// How this replica forwards requests for nodes other replicas hold.
#[derive(Clone)]
pub struct Forwarding {
    /// This replica's id: the value of the hop marker it sends.
    pub replica_id: String,
    /// Which replica holds which node.
    pub directory: Arc<dyn ReplicaDirectory>,
    /// TLS towards the other replicas: their CA and this replica's client certificate.
    tls: Arc<rustls::ClientConfig>,
    /// The name every replica's serving certificate is checked against.
    server_name: ServerName<'static>,
    /// Bound on TCP connect plus TLS handshake to another replica.
    pub dial_timeout: Duration,
}

impl fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarding")
            .field("replica_id", &self.replica_id)
            .field("server_name", &self.server_name)
            .field("dial_timeout", &self.dial_timeout)
            .finish_non_exhaustive()
    }
}

impl Forwarding {
    /// Forwarding as replica `replica_id`, finding holders in `directory`, dialing them with
    /// `tls` (which should trust the replicas' serving CA and present this replica's
    /// `tether-replica:<id>` client certificate) and checking their serving certificate
    /// against `server_name`. ALPN is set to `http/1.1` here: upgrades need it.
    pub fn new(
        replica_id: impl Into<String>,
        directory: Arc<dyn ReplicaDirectory>,
        mut tls: rustls::ClientConfig,
        server_name: ServerName<'static>,
        dial_timeout: Duration,
    ) -> Forwarding {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Forwarding {
            replica_id: replica_id.into(),
            directory,
            tls: Arc::new(tls),
            server_name,
            dial_timeout,
        }
    }

    async fn dial(&self, addr: &str) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
    }
}

impl Relay {
    /// Relays `req` to the replica that holds its node and answers with what it answers.
    pub(crate) async fn forward(
        &self,
        forwarding: &Forwarding,
        req: Request<Incoming>,
        holder: RemoteHolder,
        op: Operation,
    ) -> Response<ResponseBody> {
        let span = info_span!(
            "forward",
            node = %holder.node,
            to = %holder.replica,
            addr = %holder.addr,
            op = op.as_str()
        );
        self.forward_in_span(forwarding, req, holder, op)
            .instrument(span)
            .await
    }

    async fn forward_in_span(
        &self,
        forwarding: &Forwarding,
        mut req: Request<Incoming>,
        holder: RemoteHolder,
        op: Operation,
    ) -> Response<ResponseBody> {
        let unavailable = |why: String| {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "node {} is held by cloudstream replica {} at {}, which {why}",
                    holder.node, holder.replica, holder.addr
                ),
            )
        };
        let io = match tokio::time::timeout(forwarding.dial_timeout, forwarding.dial(&holder.addr))
            .await
        {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                self.observer.forwarded("unreachable");
                self.observer.stream_failed(op, "unavailable");
                warn!(error = %e, "cannot reach the replica holding the node");
                return unavailable(format!("cannot be reached: {e}"));
            }
            Err(_) => {
                self.observer.forwarded("unreachable");
                self.observer.stream_failed(op, "unavailable");
                warn!(timeout = ?forwarding.dial_timeout, "the replica holding the node did not answer the dial");
                return unavailable(format!(
                    "did not answer within {:?}",
                    forwarding.dial_timeout
                ));
            }
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(io)).await {
                Ok(pair) => pair,
                Err(e) => {
                    self.observer.forwarded("error");
                    return unavailable(format!("failed the HTTP handshake: {e}"));
                }
            };
        let cut = self.cut.clone();
        // The client connection runs until the response body is read (plain requests) or
        // hands its socket to the upgrade (exec, attach, port-forward).
        self.tracker.spawn(
            async move {
                tokio::select! {
                    r = conn.with_upgrades() => if let Err(e) = r {
                        debug!(error = %e, "connection to the holding replica ended with an error");
                    },
                    () = cut.cancelled() => {}
                }
            }
            .in_current_span(),
        );

        let upgrade = op.is_upgrade();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let client_version = req.version();
        let outgoing = match outgoing_request(req, &holder, &forwarding.replica_id, upgrade) {
            Ok(r) => r,
            Err(e) => {
                self.observer.forwarded("error");
                return text(StatusCode::BAD_REQUEST, &e);
            }
        };
        let response = match tokio::time::timeout(
            self.response_timeout,
            sender.send_request(outgoing),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                self.observer.forwarded("error");
                self.observer.stream_failed(op, "bad_gateway");
                return text(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "cloudstream replica {} (holding node {}) failed the request: {e}",
                        holder.replica, holder.node
                    ),
                );
            }
            Err(_) => {
                self.observer.forwarded("timeout");
                self.observer.stream_failed(op, "timeout");
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "timed out waiting for cloudstream replica {} (holding node {})",
                        holder.replica, holder.node
                    ),
                );
            }
        };
        drop(sender);
        self.observer.forwarded("ok");
        debug!(status = %response.status(), "the holding replica answered");

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return text(
                    StatusCode::BAD_GATEWAY,
                    "the holding replica switched protocols on a request that asked for none",
                );
            };
            if client_version != Version::HTTP_11 {
                let msg = "protocol upgrades need HTTP/1.1 (this request came over HTTP/2)";
                return text(StatusCode::BAD_REQUEST, msg);
            }
            return self.bridge_upgrade(response, client_upgrade);
        }
        let (parts, body) = response.into_parts();
        let mut out = Response::new(body.map_err(io::Error::other).boxed_unsync());
        *out.status_mut() = parts.status;
        copy_headers(
            parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
            out.headers_mut(),
        );
        out
    }

    /// Answers the client's upgrade with the holder's 101 and bridges the two upgraded
    /// connections byte for byte until either side ends or the drain grace is over.
    fn bridge_upgrade(
        &self,
        mut response: Response<Incoming>,
        client_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Response<ResponseBody> {
        let peer_upgrade = hyper::upgrade::on(&mut response);
        let mut headers = http::HeaderMap::new();
        copy_headers(
            response
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
            &mut headers,
        );
        // Connection and Upgrade are hop-by-hop, but a 101 must carry them.
        for name in [header::CONNECTION, header::UPGRADE] {
            for value in response.headers().get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let cut = self.cut.clone();
        self.tracker.spawn(
            async move {
                let (client, peer) = match tokio::join!(client_upgrade, peer_upgrade) {
                    (Ok(client), Ok(peer)) => (client, peer),
                    (client, peer) => {
                        warn!(
                            client_ok = client.is_ok(),
                            replica_ok = peer.is_ok(),
                            "a forwarded upgrade did not complete"
                        );
                        return;
                    }
                };
                let mut client = TokioIo::new(client);
                let mut peer = TokioIo::new(peer);
                let bridge = tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut peer,
                    READ_CHUNK,
                    READ_CHUNK,
                );
                tokio::select! {
                    r = bridge => match r {
                        Ok((up, down)) => debug!(up, down, "forwarded upgrade ended"),
                        Err(e) => debug!(error = %e, "forwarded upgrade ended with an error"),
                    },
                    () = cut.cancelled() => debug!("forwarded upgrade cut: the drain grace is over"),
                }
            }
            .in_current_span(),
        );
        let mut out = Response::new(
            Full::new(Bytes::new())
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = headers;
        out
    }
}

/// The request as sent to the holding replica: HTTP/1.1, origin-form target, the client's
/// end-to-end headers (and, for upgrades, `Connection`/`Upgrade`), `Host` kept, and the hop
/// marker and node added.
fn outgoing_request(
    req: Request<Incoming>,
    holder: &RemoteHolder,
    replica_id: &str,
    upgrade: bool,
) -> Result<Request<Incoming>, String> {
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .or_else(|| HeaderValue::from_str(&holder.node).ok());
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = target
        .parse()
        .map_err(|e| format!("request target {target:?}: {e}"))?;
    *out.version_mut() = Version::HTTP_11;
    let headers = out.headers_mut();
    copy_headers(
        parts
            .headers
            .iter()
            .filter(|(k, _)| *k != header::HOST && !k.as_str().starts_with("x-tether-"))
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
        headers,
    );
    if upgrade {
        for name in [header::CONNECTION, header::UPGRADE] {
            for value in parts.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    let marker = HeaderValue::from_str(replica_id)
        .map_err(|_| format!("replica id {replica_id:?} is not a header value"))?;
    headers.insert(HOP_HEADER, marker);
    let node = HeaderValue::from_str(&holder.node)
        .map_err(|_| format!("node name {:?} is not a header value", holder.node))?;
    headers.insert(NODE_HEADER, node);
    Ok(out)
}
