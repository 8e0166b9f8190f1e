//! A session: one websocket to one edge node, carrying many streams.
//!
//! [`Session::establish`] takes an already-upgraded connection and returns three things:
//! the [`Session`] handle (cheap to clone; opens streams, reports state), the [`Incoming`]
//! streams the peer opens (used by the edge), and the [`SessionDriver`] future that owns the
//! connection. The driver runs the reader and the writer in one task; whoever spawned it
//! owns it, and the session ends when it returns.
//!
//! The writer drains a small priority queue of control messages (pongs, windows, resets) and
//! then the streams' own queues, fairly (see `sched`), in small batches written under a
//! deadline, so a keystroke never waits behind a bulk copy's backlog.
//! The reader decodes each message and hands it to its stream without blocking other
//! streams, except for a bounded pause when a stock KubeEdge peer overruns a stream buffer.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use stream_proto::{ConnectId, ConnectRequest, Message, MessageType, OpenResult, Reset, ResetCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use crate::batch::Batch;
use crate::config::SessionConfig;
use crate::dialect::{Dialect, NodeIdentity, Role};
use crate::error::{Error, Result};
use crate::sched::Scheduler;
use crate::stream::{ConnectKind, Push, Stream, StreamShared};
use crate::window::{Limits, PathRtt, ReceiveWindow, WindowBudget};
use crate::ws::{self, DataKind, FrameReader, OpCode, WsEvent, WsRole};

/// DATA payloads below this size are copied out of the read buffer (see `dispatch`).
const COPY_BELOW: usize = 32 * 1024;
/// The writer stops gathering messages once it has this much and writes it. Small, because
/// what sits in a batch is queued ahead of whatever a stream sends next: a batch holds one
/// large DATA frame, or many small messages (one write for many streams' log lines).
const WRITE_BATCH: usize = 32 * 1024;
/// Per stream we queue at most a window update and a reset or remove, plus a few spare.
const CONTROL_PER_STREAM: usize = 3;

/// What a session is built from, besides the connection itself.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Which end we are.
    pub role: Role,
    /// The negotiated dialect.
    pub dialect: Dialect,
    /// The edge node this session is for.
    pub node: NodeIdentity,
    /// Tunables, shared by reference: a server hands the same copy to all its sessions.
    pub config: Arc<SessionConfig>,
    /// The per-stream window the peer announced at the handshake (tether/2; ignored for
    /// KubeEdge): its [`SessionConfig::announced_window`].
    pub peer_window: u32,
    /// Bytes already read past the HTTP handshake, which belong to the websocket.
    pub leftover: Bytes,
}

/// Byte and message counters of a session.
#[derive(Debug, Default)]
pub struct SessionStats {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    streams_opened: AtomicU64,
    rtt_micros: AtomicU64,
    min_rtt_micros: AtomicU64,
}

impl SessionStats {
    pub(crate) fn add_sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Stream payload bytes sent to the peer.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }
    /// Stream payload bytes received from the peer.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }
    /// Streams opened on this session, by either side.
    pub fn streams_opened(&self) -> u64 {
        self.streams_opened.load(Ordering::Relaxed)
    }
    /// The last measured ping round trip, if any.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
    /// The shortest ping round trip seen: the path's delay without queues, if measured.
    pub fn min_rtt(&self) -> Option<Duration> {
        match self.min_rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
    fn record_rtt(&self, micros: u64) {
        self.rtt_micros.store(micros, Ordering::Relaxed);
        let _ = self
            .min_rtt_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |min| {
                (min == 0 || micros < min).then_some(micros)
            });
    }
}

/// Control messages waiting for the writer, ahead of stream data.
#[derive(Default)]
struct ControlQueue {
    /// Only the latest ping needs an answer (RFC 6455 §5.5.3).
    pong: Option<Bytes>,
    /// Send a ping now, outside the regular interval.
    ping: bool,
    messages: VecDeque<Message>,
}

