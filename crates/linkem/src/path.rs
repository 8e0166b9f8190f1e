//! One direction of one proxied connection: reader → router queue → serialiser → wire → writer.
//!
//! [`crate::link`] runs two of these per accepted connection, all inside the connection's task,
//! so dropping that task drops every buffer at once. The three stages talk through channels
//! whose contents are bounded in bytes by a [`Budget`] each (the queue and the wire), not by a
//! message count: a channel never holds more than its budget plus one end marker.
//!
//! - The reader reads from the sending socket only while the queue has room, so a full queue
//!   holds the sender back through TCP. While the link is blackholed it reads and discards.
//! - The serialiser takes at most one quantum at a time from the queue and releases it when the
//!   line would have finished sending it (a virtual clock at the configured rate), stamping it
//!   with its arrival time (release + delay). While the link is paused it releases nothing.
//! - The writer waits for each chunk's arrival time and writes it to the receiving socket.
//!
//! FIN and RST travel as markers behind the data, so the receiver sees the sender's close after
//! the last byte and one delay later, as on a real path.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::config::{LinkConfig, PathConfig};
use crate::link::Admission;
use crate::stats::PathCounters;

/// Largest single read from a sending socket.
const READ_CHUNK: usize = 64 * 1024;

/// How far the serialiser may release ahead of its virtual clock. The writer still waits for
/// each chunk's exact arrival time, so running ahead by one timer tick costs no precision and
/// spares a 1 ms timer round for every small write.
const RUN_AHEAD: Duration = Duration::from_millis(1);

/// How far the serialiser's clock may lag real time and still be caught up with a burst. Small
/// lags come from timer granularity and must be caught up or the rate drifts low; a large one
/// means the task was starved, and bursting it all out would not look like a link.
const MAX_CATCH_UP: Duration = Duration::from_millis(10);

/// How much earlier than due the writer asks to be woken. tokio rounds a deadline up to the
/// next 1 ms tick and the driver wakes up to a tick later still, so without a lead every chunk
/// arrived 1–2 ms late (measured); with it, arrival is within about a millisecond of due.
const TIMER_LEAD: Duration = Duration::from_millis(1);

/// Which way bytes flow through a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client → server.
    Up,
    /// Server → client.
    Down,
}

impl Direction {
    pub(crate) fn path(self, config: &LinkConfig) -> PathConfig {
        match self {
            Direction::Up => config.up,
            Direction::Down => config.down,
        }
    }
}

/// Everything a test can change while the link runs; shared through a `watch` channel so that
/// waiting stages wake up on a change.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    pub(crate) config: LinkConfig,
    pub(crate) paused: bool,
    pub(crate) blackholed: bool,
    pub(crate) admission: Admission,
    /// Incremented by every `reset()`: a connection accepted under an older value is reset.
    pub(crate) reset_epoch: u64,
    /// Set by `shutdown()`: stop accepting and reset everything.
    pub(crate) closing: bool,
}

impl Control {
    /// Bytes are neither released nor delivered, but kept.
    fn stalled(&self) -> bool {
        self.paused && !self.blackholed
    }
}

/// Why a connection must be torn down with a reset.
#[derive(Debug)]
pub(crate) enum Abort {
    /// The sender reset its connection; the reset reached the receiver.
    PeerReset(Direction),
    /// Writing to or closing the receiving socket failed.
    WriteFailed(Direction, io::Error),
    /// `reset()` or `shutdown()` on the link.
    Link,
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abort::PeerReset(direction) => write!(f, "{direction:?} sender reset its connection"),
            Abort::WriteFailed(direction, error) => {
                write!(f, "{direction:?} receiver cannot be written: {error}")
            }
            Abort::Link => f.write_str("reset or shutdown of the link"),
        }
    }
}

/// What travels through a path.
#[derive(Debug)]
enum Segment {
    Data(Bytes),
    /// The sender closed its side (EOF).
    Fin,
    /// The sender's connection failed (RST or another read error).
    Rst,
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Segment::Data(b) => b.len(),
            Segment::Fin | Segment::Rst => 0,
        }
    }
}

/// A segment on the wire with the time it reaches the far side.
#[derive(Debug)]
struct Timed {
    segment: Segment,
    due: Instant,
}

/// Bytes held by one stage of one path, mirrored into the link's counters.
///
/// One producer and one consumer per budget: the consumer's `notify_one` is stored when the
/// producer is not yet waiting, so "check, then wait for a release" cannot miss a wake-up.
struct Budget<'a> {
    used: AtomicUsize,
    released: Notify,
    total: &'a AtomicUsize,
    peak: &'a AtomicUsize,
}

