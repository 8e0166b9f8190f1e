//! Copying bytes between a stream and a socket without a buffer in between.
//!
//! How this fits: both ends relay a stream to a socket (the edge to the kubelet, the cloud to
//! the API server's upgraded connection). `tokio::io::copy` would read into a buffer of its
//! own and write that, so every byte is copied once more than needed: received DATA already
//! sits in buffers of its own (it is handed out as it arrived, [`StreamReader::read_chunk`]),
//! and bytes read from a socket become the DATA message's buffer ([`StreamWriter::write_chunk`]).

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::stream::{Stream, StreamReader, StreamWriter};

/// Read size of a pump, and the largest piece of received data taken at once: the session's
/// default largest DATA payload, so a bulk copy moves whole messages.
pub const PUMP_BUFFER: usize = 64 * 1024;
/// Reads smaller than this are copied out and the read buffer kept, so an interactive stream
/// does not allocate a fresh buffer per keystroke; larger ones are sent in the buffer they
/// were read into.
const COPY_BELOW: usize = 4096;

/// Which end of a one-way copy failed.
#[derive(Debug)]
pub enum PumpError {
    /// Reading from the source failed.
    Read(io::Error),
    /// Writing to the destination failed.
    Write(io::Error),
}

impl PumpError {
    /// The underlying I/O error, whichever end it came from.
    pub fn into_inner(self) -> io::Error {
        match self {
            PumpError::Read(e) | PumpError::Write(e) => e,
        }
    }
}

/// Copies `from` into the stream until end of file, then ends the stream's direction
/// (shutdown: FIN, or KubeEdge's REMOVE_CONNECT). Adds what went through to `count`.
pub async fn into_stream<R: AsyncRead + Unpin>(
    from: &mut R,
    to: &mut StreamWriter<'_>,
    count: &mut u64,
) -> Result<(), PumpError> {
    let mut buf = BytesMut::new();
    loop {
        if buf.capacity() < COPY_BELOW {
            buf = BytesMut::with_capacity(PUMP_BUFFER);
        }
        let n = from.read_buf(&mut buf).await.map_err(PumpError::Read)?;
        if n == 0 {
            // Passing the end of file on is best effort: a peer that is already gone cannot
            // be told, and this direction is over either way.
            let _ = to.shutdown().await;
            return Ok(());
        }
        let chunk = if n < COPY_BELOW {
            let chunk = Bytes::copy_from_slice(&buf);
            buf.clear();
            chunk
        } else {
            // The buffer goes with the message; the writer can mask it in place (edge),
            // since nothing else holds it.
            std::mem::take(&mut buf).freeze()
        };
        to.write_chunk(chunk).await.map_err(PumpError::Write)?;
        *count += n as u64;
    }
}

/// Copies the stream into `to` until the peer ends its direction, then shuts `to` down
/// (half-close). Adds what went through to `count`.
pub async fn from_stream<W: AsyncWrite + Unpin>(
    from: &mut StreamReader<'_>,
    to: &mut W,
    count: &mut u64,
) -> Result<(), PumpError> {
    loop {
        let Some(chunk) = from
            .read_chunk(PUMP_BUFFER)
            .await
            .map_err(PumpError::Read)?
        else {
            let _ = to.shutdown().await;
            return Ok(());
        };
        to.write_all(&chunk).await.map_err(PumpError::Write)?;
        // TLS holds written records until flushed; plain TCP flushes for free.
        to.flush().await.map_err(PumpError::Write)?;
        *count += chunk.len() as u64;
    }
}

/// Relays both ways between `stream` and `other` until both directions have ended, each end
/// of file passed on as a shutdown, like `tokio::io::copy_bidirectional`; the first error
/// ends both. Returns the bytes moved (other → stream, stream → other).
///
/// A stream that fails (reset, cut by the stall limit, session lost) ends the bridge at
/// once, even while it is blocked on `other` (a client that neither reads nor writes);
/// what was still buffered for `other` is dropped with it.
pub async fn bridge<T: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut Stream,
    other: &mut T,
) -> io::Result<(u64, u64)> {
    let failure = stream.failure_watch();
    let (mut stream_rx, mut stream_tx) = stream.halves();
    let (mut other_rx, mut other_tx) = tokio::io::split(other);
    let (mut up, mut down) = (0, 0);
    let copies = async {
        tokio::try_join!(
            into_stream(&mut other_rx, &mut stream_tx, &mut up),
            from_stream(&mut stream_rx, &mut other_tx, &mut down),
        )
    };
    let result = tokio::select! {
        r = copies => r.map(|_| ()),
        e = failure.failed() => Err(PumpError::Read(e)),
    };
    match result {
        Ok(()) => Ok((up, down)),
        Err(e) => Err(e.into_inner()),
    }
}
