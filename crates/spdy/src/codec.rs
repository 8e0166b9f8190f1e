//! Sans-IO SPDY/3 codec: [`Encoder`] turns [`Frame`]s into bytes, [`Decoder`] turns bytes
//! into frames.
//!
//! The connection ([`crate::Connection`]) owns one of each, because header compression is
//! stateful: every header block a side sends goes through ONE zlib stream for the whole
//! connection, primed with [`DICTIONARY`], and each block ends with a SYNC_FLUSH so the peer
//! can decode it at once. So a frame can only be decoded by the decoder that decoded every
//! earlier frame of that direction, and an encoder's output is only decodable in order. Both
//! types are deterministic and do no I/O, which lets the unit tests feed them byte by byte.
//!
//! Everything a peer controls is bounded by [`Limits`]: the declared frame length is checked
//! against the limit before any byte of the payload is waited for, and decompression stops at
//! the header block limit. No buffer is ever sized from a length a peer claims.

use std::collections::HashSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::{
    Error, Headers,
    dictionary::{DICTIONARY, DICTIONARY_ID},
    frame::{Frame, FrameHeader, HEADER_LEN, MAX_PAYLOAD, MAX_STREAM_ID, Setting, VERSION},
    frame::{flags, frame_type},
};

/// Bounds on what the decoder accepts from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest DATA payload. The default is the protocol's maximum (16 MiB - 1) because Go
    /// peers write each `Write` call as one frame, whatever its size.
    pub max_data_payload: usize,
    /// Largest control frame payload (compressed header blocks included).
    pub max_control_payload: usize,
    /// Largest header block once decompressed.
    pub max_header_block: usize,
    /// Most name/value pairs in one header block.
    pub max_header_count: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_data_payload: MAX_PAYLOAD,
            max_control_payload: 256 * 1024,
            max_header_block: 256 * 1024,
            max_header_count: 1000,
        }
    }
}

/// Headers SPDY forbids in requests (SYN_STREAM) and responses (SYN_REPLY); Go's framer
/// rejects a frame carrying one, so the encoder refuses to produce it.
const FORBIDDEN_IN_REQUEST: &[&str] = &[
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];
const FORBIDDEN_IN_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

/// Which forbidden-header list applies to a HEADERS frame: like Go, by stream id parity.
fn headers_frame_forbidden(stream_id: u32) -> &'static [&'static str] {
    if stream_id.is_multiple_of(2) {
        FORBIDDEN_IN_REQUEST
    } else {
        FORBIDDEN_IN_RESPONSE
    }
}

/// Encodes frames, compressing header blocks with the connection's outgoing zlib context.
pub struct Encoder {
    compress: Compress,
    /// Set when compression failed after consuming input: the peer's decompressor would be
    /// out of step with anything encoded later.
    poisoned: bool,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// A fresh encoder (the first header block it writes starts the zlib stream).
    pub fn new() -> Self {
        let mut compress = Compress::new(Compression::default(), true);
        // Priming a fresh stream cannot fail; if the backend refused, every later block would
        // fail too, so remember it instead of panicking.
        let poisoned = compress.set_dictionary(DICTIONARY).is_err();
        Self { compress, poisoned }
    }

