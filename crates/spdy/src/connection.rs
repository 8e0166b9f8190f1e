//! [`Connection`]: a SPDY/3.1 session over any byte stream, with [`Stream`]s as async I/O.
//!
//! This is the async shell around the sans-IO codec, shaped like our tunnel sessions:
//! [`Connection::new`] returns a cloneable handle and a [`Driver`] future that the caller
//! spawns and owns. The driver does all the I/O (one reader, one writer); handles and streams
//! talk to it through a command queue. When the driver ends (peer gone, [`Connection::close`],
//! every handle dropped, or the driver itself dropped) every stream ends with it: reads see
//! EOF or an error, writes fail, pending opens fail, `accept` returns `None`.
//!
//! Behaviour follows what Kubernetes' Go peer (`moby/spdystream` under
//! `k8s.io/apimachinery/pkg/util/httpstream/spdy`) actually does, not the whole SPDY/3.1
//! draft:
//!
//! - no flow control: WINDOW_UPDATE and SETTINGS are parsed and ignored, none is sent, and
//!   nothing waits for the peer's window. Memory is bounded instead by pausing the reader
//!   while a stream's receive buffer is over [`Config::stream_read_buffer`] (TCP
//!   backpressure; no data is dropped), and by a byte budget for queued writes. While the
//!   reader is paused nothing else is read either (PINGs included): one stream that is not
//!   read stalls the connection's inbound side, exactly as in spdystream, whose frame
//!   handlers block on an unbuffered channel. Writing goes on meanwhile.
//! - a client opens streams and waits for SYN_REPLY (30 s by default, like client-go); a
//!   server [`accept`](Connection::accept)s them and replies (or resets).
//! - PINGs whose id has the peer's parity are echoed.
//! - FIN half-closes one direction of a stream ([`AsyncWriteExt::shutdown`]); a RST_STREAM
//!   from the peer ends reads with EOF after the data already received, as in spdystream,
//!   and is visible through [`Stream::peer_reset`].
//! - [`Connection::close`] does what k8s' `connection.Close` does: reset every open stream,
//!   send GOAWAY, close the transport. [`Connection::goaway`] is the graceful variant.
//!
//! [`AsyncWriteExt::shutdown`]: tokio::io::AsyncWriteExt::shutdown

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker, ready},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
};
use tokio_util::sync::{CancellationToken, PollSemaphore};
use tracing::{debug, trace};

use crate::{
    Decoder, Encoder, Error, Headers, Limits,
    frame::{Frame, MAX_STREAM_ID, goaway_status, rst_status},
};

/// Which end of the connection this is; it decides stream and ping id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams with odd ids (kubectl, kube-apiserver towards the kubelet).
    Client,
    /// Accepts the client's streams; its own ids are even (the kubelet).
    Server,
}

impl Role {
    fn first_id(self) -> u32 {
        match self {
            Role::Client => 1,
            Role::Server => 2,
        }
    }

    /// True when `id` (stream or ping) has this end's parity.
    fn owns(self, id: u32) -> bool {
        id % 2 == self.first_id() % 2
    }
}

