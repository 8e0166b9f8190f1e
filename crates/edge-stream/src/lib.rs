//! The edge end of the tether tunnel: keep a session to the cloud up, accept the streams the
//! cloud opens, and serve each one from the node's kubelet.
//!
//! # How this fits
//!
//! `stream-proto` describes the wire, `tunnel-session` runs sessions and streams over a
//! websocket; this crate is the edge's use of them. [`run`] dials the cloud with
//! `tunnel_session::client`, reconnects with jittered exponential backoff, and hands every
//! incoming stream to a connector that replays one allowed kubelet request against the one
//! configured kubelet and relays the bytes (design decisions 5 and 7). The `edgestream`
//! binary only builds an [`EdgeConfig`] from `edgecore.yaml` and flags, sets up TLS and
//! tracing, and calls [`run`] with its shutdown token; `stream-server` is the cloud side and
//! is never imported here.
//!
//! # What a stream goes through
//!
//! 1. Classification: the URL path and method must be one of the kubelet's real routes, and
//!    the stream's connect kind must fit it (LOGS → logs, METRIC → stats and metrics,
//!    EXEC → exec or port-forward, ATTACH → attach). Otherwise 404, 405 or 400.
//! 2. The per-operation switches of [`Operations`]: a disabled operation gets 403.
//! 3. Serving, always from [`KubeletTarget::addr`], never from the host in the URL:
//!    - upgrades (exec, attach, port-forward) get the request head written raw, exactly as a
//!      stock edge writes it, then raw bytes both ways;
//!    - plain requests (logs, stats, metrics) go through an HTTP/1.1 client; the kubelet's
//!      status and headers go back in the tether/2 open result and the body streams after.
//! 4. A refusal or an unreachable kubelet is answered at once (tether/2 open result, or a
//!    KubeEdge REMOVE_CONNECT), so the cloud never waits on a stream that will not come.
//!
//! Every stream is handled in its own task with a span carrying the node, connect id and
//! operation, and ends with one info line: status, bytes each way, duration.
//!
//! # Modules
//!
//! - `config`: [`EdgeConfig`] and its parts, with defaults as constants.
//! - `tunnel`: [`run`], the reconnect loop and shutdown; [`TunnelStatus`].
//! - `route`: which kubelet [`Operation`] a stream asks for.
//! - `serve`: one stream, start to end; `upgrade` and `plain`: the two ways to serve it.
//! - `kubelet`, `headers`, `backoff`: dialling the kubelet, header rules, reconnect pacing.

mod backoff;
mod config;
mod error;
mod headers;
mod kubelet;
mod plain;
mod route;
mod serve;
mod tunnel;
mod upgrade;

pub use config::{
    Backoff, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MULTIPLIER,
    DEFAULT_BACKOFF_RESET_AFTER, DEFAULT_DRAIN_GRACE, DEFAULT_KUBELET_ADDR,
    DEFAULT_KUBELET_CONNECT_TIMEOUT, EdgeConfig, KubeletTarget, Operations,
};
pub use error::Error;
pub use route::Operation;
pub use tunnel::{TunnelStatus, run};
