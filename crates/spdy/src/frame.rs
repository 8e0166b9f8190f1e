//! SPDY/3 frames as values: the 8-byte [`FrameHeader`] and the decoded [`Frame`]s.
//!
//! This is the vocabulary shared by the codec ([`crate::Encoder`], [`crate::Decoder`]) and the
//! connection. Layout (SPDY draft 3, section 2.2), all integers big-endian:
//!
//! ```text
//! control: |1| version (15) | type (16) | flags (8) | length (24) | payload
//! data:    |0| stream id (31)           | flags (8) | length (24) | payload
//! ```
//!
//! Kubernetes' peer (Go `moby/spdystream`) acts on SYN_STREAM, SYN_REPLY, RST_STREAM, DATA,
//! HEADERS, PING and GOAWAY and ignores SETTINGS and WINDOW_UPDATE; all of them are parsed
//! here so that a peer sending them is understood, not misread.

use bytes::{BufMut, Bytes};

use crate::Headers;

/// The only protocol version spoken: SPDY/3 (SPDY/3.1 frames carry version 3 too).
pub const VERSION: u16 = 3;
/// Length of every frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload the 24-bit length field can express.
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;
/// Largest stream id (31 bits).
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// Frame flag bits.
pub mod flags {
    /// Last frame the sender sends on this stream (SYN_STREAM, SYN_REPLY, HEADERS, DATA).
    pub const FIN: u8 = 0x01;
    /// SYN_STREAM: the receiver must not send on this stream.
    pub const UNIDIRECTIONAL: u8 = 0x02;
    /// SETTINGS: clear previously persisted settings.
    pub const CLEAR_SETTINGS: u8 = 0x01;
}

/// Control frame type codes.
pub mod frame_type {
    /// SYN_STREAM: opens a stream.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY: accepts a stream.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM: aborts a stream.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY: no new streams.
    pub const GOAWAY: u16 = 7;
    /// HEADERS: more headers for a stream.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE (flow control; ignored by Kubernetes' peer).
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes (SPDY draft 3.1, section 2.4.2).
pub mod rst_status {
    /// Generic protocol error.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame for a stream that is not active.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// Version not supported.
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// The stream is no longer needed (what Go's `Stream.Reset` sends).
    pub const CANCEL: u32 = 5;
    /// Internal error.
    pub const INTERNAL_ERROR: u32 = 6;
    /// Flow control violated.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// SYN_STREAM for a stream already open.
    pub const STREAM_IN_USE: u32 = 8;
    /// Data or SYN_REPLY for a half-closed stream.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    /// Unused credential slot.
    pub const INVALID_CREDENTIALS: u32 = 10;
    /// A frame too large for the receiver.
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway_status {
    /// Normal session teardown.
    pub const OK: u32 = 0;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// Internal error.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// The fixed 8-byte header of any frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHeader {
    /// Control bit set.
    Control {
        /// Protocol version (3).
        version: u16,
        /// Frame type, see [`frame_type`].
        frame_type: u16,
        /// Flag bits.
        flags: u8,
        /// Payload length (24 bits).
        length: u32,
    },
    /// Control bit clear.
    Data {
        /// Stream id (31 bits).
        stream_id: u32,
        /// Flag bits ([`flags::FIN`]).
        flags: u8,
        /// Payload length (24 bits).
        length: u32,
    },
}

impl FrameHeader {
    /// Parses the 8 header bytes; every bit pattern is a valid header.
    pub fn parse(b: [u8; HEADER_LEN]) -> Self {
        let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let flags = b[4];
        let length = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        if first & 0x8000_0000 != 0 {
            FrameHeader::Control {
                version: ((first >> 16) & 0x7fff) as u16,
                frame_type: (first & 0xffff) as u16,
                flags,
                length,
            }
        } else {
            FrameHeader::Data {
                stream_id: first,
                flags,
                length,
            }
        }
    }

