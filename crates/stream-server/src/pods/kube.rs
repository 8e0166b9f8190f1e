//! A [`PodResolver`] that asks the Kubernetes API, with a small cache (feature `k8s`).
//!
//! # How this fits
//!
//! The relay asks a [`PodResolver`] for a pod's node only when the request's `Host` names no
//! connected node (DNAT, nodes sharing an address). [`KubePodResolver`] answers the way stock
//! cloudcore does, by GETting the pod (`GET /api/v1/namespaces/{ns}/pods/{name}`) and reading
//! `spec.nodeName`, but it remembers the answer: a pod never moves to another node during its
//! life, and cloudcore's one GET per logs/exec/attach request turns every kubelet request into
//! an apiserver request (an amplification the KubeEdge spec lists among its security gaps).
//! Only positive answers are cached, for at most [`DEFAULT_CACHE_TTL`]: an unscheduled pod may
//! be scheduled a moment later, and a pod deleted and re-created under the same name (a
//! StatefulSet replica) may land elsewhere, so the TTL bounds how long a stale node is used.
//! [`KubePodResolver::invalidate`] drops one entry early.
//!
//! The client is a plain [`kube::Client`]: build one yourself and pass it to
//! [`KubePodResolver::new`], or let [`KubePodResolver::infer`] (in-cluster service account or
//! `$KUBECONFIG`) or [`KubePodResolver::from_kubeconfig`] build it. TLS is rustls with the ring
//! provider, like the rest of the workspace. kube builds its rustls config on the process-default
//! provider, which rustls picks from its crate features; ring is the only one compiled in. Should
//! another provider (aws-lc-rs) ever enter the build, install ring with
//! `rustls::crypto::CryptoProvider::install_default` at start-up, or kube's TLS setup panics.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Api, Client, Config};
use k8s_openapi::api::core::v1::Pod;

use super::{NodeFuture, PodResolver};
use crate::error::{Error, Result};

/// How many pods [`KubePodResolver`] remembers by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

/// How long [`KubePodResolver`] trusts a cached pod → node answer by default.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);

/// How long one pod GET may take by default before the lookup fails.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds a pod's node by GETting the pod from the Kubernetes API, caching the answers.
///
/// Cheap to share behind an `Arc`: the cache is behind a short-lived mutex that is never held
/// across an API call. Two concurrent misses for the same pod both GET it.
pub struct KubePodResolver {
    client: Client,
    capacity: usize,
    ttl: Duration,
    timeout: Duration,
    cache: Mutex<HashMap<PodKey, Cached>>,
}

/// `(namespace, pod name)`.
type PodKey = (String, String);

/// One cached answer.
struct Cached {
    node: String,
    at: Instant,
}

