//! Which node's session serves a request, in the order the way kube-apiserver calls us
//! demands.
//!
//! # How this fits
//!
//! kube-apiserver names the node reliably only in requests it builds itself (logs, the node
//! proxy, exec/attach it translated from WebSocket). SPDY exec/attach/port-forward and
//! tunnelled port-forward reach us with the *client's* `Host` (spec kubeedge-stream.md §5.1).
//! So for pod subresources (logs, exec, attach, port-forward) the order is:
//!
//! 1. the node proxy path (`X-Forwarded-Uri: /api/v1/nodes/<node>/proxy/…`);
//! 2. the pod's node, when a [`PodResolver`] is configured — a `Host` that names no node then
//!    never matters;
//! 3. `Host` / `:authority` (a node name or IP).
//!
//! Node-level paths (stats, metrics) use 1 then 3. A connection opened for one node (an
//! egress CONNECT, see [`crate::egress`]) always uses that node. Each node is looked up in
//! this process's sessions first, then, with several replicas, in the replica directory,
//! which may name another replica to forward to. A lookup that fails (API unreachable)
//! falls through to `Host`; when that names no connected node either, the answer names both
//! reasons.

use http::{Request, StatusCode};
use tunnel_session::{NodeKey, Session, SessionDirectory};

use crate::forward::{RemoteHolder, ReplicaDirectory};
use crate::node::{node_of_host, node_of_proxy_path};
use crate::observe::RelayObserver;
use crate::pods::{Placement, PodResolver};
use crate::route::PodRef;

/// Where a request's node is served.
pub(crate) enum Target {
    /// By a session of this process.
    Local(Session),
    /// By another replica, according to the replica directory.
    Remote(RemoteHolder),
}

/// Where to look for a node: this process's sessions, then (with several replicas) the
/// replica directory.
pub(crate) struct Lookup<'a> {
    pub(crate) sessions: &'a dyn SessionDirectory,
    pub(crate) replicas: Option<&'a dyn ReplicaDirectory>,
}

impl Lookup<'_> {
    pub(crate) fn locate(&self, key: NodeKey<'_>) -> Option<Target> {
        if let Some(session) = self.sessions.find(key) {
            return Some(Target::Local(session));
        }
        self.replicas?.locate(key).map(Target::Remote)
    }

    fn not_connected(&self, node: &str, why: &str) -> Unresolved {
        let message = match self.replicas {
            None => format!(
                "no tunnel session for node {node}{why}: the node is not connected to this cloudstream"
            ),
            Some(replicas) => {
                let stale = replicas
                    .staleness()
                    .map(|reason| format!(" (the replica directory may be out of date: {reason})"))
                    .unwrap_or_default();
                format!(
                    "no tunnel session for node {node}{why}: the node is not connected to any cloudstream replica{stale}"
                )
            }
        };
        Unresolved {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
            reason: "no_session",
        }
    }
}

/// Why no session serves a request: the status and text the client gets, and the short word
/// the metrics record.
pub(crate) struct Unresolved {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) reason: &'static str,
}

/// Finds where a request's node is served; `pod` is the pod a pod subresource names and
/// `pinned` the node the connection was opened for (an egress CONNECT), which wins.
pub(crate) async fn resolve<B>(
    req: &Request<B>,
    pod: Option<&PodRef>,
    pinned: Option<&str>,
    lookup: &Lookup<'_>,
    pods: Option<&dyn PodResolver>,
    observer: &dyn RelayObserver,
) -> Result<Target, Unresolved> {
    let find = |node: &str| {
        lookup
            .locate(NodeKey::parse(node))
            .ok_or_else(|| lookup.not_connected(node, ""))
    };
    if let Some(node) = pinned {
        return find(node);
    }
    if let Some(node) = node_of_proxy_path(req) {
        return find(&node);
    }
    let host = node_of_host(req);
    let mut lookup_error = None;
    if let (Some(resolver), Some(pod)) = (pods, pod) {
        match resolver.placement(&pod.namespace, &pod.name).await {
            Ok(answer) => {
                let source = answer.source.as_str();
                match answer.placement {
                    Placement::Node(node) => {
                        observer.pod_lookup(source, "found");
                        return lookup.locate(NodeKey::Name(&node)).ok_or_else(|| {
                            lookup.not_connected(
                                &node,
                                &format!(" (pod {}/{} runs there)", pod.namespace, pod.name),
                            )
                        });
                    }
                    Placement::NotFound => {
                        observer.pod_lookup(source, "not_found");
                        return Err(Unresolved {
                            status: StatusCode::NOT_FOUND,
                            message: format!("pods \"{}\" not found", pod.name),
                            reason: "not_found",
                        });
                    }
                    Placement::Unscheduled => {
                        observer.pod_lookup(source, "unscheduled");
                        return Err(Unresolved {
                            status: StatusCode::BAD_REQUEST,
                            message: format!("pod {} does not have a host assigned", pod.name),
                            reason: "bad_request",
                        });
                    }
                }
            }
            Err(e) => {
                observer.pod_lookup("api", "error");
                tracing::debug!(error = %e, "pod lookup failed; trying the Host header");
                lookup_error = Some((pod, e));
            }
        }
    }
    match (host, lookup_error) {
        (Some(host), None) => find(&host),
        (Some(host), Some((pod, error))) => {
            lookup
                .locate(NodeKey::parse(&host))
                .ok_or_else(|| Unresolved {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: format!(
                        "cannot find the node of pod {}/{}: {error}; and the Host header ({host}) names no node connected to this cloudstream",
                        pod.namespace, pod.name
                    ),
                    reason: "no_session",
                })
        }
        (None, Some((pod, error))) => Err(Unresolved {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "cannot find the node of pod {}/{}: {error}; and the request has no Host header",
                pod.namespace, pod.name
            ),
            reason: "no_session",
        }),
        (None, None) => Err(Unresolved {
            status: StatusCode::BAD_REQUEST,
            message: "the request names no node (no Host header or node proxy path)".into(),
            reason: "bad_request",
        }),
    }
}
