//! Counters a test reads to assert outcomes instead of timings.
//!
//! The data path updates one shared [`Counters`] per link with relaxed atomics;
//! [`crate::Link::stats`] copies them into a [`LinkStats`] snapshot. The current queue and
//! in-flight figures are sums over all connections; the peaks are per connection, because a
//! peak is what bounds the proxy's memory for one connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A snapshot of one direction's counters, summed over every connection of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathStats {
    /// Bytes written to the receiving side.
    pub forwarded: u64,
    /// Bytes read from the sender and discarded because the link was blackholed.
    pub dropped: u64,
    /// Bytes now in router queues (read, not yet serialised).
    pub queued: usize,
    /// Bytes now on the wire (serialised, not yet delivered).
    pub in_flight: usize,
    /// Highest queue occupancy any one connection reached; never above its configured queue.
    pub peak_queued: usize,
    /// Highest wire occupancy any one connection reached.
    pub peak_in_flight: usize,
}

/// A snapshot of a link's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Client → server.
    pub up: PathStats,
    /// Server → client.
    pub down: PathStats,
    /// Connections accepted since the link started.
    pub accepted: u64,
    /// Connections accepted and not yet ended (including held and connecting ones).
    pub open: u64,
    /// Connections ended with a reset sent by the link: [`crate::Link::reset`], the admission
    /// policy, a failed connect to the target, a propagated reset or a shutdown.
    pub resets: u64,
}

/// Live counters of one direction.
#[derive(Debug, Default)]
pub(crate) struct PathCounters {
    pub(crate) forwarded: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) queued: AtomicUsize,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) peak_queued: AtomicUsize,
    pub(crate) peak_in_flight: AtomicUsize,
}

impl PathCounters {
    fn snapshot(&self) -> PathStats {
        PathStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            peak_queued: self.peak_queued.load(Ordering::Relaxed),
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_dropped(&self, bytes: usize) {
        self.dropped.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_forwarded(&self, bytes: usize) {
        self.forwarded.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Live counters of a link.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) up: PathCounters,
    pub(crate) down: PathCounters,
    pub(crate) accepted: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) resets: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> LinkStats {
        LinkStats {
            up: self.up.snapshot(),
            down: self.down.snapshot(),
            accepted: self.accepted.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
        }
    }
}
