//! Compressed response bodies for tether/2 streams on thin links.
//!
//! On a 2 Mbit/s link a `kubectl logs` of 50 MB takes minutes; container logs and Prometheus
//! text shrink five- to tenfold with zstd. This crate is the codec both ends use for that,
//! sans-IO like `stream-proto` (bytes in, bytes out), in a crate of its own so that only the
//! layers that compress carry zstd.
//!
//! # Negotiation (per stream, never with stock KubeEdge peers)
//!
//! The cloud adds [`ACCEPT_HEADER`]`: `[`ENCODING`] to a plain request's connect descriptor
//! (logs, stats, metrics) on a tether/2 session when it is willing to decode. An edge that
//! honours it removes the header before the kubelet sees it, and, if the kubelet's body is
//! not already encoded (`Content-Encoding`), answers with [`ENCODING_HEADER`]`: `[`ENCODING`]
//! among the response headers of its open result and sends the body as frames of this
//! crate. The cloud removes that header and decodes. A stock edge never gets the request
//! header (the cloud only adds it on tether/2 sessions), and a tether edge that does not
//! compress simply never answers with the response header.
//!
//! # Frames
//!
//! `tag (1 byte) ‖ length (u32, big-endian) ‖ payload`, where the tag is [`TAG_ZSTD`] (the
//! next part of one zstd stream, flushed so that everything sent so far decodes: a
//! `logs -f` line goes out at once) or [`TAG_RAW`] (bytes as they are). The encoder
//! switches to raw for good once a body does not shrink ([`Encoder`]), so a stream of
//! already compressed data costs almost nothing.
//!
//! # Bounds
//!
//! zstd's window is [`WINDOW_LOG`] (128 KiB) both ways and the decoder refuses larger ones,
//! so one encoder holds about 0.7 MiB and one decoder about 0.2 MiB however a peer behaves;
//! a frame's payload is at most [`MAX_FRAME`] bytes, and decoding one may yield at most
//! [`MAX_FRAME_OUTPUT`] bytes (the encoder never puts more than [`MAX_INPUT`] input bytes in
//! one frame), so a crafted frame cannot blow up into gigabytes.

use std::io;

use zstd::stream::raw::{CParameter, DParameter, Decoder as ZDecoder, Encoder as ZEncoder};
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

/// Request header by which the cloud offers to decode (in the connect descriptor).
pub const ACCEPT_HEADER: &str = "X-Tether-Accept-Body-Encoding";
/// Response header by which the edge says the body is framed by this crate.
pub const ENCODING_HEADER: &str = "X-Tether-Body-Encoding";
/// The one encoding there is.
pub const ENCODING: &str = "zstd-frames";

/// Tag of a frame holding the next part of the zstd stream.
pub const TAG_ZSTD: u8 = 1;
/// Tag of a frame holding bytes as they are.
pub const TAG_RAW: u8 = 0;
/// zstd window, log2 bytes (128 KiB).
pub const WINDOW_LOG: u32 = 17;
/// zstd level: fast (a thin link is slow; the CPU of a small edge node is small too).
pub const LEVEL: i32 = 3;
/// Largest frame payload accepted.
pub const MAX_FRAME: usize = 256 * 1024;
/// Input bytes the encoder puts in one frame at most.
pub const MAX_INPUT: usize = 64 * 1024;
/// Bytes one frame may decode to.
pub const MAX_FRAME_OUTPUT: usize = MAX_INPUT;
/// After this much input the encoder checks whether compressing pays.
pub const TRIAL_BYTES: u64 = 64 * 1024;
/// Compressing pays when the output is at most this share of the input (percent).
pub const WORTH_PERCENT: u64 = 90;

const HEADER_LEN: usize = 5;

/// What can go wrong decoding (or, for a zstd failure, encoding) a body.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame's tag is neither [`TAG_ZSTD`] nor [`TAG_RAW`].
    #[error("unknown body frame tag {0}")]
    UnknownTag(u8),
    /// A frame's payload is longer than [`MAX_FRAME`].
    #[error("body frame of {0} bytes, more than the {MAX_FRAME}-byte limit")]
    FrameTooLong(usize),
    /// A frame decodes to more than [`MAX_FRAME_OUTPUT`] bytes.
    #[error("a body frame decodes to more than {MAX_FRAME_OUTPUT} bytes")]
    Expands,
    /// The body ended inside a frame, or inside the zstd stream.
    #[error("the compressed body ended mid-frame")]
    Truncated,
    /// zstd refused the data (corrupt, or a window over the limit).
    #[error("zstd: {0}")]
    Zstd(#[source] io::Error),
}

/// Compresses one body into frames.
pub struct Encoder {
    zstd: Option<ZEncoder<'static>>,
    input: u64,
    output: u64,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("compressing", &self.zstd.is_some())
            .field("input", &self.input)
            .field("output", &self.output)
            .finish()
    }
}

