//! Load tool for replicas on etcd (issue 9): what a forwarded request costs against a request
//! to the replica that holds the node, and what many sessions over three replicas cost etcd
//! and each replica's memory.
//!
//! ```text
//! cargo build --release -p cloudstream -p edgestream && cargo bench -p tether-e2e --bench ha
//! ```
//!
//! Real processes: `/usr/bin/etcd` (or `$ETCD_BIN`), release `cloudstream` replicas a, b, c
//! (and d, which holds no session, for the sessions part), one `edgestream` on a, the test
//! kubelet and the clients in this process. "direct" is kube-apiserver → a (the holder) →
//! tunnel → edge; "forwarded" is kube-apiserver → b → a → tunnel → edge. Numbers are reported,
//! never asserted.
//!
//! Knobs: `TETHER_BENCH_RTT` (round trips, default 2000), `TETHER_BENCH_MIB` (bulk size,
//! default 256), `TETHER_BENCH_RUNS` (default 3, median), `TETHER_BENCH_SESSIONS` (default
//! 10000; 0 skips), and as in the tunnel bench `TETHER_BENCH_LOG` (the binaries' `RUST_LOG`,
//! default `info`) and `TETHER_BENCH_WRAP_CLOUDSTREAM` / `_EDGESTREAM`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use http::StatusCode;
use test_support::client::{BoxIo, Event, body_bytes, exec_ws, http_get};
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Process, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tunnel_session::client::{DialConfig, dial};
use tunnel_session::{NodeIdentity, SessionConfig};

const MB: f64 = 1e6;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// processes

