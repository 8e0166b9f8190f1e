//! One multiplexed stream: plain async I/O for the layers above (design decision 2).
//!
//! A [`Stream`] implements `AsyncRead + AsyncWrite`. Bytes written become DATA messages on
//! the session's writer queue; bytes received wait in a bounded per-stream buffer until read.
//! With tether/2 a write never exceeds the credit the peer granted, so a slow reader stalls
//! only its own stream. `shutdown` is a half-close (tether/2 FIN) or KubeEdge's
//! REMOVE_CONNECT; dropping a stream that is not finished resets it.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use stream_proto::{ConnectId, Message, MessageType, OpenResult, Reset, ResetCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::PollSemaphore;

use crate::dialect::{Dialect, Role};
use crate::error::{Error, Result};
use crate::session::Shared;
use crate::window::{Consumed, ReceiveWindow};

/// The kind of kubelet request a stream carries, as KubeEdge's connect message types name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectKind {
    /// `LOGS_CONNECT`: a plain HTTP request whose body streams back (container logs).
    Logs,
    /// `EXEC_CONNECT`: a raw upgrade (exec; port-forward reuses it, spec 3.6).
    Exec,
    /// `METRIC_CONNECT`: a plain HTTP request (stats, metrics).
    Metric,
    /// `ATTACH_CONNECT`: a raw upgrade (attach).
    Attach,
}

impl ConnectKind {
    /// The connect message type for this kind.
    pub fn message_type(self) -> MessageType {
        match self {
            ConnectKind::Logs => MessageType::LogsConnect,
            ConnectKind::Exec => MessageType::ExecConnect,
            ConnectKind::Metric => MessageType::MetricConnect,
            ConnectKind::Attach => MessageType::AttachConnect,
        }
    }

    /// The kind a connect message type announces, if it is one.
    pub fn from_message_type(kind: MessageType) -> Option<ConnectKind> {
        match kind {
            MessageType::LogsConnect => Some(ConnectKind::Logs),
            MessageType::ExecConnect => Some(ConnectKind::Exec),
            MessageType::MetricConnect => Some(ConnectKind::Metric),
            MessageType::AttachConnect => Some(ConnectKind::Attach),
            _ => None,
        }
    }

    /// True for the kinds that carry a raw upgraded connection.
    pub fn is_upgrade(self) -> bool {
        matches!(self, ConnectKind::Exec | ConnectKind::Attach)
    }

    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectKind::Logs => "logs",
            ConnectKind::Exec => "exec",
            ConnectKind::Metric => "metric",
            ConnectKind::Attach => "attach",
        }
    }
}

impl fmt::Display for ConnectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one direction of a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Orderly: FIN, or KubeEdge's REMOVE_CONNECT.
    Clean,
    /// Aborted, with the reason shown to whoever reads or writes next.
    Failed(String),
}

/// What the session reader did with received data.
pub(crate) enum Push {
    /// Buffered.
    Accepted,
    /// The buffer is full; wait for [`StreamShared::space`] and retry (KubeEdge dialect).
    Full,
    /// The data breaks the credit window (tether/2): a protocol violation by the peer.
    OverWindow,
    /// The stream no longer takes data; it was dropped.
    Discarded,
}

/// State shared between a [`Stream`] and the session reader.
pub(crate) struct StreamShared {
    pub(crate) id: ConnectId,
    pub(crate) kind: ConnectKind,
    state: Mutex<State>,
    /// Notified whenever the reader side frees buffer space.
    pub(crate) space: Notify,
    /// Notified when the peer stops taking data (reset, REMOVE_CONNECT, session gone).
    closed: Notify,
}

struct State {
    recv: VecDeque<Bytes>,
    buffered: usize,
    recv_end: Option<End>,
    read_waker: Option<Waker>,
    /// Bytes we may still send (tether/2); unlimited with KubeEdge.
    credit: u64,
    write_waker: Option<Waker>,
    /// Set when the peer will not take more data (reset, REMOVE, session gone).
    send_end: Option<End>,
    /// What the peer may send us (tether/2).
    rwin: ReceiveWindow,
    open_result: Option<OpenResult>,
    open_waker: Option<Waker>,
    fin_sent: bool,
    remove_sent: bool,
    remove_received: bool,
    reset_sent: bool,
    /// The local handle is gone; late data is dropped.
    detached: bool,
}

