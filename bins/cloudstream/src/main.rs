//! `cloudstream`: the cloud end of the tether tunnel.
//!
//! Parses flags and the config file, sets up logging and TLS, binds the listeners, then
//! hands them to `tunnel-session`'s tunnel server and `stream-server`'s kubelet API server,
//! which share one session registry. SIGTERM or Ctrl-C drains both.

mod config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use stream_server::{StreamServer, StreamServerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tunnel_session::Registry;
use tunnel_session::server::{TunnelServer, TunnelServerConfig};
use tunnel_session::tls::{self, TlsFiles};

/// The cloud end of the tether tunnel (KubeEdge CloudStream compatible).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// KubeEdge cloudcore.yaml to read `modules.cloudStream` from.
    #[arg(long, env = "CLOUDSTREAM_CONFIG")]
    config: PathBuf,
    /// Address for the edge tunnel listener (default: all interfaces, `tunnelPort`).
    #[arg(long, env = "CLOUDSTREAM_TUNNEL_ADDR")]
    tunnel_addr: Option<SocketAddr>,
    /// Address for the kubelet API listener (default: all interfaces, `streamPort`).
    #[arg(long, env = "CLOUDSTREAM_STREAM_ADDR")]
    stream_addr: Option<SocketAddr>,
    /// Address for the admin listener (`/metrics`, `/healthz`, `/readyz`); off when unset.
    #[arg(long, env = "CLOUDSTREAM_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Per-stream buffer and window in bytes.
    #[arg(long, env = "CLOUDSTREAM_STREAM_WINDOW")]
    stream_window: Option<u32>,
    /// Seconds a stock-KubeEdge edge may leave a stream's buffer full before that stream is
    /// closed.
    #[arg(long, env = "CLOUDSTREAM_STALL_LIMIT")]
    stall_limit: Option<u64>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "CLOUDSTREAM_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    tls::install_default_provider();

    let settings = config::load_cloudcore(&args.config)?;
    config::check_readable(&settings)?;
    let tunnel_tls = tls::server_config(&tls_files(&settings.tunnel), &[b"http/1.1"])
        .context("tunnel TLS (modules.cloudStream.tlsTunnel*)")?;
    let stream_tls = tls::server_config(&tls_files(&settings.stream), &[b"h2", b"http/1.1"])
        .context("stream TLS (modules.cloudStream.tlsStream*)")?;
    let tunnel_addr = args
        .tunnel_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], settings.tunnel_port)));
    let stream_addr = args
        .stream_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], settings.stream_port)));

    let mut tunnel_config = TunnelServerConfig::default();
    if let Some(window) = args.stream_window {
        tunnel_config.session.stream_window = window;
    }
    if let Some(secs) = args.stall_limit {
        tunnel_config.session.stall_limit = Duration::from_secs(secs);
    }
    tunnel_config
        .session
        .validate()
        .map_err(|e| anyhow::anyhow!("session settings: {e}"))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let tunnel_listener = TcpListener::bind(tunnel_addr)
            .await
            .with_context(|| format!("binding the tunnel listener on {tunnel_addr}"))?;
        let stream_listener = TcpListener::bind(stream_addr)
            .await
            .with_context(|| format!("binding the stream listener on {stream_addr}"))?;
        let admin_listener = match args.admin_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin listener on {addr}"))?,
            ),
            None => None,
        };
        // One machine-readable line on stdout, so scripts and tests learn the bound ports.
        let admin_text = match &admin_listener {
            Some(l) => format!(" admin={}", l.local_addr()?),
            None => String::new(),
        };
        println!(
            "cloudstream listening tunnel={} stream={}{admin_text}",
            tunnel_listener.local_addr()?,
            stream_listener.local_addr()?
        );

        let registry = Arc::new(Registry::new());
        let shutdown = CancellationToken::new();
        let metrics = admin::Metrics::new();
        let readiness = admin::Readiness::new();
        let tunnel = TunnelServer::new(tunnel_tls, registry.clone(), tunnel_config)
            .with_observer(Arc::new(metrics.clone()));
        let stream = StreamServer::new(stream_tls, registry.clone(), StreamServerConfig::default())
            .with_observer(Arc::new(metrics.clone()));
        let tunnel_task = tokio::spawn(tunnel.serve(tunnel_listener, shutdown.clone()));
        let stream_task = tokio::spawn(stream.serve(stream_listener, shutdown.clone()));
        let sampler = tokio::spawn(admin::sample_rtt(
            registry,
            metrics.clone(),
            RTT_SAMPLE_INTERVAL,
            shutdown.clone(),
        ));
        // Both listeners are bound and serving: ready.
        readiness.set_ready(true);
        // The admin port outlives the drain so probes and scrapes see it through.
        let admin_stop = CancellationToken::new();
        let admin_task = admin_listener.map(|l| {
            tokio::spawn(admin::serve(
                l,
                metrics,
                readiness.clone(),
                admin_stop.clone(),
            ))
        });

        wait_for_signal().await?;
        info!("shutting down: draining streams and sessions");
        readiness.set_ready(false);
        shutdown.cancel();
        let (tunnel_result, stream_result) = tokio::join!(tunnel_task, stream_task);
        tunnel_result.context("tunnel server task")??;
        stream_result.context("stream server task")??;
        let _ = sampler.await;
        admin_stop.cancel();
        if let Some(task) = admin_task {
            task.await.context("admin task")??;
        }
        info!("stopped");
        Ok(())
    })
}

/// How often live sessions' ping round trips are recorded.
const RTT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

fn tls_files(paths: &config::TlsPaths) -> TlsFiles {
    TlsFiles {
        ca: paths.ca.clone(),
        cert: paths.cert.clone(),
        key: paths.key.clone(),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