impl Encoder {
    /// An encoder at [`LEVEL`] with a [`WINDOW_LOG`] window.
    pub fn new() -> Result<Encoder, Error> {
        let mut zstd = ZEncoder::new(LEVEL).map_err(Error::Zstd)?;
        zstd.set_parameter(CParameter::WindowLog(WINDOW_LOG))
            .map_err(Error::Zstd)?;
        Ok(Encoder {
            zstd: Some(zstd),
            input: 0,
            output: 0,
        })
    }

    /// True while it compresses; false once it found the body does not shrink.
    pub fn is_compressing(&self) -> bool {
        self.zstd.is_some()
    }

    /// Appends to `out` the frames carrying `data`, each decodable at once.
    pub fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        for piece in data.chunks(MAX_INPUT) {
            self.encode_piece(piece, out)?;
        }
        Ok(())
    }

    fn encode_piece(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if piece.is_empty() {
            return Ok(());
        }
        let Some(zstd) = self.zstd.as_mut() else {
            push_frame(out, TAG_RAW, piece);
            return Ok(());
        };
        let start = out.len();
        out.extend_from_slice(&[TAG_ZSTD, 0, 0, 0, 0]);
        let mut input = InBuffer::around(piece);
        loop {
            out.reserve(piece.len() / 2 + 128);
            let pos = out.len();
            let mut buf = OutBuffer::around_pos(out, pos);
            if input.pos() < piece.len() {
                zstd.run(&mut input, &mut buf).map_err(Error::Zstd)?;
            } else if zstd.flush(&mut buf).map_err(Error::Zstd)? == 0 {
                break;
            }
        }
        let len = out.len() - start - HEADER_LEN;
        out[start + 1..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        self.input += piece.len() as u64;
        self.output += len as u64;
        if self.input >= TRIAL_BYTES && self.output * 100 > self.input * WORTH_PERCENT {
            // Not worth it (already compressed, or random): raw from now on, and the
            // compressor's memory goes back.
            self.zstd = None;
        }
        Ok(())
    }
}

fn push_frame(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Decodes the frames of one body.
pub struct Decoder {
    zstd: ZDecoder<'static>,
    /// A frame not complete yet.
    partial: Vec<u8>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("partial", &self.partial.len())
            .finish()
    }
}

impl Decoder {
    /// A decoder that refuses zstd windows above [`WINDOW_LOG`].
    pub fn new() -> Result<Decoder, Error> {
        let mut zstd = ZDecoder::new().map_err(Error::Zstd)?;
        zstd.set_parameter(DParameter::WindowLogMax(WINDOW_LOG))
            .map_err(Error::Zstd)?;
        Ok(Decoder {
            zstd,
            partial: Vec::new(),
        })
    }

    /// Appends to `out` what the complete frames in `partial ‖ data` decode to; keeps an
    /// incomplete last frame for the next call.
    pub fn decode(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        // Complete the pending frame from `data` first: its header, then its payload.
        while !self.partial.is_empty() {
            let need = if self.partial.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                HEADER_LEN + payload_len(&self.partial[..HEADER_LEN])?
            };
            let take = (need - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < need {
                return Ok(());
            }
            if need > HEADER_LEN || payload_len(&self.partial[..HEADER_LEN])? == 0 {
                let frame = std::mem::take(&mut self.partial);
                self.decode_frame(&frame, out)?;
            }
        }
        while !data.is_empty() {
            if data.len() < HEADER_LEN {
                self.partial.extend_from_slice(data);
                return Ok(());
            }
            let len = payload_len(&data[..HEADER_LEN])?;
            if data.len() < HEADER_LEN + len {
                self.partial.extend_from_slice(data);
                return Ok(());
            }
            let (frame, rest) = data.split_at(HEADER_LEN + len);
            self.decode_frame(frame, out)?;
            data = rest;
        }
        Ok(())
    }

    fn decode_frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let payload = &frame[HEADER_LEN..];
        match frame[0] {
            TAG_RAW => {
                out.extend_from_slice(payload);
                Ok(())
            }
            TAG_ZSTD => {
                let limit = out.len() + MAX_FRAME_OUTPUT;
                let mut input = InBuffer::around(payload);
                while input.pos() < payload.len() {
                    let room = limit.saturating_sub(out.len());
                    if room == 0 {
                        return Err(Error::Expands);
                    }
                    out.reserve(room.min(MAX_FRAME_OUTPUT));
                    let pos = out.len();
                    // Never more room than the frame may still decode to.
                    let mut buf = OutBuffer::around_pos(out, pos);
                    self.zstd.run(&mut input, &mut buf).map_err(Error::Zstd)?;
                    if out.len() > limit {
                        return Err(Error::Expands);
                    }
                }
                // Output still held inside zstd for this frame (a flushed frame has none).
                loop {
                    let pos = out.len();
                    out.reserve(4096);
                    let mut buf = OutBuffer::around_pos(out, pos);
                    let mut empty = InBuffer::around(&[]);
                    self.zstd.run(&mut empty, &mut buf).map_err(Error::Zstd)?;
                    if out.len() == pos {
                        break;
                    }
                    if out.len() > limit {
                        return Err(Error::Expands);
                    }
                }
                Ok(())
            }
            tag => Err(Error::UnknownTag(tag)),
        }
    }

    /// The body ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), Error> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            Err(Error::Truncated)
        }
    }
}

