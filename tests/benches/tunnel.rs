//! Load tool: the real `cloudstream` and `edgestream` binaries against a direct connection to
//! the same test kubelet, in one run, on one machine (design.md §3).
//!
//! ```text
//! cargo build --release -p cloudstream -p edgestream && cargo bench -p tether-e2e --bench tunnel
//! ```
//!
//! For each scenario the same client code runs over three paths:
//! - **direct**: client → test kubelet over plain TCP (like edged's `127.0.0.1:10350`);
//! - **direct TLS**: client → a second test kubelet serving HTTPS (design.md's targets are
//!   stated against "a direct HTTPS connection");
//! - **tunnel**: client → cloudstream's stream server (TLS, client certificate) → tunnel
//!   (websocket over mTLS, tether/2) → edgestream → the plain-TCP kubelet.
//!
//! The test kubelet and the client live in this process; cloudstream and edgestream are child
//! processes. All of it shares the machine's cores, so the CPU each process burns during a
//! tunnel measurement is printed too. Numbers are reported, never asserted.
//!
//! Knobs (environment): `TETHER_BENCH_MIB` (bulk size, default 256), `TETHER_BENCH_RUNS`
//! (repetitions per bulk measurement, median reported, default 3), `TETHER_BENCH_RTT`
//! (round trips, default 2000), `TETHER_BENCH_SESSIONS` (idle sessions, default 10000, capped
//! by the fd limit; 0 skips), `TETHER_BENCH_SESSION_ROUNDS` (default 2), `TETHER_BENCH_LOG` (RUST_LOG of the binaries, default `info`),
//! `TETHER_BENCH_ONLY` (comma-separated scenario numbers, e.g. `1,3`),
//! `TETHER_BENCH_SESSION_DIALECTS` (scenario 6's edges: `kubeedge` dials as a stock edgecore,
//! `tether2` offers tether/2; default both, one fresh cloudstream each); scenario 7 (many
//! streams on one session, with and without a stalled reader) takes `TETHER_BENCH_STREAMS`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use rustls::ClientConfig;
use test_support::client::{BoxIo, Event, exec_ws, http_get, port_forward_ws};
use test_support::content::generated_log;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Process, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tunnel_session::client::{DialConfig, dial};
use tunnel_session::{Dialect, NodeIdentity, SessionConfig};

const MB: f64 = 1e6;
/// A measurement that takes longer than this is reported as stalled.
const STALL: Duration = Duration::from_secs(60);
const NODE: &str = "edge-1";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Child processes (`Process::spawn_bench`: the e2e harness' spawner with `info` logs).

struct CloudProc {
    bin: Process,
    tunnel: SocketAddr,
    stream: SocketAddr,
}

async fn start_cloud(world: &World, log: &str) -> Result<CloudProc> {
    let config = world.cloudcore("")?.to_string_lossy().into_owned();
    let args = [
        "--config",
        config.as_str(),
        "--tunnel-addr",
        "127.0.0.1:0",
        "--stream-addr",
        "127.0.0.1:0",
    ];
    let mut bin = Process::spawn_bench("cloudstream", &args, world.path(log))?;
    let line = bin.wait_line("cloudstream listening").await?;
    let field = |name: &str| -> Result<SocketAddr> {
        let prefix = format!("{name}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .context("missing address")?
            .parse()
            .context("bad address")
    };
    Ok(CloudProc {
        tunnel: field("tunnel")?,
        stream: field("stream")?,
        bin,
    })
}

async fn start_edge(
    world: &World,
    cloud: &CloudProc,
    kubelet: SocketAddr,
) -> Result<(Process, String)> {
    let config = world
        .edgecore(NODE, "10.0.0.11", cloud.tunnel, kubelet, NODE)?
        .to_string_lossy()
        .into_owned();
    let mut bin = Process::spawn_bench(
        "edgestream",
        &["--config", config.as_str()],
        world.path("edgestream.log"),
    )?;
    let line = bin.wait_line("edgestream connected").await?;
    Ok((bin, line))
}

// ---------------------------------------------------------------------------------------
// /proc readings.

/// User + system CPU time of a process, in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: &str) -> u64 {
    let (user, system) = user_system_ticks(pid);
    user + system
}

/// User and system CPU time of a process, in clock ticks. System time is the kernel's work
/// on the process's behalf: on loopback that includes the TCP receive processing of the
/// socket's other end, which runs in the sender's context.
fn user_system_ticks(pid: &str) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return (0, 0);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based over the whole line).
    let get = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get(14), get(15))
}

/// Busy CPU time of the whole machine (all cores), in clock ticks, from `/proc/stat`.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
    v.iter().sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
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

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let flags_sha = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.contains(" sha_ni"));
    let aes = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.contains(" aes"));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "date: {date}\nnproc: {nproc}\ncpu: {model} (aes: {aes}, sha_ni: {flags_sha})\nkernel: {kernel}\nmemory: {} MiB",
        mem.parse::<u64>().unwrap_or(0) / 1024
    )
}

// ---------------------------------------------------------------------------------------
// Paths to the kubelet.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Direct,
    DirectTls,
    Tunnel,
}

impl Via {
    const ALL: [Via; 3] = [Via::Direct, Via::DirectTls, Via::Tunnel];
}

