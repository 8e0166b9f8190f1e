//! `edgestream`: the edge end of the tether tunnel.
//!
//! Parses flags, loads and validates the configuration file (tether's own format or KubeEdge's
//! `edgecore.yaml`, see `settings`), sets up logging and TLS, then hands everything to
//! `edge_stream::run`, which keeps the tunnel up and serves the cloud's streams from the
//! node's kubelet. SIGTERM or Ctrl-C drains.

/// jemalloc rather than the system allocator: glibc's malloc keeps the memory of sessions
/// that have left (fragmentation across its arenas), so a cloud that once held thousands of
/// edges never shrank; jemalloc's background threads return freed pages to the OS.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod config;
mod settings;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use edge_stream::{EdgeConfig, KubeletTarget, TunnelStatus};
use rustls::pki_types::ServerName;
use tether_cli::process::{init_tracing, runtime, wait_for_signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tunnel_session::NodeIdentity;
use tunnel_session::client::DialConfig;
use tunnel_session::tls;

/// The edge end of the tether tunnel (KubeEdge EdgeStream compatible).
///
/// Runs from --config: tether's own format (apiVersion: tether.io/v1alpha1, kind: EdgeStream)
/// or KubeEdge's edgecore.yaml. Flags and their environment variables override the file. See
/// docs/configuration.md.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Configuration file: tether's EdgeStream format or KubeEdge's edgecore.yaml.
    #[arg(long, env = "EDGESTREAM_CONFIG", value_name = "FILE")]
    config: PathBuf,
    #[command(flatten)]
    flags: settings::Flags,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let settings = settings::load(&args.config, &args.flags)?;
    init_tracing(&settings.log);
    for warning in &settings.warnings {
        warn!("{warning}");
    }
    tls::install_default_provider();

    let es = &settings.edge_stream;
    let client_tls = tls::client_config(&es.tunnel.tls_files(), !settings.insecure_skip_verify)
        .with_context(|| format!("tunnel TLS ({}.tlsTunnel*)", es.section))?;
    let dial = DialConfig {
        server: es.server.clone(),
        tls: client_tls,
        node: NodeIdentity {
            name: es.node_name.clone(),
            ip: es.node_ip,
        },
        handshake_timeout: es.handshake_timeout,
        session: settings.session.clone(),
        offer_tether2: !settings.kubeedge_only,
    };
    let mut edge = EdgeConfig::new(dial);
    edge.kubelet = KubeletTarget {
        addr: settings.kubelet_addr.clone(),
        tls: match &settings.kubelet_tls {
            Some(t) => Some(kubelet_tls(t)?),
            None => None,
        },
        connect_timeout: settings.kubelet_connect_timeout,
    };
    edge.operations = settings.operations;
    edge.backoff = settings.backoff;
    edge.drain_grace = settings.drain_grace;
    edge.compress_bodies = settings.compress_bodies;
    edge.validate()?;
    info!(
        node = %es.node_name,
        server = %es.server,
        kubelet = %settings.kubelet_addr,
        config = %settings.source.display(),
        format = ?settings.format,
        "starting"
    );

    runtime()?.block_on(async move {
        let metrics = admin::Metrics::new();
        let readiness = admin::Readiness::new();
        let admin_stop = CancellationToken::new();
        let admin_task = match settings.admin_addr {
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

/// HTTPS towards a stock kubelet: its CA, and our client certificate if configured.
fn kubelet_tls(
    t: &settings::KubeletTls,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
    let roots = tls::load_ca(&t.ca).context("kubelet.tls.caFile")?;
    let builder = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("kubelet TLS")?
        .with_root_certificates(roots);
    let config = match &t.client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                tls::load_certs(cert).context("kubelet.tls.certFile")?,
                tls::load_private_key(key).context("kubelet.tls.privateKeyFile")?,
            )
            .context("kubelet.tls.certFile / privateKeyFile")?,
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(t.server_name.clone()).context("kubelet.tls.serverName")?;
    Ok((Arc::new(config), name))
}
