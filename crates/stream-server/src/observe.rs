//! What the stream server reports about each relayed stream.
//!
//! The binary plugs its metrics in through [`RelayObserver`]; this crate does not depend on a
//! metrics library. Every stream also ends with one structured log line carrying node,
//! connect id, operation, bytes each way and duration.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::info;

use crate::route::Operation;

/// Receives stream events; every method has an empty default.
pub trait RelayObserver: Send + Sync + 'static {
    /// A stream was opened and the kubelet's response head is known, `latency` after the
    /// request arrived.
    fn stream_opened(&self, _operation: Operation, _latency: Duration) {}
    /// A stream ended; bytes sent to the edge (request body, stdin) and from it.
    fn stream_closed(&self, _operation: Operation, _to_edge: u64, _from_edge: u64) {}
    /// A request failed before or while streaming; `reason` is a short fixed word:
    /// `no_session`, `open_failed`, `bad_request`, `forbidden`, `not_found`, `bad_gateway`,
    /// `unavailable`, `timeout` or `other` when no stream was relayed, and `cut` when a
    /// relayed stream broke (stall limit, tunnel lost, reset by the edge).
    fn stream_failed(&self, _operation: Operation, _reason: &'static str) {}
    /// A pod's node was looked up for a pod subresource. `source` is `cache` or `api` (a
    /// round trip to the Kubernetes API); `result` is `found`, `not_found`, `unscheduled` or
    /// `error`.
    fn pod_lookup(&self, _source: &'static str, _result: &'static str) {}
    /// A request went between replicas (see [`crate::forward`]). `outcome` is a fixed word:
    /// on the sending replica `ok` (the holder answered, whatever its status), `unreachable`
    /// (dial or TLS to the holder failed), `timeout` (no answer in time) or `error` (the
    /// holder's answer broke); on the receiving replica `served` (forwarded here and relayed),
    /// `gone` (forwarded here but the node is not held here: 503) or `forbidden` (a hop marker
    /// from a client that is no replica: 403).
    fn forwarded(&self, _outcome: &'static str) {}
    /// An egress CONNECT was answered: `open` (tunnel opened), `unknown_node` (503 before TLS)
    /// or `bad_request` (not a usable CONNECT).
    fn egress(&self, _result: &'static str) {}
}

/// An observer that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRelayObserver;
impl RelayObserver for NoRelayObserver {}

/// Counts one stream's bytes and reports its end exactly once, when dropped.
pub(crate) struct StreamRecord {
    observer: Arc<dyn RelayObserver>,
    operation: Operation,
    started: Instant,
    /// The request's span (node, connect id): the end is logged in it even when hyper drops
    /// the body elsewhere.
    span: tracing::Span,
    pub(crate) to_edge: AtomicU64,
    pub(crate) from_edge: AtomicU64,
    /// The stream ended with an error after it started (stall limit, tunnel lost, reset).
    cut: AtomicBool,
}

impl StreamRecord {
    pub(crate) fn new(
        observer: Arc<dyn RelayObserver>,
        operation: Operation,
        started: Instant,
    ) -> StreamRecord {
        observer.stream_opened(operation, started.elapsed());
        StreamRecord {
            observer,
            operation,
            started,
            span: tracing::Span::current(),
            to_edge: AtomicU64::new(0),
            from_edge: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        }
    }

    pub(crate) fn add_from_edge(&self, n: u64) {
        self.from_edge.fetch_add(n, Ordering::Relaxed);
    }

    /// The stream broke after it started; reported as the failure reason `cut`.
    pub(crate) fn mark_cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    pub(crate) fn add_to_edge(&self, n: u64) {
        self.to_edge.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for StreamRecord {
    fn drop(&mut self) {
        let to_edge = self.to_edge.load(Ordering::Relaxed);
        let from_edge = self.from_edge.load(Ordering::Relaxed);
        self.observer
            .stream_closed(self.operation, to_edge, from_edge);
        let cut = self.cut.load(Ordering::Relaxed);
        if cut {
            self.observer.stream_failed(self.operation, "cut");
        }
        let _span = self.span.enter();
        info!(
            operation = self.operation.as_str(),
            bytes_to_edge = to_edge,
            bytes_from_edge = from_edge,
            duration_ms = self.started.elapsed().as_millis() as u64,
            cut,
            "stream closed"
        );
    }
}
