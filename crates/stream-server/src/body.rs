//! A response body read straight from a tunnel stream.
//!
//! Each poll reads whatever the stream has (up to a large buffer) and hands it to hyper as
//! one frame, so a `follow=true` log line goes out as soon as it arrives and bulk bodies move
//! in big pieces. A stream error (reset, tunnel lost) fails the body, so the client sees a
//! truncated response rather than a clean end. A body the edge compressed
//! (`stream-compress`) is decoded on the way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::sync::Arc;

use tunnel_session::Stream;

use crate::observe::StreamRecord;

/// Read size for relayed bodies (the issue asks for at least 32 KiB).
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// A body made of some bytes already read, then the rest of a stream.
pub(crate) struct TunnelBody {
    prefix: Option<Bytes>,
    stream: Option<Stream>,
    /// Bytes still expected when the length is known (Content-Length); `None` = until EOF.
    remaining: Option<u64>,
    /// Counts what passes and reports the stream's end when the body is dropped.
    record: Arc<StreamRecord>,
    /// Decodes a compressed body; the permit counts it among the decoders held at once.
    decoder: Option<(stream_compress::Decoder, tokio::sync::OwnedSemaphorePermit)>,
}

impl TunnelBody {
    pub(crate) fn new(
        prefix: Bytes,
        stream: Stream,
        length: Option<u64>,
        record: Arc<StreamRecord>,
    ) -> TunnelBody {
        TunnelBody {
            prefix: (!prefix.is_empty()).then_some(prefix),
            stream: Some(stream),
            remaining: length,
            record,
            decoder: None,
        }
    }

    /// Decodes the stream's bytes with `decoder` (the edge compressed the body).
    pub(crate) fn decoding(
        mut self,
        decoder: Option<(stream_compress::Decoder, tokio::sync::OwnedSemaphorePermit)>,
    ) -> TunnelBody {
        self.decoder = decoder;
        self
    }

    fn take_limited(&mut self, mut data: Bytes) -> Bytes {
        if let Some(remaining) = &mut self.remaining {
            let n = data
                .len()
                .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
            data.truncate(n);
            *remaining -= n as u64;
        }
        self.record.add_from_edge(data.len() as u64);
        data
    }
}

impl Body for TunnelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.remaining == Some(0) {
            // Done: let the stream go now so the edge learns at once.
            this.stream = None;
            return Poll::Ready(None);
        }
        if let Some(prefix) = this.prefix.take() {
            let data = this.take_limited(prefix);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(None);
            };
            // The stream's own buffers become the body's frames: no copy.
            let data = match stream.halves().0.poll_read_chunk(cx, READ_CHUNK) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.stream = None;
                    this.record.mark_cut();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Ok(None)) => return Poll::Ready(this.end()),
                Poll::Ready(Ok(Some(data))) => data,
            };
            let data = match this.decoder.as_mut() {
                None => data,
                Some((decoder, _)) => {
                    let mut out = Vec::new();
                    if let Err(e) = decoder.decode(&data, &mut out) {
                        this.stream = None;
                        this.record.mark_cut();
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the edge's compressed body: {e}"),
                        ))));
                    }
                    if out.is_empty() {
                        // Only part of a frame so far.
                        continue;
                    }
                    Bytes::from(out)
                }
            };
            let data = this.take_limited(data);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0) && self.prefix.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl TunnelBody {
    /// The stream ended: the body ends cleanly if everything expected arrived.
    fn end(&mut self) -> Option<Result<Frame<Bytes>, io::Error>> {
        self.stream = None;
        if let Some((decoder, _)) = &self.decoder
            && let Err(e) = decoder.finish()
        {
            self.record.mark_cut();
            return Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                e.to_string(),
            )));
        }
        match self.remaining {
            Some(left) if left > 0 => Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the kubelet's body ended {left} bytes early"),
            ))),
            _ => None,
        }
    }
}
