//! `edgestream`: the edge end of the tether tunnel.
//!
//! Parses flags and `edgecore.yaml`, sets up logging and TLS, then hands everything to
//! `edge_stream::run`, which keeps the tunnel up and serves the cloud's streams from the
//! node's kubelet. SIGTERM or Ctrl-C drains.

mod config;

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use edge_stream::{EdgeConfig, KubeletTarget, Operations, TunnelStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tunnel_session::client::DialConfig;
use tunnel_session::tls::{self, TlsFiles};
use tunnel_session::{NodeIdentity, SessionConfig};

/// The edge end of the tether tunnel (KubeEdge EdgeStream compatible).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// KubeEdge edgecore.yaml to read `modules.edgeStream` and `modules.edged` from.
    #[arg(long, env = "EDGESTREAM_CONFIG")]
    config: std::path::PathBuf,
    /// Accept any cloud certificate (stock edgecore's behaviour). Logged as a warning.
    #[arg(long, env = "EDGESTREAM_INSECURE_SKIP_VERIFY")]
    insecure_skip_verify: bool,
    /// Speak only the KubeEdge dialect, even to a tether cloud.
    #[arg(long, env = "EDGESTREAM_KUBEEDGE_ONLY")]
    kubeedge_only: bool,
    /// Operations to refuse with 403 (repeatable): logs, exec, attach, port-forward, metrics.
    #[arg(
        long = "disable",
        value_enum,
        env = "EDGESTREAM_DISABLE",
        value_delimiter = ','
    )]
    disable: Vec<OperationArg>,
    /// Address for the admin listener (`/metrics`, `/healthz`, `/readyz`); off when unset.
    #[arg(long, env = "EDGESTREAM_ADMIN_ADDR")]
    admin_addr: Option<std::net::SocketAddr>,
    /// Per-stream buffer and window in bytes.
    #[arg(long, env = "EDGESTREAM_STREAM_WINDOW")]
    stream_window: Option<u32>,
    /// Seconds a stock-KubeEdge cloud may leave a stream's buffer full before that stream
    /// is closed.
    #[arg(long, env = "EDGESTREAM_STALL_LIMIT")]
    stall_limit: Option<u64>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "EDGESTREAM_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OperationArg {
    Logs,
    Exec,
    Attach,
    PortForward,
    Metrics,
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

    let settings = config::load_edgecore(&args.config)?;
    let verify_server = !args.insecure_skip_verify;
    config::check_readable(&settings, verify_server)?;
    let files = TlsFiles {
        ca: settings.tunnel.ca.clone(),
        cert: settings.tunnel.cert.clone(),
        key: settings.tunnel.key.clone(),
    };
    let client_tls = tls::client_config(&files, verify_server)
        .context("tunnel TLS (modules.edgeStream.tlsTunnel*)")?;

    let mut session = SessionConfig {
        write_deadline: settings.write_deadline,
        ..SessionConfig::default()
    };
    if let Some(window) = args.stream_window {
        session.stream_window = window;
    }
    if let Some(secs) = args.stall_limit {
        session.stall_limit = Duration::from_secs(secs);
    }
    session
        .validate()
        .map_err(|e| anyhow::anyhow!("session settings: {e}"))?;
    let dial = DialConfig {
        server: settings.server.clone(),
        tls: client_tls,
        node: NodeIdentity {
            name: settings.node_name.clone(),
            ip: settings.node_ip,
        },
        handshake_timeout: settings.handshake_timeout,
        session,
        offer_tether2: !args.kubeedge_only,
    };
    let mut edge = EdgeConfig::new(dial);
    edge.kubelet = KubeletTarget {
        addr: settings.kubelet_addr.to_string(),
        ..KubeletTarget::default()
    };
    edge.operations = Operations {
        logs: !args.disable.contains(&OperationArg::Logs),
        exec: !args.disable.contains(&OperationArg::Exec),
        attach: !args.disable.contains(&OperationArg::Attach),
        port_forward: !args.disable.contains(&OperationArg::PortForward),
        metrics: !args.disable.contains(&OperationArg::Metrics),
    };
    edge.validate()?;
    info!(
        node = %settings.node_name,
        server = %settings.server,
        kubelet = %settings.kubelet_addr,
        config = %settings.source.display(),
        "starting"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let metrics = admin::Metrics::new();
        let readiness = admin::Readiness::new();
        let admin_stop = CancellationToken::new();
        let admin_task = match args.admin_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin listener on {addr}"))?;
                println!("edgestream admin={}", listener.local_addr()?);
                Some(tokio::spawn(admin::serve(
                    listener,
                    metrics.clone(),
                    readiness.clone(),
                    admin_stop.clone(),
                )))
            }
            None => None,
        };
        let shutdown = CancellationToken::new();
        let (status_tx, status_rx) = watch::channel(TunnelStatus::default());
        let reporter = tokio::spawn(report_status(status_rx, metrics, readiness));
        let edge_task = tokio::spawn(edge_stream::run(edge, shutdown.clone(), Some(status_tx)));
        wait_for_signal().await?;
        info!("shutting down: draining streams");
        shutdown.cancel();
        edge_task.await.context("edge task")??;
        let _ = reporter.await;
        admin_stop.cancel();
        if let Some(task) = admin_task {
            task.await.context("admin task")??;
        }
        info!("stopped");
        Ok(())
    })
}

/// Follows the tunnel state: readiness and metrics, and one machine-readable line on stdout
/// per change, so scripts and tests can follow the tunnel without parsing logs.
async fn report_status(
    mut status: watch::Receiver<TunnelStatus>,
    metrics: admin::Metrics,
    readiness: admin::Readiness,
) {
    let mut was_connected = false;
    loop {
        let current = status.borrow_and_update().clone();
        let connected = matches!(current, TunnelStatus::Connected { .. });
        readiness.set_ready(connected);
        metrics.tunnel_up(connected);
        match current {
            TunnelStatus::Connected { dialect } => {
                if was_connected {
                    metrics.reconnect();
                }
                println!("edgestream connected dialect={dialect}");
            }
            TunnelStatus::Disconnected { reason } => {
                warn!(%reason, "tunnel down");
                println!("edgestream disconnected");
            }
            TunnelStatus::Stopped => {
                println!("edgestream stopped");
                return;
            }
            TunnelStatus::Connecting => {}
        }
        was_connected |= connected;
        if status.changed().await.is_err() {
            return;
        }
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
