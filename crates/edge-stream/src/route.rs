//! Which kubelet operation a stream asks for, and whether the edge serves it.
//!
//! A stock KubeEdge edge replays whatever URL the cloud sends. We only replay the kubelet's
//! real routes ([`stream_proto::kubelet`], spec 3.1, 5.2), written as the kubelet would route
//! them, and only when the stream's connect kind fits the route: a LOGS_CONNECT may only read
//! container logs, a METRIC_CONNECT only stats and metrics, an EXEC_CONNECT exec or
//! port-forward (KubeEdge carries port-forward as an exec, spec 3.6), an ATTACH_CONNECT only
//! attach. Everything else is refused with the status the cloud should answer: 404 unknown
//! path, 405 wrong method, 400 kind mismatch.

use std::fmt;

use stream_proto::kubelet;
use tunnel_session::ConnectKind;

/// A kubelet operation the edge can serve.
///
/// Stats and metrics are one operation here: one connect kind carries them and one switch
/// ([`Operations::metrics`](crate::Operations::metrics)) governs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET /containerLogs/{ns}/{pod}/{container}`.
    Logs,
    /// `GET|POST /exec/{ns}/{pod}[/{uid}]/{container}`, upgraded.
    Exec,
    /// `GET|POST /attach/{ns}/{pod}[/{uid}]/{container}`, upgraded.
    Attach,
    /// `GET|POST /portForward/{ns}/{pod}[/{uid}]`, upgraded.
    PortForward,
    /// `GET|POST /stats/summary`, `GET /stats[/...]`, `GET /metrics`, `/metrics/cadvisor`,
    /// `/metrics/resource`, `/metrics/probes`.
    Metrics,
}

impl Operation {
    /// Name used in logs and refusal messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Logs => "logs",
            Operation::Exec => "exec",
            Operation::Attach => "attach",
            Operation::PortForward => "portforward",
            Operation::Metrics => "metrics",
        }
    }

    /// True for the operations that switch protocols and are relayed as raw bytes.
    pub fn is_upgrade(self) -> bool {
        matches!(
            self,
            Operation::Exec | Operation::Attach | Operation::PortForward
        )
    }

    /// True if a stream of `kind` may carry this operation.
    fn fits(self, kind: ConnectKind) -> bool {
        match kind {
            ConnectKind::Logs => self == Operation::Logs,
            ConnectKind::Metric => self == Operation::Metrics,
            ConnectKind::Exec => matches!(self, Operation::Exec | Operation::PortForward),
            ConnectKind::Attach => self == Operation::Attach,
        }
    }
}

