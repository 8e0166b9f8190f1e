//! The tether/2 `WINDOW` payload: one uvarint, the number of bytes of send credit granted.
//!
//! The receiver of a stream's `DATA` grants credit as its buffer drains; the sender may have
//! at most the granted, unconsumed credit in flight. Whether a zero increment is meaningful is
//! the session's call; this layer only checks the framing.

use bytes::{Buf, BufMut, Bytes};

use crate::{Error, varint};

/// Appends a `WINDOW` payload granting `increment` more bytes of credit.
pub fn encode_window(increment: u64, dst: &mut impl BufMut) {
    varint::encode(increment, dst);
}

/// Decodes a `WINDOW` payload.
///
/// # Errors
///
/// A varint error, or [`Error::TrailingBytes`] when the payload holds more than the varint.
pub fn decode_window(src: Bytes) -> Result<u64, Error> {
    let mut buf = &src[..];
    let increment = varint::decode(&mut buf)?;
    if buf.has_remaining() {
        return Err(Error::TrailingBytes {
            extra: buf.remaining(),
        });
    }
    Ok(increment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        for v in [0, 1, 65_535, 1 << 20, u64::MAX] {
            let mut out = Vec::new();
            encode_window(v, &mut out);
            assert_eq!(decode_window(Bytes::from(out)).unwrap(), v);
        }
        assert!(matches!(
            decode_window(Bytes::new()),
            Err(Error::VarintTruncated)
        ));
        assert!(matches!(
            decode_window(Bytes::from_static(b"\x01\x00\x00")),
            Err(Error::TrailingBytes { extra: 2 })
        ));
    }
}
