//! The admin port of both binaries: Prometheus metrics, liveness and readiness.
//!
//! # How this fits
//!
//! `cloudstream` and `edgestream` each serve an admin port with `GET /metrics`,
//! `GET /healthz` and `GET /readyz` (design decision 9). This crate holds the metric
//! families ([`Metrics`]), the readiness flag ([`Readiness`]) and that small HTTP server
//! ([`serve`]), so the binaries stay thin and the libraries stay free of a metrics
//! dependency: `tunnel-session`, `stream-server` and `edge-stream` report through small
//! observer traits (for example [`tunnel_session::server::TunnelObserver`], which
//! [`Metrics`] implements), and the binary connects those observers to one [`Metrics`].
//!
//! # Layout
//!
//! - [`metrics`]: the `tether_*` metric families and the methods that record into them.
//! - [`observers`]: the stream server's observer hook and the RTT sampler.
//! - [`readiness`]: the shared ready / not ready flag behind `/readyz`.
//! - [`server`]: the plain HTTP/1.1 admin server.

pub mod metrics;
pub mod observers;
pub mod readiness;
pub mod server;

pub use metrics::{DirectorySample, Metrics};
pub use observers::sample_rtt;
pub use readiness::Readiness;
pub use server::serve;

/// What can go wrong on the admin port.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket failed in a way that retrying cannot fix.
    #[error("admin listener failed: {0}")]
    Listener(#[source] std::io::Error),
    /// The metrics could not be rendered as OpenMetrics text.
    #[error("encoding metrics failed")]
    Encode(#[from] std::fmt::Error),
}