/// State shared by the session handle, its streams and its driver.
pub(crate) struct Shared {
    pub(crate) role: Role,
    pub(crate) dialect: Dialect,
    pub(crate) node: NodeIdentity,
    pub(crate) config: Arc<SessionConfig>,
    peer_window: u32,
    streams: Mutex<HashMap<ConnectId, Arc<StreamShared>>>,
    next_id: AtomicU64,
    /// Stream messages, a queue per stream. Bounded: a stream queues at most one DATA
    /// message (and DATA also needs a permit from `budget`), besides its connect, open
    /// result and close, each sent once.
    pub(crate) sched: Scheduler,
    /// Permits for DATA messages queued for the writer.
    pub(crate) budget: Arc<Semaphore>,
    control: Mutex<ControlQueue>,
    /// Wakes the writer: a control or stream message was queued.
    writer_wake: Notify,
    /// When our last ping without its pong was written (µs since `epoch`), 0 if none.
    ping_in_flight: AtomicU64,
    /// Receive windows above `stream_window`, over all streams (tether/2).
    pub(crate) window_budget: WindowBudget,
    cancel: CancellationToken,
    close_reason: Mutex<Option<String>>,
    /// We are draining: we open nothing new and refuse what the peer opens.
    draining: AtomicBool,
    /// The peer said GO_AWAY (tether/2): it opens nothing new, and we open nothing new on
    /// it, but what it opened before still arrives and is served.
    peer_going_away: AtomicBool,
    /// Notified when either flag becomes true.
    draining_changed: Notify,
    /// Notified whenever the last open stream goes away.
    idle: Notify,
    /// Set, and `heard_changed` notified, when the first frame arrives from the peer.
    heard: AtomicBool,
    heard_changed: Notify,
    pub(crate) stats: SessionStats,
    epoch: Instant,
    last_received: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Shared {
    /// Queues a control message ahead of stream data. Never blocks: the queue holds at most a
    /// few messages per open stream, and a session whose peer makes it overflow is closed.
    pub(crate) fn push_control(&self, msg: Message) {
        let limit = CONTROL_PER_STREAM * self.config.max_streams + 16;
        let mut q = lock(&self.control);
        if q.messages.len() >= limit {
            drop(q);
            self.close("control queue overflow");
            return;
        }
        q.messages.push_back(msg);
        drop(q);
        self.writer_wake.notify_one();
    }

    fn push_ping(&self) {
        lock(&self.control).ping = true;
        self.writer_wake.notify_one();
    }

    /// Sends a ping to measure the round trip, unless one is already on its way (a lost
    /// pong stops blocking new probes after the dead-peer deadline's ping interval).
    pub(crate) fn probe_rtt(&self) {
        let sent = self.ping_in_flight.load(Ordering::Relaxed);
        let stale = self.config.ping_interval.as_micros() as u64;
        if sent == 0 || self.now_micros().saturating_sub(sent) > stale {
            self.push_ping();
        }
    }

    fn push_pong(&self, payload: Bytes) {
        lock(&self.control).pong = Some(payload);
        self.writer_wake.notify_one();
    }

    /// Queues a stream message behind everything that stream sent before. Never blocks;
    /// fails only when the session is gone.
    pub(crate) fn send_ordered(&self, id: ConnectId, msg: Message, budgeted: bool) -> bool {
        if !self.sched.push(id, msg, budgeted) {
            return false;
        }
        self.writer_wake.notify_one();
        true
    }

    pub(crate) fn remove_stream(&self, id: ConnectId) {
        self.sched.forget(id);
        let mut streams = lock(&self.streams);
        if streams.remove(&id).is_some() && streams.is_empty() {
            drop(streams);
            self.idle.notify_waiters();
        }
    }

    fn set_draining(&self) -> bool {
        let was = self.draining.swap(true, Ordering::Relaxed);
        if !was {
            self.draining_changed.notify_waiters();
        }
        was
    }

    fn set_peer_going_away(&self) {
        if !self.peer_going_away.swap(true, Ordering::Relaxed) {
            self.draining_changed.notify_waiters();
        }
    }

    /// The round trips measured so far, once there is one.
    pub(crate) fn path_rtt(&self) -> Option<PathRtt> {
        Some(PathRtt {
            min: self.stats.min_rtt()?,
            latest: self.stats.rtt()?,
        })
    }

    /// What a stream's receive window is tuned within.
    pub(crate) fn window_limits(&self) -> Limits {
        Limits {
            initial: u64::from(self.config.announced_window()),
            start: u64::from(self.config.stream_window),
            max: u64::from(self.config.max_stream_window),
        }
    }

    fn stream(&self, id: ConnectId) -> Option<Arc<StreamShared>> {
        lock(&self.streams).get(&id).cloned()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub(crate) fn close_reason(&self) -> String {
        lock(&self.close_reason)
            .clone()
            .unwrap_or_else(|| "closed".to_owned())
    }

    pub(crate) fn close(&self, reason: &str) {
        {
            let mut r = lock(&self.close_reason);
            if r.is_none() {
                *r = Some(reason.to_owned());
            }
        }
        self.cancel.cancel();
    }

    fn now_micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Fails every stream; called once when the driver ends.
    fn fail_all(&self) {
        let reason = format!(
            "tunnel session to {} closed: {}",
            self.node.name,
            self.close_reason()
        );
        let streams: Vec<_> = lock(&self.streams).drain().map(|(_, s)| s).collect();
        for s in streams {
            s.fail(&reason);
        }
        self.idle.notify_waiters();
    }

    /// Registers a new stream; with it, the credit to grant the peer beyond the handshake's
    /// promise, which the caller sends once the peer knows the stream.
    fn register_stream(
        &self,
        id: ConnectId,
        kind: ConnectKind,
    ) -> Result<(Arc<StreamShared>, Option<Message>)> {
        let (credit, rwin, grant) = match self.dialect {
            Dialect::Tether2 => {
                let (rwin, grant) = ReceiveWindow::open(
                    self.window_limits(),
                    self.path_rtt(),
                    &self.window_budget,
                    tokio::time::Instant::now(),
                );
                let grant = grant.map(|increment| {
                    let mut data = Vec::with_capacity(10);
                    stream_proto::encode_window(increment, &mut data);
                    Message::new(id, MessageType::Window, data)
                });
                (u64::from(self.peer_window), rwin, grant)
            }
            Dialect::KubeEdge => (
                u64::MAX,
                ReceiveWindow::new(u64::from(self.config.stream_window)),
                None,
            ),
        };
        let shared = StreamShared::new(id, kind, credit, rwin);
        let mut streams = lock(&self.streams);
        // Checked under the lock that `fail_all` drains under: a stream is either refused
        // here or failed there, never left behind in a dead session.
        if self.is_closed() {
            return Err(Error::SessionClosed(self.close_reason()));
        }
        if streams.len() >= self.config.max_streams {
            return Err(Error::TooManyStreams(self.config.max_streams));
        }
        if streams.contains_key(&id) {
            return Err(Error::Protocol(format!(
                "connect id {id} is already in use"
            )));
        }
        streams.insert(id, shared.clone());
        self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        Ok((shared, grant))
    }
}

/// A handle on one tunnel session. Clones share the session.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("node", &self.shared.node)
            .field("dialect", &self.shared.dialect)
            .field("role", &self.shared.role)
            .finish()
    }
}

