//! The crate's single error type.
//!
//! Every decoder in this crate returns [`Error`]. The variants for the binary framing (varints,
//! message size, window and reset payloads) carry only small `Copy` values, so decoding a
//! hostile or corrupt message on the hot path never allocates. JSON problems in the connect
//! descriptors and open results keep `serde_json`'s error, whose line, column and message are
//! what an operator needs to find a bad peer; those payloads arrive once per stream, not per
//! data message.

/// An error decoding (or building) a tunnel payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended inside a varint (or before its first byte).
    #[error("truncated varint")]
    VarintTruncated,
    /// A varint's tenth byte still had its continuation bit set: longer than any `u64` needs.
    #[error("varint longer than 10 bytes")]
    VarintOverlong,
    /// A varint's tenth byte carried bits beyond the 64th: the value does not fit a `u64`.
    #[error("varint overflows u64")]
    VarintOverflow,
    /// A message's data exceeds [`MAX_DATA_LEN`](crate::MAX_DATA_LEN).
    #[error("message data is {len} bytes, more than the 1 MiB limit")]
    DataTooLong {
        /// Length of the data that was received.
        len: usize,
    },
    /// A payload that must hold exactly one value had bytes left after it.
    #[error("{extra} unexpected bytes after the payload")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// Text that must be UTF-8 (a reset reason) was not.
    #[error("invalid UTF-8 in {what}")]
    InvalidUtf8 {
        /// Which field held the bad text.
        what: &'static str,
    },
    /// The payload was not valid JSON, or a JSON value had the wrong type.
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// An open result named a `result` kind this version does not know.
    #[error("unknown open result kind")]
    UnknownOpenResult,
    /// A JSON field that this kind of payload requires was absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// An HTTP status outside `100..=599`.
    #[error("invalid HTTP status {0}")]
    InvalidStatus(u64),
    /// A request target was not an origin-form target (`/path?query`), as an HTTP server
    /// would receive it.
    #[error("request target must start with '/'")]
    InvalidRequestTarget,
    /// A request target contained an ASCII control character, which Go's URL parser rejects.
    #[error("control character in request target")]
    ControlCharacter,
    /// A `%` in a URL was not followed by two hex digits.
    #[error("invalid percent-escape in URL")]
    InvalidEscape,
}