struct Bench {
    world: World,
    cloud: CloudProc,
    edge: Process,
    kubelet: TestKubelet,
    kubelet_tls: TestKubelet,
    apiserver: Arc<ClientConfig>,
    bulk: u64,
    runs: usize,
    cpu: std::sync::Mutex<Vec<CpuRow>>,
}

struct CpuRow {
    what: String,
    via: Via,
    cloud: f64,
    edge: f64,
    bench: f64,
    machine: f64,
    wall: Duration,
    /// Payload bytes moved by the measured runs (not the warm-up).
    bytes: u64,
    /// CPU seconds over those runs: cloudstream, edgestream, this process (client + kubelet),
    /// the whole machine.
    secs: [f64; 4],
    /// Of `secs[0] + secs[1]`, the kernel's part (stime).
    tunnel_system: f64,
}

impl CpuRow {
    /// CPU seconds per GB (10⁹ payload bytes) of `secs`.
    fn per_gb(&self, secs: f64) -> f64 {
        secs / (self.bytes as f64 / 1e9)
    }
}

async fn tls_nodelay(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<BoxIo> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1".to_owned())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

impl Bench {
    /// A connection as kube-apiserver makes it (TCP_NODELAY like Go), and the Host to use.
    async fn connect(&self, via: Via) -> Result<(BoxIo, &'static str)> {
        Ok(match via {
            Via::Direct => {
                let tcp = TcpStream::connect(self.kubelet.addr()).await?;
                tcp.set_nodelay(true)?;
                (Box::new(tcp), "127.0.0.1")
            }
            Via::DirectTls => (
                tls_nodelay(self.kubelet_tls.addr(), self.apiserver.clone()).await?,
                "127.0.0.1",
            ),
            Via::Tunnel => (
                tls_nodelay(self.cloud.stream, self.apiserver.clone()).await?,
                NODE,
            ),
        })
    }

    /// Runs `f` `runs` times (after one small warm-up when `warm` is given) and returns the
    /// median rate in MB/s; records CPU use of every process for tunnel runs.
    async fn rate<F, Fut>(&self, what: &str, via: Via, f: F) -> Cell
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<u64>>,
    {
        if let Err(e) = with_stall(f(4 << 20)).await {
            return Cell::Fail(format!("warm-up: {e:#}"));
        }
        let pids = [
            self.cloud.bin.pid().unwrap_or(0).to_string(),
            self.edge.pid().unwrap_or(0).to_string(),
            "self".to_owned(),
        ];
        let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(p)).collect();
        let system_before = user_system_ticks(&pids[0]).1 + user_system_ticks(&pids[1]).1;
        let busy_before = machine_busy_ticks();
        let started = Instant::now();
        let mut rates = Vec::new();
        let mut moved = 0;
        for _ in 0..self.runs {
            let t = Instant::now();
            match with_stall(f(self.bulk)).await {
                Ok(bytes) => {
                    moved += bytes;
                    rates.push(bytes as f64 / t.elapsed().as_secs_f64() / MB);
                }
                Err(e) => return Cell::Fail(format!("{e:#}")),
            }
        }
        let wall = started.elapsed();
        let after: Vec<u64> = pids.iter().map(|p| cpu_ticks(p)).collect();
        let system_ticks =
            user_system_ticks(&pids[0]).1 + user_system_ticks(&pids[1]).1 - system_before;
        let busy_ticks = machine_busy_ticks() - busy_before;
        let busy = busy_ticks as f64 / wall.as_secs_f64();
        // USER_HZ is 100 on Linux.
        let secs = |i: usize| (after[i] - before[i]) as f64 / 100.0;
        let pct = |i: usize| secs(i) / wall.as_secs_f64() * 100.0;
        let tunnel = via == Via::Tunnel;
        self.cpu.lock().unwrap().push(CpuRow {
            what: what.to_owned(),
            via,
            cloud: if tunnel { pct(0) } else { 0.0 },
            edge: if tunnel { pct(1) } else { 0.0 },
            bench: pct(2),
            machine: busy,
            wall,
            bytes: moved,
            secs: [
                if tunnel { secs(0) } else { 0.0 },
                if tunnel { secs(1) } else { 0.0 },
                secs(2),
                busy_ticks as f64 / 100.0,
            ],
            tunnel_system: if tunnel {
                system_ticks as f64 / 100.0
            } else {
                0.0
            },
        });
        rates.sort_by(f64::total_cmp);
        eprintln!(
            "  {what} via {}: runs {:?} MB/s",
            via_name(via),
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
        Cell::Value(rates[rates.len() / 2])
    }
}

fn via_name(via: Via) -> &'static str {
    match via {
        Via::Direct => "direct",
        Via::DirectTls => "direct TLS",
        Via::Tunnel => "tunnel",
    }
}

