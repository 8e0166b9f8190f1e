//! The websocket frame layer under a session.
//!
//! Stock KubeEdge peers put every tunnel message in a websocket TEXT message whose payload is
//! arbitrary binary (log bytes, SPDY frames, gzip). tungstenite validates UTF-8 when it
//! assembles a TEXT message and fails the read (design decision 4), so its message reader
//! cannot be used. We keep tungstenite for what it does well here — parsing and formatting
//! frame headers, opcodes and the handshake keys — and assemble messages ourselves:
//! fragments are joined, control frames handled, sizes bounded.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tungstenite::protocol::frame::FrameHeader;
pub(crate) use tungstenite::protocol::frame::coding::OpCode;
use tungstenite::protocol::frame::coding::{Control, Data};

use crate::error::{Error, Result};

/// Which end of the websocket we are; it decides who masks frames (RFC 6455 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsRole {
    /// The edge: dialled the connection, masks every frame it sends.
    Client,
    /// The cloud: accepted the connection, expects masked frames.
    Server,
}

/// The opcode a data message travelled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataKind {
    Text,
    Binary,
}

/// One thing read off the websocket.
#[derive(Debug)]
pub(crate) enum WsEvent {
    /// A complete (reassembled) data message.
    Message(DataKind, Bytes),
    /// A ping; the payload must be echoed in a pong.
    Ping(Bytes),
    /// A pong answering one of our pings.
    Pong(Bytes),
    /// The peer sent a close frame.
    Close,
}

/// Room for the next read while the tunnel is quiet: pings (at most 139 bytes framed) and
/// small messages fit, and an idle session (thousands share one process) holds no more than
/// this. A larger message makes the reader busy, and the buffer grows for it.
const IDLE_READ: usize = 160;
/// Room for the next read while data is flowing (the last read filled the room it had).
const BUSY_READ: usize = 64 * 1024;
/// Room beyond [`BUSY_READ`] so that a frame of a 64 KiB DATA chunk (the default largest)
/// with its websocket and message headers fits in one busy read buffer.
const FRAME_SLACK: usize = 64;
/// RFC 6455 §5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Reads frames from one half of the connection and assembles messages.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    role: WsRole,
    max_message: usize,
    /// A fragmented data message being assembled.
    partial: Option<(DataKind, BytesMut)>,
    /// The last read filled all the room it had: more is probably waiting.
    busy: bool,
    /// Bytes the frame at the front of `buf` needs in all, when it is incomplete; else 0.
    wanted: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `leftover` holds bytes that were read past the HTTP handshake.
    pub(crate) fn new(io: R, role: WsRole, max_message: usize, leftover: Bytes) -> Self {
        let mut buf = BytesMut::with_capacity(IDLE_READ.max(leftover.len()));
        buf.extend_from_slice(&leftover);
        FrameReader {
            io,
            buf,
            role,
            max_message,
            partial: None,
            busy: false,
            wanted: 0,
        }
    }

    /// The next event, or `None` when the peer closed the connection cleanly between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<WsEvent>> {
        loop {
            if let Some(event) = self.parse_one()? {
                return Ok(Some(event));
            }
            let n = if self.wanted > self.buf.len() {
                // The frame at the front is incomplete and its size known: room for all of it
                // was reserved, and reading no further than its end leaves the buffer empty
                // once it is taken, so the next frame starts in a fresh buffer instead of
                // being copied out of this one when it grows.
                let missing = self.wanted - self.buf.len();
                let mut room = (&mut self.buf).limit(missing);
                self.io.read_buf(&mut room).await?
            } else {
                let want = if self.busy { BUSY_READ } else { IDLE_READ };
                if self.buf.is_empty() && self.buf.capacity() > want + FRAME_SLACK {
                    // Let go of a large buffer (one big message, a burst) once it is drained.
                    self.buf = BytesMut::new();
                }
                // While busy, a whole frame of the largest usual DATA chunk fits.
                self.buf
                    .reserve(if self.busy { want + FRAME_SLACK } else { want });
                let room = self.buf.capacity() - self.buf.len();
                let n = self.io.read_buf(&mut self.buf).await?;
                self.busy = n == room;
                n
            };
            if n == 0 {
                if self.buf.is_empty() && self.partial.is_none() {
                    return Ok(None);
                }
                return Err(Error::Protocol(
                    "connection closed in the middle of a websocket frame".into(),
                ));
            }
        }
    }

    /// Takes one complete frame out of the buffer, if there is one, and turns it into an event
    /// (or nothing, for a fragment that does not complete a message).
    fn parse_one(&mut self) -> Result<Option<WsEvent>> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor)
                .map_err(|e| Error::Protocol(format!("bad websocket frame header: {e}")))?
            else {
                return Ok(None);
            };
            let header_len = cursor.position() as usize;
            let limit = self.max_message as u64;
            if len > limit {
                return Err(Error::Protocol(format!(
                    "websocket frame of {len} bytes exceeds the limit of {limit}"
                )));
            }
            let len = len as usize;
            if self.buf.len() < header_len + len {
                // Make room for the whole frame once rather than growing in small steps.
                self.buf.reserve(header_len + len - self.buf.len());
                self.wanted = header_len + len;
                return Ok(None);
            }
            self.wanted = 0;
            let _ = self.buf.split_to(header_len);
            let mut payload = self.buf.split_to(len);
            self.check_header(&header)?;
            if let Some(mask) = header.mask {
                apply_mask(&mut payload, mask, 0);
            }
            if let Some(event) = self.on_frame(&header, payload)? {
                return Ok(Some(event));
            }
        }
    }

    fn check_header(&self, header: &FrameHeader) -> Result<()> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            // No extension is ever negotiated (KubeEdge disables permessage-deflate).
            return Err(Error::Protocol(
                "websocket frame with reserved bits set".into(),
            ));
        }
        match (self.role, header.mask.is_some()) {
            (WsRole::Server, false) => Err(Error::Protocol(
                "unmasked websocket frame from the client".into(),
            )),
            (WsRole::Client, true) => Err(Error::Protocol(
                "masked websocket frame from the server".into(),
            )),
            _ => Ok(()),
        }
    }

    fn on_frame(&mut self, header: &FrameHeader, payload: BytesMut) -> Result<Option<WsEvent>> {
        match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final || payload.len() as u64 > MAX_CONTROL_PAYLOAD {
                    return Err(Error::Protocol(
                        "fragmented or oversized websocket control frame".into(),
                    ));
                }
                match control {
                    Control::Ping => Ok(Some(WsEvent::Ping(payload.freeze()))),
                    Control::Pong => Ok(Some(WsEvent::Pong(payload.freeze()))),
                    Control::Close => Ok(Some(WsEvent::Close)),
                    Control::Reserved(op) => Err(Error::Protocol(format!(
                        "reserved websocket control opcode {op}"
                    ))),
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some((kind, mut assembled)) = self.partial.take() else {
                    return Err(Error::Protocol(
                        "websocket continuation frame without a message".into(),
                    ));
                };
                if assembled.len() + payload.len() > self.max_message {
                    return Err(Error::Protocol(format!(
                        "websocket message exceeds the limit of {} bytes",
                        self.max_message
                    )));
                }
                assembled.unsplit(payload);
                if header.is_final {
                    Ok(Some(WsEvent::Message(kind, assembled.freeze())))
                } else {
                    self.partial = Some((kind, assembled));
                    Ok(None)
                }
            }
            OpCode::Data(data) => {
                let kind = match data {
                    Data::Text => DataKind::Text,
                    Data::Binary => DataKind::Binary,
                    Data::Continue | Data::Reserved(_) => {
                        return Err(Error::Protocol("reserved websocket data opcode".into()));
                    }
                };
                if self.partial.is_some() {
                    return Err(Error::Protocol(
                        "new websocket message before the previous one was finished".into(),
                    ));
                }
                if header.is_final {
                    Ok(Some(WsEvent::Message(kind, payload.freeze())))
                } else {
                    self.partial = Some((kind, payload));
                    Ok(None)
                }
            }
        }
    }
}

