//! The tunnel message: `uvarint ConnectID ‖ uvarint MessageType ‖ data`.
//!
//! One websocket message carries exactly one [`Message`]; there is no length field, so the data
//! is "everything after the two varints" (spec §2.6). The session layer hands a whole websocket
//! payload to [`Message::decode`] and writes the result of [`Message::encode`] (or
//! [`Message::encode_header`] followed by the data) as one websocket message.

use std::fmt;

use bytes::{Buf, BufMut, Bytes};

use crate::{Error, MAX_DATA_LEN, varint};

/// Identifies one stream within a tunnel session.
///
/// The cloud allocates ids from a process-wide counter starting at 1; id 0 appears only on
/// `CLOSE_CONNECT`, which addresses the whole tunnel (spec §2.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectId(pub u64);

impl fmt::Display for ConnectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u64> for ConnectId {
    fn from(id: u64) -> Self {
        ConnectId(id)
    }
}

/// The type of a tunnel message.
///
/// Values 0 to 6 are KubeEdge's; 7 to 11 exist only in the tether/2 dialect and must never be
/// sent to a peer that did not negotiate it, because released edgecores crash on them
/// (spec §2.7). Any other value decodes to [`MessageType::Unknown`] and encodes back to the same
/// number, so a relay or a logger never loses information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// 0: open a log stream (cloud → edge); data is a JSON connect descriptor.
    LogsConnect,
    /// 1: open an exec stream (cloud → edge); data is a JSON connect descriptor with `method`.
    ExecConnect,
    /// 2: open a metrics/stats request (cloud → edge); data is a JSON connect descriptor.
    MetricConnect,
    /// 3: stream bytes, both directions.
    Data,
    /// 4: close and abort one stream, both directions; data is empty.
    RemoveConnect,
    /// 5: reject the whole tunnel (cloud → edge, connect id 0); data is a UTF-8 reason.
    CloseConnect,
    /// 6: open an attach stream (cloud → edge); data is a JSON connect descriptor with `method`.
    AttachConnect,
    /// 7 (tether/2): grant send credit; data is a uvarint increment in bytes.
    Window,
    /// 8 (tether/2): how the edge opened the stream; data is a JSON
    /// [`OpenResult`](crate::OpenResult).
    OpenResult,
    /// 9 (tether/2): abort the stream with a reason; data is a [`Reset`](crate::Reset).
    Reset,
    /// 10 (tether/2): the sender will send no more `DATA` on this stream (half-close); data is
    /// empty.
    Fin,
    /// 11 (tether/2): the sender is draining and accepts no new streams; data is a UTF-8 reason.
    GoAway,
    /// Any other value, kept verbatim.
    ///
    /// [`MessageType::from_u64`] only produces this for values without a named variant. If one
    /// is built by hand with a known value, it still encodes as that value and decodes as the
    /// named variant.
    Unknown(u64),
}

impl MessageType {
    /// Maps a wire value to its type; unassigned values become [`MessageType::Unknown`].
    pub fn from_u64(v: u64) -> Self {
        match v {
            0 => MessageType::LogsConnect,
            1 => MessageType::ExecConnect,
            2 => MessageType::MetricConnect,
            3 => MessageType::Data,
            4 => MessageType::RemoveConnect,
            5 => MessageType::CloseConnect,
            6 => MessageType::AttachConnect,
            7 => MessageType::Window,
            8 => MessageType::OpenResult,
            9 => MessageType::Reset,
            10 => MessageType::Fin,
            11 => MessageType::GoAway,
            other => MessageType::Unknown(other),
        }
    }

    /// The wire value of this type.
    pub fn as_u64(self) -> u64 {
        match self {
            MessageType::LogsConnect => 0,
            MessageType::ExecConnect => 1,
            MessageType::MetricConnect => 2,
            MessageType::Data => 3,
            MessageType::RemoveConnect => 4,
            MessageType::CloseConnect => 5,
            MessageType::AttachConnect => 6,
            MessageType::Window => 7,
            MessageType::OpenResult => 8,
            MessageType::Reset => 9,
            MessageType::Fin => 10,
            MessageType::GoAway => 11,
            MessageType::Unknown(v) => v,
        }
    }

    /// Whether a stock KubeEdge peer knows this type (values 0 to 6), i.e. whether it may be
    /// sent on a session that did not negotiate tether/2.
    pub fn is_kubeedge(self) -> bool {
        self.as_u64() <= 6
    }