/// Tunables of a [`Connection`].
#[derive(Debug, Clone)]
pub struct Config {
    /// What the decoder accepts from the peer.
    pub limits: Limits,
    /// How long [`Connection::open_stream`] waits for SYN_REPLY (client-go: 30 s).
    pub reply_timeout: Duration,
    /// How long [`Connection::ping`] waits for the echo.
    pub ping_timeout: Duration,
    /// Bytes a stream buffers from the peer before the connection stops reading.
    pub stream_read_buffer: usize,
    /// Bytes of stream data queued for writing (all streams together) before writers wait.
    pub write_buffer: usize,
    /// Largest DATA frame this end sends; longer writes are split.
    pub max_write_frame: usize,
    /// Most streams open at once; further opens fail and further peer streams are refused.
    pub max_streams: usize,
    /// Peer streams waiting for [`Connection::accept`] before the connection stops reading.
    pub accept_backlog: usize,
    /// Frames the driver itself must send (ping echoes, refusals) that may queue up while the
    /// transport does not take writes; more is a [`Error::ControlFlood`].
    pub max_pending_control: usize,
    /// How long the driver tries to flush its last frames when it ends.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            reply_timeout: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(30),
            stream_read_buffer: 1 << 20,
            write_buffer: 1 << 20,
            max_write_frame: 32 * 1024,
            max_streams: 1024,
            accept_backlog: 64,
            max_pending_control: 1024,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Bytes the reader asks the transport for at a time, and the writer's batch size.
const IO_CHUNK: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-stream state shared by the driver and the stream's handle.
pub(crate) struct StreamShared {
    id: u32,
    /// Headers of the SYN_STREAM that opened it.
    headers: Headers,
    read_limit: usize,
    state: Mutex<StreamState>,
    /// Signalled when the handle consumed data or went away, so a paused reader resumes.
    space: Notify,
}

#[derive(Default)]
struct StreamState {
    inbound: VecDeque<Bytes>,
    buffered: usize,
    /// The peer sent FIN.
    remote_fin: bool,
    /// The handle shut down its write side (FIN queued); writes fail from then on.
    fin_queued: bool,
    /// The writer put FIN on the wire.
    fin_sent: bool,
    /// The handle reset the stream (RST queued).
    reset_queued: bool,
    /// The writer put RST_STREAM on the wire.
    rst_sent: bool,
    /// The peer reset the stream with this status.
    peer_reset: Option<u32>,
    /// The connection ended.
    conn_gone: bool,
    handle_dropped: bool,
    read_waker: Option<Waker>,
    /// Who waits for SYN_REPLY (streams this end opened).
    reply: Option<oneshot::Sender<Result<Headers, Error>>>,
    reply_headers: Option<Headers>,
}

impl StreamState {
    /// Nothing more will happen on the wire for this stream.
    fn finished(&self) -> bool {
        (self.remote_fin && self.fin_sent) || self.rst_sent || self.peer_reset.is_some()
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
    }
}

impl StreamShared {
    fn new(id: u32, headers: Headers, read_limit: usize) -> Self {
        Self {
            id,
            headers,
            read_limit,
            state: Mutex::new(StreamState::default()),
            space: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        lock(&self.state)
    }

    /// The connection ended: fail whatever still waits on this stream.
    fn abort(&self) {
        let mut st = self.lock();
        st.conn_gone = true;
        st.reply.take();
        st.wake_reader();
        drop(st);
        self.space.notify_waiters();
    }
}

/// What handles ask the driver to do, in order.
enum Command {
    Open {
        headers: Headers,
        reply: oneshot::Sender<Result<Headers, Error>>,
        opened: oneshot::Sender<Result<Arc<StreamShared>, Error>>,
    },
    Reply {
        stream: Arc<StreamShared>,
        headers: Headers,
    },
    Data {
        stream: Arc<StreamShared>,
        data: Bytes,
        fin: bool,
        /// Returned to the write budget once the bytes are encoded.
        _permit: Option<OwnedSemaphorePermit>,
    },
    Reset {
        stream: Arc<StreamShared>,
        status: u32,
    },
    Ping {
        done: oneshot::Sender<()>,
    },
    GoAway,
    Close,
}

struct ConnState {
    streams: HashMap<u32, Arc<StreamShared>>,
    next_stream_id: u32,
    /// Highest peer stream id seen; new peer streams must be above it.
    last_peer_stream_id: u32,
    next_ping_id: u32,
    pings: HashMap<u32, oneshot::Sender<()>>,
    goaway_sent: bool,
    goaway_received: bool,
}

struct Shared {
    role: Role,
    config: Config,
    state: Mutex<ConnState>,
    /// Frames the reader needs sent; they bypass the (ordered) command queue.
    control: Mutex<VecDeque<Frame>>,
    control_ready: Notify,
    accept_rx: tokio::sync::Mutex<mpsc::Receiver<Arc<StreamShared>>>,
    write_budget: Arc<Semaphore>,
    /// Tells the reader and the writer to finish.
    stop: CancellationToken,
    /// Cancelled once the driver has ended and every stream was failed.
    done: CancellationToken,
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    fn stream(&self, id: u32) -> Option<Arc<StreamShared>> {
        self.lock_state().streams.get(&id).cloned()
    }

    fn push_control(&self, frame: Frame) -> Result<(), Error> {
        let mut q = lock(&self.control);
        if q.len() >= self.config.max_pending_control {
            return Err(Error::ControlFlood);
        }
        q.push_back(frame);
        drop(q);
        self.control_ready.notify_one();
        Ok(())
    }

    fn reset_frame(stream_id: u32, status: u32) -> Frame {
        Frame::RstStream { stream_id, status }
    }

    /// Drops a stream from the table once nothing more can happen on it.
    fn maybe_remove(&self, s: &StreamShared) {
        if s.lock().finished() {
            self.lock_state().streams.remove(&s.id);
        }
        self.check_drained();
    }

