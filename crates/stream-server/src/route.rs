//! The kubelet API routes the stream server relays, and nothing else.
//!
//! The table follows the kubelet's own routes (spec 3.1 and 5.2), with port-forward added:
//! stock KubeEdge edges carry it as an EXEC_CONNECT whose URL is the `/portForward` path.

use http::Method;
use tunnel_session::ConnectKind;

/// A kubelet operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET /containerLogs/{ns}/{pod}/{container}`.
    Logs,
    /// `/exec/{ns}/{pod}[/{uid}]/{container}`, GET or POST, upgraded.
    Exec,
    /// `/attach/{ns}/{pod}[/{uid}]/{container}`, GET or POST, upgraded.
    Attach,
    /// `/portForward/{ns}/{pod}[/{uid}]`, GET or POST, upgraded.
    PortForward,
    /// `/stats/summary` (GET, POST) and the other `/stats/…` paths (GET).
    Stats,
    /// `/metrics`, `/metrics/cadvisor`, `/metrics/resource`, `/metrics/probes` (GET).
    Metrics,
}

impl Operation {
    /// The connect message kind that carries this operation.
    pub fn connect_kind(self) -> ConnectKind {
        match self {
            Operation::Logs => ConnectKind::Logs,
            Operation::Exec | Operation::PortForward => ConnectKind::Exec,
            Operation::Attach => ConnectKind::Attach,
            Operation::Stats | Operation::Metrics => ConnectKind::Metric,
        }
    }

    /// True for the operations that switch protocols (SPDY or WebSocket).
    pub fn is_upgrade(self) -> bool {
        matches!(
            self,
            Operation::Exec | Operation::Attach | Operation::PortForward
        )
    }

    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Logs => "logs",
            Operation::Exec => "exec",
            Operation::Attach => "attach",
            Operation::PortForward => "portforward",
            Operation::Stats => "stats",
            Operation::Metrics => "metrics",
        }
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

/// Pod coordinates named by a logs, exec, attach or port-forward path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

/// The operation a method and path ask for, and the pod it names (if any).
pub fn classify(method: &Method, path: &str) -> Result<(Operation, Option<PodRef>), NoRoute> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = *method == Method::GET;
    let get_or_post = get || *method == Method::POST;
    let nonempty = |p: &[&str]| p.iter().all(|s| !s.is_empty());
    let pod = |p: &[&str]| PodRef {
        namespace: p[1].to_owned(),
        name: p[2].to_owned(),
    };
    let (op, allowed, pod_ref) = match parts.as_slice() {
        ["containerLogs", ..] if parts.len() == 4 && nonempty(&parts) => {
            (Operation::Logs, get, Some(pod(&parts)))
        }
        ["exec", ..] if (parts.len() == 4 || parts.len() == 5) && nonempty(&parts) => {
            (Operation::Exec, get_or_post, Some(pod(&parts)))
        }
        ["attach", ..] if (parts.len() == 4 || parts.len() == 5) && nonempty(&parts) => {
            (Operation::Attach, get_or_post, Some(pod(&parts)))
        }
        ["portForward", ..] if (parts.len() == 3 || parts.len() == 4) && nonempty(&parts) => {
            (Operation::PortForward, get_or_post, Some(pod(&parts)))
        }
        ["stats", "summary"] => (Operation::Stats, get_or_post, None),
        ["stats"] => (Operation::Stats, get, None),
        ["stats", ..] if nonempty(&parts) => (Operation::Stats, get, None),
        ["metrics"] | ["metrics", "cadvisor" | "resource" | "probes"] => {
            (Operation::Metrics, get, None)
        }
        _ => return Err(NoRoute::NotFound),
    };
    if allowed {
        Ok((op, pod_ref))
    } else {
        Err(NoRoute::MethodNotAllowed)
    }
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
