//! The one error type of this crate.

/// What can go wrong serving kubelet requests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Accepting or serving a connection failed.
    #[error("stream server I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A tunnel operation failed.
    #[error(transparent)]
    Tunnel(#[from] tunnel_session::Error),
    /// The kubelet's response head, relayed through the tunnel, is not valid HTTP.
    #[error("bad response from the kubelet: {0}")]
    BadResponse(String),
    /// Looking up which node runs a pod failed.
    #[error("pod lookup: {0}")]
    PodLookup(String),
}

/// Short for `Result<T, stream_server::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
