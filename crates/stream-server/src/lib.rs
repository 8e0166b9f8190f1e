//! The apiserver-facing side of the tunnel: a kubelet API server for edge nodes.
//!
//! # How this fits
//!
//! kube-apiserver, metrics-server and Prometheus send kubelet requests (logs, exec, attach,
//! port-forward, stats, metrics) here as if this were the node's kubelet. The
//! [`StreamServer`] finds the node's session through a
//! [`SessionDirectory`](tunnel_session::SessionDirectory) (usually the
//! [`Registry`](tunnel_session::Registry) the tunnel server fills), opens a stream on it and
//! relays the request; `edge-stream` replays it against the node's kubelet.
//!
//! # Layout
//!
//! - [`route`]: the kubelet routes served, and nothing else.
//! - [`node`]: which node a request is for (Host, HTTP/2 authority, node proxy path).
//! - [`observe`]: what is reported about each stream (metrics hooks, one log line each).
//! - [`pods`]: which node runs a pod (a watch-fed cache of the Kubernetes API, feature `k8s`).
//! - `resolve` (private): the order in which the proxy path, the pod and `Host` name the node.
//! - [`server`]: TLS with client certificates, HTTP/1.1 and HTTP/2, drain on shutdown.
//! - [`forward`]: with several replicas, relaying a request to the replica holding its node.
//! - [`identity`]: which clients are replicas (client certificate CN `tether-replica:<id>`).
//! - [`egress`]: kube-apiserver's egress proxy protocol (HTTP CONNECT, then TLS).
//! - `relay` and `body` (private): the one relay every operation goes through.

mod body;
pub mod egress;
pub mod error;
pub mod forward;
pub mod identity;
pub mod node;
pub mod observe;
pub mod pods;
mod relay;
mod resolve;
pub mod route;
pub mod server;

pub use error::{Error, Result};
pub use forward::{Forwarding, RemoteHolder, ReplicaDirectory};
pub use observe::{NoRelayObserver, RelayObserver};
pub use pods::{Placement, PodResolver};
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use relay::fuzzing;
pub use relay::{KUBEEDGE_KUBELET_HOST, MAX_RESPONSE_HEAD, ResponseBody};
pub use server::{BodyCompression, StreamServer, StreamServerConfig};