    /// Appends the encoding of `frame` to `dst`.
    ///
    /// Field errors (zero stream id, forbidden header, oversized payload) are reported before
    /// anything is compressed and leave the encoder usable. A compression failure, or a header
    /// block that compresses to more than a frame can hold, poisons the encoder.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), Error> {
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                check_stream_id("SYN_STREAM", *stream_id)?;
                if *associated_to > MAX_STREAM_ID {
                    return Err(outgoing("SYN_STREAM", "associated stream id above 2^31-1"));
                }
                let block = self.header_block("SYN_STREAM", headers, FORBIDDEN_IN_REQUEST)?;
                let mut fl = 0;
                if *fin {
                    fl |= flags::FIN;
                }
                if *unidirectional {
                    fl |= flags::UNIDIRECTIONAL;
                }
                self.control(frame_type::SYN_STREAM, fl, 10 + block.len(), dst)?;
                dst.put_u32(*stream_id);
                dst.put_u32(*associated_to);
                dst.put_u8((priority & 0x07) << 5);
                dst.put_u8(*slot);
                dst.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                check_stream_id("SYN_REPLY", *stream_id)?;
                let block = self.header_block("SYN_REPLY", headers, FORBIDDEN_IN_RESPONSE)?;
                self.control(frame_type::SYN_REPLY, fin_flag(*fin), 4 + block.len(), dst)?;
                dst.put_u32(*stream_id);
                dst.put_slice(&block);
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                check_stream_id("HEADERS", *stream_id)?;
                let forbidden = headers_frame_forbidden(*stream_id);
                let block = self.header_block("HEADERS", headers, forbidden)?;
                self.control(frame_type::HEADERS, fin_flag(*fin), 4 + block.len(), dst)?;
                dst.put_u32(*stream_id);
                dst.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                check_stream_id("RST_STREAM", *stream_id)?;
                if *status == 0 {
                    return Err(outgoing("RST_STREAM", "status 0 is invalid"));
                }
                self.control(frame_type::RST_STREAM, 0, 8, dst)?;
                dst.put_u32(*stream_id);
                dst.put_u32(*status);
            }
            Frame::Settings { clear, entries } => {
                let len = entries
                    .len()
                    .checked_mul(8)
                    .and_then(|n| n.checked_add(4))
                    .filter(|n| *n <= MAX_PAYLOAD)
                    .ok_or_else(|| outgoing("SETTINGS", "too many entries"))?;
                let fl = if *clear { flags::CLEAR_SETTINGS } else { 0 };
                self.control(frame_type::SETTINGS, fl, len, dst)?;
                dst.put_u32(entries.len() as u32);
                for s in entries {
                    dst.put_u32(u32::from(s.flags) << 24 | (s.id & 0x00ff_ffff));
                    dst.put_u32(s.value);
                }
            }
            Frame::Ping { id } => {
                if *id == 0 {
                    return Err(outgoing("PING", "id 0 is invalid"));
                }
                self.control(frame_type::PING, 0, 4, dst)?;
                dst.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                if *last_good_stream_id > MAX_STREAM_ID {
                    return Err(outgoing("GOAWAY", "stream id above 2^31-1"));
                }
                self.control(frame_type::GOAWAY, 0, 8, dst)?;
                dst.put_u32(*last_good_stream_id);
                dst.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if *stream_id > MAX_STREAM_ID || *delta == 0 || *delta > MAX_STREAM_ID {
                    return Err(outgoing("WINDOW_UPDATE", "stream id or delta out of range"));
                }
                self.control(frame_type::WINDOW_UPDATE, 0, 8, dst)?;
                dst.put_u32(*stream_id);
                dst.put_u32(*delta);
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => self.encode_data(*stream_id, *fin, data, dst)?,
            Frame::Unknown { .. } => {
                return Err(outgoing("UNKNOWN", "unknown frames are only ever decoded"));
            }
        }
        Ok(())
    }

    /// Appends one DATA frame carrying `data` (at most [`MAX_PAYLOAD`] bytes).
    pub fn encode_data(
        &mut self,
        stream_id: u32,
        fin: bool,
        data: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        check_stream_id("DATA", stream_id)?;
        if data.len() > MAX_PAYLOAD {
            return Err(outgoing("DATA", "payload longer than 16 MiB - 1"));
        }
        dst.reserve(HEADER_LEN + data.len());
        FrameHeader::Data {
            stream_id,
            flags: fin_flag(fin),
            length: data.len() as u32,
        }
        .write(dst);
        dst.put_slice(data);
        Ok(())
    }

    fn control(
        &mut self,
        frame_type: u16,
        flags: u8,
        len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        if len > MAX_PAYLOAD {
            // Only a header block can get here, and it was compressed already.
            self.poisoned = true;
            return Err(outgoing("control", "header block too large for one frame"));
        }
        dst.reserve(HEADER_LEN + len);
        FrameHeader::Control {
            version: VERSION,
            frame_type,
            flags,
            length: len as u32,
        }
        .write(dst);
        Ok(())
    }

    /// Serializes and compresses a header block. Validation happens first so that a rejected
    /// block never touches the compression context.
    fn header_block(
        &mut self,
        frame: &'static str,
        headers: &Headers,
        forbidden: &[&str],
    ) -> Result<Vec<u8>, Error> {
        if self.poisoned {
            return Err(Error::EncoderPoisoned);
        }
        let groups = headers.grouped();
        let mut raw = Vec::with_capacity(64);
        raw.put_u32(u32_len(frame, groups.len())?);
        for (name, values) in &groups {
            if name.is_empty() {
                return Err(outgoing(frame, "empty header name"));
            }
            if forbidden.contains(name) {
                return Err(Error::ForbiddenHeader((*name).to_owned()));
            }
            if values.iter().any(|v| v.contains('\0')) {
                return Err(outgoing(frame, "header value contains NUL"));
            }
            raw.put_u32(u32_len(frame, name.len())?);
            raw.put_slice(name.as_bytes());
            let joined = values.join("\0");
            raw.put_u32(u32_len(frame, joined.len())?);
            raw.put_slice(joined.as_bytes());
        }
        self.compress_block(&raw)
    }

    fn compress_block(&mut self, input: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let start = self.compress.total_in();
        loop {
            let consumed = (self.compress.total_in() - start) as usize;
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256));
            }
            if let Err(e) =
                self.compress
                    .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            {
                self.poisoned = true;
                return Err(Error::Compression(e.to_string()));
            }
            let consumed = (self.compress.total_in() - start) as usize;
            // zlib's rule: the flush is complete once a call leaves output space unused.
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Decodes frames, decompressing header blocks with the connection's incoming zlib context.
pub struct Decoder {
    decompress: Decompress,
    limits: Limits,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Decoder {
    /// A fresh decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            decompress: Decompress::new(true),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes one complete frame off the front of `src`.
    ///
    /// Returns `Ok(None)` when `src` does not hold a whole frame yet (nothing is consumed).
    /// A declared length over the limits is an error as soon as the 8 header bytes are in,
    /// before the payload arrives. Errors are fatal for the connection.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some(head) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(head);
        let header = FrameHeader::parse(bytes);
        let len = header.length() as usize;
        match header {
            FrameHeader::Control { version, .. } => {
                if version != VERSION {
                    return Err(Error::UnsupportedVersion(version));
                }
                if len > self.limits.max_control_payload {
                    return Err(Error::FrameTooLarge {
                        kind: "control",
                        len,
                        max: self.limits.max_control_payload,
                    });
                }
            }
            FrameHeader::Data { .. } => {
                if len > self.limits.max_data_payload {
                    return Err(Error::FrameTooLarge {
                        kind: "data",
                        len,
                        max: self.limits.max_data_payload,
                    });
                }
            }
        }
        if src.len() < HEADER_LEN + len {
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        self.parse(header, payload).map(Some)
    }

    fn parse(&mut self, header: FrameHeader, mut p: Bytes) -> Result<Frame, Error> {
        let (frame_type, fl, len) = match header {
            FrameHeader::Data {
                stream_id,
                flags: fl,
                ..
            } => {
                if stream_id == 0 {
                    return Err(invalid("DATA", "stream id 0"));
                }
                return Ok(Frame::Data {
                    stream_id,
                    fin: fl & flags::FIN != 0,
                    data: p,
                });
            }
            FrameHeader::Control {
                frame_type,
                flags,
                length,
                ..
            } => (frame_type, flags, length),
        };
        let fin = fl & flags::FIN != 0;
        match frame_type {
            frame_type::SYN_STREAM => {
                if p.len() < 10 {
                    return Err(invalid("SYN_STREAM", "payload shorter than 10 bytes"));
                }
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let associated_to = p.get_u32() & MAX_STREAM_ID;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                // Decompress before any other check: the zlib context must stay in step.
                let headers = self.header_block(&p, FORBIDDEN_IN_REQUEST)?;
                if stream_id == 0 {
                    return Err(invalid("SYN_STREAM", "stream id 0"));
                }
                Ok(Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    fin,
                    unidirectional: fl & flags::UNIDIRECTIONAL != 0,
                    headers,
                })
            }
            frame_type::SYN_REPLY | frame_type::HEADERS => {
                let name = if frame_type == frame_type::SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                if p.len() < 4 {
                    return Err(invalid(name, "payload shorter than 4 bytes"));
                }
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let forbidden = if frame_type == frame_type::SYN_REPLY {
                    FORBIDDEN_IN_RESPONSE
                } else {
                    headers_frame_forbidden(stream_id)
                };
                let headers = self.header_block(&p, forbidden)?;
                if stream_id == 0 {
                    return Err(invalid(name, "stream id 0"));
                }
                Ok(if frame_type == frame_type::SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                })
            }
            frame_type::RST_STREAM => {
                if p.len() != 8 {
                    return Err(invalid("RST_STREAM", "payload is not 8 bytes"));
                }
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let status = p.get_u32();
                if stream_id == 0 {
                    return Err(invalid("RST_STREAM", "stream id 0"));
                }
                if status == 0 {
                    return Err(invalid("RST_STREAM", "status 0"));
                }
                Ok(Frame::RstStream { stream_id, status })
            }
            frame_type::SETTINGS => {
                if p.len() < 4 {
                    return Err(invalid("SETTINGS", "payload shorter than 4 bytes"));
                }
                let count = p.get_u32() as usize;
                if count > p.len() / 8 {
                    return Err(invalid("SETTINGS", "more entries than the payload holds"));
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let flag_id = p.get_u32();
                    entries.push(Setting {
                        flags: (flag_id >> 24) as u8,
                        id: flag_id & 0x00ff_ffff,
                        value: p.get_u32(),
                    });
                }
                Ok(Frame::Settings {
                    clear: fl & flags::CLEAR_SETTINGS != 0,
                    entries,
                })
            }
            frame_type::PING => {
                if p.len() != 4 {
                    return Err(invalid("PING", "payload is not 4 bytes"));
                }
                let id = p.get_u32();
                if id == 0 {
                    return Err(invalid("PING", "id 0"));
                }
                Ok(Frame::Ping { id })
            }
            frame_type::GOAWAY => {
                if p.len() != 8 {
                    return Err(invalid("GOAWAY", "payload is not 8 bytes"));
                }
                Ok(Frame::GoAway {
                    last_good_stream_id: p.get_u32() & MAX_STREAM_ID,
                    status: p.get_u32(),
                })
            }
            frame_type::WINDOW_UPDATE => {
                if p.len() != 8 {
                    return Err(invalid("WINDOW_UPDATE", "payload is not 8 bytes"));
                }
                Ok(Frame::WindowUpdate {
                    stream_id: p.get_u32() & MAX_STREAM_ID,
                    delta: p.get_u32() & MAX_STREAM_ID,
                })
            }
            other => Ok(Frame::Unknown {
                frame_type: other,
                flags: fl,
                length: len,
            }),
        }
    }

    fn header_block(&mut self, compressed: &[u8], forbidden: &[&str]) -> Result<Headers, Error> {
        if compressed.is_empty() {
            // No block at all (not even a compressed count): read as no headers, and leave
            // the zlib context untouched since the peer did not use it.
            return Ok(Headers::new());
        }
        let raw = self.decompress_block(compressed)?;
        parse_header_block(&raw, self.limits.max_header_count, forbidden)
    }

    fn decompress_block(&mut self, input: &[u8]) -> Result<Vec<u8>, Error> {
        let max = self.limits.max_header_block;
        let mut out: Vec<u8> = Vec::with_capacity((input.len() * 4).clamp(64, max.max(64)));
        let start = self.decompress.total_in();
        loop {
            let consumed = (self.decompress.total_in() - start) as usize;
            if out.len() == out.capacity() {
                if out.len() >= max {
                    return Err(Error::HeaderBlockTooLarge { max });
                }
                let room = out.capacity().min(max - out.len()).max(64);
                out.reserve_exact(room);
            }
            let before_out = out.len();
            match self.decompress.decompress_vec(
                &input[consumed..],
                &mut out,
                FlushDecompress::Sync,
            ) {
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => {
                    return Err(Error::Compression(
                        "peer ended its header compression stream".to_owned(),
                    ));
                }
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        self.decompress
                            .set_dictionary(DICTIONARY)
                            .map_err(|e| Error::Compression(e.to_string()))?;
                        continue;
                    }
                    Some(other) => {
                        return Err(Error::Compression(format!(
                            "peer compresses with an unknown dictionary (id {other:#010x})"
                        )));
                    }
                    None => return Err(Error::Compression(e.to_string())),
                },
            }
            if out.len() > max {
                return Err(Error::HeaderBlockTooLarge { max });
            }
            let now_consumed = (self.decompress.total_in() - start) as usize;
            if now_consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if now_consumed == consumed && out.len() == before_out && out.len() < out.capacity() {
                // No progress with input left and room to write: zlib wants bytes that are not
                // in this frame.
                return Err(Error::Compression(
                    "header block ends inside a compressed block".to_owned(),
                ));
            }
        }
    }
}