impl StreamShared {
    /// A stream that may send `credit` bytes before the peer's first WINDOW message and
    /// receives within `rwin`.
    pub(crate) fn new(
        id: ConnectId,
        kind: ConnectKind,
        credit: u64,
        rwin: ReceiveWindow,
    ) -> Arc<StreamShared> {
        Arc::new(StreamShared {
            id,
            kind,
            state: Mutex::new(State {
                recv: VecDeque::new(),
                buffered: 0,
                recv_end: None,
                read_waker: None,
                credit,
                write_waker: None,
                send_end: None,
                rwin,
                open_result: None,
                open_waker: None,
                fin_sent: false,
                remove_sent: false,
                remove_received: false,
                reset_sent: false,
                detached: false,
            }),
            space: Notify::new(),
            closed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the stream, so a poisoned lock is used as is.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Offers received data to the stream, respecting `bound` bytes of buffer.
    pub(crate) fn push(&self, data: Bytes, bound: usize, dialect: Dialect) -> Push {
        let mut st = self.lock();
        if st.detached || st.recv_end.is_some() {
            return Push::Discarded;
        }
        if data.is_empty() {
            return Push::Accepted;
        }
        match dialect {
            // The peer may send what it was granted, however the window was tuned since.
            Dialect::Tether2 if !st.rwin.receive(data.len()) => return Push::OverWindow,
            // A message larger than the whole bound is let into an empty buffer, or it
            // could never be delivered.
            Dialect::KubeEdge if st.buffered > 0 && st.buffered + data.len() > bound => {
                return Push::Full;
            }
            _ => {}
        }
        st.buffered += data.len();
        st.recv.push_back(data);
        wake(&mut st.read_waker);
        Push::Accepted
    }

    /// The peer ended its direction cleanly (FIN).
    pub(crate) fn on_fin(&self) {
        let mut st = self.lock();
        if st.recv_end.is_none() {
            st.recv_end = Some(End::Clean);
        }
        wake(&mut st.read_waker);
        wake(&mut st.open_waker);
    }

    /// KubeEdge REMOVE_CONNECT from the peer: the whole stream is over. An edge echoes it
    /// once when the local handle is dropped (see `Drop for Stream`).
    pub(crate) fn on_remove(&self) {
        let mut st = self.lock();
        st.remove_received = true;
        if st.recv_end.is_none() {
            st.recv_end = Some(End::Clean);
        }
        if st.send_end.is_none() {
            st.send_end = Some(End::Failed("the peer closed the stream".into()));
        }
        wake_all(&mut st);
        drop(st);
        self.space.notify_waiters();
        self.closed.notify_waiters();
    }

    /// The peer reset the stream, or the session failed.
    pub(crate) fn fail(&self, reason: &str) {
        let mut st = self.lock();
        if st.recv_end.is_none() {
            // What `FailureWatch` waits for. A reset behind the peer's FIN (a tether/2 edge
            // resets an exec whose process exited while the client's stdin was open) leaves
            // the incoming end clean: what the FIN completed is still delivered.
            st.recv_end = Some(End::Failed(reason.to_owned()));
        }
        if st.send_end.is_none() {
            st.send_end = Some(End::Failed(reason.to_owned()));
        }
        wake_all(&mut st);
        drop(st);
        self.space.notify_waiters();
        self.closed.notify_waiters();
    }

    /// tether/2 WINDOW from the peer.
    pub(crate) fn add_credit(&self, increment: u64) {
        let mut st = self.lock();
        st.credit = st.credit.saturating_add(increment);
        wake(&mut st.write_waker);
    }

    /// tether/2 OPEN_RESULT from the peer.
    pub(crate) fn set_open_result(&self, result: OpenResult) {
        let mut st = self.lock();
        st.open_result = Some(result);
        wake(&mut st.open_waker);
    }

    /// Bytes waiting to be read (for tests and metrics).
    pub(crate) fn buffered(&self) -> usize {
        self.lock().buffered
    }

    /// Marks that we have sent a REMOVE_CONNECT; returns false if one was sent already.
    pub(crate) fn mark_remove_sent(&self) -> bool {
        let mut st = self.lock();
        !std::mem::replace(&mut st.remove_sent, true)
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

fn wake_all(st: &mut State) {
    wake(&mut st.read_waker);
    wake(&mut st.write_waker);
    wake(&mut st.open_waker);
}

fn io_error(end: &End, id: ConnectId) -> io::Error {
    match end {
        End::Clean => io::Error::new(io::ErrorKind::BrokenPipe, format!("stream {id} is closed")),
        End::Failed(reason) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("stream {id} reset: {reason}"),
        ),
    }
}

/// One stream of a session: a bidirectional byte pipe to the other end of the tunnel.
///
/// Reading returns what the peer sent, then end-of-file after its FIN (or KubeEdge
/// REMOVE_CONNECT), or an error if the stream was reset or the session died. Writing sends
/// DATA; `shutdown` ends our direction. Drop without finishing resets the stream.
pub struct Stream {
    shared: Arc<StreamShared>,
    session: Arc<Shared>,
    /// Permits to queue DATA (the session's write budget).
    permits: PollSemaphore,
    /// Our direction is finished (FIN or REMOVE queued).
    shut: bool,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.shared.id)
            .field("kind", &self.shared.kind)
            .field("node", &self.session.node.name)
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(shared: Arc<StreamShared>, session: Arc<Shared>) -> Stream {
        let permits = PollSemaphore::new(session.budget.clone());
        Stream {
            shared,
            session,
            permits,
            shut: false,
        }
    }

    /// Borrows the stream as a reading and a writing half that can be used at once (a
    /// relay pumps both directions in one task). The halves also read and write whole
    /// buffers without copying them ([`StreamReader::read_chunk`],
    /// [`StreamWriter::write_chunk`]).
    pub fn halves(&mut self) -> (StreamReader<'_>, StreamWriter<'_>) {
        (
            StreamReader {
                shared: &self.shared,
                session: &self.session,
            },
            StreamWriter {
                shared: &self.shared,
                session: &self.session,
                permits: &mut self.permits,
                shut: &mut self.shut,
            },
        )
    }

    /// The connect id of this stream.
    pub fn id(&self) -> ConnectId {
        self.shared.id
    }

    /// The kind of request this stream carries.
    pub fn kind(&self) -> ConnectKind {
        self.shared.kind
    }

    /// The node at the edge end.
    pub fn node(&self) -> &str {
        &self.session.node.name
    }

    /// The dialect of the session this stream belongs to.
    pub fn dialect(&self) -> Dialect {
        self.session.dialect
    }

    /// Resolves once the peer takes no more data on this stream: it reset or removed the
    /// stream, or the session died. A half-close (FIN) does not count: the peer still reads.
    ///
    /// The edge waits on this beside an idle kubelet request (a `logs -f` with no new lines)
    /// so that a client who went away frees the kubelet at once, not at the next write.
    pub async fn peer_gone(&self) {
        loop {
            let notified = self.shared.closed.notified();
            if self.shared.lock().send_end.is_some() {
                return;
            }
            notified.await;
        }
    }

    /// A handle that resolves when this stream fails, usable while the stream is split
    /// into [`Stream::halves`]; see [`FailureWatch`].
    pub fn failure_watch(&self) -> FailureWatch {
        FailureWatch {
            shared: self.shared.clone(),
        }
    }

    /// Bytes received and not yet read.
    pub fn buffered(&self) -> usize {
        self.shared.buffered()
    }

    /// Waits for the edge's answer to this stream (cloud side).
    ///
    /// With tether/2 the edge reports whether it reached the kubelet and, for plain HTTP
    /// requests, the kubelet's status and headers. Stock KubeEdge edges report nothing, so
    /// this returns `Ok(None)` at once for the KubeEdge dialect.
    pub async fn open_result(&mut self) -> Result<Option<OpenResult>> {
        let timeout = self.session.config.open_timeout;
        self.open_result_within(timeout).await
    }

    /// [`Stream::open_result`] with a caller's deadline: for a plain request the answer is
    /// the kubelet's response head, which may take as long as the kubelet takes.
    pub async fn open_result_within(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Option<OpenResult>> {
        if self.session.dialect == Dialect::KubeEdge {
            return Ok(None);
        }
        let shared = self.shared.clone();
        let wait = std::future::poll_fn(move |cx| {
            let mut st = shared.lock();
            if let Some(result) = st.open_result.take() {
                return Poll::Ready(Ok(Some(result)));
            }
            match &st.recv_end {
                Some(End::Failed(reason)) => Poll::Ready(Err(Error::StreamReset {
                    id: shared.id,
                    reason: reason.clone(),
                })),
                Some(End::Clean) => Poll::Ready(Err(Error::StreamReset {
                    id: shared.id,
                    reason: "the edge closed the stream without an answer".into(),
                })),
                None => {
                    st.open_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout("waiting for the edge to open the stream")),
        }
    }

    /// Tells the cloud how the edge is serving this stream (edge side, tether/2).
    ///
    /// With the KubeEdge dialect there is no such message: a `Refused` result closes the
    /// stream (REMOVE_CONNECT), anything else sends nothing.
    pub async fn send_open_result(&mut self, result: OpenResult) -> Result<()> {
        match self.session.dialect {
            Dialect::Tether2 => {
                let msg = Message::new(self.id(), MessageType::OpenResult, result.to_json());
                if self.session.send_ordered(self.shared.id, msg, false) {
                    Ok(())
                } else {
                    Err(Error::SessionClosed(self.session.close_reason()))
                }
            }
            Dialect::KubeEdge => {
                if let OpenResult::Refused { .. } = result {
                    tokio::io::AsyncWriteExt::shutdown(self).await?;
                }
                Ok(())
            }
        }
    }

    /// Aborts the stream in both directions, telling the peer why (tether/2 RESET; KubeEdge
    /// REMOVE_CONNECT, which carries no reason).
    pub fn reset(mut self, code: ResetCode, reason: &str) {
        self.send_reset(code, reason);
        self.shut = true;
    }

    fn send_reset(&mut self, code: ResetCode, reason: &str) {
        let id = self.id();
        let mut st = self.shared.lock();
        match self.session.dialect {
            Dialect::Tether2 => {
                if st.reset_sent {
                    return;
                }
                st.reset_sent = true;
                drop(st);
                let reset = Reset {
                    code,
                    reason: reason.to_owned(),
                };
                let mut data = Vec::new();
                reset.encode(&mut data);
                // In stream order: a reset after our FIN must not overtake our data.
                self.session
                    .send_ordered(id, Message::new(id, MessageType::Reset, data), false);
            }
            Dialect::KubeEdge => {
                if st.remove_sent || (st.remove_received && self.session.role == Role::Cloud) {
                    return;
                }
                st.remove_sent = true;
                drop(st);
                self.session.send_ordered(
                    id,
                    Message::new(id, MessageType::RemoveConnect, Bytes::new()),
                    false,
                );
            }
        }
    }
}

/// Resolves when a stream fails before the peer ended its direction: reset by either peer,
/// cut by its session (the stall limit, a window overrun) or lost with the session. Orderly
/// ends (FIN, KubeEdge's REMOVE_CONNECT), and a failure after one, do not count: what they
/// completed is still delivered.
///
/// A relay that may block on its other side (writing to a client that does not read,
/// reading from one that sends nothing) waits on this beside its copies, so a failed stream
/// is let go at once instead of when that side moves again. Taken with
/// [`Stream::failure_watch`].
#[derive(Clone)]
pub struct FailureWatch {
    shared: Arc<StreamShared>,
}

impl fmt::Debug for FailureWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureWatch")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl FailureWatch {
    /// Waits until the stream fails, and says why (an `io::ErrorKind::ConnectionReset`).
    pub async fn failed(&self) -> io::Error {
        loop {
            let notified = self.shared.closed.notified();
            if let Some(end @ End::Failed(_)) = &self.shared.lock().recv_end {
                return io_error(end, self.shared.id);
            }
            notified.await;
        }
    }
}

/// Takes received bytes out of a stream's buffer: `take` is offered the front chunk and says
/// how many of its bytes it took (the rest stays for the next read). Ready(Ok(false)) at a
/// clean end. Grants the peer window for what was taken (tether/2).
fn poll_take(
    shared: &StreamShared,
    session: &Shared,
    cx: &mut Context<'_>,
    mut take: impl FnMut(&mut Bytes) -> usize,
) -> Poll<io::Result<bool>> {
    let mut st = shared.lock();
    if st.recv.is_empty() {
        return match &st.recv_end {
            Some(End::Clean) => Poll::Ready(Ok(false)),
            Some(end) => Poll::Ready(Err(io_error(end, shared.id))),
            None => {
                st.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        };
    }
    let mut copied = 0;
    while let Some(front) = st.recv.front_mut() {
        let n = take(front);
        copied += n;
        if !front.is_empty() {
            break;
        }
        st.recv.pop_front();
        if n == 0 {
            break;
        }
    }
    st.buffered -= copied;
    let consumed = match session.dialect {
        Dialect::Tether2 => {
            let open = st.recv_end.is_none();
            st.rwin.consume(
                copied,
                tokio::time::Instant::now(),
                session.path_rtt(),
                session.window_limits(),
                &session.window_budget,
                open,
            )
        }
        Dialect::KubeEdge => Consumed::default(),
    };
    drop(st);
    if let Some(increment) = consumed.grant {
        let mut data = Vec::with_capacity(10);
        stream_proto::encode_window(increment, &mut data);
        session.push_control(Message::new(shared.id, MessageType::Window, data));
    }
    if consumed.probe_rtt {
        session.probe_rtt();
    }
    shared.space.notify_waiters();
    Poll::Ready(Ok(true))
}

/// The reading half of a [`Stream`], borrowed from it by [`Stream::halves`].
///
/// Reads like the stream itself; [`StreamReader::read_chunk`] hands out received data as the
/// buffers it arrived in, without copying it.
pub struct StreamReader<'a> {
    shared: &'a StreamShared,
    session: &'a Shared,
}

impl fmt::Debug for StreamReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamReader")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl StreamReader<'_> {
    /// Polls for the next piece of received data, at most `max` bytes, as it arrived (no
    /// copy). `None` after the peer's FIN (or KubeEdge REMOVE_CONNECT).
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let mut chunk = None;
        let more = ready!(poll_take(self.shared, self.session, cx, |front| {
            if chunk.is_some() {
                return 0;
            }
            let n = front.len().min(max);
            chunk = Some(front.split_to(n));
            n
        }))?;
        Poll::Ready(Ok(if more { chunk } else { None }))
    }

    /// The next piece of received data, at most `max` bytes; see
    /// [`StreamReader::poll_read_chunk`].
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_read_chunk(cx, max)).await
    }
}

impl AsyncRead for StreamReader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(poll_take(this.shared, this.session, cx, |front| {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            n
        }))?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (mut reader, _) = self.get_mut().halves();
        Pin::new(&mut reader).poll_read(cx, buf)
    }
}

