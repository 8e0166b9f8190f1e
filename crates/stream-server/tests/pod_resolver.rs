//! `KubePodResolver` against a fake Kubernetes API server over HTTPS.
//!
//! The fake answers `GET /api/v1/namespaces/{ns}/pods/{name}` the way kube-apiserver does: a
//! Pod object, or a `Status` for 404/401/500. It counts the GETs, so the tests can tell a
//! cached answer from a fresh one.

#![cfg(feature = "k8s")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube::config::AuthInfo;
use serde_json::{Value, json};
use stream_server::Error;
use stream_server::pods::PodResolver;
use stream_server::pods::kube::KubePodResolver;
use test_support::pki::{self, TestPki};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const TOKEN: &str = "test-token";

/// What the fake API knows about one pod.
#[derive(Clone)]
enum FakePod {
    /// Scheduled on this node.
    On(&'static str),
    /// Pending, no node yet.
    Unscheduled,
    /// The apiserver fails with 500.
    Broken,
    /// The apiserver takes this long to answer.
    Slow(Duration),
}

/// A fake kube-apiserver on 127.0.0.1 serving pods over HTTPS.
struct FakeApi {
    addr: SocketAddr,
    pki: TestPki,
    gets: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    async fn start(pods: &[(&str, &str, FakePod)]) -> Result<Self> {
        let pki = TestPki::new()?;
        let identity = pki.server(&["127.0.0.1"])?;
        let acceptor = TlsAcceptor::from(pki::server_config(&identity, None)?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let pods: Arc<HashMap<(String, String), FakePod>> = Arc::new(
            pods.iter()
                .map(|(ns, name, pod)| (((*ns).to_owned(), (*name).to_owned()), pod.clone()))
                .collect(),
        );
        let gets = Arc::new(AtomicUsize::new(0));
        let counter = gets.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let pods = pods.clone();
                let gets = counter.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let pods = pods.clone();
                        let gets = gets.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(req, &pods, &gets).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            pki,
            gets,
            task,
        })
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// A client trusting the fake's CA and sending the expected bearer token.
    fn client(&self) -> Result<kube::Client> {
        let mut config = kube::Config::new(self.url().parse()?);
        config.root_cert = Some(vec![self.pki.ca_der().to_vec()]);
        config.auth_info = serde_json::from_value::<AuthInfo>(json!({ "token": TOKEN }))?;
        Ok(kube::Client::try_from(config)?)
    }

    fn resolver(&self) -> Result<KubePodResolver> {
        Ok(KubePodResolver::new(self.client()?))
    }
}

async fn answer(
    req: Request<Incoming>,
    pods: &HashMap<(String, String), FakePod>,
    gets: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let path: Vec<&str> = req.uri().path().split('/').collect();
    let ["", "api", "v1", "namespaces", ns, "pods", name] = path[..] else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if req.method() != http::Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only GET here",
        );
    }
    gets.fetch_add(1, Ordering::SeqCst);
    let authorized = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    match pods.get(&(ns.to_owned(), name.to_owned())) {
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        ),
        Some(FakePod::On(node)) => json_response(StatusCode::OK, &pod_json(ns, name, Some(node))),
        Some(FakePod::Unscheduled) => json_response(StatusCode::OK, &pod_json(ns, name, None)),
        Some(FakePod::Broken) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "Internal error occurred: etcdserver: request timed out",
        ),
        Some(FakePod::Slow(delay)) => {
            tokio::time::sleep(*delay).await;
            json_response(StatusCode::OK, &pod_json(ns, name, Some("slow-node")))
        }
    }
}

/// A Pod as kube-apiserver returns it (trimmed, but with the fields clients rely on).
fn pod_json(ns: &str, name: &str, node: Option<&str>) -> Value {
    let mut spec = json!({
        "containers": [{
            "name": "app",
            "image": "registry.k8s.io/pause:3.10",
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent"
        }],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
        "tolerations": [{
            "key": "node.kubernetes.io/not-ready",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300
        }],
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority"
    });
    let status = match node {
        Some(node) => {
            spec["nodeName"] = json!(node);
            json!({
                "phase": "Running",
                "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": "2026-11-25T10:00:05Z" }],
                "hostIP": "10.0.0.7",
                "podIP": "10.244.1.12",
                "startTime": "2026-11-25T10:00:00Z",
                "qosClass": "BestEffort"
            })
        }
        None => json!({
            "phase": "Pending",
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "lastTransitionTime": "2026-11-25T10:00:00Z",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
            }],
            "qosClass": "BestEffort"
        }),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": "6f0c3b2e-9d3a-4c1e-8a55-2f4f7c1d9e01",
            "resourceVersion": "48213",
            "creationTimestamp": "2026-11-25T10:00:00Z",
            "labels": { "app": "demo" }
        },
        "spec": spec,
        "status": status
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16()
        }),
    )
}

