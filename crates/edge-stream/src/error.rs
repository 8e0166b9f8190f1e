//! The one error type of this crate.

use std::io;

/// Everything that can go wrong at the edge: the configuration, the tunnel, the kubelet, or
/// the relay of one stream.
///
/// [`run`](crate::run) itself only fails on an invalid configuration; every other variant
/// ends one stream or one session, is logged, and the edge carries on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable; the message names the field.
    #[error("invalid edge configuration: {0}")]
    Config(String),
    /// Dialling the cloud or running the session failed.
    #[error(transparent)]
    Tunnel(#[from] tunnel_session::Error),
    /// No connection to the kubelet (refused, timed out, or TLS failed).
    #[error("kubelet at {addr} unreachable: {source}")]
    KubeletUnreachable {
        /// The configured kubelet address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kubelet broke off the HTTP exchange (before or during the response).
    #[error("kubelet at {addr}: {source}")]
    KubeletHttp {
        /// The configured kubelet address.
        addr: String,
        /// hyper's description.
        #[source]
        source: hyper::Error,
    },
    /// Reading from or writing to the tunnel stream failed.
    #[error("tunnel stream: {0}")]
    Stream(#[source] io::Error),
    /// Relaying an upgraded connection failed in one direction.
    #[error("relay {direction}: {source}")]
    Relay {
        /// `"cloud → kubelet"` or `"kubelet → cloud"`.
        direction: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}
