//! The kubelet API routes the tunnel carries: which operation a request path names, which
//! methods that route admits, and which pod it is about.
//!
//! Both ends classify kubelet requests with this one table: the cloud the request it gets
//! from the apiserver, the edge the method and URL of a connect descriptor. It follows the
//! kubelet's own routes (spec 3.1 and 5.2) for container logs, exec, attach, stats and
//! metrics, with port-forward added: stock KubeEdge edges carry it as an `EXEC_CONNECT` whose
//! URL is the `/portForward` path (spec 3.6).
//!
//! The lookup is lexical. [`classify`] skips leading `/`s and finds no route for a path with
//! an empty segment, but it does not clean the path: `.` and `..` are read as names. The
//! kubelet's own HTTP mux redirects such paths instead of routing them, so a side that
//! replays requests against the kubelet refuses them itself (the edge does). What to answer
//! for an unknown path, a method the route does not admit, or a route a side does not serve
//! is each side's decision; this module only tells the cases apart.

/// A kubelet operation.
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
    /// `GET|POST /stats/summary`, and `GET` on `/stats` and every other `/stats/...` path.
    Stats,
    /// `GET /metrics`, `/metrics/cadvisor`, `/metrics/resource`, `/metrics/probes`.
    Metrics,
}

impl Operation {
    /// Name used in logs and metrics: `logs`, `exec`, `attach`, `portforward`, `stats` or
    /// `metrics`.
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

    /// True for the operations that switch protocols (SPDY or WebSocket) and are relayed as
    /// raw bytes.
    pub fn is_upgrade(self) -> bool {
        matches!(
            self,
            Operation::Exec | Operation::Attach | Operation::PortForward
        )
    }
}

/// Pod coordinates named by a logs, exec, attach or port-forward path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

/// The kubelet route a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The operation the route performs.
    pub operation: Operation,
    /// The pod the path names: always for logs, exec, attach and port-forward, never for
    /// stats and metrics.
    pub pod: Option<PodRef>,
    /// The methods the route admits.
    methods: Methods,
}

impl Route {
    /// True if the route admits `method`. HTTP methods are case-sensitive: `get` is not
    /// `GET`.
    pub fn allows(&self, method: &str) -> bool {
        match self.methods {
            Methods::Get => method == "GET",
            Methods::GetOrPost => method == "GET" || method == "POST",
        }
    }
}

/// The HTTP methods a route admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Methods {
    Get,
    GetOrPost,
}

