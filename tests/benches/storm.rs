//! Storm benchmark: 10,000 edges against a release `cloudstream` that is SIGKILLed and
//! restarted, and a real edge connecting while 10,000 idle connections hold the tunnel port.
//!
//! ```text
//! cargo build --release -p cloudstream -p edgestream && cargo bench -p tether-e2e --bench storm
//! ```
//!
//! **Restart storm.** The edges are `edge_stream::run` in this process (the edge's real dial,
//! session and jittered-backoff loop; defaults: backoff 1 s doubling to 30 s, 30 s dial
//! timeout), each with its own node certificate and node IP. Once all are connected, the cloud
//! is SIGKILLed and at once started again on the same port; the benchmark reports when every
//! edge is back (connected again, which for tether/2 means the new cloud has registered it),
//! the spread of the edges' return, the new cloud's CPU time until then, its peak handshake
//! concurrency (`tether_handshakes_peak`), its refusals, and the failed dials the edges made.
//! One round per `maxHandshakes` value in `TETHER_STORM_LIMITS`. All edges dial from
//! 127.0.0.1, so `maxHandshakesPerSource` is set to 20000 here: from one address the default
//! 64 would be the limit under test instead.
//!
//! **Flood.** A fresh cloud with default limits; 10,000 connections from 127.0.0.2 that never
//! send a byte; then the time for an edge from 127.0.0.1 to connect: the in-process dial, and
//! the `edgestream` binary from start to "connected", each beside the same without the flood.
//!
//! Knobs (environment): `TETHER_STORM_SESSIONS` (edges, default 10000, capped by the fd
//! limit), `TETHER_STORM_LIMITS` (comma-separated `maxHandshakes` per round, default
//! `512,20000`), `TETHER_STORM_FLOOD` (idle connections, default 10000; 0 skips),
//! `TETHER_BENCH_LOG` (RUST_LOG of cloudstream, default `info`), `TETHER_STORM_KEEP` (set: keep
//! the clouds' logs and print where). Numbers are reported, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use edge_stream::{EdgeConfig, TunnelStatus};
use test_support::client::{body_bytes, http_get};
use tether_e2e::{Process, World};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tunnel_session::client::{DialConfig, dial};
use tunnel_session::{NodeIdentity, SessionConfig};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// cloudstream as a child process, with a fixed tunnel port so edges find it again.

struct CloudBin {
    child: Child,
    _lines: mpsc::Receiver<String>,
    log: PathBuf,
    tunnel: SocketAddr,
    admin: SocketAddr,
}

impl CloudBin {
    async fn start(world: &World, tunnel: SocketAddr, extra: &[&str], log: &str) -> Result<Self> {
        let config = world.cloudcore("")?.to_string_lossy().into_owned();
        let tunnel_arg = tunnel.to_string();
        let mut args = vec![
            "--config",
            config.as_str(),
            "--tunnel-addr",
            tunnel_arg.as_str(),
            "--stream-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let level = std::env::var("TETHER_BENCH_LOG").unwrap_or_else(|_| "info".into());
        let log = world.path(log);
        let mut child = Command::new(tether_e2e::binary("cloudstream")?)
            .args(&args)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .kill_on_drop(true)
            .spawn()
            .context("starting cloudstream")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, mut lines) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        let line = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.recv().await {
                if line.contains("cloudstream listening") {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            anyhow!(
                "cloudstream did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        let field = |name: &str| -> Result<SocketAddr> {
            let prefix = format!("{name}=");
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix.as_str()))
                .context("missing address")?
                .parse()
                .context("bad address")
        };
        Ok(CloudBin {
            tunnel: field("tunnel")?,
            admin: field("admin")?,
            child,
            _lines: lines,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn metrics(&self) -> Result<String> {
        let io = TcpStream::connect(self.admin).await?;
        let resp = http_get(io, &self.admin.to_string(), "/metrics", &[]).await?;
        Ok(String::from_utf8(
            body_bytes(resp.into_body()).await?.to_vec(),
        )?)
    }

    async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    fn errors_in_log(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("panicked"))
            .count()
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn refusals(text: &str) -> String {
    [
        "timeout",
        "source_limit",
        "tls",
        "identity",
        "ip_conflict",
        "bad_request",
    ]
    .iter()
    .map(|r| {
        let v = metric(
            text,
            &format!("tether_handshakes_refused_total{{reason=\"{r}\"}}"),
        );
        format!("{r} {v}")
    })
    .collect::<Vec<_>>()
    .join(", ")
}

/// The upper bound of the histogram bucket holding quantile `q` of `name` (cumulative
/// `_bucket{le="…"}` series), in milliseconds.
fn bucket_quantile_ms(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix.as_str())?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, count)| *count >= total * q && total > 0.0)
        .map_or(f64::NAN, |(le, _)| le * 1000.0)
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based over the whole line).
    let get = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get(14) + get(15)) as f64 / 100.0
}