impl<'a> Budget<'a> {
    fn new(total: &'a AtomicUsize, peak: &'a AtomicUsize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            released: Notify::new(),
            total,
            peak,
        }
    }

    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) {
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.total.fetch_add(bytes, Ordering::Relaxed);
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        self.total.fetch_sub(bytes, Ordering::Relaxed);
        self.released.notify_one();
    }

    /// Waits until `bytes` more fit under `cap`; an empty budget always takes one chunk, so a
    /// chunk larger than the cap cannot wedge the path.
    async fn wait_fits(&self, bytes: usize, cap: usize) {
        loop {
            let used = self.used();
            if used == 0 || used.saturating_add(bytes) <= cap {
                return;
            }
            self.released.notified().await;
        }
    }
}

impl Drop for Budget<'_> {
    fn drop(&mut self) {
        // A connection torn down with bytes still queued must not leave them in the link totals.
        self.total.fetch_sub(self.used(), Ordering::Relaxed);
    }
}

/// Runs one direction until its FIN has been delivered (`Ok`) or the connection must be reset.
///
/// If the FIN or RST is lost in a blackhole, this never returns `Ok`: the receiver never learns
/// of the close, exactly like a peer behind a dead router, and the connection stays half-open
/// until the link resets or shuts down.
pub(crate) async fn run<R, W>(
    src: R,
    dst: W,
    direction: Direction,
    control: &watch::Receiver<Control>,
    counters: &PathCounters,
) -> Result<(), Abort>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let queue = Budget::new(&counters.queued, &counters.peak_queued);
    let wire = Budget::new(&counters.in_flight, &counters.peak_in_flight);
    // Unbounded in message count, bounded in bytes by `queue` and `wire` (see module docs).
    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    let (wire_tx, wire_rx) = mpsc::unbounded_channel();
    let ((), (), ()) = tokio::try_join!(
        read_side(src, direction, control.clone(), &queue, queue_tx, counters),
        serialise(
            direction,
            control.clone(),
            queue_rx,
            &queue,
            &wire,
            wire_tx,
            counters
        ),
        deliver(dst, direction, control.clone(), wire_rx, &wire, counters),
    )?;
    Ok(())
}

async fn read_side<R: AsyncRead + Unpin>(
    mut src: R,
    direction: Direction,
    mut control: watch::Receiver<Control>,
    queue: &Budget<'_>,
    queue_tx: mpsc::UnboundedSender<Segment>,
    counters: &PathCounters,
) -> Result<(), Abort> {
    loop {
        let (blackholed_before, cap) = {
            let c = control.borrow_and_update();
            (c.blackholed, direction.path(&c.config).queue)
        };
        let want = if blackholed_before {
            READ_CHUNK
        } else {
            let room = cap.saturating_sub(queue.used());
            if room == 0 {
                // A full queue: stop reading, which is what holds the sender back. Also wake
                // on a control change (a blackhole discards, a larger queue has room).
                tokio::select! {
                    () = queue.released.notified() => {}
                    changed = control.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                    }
                }
                continue;
            }
            room.min(READ_CHUNK)
        };
        let mut buf = BytesMut::zeroed(want);
        let read = if blackholed_before {
            // A restore must not find this read in progress: its bytes would count as sent
            // during the outage. `biased` looks at the control first, so bytes that arrive
            // with or after a restore are read again with the queue bound.
            tokio::select! {
                biased;
                changed = control.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                read = src.read(&mut buf) => read,
            }
        } else {
            src.read(&mut buf).await
        };
        let segment = match read {
            Ok(0) => Segment::Fin,
            Ok(n) => {
                buf.truncate(n);
                Segment::Data(buf.freeze())
            }
            Err(error) => {
                tracing::debug!(?direction, %error, "sender's connection failed; passing on a reset");
                Segment::Rst
            }
        };
        // Bytes read while the link was blackholed at either end of the read are lost. Checking
        // the start too keeps the queue bound exact: only reads sized to the room are kept.
        // (Read is cancel-safe, so the select above loses nothing.)
        if blackholed_before || control.borrow().blackholed {
            match segment {
                Segment::Data(bytes) => {
                    counters.add_dropped(bytes.len());
                    continue;
                }
                Segment::Fin | Segment::Rst => return Ok(()),
            }
        }
        let end = !matches!(segment, Segment::Data(_));
        queue.take(segment.len());
        if queue_tx.send(segment).is_err() || end {
            return Ok(());
        }
    }
}