    /// After a GOAWAY (either way) the connection ends when its last stream is done.
    fn check_drained(&self) {
        let st = self.lock_state();
        if (st.goaway_sent || st.goaway_received) && st.streams.is_empty() {
            drop(st);
            debug!("spdy: going away and no stream left");
            self.stop.cancel();
        }
    }

    fn abort_all(&self) {
        let (streams, pings) = {
            let mut st = self.lock_state();
            (
                std::mem::take(&mut st.streams),
                std::mem::take(&mut st.pings),
            )
        };
        drop(pings);
        for s in streams.values() {
            s.abort();
        }
    }

    // ---- reader side ----

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        mut r: R,
        accept_tx: mpsc::Sender<Arc<StreamShared>>,
    ) -> Result<(), Error> {
        let mut dec = Decoder::new(self.config.limits);
        let mut buf = BytesMut::with_capacity(IO_CHUNK);
        loop {
            while let Some(frame) = dec.decode(&mut buf)? {
                trace!(frame = frame.name(), "spdy: received");
                self.dispatch(frame, &accept_tx).await?;
                if self.stop.is_cancelled() {
                    return Ok(());
                }
            }
            if buf.capacity() - buf.len() < IO_CHUNK {
                buf.reserve(IO_CHUNK);
            }
            let n = tokio::select! {
                r = r.read_buf(&mut buf) => r?,
                () = self.stop.cancelled() => return Ok(()),
            };
            if n == 0 {
                if buf.is_empty() {
                    debug!("spdy: peer closed the transport");
                    return Ok(());
                }
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "transport closed inside a frame",
                )));
            }
        }
    }

    async fn dispatch(
        &self,
        frame: Frame,
        accept_tx: &mpsc::Sender<Arc<StreamShared>>,
    ) -> Result<(), Error> {
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                unidirectional,
                headers,
                ..
            } => {
                self.on_syn_stream(stream_id, fin, unidirectional, headers, accept_tx)
                    .await
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                if let Some(s) = self.stream(stream_id) {
                    let mut st = s.lock();
                    if st.reply_headers.is_none() {
                        st.reply_headers = Some(headers.clone());
                        if let Some(tx) = st.reply.take() {
                            let _ = tx.send(Ok(headers));
                        }
                    }
                    if fin {
                        st.remote_fin = true;
                        st.wake_reader();
                    }
                    drop(st);
                    self.maybe_remove(&s);
                }
                Ok(())
            }
            Frame::RstStream { stream_id, status } => {
                if let Some(s) = self.stream(stream_id) {
                    debug!(stream_id, status, "spdy: stream reset by peer");
                    let mut st = s.lock();
                    st.peer_reset = Some(status);
                    if let Some(tx) = st.reply.take() {
                        let _ = tx.send(Err(Error::StreamReset(status)));
                    }
                    st.wake_reader();
                    drop(st);
                    s.space.notify_waiters();
                    self.maybe_remove(&s);
                }
                Ok(())
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => self.on_data(stream_id, fin, data).await,
            Frame::Headers { stream_id, fin, .. } => {
                // Kubernetes never sends HEADERS; only its FIN matters here.
                if fin && let Some(s) = self.stream(stream_id) {
                    let mut st = s.lock();
                    st.remote_fin = true;
                    st.wake_reader();
                    drop(st);
                    self.maybe_remove(&s);
                }
                Ok(())
            }
            Frame::Ping { id } => {
                if self.role.owns(id) {
                    if let Some(tx) = self.lock_state().pings.remove(&id) {
                        let _ = tx.send(());
                    }
                    Ok(())
                } else {
                    self.push_control(Frame::Ping { id })
                }
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                debug!(last_good_stream_id, status, "spdy: GOAWAY received");
                self.lock_state().goaway_received = true;
                self.check_drained();
                Ok(())
            }
            Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => Ok(()),
        }
    }

    async fn on_syn_stream(
        &self,
        stream_id: u32,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
        accept_tx: &mpsc::Sender<Arc<StreamShared>>,
    ) -> Result<(), Error> {
        let stream = {
            let mut st = self.lock_state();
            if self.role.owns(stream_id) || stream_id <= st.last_peer_stream_id {
                drop(st);
                debug!(stream_id, "spdy: SYN_STREAM with an invalid id");
                return self.push_control(Self::reset_frame(stream_id, rst_status::PROTOCOL_ERROR));
            }
            st.last_peer_stream_id = stream_id;
            let refuse = self.role == Role::Client
                || st.goaway_sent
                || st.goaway_received
                || st.streams.len() >= self.config.max_streams;
            if refuse {
                drop(st);
                debug!(stream_id, "spdy: refusing peer stream");
                return self.push_control(Self::reset_frame(stream_id, rst_status::REFUSED_STREAM));
            }
            let s = Arc::new(StreamShared::new(
                stream_id,
                headers,
                self.config.stream_read_buffer,
            ));
            {
                let mut ss = s.lock();
                ss.remote_fin = fin;
                // A unidirectional stream is closed for sending from the start.
                ss.fin_queued = unidirectional;
                ss.fin_sent = unidirectional;
            }
            st.streams.insert(stream_id, s.clone());
            s
        };
        // A full backlog pauses the reader until the application accepts.
        tokio::select! {
            r = accept_tx.send(stream.clone()) => {
                if r.is_err() {
                    self.lock_state().streams.remove(&stream_id);
                    return self.push_control(Self::reset_frame(stream_id, rst_status::REFUSED_STREAM));
                }
            }
            () = self.stop.cancelled() => {}
        }
        self.maybe_remove(&stream);
        Ok(())
    }

    async fn on_data(&self, stream_id: u32, fin: bool, data: Bytes) -> Result<(), Error> {
        let Some(s) = self.stream(stream_id) else {
            trace!(stream_id, "spdy: DATA for an unknown stream ignored");
            return Ok(());
        };
        {
            let mut st = s.lock();
            let discard = st.handle_dropped
                || st.remote_fin
                || st.peer_reset.is_some()
                || st.rst_sent
                || st.reset_queued;
            if !discard && !data.is_empty() {
                st.buffered += data.len();
                st.inbound.push_back(data);
            }
            if fin {
                st.remote_fin = true;
            }
            st.wake_reader();
        }
        if fin {
            self.maybe_remove(&s);
        }
        // Backpressure: stop reading the transport until the application drains this stream.
        loop {
            let notified = s.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = s.lock();
                if st.buffered <= s.read_limit
                    || st.handle_dropped
                    || st.reset_queued
                    || st.rst_sent
                    || st.conn_gone
                {
                    break;
                }
            }
            tokio::select! {
                () = notified => {}
                () = self.stop.cancelled() => break,
            }
        }
        Ok(())
    }

    // ---- writer side ----

    fn drain_control(&self, enc: &mut Encoder, out: &mut BytesMut) -> Result<(), Error> {
        loop {
            let Some(frame) = lock(&self.control).pop_front() else {
                return Ok(());
            };
            trace!(frame = frame.name(), "spdy: sending");
            enc.encode(&frame, out)?;
        }
    }

    /// Encodes what `cmd` asks for into `out`; `Ok(true)` means "close the connection".
    fn handle(&self, cmd: Command, enc: &mut Encoder, out: &mut BytesMut) -> Result<bool, Error> {
        match cmd {
            Command::Open {
                headers,
                reply,
                opened,
            } => self.open(headers, reply, opened, enc, out)?,
            Command::Reply { stream, headers } => {
                let st = stream.lock();
                if st.peer_reset.is_some() || st.rst_sent || st.conn_gone {
                    return Ok(false);
                }
                drop(st);
                let frame = Frame::SynReply {
                    stream_id: stream.id,
                    fin: false,
                    headers,
                };
                match enc.encode(&frame, out) {
                    Ok(()) => {}
                    Err(e @ (Error::ForbiddenHeader(_) | Error::InvalidOutgoing { .. })) => {
                        debug!(error = %e, "spdy: reply refused, resetting the stream");
                        self.write_reset(&stream, rst_status::INTERNAL_ERROR, enc, out)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Command::Data {
                stream, data, fin, ..
            } => {
                let mut st = stream.lock();
                if st.peer_reset.is_some() || st.rst_sent || st.fin_sent {
                    return Ok(false);
                }
                for chunk in data.chunks(self.config.max_write_frame.max(1)) {
                    enc.encode_data(stream.id, false, chunk, out)?;
                }
                if fin {
                    enc.encode_data(stream.id, true, &[], out)?;
                    st.fin_sent = true;
                    drop(st);
                    self.maybe_remove(&stream);
                }
            }
            Command::Reset { stream, status } => {
                self.write_reset(&stream, status, enc, out)?;
            }
            Command::Ping { done } => {
                let id = {
                    let mut st = self.lock_state();
                    let id = st.next_ping_id;
                    st.next_ping_id = if id >= MAX_STREAM_ID - 2 {
                        self.role.first_id()
                    } else {
                        id + 2
                    };
                    st.pings.insert(id, done);
                    id
                };
                enc.encode(&Frame::Ping { id }, out)?;
            }
            Command::GoAway => {
                self.write_goaway(enc, out)?;
                self.check_drained();
            }
            Command::Close => return Ok(true),
        }
        Ok(false)
    }

    fn open(
        &self,
        headers: Headers,
        reply: oneshot::Sender<Result<Headers, Error>>,
        opened: oneshot::Sender<Result<Arc<StreamShared>, Error>>,
        enc: &mut Encoder,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        let mut st = self.lock_state();
        let refusal = if st.goaway_sent || st.goaway_received {
            Some(Error::GoingAway)
        } else if st.streams.len() >= self.config.max_streams || st.next_stream_id > MAX_STREAM_ID {
            Some(Error::TooManyStreams(self.config.max_streams))
        } else {
            None
        };
        if let Some(e) = refusal {
            let _ = opened.send(Err(e));
            return Ok(());
        }
        let id = st.next_stream_id;
        let frame = Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers,
        };
        match enc.encode(&frame, out) {
            Ok(()) => {}
            Err(e @ (Error::ForbiddenHeader(_) | Error::InvalidOutgoing { .. })) => {
                let _ = opened.send(Err(e));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let Frame::SynStream { headers, .. } = frame else {
            return Ok(());
        };
        st.next_stream_id += 2;
        let s = Arc::new(StreamShared::new(
            id,
            headers,
            self.config.stream_read_buffer,
        ));
        s.lock().reply = Some(reply);
        st.streams.insert(id, s.clone());
        drop(st);
        debug!(stream_id = id, "spdy: opened stream");
        if let Err(Ok(s)) = opened.send(Ok(s)) {
            // The opener gave up already: the stream is not wanted.
            self.write_reset(&s, rst_status::CANCEL, enc, out)?;
        }
        Ok(())
    }

    fn write_reset(
        &self,
        stream: &StreamShared,
        status: u32,
        enc: &mut Encoder,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        let mut st = stream.lock();
        if !st.finished() && !st.conn_gone {
            enc.encode(&Self::reset_frame(stream.id, status), out)?;
            st.rst_sent = true;
        }
        st.reset_queued = true;
        st.reply.take();
        st.wake_reader();
        drop(st);
        stream.space.notify_waiters();
        self.lock_state().streams.remove(&stream.id);
        self.check_drained();
        Ok(())
    }

    fn write_goaway(&self, enc: &mut Encoder, out: &mut BytesMut) -> Result<(), Error> {
        let mut st = self.lock_state();
        if st.goaway_sent {
            return Ok(());
        }
        st.goaway_sent = true;
        let last = st.last_peer_stream_id;
        drop(st);
        enc.encode(
            &Frame::GoAway {
                last_good_stream_id: last,
                status: goaway_status::OK,
            },
            out,
        )
    }

    async fn write_loop<W: AsyncWrite + Unpin>(
        &self,
        mut w: W,
        mut rx: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), Error> {
        let mut enc = Encoder::new();
        let mut out = BytesMut::with_capacity(IO_CHUNK);
        let close = loop {
            self.drain_control(&mut enc, &mut out)?;
            match rx.try_recv() {
                Ok(cmd) => {
                    if self.handle(cmd, &mut enc, &mut out)? {
                        break true;
                    }
                    if out.len() >= IO_CHUNK {
                        w.write_all(&out).await?;
                        out.clear();
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break true,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if !out.is_empty() {
                w.write_all(&out).await?;
                out.clear();
                w.flush().await?;
            }
            if self.stop.is_cancelled() {
                break false;
            }
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    Some(cmd) => if self.handle(cmd, &mut enc, &mut out)? { break true },
                    None => break true,
                },
                () = self.control_ready.notified() => {}
                () = self.stop.cancelled() => {}
            }
        };
        if close {
            // Like k8s' connection.Close: reset what is still open, then GOAWAY.
            let open: Vec<_> = self.lock_state().streams.values().cloned().collect();
            for s in open {
                self.write_reset(&s, rst_status::CANCEL, &mut enc, &mut out)?;
            }
            self.write_goaway(&mut enc, &mut out)?;
        } else {
            // The reader ended or the connection drained: send what is already queued.
            while let Ok(cmd) = rx.try_recv() {
                if self.handle(cmd, &mut enc, &mut out)? {
                    break;
                }
            }
            self.drain_control(&mut enc, &mut out)?;
        }
        self.stop.cancel();
        let finish = async {
            w.write_all(&out).await?;
            w.flush().await?;
            w.shutdown().await
        };
        match tokio::time::timeout(self.config.close_timeout, finish).await {
            Ok(Ok(())) => Ok(()),
            // The peer may have closed first; that is not an error of this end.
            Ok(Err(e))
                if e.kind() == io::ErrorKind::BrokenPipe
                    || e.kind() == io::ErrorKind::NotConnected
                    || e.kind() == io::ErrorKind::ConnectionReset =>
            {
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Ok(()),
        }
    }
}

/// Fails every stream when the driver ends, however it ends (including being dropped).
struct Cleanup(Arc<Shared>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.stop.cancel();
        self.0.abort_all();
        self.0.done.cancel();
    }
}

/// The future that performs a connection's I/O. Spawn it and keep its handle: the connection
/// lives exactly as long as this future runs.
///
/// It resolves when the peer closes the transport, after [`Connection::close`], once every
/// [`Connection`] and [`Stream`] handle is dropped, or after a GOAWAY when the last stream is
/// done. A protocol or transport error resolves it with that error.
#[must_use = "the connection does nothing unless its driver is polled"]
pub struct Driver {
    fut: Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'static>>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

impl Future for Driver {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.fut.as_mut().poll(cx)
    }
}

/// A handle to a SPDY connection; cheap to clone.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Command>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.shared.role)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts a connection over `io` (already upgraded: the first byte read is a frame).
    pub fn new<T>(io: T, role: Role, config: Config) -> (Connection, Driver)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let (accept_tx, accept_rx) = mpsc::channel(config.accept_backlog.max(1));
        let write_budget = Arc::new(Semaphore::new(config.write_buffer.max(1)));
        let shared = Arc::new(Shared {
            role,
            state: Mutex::new(ConnState {
                streams: HashMap::new(),
                next_stream_id: role.first_id(),
                last_peer_stream_id: 0,
                next_ping_id: role.first_id(),
                pings: HashMap::new(),
                goaway_sent: false,
                goaway_received: false,
            }),
            control: Mutex::new(VecDeque::new()),
            control_ready: Notify::new(),
            accept_rx: tokio::sync::Mutex::new(accept_rx),
            write_budget,
            stop: CancellationToken::new(),
            done: CancellationToken::new(),
            config,
        });
        let driver_shared = shared.clone();
        let fut = async move {
            let shared = driver_shared;
            let _cleanup = Cleanup(shared.clone());
            let (r, w) = tokio::io::split(io);
            let reader = async {
                let res = shared.read_loop(r, accept_tx).await;
                shared.stop.cancel();
                res
            };
            let writer = async {
                let res = shared.write_loop(w, rx).await;
                shared.stop.cancel();
                res
            };
            let (read, write) = tokio::join!(reader, writer);
            if let Err(e) = &read {
                debug!(error = %e, "spdy: connection ended");
            }
            read.and(write)
        };
        (Connection { shared, tx }, Driver { fut: Box::pin(fut) })
    }

    /// [`Connection::new`] as a client.
    pub fn client<T>(io: T, config: Config) -> (Connection, Driver)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::new(io, Role::Client, config)
    }

    /// [`Connection::new`] as a server.
    pub fn server<T>(io: T, config: Config) -> (Connection, Driver)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::new(io, Role::Server, config)
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// Opens a stream with `headers` (SYN_STREAM) and waits for the peer's SYN_REPLY, at most
    /// [`Config::reply_timeout`]. On timeout the stream is reset.
    pub async fn open_stream(&self, headers: Headers) -> Result<Stream, Error> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (opened_tx, opened_rx) = oneshot::channel();
        self.tx
            .send(Command::Open {
                headers,
                reply: reply_tx,
                opened: opened_tx,
            })
            .map_err(|_| Error::ConnectionClosed)?;
        let wait = async {
            let shared = opened_rx.await.map_err(|_| Error::ConnectionClosed)??;
            // From here on dropping the stream (e.g. on timeout) resets it.
            let stream = self.stream_handle(shared);
            match reply_rx.await {
                Ok(Ok(_)) => Ok(stream),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Error::ConnectionClosed),
            }
        };
        tokio::time::timeout(self.shared.config.reply_timeout, wait)
            .await
            .map_err(|_| Error::Timeout("SYN_REPLY"))?
    }

    /// The next stream the peer opened, not yet replied to; `None` once the connection ended.
    /// Clients never get any: a client refuses streams from the server, as client-go does.
    pub async fn accept(&self) -> Option<IncomingStream> {
        let mut rx = self.shared.accept_rx.lock().await;
        let shared = rx.recv().await?;
        Some(IncomingStream {
            stream: Some(self.stream_handle(shared)),
        })
    }

    /// Sends a PING and waits for its echo; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        let start = Instant::now();
        self.tx
            .send(Command::Ping { done: tx })
            .map_err(|_| Error::ConnectionClosed)?;
        match tokio::time::timeout(self.shared.config.ping_timeout, rx).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(_)) => Err(Error::ConnectionClosed),
            Err(_) => Err(Error::Timeout("PING echo")),
        }
    }

    /// Sends GOAWAY: no new streams either way; the connection ends once the open streams are
    /// done.
    pub fn goaway(&self) {
        let _ = self.tx.send(Command::GoAway);
    }

    /// Resets every open stream, sends GOAWAY and closes the transport (after what was
    /// written before this call), like k8s' `connection.Close`.
    pub fn close(&self) {
        let _ = self.tx.send(Command::Close);
    }

    /// True once the driver has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.done.is_cancelled()
    }

    /// Resolves once the driver has ended.
    pub async fn closed(&self) {
        self.shared.done.cancelled().await;
    }

    fn stream_handle(&self, shared: Arc<StreamShared>) -> Stream {
        let cfg = &self.shared.config;
        Stream {
            shared,
            tx: self.tx.clone(),
            budget: PollSemaphore::new(self.shared.write_budget.clone()),
            max_chunk: cfg.max_write_frame.clamp(1, cfg.write_buffer.max(1)),
        }
    }
}

