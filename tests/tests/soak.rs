//! Soak: thousands of streams of every kubelet operation through the real binaries, then
//! proof that nothing stayed behind.
//!
//! One `cloudstream` serves two `edgestream`s on one test kubelet: `edge-t2` speaks tether/2,
//! `edge-ke` is started with `--kubeedge-only` and speaks exactly what a stock edgecore
//! speaks, so both dialects run on the same cloud at the same time. One cycle opens and
//! closes one stream of each operation on a node (logs, a cancelled `logs -f`, exec with
//! stdin and an exit code, attach, port-forward, stats, metrics), checking every answer.
//! After a warm-up (caches such as the TLS session cache grow to their bounds, allocator
//! arenas fill), the three processes are read; after the soak they must come back to those
//! readings: descriptors and tasks exactly, memory within a slack (see [`RSS_SLACK`]).
//!
//! `TETHER_SOAK_CYCLES` sets the cycles per node. The default is short enough for every
//! `cargo test --workspace` run; the long run (5,000 cycles on each of the two nodes, so
//! 10,000 streams of every operation) and its figures are in docs/BENCHMARKS.md, "Fault and
//! soak suite". The test prints what it measured; run it with `--nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use test_support::client::{EchoServer, body_bytes, echo_server, exec_ws, port_forward_ws};
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cloud, Edge, PATIENCE, Probe, Tolerance, World};

/// Cycles per node when `TETHER_SOAK_CYCLES` is not set: enough to show a leak of one
/// descriptor, task or stream per cycle (those are compared exactly), short enough for
/// every CI run (about 15 s of a debug build on two shared cores). A small leak of memory
/// needs the long run to rise above [`RSS_SLACK`].
const DEFAULT_CYCLES: usize = 120;
/// Cycles per node run before the baseline is read: every operation on both dialects a few
/// times per worker, so lazily built state (TLS session caches, pools, allocator arenas)
/// exists before the baseline.
const WARM_UP_CYCLES: usize = 32;
/// Cycles run at once per node: streams overlap on each session as they do in production.
const WORKERS: usize = 4;
/// Memory allowed above the baseline once the soak is over. jemalloc returns freed pages on
/// a decay of about 10 s and keeps per-thread caches and some dirty pages; the processes
/// idle at 15–30 MiB. A leak of even 1 KiB per stream would be 7 MiB after 1,000 cycles and
/// 70 MiB after 10,000; keeping a stream's 64 KiB relay buffers would be hundreds of MiB.
const RSS_SLACK: u64 = 8 << 20;
/// How long the processes get to come back to their baselines.
const SETTLE: Duration = Duration::from_secs(60);

const NODES: [&str; 2] = ["edge-t2", "edge-ke"];

struct Soak {
    world: World,
    cloud: Cloud,
    kubelet: TestKubelet,
    echo_port: u16,
    _echo: EchoServer,
    edges: Vec<Edge>,
}

async fn setup() -> Soak {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &["--admin-addr", "127.0.0.1:0"])
        .await
        .unwrap();
    let kubelet = TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(&b"hello\n"[..]),
        )
        .start()
        .await
        .unwrap();
    let (echo_addr, echo) = echo_server().await.unwrap();
    let t2 = Edge::start(
        &world,
        &cloud,
        NODES[0],
        "10.0.0.21",
        kubelet.addr(),
        &["--admin-addr", "127.0.0.1:0"],
    )
    .await
    .unwrap();
    let ke = Edge::start(
        &world,
        &cloud,
        NODES[1],
        "10.0.0.22",
        kubelet.addr(),
        &["--admin-addr", "127.0.0.1:0", "--kubeedge-only"],
    )
    .await
    .unwrap();
    assert_eq!(t2.dialect.as_deref(), Some("tether/2"));
    assert_eq!(ke.dialect.as_deref(), Some("kubeedge"));
    Soak {
        world,
        cloud,
        kubelet,
        echo_port: echo_addr.port(),
        _echo: echo,
        edges: vec![t2, ke],
    }
}

impl Soak {
    fn probes(&self) -> Vec<Probe> {
        let mut probes = vec![self.cloud.probe().unwrap()];
        probes.extend(self.edges.iter().map(|e| e.probe().unwrap()));
        probes
    }

    /// `GET path` on `node`, expecting 200; returns the body.
    async fn get_ok(&self, node: &str, path: &str) -> Result<Bytes> {
        let resp = self.world.get(&self.cloud, node, path, &[]).await?;
        ensure!(resp.status() == StatusCode::OK, "{path}: {}", resp.status());
        body_bytes(resp.into_body()).await
    }

