//! `quickstart`: watch the tether tunnel work, with one command and no cluster.
//!
//! ```sh
//! cargo run --release --example quickstart            # runs until Ctrl-C
//! cargo run --release --example quickstart -- --once  # demonstrate, then exit
//! ```
//!
//! In one process it starts what a KubeEdge installation spreads over many machines:
//!
//! - the cloud, wired exactly as `cloudstream` wires it: the tunnel server and the stream
//!   server sharing one session registry, plus the admin port;
//! - two edge nodes, `edge-1` and `edge-2`, wired exactly as `edgestream` wires them: each
//!   dials the cloud over mutual TLS with its own node certificate;
//! - a demo kubelet per node, with one pod `demo/hello` whose container `app` logs a line
//!   every second.
//!
//! Then it plays kube-apiserver: it follows a log, runs two commands, forwards a port and
//! scrapes metrics, all through the tunnel, prints the cloud's own metrics, and prints `curl`
//! commands to try while it keeps running. Ctrl-C (or SIGTERM) shuts everything down cleanly.
//! `--once` (or `TETHER_DEMO_ONCE=1`) skips the waiting, for scripts and smoke tests.
//!
//! Logging is quiet (`warn`) so the output stays readable; `RUST_LOG=info` shows what the
//! servers do.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::{Buf as _, Bytes};
use http::StatusCode;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use test_support::client::{self, ExecOutput, Io};
use test_support::kubelet::TestKubelet;
use tether_examples::{
    CONTAINER, Cloud, DemoPki, Edge, NAMESPACE, POD, connect_as_apiserver, init_tracing,
    start_demo_kubelet, wait_for_signal,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The demo's edge nodes and the internal IPs they announce. The addresses are from
/// TEST-NET-1 (RFC 5737): they only label the nodes, nothing is ever sent to them.
const NODES: [(&str, IpAddr); 2] = [
    ("edge-1", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11))),
    ("edge-2", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 12))),
];
/// Bound on anything that should take milliseconds; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(10);
/// Bound on the whole shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often each demo container logs a line.
const LOG_INTERVAL: Duration = Duration::from_secs(1);
/// How many live log lines the follow demonstration prints before it stops following.
const FOLLOW_LINES: usize = 4;
/// How many lines of the cadvisor metrics are shown.
const METRICS_PREVIEW_LINES: usize = 5;

const USAGE: &str = "\
usage: cargo run --release --example quickstart [-- --once]

Starts a tether cloud, two edge nodes and their demo kubelets on 127.0.0.1, shows logs,
exec, port-forward and metrics crossing the tunnel, then keeps running (with curl commands
to try) until Ctrl-C.

  --once     run the demonstrations and exit (also: TETHER_DEMO_ONCE=1)
  -h, --help this text

RUST_LOG=info shows the servers' logs (default: warn).";

/// Parses the flags, sets up logging and runs the demo.
#[tokio::main]
async fn main() -> Result<()> {
    let Some(once) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    init_tracing("warn");
    // For libraries that build rustls configurations with the process default (tether's own
    // builders do not need it); the binaries do the same.
    tunnel_session::tls::install_default_provider();
    run(once).await
}

/// `Some(once)` to run, `None` when help was asked for.
fn parse_args() -> Result<Option<bool>> {
    let mut once =
        std::env::var("TETHER_DEMO_ONCE").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--once" => once = true,
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(Some(once))
}

/// Everything the demo started, so that it can all be stopped again.
struct Demo {
    pki: DemoPki,
    cloud: Cloud,
    edges: Vec<Edge>,
    kubelets: Vec<Arc<TestKubelet>>,
    echo_addr: SocketAddr,
    echo: client::EchoServer,
    logger_stop: CancellationToken,
    logger: tokio::task::JoinHandle<()>,
}

