//! The `tether_*` metric families and the methods that record into them.
//!
//! One [`Metrics`] per process owns a `prometheus_client` [`Registry`] (no global state, so
//! tests build as many as they like) and is rendered on `/metrics`. The binaries hand it to
//! the libraries' observer traits: it implements [`TunnelObserver`] directly, and its plain
//! methods ([`Metrics::stream_opened`], [`Metrics::reconnect`], …) are what a binary's
//! small adapter for the other observers calls. Both binaries register every family;
//! the ones a side never records (sessions on the edge, reconnects on the cloud) stay at
//! zero.
//!
//! Label values: `operation` and `reason` come from our own code (fixed words such as
//! `exec`, `logs`, `tls`), never from a peer or a request, so the number of series is
//! bounded by the code, not by traffic.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tracing::warn;
use tunnel_session::server::{Refusal, TunnelObserver};
use tunnel_session::session::Session;

use crate::Error;

/// `operation` label: the kubelet operation a stream serves (`logs`, `exec`, …).
/// Values come from code, never from peers (see the module docs).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

/// `operation` and `direction` (`to_edge` / `from_edge`) labels for byte counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    operation: String,
    direction: String,
}

/// `source` (`cache`, `api`) and `result` (`found`, `not_found`, `unscheduled`, `error`) of a
/// pod lookup; fixed words from code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    source: String,
    result: String,
}

/// `reason` label: a short fixed word from code (a [`Refusal`] or a reset reason).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// How long opening a stream took: 1 ms doubling to ~33 s (16 buckets, then +Inf).
fn stream_open_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Ping round trips: 0.5 ms doubling to ~8 s (15 buckets, then +Inf).
fn ping_rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

struct Families {
    registry: Registry,
    sessions: Gauge,
    handshakes_refused: Family<ReasonLabels, Counter>,
    handshakes: Gauge,
    handshakes_peak: Gauge,
    streams_open: Family<OperationLabels, Gauge>,
    streams_total: Family<OperationLabels, Counter>,
    stream_bytes: Family<DirectionLabels, Counter>,
    stream_open_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    stream_resets: Family<ReasonLabels, Counter>,
    ping_rtt: Histogram,
    reconnects: Counter,
    tunnel_up: Gauge,
    pod_lookups: Family<LookupLabels, Counter>,
    pod_cache_pods: Gauge,
    pod_watch_up: Gauge,
    runtime_tasks: Gauge,
    directory_nodes: Gauge,
    directory_local_claims: Gauge,
    directory_pending: Gauge,
    directory_up: Gauge,
    directory_etcd_errors: Counter,
    directory_lease_losses: Counter,
    directory_superseded: Counter,
    forwarded: Family<OutcomeLabels, Counter>,
    egress_connects: Family<ResultLabels, Counter>,
}

/// `outcome` label of forwarded requests: a fixed word from code (`ok`, `unreachable`, …).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// `result` label of egress CONNECTs: `open`, `unknown_node`, `bad_request`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Every outcome of a forwarded request, so each series exists from the start.
const FORWARD_OUTCOMES: [&str; 7] = [
    "ok",
    "unreachable",
    "timeout",
    "error",
    "served",
    "gone",
    "forbidden",
];

/// A sample of the replica directory's state, as the binary reads it from the directory
/// (this crate does not depend on it). Counters are totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectorySample {
    /// Nodes in the directory (the whole fleet, as etcd knows it).
    pub nodes: usize,
    /// Nodes this replica claims.
    pub local_claims: usize,
    /// Local claims or releases not yet written.
    pub pending: usize,
    /// The directory follows etcd right now.
    pub up: bool,
    /// Failed etcd calls since start.
    pub etcd_errors: u64,
    /// Times this replica's lease was found expired or revoked.
    pub lease_losses: u64,
    /// Local sessions closed because another replica's newer claim replaced them.
    pub superseded: u64,
}

