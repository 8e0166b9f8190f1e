//! Test-only helpers for the tether workspace.
//!
//! This crate is a dev-dependency of the product crates and the end-to-end tests; it is never a
//! dependency of the product itself. It provides:
//!
//! - [`pki`]: an in-memory test CA minting server, client and node identities, plus rustls
//!   configurations built with an explicit ring provider (nothing is installed globally).
//! - [`kubelet`]: [`kubelet::TestKubelet`], a real HTTP/1.1 server on `127.0.0.1:0` speaking the
//!   kubelet API paths kube-apiserver uses (`/containerLogs`, `/exec`, `/attach`,
//!   `/portForward`, `/stats/summary`, `/metrics*`) over plain HTTP or HTTPS.
//! - [`client`]: clients that talk to a kubelet the way kube-apiserver does (exec/attach and
//!   port-forward over WebSocket or SPDY/3.1, plain HTTP requests, raw upgrades), usable
//!   directly against [`kubelet::TestKubelet`] or through the tunnel's stream server.
//! - [`content`]: deterministic byte generators shared by the kubelet and the tests so that
//!   large transfers can be verified without keeping copies around.
//!
//! Every server binds `127.0.0.1:0` and every spawned task ends when its owning handle is
//! dropped or shut down.

pub mod apiserver;
pub mod client;
pub mod content;
pub mod kubelet;
pub mod pki;

pub use client::{
    EchoServer, Event, ExecOutput, ExecSession, PortForwardSession, UpgradeError, echo_server,
    exec_spdy, exec_ws, port_forward_spdy, port_forward_ws, spdy_upgrade, tls_connect,
};
pub use kubelet::{ContainerSpec, TestKubelet, TestKubeletBuilder};
pub use pki::{Identity, TestPki};
