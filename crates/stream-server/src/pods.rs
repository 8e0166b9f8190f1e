//! Which node runs a pod, for requests whose `Host` names no connected node.
//!
//! kube-apiserver addresses logs, exec, attach and port-forward requests to the pod's node,
//! so the `Host` header normally finds the session. Behind DNAT, or when several nodes share
//! an address (KubeEdge #1800), it does not; then the pod named in the path is looked up.
//! Stock cloudcore looks up every such request; we only fall back to it.
//!
//! With the `k8s` feature, `kube::KubePodResolver` implements [`PodResolver`] against the
//! Kubernetes API, with a small cache.

use std::future::Future;
use std::pin::Pin;

use crate::error::Result;

#[cfg(feature = "k8s")]
pub mod kube;

/// The boxed future a [`PodResolver`] returns.
pub type NodeFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<String>>> + Send + 'a>>;

/// Finds the node a pod is scheduled on.
pub trait PodResolver: Send + Sync + 'static {
    /// The node name running `namespace/pod`, `Ok(None)` if the pod does not exist or is not
    /// scheduled, or an error if the lookup itself failed.
    fn node_of_pod<'a>(&'a self, namespace: &'a str, pod: &'a str) -> NodeFuture<'a>;
}