    /// Whether this type opens a stream (logs, exec, metric or attach connect).
    pub fn is_connect(self) -> bool {
        matches!(
            MessageType::from_u64(self.as_u64()),
            MessageType::LogsConnect
                | MessageType::ExecConnect
                | MessageType::MetricConnect
                | MessageType::AttachConnect
        )
    }
}

impl fmt::Display for MessageType {
    /// KubeEdge's `String()` names (HEAD, where type 5 prints `CLOSE_CONNECT`), extended with
    /// the tether/2 names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match MessageType::from_u64(self.as_u64()) {
            MessageType::LogsConnect => "LOGS_CONNECT",
            MessageType::ExecConnect => "EXEC_CONNECT",
            MessageType::MetricConnect => "METRIC_CONNECT",
            MessageType::Data => "DATA",
            MessageType::RemoveConnect => "REMOVE_CONNECT",
            MessageType::CloseConnect => "CLOSE_CONNECT",
            MessageType::AttachConnect => "ATTACH_CONNECT",
            MessageType::Window => "WINDOW",
            MessageType::OpenResult => "OPEN_RESULT",
            MessageType::Reset => "RESET",
            MessageType::Fin => "FIN",
            MessageType::GoAway => "GO_AWAY",
            MessageType::Unknown(v) => return write!(f, "UNKNOWN({v})"),
        };
        f.write_str(name)
    }
}

/// One tunnel message: the payload of one websocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The stream this message belongs to.
    pub connect_id: ConnectId,
    /// What the message means.
    pub kind: MessageType,
    /// The payload after the two header varints.
    ///
    /// Senders must keep it within [`MAX_DATA_LEN`]: a stock receiver silently drops the
    /// excess and this crate's decoder rejects it.
    pub data: Bytes,
}

impl Message {
    /// The longest header [`Message::encode_header`] writes: two 10-byte varints.
    pub const MAX_HEADER_LEN: usize = 2 * varint::MAX_LEN;

    /// Builds a message.
    pub fn new(connect_id: ConnectId, kind: MessageType, data: impl Into<Bytes>) -> Self {
        Message {
            connect_id,
            kind,
            data: data.into(),
        }
    }

