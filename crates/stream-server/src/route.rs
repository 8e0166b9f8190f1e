//! The kubelet API routes the stream server relays, and nothing else.
//!
//! The table is [`stream_proto::kubelet`], the one the edge checks too (spec 3.1 and 5.2,
//! with port-forward added: stock KubeEdge edges carry it as an EXEC_CONNECT whose URL is the
//! `/portForward` path). This module fits it to the server: it takes the request's
//! [`Method`], tells a 404 from a 405, and names the connect kind each operation travels on.

use http::Method;
use tunnel_session::ConnectKind;

pub use stream_proto::kubelet::{Operation, PodRef};

/// The connect message kind that carries `operation`.
pub fn connect_kind(operation: Operation) -> ConnectKind {
    match operation {
        Operation::Logs => ConnectKind::Logs,
        Operation::Exec | Operation::PortForward => ConnectKind::Exec,
        Operation::Attach => ConnectKind::Attach,
        Operation::Stats | Operation::Metrics => ConnectKind::Metric,
    }
}

/// A request that matches no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No such path: 404.
    NotFound,
    /// The path exists but not for this method: 405.
    MethodNotAllowed,
}

/// The operation a method and path ask for, and the pod it names (if any).
///
/// Leading `/`s are skipped and `.` or `..` segments are taken as names (see
/// [`stream_proto::kubelet::classify`]); the edge refuses what its kubelet would not route.
pub fn classify(method: &Method, path: &str) -> Result<(Operation, Option<PodRef>), NoRoute> {
    let route = stream_proto::kubelet::classify(path).ok_or(NoRoute::NotFound)?;
    if !route.allows(method.as_str()) {
        return Err(NoRoute::MethodNotAllowed);
    }
    Ok((route.operation, route.pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_routes() {
        let ok = |m: Method, p: &str| classify(&m, p).map(|(op, _)| op);
        assert_eq!(
            ok(Method::GET, "/containerLogs/ns/p/c"),
            Ok(Operation::Logs)
        );
        assert_eq!(
            ok(Method::POST, "/containerLogs/ns/p/c"),
            Err(NoRoute::MethodNotAllowed)
        );
        assert_eq!(ok(Method::POST, "/exec/ns/p/c"), Ok(Operation::Exec));
        assert_eq!(ok(Method::GET, "/exec/ns/p/uid/c"), Ok(Operation::Exec));
        assert_eq!(
            ok(Method::PUT, "/exec/ns/p/c"),
            Err(NoRoute::MethodNotAllowed)
        );
        assert_eq!(
            ok(Method::POST, "/attach/ns/p/uid/c"),
            Ok(Operation::Attach)
        );
        assert_eq!(
            ok(Method::POST, "/portForward/ns/p"),
            Ok(Operation::PortForward)
        );
        assert_eq!(
            ok(Method::GET, "/portForward/ns/p/uid"),
            Ok(Operation::PortForward)
        );
        assert_eq!(ok(Method::POST, "/stats/summary"), Ok(Operation::Stats));
        assert_eq!(ok(Method::GET, "/stats/container"), Ok(Operation::Stats));
        assert_eq!(
            ok(Method::POST, "/stats/container"),
            Err(NoRoute::MethodNotAllowed)
        );
        for p in [
            "/metrics",
            "/metrics/cadvisor",
            "/metrics/resource",
            "/metrics/probes",
        ] {
            assert_eq!(ok(Method::GET, p), Ok(Operation::Metrics));
        }
        for p in [
            "/",
            "/run/ns/p/c",
            "/pods",
            "/metrics/slis",
            "/exec/ns/p",
            "/containerLogs/ns//c",
            "/configz",
        ] {
            assert_eq!(ok(Method::GET, p), Err(NoRoute::NotFound), "{p}");
        }
        let (_, pod) = classify(&Method::GET, "/exec/kube-system/coredns/uid-1/dns").unwrap();
        assert_eq!(
            pod,
            Some(PodRef {
                namespace: "kube-system".into(),
                name: "coredns".into()
            })
        );
    }
}