async fn with_stall<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(STALL, f).await {
        Ok(r) => r,
        Err(_) => bail!("stalled (no completion within {STALL:?})"),
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios: each returns the number of payload bytes moved.

/// 1. `kubectl cp` from a pod: exec `yes-bytes N`, read stdout to the end.
async fn exec_download(b: &Bench, via: Via, n: u64) -> Result<u64> {
    let (io, host) = b.connect(via).await?;
    let path = format!("/exec/default/web/app?command=yes-bytes&command={n}&output=1&error=1");
    let session = exec_ws(io, host, &path, &[]).await?;
    let (_writer, mut reader) = session.split();
    let mut got = 0u64;
    let mut status = None;
    while let Some(event) = reader.next().await? {
        match event {
            Event::Stdout(d) => got += d.len() as u64,
            Event::Stderr(d) => bail!("stderr: {}", String::from_utf8_lossy(&d)),
            Event::Status(s) => status = Some(s),
        }
    }
    ensure!(got == n, "got {got} of {n} bytes (status {status:?})");
    Ok(got)
}

/// 2. `kubectl cp` into a pod: N bytes of stdin into `sha256sum`, until the checksum line.
async fn exec_upload(b: &Bench, via: Via, data: Bytes) -> Result<u64> {
    let n = data.len() as u64;
    let (io, host) = b.connect(via).await?;
    let path = "/exec/default/web/app?command=sha256sum&input=1&output=1&error=1";
    let session = exec_ws(io, host, path, &[]).await?;
    let (mut writer, mut reader) = session.split();
    let feed = tokio::spawn(async move {
        writer.send_stdin(&data).await?;
        writer.close_stdin().await?;
        anyhow::Ok(writer)
    });
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        match reader.next().await? {
            Some(Event::Stdout(d)) => line.extend_from_slice(&d),
            Some(Event::Stderr(d)) => bail!("stderr: {}", String::from_utf8_lossy(&d)),
            Some(Event::Status(s)) => bail!("ended early: {s}"),
            None => bail!("closed before the checksum"),
        }
    }
    let text = String::from_utf8_lossy(&line);
    ensure!(
        text.trim_end().ends_with(&format!("  {n}")),
        "checksum line {text:?}"
    );
    let _writer = feed.await??;
    Ok(n)
}

/// 3. Interactive exec: 64 bytes into `cat`, wait for the echo. Returns sorted latencies.
async fn exec_rtt(b: &Bench, via: Via, rounds: usize) -> Result<Vec<Duration>> {
    let (io, host) = b.connect(via).await?;
    let path = "/exec/default/web/app?command=cat&input=1&output=1&error=1";
    let session = exec_ws(io, host, path, &[]).await?;
    let (mut writer, mut reader) = session.split();
    let msg = [b'x'; 64];
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + 200 {
        let t = Instant::now();
        writer.send_stdin(&msg).await?;
        let mut got = 0;
        while got < msg.len() {
            match reader.next().await? {
                Some(Event::Stdout(d)) => got += d.len(),
                other => bail!("unexpected {other:?}"),
            }
        }
        if i >= 200 {
            times.push(t.elapsed());
        }
    }
    writer.close_stdin().await?;
    while reader.next().await?.is_some() {}
    times.sort();
    Ok(times)
}

/// 4. `kubectl logs` of a fast source: the whole body of a generated container log.
async fn logs_one(b: &Bench, via: Via, pod: &str) -> Result<u64> {
    let (io, host) = b.connect(via).await?;
    let resp = http_get(io, host, &format!("/containerLogs/default/{pod}/app"), &[]).await?;
    ensure!(resp.status() == StatusCode::OK, "status {}", resp.status());
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            got += data.len() as u64;
        }
    }
    Ok(got)
}

async fn logs(b: &Bench, via: Via, streams: usize, n: u64) -> Result<u64> {
    // The generated containers have fixed sizes; the warm-up uses the small one.
    let pods: Vec<String> = if n < b.bulk {
        (0..streams).map(|_| "warm".to_owned()).collect()
    } else if streams == 1 {
        vec!["big".to_owned()]
    } else {
        (0..streams).map(|i| format!("quarter{i}")).collect()
    };
    let results =
        futures_util::future::join_all(pods.iter().map(|pod| logs_one(b, via, pod))).await;
    let mut total = 0;
    for r in results {
        total += r?;
    }
    // Warm-up: `streams` × 4 MiB; otherwise the sizes add up to the bulk size.
    let expected = if n < b.bulk {
        (4 << 20) * streams as u64
    } else {
        b.bulk
    };
    ensure!(total == expected, "got {total} of {expected} bytes");
    Ok(total)
}

/// Size of each of the many small log streams of scenario 7.
const TINY: u64 = 256 << 10;

/// Scenario 7: `streams` concurrent log streams of [`TINY`] bytes through the tunnel,
/// optionally while one more stream (the big container) has a reader that took one frame and
/// stopped. Returns the aggregate rate of the small streams in MB/s.
async fn many_streams(b: &Bench, streams: usize, stalled: bool) -> Result<f64> {
    let mut stuck = None;
    if stalled {
        let (io, host) = b.connect(Via::Tunnel).await?;
        let resp = http_get(io, host, "/containerLogs/default/big/app", &[]).await?;
        ensure!(resp.status() == StatusCode::OK, "status {}", resp.status());
        let mut body = resp.into_body();
        body.frame().await;
        // Kept, unread, until the small streams are done.
        stuck = Some(body);
    }
    let started = Instant::now();
    let results =
        futures_util::future::join_all((0..streams).map(|_| logs_one(b, Via::Tunnel, "tiny")))
            .await;
    let elapsed = started.elapsed();
    let mut total = 0;
    for r in results {
        total += r?;
    }
    ensure!(total == TINY * streams as u64, "got {total} bytes");
    drop(stuck);
    Ok(total as f64 / elapsed.as_secs_f64() / 1e6)
}

