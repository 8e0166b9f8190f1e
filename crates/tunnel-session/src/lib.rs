//! Sessions: one websocket per edge node, many streams multiplexed on it.
//!
//! # How this fits
//!
//! `stream-proto` encodes the tunnel's messages; this crate runs them over a connection.
//! The cloud (`stream-server`) and the edge (`edge-stream`) both build on it: the cloud
//! accepts tunnels with [`server`], keeps one [`Session`] per node in the [`Registry`] and
//! opens a [`Stream`] per kubelet request; the edge dials with [`client`], accepts those
//! streams from [`Incoming`] and serves them from its kubelet. Streams are ordinary
//! `AsyncRead + AsyncWrite`, so both sides pump bytes with plain tokio I/O.
//!
//! # Layout
//!
//! - [`dialect`]: roles, the two dialects (stock KubeEdge and tether/2) and handshake headers.
//! - [`session`]: the session, its reader/writer driver, keepalive and flow control.
//! - [`stream`]: one multiplexed stream.
//! - [`registry`]: node name / node IP → session.
//! - [`server`] and [`client`]: the websocket handshake over mutually authenticated TLS.
//! - [`tls`]: certificates, keys and rustls configurations.
//! - `ws` (private): the websocket frame layer, which carries non-UTF-8 TEXT frames.

mod admission;
mod batch;
pub mod client;
pub mod config;
pub mod dialect;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod pump;
pub mod registry;
mod sched;
pub mod server;
pub mod session;
pub mod stream;
pub mod tls;
mod window;
mod ws;

/// The wire types streams are opened with (`ConnectRequest`, `GoUrl`, `OpenResult`, …).
pub use stream_proto;

pub use config::SessionConfig;
pub use dialect::{Dialect, NodeIdentity, Role};
pub use error::{Error, Result};
pub use registry::{NodeKey, Registry, SessionDirectory};
pub use session::{Incoming, IncomingStream, Session, SessionDriver, SessionParams, SessionStats};
pub use stream::{ConnectKind, FailureWatch, Stream, StreamReader, StreamWriter};
