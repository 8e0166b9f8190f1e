//! Which node runs a pod, for the pod subresources (logs, exec, attach, port-forward).
//!
//! # How this fits
//!
//! kube-apiserver does not name the node reliably when it calls a kubelet for a pod: SPDY
//! upgrades and tunnelled port-forward keep the *client's* `Host` (spec kubeedge-stream.md
//! §5.1). So the relay asks a [`PodResolver`] for the pod's node before it looks at `Host`
//! (see [`crate::resolve`]). Stock cloudcore GETs the pod for every request; the Kubernetes
//! implementation here (`kube::KubePodResolver`, feature `k8s`, on by default) answers from a
//! watch-fed cache and GETs only on a miss.

use std::future::Future;
use std::pin::Pin;

use crate::error::Result;

#[cfg(feature = "k8s")]
pub mod kube;

/// Where a pod runs, as far as the Kubernetes API knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Scheduled on this node.
    Node(String),
    /// No such pod (or a name no pod can have).
    NotFound,
    /// The pod exists but no node has been chosen for it yet.
    Unscheduled,
}

/// Where an answer came from, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSource {
    /// The resolver's own memory (no API round trip).
    Cache,
    /// A request to the API.
    Api,
}

impl AnswerSource {
    /// A short fixed word for logs and metric labels: `cache` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerSource::Cache => "cache",
            AnswerSource::Api => "api",
        }
    }
}

/// A [`PodResolver`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAnswer {
    /// Where the pod runs.
    pub placement: Placement,
    /// Whether it cost an API round trip.
    pub source: AnswerSource,
}

/// The boxed future a [`PodResolver`] returns.
pub type PlacementFuture<'a> = Pin<Box<dyn Future<Output = Result<PodAnswer>> + Send + 'a>>;

/// Finds the node a pod is scheduled on.
pub trait PodResolver: Send + Sync + 'static {
    /// Where `namespace/pod` runs, or an error if the lookup itself failed (API unreachable,
    /// refused, too slow). Must answer within a bounded time.
    fn placement<'a>(&'a self, namespace: &'a str, pod: &'a str) -> PlacementFuture<'a>;
}