/// A TCP server that sends `data` to every connection, then closes it.
async fn source_server(data: Bytes) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                // The client tells us how much to send: 8 bytes, big endian.
                let Ok(n) = tcp.read_u64().await else { return };
                let n = n as usize;
                let mut sent = 0;
                while sent < n {
                    let len = (n - sent).min(data.len());
                    if tcp.write_all(&data[..len]).await.is_err() {
                        return;
                    }
                    sent += len;
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// A TCP server that discards what it reads and, once it has read the announced number of
/// bytes, answers one byte.
async fn sink_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(n) = tcp.read_u64().await else { return };
                let mut buf = vec![0u8; 256 << 10];
                let mut got = 0u64;
                while got < n {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got += k as u64,
                    }
                }
                let _ = tcp.write_all(b"k").await;
                let _ = tcp.shutdown().await;
                while let Ok(k) = tcp.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// 5a. Port-forward, target → client.
async fn pf_download(b: &Bench, via: Via, source: SocketAddr, n: u64) -> Result<u64> {
    let (io, host) = b.connect(via).await?;
    let path = format!("/portForward/default/web?port={}", source.port());
    let mut pf = port_forward_ws(io, host, &path).await?;
    pf.write(&n.to_be_bytes()).await?;
    let mut got = 0u64;
    while got < n {
        match pf.read().await? {
            Some(d) => got += d.len() as u64,
            None => bail!("closed after {got} of {n} bytes"),
        }
    }
    let _ = pf.close().await;
    Ok(got)
}

/// 5b. Port-forward, client → target (until the target acknowledges the last byte).
async fn pf_upload(b: &Bench, via: Via, sink: SocketAddr, data: Bytes) -> Result<u64> {
    let n = data.len() as u64;
    let (io, host) = b.connect(via).await?;
    let path = format!("/portForward/default/web?port={}", sink.port());
    let pf = port_forward_ws(io, host, &path).await?;
    let (mut writer, mut reader) = pf.split();
    let feed = tokio::spawn(async move {
        writer.write(&n.to_be_bytes()).await?;
        writer.write(&data).await?;
        anyhow::Ok(writer)
    });
    match reader.read().await? {
        Some(d) if d.as_ref() == b"k" => {}
        other => bail!("no acknowledgement: {other:?}"),
    }
    let mut writer = feed.await??;
    let _ = writer.close().await;
    Ok(n)
}

/// What one round of idle sessions looked like from cloudstream's side.
struct Round {
    held: usize,
    tether2: usize,
    alive: usize,
    failed: Vec<String>,
    dial_time: Duration,
    dial_cpu: f64,
    with_fds: usize,
    with_rss: u64,
    /// VmRSS 6, 10 and 15 s after the last session connected: jemalloc returns the pages
    /// the connect burst freed (TLS handshakes) over its 10 s dirty-page decay.
    later_rss: Vec<u64>,
    after_fds: usize,
    close_time: Duration,
    after_rss: u64,
}

