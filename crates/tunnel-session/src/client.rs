//! The edge end of the tunnel: dials `wss://<server>/v1/kubeedge/connect`.
//!
//! One attempt: TCP (with keepalive for half-dead NAT paths), TLS with the node certificate,
//! the websocket upgrade with KubeEdge's two headers, and our tether/2 offer. The dialect is
//! tether/2 only if the cloud's 101 confirms it; a stock cloudcore ignores the offer and the
//! session speaks KubeEdge. Retrying with backoff is the caller's business (`edge-stream`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;

use crate::config::SessionConfig;
use crate::dialect::{
    CONNECT_PATH, Dialect, HOSTNAME_HEADER, INTERNAL_IP_HEADER, NodeIdentity, PROTOCOL_HEADER,
    PROTOCOL_TETHER2, Role, WINDOW_HEADER,
};
use crate::error::{Error, Result};
use crate::session::{Incoming, Session, SessionDriver, SessionParams};

/// How much of a refusal's body we keep for the error message.
const MAX_REFUSAL_BODY: usize = 4096;

/// Everything needed to dial the cloud.
#[derive(Debug, Clone)]
pub struct DialConfig {
    /// `host:port` of the cloud's tunnel server.
    pub server: String,
    /// Client TLS configuration: the node certificate, and how the cloud is verified.
    pub tls: Arc<rustls::ClientConfig>,
    /// The node we are; sent as `SessionHostNameOverride` / `SessionInternalIP`.
    pub node: NodeIdentity,
    /// TCP connect, TLS and upgrade must finish within this.
    pub handshake_timeout: Duration,
    /// Session tunables.
    pub session: SessionConfig,
    /// Offer tether/2. Off only to behave byte-for-byte like a stock edge.
    pub offer_tether2: bool,
}

/// Dials the cloud once and returns the new session, its incoming streams and its driver.
pub async fn dial(config: &DialConfig) -> Result<(Session, Incoming, SessionDriver)> {
    match tokio::time::timeout(config.handshake_timeout, dial_inner(config)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout("dialling the cloud")),
    }
}

async fn dial_inner(config: &DialConfig) -> Result<(Session, Incoming, SessionDriver)> {
    let (host, _port) = split_host_port(&config.server)?;
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| Error::Handshake(format!("server name {host:?}: {e}")))?;
    let tcp = TcpStream::connect(&config.server).await?;
    crate::session::tune_socket(&tcp, &config.session)?;
    // Weak edge links lose NAT state silently; TCP keepalive finds that under the pings.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(5));
    socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
    let tls = TlsConnector::from(config.tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| Error::Handshake(format!("TLS with {}: {e}", config.server)))?;

    let key = generate_key();
    let mut builder = Request::get(CONNECT_PATH)
        .header(header::HOST, &config.server)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, &key)
        .header(HOSTNAME_HEADER, &config.node.name);
    if let Some(ip) = config.node.ip {
        builder = builder.header(INTERNAL_IP_HEADER, ip.to_string());
    }
    if config.offer_tether2 {
        builder = builder
            .header(PROTOCOL_HEADER, PROTOCOL_TETHER2)
            .header(WINDOW_HEADER, config.session.announced_window());
    }
    let request = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| Error::Handshake(format!("building the upgrade request: {e}")))?;

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| Error::Handshake(format!("HTTP with {}: {e}", config.server)))?;
    // The connection future ends (Ok) as soon as it has handed the upgraded socket over,
    // which can happen before the response future is polled: keep waiting for the response.
    let mut conn = std::pin::pin!(conn.with_upgrades());
    let mut conn_done = false;
    let send = sender.send_request(request);
    let mut send = std::pin::pin!(send);
    let mut response = loop {
        tokio::select! {
            r = &mut send => break r.map_err(|e| Error::Handshake(format!(
                "upgrade request to {}: {e} (a TLS 1.3 server reports a refused client certificate here)",
                config.server
            )))?,
            r = &mut conn, if !conn_done => {
                r.map_err(|e| Error::Handshake(format!("connection to {}: {e}", config.server)))?;
                conn_done = true;
            }
        }
    };
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let collect = Limited::new(response.into_body(), MAX_REFUSAL_BODY).collect();
        let mut collect = std::pin::pin!(collect);
        // The body is read while the connection is driven; the connection may stay open
        // after it (keep-alive), so only the body is waited for.
        let body = loop {
            tokio::select! {
                b = &mut collect => break b.ok(),
                _ = &mut conn, if !conn_done => conn_done = true,
            }
        };
        let body = body
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        return Err(Error::Handshake(format!(
            "the cloud refused the tunnel: {status}: {body}"
        )));
    }
    let expected = derive_accept_key(key.as_bytes());
    if response
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_none_or(|v| v.as_bytes() != expected.as_bytes())
    {
        return Err(Error::Handshake(
            "bad Sec-WebSocket-Accept from the cloud".into(),
        ));
    }
    let confirmed = config.offer_tether2
        && response
            .headers()
            .get(PROTOCOL_HEADER)
            .is_some_and(|v| v.as_bytes() == PROTOCOL_TETHER2.as_bytes());
    let (dialect, peer_window) = if confirmed {
        let window = response
            .headers()
            .get(WINDOW_HEADER)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|w| *w >= 1024)
            .ok_or_else(|| {
                Error::Handshake(format!(
                    "tether/2 confirmed without a valid {WINDOW_HEADER}"
                ))
            })?;
        (Dialect::Tether2, window)
    } else {
        (Dialect::KubeEdge, 0)
    };
    let upgrade = async {
        hyper::upgrade::on(&mut response)
            .await
            .map_err(|e| Error::Handshake(format!("upgrade: {e}")))
    };
    let upgraded = if conn_done {
        upgrade.await?
    } else {
        let driven = async {
            (&mut conn)
                .await
                .map_err(|e| Error::Handshake(format!("upgrade: {e}")))
        };
        tokio::try_join!(upgrade, driven)?.0
    };
    let (io, leftover): (Box<dyn crate::session::Io>, Bytes) =
        match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
            Ok(parts) => (Box::new(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => (Box::new(TokioIo::new(upgraded)), Bytes::new()),
        };
    debug!(server = %config.server, %dialect, "tunnel established");
    let params = SessionParams {
        role: Role::Edge,
        dialect,
        node: config.node.clone(),
        config: Arc::new(config.session.clone()),
        peer_window,
        leftover,
    };
    Ok(Session::establish(io, params))
}

/// Splits `host:port`, accepting `[v6]:port`.
fn split_host_port(server: &str) -> Result<(&str, u16)> {
    let bad = || Error::Handshake(format!("server address {server:?} is not host:port"));
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    // An IP literal must parse as one, so that rustls verifies it as an IP SAN.
    if host.contains(':') && host.parse::<IpAddr>().is_err() {
        return Err(bad());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("cloud:10004").unwrap(), ("cloud", 10004));
        assert_eq!(split_host_port("[::1]:10004").unwrap(), ("::1", 10004));
        assert_eq!(split_host_port("127.0.0.1:1").unwrap(), ("127.0.0.1", 1));
        assert!(split_host_port("cloud").is_err());
        assert!(split_host_port(":10004").is_err());
        assert!(split_host_port("cloud:x").is_err());
    }
}