/// Sets up, demonstrates, waits for a signal (unless `once`), and shuts down.
async fn run(once: bool) -> Result<()> {
    // Listen for Ctrl-C / SIGTERM from the very start, so that one arriving during setup or
    // a demonstration also shuts down cleanly (and removes the certificates).
    let interrupted = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(interrupted.clone()));

    println!("tether quickstart: a cloud, two edge nodes and their kubelets, all on 127.0.0.1.");
    println!(
        "Every request below travels client -> cloudstream -> tunnel -> edgestream -> kubelet\n\
         and back, exactly as kube-apiserver's requests do in a KubeEdge cluster."
    );

    header("0. setting up");
    let demo = tokio::select! {
        demo = start() => demo?,
        () = interrupted.cancelled() => {
            // Whatever had started is dropped here: its tasks end with the runtime.
            println!("\ninterrupted during setup; bye.");
            return Ok(());
        }
    };

    let outcome = tokio::select! {
        outcome = demonstrate(&demo) => outcome,
        () = interrupted.cancelled() => {
            println!("\ninterrupted.");
            Ok(())
        }
    };
    if !interrupted.is_cancelled() {
        match &outcome {
            Ok(()) if once => {
                println!("\n--once: all four demonstrations passed; shutting down.");
            }
            Ok(()) => {
                print_try_it(&demo);
                interrupted.cancelled().await;
                println!();
            }
            Err(e) => println!("\nA demonstration failed: {e:#}\nShutting down."),
        }
    }

    header("shutting down");
    let started = Instant::now();
    let stopped = tokio::time::timeout(SHUTDOWN_TIMEOUT, stop(demo)).await;
    signals.abort();
    match stopped {
        Ok(Ok(())) => println!(
            "  everything stopped in {}; the certificates were deleted. Bye!",
            secs(started.elapsed())
        ),
        Ok(Err(e)) => return Err(e.context("shutting down")),
        Err(_) => bail!("shutting down took longer than {SHUTDOWN_TIMEOUT:?}"),
    }
    outcome
}

/// Cancels `interrupted` on the first Ctrl-C or SIGTERM; exits at once on the second.
async fn watch_signals(interrupted: CancellationToken) {
    if let Err(e) = wait_for_signal().await {
        eprintln!("cannot listen for Ctrl-C ({e:#}); stop the demo with SIGKILL");
        return;
    }
    interrupted.cancel();
    if wait_for_signal().await.is_ok() {
        eprintln!("second signal: exiting without waiting");
        std::process::exit(130);
    }
}

/// Certificates, the cloud, the kubelets, the edges, the echo service and the log writer.
async fn start() -> Result<Demo> {
    let names: Vec<&str> = NODES.iter().map(|(name, _)| *name).collect();
    let pki = DemoPki::generate(&names)?;
    println!(
        "  certificates  {}  (CA, cloud, {}, apiserver)",
        pki.dir().display(),
        names.join(", ")
    );

    let cloud = Cloud::start(&pki).await?;
    println!(
        "  cloud         tunnel {}  <- edges dial out to it (mutual TLS websocket)",
        cloud.tunnel_addr
    );
    println!(
        "                stream {}  <- kube-apiserver talks to it as if it were the kubelet",
        cloud.stream_addr
    );
    println!(
        "                admin  http://{}  (/metrics /healthz /readyz)",
        cloud.admin_addr
    );

    let mut edges = Vec::new();
    let mut kubelets = Vec::new();
    for (name, ip) in NODES {
        let kubelet = start_demo_kubelet(name).await?;
        let mut edge = Edge::start(&pki, cloud.tunnel_addr, name, ip, kubelet.addr())?;
        let dialect = edge.wait_connected(PATIENCE).await?;
        cloud.wait_for_node(name, PATIENCE).await?;
        println!(
            "  {name:<13} node IP {ip}, kubelet on {}, tunnel up (dialect {dialect})",
            kubelet.addr()
        );
        edges.push(edge);
        kubelets.push(Arc::new(kubelet));
    }

    let (echo_addr, echo) = client::echo_server()
        .await
        .context("starting the echo service")?;
    println!("  echo service  {echo_addr}  (a TCP service on the edge side, for port-forward)");

    let logger_stop = CancellationToken::new();
    let logger = tokio::spawn(write_logs(kubelets.clone(), logger_stop.clone()));
    Ok(Demo {
        pki,
        cloud,
        edges,
        kubelets,
        echo_addr,
        echo,
        logger_stop,
        logger,
    })
}

/// Appends a line to every demo container's log each [`LOG_INTERVAL`] until `stop`.
async fn write_logs(kubelets: Vec<Arc<TestKubelet>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(LOG_INTERVAL);
    let mut n = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        for (kubelet, (node, _)) in kubelets.iter().zip(NODES) {
            // Fails only for an unknown container, and the container is ours.
            let _ = kubelet.append_log(
                NAMESPACE,
                POD,
                CONTAINER,
                format!("{node}: hello #{n} from {NAMESPACE}/{POD}/{CONTAINER}\n"),
            );
        }
    }
}