fn json_response(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = code;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

#[tokio::test]
async fn scheduled_pod_gives_its_node_and_is_cached() -> Result<()> {
    let api = FakeApi::start(&[("default", "web-0", FakePod::On("edge-node-1"))]).await?;
    let resolver = api.resolver()?;

    assert_eq!(
        resolver.node_of_pod("default", "web-0").await?.as_deref(),
        Some("edge-node-1")
    );
    assert_eq!(api.gets(), 1);
    assert_eq!(
        resolver.node_of_pod("default", "web-0").await?.as_deref(),
        Some("edge-node-1")
    );
    assert_eq!(api.gets(), 1, "the second lookup must come from the cache");
    assert_eq!(resolver.cached(), 1);

    resolver.invalidate("default", "web-0");
    assert_eq!(
        resolver.node_of_pod("default", "web-0").await?.as_deref(),
        Some("edge-node-1")
    );
    assert_eq!(api.gets(), 2, "an invalidated entry is looked up again");
    Ok(())
}

#[tokio::test]
async fn missing_pod_gives_none_and_is_not_cached() -> Result<()> {
    let api = FakeApi::start(&[]).await?;
    let resolver = api.resolver()?;

    assert_eq!(resolver.node_of_pod("default", "ghost").await?, None);
    assert_eq!(resolver.node_of_pod("default", "ghost").await?, None);
    assert_eq!(
        api.gets(),
        2,
        "negative answers are not cached: the pod may be created any time"
    );
    Ok(())
}

#[tokio::test]
async fn unscheduled_pod_gives_none() -> Result<()> {
    let api = FakeApi::start(&[("jobs", "pending-1", FakePod::Unscheduled)]).await?;
    let resolver = api.resolver()?;

    assert_eq!(resolver.node_of_pod("jobs", "pending-1").await?, None);
    assert_eq!(resolver.cached(), 0);
    Ok(())
}

#[tokio::test]
async fn namespaces_are_kept_apart() -> Result<()> {
    let api = FakeApi::start(&[
        ("a", "same", FakePod::On("node-a")),
        ("b", "same", FakePod::On("node-b")),
    ])
    .await?;
    let resolver = api.resolver()?;

    assert_eq!(
        resolver.node_of_pod("a", "same").await?.as_deref(),
        Some("node-a")
    );
    assert_eq!(
        resolver.node_of_pod("b", "same").await?.as_deref(),
        Some("node-b")
    );
    assert_eq!(
        resolver.node_of_pod("a", "same").await?.as_deref(),
        Some("node-a")
    );
    assert_eq!(api.gets(), 2);
    Ok(())
}

#[tokio::test]
async fn server_error_is_a_pod_lookup_error() -> Result<()> {
    let api = FakeApi::start(&[("default", "cursed", FakePod::Broken)]).await?;
    let resolver = api.resolver()?;

    let err = resolver.node_of_pod("default", "cursed").await.unwrap_err();
    let Error::PodLookup(message) = &err else {
        panic!("expected PodLookup, got {err:?}")
    };
    assert!(message.contains("default/cursed"), "{message}");
    assert!(message.contains("500"), "{message}");
    assert!(
        message.contains("etcdserver: request timed out"),
        "{message}"
    );
    assert_eq!(resolver.cached(), 0);
    Ok(())
}

#[tokio::test]
async fn rejected_credentials_are_a_pod_lookup_error() -> Result<()> {
    let api = FakeApi::start(&[("default", "web-0", FakePod::On("edge-node-1"))]).await?;
    let mut config = kube::Config::new(api.url().parse()?);
    config.root_cert = Some(vec![api.pki.ca_der().to_vec()]);
    let resolver = KubePodResolver::new(kube::Client::try_from(config)?);

    let err = resolver.node_of_pod("default", "web-0").await.unwrap_err();
    assert!(matches!(err, Error::PodLookup(_)), "{err:?}");
    assert!(err.to_string().contains("Unauthorized"), "{err}");
    Ok(())
}

#[tokio::test]
async fn untrusted_server_is_a_pod_lookup_error() -> Result<()> {
    let api = FakeApi::start(&[("default", "web-0", FakePod::On("edge-node-1"))]).await?;
    let other_ca = TestPki::new()?;
    let mut config = kube::Config::new(api.url().parse()?);
    config.root_cert = Some(vec![other_ca.ca_der().to_vec()]);
    let resolver = KubePodResolver::new(kube::Client::try_from(config)?);

    let err = resolver.node_of_pod("default", "web-0").await.unwrap_err();
    assert!(matches!(err, Error::PodLookup(_)), "{err:?}");
    assert!(
        err.to_string().contains("certificate"),
        "the TLS cause is reported: {err}"
    );
    assert_eq!(api.gets(), 0);
    Ok(())
}

#[tokio::test]
async fn slow_server_times_out() -> Result<()> {
    let api =
        FakeApi::start(&[("default", "sloth", FakePod::Slow(Duration::from_secs(5)))]).await?;
    let resolver = api
        .resolver()?
        .with_lookup_timeout(Duration::from_millis(200));

    let started = std::time::Instant::now();
    let err = resolver.node_of_pod("default", "sloth").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let Error::PodLookup(message) = &err else {
        panic!("expected PodLookup, got {err:?}")
    };
    assert!(message.contains("within"), "{message}");
    Ok(())
}

#[tokio::test]
async fn invalid_names_never_reach_the_api() -> Result<()> {
    let api = FakeApi::start(&[]).await?;
    let resolver = api.resolver()?;

    for (ns, pod) in [
        ("default", ".."),
        ("..", "x"),
        ("default", "a?watch=1"),
        ("default", "a%2Fb"),
        ("", "x"),
        ("default", ""),
    ] {
        assert_eq!(resolver.node_of_pod(ns, pod).await?, None, "{ns}/{pod}");
    }
    assert_eq!(api.gets(), 0);
    Ok(())
}

#[tokio::test]
async fn cache_entries_expire() -> Result<()> {
    let api = FakeApi::start(&[("default", "web-0", FakePod::On("edge-node-1"))]).await?;
    let resolver = api.resolver()?.with_cache_ttl(Duration::from_millis(100));

    resolver.node_of_pod("default", "web-0").await?;
    resolver.node_of_pod("default", "web-0").await?;
    assert_eq!(api.gets(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        resolver.node_of_pod("default", "web-0").await?.as_deref(),
        Some("edge-node-1")
    );
    assert_eq!(api.gets(), 2, "an expired entry is looked up again");
    Ok(())
}

#[tokio::test]
async fn cache_is_bounded() -> Result<()> {
    let api = FakeApi::start(&[
        ("default", "p1", FakePod::On("n1")),
        ("default", "p2", FakePod::On("n2")),
        ("default", "p3", FakePod::On("n3")),
    ])
    .await?;
    let resolver = api.resolver()?.with_cache_capacity(2);

    for pod in ["p1", "p2", "p3"] {
        resolver.node_of_pod("default", pod).await?;
        // Distinct insertion instants, so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(resolver.cached(), 2);
    assert_eq!(api.gets(), 3);
    resolver.node_of_pod("default", "p3").await?;
    resolver.node_of_pod("default", "p2").await?;
    assert_eq!(api.gets(), 3, "the two newest stay cached");
    resolver.node_of_pod("default", "p1").await?;
    assert_eq!(api.gets(), 4, "the oldest was evicted");
    assert_eq!(resolver.cached(), 2);
    Ok(())
}

#[tokio::test]
async fn cache_can_be_turned_off() -> Result<()> {
    let api = FakeApi::start(&[("default", "web-0", FakePod::On("edge-node-1"))]).await?;
    let resolver = api.resolver()?.with_cache_capacity(0);

    resolver.node_of_pod("default", "web-0").await?;
    resolver.node_of_pod("default", "web-0").await?;
    assert_eq!(api.gets(), 2);
    assert_eq!(resolver.cached(), 0);
    Ok(())
}

#[tokio::test]
async fn from_kubeconfig_reads_server_ca_and_token() -> Result<()> {
    let api = FakeApi::start(&[(
        "kube-system",
        "coredns-5d78c9869d-x2x7q",
        FakePod::On("edge-node-2"),
    )])
    .await?;
    let dir = TempDir::new("kubeconfig")?;
    let ca = api.pki.write_ca(&dir.0)?;
    let kubeconfig = dir.0.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: cloudstream
  user:
    token: {TOKEN}
contexts:
- name: fake
  context:
    cluster: fake
    user: cloudstream
current-context: fake
",
            url = api.url(),
            ca = ca.display(),
        ),
    )?;
    let resolver = KubePodResolver::from_kubeconfig(&kubeconfig).await?;
    assert_eq!(
        resolver
            .node_of_pod("kube-system", "coredns-5d78c9869d-x2x7q")
            .await?
            .as_deref(),
        Some("edge-node-2")
    );

    let err = KubePodResolver::from_kubeconfig(dir.0.join("missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PodLookup(_)), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");
    Ok(())
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tether-pod-resolver-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