    /// Writes the 8 header bytes. `length` is truncated to 24 bits and ids to 31 bits; the
    /// encoder checks them before.
    pub fn write(&self, dst: &mut impl BufMut) {
        match *self {
            FrameHeader::Control {
                version,
                frame_type,
                flags,
                length,
            } => {
                dst.put_u16(0x8000 | (version & 0x7fff));
                dst.put_u16(frame_type);
                dst.put_u32(u32::from(flags) << 24 | (length & 0x00ff_ffff));
            }
            FrameHeader::Data {
                stream_id,
                flags,
                length,
            } => {
                dst.put_u32(stream_id & MAX_STREAM_ID);
                dst.put_u32(u32::from(flags) << 24 | (length & 0x00ff_ffff));
            }
        }
    }

    /// Payload length.
    pub fn length(&self) -> u32 {
        match *self {
            FrameHeader::Control { length, .. } | FrameHeader::Data { length, .. } => length,
        }
    }
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Flags (persist value / persisted).
    pub flags: u8,
    /// Setting id (24 bits).
    pub id: u32,
    /// Value.
    pub value: u32,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// New stream id: odd from the client, even from the server.
        stream_id: u32,
        /// Stream this one is associated with (server push), usually 0.
        associated_to: u32,
        /// Priority 0 (highest) to 7.
        priority: u8,
        /// Credential slot, 0.
        slot: u8,
        /// The sender sends nothing more on this stream.
        fin: bool,
        /// The receiver must not send on this stream.
        unidirectional: bool,
        /// The stream's headers.
        headers: Headers,
    },
    /// Accepts a stream the peer opened.
    SynReply {
        /// The stream accepted.
        stream_id: u32,
        /// The sender sends nothing more on this stream.
        fin: bool,
        /// Reply headers (empty in Kubernetes).
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream aborted.
        stream_id: u32,
        /// Why, see [`rst_status`].
        status: u32,
    },
    /// Connection settings (ignored by Kubernetes' peer).
    Settings {
        /// The CLEAR_SETTINGS flag.
        clear: bool,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// Liveness probe; the receiver echoes pings whose id parity is the sender's.
    Ping {
        /// Odd from the client, even from the server.
        id: u32,
    },
    /// The sender accepts no new streams.
    GoAway {
        /// Last stream id the sender accepted.
        last_good_stream_id: u32,
        /// See [`goaway_status`].
        status: u32,
    },
    /// Additional headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// The sender sends nothing more on this stream.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Flow-control credit (ignored by Kubernetes' peer, and by this crate).
    WindowUpdate {
        /// The stream (0: the connection).
        stream_id: u32,
        /// Additional window.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// The stream.
        stream_id: u32,
        /// Last frame the sender sends on this stream.
        fin: bool,
        /// The bytes.
        data: Bytes,
    },
    /// A control frame type this crate does not know; SPDY says to ignore it.
    Unknown {
        /// Its type code.
        frame_type: u16,
        /// Its flags.
        flags: u8,
        /// Its payload length (the payload itself is skipped).
        length: u32,
    },
}

impl Frame {
    /// A short name for logs (`"SYN_STREAM"`, `"DATA"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
            Frame::Data { .. } => "DATA",
            Frame::Unknown { .. } => "UNKNOWN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let headers = [
            FrameHeader::Control {
                version: 3,
                frame_type: frame_type::SYN_STREAM,
                flags: flags::FIN | flags::UNIDIRECTIONAL,
                length: 0x00ab_cdef,
            },
            FrameHeader::Data {
                stream_id: MAX_STREAM_ID,
                flags: flags::FIN,
                length: 0,
            },
        ];
        for h in headers {
            let mut buf = Vec::new();
            h.write(&mut buf);
            assert_eq!(buf.len(), HEADER_LEN);
            let parsed = FrameHeader::parse(buf.try_into().unwrap_or([0; 8]));
            assert_eq!(parsed, h);
        }
    }

    #[test]
    fn header_bits_match_the_spec() {
        let mut buf = Vec::new();
        FrameHeader::Control {
            version: 3,
            frame_type: frame_type::PING,
            flags: 0,
            length: 4,
        }
        .write(&mut buf);
        assert_eq!(buf, [0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04]);
        buf.clear();
        FrameHeader::Data {
            stream_id: 5,
            flags: flags::FIN,
            length: 0x010203,
        }
        .write(&mut buf);
        assert_eq!(buf, [0, 0, 0, 5, 0x01, 0x01, 0x02, 0x03]);
    }
}