fn parse_header_block(raw: &[u8], max_count: usize, forbidden: &[&str]) -> Result<Headers, Error> {
    let mut cur = raw;
    let count = take_u32(&mut cur)? as usize;
    if count > max_count {
        return Err(Error::InvalidHeaderBlock("too many headers"));
    }
    // Each pair needs at least 8 bytes; refuse counts the block cannot hold before looping.
    if count > cur.len() / 8 {
        return Err(Error::InvalidHeaderBlock("count larger than the block"));
    }
    let mut headers = Headers::new();
    let mut seen = HashSet::with_capacity(count);
    for _ in 0..count {
        let name = take_str(&mut cur)?;
        if name.is_empty() {
            return Err(Error::InvalidHeaderBlock("empty header name"));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::InvalidHeaderBlock("header name not lowercase"));
        }
        if !seen.insert(name) {
            return Err(Error::InvalidHeaderBlock("header name repeated"));
        }
        if forbidden.contains(&name) {
            return Err(Error::ForbiddenHeader(name.to_owned()));
        }
        let value = take_str(&mut cur)?;
        for v in value.split('\0') {
            headers.push_raw(name.to_owned(), v.to_owned());
        }
    }
    if !cur.is_empty() {
        return Err(Error::InvalidHeaderBlock("bytes after the last header"));
    }
    Ok(headers)
}

