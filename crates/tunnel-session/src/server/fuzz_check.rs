//! Lets [`crate::fuzzing`] run the handshake check, which is private to [`super`]: the one
//! function that turns an edge's upgrade request (path, upgrade headers, node name, IP,
//! dialect offer and window) into a session's parameters or a refusal.

use std::net::{IpAddr, SocketAddr};

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::TunnelServer;
use crate::dialect::Dialect;

/// What the check accepted, in a form the fuzzer can assert on.
pub(crate) struct Checked {
    pub(crate) node: String,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) dialect: Dialect,
    pub(crate) peer_window: u32,
    pub(crate) accept_key: String,
}

/// Runs the server's check on `req` as if it came from `peer` with a client certificate
/// naming `identity` (or none, with the reason).
pub(crate) fn check(
    server: &TunnelServer,
    req: &Request<Incoming>,
    peer: SocketAddr,
    identity: Result<String, String>,
) -> Result<Checked, (StatusCode, String)> {
    server
        .check(req, peer, identity)
        .map(|accepted| Checked {
            node: accepted.node.name,
            ip: accepted.node.ip,
            dialect: accepted.dialect,
            peer_window: accepted.peer_window,
            accept_key: accepted.accept_key,
        })
        .map_err(|(status, reason, _)| (status, reason))
}
