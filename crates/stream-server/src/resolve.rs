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
//! Node-level paths (stats, metrics) use 1 then 3. A lookup that fails (API unreachable)
//! falls through to `Host`; when that names no connected node either, the answer names both
//! reasons.

use http::{Request, StatusCode};
use tunnel_session::{NodeKey, Session, SessionDirectory};

use crate::node::{node_of_host, node_of_proxy_path};
use crate::observe::RelayObserver;
use crate::pods::{Placement, PodResolver};
use crate::route::PodRef;

/// A request's node, and its session.
pub(crate) struct Target {
    pub(crate) session: Session,
}

/// Why no session serves a request: the status and text the client gets, and the short word
/// the metrics record.
pub(crate) struct Unresolved {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) reason: &'static str,
}

impl Unresolved {
    fn not_connected(node: &str, why: &str) -> Unresolved {
        Unresolved {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "no tunnel session for node {node}{why}: the node is not connected to this cloudstream"
            ),
            reason: "no_session",
        }
    }
}

/// Finds the session for a request; `pod` is the pod a pod subresource names.
pub(crate) async fn resolve<B>(
    req: &Request<B>,
    pod: Option<&PodRef>,
    directory: &dyn SessionDirectory,
    pods: Option<&dyn PodResolver>,
    observer: &dyn RelayObserver,
) -> Result<Target, Unresolved> {
    let find = |node: &str| directory.find(NodeKey::parse(node));
    if let Some(node) = node_of_proxy_path(req) {
        return find(&node)
            .map(|session| Target { session })
            .ok_or_else(|| Unresolved::not_connected(&node, ""));
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
                        return directory
                            .find(NodeKey::Name(&node))
                            .map(|session| Target { session })
                            .ok_or_else(|| {
                                Unresolved::not_connected(
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
        (Some(host), None) => find(&host)
            .map(|session| Target { session })
            .ok_or_else(|| Unresolved::not_connected(&host, "")),
        (Some(host), Some((pod, error))) => {
            find(&host)
                .map(|session| Target { session })
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