fn take_u32(cur: &mut &[u8]) -> Result<u32, Error> {
    if cur.len() < 4 {
        return Err(Error::InvalidHeaderBlock("truncated"));
    }
    Ok(cur.get_u32())
}

fn take_str<'a>(cur: &mut &'a [u8]) -> Result<&'a str, Error> {
    let len = take_u32(cur)? as usize;
    if len > cur.len() {
        return Err(Error::InvalidHeaderBlock("length beyond the block"));
    }
    let (s, rest) = cur.split_at(len);
    *cur = rest;
    std::str::from_utf8(s).map_err(|_| Error::InvalidHeaderBlock("not UTF-8"))
}

fn check_stream_id(frame: &'static str, id: u32) -> Result<(), Error> {
    if id == 0 || id > MAX_STREAM_ID {
        return Err(outgoing(frame, "stream id must be in 1..=2^31-1"));
    }
    Ok(())
}

fn u32_len(frame: &'static str, n: usize) -> Result<u32, Error> {
    u32::try_from(n).map_err(|_| outgoing(frame, "header field too long"))
}

fn fin_flag(fin: bool) -> u8 {
    if fin { flags::FIN } else { 0 }
}

fn invalid(frame: &'static str, reason: &'static str) -> Error {
    Error::InvalidFrame { frame, reason }
}

fn outgoing(frame: &'static str, reason: &'static str) -> Error {
    Error::InvalidOutgoing { frame, reason }
}

#[cfg(test)]
mod tests;
