//! Wire formats of the tether tunnel, and of KubeEdge's CloudStream/EdgeStream tunnel it is
//! compatible with.
//!
//! This crate is the bottom layer of tether: `tunnel-session` uses it to encode and decode
//! every websocket message payload, and `stream-server` and `edge-stream` use its connect
//! descriptor and open result types to describe kubelet requests and its [`kubelet`] route
//! table to classify them. It is sans-IO: no sockets, no runtime, no clocks, only bytes in
//! and values out, so every rule here is unit-testable and the same code serves both ends of
//! the tunnel.
//!
//! What it holds:
//!
//! - [`Message`]: one websocket message payload, `uvarint ConnectID ‖ uvarint MessageType ‖
//!   data`, with [`ConnectId`], [`MessageType`] and the [`varint`] codec (Go
//!   `encoding/binary` compatible).
//! - [`ConnectRequest`]: the JSON descriptor of KubeEdge's `*_CONNECT` messages, with Go's
//!   `url.URL` ([`GoUrl`]) and `http.Header` ([`HeaderMap`]) reproduced exactly.
//! - The tether/2 control payloads, which are never sent to a stock KubeEdge peer:
//!   [`encode_window`]/[`decode_window`], [`Reset`] and [`OpenResult`].
//! - [`kubelet`]: the kubelet routes the tunnel carries, [`kubelet::classify`] to find the
//!   [`kubelet::Operation`] and pod a request path names.
//! - [`Error`], the one error type of the crate.
//!
//! Decoders never panic, on any input; the fuzz target in `fuzz/` checks that.

mod connect;
mod error;
mod go_json;
mod go_url;
mod header;
pub mod kubelet;
mod message;
mod open_result;
mod reset;
pub mod varint;
mod window;

#[doc(hidden)]
pub mod fuzzing;

pub use connect::ConnectRequest;
pub use error::Error;
pub use go_url::{GoUrl, GoUserinfo};
pub use header::{HeaderMap, canonical_header_key};
pub use message::{ConnectId, Message, MessageType};
pub use open_result::OpenResult;
pub use reset::{Reset, ResetCode};
pub use window::{decode_window, encode_window};

/// The most data one message may carry: KubeEdge's `MaxRespBodyLength` (1 MiB).
///
/// A stock receiver silently drops anything beyond it, so senders must split larger writes;
/// [`Message::decode`] rejects longer data.
pub const MAX_DATA_LEN: usize = 1 << 20;