/// The four demonstrations, then the cloud's own metrics.
async fn demonstrate(demo: &Demo) -> Result<()> {
    follow_logs(demo).await.context("following logs")?;
    exec(demo).await.context("exec")?;
    port_forward(demo).await.context("port-forward")?;
    metrics(demo).await.context("metrics")?;
    admin_metrics(demo).await.context("admin metrics")?;
    Ok(())
}

/// 1: `kubectl logs -f`, a response that stays open while lines arrive.
async fn follow_logs(demo: &Demo) -> Result<()> {
    header("1. follow logs (kubectl logs -f)");
    let path = format!("/containerLogs/{NAMESPACE}/{POD}/{CONTAINER}?follow=true&tailLines=1");
    request_line(&path, "edge-1");
    println!("  The kubelet keeps the response open; each new line crosses the tunnel as it is");
    println!("  written (one a second).");
    let started = Instant::now();
    let response = apiserver_get(demo, "edge-1", &path).await?;
    let mut body = expect_ok(response).await?;
    println!("  HTTP 200 after {}", millis(started.elapsed()));

    let mut pending = Vec::new();
    let mut lines = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while lines < FOLLOW_LINES {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .context("no log line arrived in time")?;
        let Some(frame) = frame else {
            bail!("the log stream ended early");
        };
        let Ok(data) = frame.context("reading the log stream")?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            println!(
                "  [{:>6}] {}",
                secs(started.elapsed()),
                String::from_utf8_lossy(&line).trim_end()
            );
            lines += 1;
        }
    }

    // Hanging up is how a client stops following. The cloud resets the stream, and the edge
    // drops its request to the kubelet: nothing is left running on the node.
    let hung_up = Instant::now();
    drop(body);
    let kubelet = &demo.kubelets[0];
    let released = tokio::time::timeout(PATIENCE, kubelet.wait_active_streams(|a| a.logs == 0));
    match released.await {
        Ok(()) => println!(
            "  Hung up after {FOLLOW_LINES} lines; edge-1's kubelet saw the follower leave {} later.",
            millis(hung_up.elapsed())
        ),
        Err(_) => println!("  Hung up after {FOLLOW_LINES} lines."),
    }
    Ok(())
}

/// 2: `kubectl exec`, a websocket upgrade relayed byte for byte.
async fn exec(demo: &Demo) -> Result<()> {
    header("2. exec (kubectl exec)");
    println!("  A websocket upgrade: the cloud answers with the kubelet's own 101 and then relays");
    println!(
        "  raw bytes both ways; the exec protocol (v5.channel.k8s.io) passes through untouched."
    );

    let path = format!(
        "/exec/{NAMESPACE}/{POD}/{CONTAINER}?command=echo&command=hello%20from%20edge-1&output=1&error=1"
    );
    request_line(&path, "edge-1");
    let started = Instant::now();
    let output = run_exec(demo, "edge-1", &path, None).await?;
    println!(
        "  $ echo hello from edge-1\n  {}  (exit {}, {} round trip)",
        String::from_utf8_lossy(&output.stdout).trim_end(),
        exit_text(&output),
        millis(started.elapsed())
    );

    let path = format!("/exec/{NAMESPACE}/{POD}/{CONTAINER}?command=cat&input=1&output=1&error=1");
    request_line(&path, "edge-1");
    let stdin = b"ping through the tunnel\n";
    let output = run_exec(demo, "edge-1", &path, Some(stdin)).await?;
    // No timing here: the demo kubelet (test-support) leaves Nagle's algorithm on, which adds
    // tens of milliseconds to this exchange that a real kubelet does not have.
    println!(
        "  $ echo 'ping through the tunnel' | cat\n  {}  (exit {}: stdin went up the tunnel, stdout came back)",
        String::from_utf8_lossy(&output.stdout).trim_end(),
        exit_text(&output),
    );
    if output.stdout != stdin {
        bail!("cat returned {:?}", String::from_utf8_lossy(&output.stdout));
    }
    Ok(())
}

/// Runs one exec through the tunnel: sends `stdin` (then closes it), gathers everything.
async fn run_exec(demo: &Demo, node: &str, path: &str, stdin: Option<&[u8]>) -> Result<ExecOutput> {
    let io = connect(demo).await?;
    let session = tokio::time::timeout(PATIENCE, client::exec_ws(io, node, path, &[]))
        .await
        .context("the exec upgrade timed out")??;
    let (mut writer, reader) = session.split();
    if let Some(data) = stdin {
        writer.send_stdin(data).await?;
        writer.close_stdin().await?;
    }
    let output = tokio::time::timeout(PATIENCE, reader.collect())
        .await
        .context("the command did not finish in time")??;
    if output.exit_code() != Some(0) {
        bail!("the command failed: {}", output.status);
    }
    Ok(output)
}