/// A stream the peer opened, waiting for this end to accept or refuse it. Dropping it
/// refuses it (RST_STREAM `REFUSED_STREAM`).
pub struct IncomingStream {
    stream: Option<Stream>,
}

impl fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStream")
            .field("id", &self.id())
            .field("headers", &self.headers())
            .finish()
    }
}

impl IncomingStream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.stream.as_ref().map_or(0, Stream::id)
    }

    /// The SYN_STREAM headers.
    pub fn headers(&self) -> &Headers {
        static EMPTY: Headers = Headers::new();
        self.stream.as_ref().map_or(&EMPTY, Stream::headers)
    }

    /// Accepts with an empty SYN_REPLY, as Kubernetes does.
    pub fn accept(self) -> Stream {
        self.accept_with(Headers::new())
    }

    /// Accepts with a SYN_REPLY carrying `headers`.
    pub fn accept_with(mut self, headers: Headers) -> Stream {
        let stream = self.stream.take().unwrap_or_else(Stream::detached);
        let _ = stream.tx.send(Command::Reply {
            stream: stream.shared.clone(),
            headers,
        });
        stream
    }

    /// Refuses the stream (RST_STREAM `REFUSED_STREAM`).
    pub fn reject(mut self) {
        if let Some(s) = self.stream.take() {
            s.reset_with(rst_status::REFUSED_STREAM);
        }
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            s.reset_with(rst_status::REFUSED_STREAM);
        }
    }
}