struct Etcd {
    _dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_etcd() -> Result<Etcd> {
    let dir = tempfile::tempdir()?;
    let (port, peer_port) = (free_port()?, free_port()?);
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(dir.path().join("etcd.log"))?;
    let binary = std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    let child = std::process::Command::new(binary)
        .arg("--name=bench")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=bench={peer}"))
        .arg("--log-outputs=stderr")
        .arg("--logger=zap")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let etcd = Etcd {
        _dir: dir,
        port,
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await {
            tcp.write_all(b"GET /health HTTP/1.0\r\n\r\n").await?;
            let mut answer = String::new();
            let _ = tcp.read_to_string(&mut answer).await;
            if answer.contains("\"health\":\"true\"") {
                return Ok(etcd);
            }
        }
        ensure!(Instant::now() < deadline, "etcd did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Replica {
    bin: Process,
    tunnel: SocketAddr,
    stream: SocketAddr,
    admin: SocketAddr,
}

async fn start_replica(world: &World, etcd: &Etcd, id: &str) -> Result<Replica> {
    let config = world.path("cloudcore.yaml").to_string_lossy().into_owned();
    let cert = world.path("peer.crt").to_string_lossy().into_owned();
    let key = world.path("peer.key").to_string_lossy().into_owned();
    let endpoint = format!("http://127.0.0.1:{}", etcd.port);
    let args = [
        "--config",
        &config,
        "--tunnel-addr",
        "127.0.0.1:0",
        "--stream-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--etcd-endpoints",
        &endpoint,
        "--replica-id",
        id,
        "--peer-cert",
        &cert,
        "--peer-key",
        &key,
    ];
    let mut bin =
        Process::spawn_bench("cloudstream", &args, world.path(&format!("cloud-{id}.log")))?;
    let line = bin.wait_line("cloudstream listening").await?;
    let field = |name: &str| -> Result<SocketAddr> {
        let prefix = format!("{name}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .context("missing address")?
            .parse()
            .context("bad address")
    };
    Ok(Replica {
        tunnel: field("tunnel")?,
        stream: field("stream")?,
        admin: field("admin")?,
        bin,
    })
}

impl Replica {
    async fn metric(&self, series: &str) -> Result<f64> {
        let tcp = TcpStream::connect(self.admin).await?;
        let response = http_get(tcp, "127.0.0.1", "/metrics", &[]).await?;
        let text = String::from_utf8_lossy(&body_bytes(response.into_body()).await?).into_owned();
        let prefix = format!("{series} ");
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .context("no such series")?
            .trim()
            .parse()?)
    }
}

// /proc readings

fn cpu_ticks(pid: u32) -> u64 {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
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

// ---------------------------------------------------------------------------------------
// scenarios

async fn connect(world: &World, addr: SocketAddr) -> Result<BoxIo> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1".to_owned())?;
    let tls = tokio_rustls::TlsConnector::from(world.apiserver.clone())
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

/// 64 bytes into `cat`, wait for the echo; sorted latencies after 200 warm-up rounds.
async fn exec_rtt(world: &World, via: SocketAddr, rounds: usize) -> Result<Vec<Duration>> {
    let io = connect(world, via).await?;
    let path = "/exec/default/web/app?command=cat&input=1&output=1&error=1";
    let (mut writer, mut reader) = exec_ws(io, "edge-1", path, &[]).await?.split();
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

/// exec `yes-bytes N`, stdout read to the end.
async fn exec_download(world: &World, via: SocketAddr, n: u64) -> Result<u64> {
    let io = connect(world, via).await?;
    let path = format!("/exec/default/web/app?command=yes-bytes&command={n}&output=1&error=1");
    let (_writer, mut reader) = exec_ws(io, "edge-1", &path, &[]).await?.split();
    let mut got = 0u64;
    while let Some(event) = reader.next().await? {
        if let Event::Stdout(d) = event {
            got += d.len() as u64;
        }
    }
    ensure!(got == n, "got {got} of {n}");
    Ok(got)
}

fn pct(times: &[Duration], p: f64) -> Duration {
    let i = ((times.len() as f64 * p) as usize).min(times.len() - 1);
    times[i]
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<()> {
    tunnel_session::tls::install_default_provider();
    let rounds = env_num("TETHER_BENCH_RTT", 2000) as usize;
    let bulk = env_num("TETHER_BENCH_MIB", 256) << 20;
    let runs = env_num("TETHER_BENCH_RUNS", 3).max(1);
    let sessions = env_num("TETHER_BENCH_SESSIONS", 10_000) as usize;
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    }

    let world = World::new()?;
    world.cloudcore("")?;
    let peer = world.pki.client("tether-replica:bench", None)?;
    world.pki.write_pem_files(world.dir.path(), "peer", &peer)?;
    let etcd = start_etcd().await?;
    let a = start_replica(&world, &etcd, "a").await?;
    let b = start_replica(&world, &etcd, "b").await?;
    let kubelet = TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(&b"hello\n"[..]),
        )
        .start()
        .await?;
    let edge_config = world
        .edgecore("edge-1", "10.0.0.11", a.tunnel, kubelet.addr(), "edge-1")?
        .to_string_lossy()
        .into_owned();
    let mut edge = Process::spawn_bench(
        "edgestream",
        &["--config", &edge_config],
        world.path("edge.log"),
    )?;
    edge.wait_line("edgestream connected").await?;
    // b routes edge-1 once a's claim is watched.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let io = connect(&world, b.stream).await?;
        let r = http_get(io, "edge-1", "/containerLogs/default/web/app", &[]).await?;
        if r.status() == StatusCode::OK {
            break;
        }
        ensure!(Instant::now() < deadline, "b never routed edge-1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "tether HA benchmark: release binaries, etcd 3.4, 2-core machine shared by all processes"
    );
    println!("\n## exec echo (64 bytes into cat, wait for the echo), {rounds} round trips");
    println!("| path | p50 | p99 | p99.9 |\n|---|---|---|---|");
    let mut p50 = Vec::new();
    for (name, via) in [
        ("direct (to the holder)", a.stream),
        ("forwarded (b → a)", b.stream),
    ] {
        let times = exec_rtt(&world, via, rounds).await?;
        println!(
            "| {name} | {:?} | {:?} | {:?} |",
            pct(&times, 0.5),
            pct(&times, 0.99),
            pct(&times, 0.999)
        );
        p50.push(pct(&times, 0.5));
    }
    println!("extra hop at p50: {:?}", p50[1].saturating_sub(p50[0]));

    println!(
        "\n## exec bulk (yes-bytes {} MiB to stdout), median of {runs}; CPU seconds per GB moved",
        bulk >> 20
    );
    println!(
        "| path | MB/s | a CPU s/GB | b CPU s/GB | edge CPU s/GB | client CPU s/GB |\n|---|---|---|---|---|---|"
    );
    for (name, via) in [
        ("direct (to the holder)", a.stream),
        ("forwarded (b → a)", b.stream),
    ] {
        exec_download(&world, via, 4 << 20).await?;
        let pids = [
            a.bin.pid().unwrap_or(0),
            b.bin.pid().unwrap_or(0),
            edge.pid().unwrap_or(0),
            0,
        ];
        let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
        let mut rates = Vec::new();
        let mut moved = 0u64;
        for _ in 0..runs {
            let t = Instant::now();
            moved += exec_download(&world, via, bulk).await?;
            rates.push(bulk as f64 / t.elapsed().as_secs_f64() / MB);
        }
        let after: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
        rates.sort_by(f64::total_cmp);
        let per_gb = |i: usize| (after[i] - before[i]) as f64 / 100.0 / (moved as f64 / 1e9);
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            rates[rates.len() / 2],
            per_gb(0),
            per_gb(1),
            per_gb(2),
            per_gb(3)
        );
    }

    if sessions > 0 {
        sessions_part(&world, &etcd, a, b, sessions).await?;
    }
    drop(edge);
    Ok(())
}

/// `k` sessions dialled round robin over a, b and c; d holds none and shows what the directory
/// alone costs a replica.
async fn sessions_part(world: &World, etcd: &Etcd, a: Replica, b: Replica, k: usize) -> Result<()> {
    let c = start_replica(world, etcd, "c").await?;
    let d = start_replica(world, etcd, "d").await?;
    let holders = [&a, &b, &c];
    let t = Instant::now();
    let mut configs = Vec::with_capacity(k);
    for i in 0..k {
        let name = format!("idle-{i}");
        let id = world.pki.node(&name)?;
        let ip = format!("10.{}.{}.{}", 100 + i / 62500, (i / 250) % 250, i % 250 + 1);
        configs.push(DialConfig {
            server: holders[i % 3].tunnel.to_string(),
            tls: world.pki.client_config(Some(&id))?,
            node: NodeIdentity {
                name,
                ip: Some(ip.parse()?),
            },
            handshake_timeout: Duration::from_secs(60),
            session: SessionConfig::default(),
            offer_tether2: true,
        });
    }
    println!(
        "\n## {k} sessions over 3 replicas (round robin), replica d holding none; {k} node certificates made in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before: Vec<u64> = [&a, &b, &c, &d]
        .iter()
        .map(|r| vm_rss_kib(r.bin.pid().unwrap_or(0)))
        .collect();
    let total = (k + 1) as f64; // edge-1 too

    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for config in configs {
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let (session, incoming, driver) = dial(&config).await?;
            let driver = tokio::spawn(driver.run());
            anyhow::Ok((session, incoming, driver))
        });
    }
    let mut held = Vec::with_capacity(k);
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    let dialled = started.elapsed();
    // Every replica routes every node once its cache holds every claim.
    let mut routed = [Duration::ZERO; 4];
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, r) in [&a, &b, &c, &d].iter().enumerate() {
        while r.metric("tether_directory_nodes").await.unwrap_or(0.0) < total {
            ensure!(
                Instant::now() < deadline,
                "replica {i} never saw every node"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        routed[i] = started.elapsed();
    }
    let all_routed = routed.iter().max().copied().unwrap_or_default();
    // The directory metrics are sampled every 500 ms: the times are that coarse.
    println!(
        "dialled {} ({failed} failed) in {:.2} s ({:.0}/s); every replica routes every node after {:.2} s \
         (a {:.2}, b {:.2}, c {:.2}, d {:.2}; sampled every 0.5 s)",
        held.len(),
        dialled.as_secs_f64(),
        held.len() as f64 / dialled.as_secs_f64(),
        all_routed.as_secs_f64(),
        routed[0].as_secs_f64(),
        routed[1].as_secs_f64(),
        routed[2].as_secs_f64(),
        routed[3].as_secs_f64()
    );
    println!(
        "etcd writes while connecting: {k} claim transactions in {:.2} s = {:.0} writes/s \
         (bounded by the dial rate here)",
        all_routed.as_secs_f64(),
        k as f64 / all_routed.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after: Vec<u64> = [&a, &b, &c, &d]
        .iter()
        .map(|r| vm_rss_kib(r.bin.pid().unwrap_or(0)))
        .collect();
    println!(
        "| replica | sessions held | VmRSS before | VmRSS with sessions | per node in the directory |\n|---|---|---|---|---|"
    );
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let own = if i < 3 { k / 3 } else { 0 };
        println!(
            "| {name} | ≈{own} | {} KiB | {} KiB | {:.0} B |",
            rss_before[i],
            rss_after[i],
            rss_after[i].saturating_sub(rss_before[i]) as f64 * 1024.0 / total
        );
    }
    println!(
        "(d holds no session: its growth is the directory alone; a, b, c add their own sessions.)"
    );
    for (session, _, _) in &held {
        session.close("benchmark done");
    }
    for (_, _, driver) in held {
        let _ = driver.await;
    }
    Ok(())
}