/// 3: `kubectl port-forward`, to a TCP service next to the pod.
async fn port_forward(demo: &Demo) -> Result<()> {
    header("3. port-forward (kubectl port-forward)");
    println!(
        "  A TCP echo service listens on {} on the edge side; the kubelet connects to it",
        demo.echo_addr
    );
    println!("  and the tunnel carries the bytes.");
    let path = format!(
        "/portForward/{NAMESPACE}/{POD}?port={}",
        demo.echo_addr.port()
    );
    request_line(&path, "edge-1");
    let message = b"hello through a port-forward";
    let started = Instant::now();
    let io = connect(demo).await?;
    let mut session = tokio::time::timeout(PATIENCE, client::port_forward_ws(io, "edge-1", &path))
        .await
        .context("the port-forward upgrade timed out")??;
    session.write(message).await?;
    let mut echoed = Vec::new();
    while echoed.len() < message.len() {
        let chunk = tokio::time::timeout(PATIENCE, session.read())
            .await
            .context("the echo did not come back in time")??;
        let Some(chunk) = chunk else {
            bail!("the port-forward closed early");
        };
        echoed.extend_from_slice(&chunk);
    }
    let elapsed = started.elapsed();
    session.close().await?;
    println!("  sent     {:?}", String::from_utf8_lossy(message));
    println!(
        "  received {:?}  ({} round trip, connection included)",
        String::from_utf8_lossy(&echoed),
        millis(elapsed)
    );
    if echoed != message {
        bail!("the echo differs from what was sent");
    }
    Ok(())
}

/// 4: what metrics-server and Prometheus scrape.
async fn metrics(demo: &Demo) -> Result<()> {
    header("4. metrics (Prometheus, metrics-server, kubectl top)");
    let path = "/metrics/cadvisor";
    request_line(path, "edge-1");
    let started = Instant::now();
    let response = apiserver_get(demo, "edge-1", path).await?;
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_owned();
    let body = read_body(expect_ok(response).await?).await?;
    println!(
        "  HTTP 200, {} bytes of {content_type} in {}; the first lines:",
        body.len(),
        millis(started.elapsed())
    );
    for line in String::from_utf8_lossy(&body)
        .lines()
        .take(METRICS_PREVIEW_LINES)
    {
        println!("  | {line}");
    }

    // A node can be named by its internal IP too, as kube-apiserver does for InternalIP.
    let (node, ip) = NODES[1];
    let path = "/stats/summary";
    request_line(path, &ip.to_string());
    let response = apiserver_get(demo, &ip.to_string(), path).await?;
    let body = read_body(expect_ok(response).await?).await?;
    let text = String::from_utf8_lossy(&body);
    let node_line = text
        .lines()
        .find(|l| l.contains("\"nodeName\""))
        .map(str::trim)
        .unwrap_or("(no nodeName in the summary)");
    println!(
        "  HTTP 200, {} bytes of JSON from {node}'s kubelet: {node_line}",
        body.len()
    );
    Ok(())
}

/// The cloud's own view: tether's metrics on the admin port (plain HTTP, no certificate).
async fn admin_metrics(demo: &Demo) -> Result<()> {
    header("5. the cloud's own metrics (tether admin port)");
    println!("  GET http://{}/metrics", demo.cloud.admin_addr);
    let io = TcpStream::connect(demo.cloud.admin_addr)
        .await
        .context("connecting to the admin port")?;
    let host = demo.cloud.admin_addr.to_string();
    let response = tokio::time::timeout(PATIENCE, client::http_get(io, &host, "/metrics", &[]))
        .await
        .context("the admin port did not answer in time")??;
    let body = read_body(expect_ok(response).await?).await?;
    for line in String::from_utf8_lossy(&body).lines().filter(|l| {
        l.starts_with("tether_sessions ")
            || l.starts_with("tether_streams_total")
            || l.starts_with("tether_stream_bytes_total{operation=\"logs\"")
    }) {
        println!("  {line}");
    }
    Ok(())
}