impl From<kubelet::Operation> for Operation {
    /// The edge's operation for a kubelet one: stats become [`Operation::Metrics`].
    fn from(operation: kubelet::Operation) -> Operation {
        match operation {
            kubelet::Operation::Logs => Operation::Logs,
            kubelet::Operation::Exec => Operation::Exec,
            kubelet::Operation::Attach => Operation::Attach,
            kubelet::Operation::PortForward => Operation::PortForward,
            kubelet::Operation::Stats | kubelet::Operation::Metrics => Operation::Metrics,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the edge will not serve: the status the cloud should answer with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// HTTP status (400, 403, 404, 405, 502 ...).
    pub(crate) status: u16,
    /// Human-readable reason, shown in the cloud's error body and in logs.
    pub(crate) reason: String,
}

impl Refusal {
    pub(crate) fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// Classifies a request carried by a stream of `kind`.
///
/// `method` is the descriptor's `method` (`None` means GET, as KubeEdge's logs and metrics
/// descriptors carry none); `path` is the decoded URL path.
pub(crate) fn classify(
    kind: ConnectKind,
    method: Option<&str>,
    path: &str,
) -> Result<Operation, Refusal> {
    let Some(route) = kubelet::classify(path).filter(|_| routed_as_written(path)) else {
        return Err(Refusal::new(
            404,
            format!("{path} is not a kubelet path this edge serves"),
        ));
    };
    let method = method.unwrap_or("GET");
    if !route.allows(method) {
        return Err(Refusal::new(
            405,
            format!("method {method} is not allowed for {path}"),
        ));
    }
    let operation = Operation::from(route.operation);
    if !operation.fits(kind) {
        return Err(Refusal::new(
            400,
            format!("{path} ({operation}) cannot be served on a {kind} stream"),
        ));
    }
    Ok(operation)
}

/// True if `path` is one `/` followed by segments that are neither empty, `.` nor `..`.
///
/// The route table skips leading slashes and reads dot segments as names, but the kubelet
/// would clean or redirect such a path to some other route than the one checked, and they
/// never name a pod.
fn routed_as_written(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(kind: ConnectKind, method: Option<&str>, path: &str) -> Result<Operation, u16> {
        classify(kind, method, path).map_err(|r| r.status)
    }

    #[test]
    fn kubelet_routes_by_kind_and_method() {
        use ConnectKind::{Attach, Exec, Logs, Metric};
        use Operation as Op;
        type Case = (
            ConnectKind,
            Option<&'static str>,
            &'static str,
            Result<Operation, u16>,
        );
        let table: &[Case] = &[
            // logs
            (Logs, None, "/containerLogs/ns/pod/c", Ok(Op::Logs)),
            (Logs, Some("GET"), "/containerLogs/ns/pod/c", Ok(Op::Logs)),
            (Logs, Some("POST"), "/containerLogs/ns/pod/c", Err(405)),
            (Logs, None, "/containerLogs/ns/pod", Err(404)),
            (Logs, None, "/containerLogs/ns/pod/c/extra", Err(404)),
            (Logs, None, "/containerLogs/ns//c", Err(404)),
            (Logs, None, "/exec/ns/pod/c", Err(400)),
            (Logs, None, "/metrics", Err(400)),
            // exec, with and without the pod uid
            (Exec, Some("POST"), "/exec/ns/pod/c", Ok(Op::Exec)),
            (Exec, Some("GET"), "/exec/ns/pod/uid/c", Ok(Op::Exec)),
            (Exec, None, "/exec/ns/pod/c", Ok(Op::Exec)),
            (Exec, Some("PUT"), "/exec/ns/pod/c", Err(405)),
            (Exec, Some("post"), "/exec/ns/pod/c", Err(405)),
            (Exec, Some("POST"), "/exec/ns/pod", Err(404)),
            (Exec, Some("POST"), "/exec/ns/pod/uid/c/x", Err(404)),
            (Exec, Some("POST"), "/attach/ns/pod/c", Err(400)),
            (Exec, None, "/containerLogs/ns/pod/c", Err(400)),
            // port-forward rides on an exec stream (spec 3.6)
            (
                Exec,
                Some("POST"),
                "/portForward/ns/pod",
                Ok(Op::PortForward),
            ),
            (
                Exec,
                Some("GET"),
                "/portForward/ns/pod/uid",
                Ok(Op::PortForward),
            ),
            (Exec, Some("POST"), "/portForward/ns", Err(404)),
            (Attach, Some("POST"), "/portForward/ns/pod", Err(400)),
            // attach
            (Attach, Some("POST"), "/attach/ns/pod/c", Ok(Op::Attach)),
            (Attach, Some("GET"), "/attach/ns/pod/uid/c", Ok(Op::Attach)),
            (Attach, Some("DELETE"), "/attach/ns/pod/c", Err(405)),
            (Attach, Some("POST"), "/exec/ns/pod/c", Err(400)),
            // stats and metrics
            (Metric, None, "/stats/summary", Ok(Op::Metrics)),
            (Metric, Some("POST"), "/stats/summary", Ok(Op::Metrics)),
            (Metric, None, "/stats", Ok(Op::Metrics)),
            (Metric, None, "/stats/container", Ok(Op::Metrics)),
            (Metric, None, "/stats/ns/pod/uid/c", Ok(Op::Metrics)),
            (Metric, Some("POST"), "/stats/container", Err(405)),
            (Metric, None, "/metrics", Ok(Op::Metrics)),
            (Metric, None, "/metrics/cadvisor", Ok(Op::Metrics)),
            (Metric, None, "/metrics/resource", Ok(Op::Metrics)),
            (Metric, None, "/metrics/probes", Ok(Op::Metrics)),
            (Metric, Some("POST"), "/metrics", Err(405)),
            (Metric, None, "/metrics/slis", Err(404)),
            (Metric, None, "/metrics/", Err(404)),
            (Metric, None, "/containerLogs/ns/pod/c", Err(400)),
            (Exec, None, "/metrics", Err(400)),
            // not kubelet routes the edge serves
            (Metric, None, "/", Err(404)),
            (Metric, None, "", Err(404)),
            (Metric, None, "metrics", Err(404)),
            (Metric, None, "/pods", Err(404)),
            (Metric, None, "/healthz", Err(404)),
            (Metric, None, "/configz", Err(404)),
            (Metric, None, "/debug/pprof/profile", Err(404)),
            (Exec, Some("POST"), "/run/ns/pod/c", Err(404)),
            (Logs, None, "/logs/syslog", Err(404)),
            (Metric, None, "/stats/../pods", Err(404)),
            (Metric, None, "/stats/./summary", Err(404)),
            (Logs, None, "/containerLogs/ns/../../pods", Err(404)),
        ];
        for (kind, method, path, want) in table {
            assert_eq!(
                status(*kind, *method, path),
                *want,
                "{kind} {method:?} {path}"
            );
        }
    }

    #[test]
    fn refusals_explain_themselves() {
        let r = classify(ConnectKind::Logs, None, "/exec/ns/pod/c").unwrap_err();
        assert_eq!(
            r.reason,
            "/exec/ns/pod/c (exec) cannot be served on a logs stream"
        );
        let r = classify(ConnectKind::Exec, Some("PUT"), "/exec/ns/pod/c").unwrap_err();
        assert_eq!(r.reason, "method PUT is not allowed for /exec/ns/pod/c");
        let r = classify(ConnectKind::Metric, None, "/pods").unwrap_err();
        assert_eq!(r.reason, "/pods is not a kubelet path this edge serves");
    }

    #[test]
    fn upgrades() {
        assert!(Operation::Exec.is_upgrade());
        assert!(Operation::Attach.is_upgrade());
        assert!(Operation::PortForward.is_upgrade());
        assert!(!Operation::Logs.is_upgrade());
        assert!(!Operation::Metrics.is_upgrade());
    }
}