impl KubePodResolver {
    /// A resolver using `client`, with [`DEFAULT_CACHE_CAPACITY`], [`DEFAULT_CACHE_TTL`] and
    /// [`DEFAULT_LOOKUP_TIMEOUT`].
    pub fn new(client: Client) -> Self {
        Self {
            client,
            capacity: DEFAULT_CACHE_CAPACITY,
            ttl: DEFAULT_CACHE_TTL,
            timeout: DEFAULT_LOOKUP_TIMEOUT,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A resolver for the current context of the kubeconfig file at `path`.
    ///
    /// Must be called within a tokio runtime (the client spawns a task). Fails with
    /// [`Error::PodLookup`] if the file cannot be read or does not describe a usable cluster.
    pub async fn from_kubeconfig(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let kubeconfig = Kubeconfig::read_from(path)
            .map_err(|e| Error::PodLookup(format!("kubeconfig {}: {e}", path.display())))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::PodLookup(format!("kubeconfig {}: {e}", path.display())))?;
        Self::from_config(config)
    }

    /// A resolver configured the way `kubectl` and client-go would be: `$KUBECONFIG` or
    /// `~/.kube/config` if present, else the in-cluster service account.
    ///
    /// Must be called within a tokio runtime. Fails with [`Error::PodLookup`] if neither yields
    /// a usable configuration.
    pub async fn infer() -> Result<Self> {
        let config = Config::infer().await.map_err(|e| {
            Error::PodLookup(format!(
                "inferring the Kubernetes client configuration: {e}"
            ))
        })?;
        Self::from_config(config)
    }

    /// A resolver whose client is built from `config`.
    fn from_config(config: Config) -> Result<Self> {
        let client = Client::try_from(config)
            .map_err(|e| Error::PodLookup(format!("building the Kubernetes client: {e}")))?;
        Ok(Self::new(client))
    }

    /// Remembers at most `capacity` pods; `0` turns the cache off.
    ///
    /// When full, expired entries are dropped first, then the oldest one.
    #[must_use]
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Trusts a cached answer for `ttl`; [`Duration::ZERO`] turns the cache off.
    #[must_use]
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Fails a lookup whose GET takes longer than `timeout`.
    #[must_use]
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Forgets what is cached for `namespace/pod`, e.g. after its node turned out to be wrong.
    pub fn invalidate(&self, namespace: &str, pod: &str) {
        self.lock().remove(&(namespace.to_owned(), pod.to_owned()));
    }

    /// How many answers are cached right now, expired ones included until they are evicted.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    async fn lookup(&self, namespace: &str, pod: &str) -> Result<Option<String>> {
        // Names come straight from the request path. Anything that is not a valid namespace or
        // pod name cannot exist, and must not reach the API URL ("..", "?", "%2F").
        if !is_dns_label(namespace) || !is_dns_subdomain(pod) {
            return Ok(None);
        }
        if let Some(node) = self.cache_get(namespace, pod) {
            tracing::trace!(namespace, pod, node, "pod node from cache");
            return Ok(Some(node));
        }
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        let found = tokio::time::timeout(self.timeout, api.get_opt(pod))
            .await
            .map_err(|_| {
                Error::PodLookup(format!(
                    "GET pod {namespace}/{pod}: no answer from the Kubernetes API within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|e| {
                Error::PodLookup(format!("GET pod {namespace}/{pod}: {}", describe(&e)))
            })?;
        let node = found
            .and_then(|p| p.spec)
            .and_then(|spec| spec.node_name)
            .filter(|node| !node.is_empty());
        tracing::debug!(
            namespace,
            pod,
            node = node.as_deref(),
            "pod node from the Kubernetes API"
        );
        if let Some(node) = &node {
            self.cache_put(namespace, pod, node);
        }
        Ok(node)
    }

    fn cache_get(&self, namespace: &str, pod: &str) -> Option<String> {
        let key = (namespace.to_owned(), pod.to_owned());
        let mut cache = self.lock();
        let cached = cache.get(&key)?;
        if cached.at.elapsed() < self.ttl {
            return Some(cached.node.clone());
        }
        cache.remove(&key);
        None
    }

    fn cache_put(&self, namespace: &str, pod: &str, node: &str) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let key = (namespace.to_owned(), pod.to_owned());
        let mut cache = self.lock();
        if !cache.contains_key(&key) && cache.len() >= self.capacity {
            let ttl = self.ttl;
            cache.retain(|_, c| c.at.elapsed() < ttl);
            while cache.len() >= self.capacity {
                let oldest = cache
                    .iter()
                    .min_by_key(|(_, c)| c.at)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(oldest) => cache.remove(&oldest),
                    None => break,
                };
            }
        }
        cache.insert(
            key,
            Cached {
                node: node.to_owned(),
                at: Instant::now(),
            },
        );
    }

    /// The cache; a panic elsewhere while holding it leaves a map that is still consistent.
    fn lock(&self) -> MutexGuard<'_, HashMap<PodKey, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PodResolver for KubePodResolver {
    fn node_of_pod<'a>(&'a self, namespace: &'a str, pod: &'a str) -> NodeFuture<'a> {
        Box::pin(self.lookup(namespace, pod))
    }
}

impl fmt::Debug for KubePodResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubePodResolver")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

/// A one-line account of a failed API call: the apiserver's `Status` as `code reason: message`,
/// anything else (TLS, connection) with its chain of causes, which kube's own message omits.
fn describe(e: &::kube::Error) -> String {
    if let ::kube::Error::Api(status) = e {
        return format!("{} {}: {}", status.code, status.reason, status.message);
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// An RFC 1123 label, as namespace names must be: at most 63 lowercase alphanumerics or `-`,
/// starting and ending with an alphanumeric.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// An RFC 1123 subdomain, as pod names must be: at most 253 characters of dot-separated labels.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::{is_dns_label, is_dns_subdomain};

    #[test]
    fn names() {
        assert!(is_dns_label("kube-system"));
        assert!(is_dns_label("a"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(".."));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("Default"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("coredns-5d78c9869d-abcde"));
        assert!(is_dns_subdomain("web-0.example"));
        assert!(!is_dns_subdomain(".."));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("a?b"));
        assert!(!is_dns_subdomain("a%2Fb"));
        assert!(!is_dns_subdomain(&format!(
            "{}.{}",
            "a".repeat(63),
            "b".repeat(190)
        )));
    }
}