/// A stream the peer opened, with the request it carries.
#[derive(Debug)]
pub struct IncomingStream {
    /// The KubeEdge connect descriptor: the kubelet URL, headers and method.
    pub request: ConnectRequest,
    /// The stream itself.
    pub stream: Stream,
}

/// The streams the peer opens (edge side). Ends when the session ends.
#[derive(Debug)]
pub struct Incoming {
    /// `None` on the cloud, where the peer opens nothing: no channel is allocated for it
    /// (its first block and state cost every idle session about 700 bytes).
    rx: Option<mpsc::Receiver<Box<IncomingStream>>>,
}

impl Incoming {
    /// The next stream the cloud opened, or `None` once the session is over.
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await.map(|boxed| *boxed),
            None => None,
        }
    }
}

/// The future that owns the connection; see [`Session::establish`].
pub struct SessionDriver {
    io: Box<dyn Io>,
    shared: Arc<Shared>,
    incoming_tx: Option<mpsc::Sender<Box<IncomingStream>>>,
    leftover: Bytes,
}

impl fmt::Debug for SessionDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionDriver")
            .field("node", &self.shared.node)
            .finish()
    }
}

/// Sets the options a tunnel socket needs on either end: no Nagle delay (frames are batched
/// already), and a small kernel queue of unsent bytes (see [`SessionConfig::unsent_limit`]).
pub fn tune_socket(tcp: &tokio::net::TcpStream, config: &SessionConfig) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if config.unsent_limit > 0 {
        socket2::SockRef::from(tcp).set_tcp_notsent_lowat(config.unsent_limit)?;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = config;
    Ok(())
}

