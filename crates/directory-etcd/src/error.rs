//! The one error type of this crate.
//!
//! The directory itself never fails because etcd is away: outages show in
//! [`DirectoryStatus`](crate::DirectoryStatus), not as errors. What can fail is setting it up
//! (a configuration or TLS material that cannot work) and waiting on it with a deadline.

use std::time::Duration;

/// Everything the directory can report to its caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work (no endpoints, a bad prefix, a TTL etcd cannot grant…).
    #[error("directory configuration: {0}")]
    Config(String),
    /// The etcd TLS material (CA, client certificate or key) holds nothing usable.
    #[error("etcd TLS material: {0}")]
    Tls(String),
    /// A wait on the directory did not see its condition before the deadline.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