    /// The exact number of bytes [`Message::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        varint::encoded_len(self.connect_id.0)
            + varint::encoded_len(self.kind.as_u64())
            + self.data.len()
    }

    /// Appends the whole message: `uvarint id ‖ uvarint type ‖ data`.
    ///
    /// The data length is not checked here; see [`Message::data`].
    pub fn encode(&self, dst: &mut impl BufMut) {
        Self::encode_header(self.connect_id, self.kind, dst);
        dst.put_slice(&self.data);
    }

    /// Appends only the two header varints, so a caller can put the data right after them in
    /// its own buffer (or frame) without first copying it into a [`Message`].
    pub fn encode_header(connect_id: ConnectId, kind: MessageType, dst: &mut impl BufMut) {
        varint::encode(connect_id.0, dst);
        varint::encode(kind.as_u64(), dst);
    }

    /// Decodes one whole websocket message payload.
    ///
    /// The returned data is a zero-copy slice of `src`.
    ///
    /// # Errors
    ///
    /// A truncated, overlong or overflowing header varint (Go `encoding/binary` semantics; a
    /// payload too short for both varints is truncated), or data longer than
    /// [`MAX_DATA_LEN`]. A stock Go peer silently drops data beyond 1 MiB instead; rejecting it
    /// lets the session close the tunnel rather than corrupt a stream.
    pub fn decode(src: Bytes) -> Result<Message, Error> {
        let mut header = &src[..];
        let connect_id = ConnectId(varint::decode(&mut header)?);
        let kind = MessageType::from_u64(varint::decode(&mut header)?);
        let data_len = header.remaining();
        if data_len > MAX_DATA_LEN {
            return Err(Error::DataTooLong { len: data_len });
        }
        let data = src.slice(src.len() - data_len..);
        Ok(Message {
            connect_id,
            kind,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out.len(), msg.encoded_len());
        out
    }

    #[test]
    fn spec_examples() {
        let data = Message::new(ConnectId(1), MessageType::Data, &b"ok\n"[..]);
        assert_eq!(encode(&data), [0x01, 0x03, 0x6f, 0x6b, 0x0a]);

        let remove = Message::new(ConnectId(300), MessageType::RemoveConnect, Bytes::new());
        assert_eq!(encode(&remove), [0xac, 0x02, 0x04]);

        let close = Message::new(
            ConnectId(0),
            MessageType::CloseConnect,
            &b"failed to update node"[..],
        );
        let bytes = encode(&close);
        assert_eq!(bytes[..8], [0x00, 0x05, 0x66, 0x61, 0x69, 0x6c, 0x65, 0x64]);

        for msg in [data, remove, close] {
            assert_eq!(Message::decode(Bytes::from(encode(&msg))).unwrap(), msg);
        }
    }

    #[test]
    fn decode_is_zero_copy() {
        let src = Bytes::from_static(b"\x01\x03hello");
        let msg = Message::decode(src.clone()).unwrap();
        assert_eq!(msg.data, &b"hello"[..]);
        assert_eq!(msg.data.as_ptr(), src[2..].as_ptr());
    }

    #[test]
    fn data_limit_is_one_mib() {
        let max = Message::new(ConnectId(9), MessageType::Data, vec![0xa5; MAX_DATA_LEN]);
        assert_eq!(Message::decode(Bytes::from(encode(&max))).unwrap(), max);

        let over = Message::new(
            ConnectId(9),
            MessageType::Data,
            vec![0xa5; MAX_DATA_LEN + 1],
        );
        assert!(matches!(
            Message::decode(Bytes::from(encode(&over))),
            Err(Error::DataTooLong { len }) if len == MAX_DATA_LEN + 1
        ));
    }

    #[test]
    fn short_payloads_are_truncated() {
        assert!(matches!(
            Message::decode(Bytes::new()),
            Err(Error::VarintTruncated)
        ));
        assert!(matches!(
            Message::decode(Bytes::from_static(b"\x01")),
            Err(Error::VarintTruncated)
        ));
        assert!(matches!(
            Message::decode(Bytes::from_static(b"\x01\x80")),
            Err(Error::VarintTruncated)
        ));
        // Two varints and no data is a valid, empty message.
        let msg = Message::decode(Bytes::from_static(b"\x01\x04")).unwrap();
        assert_eq!(msg.kind, MessageType::RemoveConnect);
        assert!(msg.data.is_empty());
    }

    #[test]
    fn header_limits() {
        let mut out = Vec::new();
        Message::encode_header(
            ConnectId(u64::MAX),
            MessageType::Unknown(u64::MAX),
            &mut out,
        );
        assert_eq!(out.len(), Message::MAX_HEADER_LEN);
        let msg = Message::decode(Bytes::from(out)).unwrap();
        assert_eq!(msg.connect_id, ConnectId(u64::MAX));
        assert_eq!(msg.kind, MessageType::Unknown(u64::MAX));
    }

    #[test]
    fn message_type_values_and_names() {
        let table = [
            (0, MessageType::LogsConnect, "LOGS_CONNECT", true, true),
            (1, MessageType::ExecConnect, "EXEC_CONNECT", true, true),
            (2, MessageType::MetricConnect, "METRIC_CONNECT", true, true),
            (3, MessageType::Data, "DATA", true, false),
            (4, MessageType::RemoveConnect, "REMOVE_CONNECT", true, false),
            (5, MessageType::CloseConnect, "CLOSE_CONNECT", true, false),
            (6, MessageType::AttachConnect, "ATTACH_CONNECT", true, true),
            (7, MessageType::Window, "WINDOW", false, false),
            (8, MessageType::OpenResult, "OPEN_RESULT", false, false),
            (9, MessageType::Reset, "RESET", false, false),
            (10, MessageType::Fin, "FIN", false, false),
            (11, MessageType::GoAway, "GO_AWAY", false, false),
            (12, MessageType::Unknown(12), "UNKNOWN(12)", false, false),
            (
                u64::MAX,
                MessageType::Unknown(u64::MAX),
                "UNKNOWN(18446744073709551615)",
                false,
                false,
            ),
        ];
        for (value, kind, name, kubeedge, connect) in table {
            assert_eq!(MessageType::from_u64(value), kind);
            assert_eq!(kind.as_u64(), value);
            assert_eq!(kind.to_string(), name);
            assert_eq!(kind.is_kubeedge(), kubeedge, "{name}");
            assert_eq!(kind.is_connect(), connect, "{name}");
        }
        // A hand-built Unknown with a known value behaves as that value on the wire.
        assert_eq!(MessageType::Unknown(1).to_string(), "EXEC_CONNECT");
        assert!(MessageType::Unknown(1).is_connect());
        assert!(MessageType::Unknown(6).is_kubeedge());
    }

    #[test]
    fn connect_id_display() {
        assert_eq!(ConnectId(42).to_string(), "42");
        assert_eq!(format!("{:>4}", ConnectId(7)), "   7");
    }
}
