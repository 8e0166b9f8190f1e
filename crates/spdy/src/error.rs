//! The crate's single error type.
//!
//! Codec errors ([`crate::Decoder`], [`crate::Encoder`]) describe bad frames and carry only
//! small values. Every decode error is fatal for the connection that produced it: the header
//! compression context is shared by all frames of a direction, so after one bad frame the
//! stream of frames cannot be trusted any more. Connection errors describe what happened to a
//! stream or a connection (reset by the peer, timed out, gone).

use std::io;

/// An error of the SPDY codec or connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame's declared payload exceeds the configured limit for its kind.
    #[error("{kind} frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// `"control"` or `"data"`.
        kind: &'static str,
        /// Declared payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A control frame carried a version other than 3.
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    /// A control frame's payload does not have the layout its type requires.
    #[error("invalid {frame} frame: {reason}")]
    InvalidFrame {
        /// Frame type name, e.g. `"RST_STREAM"`.
        frame: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A decompressed header block is larger than the configured limit.
    #[error("header block exceeds {max} bytes once decompressed")]
    HeaderBlockTooLarge {
        /// The limit in force.
        max: usize,
    },
    /// A header block is malformed (truncated, bad counts, uppercase or duplicate names, ...).
    #[error("invalid header block: {0}")]
    InvalidHeaderBlock(&'static str),
    /// A header that SPDY forbids in this frame (e.g. `connection` or `host` in SYN_STREAM).
    #[error("header {0:?} is not allowed in this frame")]
    ForbiddenHeader(String),
    /// zlib failed to compress or decompress a header block.
    #[error("header compression: {0}")]
    Compression(String),
    /// The encoder failed earlier after advancing its compression context; its output can no
    /// longer be decoded by the peer.
    #[error("encoder unusable after an earlier header compression failure")]
    EncoderPoisoned,
    /// A frame to encode has an invalid field (zero stream id, payload too long, ...).
    #[error("cannot encode {frame} frame: {reason}")]
    InvalidOutgoing {
        /// Frame type name.
        frame: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The peer reset the stream (RST_STREAM) with this status code.
    #[error("stream reset by peer (status {0})")]
    StreamReset(u32),
    /// The peer did not answer in time (SYN_REPLY to a new stream, or a PING).
    #[error("timed out waiting for the peer's {0}")]
    Timeout(&'static str),
    /// The connection is going away (GOAWAY sent or received): no new streams.
    #[error("connection is going away")]
    GoingAway,
    /// The connection has ended.
    #[error("connection closed")]
    ConnectionClosed,
    /// Too many streams are open on the connection.
    #[error("too many open streams (limit {0})")]
    TooManyStreams(usize),
    /// The peer sent more control frames than this end could answer while its writes were
    /// stalled.
    #[error("peer floods control frames")]
    ControlFlood,
    /// Reading from or writing to the underlying transport failed.
    #[error("transport: {0}")]
    Io(#[from] io::Error),
}
