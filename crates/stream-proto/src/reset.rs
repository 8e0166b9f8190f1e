//! The tether/2 `RESET` payload: `uvarint code ‖ UTF-8 reason`.
//!
//! A reset aborts one stream in both directions and says why, which KubeEdge's
//! `REMOVE_CONNECT` cannot: the cloud turns the code and reason into the status and message the
//! apiserver sees, and both sides log them.

use std::fmt;

use bytes::{BufMut, Bytes};

use crate::{Error, varint};

/// Why a stream was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCode {
    /// 0: the stream is no longer wanted (the client went away).
    Cancel,
    /// 1: the peer will not serve the stream (policy, unknown target).
    Refused,
    /// 2: the peer sent more data than its credit allowed.
    FlowControl,
    /// 3: the stream made no progress within the stall limit.
    Stalled,
    /// 4: the peer broke the protocol on this stream.
    Protocol,
    /// 5: a local failure unrelated to the peer.
    Internal,
    /// 6: the session is shutting down.
    GoingAway,
    /// Any other value, kept verbatim so a newer peer's codes survive a relay or a log line.
    Unknown(u64),
}

impl ResetCode {
    /// Maps a wire value to its code; unassigned values become [`ResetCode::Unknown`].
    pub fn from_u64(v: u64) -> Self {
        match v {
            0 => ResetCode::Cancel,
            1 => ResetCode::Refused,
            2 => ResetCode::FlowControl,
            3 => ResetCode::Stalled,
            4 => ResetCode::Protocol,
            5 => ResetCode::Internal,
            6 => ResetCode::GoingAway,
            other => ResetCode::Unknown(other),
        }
    }

    /// The wire value of this code.
    pub fn as_u64(self) -> u64 {
        match self {
            ResetCode::Cancel => 0,
            ResetCode::Refused => 1,
            ResetCode::FlowControl => 2,
            ResetCode::Stalled => 3,
            ResetCode::Protocol => 4,
            ResetCode::Internal => 5,
            ResetCode::GoingAway => 6,
            ResetCode::Unknown(v) => v,
        }
    }
}

impl fmt::Display for ResetCode {
    /// Lower-case snake names (`flow_control`), `unknown(<n>)` for unassigned values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match ResetCode::from_u64(self.as_u64()) {
            ResetCode::Cancel => "cancel",
            ResetCode::Refused => "refused",
            ResetCode::FlowControl => "flow_control",
            ResetCode::Stalled => "stalled",
            ResetCode::Protocol => "protocol",
            ResetCode::Internal => "internal",
            ResetCode::GoingAway => "going_away",
            ResetCode::Unknown(v) => return write!(f, "unknown({v})"),
        };
        f.write_str(name)
    }
}

/// A `RESET` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// Why the stream was reset.
    pub code: ResetCode,
    /// Human-readable detail for logs and error messages; may be empty.
    pub reason: String,
}

impl Reset {
    /// Builds a reset.
    pub fn new(code: ResetCode, reason: impl Into<String>) -> Self {
        Reset {
            code,
            reason: reason.into(),
        }
    }

    /// The exact number of bytes [`Reset::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        varint::encoded_len(self.code.as_u64()) + self.reason.len()
    }

    /// Appends the payload: `uvarint code ‖ reason`.
    pub fn encode(&self, dst: &mut impl BufMut) {
        varint::encode(self.code.as_u64(), dst);
        dst.put_slice(self.reason.as_bytes());
    }

    /// Decodes a `RESET` payload.
    ///
    /// # Errors
    ///
    /// A varint error for the code, or [`Error::InvalidUtf8`] when the reason is not UTF-8:
    /// only our own peers send resets, so bad text means a broken peer, not one to humour.
    pub fn decode(src: Bytes) -> Result<Reset, Error> {
        let mut buf = &src[..];
        let code = ResetCode::from_u64(varint::decode(&mut buf)?);
        let reason = std::str::from_utf8(buf)
            .map_err(|_| Error::InvalidUtf8 {
                what: "reset reason",
            })?
            .to_owned();
        Ok(Reset { code, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names() {
        let table = [
            (0, ResetCode::Cancel, "cancel"),
            (1, ResetCode::Refused, "refused"),
            (2, ResetCode::FlowControl, "flow_control"),
            (3, ResetCode::Stalled, "stalled"),
            (4, ResetCode::Protocol, "protocol"),
            (5, ResetCode::Internal, "internal"),
            (6, ResetCode::GoingAway, "going_away"),
            (7, ResetCode::Unknown(7), "unknown(7)"),
        ];
        for (value, code, name) in table {
            assert_eq!(ResetCode::from_u64(value), code);
            assert_eq!(code.as_u64(), value);
            assert_eq!(code.to_string(), name);
        }
    }

    #[test]
    fn wire_form() {
        let reset = Reset::new(ResetCode::FlowControl, "window exceeded");
        let mut out = Vec::new();
        reset.encode(&mut out);
        assert_eq!(out.len(), reset.encoded_len());
        assert_eq!(out[0], 2);
        assert_eq!(&out[1..], b"window exceeded");
        assert_eq!(Reset::decode(Bytes::from(out)).unwrap(), reset);

        let empty = Reset::decode(Bytes::from_static(b"\x00")).unwrap();
        assert_eq!(empty, Reset::new(ResetCode::Cancel, ""));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            Reset::decode(Bytes::new()),
            Err(Error::VarintTruncated)
        ));
        assert!(matches!(
            Reset::decode(Bytes::from_static(b"\x01\xff")),
            Err(Error::InvalidUtf8 { .. })
        ));
    }
}
