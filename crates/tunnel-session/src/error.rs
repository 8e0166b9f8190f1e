//! The one error type of this crate.

use std::path::PathBuf;

use stream_proto::ConnectId;

/// Everything that can go wrong in a session, a handshake or the TLS set-up.
///
/// Variants are precise so that callers (the stream server, the edge) can map them to an
/// HTTP status or a retry decision without parsing text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM or key file could not be read or holds nothing usable.
    #[error("{what} from {}: {reason}", path.display())]
    TlsFile {
        /// What was being loaded ("certificate", "private key", "CA bundle").
        what: &'static str,
        /// The file that was read.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// rustls refused the configuration (for example a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// The peer's certificate does not carry a usable identity.
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    /// I/O on the tunnel failed.
    #[error("tunnel I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The websocket handshake failed or was refused.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The peer broke the websocket or tunnel protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A tunnel message could not be decoded.
    #[error("bad tunnel message: {0}")]
    Decode(#[from] stream_proto::Error),
    /// The session is closed (peer gone, replaced, shut down or timed out).
    #[error("session closed: {0}")]
    SessionClosed(String),
    /// The session refused to open another stream.
    #[error("too many streams on this session (limit {0})")]
    TooManyStreams(usize),
    /// A stream was reset.
    #[error("stream {id} reset: {reason}")]
    StreamReset {
        /// The stream.
        id: ConnectId,
        /// Why.
        reason: String,
    },
    /// A wait ran out of time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The registry refused a session.
    #[error("registry: {0}")]
    Registry(String),
}

/// Short for `Result<T, tunnel_session::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