/// The commands to run by hand while the demo keeps running.
fn print_try_it(demo: &Demo) {
    header("try it yourself");
    let ca = demo.pki.ca().display().to_string();
    let cert = demo.pki.path("apiserver.crt").display().to_string();
    let key = demo.pki.path("apiserver.key").display().to_string();
    let tls = format!("--cacert {ca} --cert {cert} --key {key}");
    let stream = demo.cloud.stream_addr;
    let admin = demo.cloud.admin_addr;
    let logs = format!("/containerLogs/{NAMESPACE}/{POD}/{CONTAINER}");
    println!("The demo keeps running. In another terminal, talk to the stream server as");
    println!("kube-apiserver does (with the apiserver client certificate; Host names the node):");
    println!();
    println!("  # follow edge-1's log (a new line every second; Ctrl-C stops following)");
    println!("  curl -N {tls} -H 'Host: edge-1' 'https://{stream}{logs}?follow=true'");
    println!();
    println!("  # the same for edge-2, named by its node IP");
    println!(
        "  curl -N {tls} -H 'Host: {}' 'https://{stream}{logs}?follow=true'",
        NODES[1].1
    );
    println!();
    println!("  # edge-1's cadvisor metrics, and edge-2's stats summary");
    println!("  curl {tls} -H 'Host: edge-1' https://{stream}/metrics/cadvisor");
    println!("  curl {tls} -H 'Host: edge-2' https://{stream}/stats/summary");
    println!();
    println!("  # a node that is not connected: 503 at once, naming the node");
    println!("  curl {tls} -H 'Host: edge-3' https://{stream}/metrics/cadvisor");
    println!();
    println!("  # the cloud's admin port: tether's metrics, liveness, readiness");
    println!("  curl http://{admin}/metrics");
    println!("  curl http://{admin}/readyz");
    println!();
    println!("Press Ctrl-C to stop; everything shuts down and the certificates are deleted.");
}

/// Stops everything in dependency order: the log writer and the kubelets (which ends any
/// follow cleanly), then the edges (they drain their tunnels), then the cloud.
async fn stop(demo: Demo) -> Result<()> {
    let Demo {
        pki,
        cloud,
        edges,
        kubelets,
        echo,
        logger_stop,
        logger,
        ..
    } = demo;
    logger_stop.cancel();
    logger.await.context("log writer task")?;
    echo.shutdown().await;
    for kubelet in kubelets {
        // The log writer, which held the other handles, has ended.
        if let Some(kubelet) = Arc::into_inner(kubelet) {
            kubelet.shutdown().await;
        }
    }
    println!("  kubelets stopped");
    let draining: Vec<_> = edges
        .into_iter()
        .map(|edge| tokio::spawn(edge.shutdown()))
        .collect();
    for edge in draining {
        edge.await.context("edge shutdown task")??;
    }
    println!("  edges drained and disconnected");
    cloud.shutdown().await?;
    println!("  cloud stopped (tunnel, stream and admin servers)");
    drop(pki);
    Ok(())
}

/// Opens a TLS connection to the stream server as kube-apiserver.
async fn connect(demo: &Demo) -> Result<impl Io> {
    let tls = demo.pki.apiserver_tls()?;
    tokio::time::timeout(PATIENCE, connect_as_apiserver(demo.cloud.stream_addr, tls))
        .await
        .context("connecting to the stream server timed out")?
}

/// `GET path` through the stream server, for node `host`.
async fn apiserver_get(demo: &Demo, host: &str, path: &str) -> Result<http::Response<Incoming>> {
    let io = connect(demo).await?;
    tokio::time::timeout(PATIENCE, client::http_get(io, host, path, &[]))
        .await
        .context("no response in time")?
}

/// The body of a 200 response; anything else becomes an error carrying the status and body.
async fn expect_ok(response: http::Response<Incoming>) -> Result<Incoming> {
    let status = response.status();
    let body = response.into_body();
    if status != StatusCode::OK {
        let text = read_body(body).await.unwrap_or_default();
        bail!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&text).trim_end()
        );
    }
    Ok(body)
}

/// Reads a whole body, within [`PATIENCE`].
async fn read_body(body: Incoming) -> Result<Bytes> {
    let collected = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .context("the body did not end in time")?
        .context("reading the body")?;
    let mut bytes = collected.aggregate();
    Ok(bytes.copy_to_bytes(bytes.remaining()))
}

/// A section header: `== title ==`.
fn header(title: &str) {
    println!("\n== {title} ==");
}

/// The request about to cross the tunnel, as the stream server will see it.
fn request_line(path: &str, host: &str) {
    println!("  GET {path}   (Host: {host})");
}

/// The exit code a remote command reported, for printing.
fn exit_text(output: &ExecOutput) -> String {
    output
        .exit_code()
        .map_or_else(|| "unknown".to_owned(), |code| code.to_string())
}

/// `12.3 ms`.
fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `1.23s`.
fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}
