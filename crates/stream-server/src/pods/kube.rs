//! A [`PodResolver`] backed by the Kubernetes API (feature `k8s`, on by default).
//!
//! # How this fits
//!
//! [`KubePodResolver`] answers from a cache that a watch on pods keeps current, so the common
//! request costs no API round trip; a miss (a pod created a moment ago, or a pod that does
//! not exist) costs one `GET`, rate-limited with cloudcore's `qps`/`burst`. The watch is
//! kube-runtime's [`watcher`] — the engine of kube's reflector — restricted to what we need:
//! scheduled pods only (field selector `spec.nodeName!=`), decoded into a type that keeps
//! just the metadata and `spec.nodeName`, and stored compactly (namespace → pod name →
//! interned node name) instead of in a reflector `Store`, which would keep a whole
//! `ObjectMeta` per pod. The cache holds at most [`ResolverOptions::max_cached`] pods;
//! `docs/BENCHMARKS.md` gives its measured size per 10,000 pods.
//!
//! The watch runs in [`PodWatch::run`], which the caller spawns and owns. While the API is
//! unreachable the cache keeps its last contents (a pod never changes node during its life;
//! only a pod deleted and re-created under the same name can), lookups that miss fail after
//! the lookup timeout, and the watch retries with kube-runtime's backoff. [`connect`] builds
//! the client the way cloudcore does: a kubeconfig, a master URL, or the in-cluster service
//! account.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ::kube::api::ObjectMeta;
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::WatchStreamExt as _;
use ::kube::runtime::watcher::{self, Event, watcher};
use ::kube::{Api, Client, Config, Resource};
use futures_util::StreamExt as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{AnswerSource, Placement, PlacementFuture, PodAnswer, PodResolver};
use crate::error::{Error, Result};

/// cloudcore's default `kubeAPIConfig.qps`.
pub const DEFAULT_QPS: f32 = 100.0;
/// cloudcore's default `kubeAPIConfig.burst`.
pub const DEFAULT_BURST: u32 = 200;
/// Default time one lookup that misses the cache may take (rate-limit wait included).
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest number of pods cached (about 100 bytes each, see `docs/BENCHMARKS.md`).
pub const DEFAULT_MAX_CACHED: usize = 500_000;
/// Field selector of the watch: only pods placed on a node matter.
const SCHEDULED: &str = "spec.nodeName!=";

/// How to reach the Kubernetes API, as cloudcore's `kubeAPIConfig` says it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubeApi {
    /// A kubeconfig file (`kubeAPIConfig.kubeConfig`, `--kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// The API server URL (`kubeAPIConfig.master`); overrides the kubeconfig's server.
    pub master: Option<String>,
}

