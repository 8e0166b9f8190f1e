//! Connecting the libraries' observer hooks to [`Metrics`].
//!
//! `tunnel-session` reports handshakes and sessions through `TunnelObserver` (implemented in
//! [`crate::metrics`]); `stream-server` reports streams through `RelayObserver`
//! (implemented here). Round-trip times are not pushed by sessions; [`sample_rtt`] reads
//! them from the registry at a steady pace, which also keeps the histogram's rate
//! independent of how many pings happen to arrive.

use std::sync::Arc;
use std::time::Duration;

use stream_server::RelayObserver;
use stream_server::route::Operation;
use tokio_util::sync::CancellationToken;
use tunnel_session::Registry;

use crate::Metrics;

impl RelayObserver for Metrics {
    fn stream_opened(&self, operation: Operation, latency: Duration) {
        Metrics::stream_opened(self, operation.as_str());
        self.stream_open_latency(operation.as_str(), latency);
    }

    fn stream_closed(&self, operation: Operation, to_edge: u64, from_edge: u64) {
        Metrics::stream_closed(self, operation.as_str(), to_edge, from_edge);
    }

    fn stream_failed(&self, _operation: Operation, reason: &'static str) {
        self.stream_reset(reason);
    }

    fn pod_lookup(&self, source: &'static str, result: &'static str) {
        Metrics::pod_lookup(self, source, result);
    }

    fn forwarded(&self, outcome: &'static str) {
        Metrics::forwarded(self, outcome);
    }

    fn egress(&self, result: &'static str) {
        Metrics::egress(self, result);
    }
}

/// Records every live session's last ping round trip every `every`, until `shutdown`.
pub async fn sample_rtt(
    registry: Arc<Registry>,
    metrics: Metrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for session in registry.sessions() {
            if let Some(rtt) = session.stats().rtt() {
                metrics.ping_rtt(rtt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_events_land_in_the_families() {
        let metrics = Metrics::new();
        let observer: Arc<dyn RelayObserver> = Arc::new(metrics.clone());
        observer.stream_opened(Operation::Exec, Duration::from_millis(3));
        observer.stream_closed(Operation::Exec, 10, 20);
        observer.stream_failed(Operation::Logs, "no_session");
        observer.pod_lookup("cache", "found");
        metrics.pod_cache(12, true);
        observer.forwarded("unreachable");
        observer.egress("unknown_node");
        metrics.directory(crate::metrics::DirectorySample {
            nodes: 3,
            up: true,
            etcd_errors: 2,
            ..Default::default()
        });
        metrics.directory(crate::metrics::DirectorySample {
            nodes: 2,
            etcd_errors: 5,
            ..Default::default()
        });
        let text = metrics.encode();
        for line in [
            r#"tether_forwarded_requests_total{outcome="unreachable"} 1"#,
            r#"tether_forwarded_requests_total{outcome="ok"} 0"#,
            r#"tether_egress_connects_total{result="unknown_node"} 1"#,
            "tether_directory_nodes 2",
            "tether_directory_up 0",
            "tether_directory_etcd_errors_total 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            text.contains(r#"tether_pod_lookups_total{source="cache",result="found"} 1"#),
            "{text}"
        );
        assert!(text.contains("tether_pod_cache_pods 12"), "{text}");
        assert!(text.contains("tether_pod_watch_up 1"), "{text}");
        assert!(
            text.contains(r#"tether_streams_total{operation="exec"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_streams_open{operation="exec"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_stream_resets_total{reason="no_session"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("tether_stream_open_seconds_count{operation=\"exec\"} 1"),
            "{text}"
        );
    }
}
