//! The frames the session writer has gathered for one write to the tunnel.
//!
//! How this fits: `session::write_loop` takes control and stream messages and appends them
//! here; one vectored write (under the write deadline) then hands the whole batch to TLS,
//! which copies it once into its records. A large DATA payload is not copied into the batch:
//! it is written from the buffer the stream already holds it in, beside a small copied part
//! holding the frame and message headers (and the small messages, which cost less to copy
//! than to give a slice each). Only the client (the edge) masks, in place when the payload is
//! not shared with anyone else.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::ws::{self, OpCode, WsRole};

/// Payloads below this size are copied next to their headers.
const COPY_BELOW: usize = 2048;
/// Slices handed to one vectored write (the kernel's and rustls' limits are well above).
const MAX_SLICES: usize = 64;

/// Frames waiting to be written, in order.
#[derive(Default)]
pub(crate) struct Batch {
    /// Headers and small payloads; split off into `segments` whenever a large payload
    /// follows, so its allocation is reused once those segments are written.
    inline: BytesMut,
    /// Parts already in order, ahead of `inline`.
    segments: VecDeque<Bytes>,
    /// Bytes in `segments` and `inline` together.
    len: usize,
}

impl Batch {
    /// Bytes gathered.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is gathered.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one final frame whose payload is `head` followed by `payload`.
    pub(crate) fn push(&mut self, role: WsRole, opcode: OpCode, head: &[u8], payload: Bytes) {
        let total = head.len() + payload.len();
        let before = self.inline.len();
        let mask = ws::encode_header(&mut self.inline, role, opcode, total);
        self.inline.extend_from_slice(head);
        let start = self.inline.len() - head.len();
        if let Some(mask) = mask {
            ws::apply_mask(&mut self.inline[start..], mask, 0);
        }
        if payload.len() < COPY_BELOW {
            let start = self.inline.len();
            self.inline.extend_from_slice(&payload);
            if let Some(mask) = mask {
                ws::apply_mask(&mut self.inline[start..], mask, head.len());
            }
            self.len += self.inline.len() - before;
            return;
        }
        let payload = match mask {
            None => payload,
            Some(mask) => match payload.try_into_mut() {
                // Ours alone (a stream's write copied it): masked where it is.
                Ok(mut owned) => {
                    ws::apply_mask(&mut owned, mask, head.len());
                    owned.freeze()
                }
                // Shared: masked while copying, as a small payload is.
                Err(shared) => {
                    let start = self.inline.len();
                    self.inline.extend_from_slice(&shared);
                    ws::apply_mask(&mut self.inline[start..], mask, head.len());
                    self.len += self.inline.len() - before;
                    return;
                }
            },
        };
        self.len += self.inline.len() - before + payload.len();
        self.segments.push_back(self.inline.split().freeze());
        self.segments.push_back(payload);
    }

    /// Writes everything gathered and flushes. The deadline is for progress, not for the
    /// whole batch: a slow uplink that keeps taking bytes is alive; one that takes none for
    /// `deadline` is not.
    pub(crate) async fn write_to<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        deadline: Duration,
    ) -> Result<()> {
        let stuck = || Error::Timeout("writing to the tunnel: the peer does not read");
        if !self.inline.is_empty() {
            self.segments.push_back(self.inline.split().freeze());
        }
        while !self.segments.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .segments
                .iter()
                .take(MAX_SLICES)
                .map(|s| IoSlice::new(s))
                .collect();
            let n = match tokio::time::timeout(deadline, io.write_vectored(&slices)).await {
                Ok(Ok(0)) => return Err(Error::Io(std::io::ErrorKind::WriteZero.into())),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(Error::Io(e)),
                Err(_) => return Err(stuck()),
            };
            drop(slices);
            self.advance(n);
        }
        self.len = 0;
        match tokio::time::timeout(deadline, io.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Io(e)),
            Err(_) => Err(stuck()),
        }
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.segments.pop_front();
        }
    }

    /// Everything gathered, joined (what `write_to` would write), for the fuzz target that
    /// checks our framing against our reader without a runtime.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for segment in self.segments.drain(..) {
            out.extend_from_slice(&segment);
        }
        out.extend_from_slice(&self.inline);
        out
    }

    /// Lets go of the buffers (an idle session holds none).
    pub(crate) fn release(&mut self) {
        *self = Batch::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{DataKind, FrameReader, WsEvent};

    /// Writes `parts` in 3-byte pieces, so a batch is written over many calls.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(3);
            self.get_mut().0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_of_every_size_and_owner_read_back_in_order() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let shared = Bytes::from(big.clone());
        let keep = shared.clone();
        for role in [WsRole::Client, WsRole::Server] {
            let mut batch = Batch::default();
            let opcode = ws::data_opcode(DataKind::Binary);
            let payloads = [
                Bytes::from_static(b"small"),
                Bytes::from(big.clone()),
                shared.clone(),
                Bytes::new(),
                Bytes::from(big[..3000].to_vec()),
            ];
            for p in &payloads {
                batch.push(role, opcode, b"hd", p.clone());
            }
            let expected_len = batch.len();
            let mut out = Trickle(Vec::new());
            batch
                .write_to(&mut out, Duration::from_secs(5))
                .await
                .unwrap();
            assert!(batch.is_empty());
            assert_eq!(out.0.len(), expected_len);
            let reader_role = match role {
                WsRole::Client => WsRole::Server,
                WsRole::Server => WsRole::Client,
            };
            let mut reader = FrameReader::new(&out.0[..], reader_role, 1 << 20, Bytes::new());
            for p in &payloads {
                let Some(WsEvent::Message(DataKind::Binary, m)) = reader.next().await.unwrap()
                else {
                    panic!("expected a message");
                };
                assert_eq!(&m[..2], b"hd");
                assert_eq!(&m[2..], &p[..]);
            }
            assert!(reader.next().await.unwrap().is_none());
        }
        // A payload shared with someone else is never masked in place.
        assert_eq!(keep, Bytes::from(big));
    }
}
