//! Lets [`crate::fuzzing`] run the handshake check, which is private to [`super`]: the one
//! function that turns an edge's upgrade request (path, upgrade headers, node name, IP,
//! dialect offer and window) into a session's parameters or a refusal.

use std::net::SocketAddr;

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{Accepted, TunnelServer};

/// Runs the server's check on `req` as if it came from `peer` with a client certificate
/// naming `identity` (or none, with the reason).
pub(crate) fn check(
    server: &TunnelServer,
    req: &Request<Incoming>,
    peer: SocketAddr,
    identity: Result<String, String>,
) -> Result<Accepted, (StatusCode, String)> {
    server
        .check(req, peer, identity)
        .map_err(|(status, reason, _)| (status, reason))
}
