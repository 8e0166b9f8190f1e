//! The tunnel over emulated edge links (linkem), beside a direct connection over the same link.
//!
//! ```text
//! cargo build --release -p cloudstream -p edgestream && cargo bench -p tether-e2e --bench link
//! ```
//!
//! For each link (`TETHER_BENCH_LINKS`, default `100Mbit/200ms,20Mbit/100ms,2Mbit/300ms`):
//!
//! - **tunnel**: client → cloudstream → tunnel → *link* → edgestream → test kubelet: the link
//!   sits between the edge and the cloud, where the internet is (the download direction,
//!   kubelet → client, is the link's edge → cloud path);
//! - **direct**: client → *link* → test kubelet, the same exec over one TCP connection
//!   through an identical link.
//!
//! Measured: one exec download (`yes-bytes`, `TETHER_BENCH_LINK_SECONDS` × the link rate,
//! default 10 s), then 64-byte exec echoes (`cat`) on an idle link and while a download
//! saturates the same node's link (`TETHER_BENCH_ECHOES`, default 200), then the memory of
//! both processes. On the 2 Mbit/s link (and any link named in `TETHER_BENCH_LOG_LINKS`,
//! default `2Mbit/300ms`): `kubectl logs` of a realistic container log
//! (`TETHER_BENCH_LOG_MB`, default 5) and a `/metrics/cadvisor` scrape, direct, and through
//! the tunnel with body compression (`--compress-bodies auto`, the default) and without
//! (`off`). Numbers are printed, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::BodyExt;
use linkem::{Link, Preset};
use test_support::client::{BoxIo, Event, exec_ws, http_get};
use test_support::content::realistic_log;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cloud, Edge, World};
use tokio::net::TcpStream;

const NODE: &str = "edge-1";
const MB: f64 = 1e6;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq)]
enum Via {
    Direct,
    Tunnel,
}

struct Setup {
    world: World,
    cloud: Cloud,
    edge: Edge,
    /// In front of the kubelet, for the direct path.
    direct_link: Link,
    /// Between edgestream and cloudstream.
    tunnel_link: Link,
    _kubelet: TestKubelet,
}

impl Setup {
    async fn connect(&self, via: Via) -> Result<(BoxIo, &'static str)> {
        Ok(match via {
            Via::Direct => {
                let tcp = TcpStream::connect(self.direct_link.addr()).await?;
                tcp.set_nodelay(true)?;
                (Box::new(tcp), "127.0.0.1")
            }
            Via::Tunnel => (
                Box::new(self.world.connect_stream(&self.cloud).await?),
                NODE,
            ),
        })
    }
}

async fn download(s: &Setup, via: Via, n: u64) -> Result<Duration> {
    let (io, host) = s.connect(via).await?;
    let path = format!("/exec/default/web/app?command=yes-bytes&command={n}&output=1&error=1");
    let started = Instant::now();
    let session = exec_ws(io, host, &path, &[]).await?;
    let (_writer, mut reader) = session.split();
    let mut got = 0u64;
    let trace = std::env::var_os("TETHER_BENCH_TRACE").is_some();
    let mut mark = (Instant::now(), 0u64);
    while let Some(event) = reader.next().await? {
        if trace && mark.0.elapsed() >= Duration::from_millis(250) {
            eprintln!(
                "  {:>6.2} s: {:.2} MB/s",
                started.elapsed().as_secs_f64(),
                (got - mark.1) as f64 / mark.0.elapsed().as_secs_f64() / MB
            );
            mark = (Instant::now(), got);
        }
        match event {
            Event::Stdout(d) => got += d.len() as u64,
            Event::Stderr(d) => bail!("stderr: {}", String::from_utf8_lossy(&d)),
            Event::Status(_) => {}
        }
    }
    ensure!(got == n, "got {got} of {n} bytes");
    Ok(started.elapsed())
}