/// The writing half of a [`Stream`], borrowed from it by [`Stream::halves`].
///
/// Writes like the stream itself (a write copies what it is given);
/// [`StreamWriter::write_chunk`] sends a buffer the caller owns without copying it.
pub struct StreamWriter<'a> {
    shared: &'a StreamShared,
    session: &'a Arc<Shared>,
    permits: &'a mut PollSemaphore,
    shut: &'a mut bool,
}

impl fmt::Debug for StreamWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWriter")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl StreamWriter<'_> {
    fn session_gone(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("tunnel session closed: {}", self.session.close_reason()),
        )
    }

    /// Waits until one DATA message of up to `len` bytes may be queued, and says how large it
    /// may be: never more than the session's `max_data_chunk`, nor (tether/2) than the credit
    /// the peer granted, which is taken here. The permit goes back when the writer takes the
    /// message.
    fn poll_reserve(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        if *self.shut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        let tether = self.session.dialect == Dialect::Tether2;
        {
            let mut st = self.shared.lock();
            if let Some(end) = &st.send_end {
                return Poll::Ready(Err(io_error(end, self.shared.id)));
            }
            if tether && st.credit == 0 {
                st.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        // One DATA message of this stream queued at a time: a bulk copy waits in the socket
        // it reads from, not in our memory ahead of other streams (see `sched`).
        ready!(self.session.sched.poll_data_slot(self.shared.id, cx));
        let Some(permit) = ready!(self.permits.poll_acquire(cx)) else {
            return Poll::Ready(Err(self.session_gone()));
        };
        let mut st = self.shared.lock();
        if let Some(end) = &st.send_end {
            // The permit goes back when dropped; nothing is sent.
            return Poll::Ready(Err(io_error(end, self.shared.id)));
        }
        let mut n = len.min(self.session.config.max_data_chunk);
        if tether {
            // Credit only grows between the check above and here.
            n = n.min(usize::try_from(st.credit).unwrap_or(usize::MAX));
            st.credit -= n as u64;
        }
        // The writer returns the permit when it takes the message.
        permit.forget();
        Poll::Ready(Ok(n))
    }

    /// Queues `data` (of the size `poll_reserve` allowed) as one DATA message.
    fn send_data(&mut self, data: Bytes) -> io::Result<usize> {
        let n = data.len();
        let msg = Message::new(self.shared.id, MessageType::Data, data);
        if !self.session.send_ordered(self.shared.id, msg, true) {
            return Err(self.session_gone());
        }
        self.session.stats.add_sent(n);
        Ok(n)
    }

    /// Polls to send the front of `data` as one DATA message without copying it; returns
    /// how many bytes were taken from `data`.
    pub fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_reserve(cx, data.len()))?;
        Poll::Ready(self.send_data(data.split_to(n)))
    }

    /// Sends all of `data` without copying it (in as many DATA messages as the chunk limit
    /// and the peer's credit make it).
    pub async fn write_chunk(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            std::future::poll_fn(|cx| self.poll_write_chunk(cx, &mut data)).await?;
        }
        Ok(())
    }
}