async fn serialise(
    direction: Direction,
    mut control: watch::Receiver<Control>,
    mut queue_rx: mpsc::UnboundedReceiver<Segment>,
    queue: &Budget<'_>,
    wire: &Budget<'_>,
    wire_tx: mpsc::UnboundedSender<Timed>,
    counters: &PathCounters,
) -> Result<(), Abort> {
    // When the line finishes sending what it has released so far.
    let mut line_free = Instant::now();
    // The rest of a chunk longer than one quantum; still counted in the queue.
    let mut carry: Option<Bytes> = None;
    loop {
        // `idle`: the line may have been idle meanwhile, so its clock may not lag real time.
        let mut idle = false;
        let segment = match carry.take() {
            Some(rest) => Segment::Data(rest),
            None => match queue_rx.try_recv() {
                Ok(segment) => segment,
                Err(TryRecvError::Empty) => {
                    idle = true;
                    match queue_rx.recv().await {
                        Some(segment) => segment,
                        None => return Ok(()),
                    }
                }
                Err(TryRecvError::Disconnected) => return Ok(()),
            },
        };
        if control.borrow_and_update().stalled() {
            idle = true;
            if control.wait_for(|c| !c.stalled()).await.is_err() {
                return Ok(());
            }
        }
        let (blackholed, path) = {
            let c = control.borrow();
            (c.blackholed, direction.path(&c.config))
        };
        if blackholed {
            match segment {
                Segment::Data(bytes) => {
                    queue.give(bytes.len());
                    counters.add_dropped(bytes.len());
                    continue;
                }
                Segment::Fin | Segment::Rst => return Ok(()),
            }
        }
        let segment = match segment {
            Segment::Data(mut bytes) if bytes.len() > path.quantum() => {
                let head = bytes.split_to(path.quantum());
                carry = Some(bytes);
                Segment::Data(head)
            }
            other => other,
        };
        let len = segment.len();
        if wire.used() > 0 && wire.used() + len > path.max_in_flight() {
            // The receiver is not keeping up: the wire is full, so the queue fills behind it.
            idle = true;
            wire.wait_fits(len, path.max_in_flight()).await;
        }
        let now = Instant::now();
        line_free = if idle {
            line_free.max(now)
        } else {
            line_free.max(now.checked_sub(MAX_CATCH_UP).unwrap_or(now))
        };
        let done = line_free + path.serialisation_time(len);
        if done > now + RUN_AHEAD {
            tokio::time::sleep_until(done - RUN_AHEAD).await;
        }
        line_free = done;
        queue.give(len);
        wire.take(len);
        let end = !matches!(segment, Segment::Data(_));
        let timed = Timed {
            segment,
            due: done + path.delay,
        };
        if wire_tx.send(timed).is_err() || end {
            return Ok(());
        }
    }
}

async fn deliver<W: AsyncWrite + Unpin>(
    mut dst: W,
    direction: Direction,
    mut control: watch::Receiver<Control>,
    mut wire_rx: mpsc::UnboundedReceiver<Timed>,
    wire: &Budget<'_>,
    counters: &PathCounters,
) -> Result<(), Abort> {
    loop {
        let Some(Timed { segment, due }) = wire_rx.recv().await else {
            // The FIN or RST was lost in a blackhole (the serialiser or reader ended without
            // passing it on): the receiver must not see a close it was never sent.
            return std::future::pending().await;
        };
        if due > Instant::now() + TIMER_LEAD {
            tokio::time::sleep_until(due - TIMER_LEAD).await;
        }
        if control.borrow_and_update().stalled()
            && control.wait_for(|c| !c.stalled()).await.is_err()
        {
            return std::future::pending().await;
        }
        let blackholed = control.borrow().blackholed;
        match segment {
            Segment::Data(bytes) => {
                if blackholed {
                    wire.give(bytes.len());
                    counters.add_dropped(bytes.len());
                    continue;
                }
                let written = dst.write_all(&bytes).await;
                wire.give(bytes.len());
                written.map_err(|e| Abort::WriteFailed(direction, e))?;
                counters.add_forwarded(bytes.len());
            }
            Segment::Fin | Segment::Rst if blackholed => return std::future::pending().await,
            Segment::Fin => {
                dst.shutdown()
                    .await
                    .map_err(|e| Abort::WriteFailed(direction, e))?;
                return Ok(());
            }
            Segment::Rst => return Err(Abort::PeerReset(direction)),
        }
    }
}