/// What a session runs over: any byte stream (in production TLS after an HTTP upgrade).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

impl Session {
    /// Builds a session over an upgraded websocket connection.
    pub fn establish<T: Io>(io: T, params: SessionParams) -> (Session, Incoming, SessionDriver) {
        let budget = Arc::new(Semaphore::new(params.config.write_queue));
        // Every stream waiting to be accepted is also registered, so `max_streams` bounds
        // this queue; a burst of connects never overflows it.
        let (incoming_tx, rx) = match params.role {
            Role::Edge => {
                let (tx, rx) = mpsc::channel(params.config.max_streams);
                (Some(tx), Some(rx))
            }
            Role::Cloud => (None, None),
        };
        let window_budget = params.config.session_window_budget;
        let shared = Arc::new(Shared {
            role: params.role,
            dialect: params.dialect,
            node: params.node,
            config: params.config,
            peer_window: params.peer_window,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            sched: Scheduler::default(),
            budget,
            control: Mutex::new(ControlQueue::default()),
            writer_wake: Notify::new(),
            ping_in_flight: AtomicU64::new(0),
            window_budget: WindowBudget::new(window_budget),
            cancel: CancellationToken::new(),
            close_reason: Mutex::new(None),
            draining: AtomicBool::new(false),
            peer_going_away: AtomicBool::new(false),
            draining_changed: Notify::new(),
            idle: Notify::new(),
            heard: AtomicBool::new(false),
            heard_changed: Notify::new(),
            stats: SessionStats::default(),
            epoch: Instant::now(),
            last_received: AtomicU64::new(0),
        });
        let driver = SessionDriver {
            io: Box::new(io),
            shared: shared.clone(),
            incoming_tx,
            leftover: params.leftover,
        };
        (Session { shared }, Incoming { rx }, driver)
    }

    /// The node at the edge end.
    pub fn node(&self) -> &NodeIdentity {
        &self.shared.node
    }

    /// The negotiated dialect.
    pub fn dialect(&self) -> Dialect {
        self.shared.dialect
    }