/// The kubelet route `path` names, if any.
///
/// `path` is a decoded URL path, without the query. Leading `/`s are skipped; a path with
/// any other empty segment names no route.
pub fn classify(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.iter().any(|part| part.is_empty()) {
        return None;
    }
    let pod = |namespace: &str, name: &str| {
        Some(PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    };
    // Logs name `{ns}/{pod}/{container}`; exec and attach the same or with the pod's uid
    // before the container, `{ns}/{pod}/{uid}/{container}`; port-forward `{ns}/{pod}`, with
    // or without the uid after it.
    let (operation, methods, pod) = match parts.as_slice() {
        ["containerLogs", ns, name, _] => (Operation::Logs, Methods::Get, pod(ns, name)),
        ["exec", ns, name, _] | ["exec", ns, name, _, _] => {
            (Operation::Exec, Methods::GetOrPost, pod(ns, name))
        }
        ["attach", ns, name, _] | ["attach", ns, name, _, _] => {
            (Operation::Attach, Methods::GetOrPost, pod(ns, name))
        }
        ["portForward", ns, name] | ["portForward", ns, name, _] => {
            (Operation::PortForward, Methods::GetOrPost, pod(ns, name))
        }
        ["stats", "summary"] => (Operation::Stats, Methods::GetOrPost, None),
        ["stats", ..] => (Operation::Stats, Methods::Get, None),
        ["metrics"] | ["metrics", "cadvisor" | "resource" | "probes"] => {
            (Operation::Metrics, Methods::Get, None)
        }
        _ => return None,
    };
    Some(Route {
        operation,
        pod,
        methods,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn kubelet_routes() {
        use Operation as Op;
        // (path, operation, admits GET, admits POST)
        let routes: &[(&str, Operation, bool, bool)] = &[
            ("/containerLogs/ns/pod/c", Op::Logs, true, false),
            ("/exec/ns/pod/c", Op::Exec, true, true),
            ("/exec/ns/pod/uid/c", Op::Exec, true, true),
            ("/attach/ns/pod/c", Op::Attach, true, true),
            ("/attach/ns/pod/uid/c", Op::Attach, true, true),
            ("/portForward/ns/pod", Op::PortForward, true, true),
            ("/portForward/ns/pod/uid", Op::PortForward, true, true),
            ("/stats/summary", Op::Stats, true, true),
            ("/stats", Op::Stats, true, false),
            ("/stats/container", Op::Stats, true, false),
            ("/stats/pod/c", Op::Stats, true, false),
            ("/stats/ns/pod/uid/c", Op::Stats, true, false),
            ("/stats/summary/x", Op::Stats, true, false),
            ("/metrics", Op::Metrics, true, false),
            ("/metrics/cadvisor", Op::Metrics, true, false),
            ("/metrics/resource", Op::Metrics, true, false),
            ("/metrics/probes", Op::Metrics, true, false),
            // leading slashes are skipped
            ("//exec/ns/pod/c", Op::Exec, true, true),
            ("metrics", Op::Metrics, true, false),
            // the path is not cleaned: dot segments are names
            ("/exec/ns/../c", Op::Exec, true, true),
            ("/stats/../pods", Op::Stats, true, false),
        ];
        for &(path, operation, get, post) in routes {
            let route = classify(path).unwrap_or_else(|| panic!("{path} names no route"));
            assert_eq!(route.operation, operation, "{path}");
            assert_eq!(route.allows("GET"), get, "GET {path}");
            assert_eq!(route.allows("POST"), post, "POST {path}");
            for method in ["PUT", "DELETE", "HEAD", "get", "post", ""] {
                assert!(!route.allows(method), "{method} {path}");
            }
        }
        for path in [
            "",
            "/",
            "/pods",
            "/run/ns/pod/c",
            "/healthz",
            "/configz",
            "/logs/syslog",
            "/debug/pprof/profile",
            "/containerLogs/ns/pod",
            "/containerLogs/ns/pod/c/extra",
            "/containerLogs/ns//c",
            "/containerLogs/ns/pod/c/",
            "/exec/ns/pod",
            "/exec/ns/pod/uid/c/x",
            "/attach/ns/pod",
            "/attach/ns/pod/uid/c/x",
            "/portForward/ns",
            "/portForward/ns/pod/uid/x",
            "/stats/",
            "/stats//summary",
            "/metrics/",
            "/metrics/slis",
            "/metrics/cadvisor/x",
            "/Metrics",
        ] {
            assert_eq!(classify(path), None, "{path}");
        }
    }

    #[test]
    fn pods_named_by_paths() {
        let pod = |path| classify(path).and_then(|route| route.pod);
        let named = |namespace: &str, name: &str| {
            Some(PodRef {
                namespace: namespace.into(),
                name: name.into(),
            })
        };
        assert_eq!(
            pod("/containerLogs/kube-system/coredns/dns"),
            named("kube-system", "coredns")
        );
        assert_eq!(pod("/exec/ns/p/c"), named("ns", "p"));
        assert_eq!(
            pod("/exec/kube-system/coredns/uid-1/dns"),
            named("kube-system", "coredns")
        );
        assert_eq!(pod("/attach/ns/p/uid/c"), named("ns", "p"));
        assert_eq!(pod("/portForward/ns/p"), named("ns", "p"));
        assert_eq!(pod("/portForward/ns/p/uid"), named("ns", "p"));
        assert_eq!(pod("/stats/ns/p/uid/c"), None);
        assert_eq!(pod("/metrics"), None);
    }

    #[test]
    fn names_and_upgrades() {
        use Operation as Op;
        let all = [
            (Op::Logs, "logs", false),
            (Op::Exec, "exec", true),
            (Op::Attach, "attach", true),
            (Op::PortForward, "portforward", true),
            (Op::Stats, "stats", false),
            (Op::Metrics, "metrics", false),
        ];
        for (op, name, upgrade) in all {
            assert_eq!(op.as_str(), name);
            assert_eq!(op.is_upgrade(), upgrade, "{name}");
        }
    }

    proptest! {
        /// Any path classifies without panicking, leading slashes do not matter, and a route
        /// never contains an empty segment.
        #[test]
        fn classify_is_total(
            segments in prop::collection::vec(
                "containerLogs|exec|attach|portForward|stats|summary|metrics|cadvisor|\\.\\.|[a-z]{0,2}",
                0..7,
            ),
        ) {
            let path = segments.join("/");
            let route = classify(&path);
            prop_assert_eq!(&route, &classify(&format!("/{path}")));
            prop_assert_eq!(&route, &classify(&format!("//{path}")));
            if route.is_some() {
                let rest = path.trim_start_matches('/');
                prop_assert!(rest.split('/').all(|s| !s.is_empty()), "{}", path);
            }
        }
    }
}