    /// One stream of every operation on `node`, each checked.
    async fn cycle(&self, node: &str, i: usize) -> Result<()> {
        let logs = self
            .get_ok(node, "/containerLogs/default/web/app")
            .await
            .context("logs")?;
        ensure!(logs == Bytes::from_static(b"hello\n"), "logs: {logs:?}");

        // `kubectl logs -f`, cancelled after the first line.
        let resp = self
            .world
            .get(
                &self.cloud,
                node,
                "/containerLogs/default/web/app?follow=true",
                &[],
            )
            .await
            .context("logs -f")?;
        ensure!(
            resp.status() == StatusCode::OK,
            "logs -f: {}",
            resp.status()
        );
        let mut body = resp.into_body();
        let first = body.frame().await.context("logs -f ended")??;
        ensure!(
            first.data_ref() == Some(&Bytes::from_static(b"hello\n")),
            "logs -f: {first:?}"
        );
        drop(body);

        // Exec with stdin; every other cycle the command exits non-zero without reading it.
        let (path, code, stdout) = if i.is_multiple_of(2) {
            (
                "/exec/default/web/app?command=cat&input=1&output=1&error=1",
                0,
                &b"stdin\n"[..],
            )
        } else {
            (
                "/exec/default/web/app?command=exit&command=7&input=1&output=1&error=1",
                7,
                &b""[..],
            )
        };
        let io = self.world.connect_stream(&self.cloud).await?;
        let mut exec = exec_ws(io, node, path, &[]).await.context("exec")?;
        // A command that exits at once may close the websocket before stdin is sent.
        let _ = exec.send_stdin(b"stdin\n").await;
        let _ = exec.close_stdin().await;
        let out = exec.collect().await.context("exec output")?;
        ensure!(out.stdout == stdout, "exec stdout {:?}", out.stdout);
        ensure!(out.exit_code() == Some(code), "exec status {}", out.status);

        let io = self.world.connect_stream(&self.cloud).await?;
        let mut attach = exec_ws(
            io,
            node,
            "/attach/default/web/app?input=1&output=1&error=1",
            &[],
        )
        .await
        .context("attach")?;
        attach.send_stdin(b"attached\n").await?;
        attach.close_stdin().await?;
        let out = attach.collect().await.context("attach output")?;
        ensure!(
            out.stdout == b"attached\n",
            "attach stdout {:?}",
            out.stdout
        );
        ensure!(out.exit_code() == Some(0), "attach status {}", out.status);

        let io = self.world.connect_stream(&self.cloud).await?;
        let mut pf = port_forward_ws(
            io,
            node,
            &format!("/portForward/default/web?port={}", self.echo_port),
        )
        .await
        .context("port-forward")?;
        let msg = format!("cycle {i}");
        pf.write(msg.as_bytes()).await?;
        let mut echoed = Vec::new();
        while echoed.len() < msg.len() {
            match pf.read().await? {
                Some(data) => echoed.extend_from_slice(&data),
                None => bail!("port-forward ended after {echoed:?}"),
            }
        }
        ensure!(echoed == msg.as_bytes(), "port-forward echoed {echoed:?}");
        pf.close().await?;
        // The kubelet closes its end once the target has seen our end: read to that close.
        while pf.read().await?.is_some() {}

        let stats = self.get_ok(node, "/stats/summary").await.context("stats")?;
        ensure!(stats.starts_with(b"{"), "stats: {stats:?}");
        let metrics = self.get_ok(node, "/metrics").await.context("metrics")?;
        ensure!(!metrics.is_empty(), "metrics: empty");
        Ok(())
    }

    /// Runs `cycles` cycles on every node, [`WORKERS`] at a time per node.
    async fn run(self: &Arc<Self>, cycles: usize) {
        let mut tasks = tokio::task::JoinSet::new();
        for node in NODES {
            for worker in 0..WORKERS {
                let soak = self.clone();
                tasks.spawn(async move {
                    for i in (worker..cycles).step_by(WORKERS) {
                        let result = tokio::time::timeout(PATIENCE, soak.cycle(node, i)).await;
                        match result {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => panic!("{node} cycle {i}: {e:#}"),
                            Err(_) => panic!("{node} cycle {i} hung"),
                        }
                    }
                });
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    }
}

fn cycles() -> usize {
    match std::env::var("TETHER_SOAK_CYCLES") {
        Ok(v) => v.parse().expect("TETHER_SOAK_CYCLES is a number"),
        Err(_) => DEFAULT_CYCLES,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_thousands_of_times_leaves_nothing_behind() {
    let soak = Arc::new(setup().await);
    let probes = soak.probes();

    soak.run(WARM_UP_CYCLES).await;
    tokio::time::timeout(PATIENCE, soak.kubelet.wait_idle())
        .await
        .expect("the kubelet's streams end after the warm-up");
    let mut baselines = Vec::new();
    for probe in &probes {
        baselines.push(probe.settled(PATIENCE).await.unwrap());
    }
    assert_eq!(baselines[0].streams_open, 0);
    assert_eq!(baselines[0].sessions, 2);

    let cycles = cycles();
    let started = Instant::now();
    soak.run(cycles).await;
    let elapsed = started.elapsed();
    let streams = cycles * NODES.len() * 7;
    let mut peaks = Vec::new();
    for probe in &probes {
        peaks.push(probe.read().await.unwrap());
    }

    tokio::time::timeout(PATIENCE, soak.kubelet.wait_idle())
        .await
        .expect("every kubelet stream ends");
    let settle_started = Instant::now();
    let mut ends = Vec::new();
    for (probe, baseline) in probes.iter().zip(&baselines) {
        let end = probe
            .wait_flat(*baseline, Tolerance { rss: RSS_SLACK }, SETTLE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        ends.push(end);
    }
    println!(
        "soak: {cycles} cycles per node x {} nodes x 7 operations = {streams} streams in {:.1} s ({:.0} streams/s); flat again after {:.1} s",
        NODES.len(),
        elapsed.as_secs_f64(),
        streams as f64 / elapsed.as_secs_f64(),
        settle_started.elapsed().as_secs_f64()
    );
    for (((probe, baseline), peak), end) in probes.iter().zip(&baselines).zip(&peaks).zip(&ends) {
        println!(
            "  {}\n    baseline {baseline}\n    after    {peak}\n    settled  {end}",
            probe.name
        );
    }
}