/// Opens every session in `configs` (32 handshakes at a time), holds them for 15 s, reads
/// cloudstream's RSS at 3, 6, 10 and 15 s, closes them all and waits until cloudstream has let go of the sockets.
async fn hold_round(pid: u32, base_fds: usize, configs: &[DialConfig]) -> Result<Round> {
    let t = Instant::now();
    let cpu0 = cpu_ticks(&pid.to_string());
    let limit = Arc::new(Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for config in configs {
        let config = config.clone();
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let (session, incoming, driver) = dial(&config).await?;
            let driver = tokio::spawn(driver.run());
            anyhow::Ok((session, incoming, driver))
        });
    }
    let mut sessions = Vec::with_capacity(configs.len());
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(s) => sessions.push(s),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    let dial_time = t.elapsed();
    let dial_cpu = (cpu_ticks(&pid.to_string()) - cpu0) as f64 / 100.0;
    let tether2 = sessions
        .iter()
        .filter(|(s, _, _)| s.dialect() == Dialect::Tether2)
        .count();
    let held = sessions.len();

    // Let the sessions settle (first pings, allocator), then read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with_fds = fd_count(pid);
    let with_rss = vm_rss_kib(pid);
    let alive = sessions.iter().filter(|(s, _, _)| !s.is_closed()).count();
    let mut later_rss = Vec::new();
    for wait in [3, 4, 5] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        later_rss.push(vm_rss_kib(pid));
    }

    let t = Instant::now();
    for (s, _, _) in &sessions {
        s.close("benchmark done");
    }
    for (_, _, driver) in sessions.drain(..) {
        let _ = driver.await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while fd_count(pid) > base_fds + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let close_time = t.elapsed();
    let after_fds = fd_count(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_rss = vm_rss_kib(pid);
    Ok(Round {
        held,
        tether2,
        alive,
        failed,
        dial_time,
        dial_cpu,
        with_fds,
        with_rss,
        later_rss,
        after_fds,
        close_time,
        after_rss,
    })
}

/// Scenario 6: idle sessions held by one fresh cloudstream, twice; the second round tells
/// allocator retention (the peak does not grow) from a leak (it does).
///
/// `stock` dials as a stock KubeEdge edgecore does (no tether/2 offer: the kubeedge dialect).
async fn idle_sessions(world: &World, k: usize, stock: bool) -> Result<String> {
    use std::fmt::Write as _;
    let log = if stock {
        "cloudstream-sessions-kubeedge.log"
    } else {
        "cloudstream-sessions-tether2.log"
    };
    let mut cloud = start_cloud(world, log).await?;
    let pid = cloud.bin.pid().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_rss = vm_rss_kib(pid);
    let base_fds = fd_count(pid);

    let t = Instant::now();
    let mut configs = Vec::with_capacity(k);
    for i in 0..k {
        let name = format!("idle-{i}");
        let id = world.pki.node(&name)?;
        let ip = format!("10.{}.{}.{}", 100 + i / 62500, (i / 250) % 250, i % 250 + 1);
        configs.push(DialConfig {
            server: cloud.tunnel.to_string(),
            tls: world.pki.client_config(Some(&id))?,
            node: NodeIdentity {
                name,
                ip: Some(ip.parse()?),
            },
            handshake_timeout: Duration::from_secs(60),
            session: SessionConfig::default(),
            offer_tether2: !stock,
        });
    }
    let certs = t.elapsed();

    let mut out = String::new();
    writeln!(
        out,
        "cloudstream before: VmRSS {base_rss} KiB, {base_fds} fds; {k} node certificates made in {:.1} s",
        certs.as_secs_f64()
    )?;
    let mut peak = Vec::new();
    let rounds = env_num("TETHER_BENCH_SESSION_ROUNDS", 2).max(1);
    for round in 1..=rounds {
        let r = hold_round(pid, base_fds, &configs).await?;
        let per = if r.held > 0 {
            r.with_rss.saturating_sub(base_rss) as f64 / r.held as f64
        } else {
            0.0
        };
        writeln!(
            out,
            "round {round}: held {} of {k} ({} tether/2, {} alive after 3 s, {} failed); dialled in {:.1} s ({:.0}/s, cloudstream CPU {:.1} s)",
            r.held,
            r.tether2,
            r.alive,
            r.failed.len(),
            r.dial_time.as_secs_f64(),
            r.held as f64 / r.dial_time.as_secs_f64(),
            r.dial_cpu
        )?;
        if let Some(e) = r.failed.first() {
            writeln!(out, "  first failure: {e}")?;
        }
        writeln!(
            out,
            "  with the sessions: VmRSS {} KiB, {} fds => {per:.1} KiB per session (target ≤ 12 KiB; KubeEdge ~55 KiB)",
            r.with_rss, r.with_fds
        )?;
        let settled = r.later_rss.last().copied().unwrap_or(r.with_rss);
        writeln!(
            out,
            "  VmRSS 6 / 10 / 15 s after connecting: {:?} KiB => {:.1} KiB per session at 15 s",
            r.later_rss,
            if r.held > 0 {
                settled.saturating_sub(base_rss) as f64 / r.held as f64
            } else {
                0.0
            }
        )?;
        writeln!(
            out,
            "  closed in {:.1} s: {} fds; VmRSS 3 s later {} KiB ({:+} KiB vs baseline, {:.0} % of the increase kept)",
            r.close_time.as_secs_f64(),
            r.after_fds,
            r.after_rss,
            r.after_rss as i64 - base_rss as i64,
            if r.with_rss > base_rss {
                r.after_rss.saturating_sub(base_rss) as f64 / (r.with_rss - base_rss) as f64 * 100.0
            } else {
                0.0
            }
        )?;
        peak.push(r.with_rss);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let final_rss = vm_rss_kib(pid);
    writeln!(
        out,
        "8 s after the last round: VmRSS {final_rss} KiB; peak of each round after the first vs round 1: {:?} KiB",
        peak.iter()
            .skip(1)
            .map(|p| *p as i64 - peak[0] as i64)
            .collect::<Vec<_>>()
    )?;
    // Is what stays resident free memory glibc keeps, or live memory? Ask glibc to give back
    // every free page (needs gdb; cloudstream is paused for a moment, with no sessions).
    let trimmed = std::process::Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "call (int)malloc_trim(0)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if trimmed {
        let rss = vm_rss_kib(pid);
        writeln!(
            out,
            "after malloc_trim(0) via gdb: VmRSS {rss} KiB ({:+} KiB vs baseline)",
            rss as i64 - base_rss as i64
        )?;
    }
    let errors = cloud
        .bin
        .logs()
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        .count();
    writeln!(out, "cloudstream log lines with ERROR/panicked: {errors}")?;
    // SIGTERM first, so a wrapping profiler (TETHER_BENCH_WRAP_CLOUDSTREAM) can finish.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    if tokio::time::timeout(Duration::from_secs(20), cloud.bin.child.wait())
        .await
        .is_err()
    {
        let _ = cloud.bin.child.kill().await;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Reporting.

enum Cell {
    Value(f64),
    Fail(String),
}

impl Cell {
    fn get(&self) -> Option<f64> {
        match self {
            Cell::Value(v) => Some(*v),
            _ => None,
        }
    }
    fn show(&self, unit: &str) -> String {
        match self {
            Cell::Value(v) => format!("{v:.0} {unit}"),
            Cell::Fail(_) => "FAILED".into(),
        }
    }
}

enum Kind {
    /// Higher is better; compare as a percentage.
    Rate,
    /// Lower is better; compare as an added amount.
    Latency,
}

struct Row {
    scenario: String,
    kind: Kind,
    cells: [Cell; 3],
    target: &'static str,
    kubeedge: &'static str,
}

fn compare(kind: &Kind, tunnel: Option<f64>, direct: Option<f64>) -> String {
    match (kind, tunnel, direct) {
        (Kind::Rate, Some(t), Some(d)) if d > 0.0 => format!("{:.0} %", t / d * 100.0),
        (Kind::Latency, Some(t), Some(d)) => format!("{:+.0} µs", t - d),
        _ => "-".into(),
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| scenario | direct (TCP) | direct (TLS) | tunnel | tunnel vs direct TCP | tunnel vs direct TLS | target | KubeEdge (design.md) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let unit = match r.kind {
            Kind::Rate => "MB/s",
            Kind::Latency => "µs",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.cells[0].show(unit),
            r.cells[1].show(unit),
            r.cells[2].show(unit),
            compare(&r.kind, r.cells[2].get(), r.cells[0].get()),
            compare(&r.kind, r.cells[2].get(), r.cells[1].get()),
            r.target,
            r.kubeedge,
        );
    }
    for r in rows {
        for (via, c) in Via::ALL.iter().zip(&r.cells) {
            if let Cell::Fail(e) = c {
                println!("FAILED {} via {}: {e}", r.scenario, via_name(*via));
            }
        }
    }
}

/// CPU seconds per GB moved, per bulk measurement: what the tunnel's two processes cost beside
/// what the client and the kubelet cost on each path (they share this process; on the direct
/// paths they are all there is).
fn print_cpu_per_gb(cpu: &[CpuRow]) {
    println!();
    println!(
        "CPU seconds per GB moved (utime + stime from /proc/<pid>/stat over the measured runs; \
         target for cloudstream + edgestream ≤ 1.2, KubeEdge 55):"
    );
    println!(
        "| measurement | client + kubelet, direct TCP | client + kubelet, direct TLS | client + kubelet, tunnel | cloudstream | edgestream | **cloudstream + edgestream** | of which kernel (stime) | whole machine, direct TLS / tunnel |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut names: Vec<&str> = Vec::new();
    for c in cpu {
        if !names.contains(&c.what.as_str()) {
            names.push(&c.what);
        }
    }
    for name in names {
        let find = |via: Via| cpu.iter().find(|c| c.what == name && c.via == via);
        let show = |row: Option<&CpuRow>, i: usize| {
            row.map_or("-".to_owned(), |c| format!("{:.2}", c.per_gb(c.secs[i])))
        };
        let tunnel = find(Via::Tunnel);
        println!(
            "| {name} | {} | {} | {} | {} | {} | **{}** | {} | {} / {} |",
            show(find(Via::Direct), 2),
            show(find(Via::DirectTls), 2),
            show(tunnel, 2),
            show(tunnel, 0),
            show(tunnel, 1),
            tunnel.map_or("-".to_owned(), |c| format!(
                "{:.2}",
                c.per_gb(c.secs[0] + c.secs[1])
            )),
            tunnel.map_or("-".to_owned(), |c| format!(
                "{:.2}",
                c.per_gb(c.tunnel_system)
            )),
            show(find(Via::DirectTls), 3),
            show(tunnel, 3),
        );
    }
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
    let only: Option<Vec<u32>> = std::env::var("TETHER_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect());
    let want = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    let bulk = env_num("TETHER_BENCH_MIB", 256) << 20;
    let runs = env_num("TETHER_BENCH_RUNS", 3).max(1) as usize;
    let rtt_rounds = env_num("TETHER_BENCH_RTT", 2000) as usize;

    println!("tether tunnel benchmark");
    println!("load average at start: {}", loadavg());
    println!("{}", machine());
    println!(
        "bulk size {} MiB, {runs} runs per bulk measurement (median), {rtt_rounds} round trips; MB = 10^6 bytes",
        bulk >> 20
    );

    // Raise our fd limit (the children inherit it): idle sessions need one fd each, per side.
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let fd_limit = hard;

    let world = World::new()?;
    let containers = |builder: test_support::kubelet::TestKubeletBuilder| {
        let mut builder = builder
            .container(
                "default",
                "web",
                "app",
                ContainerSpec::with_logs(&b"hello\n"[..]),
            )
            .container("default", "warm", "app", ContainerSpec::generated(4 << 20))
            .container("default", "tiny", "app", ContainerSpec::generated(TINY))
            .container("default", "big", "app", ContainerSpec::generated(bulk));
        for i in 0..4 {
            builder = builder.container(
                "default",
                &format!("quarter{i}"),
                "app",
                ContainerSpec::generated(bulk / 4),
            );
        }
        builder
    };
    let kubelet = containers(TestKubelet::builder()).start().await?;
    let kubelet_tls = containers(TestKubelet::builder())
        .tls(world.pki.server(&["127.0.0.1", "localhost"])?, None)
        .start()
        .await?;
    let cloud = start_cloud(&world, "cloudstream.log").await?;
    let (edge, connected) = start_edge(&world, &cloud, kubelet.addr()).await?;
    println!("{connected}");
    let apiserver = world.apiserver.clone();
    let mut b = Bench {
        world,
        cloud,
        edge,
        kubelet,
        kubelet_tls,
        apiserver,
        bulk,
        runs,
        cpu: std::sync::Mutex::new(Vec::new()),
    };
    let mib = bulk >> 20;
    let mut rows = Vec::new();

    if want(1) {
        eprintln!("1. exec download");
        let mut cells = Vec::new();
        for via in Via::ALL {
            let bref: &Bench = &b;
            cells.push(
                b.rate("exec download", via, |n| exec_download(bref, via, n))
                    .await,
            );
        }
        rows.push(Row {
            scenario: format!("1. exec download, `yes-bytes` {mib} MiB (kubectl cp from a pod)"),
            kind: Kind::Rate,
            cells: cells.try_into().ok().unwrap(),
            target: "≥ 50 % of direct HTTPS",
            kubeedge: "5–7 % (24–33 MB/s vs 340–670); 256 MiB stalled",
        });
    }
    if want(2) {
        eprintln!("2. exec upload");
        let data = generated_log(bulk);
        let small = data.slice(..4 << 20);
        let mut cells = Vec::new();
        for via in Via::ALL {
            let bref: &Bench = &b;
            let (data, small) = (data.clone(), small.clone());
            cells.push(
                b.rate("exec upload", via, move |n| {
                    let d = if n == bulk {
                        data.clone()
                    } else {
                        small.clone()
                    };
                    exec_upload(bref, via, d)
                })
                .await,
            );
        }
        rows.push(Row {
            scenario: format!(
                "2. exec upload, {mib} MiB stdin → `sha256sum` (kubectl cp into a pod)"
            ),
            kind: Kind::Rate,
            cells: cells.try_into().ok().unwrap(),
            target: "≥ 50 % of direct HTTPS",
            kubeedge: "5–7 % (24–33 MB/s vs 340–670)",
        });
    }
    if want(3) {
        eprintln!("3. exec round trip");
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for via in Via::ALL {
            let before = cpu_ticks(&b.cloud.bin.pid().unwrap_or(0).to_string());
            let t = Instant::now();
            match with_stall(exec_rtt(&b, via, rtt_rounds)).await {
                Ok(times) => {
                    let us = |q: f64| {
                        times[((times.len() as f64 * q) as usize).min(times.len() - 1)]
                            .as_secs_f64()
                            * 1e6
                    };
                    eprintln!(
                        "  rtt via {}: p50 {:.0} µs, p90 {:.0}, p99 {:.0}, max {:.0}; {:.2} s, cloudstream CPU {:.2} s",
                        via_name(via),
                        us(0.5),
                        us(0.9),
                        us(0.99),
                        us(1.0),
                        t.elapsed().as_secs_f64(),
                        (cpu_ticks(&b.cloud.bin.pid().unwrap_or(0).to_string()) - before) as f64
                            / 100.0
                    );
                    p50.push(Cell::Value(us(0.5)));
                    p99.push(Cell::Value(us(0.99)));
                }
                Err(e) => {
                    p50.push(Cell::Fail(format!("{e:#}")));
                    p99.push(Cell::Fail(format!("{e:#}")));
                }
            }
        }
        rows.push(Row {
            scenario: format!("3. exec round trip p50, 64 B into `cat`, {rtt_rounds}×"),
            kind: Kind::Latency,
            cells: p50.try_into().ok().unwrap(),
            target: "adds ≤ 100 µs",
            kubeedge: "+300 µs",
        });
        rows.push(Row {
            scenario: "3. exec round trip p99".into(),
            kind: Kind::Latency,
            cells: p99.try_into().ok().unwrap(),
            target: "adds ≤ 500 µs",
            kubeedge: "+740 µs",
        });
    }
    if want(4) {
        eprintln!("4. logs");
        for streams in [1usize, 4] {
            let mut cells = Vec::new();
            for via in Via::ALL {
                let bref: &Bench = &b;
                cells.push(
                    b.rate(&format!("logs ×{streams}"), via, |n| {
                        logs(bref, via, streams, n)
                    })
                    .await,
                );
            }
            rows.push(Row {
                scenario: if streams == 1 {
                    format!("4. logs, 1 stream of {mib} MiB (generated source)")
                } else {
                    format!(
                        "4. logs, 4 concurrent streams of {} MiB, aggregate",
                        mib / 4
                    )
                },
                kind: Kind::Rate,
                cells: cells.try_into().ok().unwrap(),
                target: "≥ 50 % of direct",
                kubeedge: if streams == 1 {
                    "6 % (16 vs 278 MB/s)"
                } else {
                    "4 % (16 vs 390 MB/s)"
                },
            });
        }
    }
    if want(5) {
        eprintln!("5. port-forward");
        let chunk = generated_log(1 << 20);
        let source = source_server(chunk).await?;
        let sink = sink_server().await?;
        let mut cells = Vec::new();
        for via in Via::ALL {
            let bref: &Bench = &b;
            cells.push(
                b.rate("port-forward download", via, |n| {
                    pf_download(bref, via, source, n)
                })
                .await,
            );
        }
        rows.push(Row {
            scenario: format!("5. port-forward, target → client, {mib} MiB"),
            kind: Kind::Rate,
            cells: cells.try_into().ok().unwrap(),
            target: "≥ 50 % of direct",
            kubeedge: "not supported",
        });
        let data = generated_log(bulk);
        let small = data.slice(..4 << 20);
        let mut cells = Vec::new();
        for via in Via::ALL {
            let bref: &Bench = &b;
            let (data, small) = (data.clone(), small.clone());
            cells.push(
                b.rate("port-forward upload", via, move |n| {
                    let d = if n == bulk {
                        data.clone()
                    } else {
                        small.clone()
                    };
                    pf_upload(bref, via, sink, d)
                })
                .await,
            );
        }
        rows.push(Row {
            scenario: format!("5. port-forward, client → target, {mib} MiB"),
            kind: Kind::Rate,
            cells: cells.try_into().ok().unwrap(),
            target: "≥ 50 % of direct",
            kubeedge: "not supported",
        });
    }

    print_table(&rows);
    let cpu = std::mem::take(&mut *b.cpu.lock().unwrap());
    if !cpu.is_empty() {
        println!();
        println!(
            "CPU during the bulk measurements (% of one core, averaged over the runs; bench = client + test kubelet):"
        );
        println!(
            "| measurement | cloudstream | edgestream | bench process | whole machine (of {} %) | wall |",
            std::thread::available_parallelism().map_or(0, |n| n.get()) * 100
        );
        println!("|---|---|---|---|---|---|");
        for c in &cpu {
            println!(
                "| {} ({}) | {:.0} % | {:.0} % | {:.0} % | {:.0} % | {:.1} s |",
                c.what,
                via_name(c.via),
                c.cloud,
                c.edge,
                c.bench,
                c.machine,
                c.wall.as_secs_f64()
            );
        }
        print_cpu_per_gb(&cpu);
    }
    if want(7) {
        let streams = env_num("TETHER_BENCH_STREAMS", 1000) as usize;
        println!();
        println!(
            "7. {streams} concurrent log streams of {} KiB on one session, tunnel only:",
            TINY >> 10
        );
        // Warm-up, then each case twice; the better run of each is reported.
        let _ = many_streams(&b, streams.min(50), false).await;
        let mut free = Vec::new();
        let mut stalled = Vec::new();
        for _ in 0..2 {
            free.push(many_streams(&b, streams, false).await);
            stalled.push(many_streams(&b, streams, true).await);
        }
        let best = |v: &[Result<f64>]| {
            v.iter()
                .filter_map(|r| r.as_ref().ok().copied())
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        };
        for r in free.iter().chain(stalled.iter()) {
            if let Err(e) = r {
                println!("  a run FAILED: {e:#}");
            }
        }
        match (best(&free), best(&stalled)) {
            (Some(f), Some(st)) => println!(
                "  aggregate {f:.0} MB/s with every reader reading; {st:.0} MB/s while one more \
                 stream's reader is stalled ({:.0} % of the free rate; target: costs < 10 %)",
                st / f * 100.0
            ),
            _ => println!("  no complete measurement"),
        }
    }

    let cloud_errors = b
        .cloud
        .bin
        .logs()
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        .count();
    let edge_errors = b
        .edge
        .logs()
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        .count();
    println!();
    println!("log lines with ERROR/panicked: cloudstream {cloud_errors}, edgestream {edge_errors}");
    println!("load average after the throughput scenarios: {}", loadavg());
    if std::env::var("TETHER_BENCH_KEEP").is_ok() {
        let kept = b.world.dir.path().to_path_buf();
        println!("logs kept in {}", kept.display());
        std::mem::forget(b.world.dir);
        return Ok(());
    }

    // The throughput processes stop before the idle-session run, which gets a fresh cloud.
    let _ = b.edge.child.kill().await;
    let _ = b.cloud.bin.child.kill().await;
    let sessions = env_num("TETHER_BENCH_SESSIONS", 10_000) as usize;
    if want(6) && sessions > 0 {
        let k = sessions.min((fd_limit as usize).saturating_sub(500));
        let dialects = std::env::var("TETHER_BENCH_SESSION_DIALECTS")
            .unwrap_or_else(|_| "kubeedge,tether2".into());
        for dialect in dialects.split(',').map(str::trim) {
            let stock = match dialect {
                "kubeedge" => true,
                "tether2" => false,
                other => bail!("TETHER_BENCH_SESSION_DIALECTS: unknown dialect {other:?}"),
            };
            println!();
            println!(
                "6. idle edge sessions ({dialect}) on one fresh cloudstream (fd limit {fd_limit}):"
            );
            match idle_sessions(&b.world, k, stock).await {
                Ok(text) => print!("{text}"),
                Err(e) => println!("FAILED: {e:#}"),
            }
        }
    }
    Ok(())
}