/// `rounds` 64-byte echoes through `cat`, one after the other; sorted latencies.
async fn echoes(s: &Setup, via: Via, rounds: usize) -> Result<Vec<Duration>> {
    let (io, host) = s.connect(via).await?;
    let path = "/exec/default/web/app?command=cat&input=1&output=1&error=1";
    let session = exec_ws(io, host, path, &[]).await?;
    let (mut writer, mut reader) = session.split();
    let msg = [b'x'; 64];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        writer.send_stdin(&msg).await?;
        let mut got = 0;
        while got < msg.len() {
            match reader.next().await? {
                Some(Event::Stdout(d)) => got += d.len(),
                other => bail!("unexpected {other:?}"),
            }
        }
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times)
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// A plain GET of `path`; the body's length and how long it took.
async fn fetch(s: &Setup, via: Via, path: &str) -> Result<(usize, Duration)> {
    let started = Instant::now();
    let (io, host) = s.connect(via).await?;
    let resp = http_get(io, host, path, &[]).await?;
    ensure!(resp.status().is_success(), "status {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((body.len(), started.elapsed()))
}

async fn start(preset: Preset, cloud_args: &[&str], log: &Bytes) -> Result<Setup> {
    let world = World::new()?;
    let kubelet = TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(&b"hello\n"[..]),
        )
        .container(
            "default",
            "big",
            "app",
            ContainerSpec::with_logs(log.clone()),
        )
        .cadvisor_containers(env_num("TETHER_BENCH_CADVISOR_CONTAINERS", 500) as usize)
        .start()
        .await?;
    let cloud = Cloud::start(&world, cloud_args).await?;
    let tunnel_link = Link::start(cloud.tunnel, preset.into())?;
    let direct_link = Link::start(kubelet.addr(), preset.into())?;
    let mut edge = Edge::spawn(
        &world,
        tunnel_link.addr(),
        NODE,
        "10.0.0.11",
        kubelet.addr(),
        NODE,
        &[],
    )?;
    edge.process.wait_line("edgestream connected").await?;
    Ok(Setup {
        world,
        cloud,
        edge,
        direct_link,
        tunnel_link,
        _kubelet: kubelet,
    })
}

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
    tunnel_session::tls::install_default_provider();
    let links = std::env::var("TETHER_BENCH_LINKS")
        .unwrap_or_else(|_| "100Mbit/200ms,20Mbit/100ms,2Mbit/300ms".into());
    let seconds = env_num("TETHER_BENCH_LINK_SECONDS", 10);
    let rounds = env_num("TETHER_BENCH_ECHOES", 200) as usize;
    let log_links =
        std::env::var("TETHER_BENCH_LOG_LINKS").unwrap_or_else(|_| "2Mbit/300ms".into());
    let log = realistic_log(env_num("TETHER_BENCH_LOG_MB", 5) as usize * 1_000_000);
    println!("tether over emulated links (linkem, 64 KiB router queue); MB = 10^6 bytes");
    for name in links.split(',') {
        let preset = Preset::ALL
            .into_iter()
            .find(|p| p.name() == name.trim())
            .with_context(|| format!("unknown link {name}"))?;
        let rate = preset.config().up.rate;
        let n = rate * seconds;
        let s = start(preset, &[], &log).await?;
        println!(
            "\n## {} (link rate {:.2} MB/s)",
            preset.name(),
            rate as f64 / MB
        );
        println!("| measurement | direct | tunnel |");
        println!("|---|---|---|");
        let mut row = Vec::new();
        for via in [Via::Direct, Via::Tunnel] {
            let took = download(&s, via, n).await?;
            let mbs = n as f64 / took.as_secs_f64() / MB;
            row.push(format!(
                "{mbs:.2} MB/s, {:.0} % of the link",
                mbs * MB * 100.0 / rate as f64
            ));
        }
        println!(
            "| exec download of {:.0} MB | {} | {} |",
            n as f64 / MB,
            row[0],
            row[1]
        );
        let mut idle = Vec::new();
        for via in [Via::Direct, Via::Tunnel] {
            let t = echoes(&s, via, rounds / 4).await?;
            idle.push(format!("{} / {}", ms(pct(&t, 50)), ms(pct(&t, 99))));
        }
        println!(
            "| 64-byte exec echo, idle link, p50 / p99 | {} | {} |",
            idle[0], idle[1]
        );
        // Echoes while a download saturates the same node's link: the download runs on
        // its own exec stream of the same tunnel session (for the direct path, its own
        // connection through the same link model: each connection gets its own path there,
        // so the direct figure shows the link without a competing download).
        let mut busy = Vec::new();
        for via in [Via::Direct, Via::Tunnel] {
            let background = {
                let s = &s;
                async move {
                    let _ = download(s, via, rate * 600).await;
                }
            };
            let measured = async {
                // Let the download reach full speed first.
                tokio::time::sleep(Duration::from_secs(2)).await;
                echoes(&s, via, rounds).await
            };
            let t = tokio::select! {
                t = measured => t?,
                () = background => bail!("the background download ended first"),
            };
            busy.push(format!("{} / {}", ms(pct(&t, 50)), ms(pct(&t, 99))));
        }
        println!(
            "| 64-byte exec echo while a download runs, p50 / p99 | {} (separate connection) | {} (same session) |",
            busy[0], busy[1]
        );
        // Memory at the caps: one stream whose client stopped reading (its window fills and
        // stays full) beside a bulk download on the same session; the peak RSS of both
        // processes while the download runs, against their RSS before.
        {
            let (cloud_pid, edge_pid) = (
                s.cloud.process.child.id().unwrap_or(0),
                s.edge.process.child.id().unwrap_or(0),
            );
            let before = (vm_rss_kib(cloud_pid), vm_rss_kib(edge_pid));
            let (io, host) = s.connect(Via::Tunnel).await?;
            let stalled = http_get(io, host, "/containerLogs/default/big/app", &[]).await?;
            let bulk = download(&s, Via::Tunnel, rate * 5);
            tokio::pin!(bulk);
            let mut peak = before;
            loop {
                tokio::select! {
                    r = &mut bulk => { r?; break; }
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        peak.0 = peak.0.max(vm_rss_kib(cloud_pid));
                        peak.1 = peak.1.max(vm_rss_kib(edge_pid));
                    }
                }
            }
            drop(stalled);
            println!(
                "| RSS peak with one stalled and one bulk stream (before) | — | cloudstream {} KiB ({}), edgestream {} KiB ({}) |",
                peak.0, before.0, peak.1, before.1
            );
        }
        let (cloud_pid, edge_pid) = (
            s.cloud.process.child.id().unwrap_or(0),
            s.edge.process.child.id().unwrap_or(0),
        );
        println!(
            "| RSS after the runs | — | cloudstream {} KiB, edgestream {} KiB |",
            vm_rss_kib(cloud_pid),
            vm_rss_kib(edge_pid)
        );
        if std::env::var_os("TETHER_BENCH_TRACE").is_some() {
            let _ = std::fs::copy(&s.cloud.process.log, "/tmp/link-cloudstream.log");
            let _ = std::fs::copy(&s.edge.process.log, "/tmp/link-edgestream.log");
        }
        if log_links.split(',').any(|l| l.trim() == preset.name()) {
            let plain = start(preset, &["--compress-bodies", "off"], &log).await?;
            let path = "/containerLogs/default/big/app";
            let (n, direct) = fetch(&s, Via::Direct, path).await?;
            let (_, off) = fetch(&plain, Via::Tunnel, path).await?;
            let before = s.tunnel_link.stats().up.forwarded;
            let (m, on) = fetch(&s, Via::Tunnel, path).await?;
            let carried = s.tunnel_link.stats().up.forwarded - before;
            ensure!(n == log.len() && m == log.len(), "log length {n} / {m}");
            println!(
                "| `kubectl logs` of a {:.1} MB realistic log | {} | {} uncompressed, {} compressed: {:.1}× faster ({:.2} MB crossed the link) |",
                n as f64 / MB,
                ms(direct),
                ms(off),
                ms(on),
                off.as_secs_f64() / on.as_secs_f64(),
                carried as f64 / MB
            );
            let path = "/metrics/cadvisor";
            let (n, direct) = fetch(&s, Via::Direct, path).await?;
            let (_, off) = fetch(&plain, Via::Tunnel, path).await?;
            let (_, on) = fetch(&s, Via::Tunnel, path).await?;
            println!(
                "| `/metrics/cadvisor` scrape (the test kubelet's, {n} bytes) | {} | {} uncompressed, {} compressed |",
                ms(direct),
                ms(off),
                ms(on)
            );
            plain.tunnel_link.shutdown().await;
            plain.direct_link.shutdown().await;
        }
        let stats = s.tunnel_link.stats();
        eprintln!("tunnel link stats: {stats:?}");
        s.tunnel_link.shutdown().await;
        s.direct_link.shutdown().await;
    }
    Ok(())
}