/// Appends the header of a final frame of `len` payload bytes to `out`, and returns the mask
/// the payload must be XORed with when we are the client.
pub(crate) fn encode_header(
    out: &mut BytesMut,
    role: WsRole,
    opcode: OpCode,
    len: usize,
) -> Option<[u8; 4]> {
    let mask = (role == WsRole::Client).then(rand::random::<[u8; 4]>);
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
    };
    out.reserve(header.len(len as u64));
    // Writing into a BytesMut cannot fail.
    let _ = header.format(len as u64, &mut out.writer());
    mask
}

/// Appends one whole frame (header and payload, masked when we are the client) to `out`.
///
/// `payload` is given in parts so that a tunnel message header and its data can be framed
/// without first being joined. The session writer frames through `batch::Batch` instead.
#[cfg(test)]
pub(crate) fn encode_frame(out: &mut BytesMut, role: WsRole, opcode: OpCode, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mask = encode_header(out, role, opcode, len);
    out.reserve(len);
    let start = out.len();
    for part in payload {
        out.extend_from_slice(part);
    }
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask, 0);
    }
}

/// The opcode for data messages of a dialect.
pub(crate) fn data_opcode(kind: DataKind) -> OpCode {
    match kind {
        DataKind::Text => OpCode::Data(Data::Text),
        DataKind::Binary => OpCode::Data(Data::Binary),
    }
}

/// Opcode of a ping frame.
pub(crate) const PING: OpCode = OpCode::Control(Control::Ping);
/// Opcode of a pong frame.
pub(crate) const PONG: OpCode = OpCode::Control(Control::Pong);