/// Where [`connect`] found its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    /// A kubeconfig file (possibly with the master URL overridden).
    Kubeconfig(PathBuf),
    /// Only a master URL, without credentials (as cloudcore allows).
    Master(String),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST` and the mounted token).
    InCluster,
}

impl fmt::Display for ApiSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiSource::Kubeconfig(path) => write!(f, "kubeconfig {}", path.display()),
            ApiSource::Master(url) => write!(f, "master {url}"),
            ApiSource::InCluster => f.write_str("in-cluster service account"),
        }
    }
}

/// Builds a client the way cloudcore's `BuildConfigFromFlags(master, kubeConfig)` does: the
/// kubeconfig (with `master` overriding its server), else `master` alone, else the
/// in-cluster service account when this process runs in a pod (`KUBERNETES_SERVICE_HOST` is
/// set). `Ok(None)` when none applies: the caller runs without pod lookups.
///
/// Must be called within a tokio runtime. Fails with [`Error::PodLookup`] when a configured
/// source is unusable (unreadable kubeconfig, bad URL, in-cluster files missing).
pub async fn connect(api: &KubeApi) -> Result<Option<(Client, ApiSource)>> {
    let master = api
        .master
        .as_deref()
        .map(|m| {
            m.parse::<http::Uri>()
                .map_err(|e| Error::PodLookup(format!("kubeAPIConfig.master {m:?}: {e}")))
        })
        .transpose()?;
    let (config, source) = if let Some(path) = &api.kubeconfig {
        let kubeconfig = Kubeconfig::read_from(path)
            .map_err(|e| Error::PodLookup(format!("kubeconfig {}: {e}", path.display())))?;
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::PodLookup(format!("kubeconfig {}: {e}", path.display())))?;
        if let Some(master) = master {
            config.cluster_url = master;
        }
        (config, ApiSource::Kubeconfig(path.clone()))
    } else if let (Some(master), Some(text)) = (master, api.master.clone()) {
        (Config::new(master), ApiSource::Master(text))
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        let config = Config::incluster()
            .map_err(|e| Error::PodLookup(format!("in-cluster configuration: {e}")))?;
        (config, ApiSource::InCluster)
    } else {
        return Ok(None);
    };
    let mut config = config;
    // kube retries 429/503/504 inside the client for minutes by default. A lookup has its own
    // deadline and the watch its own backoff, and both must see a failing API promptly (to
    // fall back to `Host`, and to report the watch as lost), so that layer is off.
    config.default_retry = false;
    let client = Client::try_from(config)
        .map_err(|e| Error::PodLookup(format!("building the Kubernetes client: {e}")))?;
    Ok(Some((client, source)))
}

/// Tunables of [`KubePodResolver`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverOptions {
    /// Sustained pod GETs per second on cache misses (`kubeAPIConfig.qps`).
    pub qps: f32,
    /// GETs allowed in a burst (`kubeAPIConfig.burst`).
    pub burst: u32,
    /// How long a lookup that misses the cache may take, waiting for the rate limit included.
    pub lookup_timeout: Duration,
    /// Pods cached at most; beyond it, new pods are looked up with a GET each time.
    pub max_cached: usize,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            qps: DEFAULT_QPS,
            burst: DEFAULT_BURST,
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            max_cached: DEFAULT_MAX_CACHED,
        }
    }
}

/// What the resolver has done, for metrics and `/readyz` detail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Pods in the cache.
    pub cached: usize,
    /// The watch has delivered a complete list at least once.
    pub synced: bool,
    /// The watch is connected now (its last event was not an error).
    pub watching: bool,
    /// The last watch or lookup error, if the watch is not connected.
    pub last_error: Option<String>,
    /// Lookups answered from the cache.
    pub cache_hits: u64,
    /// Lookups that sent a GET.
    pub api_gets: u64,
    /// GETs that failed (unreachable, refused, timed out).
    pub api_errors: u64,
    /// Pods not cached because the cache was full.
    pub not_cached: u64,
}

/// A pod as far as we need it: metadata and `spec.nodeName`; serde skips everything else.
#[derive(Debug, Clone, Deserialize)]
struct PodNode {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<PodNodeSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodNodeSpec {
    #[serde(default)]
    node_name: Option<String>,
}

impl PodNode {
    fn node(&self) -> Option<&str> {
        self.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }
}

impl Resource for PodNode {
    type DynamicType = ();
    type Scope = ::kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// namespace → pod → node, with node names shared between the pods on one node.
#[derive(Default)]
struct Cache {
    by_namespace: HashMap<Box<str>, HashMap<Box<str>, Arc<str>>>,
    nodes: HashSet<Arc<str>>,
    len: usize,
}

/// What [`Cache::put`] did.
enum Put {
    Stored,
    Full,
}

impl Cache {
    fn get(&self, namespace: &str, pod: &str) -> Option<&Arc<str>> {
        self.by_namespace.get(namespace)?.get(pod)
    }

    fn put(&mut self, namespace: &str, pod: &str, node: &str, max: usize) -> Put {
        let node = match self.nodes.get(node) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = Arc::from(node);
                self.nodes.insert(shared.clone());
                shared
            }
        };
        let pods = match self.by_namespace.get_mut(namespace) {
            Some(pods) => pods,
            None => self.by_namespace.entry(namespace.into()).or_default(),
        };
        if let Some(slot) = pods.get_mut(pod) {
            *slot = node;
            return Put::Stored;
        }
        if self.len >= max {
            return Put::Full;
        }
        pods.insert(pod.into(), node);
        self.len += 1;
        Put::Stored
    }

    fn remove(&mut self, namespace: &str, pod: &str) {
        let Some(pods) = self.by_namespace.get_mut(namespace) else {
            return;
        };
        if pods.remove(pod).is_some() {
            self.len -= 1;
        }
        if pods.is_empty() {
            self.by_namespace.remove(namespace);
        }
    }

    /// Forgets node names no pod refers to any more.
    fn prune_nodes(&mut self) {
        self.nodes.retain(|n| Arc::strong_count(n) > 1);
    }
}

#[derive(Default)]
struct Counters {
    cache_hits: AtomicU64,
    api_gets: AtomicU64,
    api_errors: AtomicU64,
    not_cached: AtomicU64,
}

struct Inner {
    client: Client,
    limiter: DefaultDirectRateLimiter,
    options: ResolverOptions,
    cache: RwLock<Cache>,
    /// `true` once the watch delivered its first complete list.
    synced: watch::Sender<bool>,
    watching: AtomicBool,
    last_error: Mutex<Option<String>>,
    counters: Counters,
}

/// Finds a pod's node from a watch-fed cache, falling back to one rate-limited GET.
///
/// Cheap to clone (shared state). Build it with [`KubePodResolver::new`] and spawn the
/// returned [`PodWatch`]; without the watch every lookup is a GET.
#[derive(Clone)]
pub struct KubePodResolver {
    inner: Arc<Inner>,
}

/// The watch that keeps a [`KubePodResolver`]'s cache current; see [`PodWatch::run`].
pub struct PodWatch {
    inner: Arc<Inner>,
}

impl fmt::Debug for PodWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodWatch").finish_non_exhaustive()
    }
}

impl KubePodResolver {
    /// A resolver using `client`, and the watch that fills its cache.
    ///
    /// Fails with [`Error::PodLookup`] if `options.qps` is not positive and finite or
    /// `options.burst` is zero.
    pub fn new(client: Client, options: ResolverOptions) -> Result<(KubePodResolver, PodWatch)> {
        let burst = NonZeroU32::new(options.burst)
            .ok_or_else(|| Error::PodLookup("burst must be at least 1".into()))?;
        if !(options.qps.is_finite() && options.qps > 0.0) {
            return Err(Error::PodLookup(format!(
                "qps must be a positive number, not {}",
                options.qps
            )));
        }
        let period = Duration::from_secs_f64(1.0 / f64::from(options.qps));
        let quota = Quota::with_period(period)
            .ok_or_else(|| Error::PodLookup(format!("qps {} is too large", options.qps)))?
            .allow_burst(burst);
        let inner = Arc::new(Inner {
            client,
            limiter: RateLimiter::direct(quota),
            options,
            cache: RwLock::new(Cache::default()),
            synced: watch::channel(false).0,
            watching: AtomicBool::new(false),
            last_error: Mutex::new(None),
            counters: Counters::default(),
        });
        Ok((
            KubePodResolver {
                inner: inner.clone(),
            },
            PodWatch { inner },
        ))
    }

    /// Counters and watch state.
    pub fn stats(&self) -> ResolverStats {
        let inner = &self.inner;
        let c = &inner.counters;
        let watching = inner.watching.load(Ordering::Relaxed);
        ResolverStats {
            cached: read(&inner.cache).len,
            synced: *inner.synced.borrow(),
            watching,
            last_error: if watching {
                None
            } else {
                lock_error(&inner.last_error).clone()
            },
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            api_gets: c.api_gets.load(Ordering::Relaxed),
            api_errors: c.api_errors.load(Ordering::Relaxed),
            not_cached: c.not_cached.load(Ordering::Relaxed),
        }
    }

    /// Resolves once the watch has delivered its first complete list.
    pub async fn synced(&self) {
        let mut synced = self.inner.synced.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = synced.wait_for(|s| *s).await;
    }

    async fn lookup(&self, namespace: &str, pod: &str) -> Result<PodAnswer> {
        // Names come straight from the request path. Anything that is not a valid namespace
        // or pod name cannot exist, and must not reach the API URL ("..", "?", "%2F").
        if !is_dns_label(namespace) || !is_dns_subdomain(pod) {
            return Ok(PodAnswer {
                placement: Placement::NotFound,
                source: AnswerSource::Cache,
            });
        }
        let inner = &self.inner;
        if let Some(node) = read(&inner.cache).get(namespace, pod) {
            inner.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(PodAnswer {
                placement: Placement::Node(node.to_string()),
                source: AnswerSource::Cache,
            });
        }
        inner.counters.api_gets.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::time::timeout(inner.options.lookup_timeout, self.get(namespace, pod))
            .await
            .unwrap_or_else(|_| {
                Err(Error::PodLookup(format!(
                    "GET pod {namespace}/{pod}: no answer from the Kubernetes API within {:?}",
                    inner.options.lookup_timeout
                )))
            });
        if let Err(e) = &answer {
            inner.counters.api_errors.fetch_add(1, Ordering::Relaxed);
            *lock_error(&inner.last_error) = Some(e.to_string());
        }
        answer
    }

    async fn get(&self, namespace: &str, pod: &str) -> Result<PodAnswer> {
        let inner = &self.inner;
        inner.limiter.until_ready().await;
        let api = Api::<PodNode>::namespaced(inner.client.clone(), namespace);
        let found = api.get_opt(pod).await.map_err(|e| {
            Error::PodLookup(format!("GET pod {namespace}/{pod}: {}", describe(&e)))
        })?;
        let placement = match &found {
            None => Placement::NotFound,
            Some(p) => match p.node() {
                Some(node) => {
                    // Kept only while the watch runs: it corrects the entry if the pod is
                    // re-created elsewhere. Without it, a cached answer could go stale.
                    if inner.watching.load(Ordering::Relaxed) {
                        write(&inner.cache).put(namespace, pod, node, inner.options.max_cached);
                    }
                    Placement::Node(node.to_owned())
                }
                None => Placement::Unscheduled,
            },
        };
        debug!(
            namespace,
            pod,
            ?placement,
            "pod placement from the Kubernetes API"
        );
        Ok(PodAnswer {
            placement,
            source: AnswerSource::Api,
        })
    }
}

impl PodWatch {
    /// Lists and watches scheduled pods into the resolver's cache until `shutdown`.
    /// Errors are logged and retried with backoff; this returns only on shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = self.inner;
        let api = Api::<PodNode>::all(inner.client.clone());
        // `any_semantic`: the (re-)list may be served from the API server's watch cache
        // rather than a quorum read of etcd, which matters at fleet scale; the watch that
        // follows brings it up to date.
        let config = watcher::Config::default().fields(SCHEDULED).any_semantic();
        let events = watcher(api, config).default_backoff();
        tokio::pin!(events);
        let max = inner.options.max_cached;
        let mut listing: Option<Cache> = None;
        let mut full_warned = false;
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                e = events.next() => e,
            };
            let Some(event) = event else { return };
            let mut store = |cache: &mut Cache, pod: &PodNode| {
                let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                    return;
                };
                match pod.node() {
                    Some(node) => {
                        if let Put::Full = cache.put(ns, name, node, max) {
                            inner.counters.not_cached.fetch_add(1, Ordering::Relaxed);
                            if !full_warned {
                                full_warned = true;
                                warn!(max, "pod cache full; further pods are looked up with a GET");
                            }
                        }
                    }
                    None => cache.remove(ns, name),
                }
            };
            match event {
                Ok(Event::Init) => listing = Some(Cache::default()),
                Ok(Event::InitApply(pod)) => {
                    if let Some(cache) = listing.as_mut() {
                        store(cache, &pod);
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(mut fresh) = listing.take() {
                        fresh.prune_nodes();
                        let pods = fresh.len;
                        *write(&inner.cache) = fresh;
                        inner.synced.send_replace(true);
                        if !inner.watching.swap(true, Ordering::Relaxed) {
                            info!(pods, "pod watch synced");
                        }
                    }
                }
                Ok(Event::Apply(pod)) => {
                    store(&mut write(&inner.cache), &pod);
                    inner.watching.store(true, Ordering::Relaxed);
                }
                Ok(Event::Delete(pod)) => {
                    if let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) {
                        write(&inner.cache).remove(ns, name);
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if inner.watching.swap(false, Ordering::Relaxed) {
                        warn!(error = %text, "pod watch lost; serving pod lookups from the last known pods");
                    } else {
                        debug!(error = %text, "pod watch still failing");
                    }
                    *lock_error(&inner.last_error) = Some(format!("watching pods: {text}"));
                }
            }
        }
    }
}

impl PodResolver for KubePodResolver {
    fn placement<'a>(&'a self, namespace: &'a str, pod: &'a str) -> PlacementFuture<'a> {
        Box::pin(self.lookup(namespace, pod))
    }
}

impl fmt::Debug for KubePodResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubePodResolver")
            .field("options", &self.inner.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn read(lock: &RwLock<Cache>) -> std::sync::RwLockReadGuard<'_, Cache> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(lock: &RwLock<Cache>) -> std::sync::RwLockWriteGuard<'_, Cache> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock_error(m: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    use super::*;

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

    #[test]
    fn cache_interns_nodes_and_is_bounded() {
        let mut cache = Cache::default();
        assert!(matches!(cache.put("ns", "a", "edge-1", 2), Put::Stored));
        assert!(matches!(cache.put("ns", "b", "edge-1", 2), Put::Stored));
        assert!(matches!(cache.put("ns", "c", "edge-1", 2), Put::Full));
        // Replacing an existing entry never counts against the bound.
        assert!(matches!(cache.put("ns", "a", "edge-2", 2), Put::Stored));
        assert_eq!(cache.len, 2);
        let a = cache.get("ns", "a").cloned();
        assert_eq!(a.as_deref(), Some("edge-2"));
        let b1 = cache.get("ns", "b").cloned();
        assert!(b1.is_some());
        cache.remove("ns", "a");
        cache.remove("ns", "a");
        assert_eq!(cache.len, 1);
        drop(a);
        cache.prune_nodes();
        assert_eq!(cache.nodes.len(), 1);
        cache.remove("ns", "b");
        assert!(cache.by_namespace.is_empty());
    }
}