/// One SPDY stream: bytes in and out, [`shutdown`](tokio::io::AsyncWriteExt::shutdown) sends
/// FIN, dropping it before both sides sent FIN resets it (`CANCEL`).
///
/// Reads end with EOF on the peer's FIN, on the peer's reset (check [`Stream::peer_reset`])
/// and after a local reset; they fail with `UnexpectedEof` when the connection ended without
/// either. Writes fail after shutdown or reset, or once the connection ended. A write is done
/// when it is queued for the connection (bounded by [`Config::write_buffer`]).
pub struct Stream {
    shared: Arc<StreamShared>,
    tx: mpsc::UnboundedSender<Command>,
    budget: PollSemaphore,
    max_chunk: usize,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.shared.id)
            .field("headers", &self.shared.headers)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// A stream with no connection (every operation fails); only used when an invariant
    /// broke, so that no panic is needed.
    fn detached() -> Stream {
        let (tx, _) = mpsc::unbounded_channel();
        let shared = Arc::new(StreamShared::new(0, Headers::new(), 0));
        shared.lock().conn_gone = true;
        Stream {
            shared,
            tx,
            budget: PollSemaphore::new(Arc::new(Semaphore::new(1))),
            max_chunk: 1,
        }
    }

    /// The stream id (odd: opened by the client; even: by the server).
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// The headers of the SYN_STREAM that opened the stream.
    pub fn headers(&self) -> &Headers {
        &self.shared.headers
    }

    /// The SYN_REPLY headers (streams this end opened).
    pub fn reply_headers(&self) -> Option<Headers> {
        self.shared.lock().reply_headers.clone()
    }

    /// The status of the peer's RST_STREAM, if it reset the stream.
    pub fn peer_reset(&self) -> Option<u32> {
        self.shared.lock().peer_reset
    }

    /// True once the peer sent FIN.
    pub fn peer_finished(&self) -> bool {
        self.shared.lock().remote_fin
    }

    /// Resets the stream (RST_STREAM `CANCEL`, what Go's `Stream.Reset` sends).
    pub fn reset(&self) {
        self.reset_with(rst_status::CANCEL);
    }

    fn reset_with(&self, status: u32) {
        let mut st = self.shared.lock();
        if st.finished() || st.reset_queued || st.conn_gone {
            return;
        }
        st.reset_queued = true;
        st.inbound.clear();
        st.buffered = 0;
        st.wake_reader();
        drop(st);
        self.shared.space.notify_waiters();
        let _ = self.tx.send(Command::Reset {
            stream: self.shared.clone(),
            status,
        });
    }

    fn write_error(st: &StreamState) -> Option<io::Error> {
        let (kind, msg) = if st.peer_reset.is_some() {
            (io::ErrorKind::ConnectionReset, "stream reset by peer")
        } else if st.reset_queued || st.rst_sent {
            (io::ErrorKind::BrokenPipe, "stream was reset")
        } else if st.fin_queued {
            (io::ErrorKind::BrokenPipe, "write after shutdown")
        } else if st.conn_gone {
            (io::ErrorKind::BrokenPipe, "connection closed")
        } else {
            return None;
        };
        Some(io::Error::new(kind, msg))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        if let Some(front) = st.inbound.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                st.inbound.pop_front();
            }
            st.buffered -= n;
            let resume = st.buffered <= this.shared.read_limit;
            drop(st);
            if resume {
                this.shared.space.notify_waiters();
            }
            return Poll::Ready(Ok(()));
        }
        if st.remote_fin || st.peer_reset.is_some() || st.reset_queued || st.rst_sent {
            return Poll::Ready(Ok(()));
        }
        if st.conn_gone {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "SPDY connection closed before the stream ended",
            )));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(e) = Self::write_error(&this.shared.lock()) {
            return Poll::Ready(Err(e));
        }
        let n = buf.len().min(this.max_chunk);
        // n ≤ max_chunk ≤ write_buffer, which fits a u32 in any sane configuration.
        let permits = u32::try_from(n).unwrap_or(u32::MAX);
        let Some(permit) = ready!(this.budget.poll_acquire_many(cx, permits)) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closed",
            )));
        };
        if let Some(e) = Self::write_error(&this.shared.lock()) {
            return Poll::Ready(Err(e));
        }
        let cmd = Command::Data {
            stream: this.shared.clone(),
            data: Bytes::copy_from_slice(&buf[..n]),
            fin: false,
            _permit: Some(permit),
        };
        if this.tx.send(cmd).is_err() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closed",
            )));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued writes go out as soon as the driver gets to them; there is nothing to push.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        if st.fin_queued || st.peer_reset.is_some() || st.reset_queued || st.rst_sent {
            return Poll::Ready(Ok(()));
        }
        if st.conn_gone {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closed",
            )));
        }
        st.fin_queued = true;
        drop(st);
        let cmd = Command::Data {
            stream: this.shared.clone(),
            data: Bytes::new(),
            fin: true,
            _permit: None,
        };
        if this.tx.send(cmd).is_err() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closed",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.handle_dropped = true;
        st.inbound.clear();
        st.buffered = 0;
        let done =
            (st.fin_queued && st.remote_fin) || st.finished() || st.reset_queued || st.conn_gone;
        if !done {
            st.reset_queued = true;
            drop(st);
            let _ = self.tx.send(Command::Reset {
                stream: self.shared.clone(),
                status: rst_status::CANCEL,
            });
        } else {
            drop(st);
        }
        self.shared.space.notify_waiters();
    }
}
