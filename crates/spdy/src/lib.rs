//! SPDY/3.1 as Kubernetes speaks it, for tests: kube-apiserver talks SPDY/3.1 to kubelets for
//! exec, attach and port-forward, and `kubectl` (Go, `moby/spdystream`) talks it to the
//! apiserver. tether's tunnel never parses SPDY (it relays the upgraded bytes), but its tests
//! must drive the tunnel exactly the way those peers do; this crate gives the test kubelet and
//! the test clients in `test-support` that ability. It is a dev-only crate.
//!
//! # Layout
//!
//! - [`frame`]: frames as values ([`Frame`], [`FrameHeader`]) and the protocol constants.
//! - [`Encoder`] / [`Decoder`] ([`codec`](crate::Encoder)): the sans-IO codec, with the
//!   connection-wide zlib header compression contexts and the [`Limits`] that bound what a
//!   peer can make this end buffer.
//! - [`Headers`]: a header block.
//! - [`Connection`], [`Stream`], [`IncomingStream`], [`Driver`]: an async session over any
//!   `AsyncRead + AsyncWrite`, whose streams are themselves `AsyncRead + AsyncWrite`.
//! - [`dictionary`]: the SPDY/3 zlib dictionary.
//! - [`Error`]: the one error type.
//!
//! What is implemented is what Go's `moby/spdystream` does, which is what interoperates with
//! kubectl, client-go and the kubelet: no flow control (WINDOW_UPDATE and SETTINGS are read
//! and ignored), no server push, no priorities.

mod codec;
mod connection;
pub mod dictionary;
mod error;
pub mod frame;
mod headers;

pub use codec::{Decoder, Encoder, Limits};
pub use connection::{Config, Connection, Driver, IncomingStream, Role, Stream};
pub use error::Error;
pub use frame::{Frame, FrameHeader};
pub use headers::Headers;
