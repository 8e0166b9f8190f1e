//! kube-apiserver's egress proxy protocol: a front door to every node without iptables.
//!
//! # How this fits
//!
//! kube-apiserver can send its kubelet traffic through an egress proxy
//! (`EgressSelectorConfiguration`, egress `cluster`, transport `HTTPConnect` over TCP, as
//! Konnectivity uses): for each connection to a node it sends `CONNECT <nodeIP>:<port>` (or the
//! node name), waits for a 2xx, then speaks TLS to "the kubelet" through it. Here the target
//! names the node; a node that no session on this process and no other replica holds is
//! refused with 503 before any TLS, so the apiserver's error says why. Otherwise the
//! connection gets the stream server's own TLS (server certificate and client-certificate
//! check) and its requests are served exactly as on the stream port, with the node pinned to
//! the CONNECT target: relayed to a local session or forwarded to the holding replica, per
//! request (the apiserver keeps such connections open, and the node may move meanwhile).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};
use tunnel_session::NodeKey;

use crate::relay::Relay;
use crate::resolve::Lookup;

/// The largest CONNECT request head accepted.
pub const MAX_CONNECT_HEAD: usize = 8 * 1024;

/// Reads the CONNECT request on `tcp` within `timeout` and answers it. Returns the connection,
/// ready for TLS, and the node it was opened for; `None` when the request was refused (and
/// answered) or the client went away.
pub(crate) async fn connect(
    mut tcp: TcpStream,
    peer: SocketAddr,
    relay: &Relay,
    timeout: Duration,
) -> Option<(TcpStream, String)> {
    let head = match tokio::time::timeout(timeout, read_head(&mut tcp)).await {
        Ok(Ok(head)) => head,
        Ok(Err(refusal)) => {
            info!(%peer, reason = %refusal.message, "egress request refused");
            relay.observer.egress("bad_request");
            let _ =
                tokio::time::timeout(timeout, answer(&mut tcp, refusal.status, &refusal.message))
                    .await;
            return None;
        }
        Err(_) => {
            info!(%peer, "egress client sent no CONNECT request in time");
            return None;
        }
    };
    let lookup = Lookup {
        sessions: relay.directory.as_ref(),
        replicas: relay.forwarding.as_ref().map(|f| f.directory.as_ref()),
    };
    if lookup.locate(NodeKey::parse(&head.host)).is_none() {
        let message = format!(
            "no tunnel session for node {}: the node is not connected to any cloudstream{}",
            head.host,
            if relay.forwarding.is_some() {
                " replica"
            } else {
                ""
            }
        );
        info!(%peer, node = %head.host, "egress CONNECT to an unknown node refused");
        relay.observer.egress("unknown_node");
        let _ = tokio::time::timeout(
            timeout,
            answer(&mut tcp, "503 Service Unavailable", &message),
        )
        .await;
        return None;
    }
    match tokio::time::timeout(
        timeout,
        tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n"),
    )
    .await
    {
        Ok(Ok(())) => {
            debug!(%peer, node = %head.host, "egress tunnel open");
            relay.observer.egress("open");
            Some((tcp, head.host))
        }
        _ => None,
    }
}

/// A parsed CONNECT request: the host of its target, without port or brackets.
struct ConnectHead {
    host: String,
}

struct Refusal {
    status: &'static str,
    message: String,
}

fn refuse(status: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

async fn read_head(tcp: &mut TcpStream) -> Result<ConnectHead, Refusal> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                if req.method != Some("CONNECT") {
                    return Err(refuse(
                        "405 Method Not Allowed",
                        "this is an egress proxy: send CONNECT <node>:<port>",
                    ));
                }
                if len != buf.len() {
                    // A client must wait for our 2xx before it starts TLS (Go's dialer does).
                    return Err(refuse(
                        "400 Bad Request",
                        "data after the CONNECT request before the proxy answered",
                    ));
                }
                let target = req.path.unwrap_or_default();
                return match host_of(target) {
                    Some(host) => Ok(ConnectHead {
                        host: host.to_owned(),
                    }),
                    None => Err(refuse(
                        "400 Bad Request",
                        format!("CONNECT target {target:?} is not <node>:<port>"),
                    )),
                };
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(refuse("400 Bad Request", format!("not HTTP: {e}"))),
        }
        if buf.len() >= MAX_CONNECT_HEAD {
            return Err(refuse(
                "431 Request Header Fields Too Large",
                format!("the CONNECT request exceeds {MAX_CONNECT_HEAD} bytes"),
            ));
        }
        buf.reserve(1024);
        match tcp.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                return Err(refuse("400 Bad Request", "the client left mid-request"));
            }
            Ok(_) => {}
        }
    }
}

/// `host:port`, `[v6]:port` → the host; a target without a port is refused (CONNECT's
/// authority form always has one).
fn host_of(target: &str) -> Option<&str> {
    let host = if let Some(rest) = target.strip_prefix('[') {
        let (host, port) = rest.split_once(']')?;
        port.strip_prefix(':')?.parse::<u16>().ok()?;
        host
    } else {
        let (host, port) = target.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        if host.contains(':') {
            return None;
        }
        host
    };
    (!host.is_empty()).then_some(host)
}

async fn answer(tcp: &mut TcpStream, status: &str, message: &str) -> std::io::Result<()> {
    let body = format!("{message}\n");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn connect_targets() {
        assert_eq!(host_of("10.0.0.7:10250"), Some("10.0.0.7"));
        assert_eq!(host_of("edge-1:10250"), Some("edge-1"));
        assert_eq!(host_of("[fd00::7]:10250"), Some("fd00::7"));
        assert_eq!(host_of("edge-1"), None);
        assert_eq!(host_of(":10250"), None);
        assert_eq!(host_of("fd00::7:10250"), None);
        assert_eq!(host_of("[fd00::7]"), None);
        assert_eq!(host_of("edge-1:http"), None);
    }
}