    /// Which end we are.
    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.shared.stats
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        lock(&self.shared.streams).len()
    }

    /// True once the session has ended (or is ending).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// True when no new streams should be opened on this session: we are draining it, or
    /// the peer said GO_AWAY.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
            || self.shared.peer_going_away.load(Ordering::Relaxed)
    }

    /// Resolves once the session is draining: we called [`Session::drain`], or the peer
    /// said GO_AWAY (tether/2). The edge dials a new session then.
    pub async fn draining(&self) {
        loop {
            let notified = self.shared.draining_changed.notified();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// Sends a websocket ping now. The cloud does this as soon as a session is registered:
    /// an edge that waits for the first frame (see [`Session::heard_from_peer`]) then knows
    /// the cloud can route requests to it.
    pub fn ping_now(&self) {
        self.shared.push_ping();
    }

    /// Resolves once the first frame (of any kind) has arrived from the peer.
    pub async fn heard_from_peer(&self) {
        loop {
            let notified = self.shared.heard_changed.notified();
            if self.shared.heard.load(Ordering::Acquire) || self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once no stream is open on the session (at once if none is).
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            if self.open_streams() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.is_closed().then(|| self.shared.close_reason())
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) {
        self.shared.cancel.cancelled().await;
    }

    /// True if both handles are the same session.
    pub fn same(&self, other: &Session) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Ends the session now; its streams fail with `reason`.
    pub fn close(&self, reason: &str) {
        self.shared.close(reason);
    }

    /// Stops new streams and, with tether/2, tells the peer (GO_AWAY). Open streams go on.
    ///
    /// GO_AWAY travels in order behind every stream already opened, so the peer has seen
    /// all of them by the time it reads it.
    pub fn drain(&self, reason: &str) {
        if self.shared.set_draining() {
            return;
        }
        if self.shared.dialect == Dialect::Tether2
            && self.shared.sched.push_go_away(Message::new(
                ConnectId(0),
                MessageType::GoAway,
                Bytes::copy_from_slice(reason.as_bytes()),
            ))
        {
            self.shared.writer_wake.notify_one();
        }
    }

    /// Opens a stream to the edge carrying `request` (cloud side).
    ///
    /// Allocates the connect id, writes it into the descriptor's `MessID` (KubeEdge requires
    /// both to be equal) and sends the connect message.
    pub async fn open(&self, kind: ConnectKind, mut request: ConnectRequest) -> Result<Stream> {
        let shared = &self.shared;
        if shared.is_closed() {
            return Err(Error::SessionClosed(shared.close_reason()));
        }
        if self.is_draining() {
            return Err(Error::SessionClosed("the session is draining".into()));
        }
        let id = ConnectId(shared.next_id.fetch_add(1, Ordering::Relaxed));
        request.mess_id = id.0;
        let (stream_shared, grant) = shared.register_stream(id, kind)?;
        let stream = Stream::new(stream_shared, shared.clone());
        let msg = Message::new(id, kind.message_type(), request.to_json());
        if !shared.send_ordered(id, msg, false) {
            return Err(Error::SessionClosed(shared.close_reason()));
        }
        // Behind the CONNECT: the peer ignores a WINDOW for a stream it does not know.
        if let Some(grant) = grant
            && !shared.send_ordered(id, grant, false)
        {
            return Err(Error::SessionClosed(shared.close_reason()));
        }
        debug!(node = %shared.node.name, connect_id = %id, %kind, "stream opened");
        Ok(stream)
    }
}

impl SessionDriver {
    /// Runs the session until the peer goes away, the session is closed, or the peer breaks
    /// the protocol. Every stream has ended (or failed) when this returns.
    pub async fn run(self) -> Result<()> {
        let SessionDriver {
            io,
            shared,
            incoming_tx,
            leftover,
        } = self;
        let ws_role = match shared.role {
            Role::Cloud => WsRole::Server,
            Role::Edge => WsRole::Client,
        };
        let (read_half, mut write_half) = tokio::io::split(io);
        // A whole tunnel message: the data bound plus the two varints.
        let max_message = stream_proto::MAX_DATA_LEN + Message::MAX_HEADER_LEN;
        let mut reader = FrameReader::new(read_half, ws_role, max_message, leftover);
        shared
            .last_received
            .store(shared.now_micros(), Ordering::Relaxed);

        let result = tokio::select! {
            r = read_loop(&shared, &mut reader, incoming_tx.as_ref()) => r,
            r = write_loop(&mut write_half, &shared, ws_role) => r,
            () = shared.cancel.cancelled() => Ok(()),
        };
        let reason = match &result {
            Ok(()) => "closed".to_owned(),
            Err(e) => e.to_string(),
        };
        shared.close(&reason);
        shared.heard_changed.notify_waiters();
        shared.budget.close();
        shared.sched.close();
        shared.fail_all();
        drop(incoming_tx);
        // Best effort: end TLS properly so the peer sees a clean close rather than a reset.
        let _ = tokio::time::timeout(Duration::from_secs(1), write_half.shutdown()).await;
        // One line per session: who, how long, how much, and why it ended.
        info!(
            node = %shared.node.name,
            dialect = %shared.dialect,
            duration_s = shared.epoch.elapsed().as_secs(),
            streams = shared.stats.streams_opened(),
            bytes_sent = shared.stats.bytes_sent(),
            bytes_received = shared.stats.bytes_received(),
            reason = %shared.close_reason(),
            "session ended"
        );
        result
    }
}

/// The dead-peer check, made on every ping tick of the writer rather than by a timer of its
/// own: one timer less in each of thousands of idle sessions. `dead_after` is longer than
/// the ping interval (the configuration is checked), so a silent peer is declared dead
/// within one ping interval after the deadline; a writer blocked on a peer that does not
/// read is ended by its write deadline instead.
fn check_alive(shared: &Shared) -> Result<()> {
    let dead_after = shared.config.dead_after.as_micros() as u64;
    let last = shared.last_received.load(Ordering::Relaxed);
    if shared.now_micros().saturating_sub(last) > dead_after {
        return Err(Error::Timeout(
            "waiting for the peer: it sent nothing within the dead-peer deadline",
        ));
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(
    io: &mut W,
    shared: &Shared,
    role: WsRole,
) -> Result<()> {
    let data_kind = match shared.dialect {
        Dialect::KubeEdge => DataKind::Text,
        Dialect::Tether2 => DataKind::Binary,
    };
    let opcode = ws::data_opcode(data_kind);
    // Allocated when there is something to write and kept while traffic flows (a bulk
    // stream's queue runs dry after every frame); released once a ping interval passes
    // without a stream message, and at once after writing only pings and pongs, so an idle
    // session holds no write buffer.
    let mut out = Batch::default();
    let mut wrote = false;
    let period = shared.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A first ping at once: the round trip is known before the first stream needs it
    // (tether/2 receive windows are sized from it). The cloud's first ping is sent by its
    // server once the session is routable (an edge takes it as the sign that it is), and
    // stock peers see what they always saw.
    if shared.dialect == Dialect::Tether2 && shared.role == Role::Edge {
        shared.push_ping();
    }
    loop {
        tokio::select! {
            biased;
            () = shared.writer_wake.notified() => {}
            _ = ping.tick() => {
                check_alive(shared)?;
                // A new interval: the buffer goes below unless stream messages flow in it.
                wrote = false;
                shared.push_ping();
            }
        }
        // Batch by batch until every queue is empty; control messages go first in each.
        loop {
            {
                let mut q = lock(&shared.control);
                if std::mem::take(&mut q.ping) {
                    let now = shared.now_micros().max(1);
                    out.push(role, ws::PING, &now.to_be_bytes(), Bytes::new());
                    shared.ping_in_flight.store(now, Ordering::Relaxed);
                }
                if let Some(pong) = q.pong.take() {
                    out.push(role, ws::PONG, &[], pong);
                }
                while let Some(msg) = q.messages.pop_front() {
                    encode_message(&mut out, role, opcode, msg);
                }
            }
            while out.len() < WRITE_BATCH {
                let Some(o) = shared.sched.pop() else { break };
                wrote = true;
                if o.budgeted {
                    shared.budget.add_permits(1);
                }
                encode_message(&mut out, role, opcode, o.msg);
            }
            if out.is_empty() {
                break;
            }
            out.write_to(io, shared.config.write_deadline).await?;
        }
        if !wrote {
            out.release();
        }
    }
}

fn encode_message(out: &mut Batch, role: WsRole, opcode: OpCode, msg: Message) {
    let mut header = [0u8; Message::MAX_HEADER_LEN];
    let mut free = &mut header[..];
    Message::encode_header(msg.connect_id, msg.kind, &mut free);
    let used = Message::MAX_HEADER_LEN - free.len();
    trace!(connect_id = %msg.connect_id, kind = %msg.kind, len = msg.data.len(), "sent");
    out.push(role, opcode, &header[..used], msg.data);
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    reader: &mut FrameReader<R>,
    incoming: Option<&mpsc::Sender<Box<IncomingStream>>>,
) -> Result<()> {
    loop {
        let Some(event) = reader.next().await? else {
            return Err(Error::SessionClosed(
                "the peer closed the connection".into(),
            ));
        };
        shared
            .last_received
            .store(shared.now_micros(), Ordering::Relaxed);
        if !shared.heard.swap(true, Ordering::AcqRel) {
            shared.heard_changed.notify_waiters();
        }
        match event {
            WsEvent::Message(_kind, payload) => {
                // Both opcodes are accepted from every peer: stock peers use TEXT, tether/2
                // BINARY, and being strict here would only break interop.
                let msg = Message::decode(payload)?;
                dispatch(shared, msg, incoming).await?;
            }
            WsEvent::Ping(payload) => shared.push_pong(payload),
            WsEvent::Pong(payload) => {
                if let Ok(stamp) = <[u8; 8]>::try_from(&payload[..]) {
                    let sent = u64::from_be_bytes(stamp);
                    // Only the answer to our latest ping counts (RFC 6455 lets a peer answer
                    // the latest of several pings only), and only a stamp we could have sent.
                    if sent != 0
                        && shared
                            .ping_in_flight
                            .compare_exchange(sent, 0, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        let rtt = shared.now_micros().saturating_sub(sent).max(1);
                        shared.stats.record_rtt(rtt);
                    }
                }
            }
            WsEvent::Close => {
                return Err(Error::SessionClosed(
                    "the peer sent a websocket close".into(),
                ));
            }
        }
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    msg: Message,
    incoming: Option<&mpsc::Sender<Box<IncomingStream>>>,
) -> Result<()> {
    let id = msg.connect_id;
    trace!(node = %shared.node.name, connect_id = %id, kind = %msg.kind, len = msg.data.len(), "received");
    match msg.kind {
        MessageType::Data => {
            let len = msg.data.len();
            if let Some(stream) = shared.stream(id) {
                // A payload is a slice of the websocket read buffer; a small one kept by a
                // slow reader would pin that whole buffer, so small payloads are copied out.
                let data = if len < COPY_BELOW {
                    Bytes::copy_from_slice(&msg.data)
                } else {
                    msg.data
                };
                deliver(shared, &stream, data).await;
                shared
                    .stats
                    .bytes_received
                    .fetch_add(len as u64, Ordering::Relaxed);
            } else {
                trace!(connect_id = %id, "data for an unknown stream dropped");
            }
        }
        MessageType::RemoveConnect => {
            if let Some(stream) = shared.stream(id) {
                stream.on_remove();
            }
        }
        MessageType::Fin if shared.dialect == Dialect::Tether2 => {
            if let Some(stream) = shared.stream(id) {
                stream.on_fin();
            }
        }
        MessageType::Reset if shared.dialect == Dialect::Tether2 => {
            let reset = Reset::decode(msg.data)?;
            if let Some(stream) = shared.stream(id) {
                debug!(connect_id = %id, code = %reset.code, reason = %reset.reason, "stream reset by peer");
                stream.fail(&format!("{}: {}", reset.code, reset.reason));
            }
        }
        MessageType::Window if shared.dialect == Dialect::Tether2 => {
            let increment = stream_proto::decode_window(msg.data)?;
            if let Some(stream) = shared.stream(id) {
                stream.add_credit(increment);
            }
        }
        MessageType::OpenResult if shared.dialect == Dialect::Tether2 => {
            let result = OpenResult::from_json(&msg.data)?;
            if let Some(stream) = shared.stream(id) {
                stream.set_open_result(result);
            }
        }
        MessageType::GoAway if shared.dialect == Dialect::Tether2 => {
            info!(node = %shared.node.name, reason = %String::from_utf8_lossy(&msg.data), "peer is draining");
            shared.set_peer_going_away();
        }
        MessageType::CloseConnect if shared.role == Role::Edge => {
            return Err(Error::SessionClosed(format!(
                "the cloud closed the tunnel: {}",
                String::from_utf8_lossy(&msg.data)
            )));
        }
        kind if kind.is_connect() && shared.role == Role::Edge => {
            if let Some(incoming) = incoming {
                accept_stream(shared, msg, incoming);
            }
        }
        other => {
            // KubeEdge peers ignore what they do not know; so do we.
            debug!(node = %shared.node.name, connect_id = %id, kind = %other, "ignored message");
        }
    }
    Ok(())
}

/// Hands received data to a stream, applying the dialect's flow-control rule.
async fn deliver(shared: &Shared, stream: &Arc<StreamShared>, data: Bytes) {
    let bound = shared.config.stream_window as usize;
    let deadline = Instant::now() + shared.config.stall_limit;
    loop {
        // Register interest before trying, so a read between the try and the wait is not
        // missed.
        let space = stream.space.notified();
        match stream.push(data.clone(), bound, shared.dialect) {
            Push::Accepted | Push::Discarded => return,
            Push::OverWindow => {
                warn!(node = %shared.node.name, connect_id = %stream.id, "peer overran the stream window");
                reset_stream(shared, stream, ResetCode::FlowControl, "window exceeded");
                return;
            }
            Push::Full => {
                // Boxed: the wait (a timer and a notification, ~200 bytes) would otherwise be
                // part of every session's reader task, idle or not; it is allocated only
                // while a stream is full.
                let waited = Box::pin(tokio::time::timeout_at(deadline, space)).await;
                // Reading is paused on purpose: the peer's silence meanwhile is ours.
                shared
                    .last_received
                    .store(shared.now_micros(), Ordering::Relaxed);
                if waited.is_err() {
                    warn!(
                        node = %shared.node.name,
                        connect_id = %stream.id,
                        stall_limit = ?shared.config.stall_limit,
                        "stream reader stalled; closing that stream so the others go on"
                    );
                    reset_stream(shared, stream, ResetCode::Stalled, "reader stalled");
                    return;
                }
            }
        }
    }
}

/// Fails a stream locally and tells the peer.
fn reset_stream(shared: &Shared, stream: &StreamShared, code: ResetCode, reason: &str) {
    stream.fail(reason);
    match shared.dialect {
        Dialect::Tether2 => {
            let mut data = Vec::new();
            Reset {
                code,
                reason: reason.to_owned(),
            }
            .encode(&mut data);
            shared.push_control(Message::new(stream.id, MessageType::Reset, data));
        }
        Dialect::KubeEdge => {
            if stream.mark_remove_sent() {
                shared.push_control(Message::new(
                    stream.id,
                    MessageType::RemoveConnect,
                    Bytes::new(),
                ));
            }
        }
    }
}

/// Registers a stream the cloud opened and queues it for [`Incoming::accept`] (edge side).
fn accept_stream(shared: &Arc<Shared>, msg: Message, incoming: &mpsc::Sender<Box<IncomingStream>>) {
    let id = msg.connect_id;
    let refuse = |reason: &str| {
        warn!(node = %shared.node.name, connect_id = %id, reason, "refusing stream");
        match shared.dialect {
            Dialect::Tether2 => {
                let mut data = Vec::new();
                Reset {
                    code: ResetCode::Refused,
                    reason: reason.to_owned(),
                }
                .encode(&mut data);
                shared.push_control(Message::new(id, MessageType::Reset, data));
            }
            Dialect::KubeEdge => {
                shared.push_control(Message::new(id, MessageType::RemoveConnect, Bytes::new()));
            }
        }
    };
    let Some(kind) = ConnectKind::from_message_type(msg.kind) else {
        return;
    };
    let request = match ConnectRequest::from_json(&msg.data) {
        Ok(request) => request,
        Err(e) => return refuse(&format!("bad connect descriptor: {e}")),
    };
    if request.mess_id != id.0 {
        // Stock edges key the stream by the message's id; so do we.
        warn!(connect_id = %id, mess_id = request.mess_id, "MessID differs from the connect id");
    }
    if shared.draining.load(Ordering::Relaxed) {
        return refuse("this end is draining");
    }
    let stream_shared = match shared.register_stream(id, kind) {
        Ok((s, grant)) => {
            if let Some(grant) = grant {
                shared.push_control(grant);
            }
            s
        }
        Err(e) => return refuse(&e.to_string()),
    };
    let stream = Stream::new(stream_shared, shared.clone());
    // Boxed: tokio allocates a channel's first block of 32 slots up front, and 32 unboxed
    // streams would cost every session (the cloud's too) 10 KiB before any is opened.
    if let Err(err) = incoming.try_send(Box::new(IncomingStream { request, stream })) {
        // Dropping the stream inside the error resets it and removes it from the map.
        drop(err);
        warn!(connect_id = %id, "too many streams waiting to be accepted");
    }
}