/// The process's metric families, rendered on `/metrics`.
///
/// Cheap to clone (one `Arc`); clones record into the same families.
///
/// | name | type | labels |
/// |---|---|---|
/// | `tether_sessions` | gauge | — |
/// | `tether_handshakes_refused_total` | counter | `reason` |
/// | `tether_handshakes` | gauge | — |
/// | `tether_handshakes_peak` | gauge | — |
/// | `tether_streams_open` | gauge | `operation` |
/// | `tether_streams_total` | counter | `operation` |
/// | `tether_stream_bytes_total` | counter | `operation`, `direction` |
/// | `tether_stream_open_seconds` | histogram | `operation` |
/// | `tether_stream_resets_total` | counter | `reason` |
/// | `tether_ping_rtt_seconds` | histogram | — |
/// | `tether_reconnects_total` | counter | — |
/// | `tether_tunnel_up` | gauge | — |
/// | `tether_pod_lookups_total` | counter | `source`, `result` |
/// | `tether_pod_cache_pods` | gauge | — |
/// | `tether_pod_watch_up` | gauge | — |
/// | `tether_runtime_tasks` | gauge | — |
/// | `tether_directory_nodes` | gauge | — |
/// | `tether_directory_local_claims` | gauge | — |
/// | `tether_directory_pending` | gauge | — |
/// | `tether_directory_up` | gauge | — |
/// | `tether_directory_etcd_errors_total` | counter | — |
/// | `tether_directory_lease_losses_total` | counter | — |
/// | `tether_directory_superseded_total` | counter | — |
/// | `tether_forwarded_requests_total` | counter | `outcome` |
/// | `tether_egress_connects_total` | counter | `result` |
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("sessions", &self.inner.sessions.get())
            .field("tunnel_up", &self.inner.tunnel_up.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates every `tether_*` family in a fresh registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tether");
        let sessions = Gauge::default();
        registry.register(
            "sessions",
            "Edge sessions currently live on this cloud process",
            sessions.clone(),
        );
        let handshakes_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "handshakes_refused",
            "Tunnel handshakes refused, by reason (tls, bad_request, identity, ip_conflict, timeout, source_limit)",
            handshakes_refused.clone(),
        );
        // Every reason, so each series exists (at zero) from the start and `rate()` sees the
        // first refusal.
        for refusal in Refusal::ALL {
            handshakes_refused
                .get_or_create(&ReasonLabels {
                    reason: refusal.as_str().to_owned(),
                })
                .inc_by(0);
        }
        let handshakes = Gauge::default();
        registry.register(
            "handshakes",
            "Tunnel handshakes in progress (TCP accepted, upgrade not yet answered)",
            handshakes.clone(),
        );
        let handshakes_peak = Gauge::default();
        registry.register(
            "handshakes_peak",
            "Most tunnel handshakes in progress at once since the process started",
            handshakes_peak.clone(),
        );
        let streams_open = Family::<OperationLabels, Gauge>::default();
        registry.register(
            "streams_open",
            "Streams currently open, by kubelet operation",
            streams_open.clone(),
        );
        let streams_total = Family::<OperationLabels, Counter>::default();
        registry.register(
            "streams",
            "Streams opened, by kubelet operation",
            streams_total.clone(),
        );
        let stream_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register_with_unit(
            "stream",
            "Stream payload bytes of finished streams, by operation and direction (to_edge, from_edge)",
            Unit::Bytes,
            stream_bytes.clone(),
        );
        let stream_open_seconds =
            Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                stream_open_histogram,
            );
        registry.register_with_unit(
            "stream_open",
            "Time from a request's arrival until its stream was open, by operation",
            Unit::Seconds,
            stream_open_seconds.clone(),
        );
        let stream_resets = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "stream_resets",
            "Streams ended abnormally, by reason",
            stream_resets.clone(),
        );
        let ping_rtt = ping_rtt_histogram();
        registry.register_with_unit(
            "ping_rtt",
            "Tunnel keepalive ping round trips",
            Unit::Seconds,
            ping_rtt.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "reconnects",
            "Times the edge dialled the cloud again after its tunnel ended",
            reconnects.clone(),
        );
        let tunnel_up = Gauge::default();
        registry.register(
            "tunnel_up",
            "1 while the edge's tunnel to the cloud is established, else 0",
            tunnel_up.clone(),
        );
        let pod_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "pod_lookups",
            "Pod to node lookups for pod requests, by source (cache, api) and result (found, not_found, unscheduled, error)",
            pod_lookups.clone(),
        );
        let pod_cache_pods = Gauge::default();
        registry.register(
            "pod_cache_pods",
            "Pods in the cloud's pod to node cache",
            pod_cache_pods.clone(),
        );
        let pod_watch_up = Gauge::default();
        registry.register(
            "pod_watch_up",
            "1 while the cloud's watch on pods is connected, else 0",
            pod_watch_up.clone(),
        );
        let runtime_tasks = Gauge::default();
        registry.register(
            "runtime_tasks",
            "Tasks alive on the process's tokio runtime (a steady rise with steady traffic is a leak)",
            runtime_tasks.clone(),
        );
        let directory_nodes = Gauge::default();
        registry.register(
            "directory_nodes",
            "Nodes in the replicas' shared directory (every replica's sessions), as this replica sees it",
            directory_nodes.clone(),
        );
        let directory_local_claims = Gauge::default();
        registry.register(
            "directory_local_claims",
            "Nodes this replica claims in the directory",
            directory_local_claims.clone(),
        );
        let directory_pending = Gauge::default();
        registry.register(
            "directory_pending",
            "Local claims and releases not yet written to etcd",
            directory_pending.clone(),
        );
        let directory_up = Gauge::default();
        registry.register(
            "directory_up",
            "1 while the directory follows etcd, 0 while it serves its last known state",
            directory_up.clone(),
        );
        let directory_etcd_errors = Counter::default();
        registry.register(
            "directory_etcd_errors",
            "Failed etcd calls of the directory",
            directory_etcd_errors.clone(),
        );
        let directory_lease_losses = Counter::default();
        registry.register(
            "directory_lease_losses",
            "Times this replica's etcd lease was found expired or revoked",
            directory_lease_losses.clone(),
        );
        let directory_superseded = Counter::default();
        registry.register(
            "directory_superseded",
            "Local sessions closed because a newer session of the node registered on another replica",
            directory_superseded.clone(),
        );
        let forwarded = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "forwarded_requests",
            "Requests forwarded between replicas, by outcome (sent: ok, unreachable, timeout, error; received: served, gone, forbidden)",
            forwarded.clone(),
        );
        for outcome in FORWARD_OUTCOMES {
            forwarded
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.to_owned(),
                })
                .inc_by(0);
        }
        let egress_connects = Family::<ResultLabels, Counter>::default();
        registry.register(
            "egress_connects",
            "Egress CONNECT requests from kube-apiserver, by result (open, unknown_node, bad_request)",
            egress_connects.clone(),
        );
        Metrics {
            inner: Arc::new(Families {
                runtime_tasks,
                directory_nodes,
                directory_local_claims,
                directory_pending,
                directory_up,
                directory_etcd_errors,
                directory_lease_losses,
                directory_superseded,
                forwarded,
                egress_connects,
                pod_lookups,
                pod_cache_pods,
                pod_watch_up,
                registry,
                sessions,
                handshakes_refused,
                handshakes,
                handshakes_peak,
                streams_open,
                streams_total,
                stream_bytes,
                stream_open_seconds,
                stream_resets,
                ping_rtt,
                reconnects,
                tunnel_up,
            }),
        }
    }

    /// A stream for `operation` (a fixed word from code, such as `exec`) was opened.
    pub fn stream_opened(&self, operation: &str) {
        let labels = OperationLabels {
            operation: operation.to_owned(),
        };
        self.inner.streams_total.get_or_create(&labels).inc();
        self.inner.streams_open.get_or_create(&labels).inc();
    }

    /// A stream for `operation` ended after carrying `bytes_to_edge` towards the edge and
    /// `bytes_from_edge` back. Pairs with one earlier [`Metrics::stream_opened`].
    pub fn stream_closed(&self, operation: &str, bytes_to_edge: u64, bytes_from_edge: u64) {
        let labels = OperationLabels {
            operation: operation.to_owned(),
        };
        self.inner.streams_open.get_or_create(&labels).dec();
        let mut bytes = DirectionLabels {
            operation: labels.operation,
            direction: "to_edge".to_owned(),
        };
        self.inner
            .stream_bytes
            .get_or_create(&bytes)
            .inc_by(bytes_to_edge);
        bytes.direction = "from_edge".to_owned();
        self.inner
            .stream_bytes
            .get_or_create(&bytes)
            .inc_by(bytes_from_edge);
    }

    /// Opening a stream for `operation` took `latency`.
    pub fn stream_open_latency(&self, operation: &str, latency: Duration) {
        self.inner
            .stream_open_seconds
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// A stream ended abnormally; `reason` is a short fixed word from code.
    pub fn stream_reset(&self, reason: &str) {
        self.inner
            .stream_resets
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A keepalive ping came back after `rtt`.
    pub fn ping_rtt(&self, rtt: Duration) {
        self.inner.ping_rtt.observe(rtt.as_secs_f64());
    }

    /// The edge is dialling the cloud again after its tunnel ended.
    pub fn reconnect(&self) {
        self.inner.reconnects.inc();
    }

    /// A pod's node was looked up: `source` `cache` or `api`, `result` `found`, `not_found`,
    /// `unscheduled` or `error` (fixed words from code).
    pub fn pod_lookup(&self, source: &str, result: &str) {
        self.inner
            .pod_lookups
            .get_or_create(&LookupLabels {
                source: source.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// The pod cache holds `pods` pods and its watch is connected (`watching`).
    pub fn pod_cache(&self, pods: usize, watching: bool) {
        self.inner
            .pod_cache_pods
            .set(i64::try_from(pods).unwrap_or(i64::MAX));
        self.inner.pod_watch_up.set(i64::from(watching));
    }

    /// Records how many tasks are alive on the tokio runtime this is called from; outside a
    /// runtime it records nothing.
    ///
    /// The admin server calls it on every scrape of `/metrics`, so the value is current
    /// rather than as old as a sampling interval: an operator (or a leak test) comparing two
    /// scrapes compares two moments, not two stale samples.
    pub fn sample_runtime(&self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let tasks = handle.metrics().num_alive_tasks();
            self.inner
                .runtime_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
    }

    /// Records a sample of the replica directory: gauges are set, counters advance to the
    /// sample's totals.
    pub fn directory(&self, sample: DirectorySample) {
        let gauge = |g: &Gauge, n: usize| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        gauge(&self.inner.directory_nodes, sample.nodes);
        gauge(&self.inner.directory_local_claims, sample.local_claims);
        gauge(&self.inner.directory_pending, sample.pending);
        self.inner.directory_up.set(i64::from(sample.up));
        let advance = |c: &Counter, total: u64| {
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        };
        advance(&self.inner.directory_etcd_errors, sample.etcd_errors);
        advance(&self.inner.directory_lease_losses, sample.lease_losses);
        advance(&self.inner.directory_superseded, sample.superseded);
    }

    /// A request went between replicas with `outcome` (a fixed word from code).
    pub fn forwarded(&self, outcome: &str) {
        self.inner
            .forwarded
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// An egress CONNECT was answered with `result` (a fixed word from code).
    pub fn egress(&self, result: &str) {
        self.inner
            .egress_connects
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The edge's tunnel came up (`true`) or went down (`false`).
    pub fn tunnel_up(&self, up: bool) {
        self.inner.tunnel_up.set(i64::from(up));
    }

    /// Every family as OpenMetrics text, ending with `# EOF`.
    ///
    /// Encoding into a `String` only fails if a label encoder does, which ours never do;
    /// should it happen anyway, it is logged and the text written so far is returned.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        if let Err(e) = self.encode_into(&mut text) {
            warn!(error = %e, "metrics could not be encoded");
        }
        text
    }

    /// Every family as OpenMetrics text, or the encoder's error.
    pub(crate) fn try_encode(&self) -> Result<String, Error> {
        let mut text = String::with_capacity(8 * 1024);
        self.encode_into(&mut text)?;
        Ok(text)
    }

    fn encode_into(&self, text: &mut String) -> Result<(), Error> {
        prometheus_client::encoding::text::encode(text, &self.inner.registry)?;
        Ok(())
    }
}

impl TunnelObserver for Metrics {
    fn refused(&self, reason: Refusal) {
        self.inner
            .handshakes_refused
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    fn handshake_started(&self) {
        let now = self.inner.handshakes.inc() + 1;
        self.inner
            .handshakes_peak
            .inner()
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn handshake_ended(&self) {
        self.inner.handshakes.dec();
    }

    fn session_started(&self, _session: &Session) {
        self.inner.sessions.inc();
    }

    fn session_ended(&self, _session: &Session) {
        self.inner.sessions.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use tunnel_session::{Dialect, NodeIdentity, Role, SessionConfig, SessionParams};

    fn session(name: &str) -> Session {
        let (io, _peer) = tokio::io::duplex(1024);
        let params = SessionParams {
            role: Role::Cloud,
            dialect: Dialect::KubeEdge,
            node: NodeIdentity {
                name: name.into(),
                ip: None,
            },
            config: std::sync::Arc::new(SessionConfig::default()),
            peer_window: 0,
            leftover: Bytes::new(),
        };
        Session::establish(io, params).0
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn stream_families_carry_their_labels() {
        let metrics = Metrics::new();
        metrics.stream_opened("exec");
        metrics.stream_opened("exec");
        metrics.stream_opened("logs");
        metrics.stream_closed("exec", 10, 2048);
        metrics.stream_open_latency("logs", Duration::from_millis(3));
        metrics.stream_reset("stalled");
        let text = metrics.encode();
        for line in [
            "# TYPE tether_streams_open gauge",
            "# TYPE tether_streams counter",
            "# TYPE tether_stream_bytes counter",
            "# UNIT tether_stream_bytes bytes",
            "# TYPE tether_stream_open_seconds histogram",
            "# UNIT tether_stream_open_seconds seconds",
            "tether_streams_total{operation=\"exec\"} 2",
            "tether_streams_total{operation=\"logs\"} 1",
            "tether_streams_open{operation=\"exec\"} 1",
            "tether_streams_open{operation=\"logs\"} 1",
            "tether_stream_bytes_total{operation=\"exec\",direction=\"to_edge\"} 10",
            "tether_stream_bytes_total{operation=\"exec\",direction=\"from_edge\"} 2048",
            "tether_stream_open_seconds_count{operation=\"logs\"} 1",
            "tether_stream_open_seconds_bucket{le=\"0.001\",operation=\"logs\"} 0",
            "tether_stream_open_seconds_bucket{le=\"0.004\",operation=\"logs\"} 1",
            "tether_stream_resets_total{reason=\"stalled\"} 1",
            "# EOF",
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn edge_families_record() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        assert!(has_line(&text, "tether_tunnel_up 0"), "{text}");
        assert!(has_line(&text, "tether_reconnects_total 0"), "{text}");
        metrics.reconnect();
        metrics.tunnel_up(true);
        metrics.ping_rtt(Duration::from_micros(700));
        let text = metrics.encode();
        for line in [
            "tether_tunnel_up 1",
            "tether_reconnects_total 1",
            "# TYPE tether_ping_rtt_seconds histogram",
            "tether_ping_rtt_seconds_count 1",
            "tether_ping_rtt_seconds_bucket{le=\"0.0005\"} 0",
            "tether_ping_rtt_seconds_bucket{le=\"0.001\"} 1",
            "tether_ping_rtt_seconds_bucket{le=\"8.192\"} 1",
            "tether_ping_rtt_seconds_bucket{le=\"+Inf\"} 1",
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
        metrics.tunnel_up(false);
        assert!(has_line(&metrics.encode(), "tether_tunnel_up 0"));
    }

    #[test]
    fn runtime_tasks_are_sampled_inside_a_runtime_only() {
        let metrics = Metrics::new();
        metrics.sample_runtime();
        assert!(has_line(&metrics.encode(), "tether_runtime_tasks 0"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let parked = tokio::spawn(async move {
                let _ = stopped.await;
            });
            metrics.sample_runtime();
            assert!(has_line(&metrics.encode(), "tether_runtime_tasks 1"));
            stop.send(()).unwrap();
            parked.await.unwrap();
            metrics.sample_runtime();
            assert!(has_line(&metrics.encode(), "tether_runtime_tasks 0"));
        });
    }

    #[test]
    fn tunnel_observer_counts_sessions_and_refusals() {
        let metrics = Metrics::new();
        let observer: Arc<dyn TunnelObserver> = Arc::new(metrics.clone());
        let text = metrics.encode();
        for reason in [
            "tls",
            "bad_request",
            "identity",
            "ip_conflict",
            "timeout",
            "source_limit",
        ] {
            let line = format!("tether_handshakes_refused_total{{reason=\"{reason}\"}} 0");
            assert!(has_line(&text, &line), "missing {line:?} in\n{text}");
        }
        assert!(has_line(&text, "tether_sessions 0"), "{text}");

        let a = session("edge-1");
        let b = session("edge-2");
        observer.session_started(&a);
        observer.session_started(&b);
        observer.refused(Refusal::Identity);
        observer.refused(Refusal::Tls);
        observer.refused(Refusal::Tls);
        let text = metrics.encode();
        for line in [
            "# TYPE tether_sessions gauge",
            "tether_sessions 2",
            "# TYPE tether_handshakes_refused counter",
            "tether_handshakes_refused_total{reason=\"tls\"} 2",
            "tether_handshakes_refused_total{reason=\"identity\"} 1",
            "tether_handshakes_refused_total{reason=\"ip_conflict\"} 0",
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
        observer.handshake_started();
        observer.handshake_started();
        observer.handshake_ended();
        observer.handshake_started();
        observer.handshake_ended();
        let text = metrics.encode();
        assert!(has_line(&text, "tether_handshakes 1"), "{text}");
        assert!(has_line(&text, "tether_handshakes_peak 2"), "{text}");
        observer.session_ended(&a);
        assert!(has_line(&metrics.encode(), "tether_sessions 1"));
        observer.session_ended(&b);
        assert!(has_line(&metrics.encode(), "tether_sessions 0"));
    }
}
