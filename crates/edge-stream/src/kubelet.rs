//! Connections to the one kubelet the edge serves from.
//!
//! Whatever scheme and host the cloud writes into a request's URL, the edge dials only the
//! configured address (a stock edge dials whatever it is told, which makes it an SSRF
//! gadget for anyone holding the cloud). Plain TCP for edged's loopback port, TLS with the
//! node's client certificate for a stock kubelet.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::config::KubeletTarget;
use crate::error::Error;

/// A connection to the kubelet: plain TCP or TLS over TCP.
pub(crate) type KubeletIo = Either<TcpStream, TlsStream<TcpStream>>;

/// Dials the configured kubelet.
pub(crate) struct Kubelet {
    addr: String,
    /// `addr` as a `Host` header value, checked once.
    host: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Kubelet {
    /// Prepares connections to `target`. With TLS, the ALPN list is pinned to `http/1.1`:
    /// upgrades cannot run over HTTP/2, and the raw request head is HTTP/1.1.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the address cannot be a `Host` header.
    pub(crate) fn new(target: &KubeletTarget) -> Result<Kubelet, Error> {
        let host = HeaderValue::from_str(&target.addr).map_err(|_| {
            Error::Config(format!(
                "kubelet.addr {:?} cannot be sent as a Host header",
                target.addr
            ))
        })?;
        let tls = target.tls.as_ref().map(|(config, name)| {
            let mut config = rustls::ClientConfig::clone(config);
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            (TlsConnector::from(Arc::new(config)), name.clone())
        });
        Ok(Kubelet {
            addr: target.addr.clone(),
            host,
            tls,
            connect_timeout: target.connect_timeout,
        })
    }

    /// The configured `host:port`; also the `Host` of every request sent to it.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// [`Kubelet::addr`] as a `Host` header value.
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The connect timeout; also bounds writing a request head.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Opens a connection, TLS included, within the connect timeout.
    pub(crate) async fn connect(&self) -> Result<KubeletIo, Error> {
        let unreachable = |source: io::Error| Error::KubeletUnreachable {
            addr: self.addr.clone(),
            source,
        };
        let connect = async {
            let tcp = TcpStream::connect(&self.addr).await?;
            // Interactive exec sends single keystrokes; do not hold them back.
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => Ok(Either::Left(tcp)),
                Some((connector, name)) => connector
                    .connect(name.clone(), tcp)
                    .await
                    .map(Either::Right)
                    .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}"))),
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result.map_err(unreachable),
            Err(_) => Err(unreachable(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            ))),
        }
    }
}
