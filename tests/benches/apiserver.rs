//! What finding a pod's node costs, and what the API server hop adds to opening an exec.
//!
//! ```text
//! cargo build --release -p cloudstream -p edgestream && cargo bench -p tether-e2e --bench apiserver
//! ```
//!
//! 1. **Pod lookups** (`KubePodResolver` against the test API server over HTTPS, in this
//!    process): a cached hit (the watch has seen the pod) against a miss that costs one GET
//!    (a pod the API answers 404 for), p50/p99 each.
//! 2. **Pod cache memory**: the RSS of a real `cloudstream` whose watch holds no pods, then
//!    `TETHER_BENCH_PODS` (default 100,000) pods, reported per 10,000 pods.
//! 3. **Exec open latency**: `exec true` (upgrade, streams, exit status) through the test
//!    API server — SPDY relayed with kubectl's `Host` (so cloudstream looks the pod up), and
//!    WebSocket translated to SPDY — beside the same exec sent straight to cloudstream with the
//!    node in `Host`, and straight to the kubelet. p50/p99 over `TETHER_BENCH_EXECS` (500).
//!
//! Numbers are printed, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use stream_server::pods::kube::{KubeApi, KubePodResolver, ResolverOptions, connect};
use stream_server::pods::{AnswerSource, PodResolver};
use test_support::apiserver::{TestApiServer, TestPod};
use test_support::client::{exec_spdy, exec_ws};
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cluster, World};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

async fn pod_lookups() -> Result<()> {
    let world = World::new()?;
    let api = TestApiServer::builder(&world.pki).start().await?;
    for i in 0..10_000 {
        api.put_pod(TestPod::running(
            "default",
            &format!("pod-{i}"),
            &format!("edge-{}", i % 100),
            &["c"],
        ));
    }
    let kubeconfig = api.write_kubeconfig(&world.path("api"))?;
    let (client, _) = connect(&KubeApi {
        kubeconfig: Some(kubeconfig),
        master: None,
    })
    .await?
    .context("kubeconfig")?;
    // The rate limit (default 100 GETs/s, as cloudcore's `kubeAPIConfig.qps`) would make
    // every miss past the burst wait ~10 ms for its token; lift it to time the GET itself.
    let options = ResolverOptions {
        qps: 1_000_000.0,
        burst: 10_000,
        ..ResolverOptions::default()
    };
    let (resolver, watch) = KubePodResolver::new(client, options)?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(watch.run(stop.clone()));
    resolver.synced().await;

    let rounds = 100_000;
    let mut hits = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let name = format!("pod-{}", i % 10_000);
        let started = Instant::now();
        let answer = resolver.placement("default", &name).await?;
        hits.push(started.elapsed());
        assert_eq!(answer.source, AnswerSource::Cache);
    }
    let gets_before = api.counters().pod_gets();
    let mut misses = Vec::with_capacity(1000);
    for i in 0..1000 {
        let name = format!("absent-{i}");
        let started = Instant::now();
        let answer = resolver.placement("default", &name).await?;
        misses.push(started.elapsed());
        assert_eq!(answer.source, AnswerSource::Api);
    }
    assert_eq!(api.counters().pod_gets() - gets_before, 1000);
    let (hit50, hit99) = percentiles(hits);
    let (miss50, miss99) = percentiles(misses);
    println!("| pod lookup | p50 | p99 | API requests |");
    println!("|---|---|---|---|");
    println!(
        "| cached hit (10,000 pods watched, {rounds} lookups) | {} | {} | 0 |",
        micros(hit50),
        micros(hit99)
    );
    println!(
        "| miss: one GET over HTTPS to the API server, rate limit lifted (1,000 lookups) | {} | {} | 1 each |",
        micros(miss50),
        micros(miss99)
    );
    stop.cancel();
    task.await?;
    api.shutdown().await;
    Ok(())
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Reads one gauge from cloudstream's admin port.
async fn gauge(admin: std::net::SocketAddr, name: &str) -> Option<u64> {
    let io = TcpStream::connect(admin).await.ok()?;
    let resp = test_support::client::http_get(io, "127.0.0.1", "/metrics", &[])
        .await
        .ok()?;
    let body = test_support::client::body_bytes(resp.into_body())
        .await
        .ok()?;
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.trim().parse::<u64>().ok())
    })
}

