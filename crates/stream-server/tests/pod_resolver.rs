//! `KubePodResolver` against the test API server over HTTPS: the watch fills the cache so
//! lookups cost no round trip, a miss costs one GET, and failures are errors, not hangs.

#![cfg(feature = "k8s")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::Result;
use stream_server::pods::kube::{ApiSource, KubeApi, KubePodResolver, ResolverOptions, connect};
use stream_server::pods::{AnswerSource, Placement, PodResolver};
use test_support::apiserver::{TestApiServer, TestPod};
use test_support::pki::TestPki;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);

struct Fixture {
    api: TestApiServer,
    dir: tempfile::TempDir,
    resolver: KubePodResolver,
    stop: CancellationToken,
    watch: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start(options: ResolverOptions) -> Result<Fixture> {
        let pki = TestPki::new()?;
        let api = TestApiServer::builder(&pki).start().await?;
        api.put_pod(TestPod::running("default", "web-0", "edge-1", &["web"]));
        api.put_pod(TestPod::running("kube-system", "web-0", "edge-2", &["web"]));
        api.put_pod(TestPod::unscheduled("default", "pending", &["web"]));
        let dir = tempfile::tempdir()?;
        let kubeconfig = api.write_kubeconfig(dir.path())?;
        let (client, source) = connect(&KubeApi {
            kubeconfig: Some(kubeconfig.clone()),
            master: None,
        })
        .await?
        .expect("a kubeconfig is configured");
        assert_eq!(source, ApiSource::Kubeconfig(kubeconfig));
        let (resolver, watch) = KubePodResolver::new(client, options)?;
        let stop = CancellationToken::new();
        let watch = tokio::spawn(watch.run(stop.clone()));
        Ok(Fixture {
            api,
            dir,
            resolver,
            stop,
            watch,
        })
    }

    async fn synced(&self) {
        tokio::time::timeout(PATIENCE, self.resolver.synced())
            .await
            .expect("the pod watch syncs");
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.watch)
            .await
            .expect("the watch stops on shutdown")
            .unwrap();
        self.api.shutdown().await;
    }
}

/// Waits until `check` holds, re-checking every few milliseconds (the watch delivers
/// asynchronously); fails after [`PATIENCE`].
async fn eventually(mut check: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition reached");
}