fn payload_len(header: &[u8]) -> Result<usize, Error> {
    let tag = header[0];
    if tag != TAG_RAW && tag != TAG_ZSTD {
        return Err(Error::UnknownTag(tag));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(Error::FrameTooLong(len));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn log_text(n: usize) -> Vec<u8> {
        let mut s = Vec::new();
        let mut i = 0u64;
        while s.len() < n {
            s.extend_from_slice(
                format!(
                    "2026-12-04T03:{:02}:{:02}.{:06}Z stdout F level=info msg=\"request served\" path=/api/v1/items/{} status=200 bytes={}\n",
                    (i / 60) % 60,
                    i % 60,
                    i * 7919 % 1_000_000,
                    i % 977,
                    i * 31 % 5000
                )
                .as_bytes(),
            );
            i += 1;
        }
        s.truncate(n);
        s
    }

    fn round_trip(chunks: &[&[u8]], split: usize) -> (Vec<u8>, usize) {
        let mut enc = Encoder::new().unwrap();
        let mut wire = Vec::new();
        for c in chunks {
            enc.encode(c, &mut wire).unwrap();
        }
        let mut dec = Decoder::new().unwrap();
        let mut out = Vec::new();
        for piece in wire.chunks(split.max(1)) {
            dec.decode(piece, &mut out).unwrap();
        }
        dec.finish().unwrap();
        (out, wire.len())
    }

    #[test]
    fn logs_shrink_and_come_back_exact() {
        let text = log_text(1 << 20);
        let chunks: Vec<&[u8]> = text.chunks(4000).collect();
        let (out, wire) = round_trip(&chunks, 1000);
        assert_eq!(out, text);
        assert!(wire * 5 < text.len(), "{wire} bytes for {}", text.len());
    }

    #[test]
    fn every_chunk_decodes_at_once() {
        // A `logs -f` line must not wait for the next one.
        let mut enc = Encoder::new().unwrap();
        let mut dec = Decoder::new().unwrap();
        for line in [&b"first line\n"[..], b"second line\n"] {
            let mut wire = Vec::new();
            enc.encode(line, &mut wire).unwrap();
            let mut out = Vec::new();
            dec.decode(&wire, &mut out).unwrap();
            assert_eq!(out, line);
        }
    }

    #[test]
    fn incompressible_bodies_switch_to_raw() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut enc = Encoder::new().unwrap();
        let mut wire = Vec::new();
        enc.encode(&noise, &mut wire).unwrap();
        assert!(!enc.is_compressing());
        assert!(wire.len() < noise.len() + noise.len() / 50);
        let mut dec = Decoder::new().unwrap();
        let mut out = Vec::new();
        dec.decode(&wire, &mut out).unwrap();
        assert_eq!(out, noise);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut out = Vec::new();
        let err = Decoder::new().unwrap().decode(&[7, 0, 0, 0, 0], &mut out);
        assert!(matches!(err, Err(Error::UnknownTag(7))));
        let err = Decoder::new()
            .unwrap()
            .decode(&[TAG_ZSTD, 0xff, 0, 0, 0], &mut out);
        assert!(matches!(err, Err(Error::FrameTooLong(_))));
        let err = Decoder::new()
            .unwrap()
            .decode(&[TAG_ZSTD, 0, 0, 0, 3, 1, 2, 3], &mut out);
        assert!(matches!(err, Err(Error::Zstd(_))));
        let mut dec = Decoder::new().unwrap();
        dec.decode(&[TAG_RAW, 0, 0, 0, 9, 1], &mut out).unwrap();
        assert!(matches!(dec.finish(), Err(Error::Truncated)));
    }

    #[test]
    fn a_bomb_is_refused() {
        // One frame of a zstd stream that decodes to 10 MiB of zeros.
        let zeros = vec![0u8; 10 << 20];
        let compressed = zstd::bulk::compress(&zeros, 3).unwrap();
        let mut wire = Vec::new();
        push_frame(&mut wire, TAG_ZSTD, &compressed);
        let mut out = Vec::new();
        let err = Decoder::new().unwrap().decode(&wire, &mut out);
        assert!(err.is_err(), "decoded {} bytes", out.len());
        assert!(out.len() <= 2 * MAX_FRAME_OUTPUT);
    }

    proptest! {
        #[test]
        fn any_chunks_any_split_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..20),
            split in 1usize..5000,
        ) {
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let (out, _) = round_trip(&refs, split);
            prop_assert_eq!(out, chunks.concat());
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut out = Vec::new();
            let mut dec = Decoder::new().unwrap();
            let _ = dec.decode(&data, &mut out);
            prop_assert!(out.len() <= data.len() * 2 + MAX_FRAME_OUTPUT * 2);
        }
    }
}