async fn wait_gauge(admin: std::net::SocketAddr, name: &str, want: u64) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            if gauge(admin, name).await == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .with_context(|| format!("{name} never reached {want}"))
}

async fn cache_memory() -> Result<()> {
    let pods = env_num("TETHER_BENCH_PODS", 100_000);
    let cluster = Cluster::start(&["--admin-addr", "127.0.0.1:0"]).await?;
    let admin = cluster.cloud.admin.context("admin address")?;
    let pid = cluster.cloud.process.child.id().context("pid")?;
    wait_gauge(admin, "tether_pod_watch_up", 1).await?;
    let before = vm_rss_kib(pid);
    for i in 0..pods {
        cluster.api.put_pod(TestPod::running(
            &format!("ns-{}", i % 50),
            &format!("app-{i:06}-7d9f8b6c5d-x2k4p"),
            &format!("edge-{:05}", i % 5_000),
            &["c"],
        ));
    }
    wait_gauge(admin, "tether_pod_cache_pods", pods).await?;
    // Let jemalloc return what decoding the events left behind.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = vm_rss_kib(pid);
    let per_10k = (after.saturating_sub(before)) as f64 * 10_000.0 / pods as f64;
    println!(
        "pod cache: cloudstream RSS {before} KiB with an empty watch, {after} KiB with {pods} pods \
         (50 namespaces, 5,000 nodes, 28-byte pod names): {per_10k:.0} KiB per 10,000 pods"
    );
    Ok(())
}

async fn exec_open() -> Result<()> {
    let execs = env_num("TETHER_BENCH_EXECS", 500) as usize;
    let mut cluster = Cluster::start(&[]).await?;
    let kubelet = TestKubelet::builder()
        .container("default", "web", "web", ContainerSpec::default())
        .start()
        .await?;
    cluster
        .add_node("edge-1", "10.0.0.1", kubelet.addr())
        .await?;
    cluster
        .api
        .put_pod(TestPod::running("default", "web", "edge-1", &["web"]));
    let kubelet_path = "/exec/default/web/web?command=true&output=1";
    let api_path = "/api/v1/namespaces/default/pods/web/exec?command=true&stdout=true";
    let host = cluster.api_host();

    let mut rows = Vec::new();
    for (name, how) in [
        ("direct to the kubelet (SPDY)", 0),
        ("cloudstream, Host names the node (SPDY)", 1),
        (
            "API server → cloudstream, SPDY, kubectl's Host (pod lookup)",
            2,
        ),
        ("API server → cloudstream, WebSocket translated to SPDY", 3),
    ] {
        let mut samples = Vec::with_capacity(execs);
        for _ in 0..execs + 20 {
            let started = Instant::now();
            let session = match how {
                0 => {
                    let io = TcpStream::connect(kubelet.addr()).await?;
                    io.set_nodelay(true)?;
                    exec_spdy(io, "127.0.0.1", kubelet_path, &[]).await?
                }
                1 => {
                    let io = cluster.world.connect_stream(&cluster.cloud).await?;
                    exec_spdy(io, "10.0.0.1:10351", kubelet_path, &[]).await?
                }
                2 => exec_spdy(cluster.connect_api().await?, &host, api_path, &[]).await?,
                _ => exec_ws(cluster.connect_api().await?, &host, api_path, &[]).await?,
            };
            let out = session.collect().await?;
            anyhow::ensure!(out.exit_code() == Some(0), "{name}: {out:?}");
            samples.push(started.elapsed());
        }
        // The first runs warm connections pools and caches.
        let (p50, p99) = percentiles(samples.split_off(20));
        rows.push((name, p50, p99));
    }
    println!("| `exec true` from connect to exit status | p50 | p99 |");
    println!("|---|---|---|");
    for (name, p50, p99) in rows {
        println!("| {name} | {} | {} |", micros(p50), micros(p99));
    }
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        pod_lookups().await?;
        cache_memory().await?;
        exec_open().await
    })
}
