//! Who is speaking, and which language: roles, dialects and the handshake headers that pick
//! them.
//!
//! The dialect is negotiated, never guessed (design decision 3): the edge offers tether/2 in a
//! handshake header that stock cloudcore ignores, and the cloud confirms it in its 101
//! response. Without both, the session speaks exact KubeEdge.

use std::fmt;
use std::net::IpAddr;

/// Header naming the edge node (KubeEdge `SessionHostNameOverride`; read case-insensitively).
pub const HOSTNAME_HEADER: &str = "SessionHostNameOverride";
/// Header carrying the edge node's internal IP (KubeEdge `SessionInternalIP`).
pub const INTERNAL_IP_HEADER: &str = "SessionInternalIP";
/// Header in which a tether edge offers, and a tether cloud confirms, the tether/2 dialect.
pub const PROTOCOL_HEADER: &str = "X-Tether-Protocol";
/// Value of [`PROTOCOL_HEADER`] for the one extended dialect we speak.
pub const PROTOCOL_TETHER2: &str = "tether/2";
/// Header in which each tether/2 side announces the per-stream window it grants its peer.
pub const WINDOW_HEADER: &str = "X-Tether-Window";
/// Path of the tunnel endpoint (KubeEdge's; a trailing slash is accepted too).
pub const CONNECT_PATH: &str = "/v1/kubeedge/connect";

/// The wire language of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Exactly what stock KubeEdge speaks: TEXT frames, the seven message types, no windows,
    /// REMOVE_CONNECT as the only per-stream close.
    KubeEdge,
    /// Our extension, used only when both ends said so at the handshake: BINARY frames,
    /// per-stream credit windows, open results, half-close, resets with reasons, go-away.
    Tether2,
}

impl Dialect {
    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::KubeEdge => "kubeedge",
            Dialect::Tether2 => PROTOCOL_TETHER2,
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which end of the tunnel a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The cloud: accepts the tunnel, opens streams.
    Cloud,
    /// The edge: dials the tunnel, accepts streams and serves them from its kubelet.
    Edge,
}

/// The node at the edge end of a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// Node name (from the certificate on the cloud side, from config on the edge side).
    pub name: String,
    /// The node's internal IP, if known; requests may address the node by it.
    pub ip: Option<IpAddr>,
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{} ({ip})", self.name),
            None => f.write_str(&self.name),
        }
    }
}