/// XORs `buf` with the frame mask (RFC 6455 §5.3), `buf` starting `offset` bytes into the
/// frame's payload.
///
/// tungstenite has this function but keeps it private (`protocol::frame::mask`), and its
/// public `Frame::format` masks only while copying into a new `Vec`; doing it in place here
/// saves that copy on the hot path. Eight bytes at a time: byte by byte, masking took as much
/// CPU as AES-GCM on a bulk transfer (perf, 2026-12-04).
pub(crate) fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut mask = mask;
    mask.rotate_left(offset & 3);
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for chunk in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // What is left starts at a multiple of 8 bytes, so the mask's phase is unchanged.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(role: WsRole, parts: &[(OpCode, bool, &[u8])]) -> Bytes {
        let mut out = BytesMut::new();
        for (opcode, fin, payload) in parts {
            let mask = (role == WsRole::Client).then_some([1, 2, 3, 4]);
            let header = FrameHeader {
                is_final: *fin,
                opcode: *opcode,
                mask,
                ..FrameHeader::default()
            };
            header
                .format(payload.len() as u64, &mut (&mut out).writer())
                .unwrap();
            let start = out.len();
            out.extend_from_slice(payload);
            if let Some(mask) = mask {
                apply_mask(&mut out[start..], mask, 0);
            }
        }
        out.freeze()
    }

    async fn read_all(role: WsRole, wire: Bytes, max: usize) -> Result<Vec<WsEvent>> {
        // The reader is on the other side of the writer's role.
        let reader_role = match role {
            WsRole::Client => WsRole::Server,
            WsRole::Server => WsRole::Client,
        };
        let mut reader = FrameReader::new(&wire[..], reader_role, max, Bytes::new());
        let mut events = Vec::new();
        while let Some(event) = reader.next().await? {
            events.push(event);
        }
        Ok(events)
    }

    #[tokio::test]
    async fn non_utf8_text_message_is_accepted() {
        let wire = frames(
            WsRole::Client,
            &[(
                OpCode::Data(Data::Text),
                true,
                &[0x01, 0x03, 0xff, 0xfe, 0x80],
            )],
        );
        let events = read_all(WsRole::Client, wire, 1024).await.unwrap();
        assert!(
            matches!(&events[..], [WsEvent::Message(DataKind::Text, m)] if m[..] == [0x01, 0x03, 0xff, 0xfe, 0x80])
        );
    }

    #[tokio::test]
    async fn fragments_are_reassembled_around_control_frames() {
        let wire = frames(
            WsRole::Server,
            &[
                (OpCode::Data(Data::Text), false, b"ab"),
                (PING, true, b"p"),
                (OpCode::Data(Data::Continue), false, &[0xff]),
                (OpCode::Data(Data::Continue), true, b"cd"),
            ],
        );
        let events = read_all(WsRole::Server, wire, 1024).await.unwrap();
        assert!(matches!(&events[0], WsEvent::Ping(p) if &p[..] == b"p"));
        assert!(matches!(&events[1], WsEvent::Message(DataKind::Text, m) if m[..] == *b"ab\xffcd"));
    }

    #[tokio::test]
    async fn limits_and_masking_are_enforced() {
        let big = vec![0u8; 100];
        let wire = frames(WsRole::Client, &[(OpCode::Data(Data::Binary), true, &big)]);
        assert!(matches!(
            read_all(WsRole::Client, wire, 99).await,
            Err(Error::Protocol(_))
        ));

        let wire = frames(
            WsRole::Client,
            &[
                (OpCode::Data(Data::Binary), false, &big[..60]),
                (OpCode::Data(Data::Continue), true, &big[..60]),
            ],
        );
        assert!(matches!(
            read_all(WsRole::Client, wire, 99).await,
            Err(Error::Protocol(_))
        ));

        // A server frame sent to a server (unmasked) is refused.
        let wire = frames(WsRole::Server, &[(OpCode::Data(Data::Binary), true, b"x")]);
        let mut reader = FrameReader::new(&wire[..], WsRole::Server, 1024, Bytes::new());
        assert!(matches!(reader.next().await, Err(Error::Protocol(_))));

        let wire = frames(
            WsRole::Server,
            &[(OpCode::Data(Data::Continue), true, b"x")],
        );
        assert!(matches!(
            read_all(WsRole::Server, wire, 1024).await,
            Err(Error::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_not_a_hang() {
        let wire = frames(
            WsRole::Server,
            &[(OpCode::Data(Data::Binary), true, b"hello")],
        );
        let cut = wire.slice(..wire.len() - 2);
        assert!(matches!(
            read_all(WsRole::Server, cut, 1024).await,
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn mask_matches_bytewise_at_every_offset_and_length() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            for offset in 0..8 {
                let data: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
                let mut fast = data.clone();
                apply_mask(&mut fast, mask, offset);
                let slow: Vec<u8> = data
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(i + offset) % 4])
                    .collect();
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[tokio::test]
    async fn encoded_frames_read_back() {
        for role in [WsRole::Client, WsRole::Server] {
            let mut out = BytesMut::new();
            encode_frame(
                &mut out,
                role,
                data_opcode(DataKind::Text),
                &[b"\x01\x03", &[0xc3, 0x28]],
            );
            encode_frame(&mut out, role, PONG, &[b"xy"]);
            let events = read_all(role, out.freeze(), 1024).await.unwrap();
            assert!(
                matches!(&events[0], WsEvent::Message(DataKind::Text, m) if m[..] == [1, 3, 0xc3, 0x28])
            );
            assert!(matches!(&events[1], WsEvent::Pong(p) if &p[..] == b"xy"));
        }
    }
}