impl AsyncWrite for StreamWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_reserve(cx, buf.len()))?;
        Poll::Ready(this.send_data(Bytes::copy_from_slice(&buf[..n])))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The session writer flushes after every batch; nothing waits here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Poll::Ready(shutdown(this.shared, this.session, this.shut))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let (_, mut writer) = self.get_mut().halves();
        Pin::new(&mut writer).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The session writer flushes after every batch; nothing waits here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Poll::Ready(shutdown(&this.shared, &this.session, &mut this.shut))
    }
}

/// Ends our direction: tether/2 FIN, or KubeEdge's REMOVE_CONNECT (once, and never as an
/// answer to the edge's).
fn shutdown(shared: &StreamShared, session: &Shared, shut: &mut bool) -> io::Result<()> {
    if *shut {
        return Ok(());
    }
    let id = shared.id;
    let msg = match session.dialect {
        Dialect::Tether2 => {
            if shared.lock().send_end.is_some() {
                *shut = true;
                return Ok(());
            }
            Message::new(id, MessageType::Fin, Bytes::new())
        }
        Dialect::KubeEdge => {
            {
                let st = shared.lock();
                // Never a second REMOVE, and the cloud never answers the edge's REMOVE.
                if st.remove_sent || (st.remove_received && session.role == Role::Cloud) {
                    drop(st);
                    *shut = true;
                    return Ok(());
                }
            }
            Message::new(id, MessageType::RemoveConnect, Bytes::new())
        }
    };
    if !session.send_ordered(id, msg, false) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("tunnel session closed: {}", session.close_reason()),
        ));
    }
    {
        let mut st = shared.lock();
        st.fin_sent = true;
        if session.dialect == Dialect::KubeEdge {
            st.remove_sent = true;
        }
    }
    *shut = true;
    Ok(())
}

impl Drop for Stream {
    fn drop(&mut self) {
        let (finished, remove_owed) = {
            let mut st = self.shared.lock();
            st.detached = true;
            st.recv.clear();
            st.buffered = 0;
            let initial = self.session.window_limits().initial;
            st.rwin.release(&self.session.window_budget, initial);
            let both_done = st.fin_sent && matches!(st.recv_end, Some(End::Clean));
            let peer_gone = matches!(st.send_end, Some(End::Failed(_))) && !st.remove_received;
            let remove_owed = st.remove_received
                && !st.remove_sent
                && self.session.role == Role::Edge
                && self.session.dialect == Dialect::KubeEdge;
            (both_done || peer_gone, remove_owed)
        };
        if remove_owed {
            // Echo the cloud's REMOVE_CONNECT once, after local teardown (stock edgecore does).
            self.shared.mark_remove_sent();
            self.session.send_ordered(
                self.shared.id,
                Message::new(self.shared.id, MessageType::RemoveConnect, Bytes::new()),
                false,
            );
        } else if !finished && !self.session.is_closed() {
            self.send_reset(ResetCode::Cancel, "stream dropped");
        }
        self.session.remove_stream(self.shared.id);
        self.shared.space.notify_waiters();
    }
}