fn vm_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    format!(
        "nproc {nproc}, {model}, kernel {}, somaxconn {}, tcp_syncookies {}, loadavg {}",
        read("/proc/sys/kernel/osrelease"),
        read("/proc/sys/net/core/somaxconn"),
        read("/proc/sys/net/ipv4/tcp_syncookies"),
        read("/proc/loadavg")
    )
}

/// This process's own CPU seconds (the edges' side).
fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id())
}

// ---------------------------------------------------------------------------------------
// The fleet: in-process edges, each watched for its connects.

struct Fleet {
    shutdown: CancellationToken,
    /// Per edge: times it has connected.
    connects: Arc<Vec<AtomicU32>>,
    /// Per edge: when it last connected, µs since `t0`.
    connected_at: Arc<Vec<AtomicU64>>,
    /// Dials that failed or sessions that ended (each publishes `Disconnected`).
    disconnects: Arc<AtomicUsize>,
    t0: Instant,
    tasks: tokio::task::JoinSet<()>,
}

impl Fleet {
    fn start(configs: &[DialConfig]) -> Fleet {
        let n = configs.len();
        let connects: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
        let connected_at: Arc<Vec<AtomicU64>> =
            Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let disconnects = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, dial) in configs.iter().enumerate() {
            let (tx, mut rx) = watch::channel(TunnelStatus::Connecting);
            let config = EdgeConfig::new(dial.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = edge_stream::run(config, stop, Some(tx)).await {
                    eprintln!("edge {i}: {e}");
                }
            });
            let (connects, connected_at, disconnects) =
                (connects.clone(), connected_at.clone(), disconnects.clone());
            tasks.spawn(async move {
                while rx.changed().await.is_ok() {
                    let status = rx.borrow_and_update().clone();
                    match status {
                        TunnelStatus::Connected { .. } => {
                            connected_at[i]
                                .store(t0.elapsed().as_micros() as u64, Ordering::SeqCst);
                            connects[i].fetch_add(1, Ordering::SeqCst);
                        }
                        TunnelStatus::Disconnected { .. } => {
                            disconnects.fetch_add(1, Ordering::SeqCst);
                        }
                        TunnelStatus::Connecting => {}
                        TunnelStatus::Stopped => return,
                    }
                }
            });
        }
        Fleet {
            shutdown,
            connects,
            connected_at,
            disconnects,
            t0,
            tasks,
        }
    }

    fn connected_at_least(&self, times: u32) -> usize {
        self.connects
            .iter()
            .filter(|c| c.load(Ordering::SeqCst) >= times)
            .count()
    }

    /// Polls until every edge has connected `times` times, or `limit` passes; returns when
    /// the last one did, if all did.
    async fn wait_all(&self, times: u32, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if self.connected_at_least(times) == self.connects.len() {
                let last = self
                    .connected_at
                    .iter()
                    .map(|t| t.load(Ordering::SeqCst))
                    .max()
                    .unwrap_or(0);
                return Some(self.t0 + Duration::from_micros(last));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Seconds from `since` to each edge's last connect, sorted.
    fn return_times(&self, since: Instant) -> Vec<f64> {
        let base = since.duration_since(self.t0).as_secs_f64();
        let mut v: Vec<f64> = self
            .connected_at
            .iter()
            .map(|t| t.load(Ordering::SeqCst) as f64 / 1e6 - base)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A free port on 127.0.0.1 for the tunnel (bound, read, released).
fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// One restart round with `max_handshakes`.
async fn restart_round(
    world: &World,
    configs: &mut [DialConfig],
    max_handshakes: usize,
) -> Result<String> {
    let mut out = String::new();
    let tunnel = free_port()?;
    for c in configs.iter_mut() {
        c.server = tunnel.to_string();
    }
    let limit = max_handshakes.to_string();
    let args = [
        "--tunnel-max-handshakes",
        limit.as_str(),
        "--tunnel-max-handshakes-per-source",
        "20000",
    ];
    let cloud = CloudBin::start(world, tunnel, &args, &format!("cloud-{limit}-a.log")).await?;
    let n = configs.len();
    let edge_cpu0 = own_cpu_seconds();
    let fleet = Fleet::start(configs);
    let Some(last) = fleet.wait_all(1, Duration::from_secs(300)).await else {
        bail!(
            "cold start: only {} of {n} edges connected in 300 s",
            fleet.connected_at_least(1)
        );
    };
    let cold = last.duration_since(fleet.t0);
    let text = cloud.metrics().await?;
    writeln!(
        out,
        "- cold start (fresh cloud, {n} edges dialling at once): all connected in {:.2} s; cloud CPU {:.2} s, peak handshakes {}, sessions {}, refused: {}; edges' CPU {:.2} s",
        cold.as_secs_f64(),
        cpu_seconds(cloud.pid()),
        metric(&text, "tether_handshakes_peak"),
        metric(&text, "tether_sessions"),
        refusals(&text),
        own_cpu_seconds() - edge_cpu0,
    )?;
    let rss_before = vm_rss_mib(cloud.pid());
    let errors_a = cloud.errors_in_log();

    // SIGKILL, then at once a new process on the same port.
    let disconnects0 = fleet.disconnects.load(Ordering::SeqCst);
    let edge_cpu1 = own_cpu_seconds();
    let killed = Instant::now();
    cloud.kill().await?;
    let cloud = CloudBin::start(world, tunnel, &args, &format!("cloud-{limit}-b.log")).await?;
    let up = killed.elapsed();
    let back = fleet.wait_all(2, Duration::from_secs(600)).await;
    let cpu_until_back = cpu_seconds(cloud.pid());
    let edge_cpu = own_cpu_seconds() - edge_cpu1;
    let text = cloud.metrics().await?;
    let failed_dials = fleet
        .disconnects
        .load(Ordering::SeqCst)
        .saturating_sub(disconnects0 + n);
    match back {
        Some(last) => {
            let times = fleet.return_times(killed);
            writeln!(
                out,
                "- SIGKILL + restart: new cloud listening {:.2} s after the kill; **all {n} back {:.2} s after the kill**; edges back after p50 {:.2} s, p90 {:.2} s, p99 {:.2} s",
                up.as_secs_f64(),
                last.duration_since(killed).as_secs_f64(),
                pct(&times, 0.5),
                pct(&times, 0.9),
                pct(&times, 0.99),
            )?;
        }
        None => writeln!(
            out,
            "- SIGKILL + restart: only {} of {n} back within 600 s",
            fleet.connected_at_least(2)
        )?,
    }
    writeln!(
        out,
        "- new cloud until all were back: **CPU {cpu_until_back:.2} s** ({:.2} ms per edge), **peak handshakes {}** (limit {max_handshakes}), sessions {}, refused: {}; VmRSS {:.0} MiB (first cloud with the same sessions: {rss_before:.0} MiB)",
        cpu_until_back * 1000.0 / n as f64,
        metric(&text, "tether_handshakes_peak"),
        metric(&text, "tether_sessions"),
        refusals(&text),
        vm_rss_mib(cloud.pid()),
    )?;
    // Pings of the sessions already back, sampled every 5 s by the cloud while the others were
    // still arriving: do running sessions starve while handshakes take the CPU?
    writeln!(
        out,
        "- ping round trips of sessions already back, during the storm ({} samples): p50 ≤ {} ms, p99 ≤ {} ms (histogram bucket bounds)",
        metric(&text, "tether_ping_rtt_seconds_count"),
        bucket_quantile_ms(&text, "tether_ping_rtt_seconds", 0.5),
        bucket_quantile_ms(&text, "tether_ping_rtt_seconds", 0.99),
    )?;
    writeln!(
        out,
        "- edges: {failed_dials} failed dials during the storm (refused while the cloud was down, or timed out), edges' CPU {edge_cpu:.2} s; cloud log lines with ERROR/panicked: {} + {}",
        errors_a,
        cloud.errors_in_log()
    )?;
    fleet.stop().await;
    cloud.kill().await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Flood.

async fn time_dial(config: &DialConfig) -> Result<Duration> {
    let t = Instant::now();
    let (session, _incoming, driver) = dial(config).await?;
    let took = t.elapsed();
    let driving = tokio::spawn(driver.run());
    session.close("measured");
    let _ = driving.await;
    Ok(took)
}

async fn time_edgestream(world: &World, cloud: &CloudBin, node: &str) -> Result<Duration> {
    let config = world.edgecore(
        node,
        "10.200.0.1",
        cloud.tunnel,
        "127.0.0.1:1".parse()?,
        node,
    )?;
    let config = config.to_string_lossy().into_owned();
    let t = Instant::now();
    let mut edge = Process::spawn(
        "edgestream",
        &["--config", config.as_str()],
        world.path(&format!("edgestream-{node}.log")),
    )?;
    edge.wait_line("edgestream connected").await?;
    let took = t.elapsed();
    edge.terminate()?;
    let _ = tokio::time::timeout(Duration::from_secs(20), edge.child.wait()).await;
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn flood(world: &World, idle: usize) -> Result<String> {
    let mut out = String::new();
    let cloud = CloudBin::start(world, "127.0.0.1:0".parse()?, &[], "cloud-flood.log").await?;
    let id = world.pki.node("flood-edge")?;
    let config = DialConfig {
        server: cloud.tunnel.to_string(),
        tls: world.pki.client_config(Some(&id))?,
        node: NodeIdentity {
            name: "flood-edge".into(),
            ip: Some("10.200.0.2".parse()?),
        },
        handshake_timeout: Duration::from_secs(30),
        session: SessionConfig::default(),
        offer_tether2: true,
    };
    let mut quiet = Vec::new();
    for _ in 0..5 {
        quiet.push(time_dial(&config).await?);
    }
    let quiet_bin = time_edgestream(world, &cloud, "flood-bin-a").await?;

    let cpu0 = cpu_seconds(cloud.pid());
    let t = Instant::now();
    let opening = Arc::new(tokio::sync::Semaphore::new(500));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..idle {
        let opening = opening.clone();
        let tunnel = cloud.tunnel;
        tasks.spawn(async move {
            let _permit = opening.acquire_owned().await?;
            let socket = TcpSocket::new_v4()?;
            socket.bind("127.0.0.2:0".parse()?)?;
            anyhow::Ok(socket.connect(tunnel).await?)
        });
    }
    let (mut held, mut reset, mut other) = (Vec::new(), 0usize, 0usize);
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(tcp) => held.push(tcp),
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset) =>
            {
                reset += 1;
            }
            Err(_) => other += 1,
        }
    }
    let opened_in = t.elapsed();
    let mut flooded = Vec::new();
    for _ in 0..5 {
        flooded.push(time_dial(&config).await?);
    }
    let flooded_bin = time_edgestream(world, &cloud, "flood-bin-b").await?;
    let text = cloud.metrics().await?;
    writeln!(
        out,
        "- {idle} idle connections from 127.0.0.2 opened in {:.2} s ({} connect calls returned a socket, {reset} were reset before connect returned, {other} failed otherwise); cloud: handshakes in progress {}, refused: {}; cloud CPU for the flood and the dials {:.2} s",
        opened_in.as_secs_f64(),
        held.len(),
        metric(&text, "tether_handshakes"),
        refusals(&text),
        cpu_seconds(cloud.pid()) - cpu0,
    )?;
    writeln!(
        out,
        "- in-process dial from 127.0.0.1 (TCP + TLS + upgrade), median of 5: **{:.1} ms with the flood**, {:.1} ms without",
        median(flooded).as_secs_f64() * 1000.0,
        median(quiet).as_secs_f64() * 1000.0,
    )?;
    writeln!(
        out,
        "- `edgestream` from process start to connected: **{:.0} ms with the flood**, {:.0} ms without",
        flooded_bin.as_secs_f64() * 1000.0,
        quiet_bin.as_secs_f64() * 1000.0,
    )?;
    drop(held);
    cloud.kill().await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a `harness = false` bench ignores its arguments.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<()> {
    tunnel_session::tls::install_default_provider();
    // One descriptor per edge session (or flood connection) here; children inherit the limit.
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let headroom = 1000;
    let fd_cap = (hard as usize).saturating_sub(headroom);
    let sessions = (env_num("TETHER_STORM_SESSIONS", 10_000) as usize).min(fd_cap);
    let idle = (env_num("TETHER_STORM_FLOOD", 10_000) as usize).min(fd_cap);
    let limits: Vec<usize> = std::env::var("TETHER_STORM_LIMITS")
        .unwrap_or_else(|_| "512,20000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("tether storm benchmark");
    println!("{}", machine());
    println!(
        "RLIMIT_NOFILE {hard}; {sessions} edges; maxHandshakes rounds {limits:?}; flood {idle}"
    );

    let world = World::new()?;
    if sessions > 0 && !limits.is_empty() {
        let t = Instant::now();
        let mut configs = Vec::with_capacity(sessions);
        for i in 0..sessions {
            let name = format!("storm-{i}");
            let id = world.pki.node(&name)?;
            let ip = format!("10.{}.{}.{}", 100 + i / 62500, (i / 250) % 250, i % 250 + 1);
            configs.push(DialConfig {
                server: String::new(),
                tls: world.pki.client_config(Some(&id))?,
                node: NodeIdentity {
                    name,
                    ip: Some(ip.parse()?),
                },
                // KubeEdge's and edgestream's default.
                handshake_timeout: Duration::from_secs(30),
                session: SessionConfig::default(),
                offer_tether2: true,
            });
        }
        println!(
            "{sessions} node certificates made in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        for limit in &limits {
            println!("\n### restart storm, maxHandshakes {limit}");
            match restart_round(&world, &mut configs, *limit).await {
                Ok(report) => print!("{report}"),
                Err(e) => println!("FAILED: {e:#}"),
            }
        }
    }
    if idle > 0 {
        println!("\n### flood, default limits");
        match flood(&world, idle).await {
            Ok(report) => print!("{report}"),
            Err(e) => println!("FAILED: {e:#}"),
        }
    }
    if std::env::var_os("TETHER_STORM_KEEP").is_some() {
        println!("\nlogs in {} (kept)", world.dir.path().display());
        let _ = world.dir.keep();
    }
    Ok(())
}