#[tokio::test]
async fn watched_pods_cost_no_api_round_trip() -> Result<()> {
    let f = Fixture::start(ResolverOptions::default()).await?;
    f.synced().await;
    let gets = f.api.counters().pod_gets();
    for _ in 0..100 {
        let answer = f.resolver.placement("default", "web-0").await?;
        assert_eq!(answer.placement, Placement::Node("edge-1".into()));
        assert_eq!(answer.source, AnswerSource::Cache);
    }
    let other = f.resolver.placement("kube-system", "web-0").await?;
    assert_eq!(other.placement, Placement::Node("edge-2".into()));
    assert_eq!(f.api.counters().pod_gets(), gets, "no GET for cached pods");
    assert_eq!(f.api.counters().pod_lists(), 1);
    let stats = f.resolver.stats();
    assert!(stats.synced && stats.watching);
    assert_eq!(stats.cached, 2, "unscheduled pods are not watched");
    f.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_watch_follows_new_moved_and_deleted_pods() -> Result<()> {
    let f = Fixture::start(ResolverOptions::default()).await?;
    f.synced().await;
    f.api
        .put_pod(TestPod::running("default", "late", "edge-3", &["c"]));
    eventually(|| f.resolver.stats().cached == 3).await;
    let gets = f.api.counters().pod_gets();
    assert_eq!(
        f.resolver.placement("default", "late").await?.placement,
        Placement::Node("edge-3".into())
    );
    // Deleted and re-created under the same name elsewhere (a StatefulSet replica).
    assert!(f.api.delete_pod("default", "late"));
    eventually(|| f.resolver.stats().cached == 2).await;
    f.api
        .put_pod(TestPod::running("default", "late", "edge-1", &["c"]));
    eventually(|| f.resolver.stats().cached == 3).await;
    assert_eq!(
        f.resolver.placement("default", "late").await?.placement,
        Placement::Node("edge-1".into())
    );
    // Scheduling an unscheduled pod brings it into the watch.
    f.api
        .put_pod(TestPod::running("default", "pending", "edge-2", &["web"]));
    eventually(|| f.resolver.stats().cached == 4).await;
    assert_eq!(f.api.counters().pod_gets(), gets);
    f.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_miss_costs_one_get() -> Result<()> {
    let f = Fixture::start(ResolverOptions::default()).await?;
    f.synced().await;
    let gets = f.api.counters().pod_gets();
    let missing = f.resolver.placement("default", "nope").await?;
    assert_eq!(missing.placement, Placement::NotFound);
    assert_eq!(missing.source, AnswerSource::Api);
    assert_eq!(f.api.counters().pod_gets(), gets + 1);
    let pending = f.resolver.placement("default", "pending").await?;
    assert_eq!(pending.placement, Placement::Unscheduled);
    assert_eq!(f.api.counters().pod_gets(), gets + 2);
    // Names no pod can have never reach the API.
    for (ns, pod) in [
        ("..", "x"),
        ("default", "a%2Fb"),
        ("Default", "x"),
        ("a", "b?c"),
    ] {
        assert_eq!(
            f.resolver.placement(ns, pod).await?.placement,
            Placement::NotFound
        );
    }
    assert_eq!(f.api.counters().pod_gets(), gets + 2);
    f.stop().await;
    Ok(())
}

#[tokio::test]
async fn without_the_api_cached_pods_still_resolve_and_misses_fail() -> Result<()> {
    let f = Fixture::start(ResolverOptions {
        lookup_timeout: Duration::from_secs(2),
        ..ResolverOptions::default()
    })
    .await?;
    f.synced().await;
    f.api.set_unavailable(true);
    eventually(|| !f.resolver.stats().watching).await;
    assert_eq!(
        f.resolver.placement("default", "web-0").await?.placement,
        Placement::Node("edge-1".into())
    );
    let err = f
        .resolver
        .placement("default", "nope")
        .await
        .expect_err("the API is down");
    assert!(err.to_string().contains("503"), "{err}");
    assert!(f.resolver.stats().last_error.is_some());
    // Back: the watch re-lists and sees what changed meanwhile.
    f.api
        .put_pod(TestPod::running("default", "meanwhile", "edge-2", &["c"]));
    f.api.set_unavailable(false);
    eventually(|| f.resolver.stats().watching && f.resolver.stats().cached == 3).await;
    f.stop().await;
    Ok(())
}

#[tokio::test]
async fn gets_are_rate_limited() -> Result<()> {
    let f = Fixture::start(ResolverOptions {
        qps: 0.01,
        burst: 1,
        lookup_timeout: Duration::from_millis(300),
        ..ResolverOptions::default()
    })
    .await?;
    f.synced().await;
    assert_eq!(
        f.resolver.placement("default", "nope-1").await?.placement,
        Placement::NotFound
    );
    let err = f
        .resolver
        .placement("default", "nope-2")
        .await
        .expect_err("the burst is spent");
    assert!(err.to_string().contains("no answer"), "{err}");
    f.stop().await;
    Ok(())
}

#[tokio::test]
async fn connect_follows_cloudcore_rules() -> Result<()> {
    let f = Fixture::start(ResolverOptions::default()).await?;
    // Nothing configured and not in a pod: no API.
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        assert!(connect(&KubeApi::default()).await?.is_none());
    }
    // `master` overrides the kubeconfig's server: a dead port makes every lookup fail.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let kubeconfig = f.dir.path().join("kubeconfig");
    let (client, _) = connect(&KubeApi {
        kubeconfig: Some(kubeconfig),
        master: Some(format!("https://{dead}")),
    })
    .await?
    .unwrap();
    let (resolver, _watch) = KubePodResolver::new(client, ResolverOptions::default())?;
    let err = resolver.placement("default", "web-0").await.unwrap_err();
    assert!(err.to_string().contains("GET pod default/web-0"), "{err}");
    // Unreadable kubeconfig and a bad URL are configuration errors.
    let Err(missing) = connect(&KubeApi {
        kubeconfig: Some(f.dir.path().join("missing")),
        master: None,
    })
    .await
    else {
        panic!("a missing kubeconfig is an error");
    };
    assert!(missing.to_string().contains("missing"), "{missing}");
    let Err(bad) = connect(&KubeApi {
        kubeconfig: None,
        master: Some("not a url".into()),
    })
    .await
    else {
        panic!("a bad master URL is an error");
    };
    assert!(bad.to_string().contains("master"), "{bad}");
    f.stop().await;
    Ok(())
}
